//! Running a given release's lbd, from its own binaries, for the upgrade
//! test: over a configuration file and pin directory the test owns, with
//! that release's lbctl to talk to it.
//!
//! Each lbd runs in a mount namespace of its own whose /run is a private
//! tmpfs, so the files a release keeps at default paths (the runtime state
//! file of releases after v0.1.0, which that release's configuration
//! cannot name) never touch the host's. The pins are on the host's bpffs,
//! which every lbd shares, as an upgrade needs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use crate::{
    lbd::{lbctl_json, run_lbctl, wait_until_answering},
    netns::Netns,
};

/// Where one release's `lbd` and `lbctl` are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// This tree's, built next to the test executables.
    pub fn current() -> Self {
        let lbd = crate::lbd::binary("lbd");
        Self {
            dir: lbd.parent().expect("binary directory").to_path_buf(),
        }
    }

    pub fn at(dir: PathBuf) -> Self {
        for name in ["lbd", "lbctl"] {
            assert!(
                dir.join(name).exists(),
                "{} is missing",
                dir.join(name).display()
            );
        }
        Self { dir }
    }
}

/// A running lbd of some release; SIGKILLed on drop if still running.
pub struct ReleaseLbd {
    child: Option<Child>,
    bins: Binaries,
    socket: PathBuf,
    log: PathBuf,
}

impl ReleaseLbd {
    /// Start `bins`' lbd with `config` in network namespace `ns`, logging
    /// to `log`; waits until it answers on `socket` (the configuration's
    /// `control.socket`).
    pub fn start(bins: &Binaries, ns: &Netns, config: &Path, socket: &Path, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        // nsenter and unshare exec (no fork), and so does the shell: the
        // child is lbd itself, and signals reach it.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs lbd-run /run && exec "$0" "$@""#)
            .arg(bins.dir.join("lbd"))
            .arg("--config")
            .arg(config)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start lbd");
        let mut lbd = Self {
            child: Some(child),
            bins: bins.clone(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        lbd.wait_ready();
        lbd
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

    /// Run this release's lbctl against this lbd.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        run_lbctl(&self.bins.dir.join("lbctl"), &self.socket, args)
    }

    /// `lbctl --json ARGS`, expected to succeed, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        lbctl_json(&self.bins.dir.join("lbctl"), &self.socket, args, || {
            self.log()
        })
    }

    /// Stop as a service manager does (SIGTERM) and wait for the exit.
    pub fn terminate(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which it still is
            // (not yet waited for).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let status = c.wait().expect("wait for lbd");
            assert!(
                status.success(),
                "lbd exited with {status}:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL, as a crash or an impatient operator would.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ReleaseLbd {
    fn drop(&mut self) {
        self.kill_now();
    }
}
