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

    /// The MAC address of `dev`, as ip(8) writes it (`02:00:...`).
    pub fn mac_text(&self, dev: &str) -> String {
        self.exec(&["cat", &format!("/sys/class/net/{dev}/address")])
            .trim()
            .to_string()
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let bytes: Vec<u8> = self
            .mac_text(dev)
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("mac"))
            .collect();
        bytes.try_into().expect("6 bytes")
    }

    /// The interface index of `dev`.
    pub fn ifindex(&self, dev: &str) -> u32 {
        self.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .trim()
            .parse()
            .expect("ifindex")
    }

    /// The id of the XDP program `dev` runs, as ip(8) reports it; `None`
    /// without one.
    pub fn xdp_program_id(&self, dev: &str) -> Option<u64> {
        let out = self.exec(&["ip", "-json", "-details", "link", "show", "dev", dev]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -json output");
        links[0]["xdp"]["prog"]["id"].as_u64()
    }

    /// Every route of kernel routing table `table` (IPv4 and IPv6) as
    /// `TYPE DESTINATION proto NUMBER`, e.g. `blackhole 198.51.100.10
    /// proto 201`, sorted: what `ip route show table N` lists, with the
    /// protocol as a number.
    pub fn routes_in_table(&self, table: u32) -> Vec<String> {
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let table = table.to_string();
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "ip", "-N", "-j", family])
                .args(["route", "show", "table", &table])
                .output()
                .expect("run ip");
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A table that never held a route does not exist: it is empty.
            if stderr.contains("table does not exist") {
                continue;
            }
            assert!(
                out.status.success(),
                "in {}: ip route show: {stderr}",
                self.name
            );
            let list: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("ip -json output");
            for r in list.as_array().into_iter().flatten() {
                // rtnetlink's RTN_* numbers, as `ip -N` prints them.
                let kind = match r["type"].as_str().unwrap_or("") {
                    "1" => "unicast",
                    "6" => "blackhole",
                    "7" => "unreachable",
                    other => other,
                };
                let dst = r["dst"].as_str().unwrap_or("?");
                let protocol = r["protocol"].as_str().unwrap_or("0");
                routes.push(format!("{kind} {dst} proto {protocol}"));
            }
        }
        routes.sort();
        routes
    }

    /// Run `f` with the calling thread inside this namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        enter_named(&self.name, f)
    }

    /// Send whole Ethernet frames out of `dev` through an AF_PACKET socket:
    /// for frames no socket of the kernel's would build, such as a tunnel
    /// from a forged source.
    pub fn send_frames(&self, dev: &str, frames: &[Vec<u8>]) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let ifindex = self.ifindex(dev);
        self.enter(|| {
            // Protocol 0: the socket sends and receives nothing.
            // SAFETY: a plain socket call.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a socket we own from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; all zero is valid.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            for f in frames {
                to.sll_addr[..6].copy_from_slice(&f[..6]);
                // SAFETY: the buffer and address are valid for the call.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    sent,
                    f.len() as isize,
                    "send on {dev}: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
    }
}

/// Run the future `make` builds on a thread of its own inside the
/// namespace called `name`, on a single-threaded tokio runtime; when the
/// future ends the runtime is dropped, closing every task and connection
/// still open. The thread's handle gives the future's output.
pub fn spawn_runtime<T, F>(
    name: String,
    make: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<T>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        enter_named(&name, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(async move { make().await })
        })
    })
}

/// Run `f` with the calling thread inside the namespace called `name`
/// (for threads that only know the name), then switch back.
pub fn enter_named<T>(name: &str, f: impl FnOnce() -> T) -> T {
    use std::{fs::File, os::fd::AsRawFd};
    let here = File::open("/proc/thread-self/ns/net").expect("current netns");
    let there = File::open(format!("/var/run/netns/{name}")).expect("test netns");
    // SAFETY: setns on this thread only, with a valid namespace fd; we
    // switch back before returning.
    let entered = unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(entered, 0, "setns");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    // SAFETY: as above, back to the namespace the thread came from.
    let back = unsafe { libc::setns(here.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(back, 0, "setns back");
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

/// Remove everything the test helpers of process `pid` created: its lbd
/// processes, network namespaces, pin directories and temporary files.
/// For signal handlers, where destructors do not run.
pub fn remove_all_of_process(pid: u32) {
    let tag = format!("-{pid}-");
    let ours = |name: &str| name.starts_with("lbt-") && name.contains(&tag);
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.split(['\0', '/']).any(ours)
                && let Ok(child) = p.file_name().to_string_lossy().parse::<i32>()
                && child as u32 != pid
            {
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(child, libc::SIGKILL) };
            }
        }
    }
    if let Ok(list) = std::fs::read_dir("/var/run/netns") {
        for ns in list.flatten() {
            let name = ns.file_name().to_string_lossy().into_owned();
            if ours(&name) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    for dir in ["/sys/fs/bpf".into(), std::env::temp_dir()] {
        if let Ok(list) = std::fs::read_dir(&dir) {
            for e in list.flatten() {
                if ours(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// On SIGINT or SIGTERM, remove everything this process created and exit.
/// Call before starting any thread: the signals are blocked in the caller
/// (and so in every thread it starts) and taken by a dedicated thread.
pub fn clean_up_on_signal() {
    // SAFETY: plain libc signal-mask calls on valid, initialised sets.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("\ninterrupted: removing everything this run created");
            remove_all_of_process(std::process::id());
            std::process::exit(130);
        });
    }
}
