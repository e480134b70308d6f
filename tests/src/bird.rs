//! BIRD 2 in a test namespace, run from the shipped configurations
//! (deploy/bird/) with their `define`s set to the test's values, and
//! killed when dropped.
//!
//! The shipped files keep every per-site value in a `define` at the top,
//! so a test (or an operator) changes those lines and nothing else:
//! `with_defines(LB_NODE_CONF, &[("NODE_V4", "192.0.2.12")])`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// The LB node's configuration, as shipped.
pub const LB_NODE_CONF: &str = include_str!("../../deploy/bird/lb-node.conf");
/// The router's configuration, as shipped.
pub const ROUTER_CONF: &str = include_str!("../../deploy/bird/router.conf");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The path of the `bird` binary (Debian's `bird2`, installed by `cargo
/// xtask setup`), or a panic that says how to get it.
pub fn bird_binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let path = PathBuf::from(dir).join("bird");
        if path.exists() {
            return path;
        }
    }
    panic!("bird is not installed: run `cargo xtask setup` (Debian's bird2)");
}

/// `text` with each `define NAME = ...;` of `values` set to the value
/// given. Panics if the text defines no such name: a renamed define
/// must fail the test that sets it, not be ignored.
pub fn with_defines(text: &str, values: &[(&str, &str)]) -> String {
    let mut out: Vec<String> = text.lines().map(String::from).collect();
    for (name, value) in values {
        let prefix = format!("define {name} ");
        let line = out
            .iter_mut()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("the configuration has no `define {name}`"));
        *line = format!("define {name} = {value};");
    }
    out.join("\n") + "\n"
}

/// A BIRD daemon in a namespace.
pub struct Bird {
    pub ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Write `config` (logging to standard error instead of syslog) and
    /// start BIRD with it in `ns`; waits until its control socket answers.
    pub fn start(ns: &Netns, tag: &str, config: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lbt-bird-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("BIRD's directory");
        let config = config.replace("log syslog all;", "log stderr all;");
        std::fs::write(dir.join("bird.conf"), config).expect("write bird.conf");
        let log = std::fs::File::create(dir.join("bird.log")).expect("BIRD's log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg(bird_binary())
            .arg("-f")
            .arg("-c")
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start bird");
        let mut bird = Self {
            ns: ns.name.clone(),
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bird.try_birdc(&["show", "status"]).is_none() {
            if let Some(Ok(Some(status))) = bird.child.as_mut().map(|c| c.try_wait()) {
                panic!("bird exited ({status}):\n{}", bird.log());
            }
            assert!(
                Instant::now() < deadline,
                "bird did not come up:\n{}",
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    /// BIRD's control socket (what lbd's `speaker.bird_socket` names).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// Run `birdc` against this BIRD; its output, or `None` if it failed.
    pub fn try_birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `birdc` output; panics (with BIRD's log) if it fails.
    pub fn birdc(&self, args: &[&str]) -> String {
        self.try_birdc(args)
            .unwrap_or_else(|| panic!("birdc {}: failed\n{}", args.join(" "), self.log()))
    }

    /// Whether BGP protocol `name` is established.
    pub fn established(&self, name: &str) -> bool {
        self.try_birdc(&["show", "protocols", name])
            .is_some_and(|out| out.contains("Established"))
    }

    /// SIGKILL, as when the node dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs bird, so the child is bird itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
