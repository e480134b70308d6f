//! Running the real `lbd` and `lbctl` binaries for control-plane tests:
//! lbd runs inside a namespace the test creates, with its own pin
//! directory and control socket, and is killed and unpinned on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::Netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run the `lbctl` at `lbctl` against the lbd listening on `socket` (this
/// tree's or a release's).
pub fn run_lbctl(lbctl: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(lbctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lbctl")
}

/// `run_lbctl` with `--json`, expected to succeed (else the failure and
/// the lbd `log` are shown), the reply parsed.
pub fn lbctl_json(
    lbctl: &Path,
    socket: &Path,
    args: &[&str],
    log: impl Fn() -> String,
) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run_lbctl(lbctl, socket, &all);
    assert!(
        out.status.success(),
        "lbctl {}: {}\nlbd log:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    serde_json::from_slice(&out.stdout).expect("lbctl --json output")
}

/// Path of a binary of this workspace, built by `cargo test --workspace`
/// next to the test executables' directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// Wait until an lbd just started as `child` answers (`answers`), for up to
/// 30 s; fail with its log (`log`) if it exits first or never does.
pub fn wait_until_answering(
    child: &mut Option<Child>,
    answers: impl Fn() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if answers() {
            return;
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            panic!("lbd exited ({status}) during startup:\n{}", log());
        }
        assert!(Instant::now() < deadline, "lbd did not come up:\n{}", log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where one lbd instance keeps its files.
pub struct Paths {
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Paths {
    /// Paths for an lbd whose configuration file is JSON (`lbd.json`).
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("lbt-{tag}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("test dir");
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            socket: dir.join("lbd.sock"),
            config: dir.join("lbd.json"),
            dir,
        }
    }

    /// The same, with the configuration file in TOML (`lbd.toml`).
    pub fn toml(self) -> Self {
        Self {
            config: self.dir.join("lbd.toml"),
            ..self
        }
    }
}

/// Write `config` to `path` in the format its extension names: TOML for
/// `.toml` (under a comment, which JSON could not hold), else JSON.
pub fn write_config(path: &Path, config: &serde_json::Value) {
    let text = config_text(path, config).expect("the test's configuration as TOML");
    std::fs::write(path, text).expect("write config");
}

/// `config` as the text of a file at `path`; `None` if TOML cannot hold it
/// (a `null`).
fn config_text(path: &Path, config: &serde_json::Value) -> Option<String> {
    if path.extension().is_some_and(|e| e == "toml") {
        let body = toml::to_string(config).ok()?;
        Some(format!(
            "# Written by the test helper (tests/src/lbd.rs).\n{body}"
        ))
    } else {
        serde_json::to_string_pretty(config).ok()
    }
}

/// The configuration file at `path`, read as `write_config` wrote it.
pub fn read_config(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).ok()
    } else {
        serde_json::from_str(&text).ok()
    }
}

/// A running lbd.
pub struct Lbd {
    pub paths: Paths,
    pub ns: String,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Lbd {
    /// Write `config` (with `pin_dir` and `control.socket` filled in by us,
    /// as JSON or TOML by `paths.config`'s extension) and start lbd in
    /// namespace `ns`; waits until it answers.
    pub fn start(ns: &Netns, paths: Paths, config: serde_json::Value) -> Self {
        Self::start_with(ns, paths, config, &[])
    }

    /// As `start`, with extra lbd arguments.
    pub fn start_with(ns: &Netns, paths: Paths, config: serde_json::Value, args: &[&str]) -> Self {
        Self::start_with_env(ns, paths, config, args, &[])
    }

    /// As `start_with`, with extra environment variables for lbd (kept
    /// over restarts).
    pub fn start_with_env(
        ns: &Netns,
        paths: Paths,
        mut config: serde_json::Value,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        config["pin_dir"] = paths.pin_dir.display().to_string().into();
        config["state_file"] = paths.dir.join("state.json").display().to_string().into();
        // Keep other control settings (a group) the test gave.
        let mut control = config
            .get("control")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        control["socket"] = paths.socket.display().to_string().into();
        config["control"] = control;
        write_config(&paths.config, &config);
        let log = paths.dir.join(format!(
            "lbd-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut lbd = Self {
            paths,
            ns: ns.name.clone(),
            child: None,
            log,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        lbd.spawn();
        lbd
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        // nsenter, not `ip netns exec`: the latter gives lbd a private
        // mount namespace with its own /sys, so its pins would vanish with it.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(binary("lbd"))
            .arg("--config")
            .arg(&self.paths.config)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start lbd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let mut child = self.child.take();
        wait_until_answering(
            &mut child,
            || self.ctl(&["status"]).status.success(),
            || self.log(),
        );
        self.child = child;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run lbctl against this lbd.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run_lbctl(&binary("lbctl"), &self.paths.socket, args)
    }

    /// Run lbctl with `--json`, expect success, parse the reply.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        lbctl_json(&binary("lbctl"), &self.paths.socket, args, || self.log())
    }

    /// SIGKILL, no chance to clean up: what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs lbd, so the child is lbd itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for lbd to exit: a clean stop (systemd's).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Start lbd again with the same configuration file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// lbd's configuration file as the test wrote it.
    pub fn config_file(&self) -> serde_json::Value {
        read_config(&self.paths.config).expect("lbd's configuration file")
    }

    /// Run `lbd --config FILE ARGS` in lbd's namespace and return what it
    /// did: for runs that end (`--teardown`, `--check`, a start that must
    /// fail), killed after 30 s if one does not.
    pub fn run_once(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("30")
            .arg("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(binary("lbd"))
            .arg("--config")
            .arg(&self.paths.config)
            .args(args)
            .output()
            .expect("run lbd")
    }

    /// Start lbd again with the same configuration file and `args` in
    /// place of the extra arguments it had.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        self.kill();
        // No `binary()` here: it asserts, and a panic while unwinding aborts.
        let lbd = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("lbd")));
        if let Some(lbd) = lbd {
            // In lbd's namespace, where its routes are (`announce`). With
            // the namespace gone, so are they: tear down the rest from
            // here, without the routes, which must never be looked for in
            // the host's own tables.
            let netns = PathBuf::from("/var/run/netns").join(&self.ns);
            let mut teardown = if netns.exists() {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display())).arg(lbd);
                c
            } else {
                let _ = std::fs::remove_file(self.paths.dir.join("state.json"));
                if let Some(mut config) = read_config(&self.paths.config) {
                    if let Some(c) = config.as_object_mut() {
                        c.remove("announce");
                    }
                    if let Some(text) = config_text(&self.paths.config, &config) {
                        let _ = std::fs::write(&self.paths.config, text);
                    }
                }
                Command::new(lbd)
            };
            let _ = teardown
                .arg("--config")
                .arg(&self.paths.config)
                .arg("--teardown")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.paths.pin_dir);
        let _ = std::fs::remove_dir_all(&self.paths.dir);
    }
}
