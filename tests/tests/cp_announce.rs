//! Announcing VIPs (docs/cluster.md): lbd keeps one blackhole route per
//! announced VIP address in a kernel routing table of its own, tagged with
//! its route protocol number, for BIRD to export over BGP.
//!
//! Each test runs lbd in network namespaces it creates (routing tables
//! belong to a namespace) and reads the table with `ip route show table
//! N`. Table 1000 is beyond 255, where the kernel takes the table's number
//! from an attribute rather than the header: the harder of the two cases.

use std::{
    net::{TcpListener, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bird::{Bird, LB_NODE_CONF, ROUTER_CONF, with_defines},
    lbd::{Lbd, Paths},
    netns::{Netns, veth},
};
use serde_json::{Value, json};

const TABLE: u32 = 1000;
const PROTO: u8 = 210;
const VIP: &str = "198.51.100.10";
const VIP6: &str = "2001:db8:100::10";
const VIP_REF: &str = "198.51.100.10:53/udp";
const CLIENT: &str = "203.0.113.7";
const B1: &str = "198.51.100.101";
const B2: &str = "198.51.100.102";

/// `ip route show table TABLE`'s line for lbd's route to `address`.
fn ours(address: &str) -> String {
    format!("blackhole {address} proto {PROTO}")
}

/// `routes`, sorted as `Netns::routes_in_table` lists them.
fn sorted(mut routes: Vec<String>) -> Vec<String> {
    routes.sort();
    routes
}

/// An LB namespace (lb0) and a client namespace (cl0) joined by a veth.
/// The backends are addresses of the LB namespace, so that health checks
/// reach them there; the LB's tunnels go back to the client's MAC, where
/// they are dropped.
struct Site {
    lb: Netns,
    client: Netns,
    client_mac: String,
}

impl Site {
    fn new() -> Self {
        let lb = Netns::new("anlb");
        let client = Netns::new("ancl");
        for b in [B1, B2] {
            lb.exec(&["ip", "addr", "add", &format!("{b}/32"), "dev", "lo"]);
        }
        let site = Self {
            lb,
            client,
            client_mac: String::new(),
        };
        let client_mac = site.create_link();
        Self { client_mac, ..site }
    }

    /// Make the lb0-cl0 veth and the client's side of it; the client's MAC
    /// (kept when the link is made again, as the configuration names it).
    fn create_link(&self) -> String {
        veth(&self.lb, "lb0", &self.client, "cl0");
        if !self.client_mac.is_empty() {
            self.client
                .exec(&["ip", "link", "set", "cl0", "address", &self.client_mac]);
        }
        let lb_mac = self.lb.mac_text("lb0");
        let c = &self.client;
        c.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "cl0"]);
        c.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "cl0"]);
        c.exec(&[
            "ip",
            "neigh",
            "replace",
            VIP,
            "lladdr",
            &lb_mac,
            "dev",
            "cl0",
            "nud",
            "permanent",
        ]);
        c.mac_text("cl0")
    }

    /// Two VIPs: VIP:53/udp on B1 and B2 with `check`, and VIP6:53/udp on
    /// B1 without checks; announced in TABLE with PROTO.
    fn config(&self, check: Value) -> Value {
        json!({
            "interfaces": [{"name": "lb0"}],
            "tunnel_source": {"ipv4": "198.51.100.2"},
            "next_hop": {"fib": false, "gateway_mac": self.client_mac},
            "tables": {"ring_size": 251, "conn_entries": 1024, "max_vips": 8, "max_backends": 16},
            "announce": {"table": TABLE, "protocol": PROTO},
            "vips": [
                {"address": VIP, "port": 53, "protocol": "udp", "health_check": check,
                 "backends": [{"address": B1}, {"address": B2}]},
                {"address": VIP6, "port": 53, "protocol": "udp",
                 "backends": [{"address": B1}]},
            ],
        })
    }

    fn routes(&self) -> Vec<String> {
        self.lb.routes_in_table(TABLE)
    }

    /// One UDP datagram to VIP:53 from each client port.
    fn send_flows(&self, ports: std::ops::Range<u16>) {
        self.client.enter(|| {
            for port in ports {
                let s = UdpSocket::bind((CLIENT, port)).expect("bind client port");
                s.send_to(b"query", (VIP, 53)).expect("send");
            }
        });
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each VIP address of `lbctl status` with its `state`.
fn states(lbd: &Lbd) -> Vec<(String, String)> {
    lbd.json(&["status"])["announce"]["addresses"]
        .as_array()
        .expect("announce.addresses")
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn counter(lbd: &Lbd, name: &str) -> u64 {
    lbd.json(&["status"])["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// The metrics text lbd serves on 127.0.0.1:9464 in the LB namespace.
fn scrape(site: &Site) -> String {
    use std::io::{Read, Write};
    site.lb.enter(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
}

/// The route is there while a backend is in service and goes when the
/// last one fails its health check, comes back when it recovers, and goes
/// again when the last one in service is drained. VIP6, with its own
/// backend and no checks, stays announced throughout: routes are per
/// address. Edits change the table before lbctl returns.
#[test]
fn cp_a_vip_address_is_announced_while_it_has_a_backend_in_service() {
    let site = Site::new();
    let check = json!({"type": "tcp", "port": 8053, "interval_ms": 100, "timeout_ms": 50,
                       "rise": 2, "fall": 3, "through_tunnel": false});
    let listen = |b: &str| {
        site.lb
            .enter(|| TcpListener::bind((b, 8053)).expect("listen"))
    };
    let (b1, b2) = (listen(B1), listen(B2));
    let lbd = Lbd::start(&site.lb, Paths::new("anhealth"), site.config(check));
    wait_for(
        "both VIP addresses announced",
        Duration::from_secs(5),
        || site.routes() == [ours(VIP), ours(VIP6)],
    );
    assert_eq!(
        states(&lbd),
        [
            (VIP.to_string(), "announced".to_string()),
            (VIP6.to_string(), "announced".to_string())
        ]
    );
    assert_eq!(lbd.json(&["vip", "list"])[0]["announced"], true);

    // One backend down: the other keeps the VIP in service.
    drop(b2);
    wait_for("B2 down", Duration::from_secs(5), || {
        lbd.json(&["backend", "list"])[1]["health"] == "down"
    });
    assert_eq!(site.routes(), [ours(VIP), ours(VIP6)]);

    // The last one down: withdrawn within fall x interval and a tick.
    drop(b1);
    let down = Instant::now();
    wait_for("VIP withdrawn", Duration::from_secs(5), || {
        site.routes() == [ours(VIP6)]
    });
    assert!(
        down.elapsed() < Duration::from_secs(2),
        "{:?}",
        down.elapsed()
    );
    assert_eq!(
        states(&lbd)[0].1,
        "withdrawn: no VIP on this address has a backend in service"
    );
    assert_eq!(lbd.json(&["vip", "list"])[0]["announced"], false);

    let _b1 = listen(B1);
    wait_for("VIP announced again", Duration::from_secs(5), || {
        site.routes() == [ours(VIP), ours(VIP6)]
    });

    // Draining the only backend in service withdraws it at once.
    lbd.json(&["backend", "drain", VIP_REF, B1]);
    assert_eq!(site.routes(), [ours(VIP6)]);
    lbd.json(&["backend", "undrain", VIP_REF, B1]);
    assert_eq!(site.routes(), [ours(VIP), ours(VIP6)]);
    let log = lbd.log();
    assert!(
        log.contains("VIP address withdrawn (route removed)"),
        "{log}"
    );
    // Health events name the backend and its VIP as lbctl does.
    assert!(log.contains(&format!("check={B1} of {VIP_REF}")), "{log}");
}

/// Keeps a trickle of datagrams to the VIP going from a thread while it
/// lives: about 50 packets per second.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trickle {
    fn start(site: &Site) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = site.client.name.clone();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            lb_tests::netns::enter_named(&ns, || {
                let s = UdpSocket::bind((CLIENT, 47000)).expect("bind");
                // Bounded: at most 30 s, whatever happens to the test.
                for _ in 0..1500 {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    let _ = s.send_to(b"query", (VIP, 53));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `lbctl node drain` withdraws every VIP while the node goes on
/// forwarding; `--wait` follows the VIP traffic and says by its exit
/// status whether it stopped or the deadline passed; the drain survives a
/// crash and restart; `lbctl node resume` announces again. Status and
/// metrics show it all.
#[test]
fn cp_node_drain_withdraws_every_vip_until_resume_and_the_node_keeps_forwarding() {
    let site = Site::new();
    let mut lbd = Lbd::start_with(
        &site.lb,
        Paths::new("andrain"),
        site.config(json!({"type": "none"})),
        &["--metrics", "127.0.0.1:9464"],
    );
    wait_for(
        "both VIP addresses announced",
        Duration::from_secs(5),
        || site.routes() == [ours(VIP), ours(VIP6)],
    );
    let announced = format!("lb_vip_announced{{vip=\"{VIP_REF}\"}} 1");
    wait_for("the metrics", Duration::from_secs(3), || {
        let text = scrape(&site);
        text.contains(&announced) && text.contains("lb_node_drained 0")
    });

    let reply = lbd.json(&["node", "drain"]);
    assert_eq!(reply["drained"], true, "{reply}");
    assert_eq!(reply["announced"], json!([]), "{reply}");
    // Withdrawn before lbctl returned.
    assert_eq!(site.routes(), Vec::<String>::new());
    let status = lbd.json(&["status"]);
    assert_eq!(status["drained"], true);
    assert_eq!(
        states(&lbd)[0].1,
        "withdrawn: the node is drained (lbctl node resume announces again)"
    );
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("node: DRAINED"), "{text}");
    let withdrawn = format!("lb_vip_announced{{vip=\"{VIP_REF}\"}} 0");
    let text = scrape(&site);
    assert!(
        text.contains(&withdrawn) && text.contains("lb_node_drained 1"),
        "{text}"
    );

    // Still forwarding what arrives.
    let tx = counter(&lbd, "tx");
    site.send_flows(46000..46010);
    wait_for("forwarding while drained", Duration::from_secs(5), || {
        counter(&lbd, "tx") >= tx + 10
    });

    // Waits that could never end well are refused before anything is done.
    for (args, says) in [
        (
            &["--idle-below", "0"][..],
            "--idle-below 0 can never be met",
        ),
        (
            &["--deadline", "2"][..],
            "--idle-for 3 is longer than --deadline 2",
        ),
    ] {
        let mut all = vec!["node", "drain", "--wait"];
        all.extend_from_slice(args);
        let out = lbd.ctl(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
    }

    // Traffic still arriving: the deadline passes, exit status 2.
    {
        let _trickle = Trickle::start(&site);
        let out = lbd.ctl(&[
            "node",
            "drain",
            "--wait",
            "--deadline",
            "2",
            "--idle-for",
            "2",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("node already drained"), "{text}");
        assert!(
            text.contains("deadline passed after 2 s: traffic still arrives"),
            "{text}"
        );
    }
    // Quiet: it stops, exit status 0.
    let out = lbd.ctl(&[
        "--json",
        "node",
        "drain",
        "--wait",
        "--idle-for",
        "2",
        "--deadline",
        "20",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["stopped"], true, "{text}");
    // One line per second, the first the drain's reply.
    let samples: Vec<Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v.get("packets_per_s").is_some())
        .collect();
    assert!(samples.len() >= 2, "{text}");
    assert!(samples.iter().all(|s| s["packets_per_s"] == 0.0), "{text}");

    // A crash does not undrain the node.
    lbd.restart();
    assert_eq!(lbd.json(&["status"])["drained"], true);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(site.routes(), Vec::<String>::new());

    let out = lbd.ctl(&["node", "resume"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!("VIP addresses announced: {VIP}, {VIP6}")),
        "{text}"
    );
    assert_eq!(site.routes(), [ours(VIP), ours(VIP6)]);
    assert_eq!(lbd.json(&["status"])["drained"], false);
    wait_for("the metrics", Duration::from_secs(3), || {
        let text = scrape(&site);
        text.contains(&announced) && text.contains("lb_node_drained 0")
    });
}

/// Like the pinned program, the routes outlive lbd: a SIGKILL and a
/// SIGTERM leave them, a restarted lbd adopts them without writing, and
/// `lbd --teardown` removes them (and only them).
#[test]
fn cp_routes_survive_lbd_exiting_and_teardown_removes_them() {
    let site = Site::new();
    let mut lbd = Lbd::start(
        &site.lb,
        Paths::new("anrestart"),
        site.config(json!({"type": "none"})),
    );
    wait_for(
        "both VIP addresses announced",
        Duration::from_secs(5),
        || site.routes() == [ours(VIP), ours(VIP6)],
    );
    let theirs = "blackhole 203.0.113.0/24 proto 99";
    site.lb.exec(&[
        "ip",
        "route",
        "add",
        "blackhole",
        "203.0.113.0/24",
        "table",
        "1000",
        "proto",
        "99",
    ]);

    let all = sorted(vec![theirs.to_string(), ours(VIP), ours(VIP6)]);
    lbd.kill();
    assert_eq!(site.routes(), all);
    lbd.restart();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(site.routes(), all);
    let log = lbd.log();
    assert!(
        !log.contains("route added") && !log.contains("route removed"),
        "the restart rewrote routes instead of adopting them:\n{log}"
    );

    // SIGTERM: lbd exits cleanly, and leaves the routes.
    let pid = lbd.pid().expect("lbd runs") as i32;
    // SAFETY: a signal to the lbd this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_for("lbd to exit", Duration::from_secs(5), || {
        !lbd.paths.socket.exists()
    });
    assert_eq!(site.routes(), all);
    lbd.kill();

    let out = lbd.run_once(&["--teardown"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(site.routes(), [theirs.to_string()]);
}

/// Only routes of lbd's protocol number are lbd's: others in its table are
/// never touched, even one that takes a VIP's place (that VIP is then not
/// announced, and status says why); routes of lbd's number that lbd would
/// not write (another prefix, another type) are removed.
#[test]
fn cp_routes_of_other_protocols_are_left_alone_and_stray_ones_of_ours_removed() {
    let site = Site::new();
    let add = |args: &[&str]| {
        let mut cmd = vec!["ip"];
        cmd.extend_from_slice(args);
        site.lb.exec(&cmd);
    };
    // Another program's routes, one of them where VIP6's would go.
    add(&[
        "route",
        "add",
        "blackhole",
        "203.0.113.0/24",
        "table",
        "1000",
        "proto",
        "99",
    ]);
    add(&[
        "-6",
        "route",
        "add",
        "blackhole",
        VIP6,
        "table",
        "1000",
        "proto",
        "99",
    ]);
    // Left behind with lbd's number: not a VIP, not a host route, the
    // wrong type.
    add(&[
        "route",
        "add",
        "blackhole",
        "198.51.100.99",
        "table",
        "1000",
        "proto",
        "210",
    ]);
    add(&[
        "route",
        "add",
        "blackhole",
        "198.51.100.0/24",
        "table",
        "1000",
        "proto",
        "210",
    ]);
    add(&[
        "route",
        "add",
        "unreachable",
        VIP,
        "table",
        "1000",
        "proto",
        "210",
    ]);

    let lbd = Lbd::start(
        &site.lb,
        Paths::new("anforeign"),
        site.config(json!({"type": "none"})),
    );
    let theirs = [
        "blackhole 203.0.113.0/24 proto 99".to_string(),
        format!("blackhole {VIP6} proto 99"),
    ];
    assert_eq!(
        site.routes(),
        sorted(vec![theirs[0].clone(), ours(VIP), theirs[1].clone()])
    );
    let status = lbd.json(&["status"]);
    let error = status["announce"]["error"].as_str().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "{VIP6}: table 1000 already has a route to it of another protocol number, left alone: the VIP is not announced"
        )
    );
    assert_eq!(
        states(&lbd)[1].1,
        "not announced: its route could not be written (see error)"
    );
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("announce error: {error}")), "{text}");
    // Said once, not every second.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        lbd.log()
            .matches("the kernel's route table could not be brought in line")
            .count(),
        1
    );

    // The other program's route goes: lbd's takes its place at the next
    // tick, and the error clears.
    site.lb.exec(&[
        "ip", "-6", "route", "del", VIP6, "table", "1000", "proto", "99",
    ]);
    wait_for("VIP6 announced", Duration::from_secs(3), || {
        site.routes().contains(&ours(VIP6))
    });
    assert_eq!(lbd.json(&["status"])["announce"]["error"], Value::Null);
}

/// `lbctl apply` of lbd's configuration file with `announce` set.
fn apply(lbd: &Lbd, announce: Value) -> std::process::Output {
    let mut c = lbd.config_file();
    c["announce"] = announce;
    let path = lbd.paths.dir.join("apply.json");
    std::fs::write(&path, c.to_string()).unwrap();
    lbd.ctl(&["apply", "-f", path.to_str().unwrap()])
}

/// A table or protocol lbd must not use is refused with a message that
/// names the field, at `--check`, at start and at `lbctl apply`, and the
/// running state stays as it was; a table some `ip rule` looks up is
/// refused too. A table changed at run time is emptied of lbd's routes.
#[test]
fn cp_an_unusable_table_or_protocol_is_refused_and_changes_nothing() {
    let site = Site::new();
    let mut config = site.config(json!({"type": "none"}));
    config.as_object_mut().unwrap().remove("announce");
    let mut lbd = Lbd::start(&site.lb, Paths::new("anbad"), config.clone());
    let refused = lbd.ctl(&["node", "drain"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("announce is not configured"),
        "{refused:?}"
    );

    let check = |announce: Value| {
        let mut c = lbd.config_file();
        c["announce"] = announce;
        let path = lbd.paths.dir.join("check.json");
        std::fs::write(&path, c.to_string()).unwrap();
        let out = Command::new(lb_tests::lbd::binary("lbd"))
            .args(["--check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        check(json!({"table": 254})).contains("announce.table: 254 is the kernel's main table, which the host routes by: give lbd a table of its own, which no ip rule looks up"),
    );
    assert!(
        check(json!({"protocol": 2})).contains("announce.protocol: 2 is the kernel's own (unspec, redirect, kernel, boot, static): give lbd a number no other program writes routes with"),
    );

    // A rule that looks the table up: refused at apply, and at start.
    site.lb
        .exec(&["ip", "rule", "add", "pref", "100", "lookup", "1000"]);
    let out = apply(&lbd, json!({"table": TABLE, "protocol": PROTO}));
    assert!(!out.status.success());
    let rule_message = "announce.table: 1000 is looked up by ip rule 100 (IPv4): lbd's blackhole routes there would drop this host's own packets to its VIPs; give lbd a table that no ip rule looks up";
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(rule_message),
        "{out:?}"
    );
    assert_eq!(lbd.json(&["config", "dump"]).get("announce"), None);
    assert_eq!(lbd.json(&["status"])["announce"], Value::Null);
    assert_eq!(site.routes(), Vec::<String>::new());

    let mut file = lbd.config_file();
    file["announce"] = json!({"table": TABLE, "protocol": PROTO});
    std::fs::write(&lbd.paths.config, file.to_string()).unwrap();
    lbd.kill();
    let out = lbd.run_once(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(rule_message),
        "{out:?}"
    );
    site.lb.exec(&["ip", "rule", "del", "pref", "100"]);
    lbd.restart();
    assert_eq!(site.routes(), [ours(VIP), ours(VIP6)]);

    // lbd's own protocol number taken by BIRD: refused, nothing changes.
    let out = apply(&lbd, json!({"table": TABLE, "protocol": 12}));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("announce.protocol: 12 is BIRD's"),
        "{out:?}"
    );
    assert_eq!(site.routes(), [ours(VIP), ours(VIP6)]);

    // Another table: the old one is emptied of lbd's routes.
    let out = apply(&lbd, json!({"table": 1001, "protocol": PROTO}));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(site.routes(), Vec::<String>::new());
    assert_eq!(site.lb.routes_in_table(1001), [ours(VIP), ours(VIP6)]);
}

/// The program attached to no interface balances nothing here: the VIPs
/// are withdrawn while lb0 is gone, and announced when lbd has attached to
/// it again.
#[test]
fn cp_vips_are_withdrawn_while_the_interface_is_gone() {
    let site = Site::new();
    let lbd = Lbd::start(
        &site.lb,
        Paths::new("angone"),
        site.config(json!({"type": "none"})),
    );
    wait_for(
        "both VIP addresses announced",
        Duration::from_secs(5),
        || site.routes() == [ours(VIP), ours(VIP6)],
    );
    site.lb.exec(&["ip", "link", "del", "lb0"]);
    wait_for("the VIPs withdrawn", Duration::from_secs(3), || {
        site.routes().is_empty()
    });
    assert_eq!(
        states(&lbd)[0].1,
        "withdrawn: the program is attached to no interface"
    );
    site.create_link();
    wait_for("the VIPs announced again", Duration::from_secs(3), || {
        site.routes() == [ours(VIP), ours(VIP6)]
    });
    assert_eq!(lbd.json(&["status"])["interfaces"][0]["state"], "attached");
}

/// The shipped BIRD configurations, end to end: BIRD on the LB node (the
/// file of deploy/bird/ with its defines set to lbd's table and protocol)
/// exports lbd's routes over BGP with BFD to BIRD on the router, which
/// routes the VIPs to the node in its kernel; a drain takes them away, a
/// resume brings them back.
#[test]
fn cp_bird_exports_lbds_routes_to_the_router() {
    let site = Site::new();
    let router = Netns::new("anrt");
    veth(&site.lb, "up0", &router, "down0");
    for (ns, dev, v4, v6) in [
        (&site.lb, "up0", "192.0.2.11/24", "2001:db8:1::11/64"),
        (&router, "down0", "192.0.2.1/24", "2001:db8:1::1/64"),
    ] {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
        ns.exec(&["ip", "addr", "add", v6, "dev", dev, "nodad"]);
    }
    let paths = Paths::new("anbird");
    let mut config = site.config(json!({"type": "none"}));
    let no_bird = paths.dir.join("no-bird.ctl");
    config["speaker"] = json!({ "bird_socket": no_bird });
    let lbd = Lbd::start_with(&site.lb, paths, config, &["--metrics", "127.0.0.1:9464"]);
    wait_for(
        "both VIP addresses announced",
        Duration::from_secs(5),
        || site.routes() == [ours(VIP), ours(VIP6)],
    );
    // Nobody exports the routes yet, and lbd says so.
    let speaker = |lbd: &Lbd| lbd.json(&["status"])["speaker"].clone();
    wait_for("lbd to find no BIRD", Duration::from_secs(5), || {
        speaker(&lbd)["reachable"] == false
    });
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "speaker: BIRD not reachable at {}",
            no_bird.display()
        )) && text.contains("no router hears of this node's VIPs"),
        "{text}"
    );
    let node_conf = with_defines(
        LB_NODE_CONF,
        &[
            ("LB_TABLE", &TABLE.to_string()),
            ("LB_PROTOCOL", &PROTO.to_string()),
        ],
    );
    let lb_bird = Bird::start(&site.lb, "lb1", &node_conf);
    let router_bird = Bird::start(&router, "router", ROUTER_CONF);
    wait_for("both BGP sessions up", Duration::from_secs(20), || {
        lb_bird.established("router4") && lb_bird.established("router6")
    });
    let route = |family: &str, vip: &str| router.exec(&["ip", family, "route", "show", vip]);
    wait_for(
        "the VIPs routed to the node",
        Duration::from_secs(5),
        || {
            // IPv6 over the link's link-local next hop, as BIRD prefers for a
            // direct session.
            route("-4", VIP).contains("via 192.0.2.11 dev down0 proto bird")
                && route("-6", VIP6).contains("dev down0 proto bird")
        },
    );
    // Pointed at the node's BIRD (a reload), lbd sees both sessions up.
    let mut config = lbd.config_file();
    config["speaker"] = json!({ "bird_socket": lb_bird.socket() });
    let file = lbd.paths.dir.join("with-bird.json");
    std::fs::write(&file, config.to_string()).unwrap();
    lbd.json(&["apply", "-f", file.to_str().unwrap()]);
    wait_for("lbd to see both sessions", Duration::from_secs(5), || {
        speaker(&lbd)["established"] == 2
    });
    let text = String::from_utf8_lossy(&lbd.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("speaker: BIRD 2.") && text.contains("2 of 2 BGP sessions established"),
        "{text}"
    );
    let metrics = scrape(&site);
    assert!(
        metrics.contains("lb_bgp_speaker_up{speaker=\"bird\"} 1")
            && metrics.contains("lb_bgp_sessions_established{speaker=\"bird\"} 2"),
        "{metrics}"
    );
    // Only lbd's routes: BIRD learnt nothing else from the table.
    let learnt = lb_bird.birdc(&["show", "route", "protocol", "lbd_vips4"]);
    assert!(learnt.contains(&format!("{VIP}/32")), "{learnt}");
    let bfd = lb_bird.birdc(&["show", "bfd", "sessions"]);
    assert!(bfd.contains("Up"), "{bfd}");

    lbd.json(&["node", "drain"]);
    wait_for(
        "the VIPs gone from the router",
        Duration::from_secs(5),
        || route("-4", VIP).is_empty() && route("-6", VIP6).is_empty(),
    );
    lbd.json(&["node", "resume"]);
    wait_for(
        "the VIPs back on the router",
        Duration::from_secs(5),
        || route("-4", VIP).contains("via 192.0.2.11") && route("-6", VIP6).contains("proto bird"),
    );
    // The router's BIRD gone: the node is peering with nobody.
    drop(router_bird);
    wait_for("lbd to see no session", Duration::from_secs(15), || {
        speaker(&lbd)["established"] == 0
    });
    let status = speaker(&lbd);
    assert!(
        status["summary"]
            .as_str()
            .is_some_and(|s| s.contains("no BGP session established (router4 ")),
        "{status}"
    );
    assert!(
        lbd.log().contains("BGP speaker not peering"),
        "{}",
        lbd.log()
    );
}
