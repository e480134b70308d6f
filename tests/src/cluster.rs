//! Several LB nodes behind a router, as docs/cluster.md describes them:
//! a client, a router running BIRD (one ECMP route per VIP, BFD), three
//! LB nodes each running lbd and BIRD with the shipped configurations,
//! and backends running `lb_decap` (through `lb-decap attach`, every node
//! an allowed tunnel source) and a TCP echo server that answers the
//! client directly. Each host is a namespace; everything is removed when
//! the `Cluster` is dropped, also when a test fails.
//!
//! ```text
//!   client 203.0.113.7 ── 203.0.113.1 router (BIRD, AS 65000)
//!                                       192.0.2.1, 2001:db8:1::1
//!                                            │
//!                       br0 (ns "net") ──────┼──────────────────
//!        lb1 .11   lb2 .12   lb3 .13  (lbd + BIRD, AS 65001)
//!        be1 .101 .. be5 .105 (configured), be6 .106 (the spare)
//! ```
//!
//! VIP 198.51.100.10:7/tcp is on every backend's loopback. The router
//! hashes ports (`fib_multipath_hash_policy=1`), so each connection goes
//! to one node; every node has the same ring, so to the same backend.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use lb_common::maps::PROG_DECAP;
use lb_userspace::datapath::{Datapath, MapSizes};
use serde_json::{Value, json};

use crate::{
    bird::{Bird, LB_NODE_CONF, ROUTER_CONF, with_defines},
    conversations::EchoServer,
    lbd::{Lbd, Paths, binary},
    netns::{Netns, veth},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The router's address on the client's link.
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The router's address on the LB nodes' segment (deploy/bird's ROUTER_V4).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PORT: u16 = 7;
pub const VIP_REF: &str = "198.51.100.10:7/tcp";
/// The GUE port of second chance (lbd's default `second_chance.gue_port`).
pub const GUE_PORT: u16 = 6080;
/// LB nodes: deploy/bird/router.conf lists these three.
pub const NODES: usize = 3;
/// Backends in the configuration from the start; one more is ready to be
/// added.
pub const BACKENDS: usize = 5;

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

/// Node `i`'s IPv6 address on the segment (deploy/bird's NODE_V6), for
/// the IPv6 BGP session the shipped router configuration expects.
pub fn node_addr6(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11 + i as u16)
}

pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 101 + i as u8)
}

/// Whether the nodes and backends use second chance
/// (`second_chance.enabled`, GUE on the backends), and whether the VIP is
/// stateless on the nodes (`vips[].stateless`; needs second chance).
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub second_chance: bool,
    pub stateless: bool,
}

/// An LB node. Fields drop in order: lbd (its teardown runs in the
/// namespace), BIRD, then the namespace.
pub struct LbNode {
    pub name: String,
    pub addr: Ipv4Addr,
    pub lbd: Lbd,
    pub bird: Bird,
    pub ns: Netns,
}

/// A backend: `lb_decap` pinned under `pin_dir` (removed on drop, after
/// the namespace and so the interface are gone) and an echo server.
pub struct Backend {
    pub name: String,
    /// The greeting byte of its echo server: its number, from 1.
    pub id: u8,
    pub addr: Ipv4Addr,
    pub server: EchoServer,
    pub ns: Netns,
    pub pin_dir: PinDir,
}

/// A pin directory, removed on drop.
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Cluster {
    pub nodes: Vec<LbNode>,
    pub router_bird: Bird,
    /// All of them, the spare last.
    pub backends: Vec<Backend>,
    pub options: Options,
    /// `lb_decap` as a pass-through on the bridge ports facing the nodes
    /// and the backends: a veth receiving XDP_TX frames needs an XDP
    /// program on its peer.
    _pass: Datapath,
    pub client: Netns,
    pub router: Netns,
    pub net: Netns,
}

fn sysctl(ns: &Netns, settings: &[&str]) {
    for s in settings {
        ns.exec(&["sysctl", "-q", "-w", s]);
    }
}

fn permanent_neighbour(ns: &Netns, addr: Ipv4Addr, mac: &str) {
    ns.exec(&[
        "ip",
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
}

impl Cluster {
    /// Build the lab, start everything, and wait until the router routes
    /// the VIP to all three nodes.
    pub fn start(options: Options) -> Self {
        let net = Netns::new("cnet");
        net.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        net.exec(&["ip", "link", "set", "br0", "up"]);
        let join = |host: &Netns, dev: &str, port: &str| {
            veth(host, dev, &net, port);
            net.exec(&["ip", "link", "set", port, "master", "br0"]);
            host.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{dev}.accept_dad=0"),
            ]);
        };

        let client = Netns::new("ccli");
        let router = Netns::new("crt");
        veth(&client, "eth0", &router, "eth0");
        // The nodes forward the client's frames as they are: checksums
        // must be complete on the wire, as a real NIC makes them.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        client.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"]);
        client.exec(&[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &ROUTER_CLIENT_SIDE.to_string(),
        ]);

        join(&router, "eth1", "p-rt");
        sysctl(
            &router,
            &[
                "net.ipv4.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
            ],
        );
        for (v4, v6, dev) in [
            (format!("{ROUTER_CLIENT_SIDE}/24"), None, "eth0"),
            (
                format!("{ROUTER}/24"),
                Some("2001:db8:1::1/64".to_string()),
                "eth1",
            ),
        ] {
            router.exec(&["ip", "addr", "add", &v4, "dev", dev]);
            if let Some(v6) = v6 {
                router.exec(&["ip", "addr", "add", &v6, "dev", dev, "nodad"]);
            }
        }

        let sizes = MapSizes {
            max_vips: 1,
            max_backends: 1,
            ring_size: 2,
            conn_entries: 256,
            probation_entries: 16,
            frag_entries: 256,
        };
        let mut pass = Datapath::load(sizes).expect("load the pass-through program");

        let mut backends = Vec::new();
        for i in 0..=BACKENDS {
            let name = format!("be{}", i + 1);
            let ns = Netns::new(&format!("c{name}"));
            let port = format!("p-{name}");
            join(&ns, "eth0", &port);
            net.enter(|| pass.attach(PROG_DECAP, &port, XdpMode::Driver))
                .expect("pass-through on a backend's port");
            let addr = backend_addr(i);
            // The VIP lives on loopback: the backend must not answer ARP
            // for it on the segment.
            sysctl(
                &ns,
                &[
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.eth0.rp_filter=0",
                    "net.ipv4.conf.all.forwarding=1",
                ],
            );
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            // Answers go straight to the client through the router; the
            // MSS leaves room for the tunnel header.
            ns.exec(&[
                "ip",
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &ROUTER.to_string(),
                "advmss",
                "1440",
            ]);
            let pin_dir = PinDir(PathBuf::from("/sys/fs/bpf").join(&ns.name));
            let server = EchoServer::start(&ns, PORT, i as u8 + 1);
            backends.push(Backend {
                name,
                id: i as u8 + 1,
                addr,
                server,
                ns,
                pin_dir,
            });
        }
        // Every backend knows the others (a second hop goes to one).
        for b in &backends {
            for other in &backends {
                if other.addr != b.addr {
                    permanent_neighbour(&b.ns, other.addr, &other.ns.mac_text("eth0"));
                }
            }
        }
        let mut node_nss = Vec::new();
        for i in 0..NODES {
            let ns = Netns::new(&format!("clb{}", i + 1));
            let port = format!("p-lb{}", i + 1);
            join(&ns, "eth0", &port);
            net.enter(|| pass.attach(PROG_DECAP, &port, XdpMode::Driver))
                .expect("pass-through on a node's port");
            // The bridge floods frames to a node cut off (its MAC forgotten)
            // to the others, as a switch does; XDP on a veth sees them,
            // and the lb program leaves them to the kernel, which drops
            // them (pass_other_host): the cut loses what the router still
            // sends to the dead node until it notices.
            sysctl(
                &ns,
                &[
                    "net.ipv4.conf.all.forwarding=1",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            );
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", node_addr(i)),
                "dev",
                "eth0",
            ]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/64", node_addr6(i)),
                "dev",
                "eth0",
                "nodad",
            ]);
            // The FIB lookup never meets an unresolved backend.
            for b in &backends {
                permanent_neighbour(&ns, b.addr, &b.ns.mac_text("eth0"));
            }
            node_nss.push(ns);
        }

        // Loading programs is most of the time here: all at once.
        let lbds: Vec<Lbd> = std::thread::scope(|s| {
            let decaps: Vec<_> = backends
                .iter()
                .map(|b| s.spawn(|| decap_attach(b, &backends, options)))
                .collect();
            let lbds: Vec<_> = node_nss
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    s.spawn(move || {
                        Lbd::start_with(
                            ns,
                            Paths::new(&format!("clb{}", i + 1)),
                            lbd_config(options),
                            &["--tunnel-source-v4", &node_addr(i).to_string()],
                        )
                    })
                })
                .collect();
            for d in decaps {
                d.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            }
            lbds.into_iter()
                .map(|l| l.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });

        let mut nodes = Vec::new();
        for (i, (ns, lbd)) in node_nss.into_iter().zip(lbds).enumerate() {
            let name = format!("lb{}", i + 1);
            let addr = node_addr(i);
            let bird_conf = with_defines(
                LB_NODE_CONF,
                &[
                    ("NODE_ID", &addr.to_string()),
                    ("NODE_V4", &addr.to_string()),
                    ("NODE_V6", &node_addr6(i).to_string()),
                ],
            );
            let bird = Bird::start(&ns, &name, &bird_conf);
            nodes.push(LbNode {
                name,
                addr,
                lbd,
                bird,
                ns,
            });
        }
        let router_bird = Bird::start(&router, "router", ROUTER_CONF);
        let cluster = Self {
            nodes,
            router_bird,
            backends,
            options,
            _pass: pass,
            client,
            router,
            net,
        };
        let all: Vec<Ipv4Addr> = (0..NODES).map(node_addr).collect();
        if cluster
            .wait_for_next_hops(&all, Duration::from_secs(30))
            .is_none()
        {
            panic!(
                "the router never routed the VIP to all nodes: {:?}\n{}",
                cluster.next_hops(),
                cluster.router_bird.birdc(&["show", "protocols"])
            );
        }
        cluster
    }

    pub fn vip(&self) -> SocketAddr {
        (VIP, PORT).into()
    }

    /// The next hops of the router's route to the VIP, sorted.
    pub fn next_hops(&self) -> Vec<Ipv4Addr> {
        let out = self
            .router
            .exec(&["ip", "-j", "route", "show", &VIP.to_string()]);
        let routes: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let mut hops: Vec<Ipv4Addr> = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.extend(g.parse::<Ipv4Addr>().ok());
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                hops.extend(
                    h["gateway"]
                        .as_str()
                        .and_then(|g| g.parse::<Ipv4Addr>().ok()),
                );
            }
        }
        hops.sort();
        hops
    }

    /// Poll the router's route (every 10 ms) until its next hops are
    /// `want`; how long that took, or `None` after `within`.
    pub fn wait_for_next_hops(&self, want: &[Ipv4Addr], within: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if self.next_hops() == want {
                return Some(started.elapsed());
            }
            if started.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Add backend `i` (the spare) to the VIP on every node still running,
    /// all at once: each rebuilds its ring.
    pub fn add_backend(&self, i: usize, nodes: &[usize]) {
        let addr = self.backends[i].addr.to_string();
        std::thread::scope(|s| {
            for &n in nodes {
                let lbd = &self.nodes[n].lbd;
                let addr = &addr;
                s.spawn(move || lbd.json(&["backend", "add", VIP_REF, addr]));
            }
        });
    }

    /// Node `n` dies: its link goes down, lbd and BIRD are killed. The
    /// instant the link went down.
    pub fn cut(&mut self, n: usize) -> Instant {
        let node = &mut self.nodes[n];
        node.ns.exec(&["ip", "link", "set", "eth0", "down"]);
        let at = Instant::now();
        node.lbd.kill();
        node.bird.kill();
        at
    }

    /// `lbctl cluster check` over the control sockets of `nodes`: its
    /// output, and whether every VIP's rings were the same.
    pub fn ring_check(&self, nodes: &[usize]) -> (bool, String) {
        let out = Command::new(binary("lbctl"))
            .args(["cluster", "check"])
            .args(nodes.iter().map(|&n| &self.nodes[n].lbd.paths.socket))
            .output()
            .expect("run lbctl cluster check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Counter `name` of `lbctl status` on node `n`.
    pub fn node_counter(&self, n: usize, name: &str) -> u64 {
        self.nodes[n].lbd.json(&["status"])["counters"][name]
            .as_u64()
            .unwrap_or(0)
    }

    /// The counters of `lb-decap status`, summed over the backends (each
    /// status loads the program: the backends are asked at once).
    pub fn backend_counters(&self) -> BTreeMap<String, u64> {
        let statuses: Vec<Value> = std::thread::scope(|s| {
            let asked: Vec<_> = self
                .backends
                .iter()
                .map(|b| s.spawn(move || lb_decap(b, &["status", "--json"])))
                .collect();
            asked
                .into_iter()
                .map(|a| {
                    let out = a.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                    serde_json::from_str(&out).expect("lb-decap status JSON")
                })
                .collect()
        });
        let mut sums = BTreeMap::new();
        for status in statuses {
            for (name, n) in status["counters"].as_object().into_iter().flatten() {
                *sums.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        sums
    }
}

/// The configuration every node runs (the tunnel source is each node's
/// own, from `--tunnel-source-v4`): one VIP over the first `BACKENDS`
/// backends, announced in table 200 with protocol 201 (deploy/bird's
/// defaults).
fn lbd_config(options: Options) -> Value {
    let mut config = json!({
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": node_addr(0).to_string()},
        "next_hop": {"fib": true},
        "tables": {"ring_size": 4093, "conn_entries": 65536, "max_vips": 8, "max_backends": 64},
        "announce": {"table": 200, "protocol": 201},
        "vips": [{
            "address": VIP.to_string(), "port": PORT, "protocol": "tcp",
            "health_check": {"type": "none"},
            "backends": (0..BACKENDS)
                .map(|i| json!({"address": backend_addr(i).to_string()}))
                .collect::<Vec<_>>(),
        }],
    });
    if options.second_chance {
        config["second_chance"] = json!({"enabled": true});
    }
    if options.stateless {
        config["vips"][0]["stateless"] = true.into();
    }
    config
}

/// Run lb-decap with `args` in backend `b`'s namespace (nsenter keeps the
/// host's bpffs); its stdout. Panics with its stderr on failure.
fn lb_decap(b: &Backend, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", b.ns.name))
        .arg(binary("lb-decap"))
        .arg("--pin-dir")
        .arg(&b.pin_dir.0)
        .args(args)
        .output()
        .expect("run lb-decap");
    assert!(
        out.status.success(),
        "lb-decap {} on {}: {}",
        args.join(" "),
        b.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lb-decap attach` on backend `b`: tunnels to its address from any node;
/// with second chance, GUE too, and the other backends as second hops.
fn decap_attach(b: &Backend, all: &[Backend], options: Options) {
    let addr = b.addr.to_string();
    let mut args: Vec<String> = ["attach", "--interface", "eth0", "--address", &addr]
        .map(String::from)
        .to_vec();
    for n in 0..NODES {
        args.extend(["--allow-source".into(), node_addr(n).to_string()]);
    }
    if options.second_chance {
        args.extend(["--gue-port".into(), GUE_PORT.to_string()]);
        for other in all.iter().filter(|o| o.addr != b.addr) {
            args.extend(["--peer".into(), other.addr.to_string()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lb_decap(b, &args);
}
