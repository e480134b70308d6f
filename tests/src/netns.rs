//! Network namespaces and veth links for tests, named uniquely per run and
//! removed on drop (so also when a test fails).

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `lbt-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("lbt-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {}: {}",
            self.name,
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `f` with the calling thread inside this namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        enter_named(&self.name, f)
    }
}

/// Run `f` with the calling thread inside the namespace called `name`
/// (for threads that only know the name), then switch back.
pub fn enter_named<T>(name: &str, f: impl FnOnce() -> T) -> T {
    use std::{fs::File, os::fd::AsRawFd};
    let here = File::open("/proc/thread-self/ns/net").expect("current netns");
    let there = File::open(format!("/var/run/netns/{name}")).expect("test netns");
    // SAFETY: setns on this thread only, with valid namespace fds; we
    // switch back before returning.
    assert_eq!(
        unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert_eq!(
        unsafe { libc::setns(here.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns back"
    );
    match result {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair with one end in each namespace.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    ip(&[
        "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name, "netns",
        &b.name,
    ]);
    a.exec(&["ip", "link", "set", a_name, "up"]);
    b.exec(&["ip", "link", "set", b_name, "up"]);
}
