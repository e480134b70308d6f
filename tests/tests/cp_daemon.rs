//! The daemon and its parts driven in-process (`lb_userspace::daemon::Daemon`,
//! the tunnel prober), inside a namespace the test creates: for orderings
//! of events, and replies from backends, that the lbd binary and real
//! backends cannot be made to show deterministically.

use std::net::TcpListener;

use lb_tests::{
    lbd::Paths,
    netns::{Netns, veth},
};
use lb_userspace::{
    config::{Config, NodeOverrides},
    control::{ReplyData, Request},
    daemon::{self, CheckKey, Daemon},
    health::{HealthEvent, Transition},
};
use serde_json::json;
use tokio::sync::mpsc;

const VIP: &str = "198.51.100.10";
const BACKEND: &str = "198.51.100.101";

/// Removes what the daemon pinned, also when the test fails.
struct Teardown(Config);

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = daemon::teardown(&self.0);
    }
}

fn config(paths: &Paths, interval_ms: u64) -> Config {
    let json = json!({
        "interfaces": [{"name": "lb0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "next_hop": {"fib": false, "gateway_mac": "02:00:00:00:00:fe"},
        "tables": {"ring_size": 251, "conn_entries": 1024, "max_vips": 4, "max_backends": 16},
        "pin_dir": paths.pin_dir,
        "control": {"socket": paths.socket},
        "vips": [{
            "address": VIP, "port": 80, "protocol": "tcp",
            // The backend is an address of this namespace: no tunnel.
            "health_check": {"type": "tcp", "interval_ms": interval_ms, "timeout_ms": 50, "rise": 1, "fall": 1, "through_tunnel": false},
            "backends": [{"address": BACKEND}],
        }],
    });
    Config::from_json(&json.to_string()).expect("valid config")
}

/// The backend's health as `lbctl backend list` shows it, and whether it
/// is in the VIP's table.
fn health(daemon: &mut Daemon) -> (String, bool) {
    let reply = daemon.handle(Request::BackendList { vip: None });
    let Some(ReplyData::BackendList(rows)) = reply.data else {
        panic!("not a backend list: {reply:?}");
    };
    (rows[0].health.name().to_string(), rows[0].in_table)
}

/// The next result of the checker of generation `generation`, skipping
/// results of others.
async fn next_of(
    rx: &mut mpsc::Receiver<HealthEvent<CheckKey>>,
    generation: u64,
) -> HealthEvent<CheckKey> {
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a health result within 5 s")
            .expect("checker running");
        if ev.key.generation == generation {
            return ev;
        }
    }
}

/// Defect: when a backend's check settings change, its checker is
/// replaced, but results the old checker had queued were still applied
/// and could flip the backend for an interval. They are ignored now; the
/// new checker's results count.
#[test]
fn cp_health_results_queued_by_a_replaced_checker_are_ignored() {
    let ns = Netns::new("hgen");
    veth(&ns, "lb0", &ns, "lb1");
    ns.exec(&["ip", "addr", "add", &format!("{BACKEND}/32"), "dev", "lo"]);
    let paths = Paths::new("hgen");
    let first = config(&paths, 100);
    let _teardown = Teardown(first.clone());
    ns.enter(|| {
        let _listener = TcpListener::bind((BACKEND, 80)).expect("backend port");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, mut rx) = mpsc::channel(64);
            let path = paths.config.clone();
            let mut daemon = Daemon::start(
                first,
                path,
                NodeOverrides::default(),
                tx,
                mpsc::channel(64).0,
            )
            .expect("daemon starts");
            assert_eq!(health(&mut daemon).0, "down", "checked backends start down");
            let old = next_of(&mut rx, 1).await;
            assert!(old.up, "{old:?}");
            daemon.on_health(old.clone());
            assert_eq!(health(&mut daemon), ("up".into(), true));

            // New check settings: a new checker (generation 2) takes over.
            daemon.apply(config(&paths, 150)).expect("apply");
            // A result the replaced checker had queued, saying down.
            let stale = HealthEvent {
                up: false,
                transition: Some(Transition::Down),
                ..old
            };
            daemon.on_health(stale);
            assert_eq!(
                health(&mut daemon),
                ("up".into(), true),
                "a replaced checker's result flipped the backend"
            );

            // The new checker's results do count.
            let new = next_of(&mut rx, 2).await;
            daemon.on_health(HealthEvent {
                up: false,
                transition: Some(Transition::Down),
                ..new
            });
            assert_eq!(health(&mut daemon), ("down".into(), false));
        });
    });
}

/// A backend that answers tunnel probes itself: it reads the IP-in-IP
/// packets sent to its address and answers the inner SYN (with a SYN-ACK)
/// or datagram (with `pong`) from the VIP, straight to the probe's source,
/// as a backend's kernel would after `lb_decap`. With `replay`, it answers
/// every probe after the first with the first one's answer: what a backend
/// retransmits after a lost RST, or what anyone who saw one probe can send.
struct ProbeAnswerer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeAnswerer {
    /// Start answering; call inside the namespace.
    fn start(replay: bool) -> Self {
        use socket2::{Domain, Protocol, Socket, Type};
        use std::sync::{Arc, atomic::AtomicBool};
        let tunnel = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_IPIP)),
        )
        .expect("raw IPIP socket");
        tunnel
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        // IPPROTO_RAW: the answers are sent with the header built here.
        let send = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw sending socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut first: Option<Vec<u8>> = None;
            let mut buf = [0u8; 2048];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = std::io::Read::read(&mut &tunnel, &mut buf) else {
                    continue;
                };
                let Some((answer, to)) = answer_probe(&buf[..n]) else {
                    continue;
                };
                let sent = match (&first, replay) {
                    (Some(first), true) => first.clone(),
                    _ => answer.clone(),
                };
                first.get_or_insert(answer);
                let to = std::net::SocketAddr::new(to.into(), 0);
                send.send_to(&sent, &to.into()).expect("send the answer");
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ProbeAnswerer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to the probe inside the IP-in-IP packet `outer`, and where
/// it goes: `None` for anything but a SYN or a datagram.
fn answer_probe(outer: &[u8]) -> Option<(Vec<u8>, std::net::Ipv4Addr)> {
    use etherparse::{IpNumber, Ipv4Slice, PacketBuilder, TcpSlice, UdpSlice};
    let outer = Ipv4Slice::from_slice(outer).ok()?;
    let inner = Ipv4Slice::from_slice(outer.payload().payload).ok()?;
    let (src, dst) = (
        inner.header().source_addr(),
        inner.header().destination_addr(),
    );
    let ip = PacketBuilder::ipv4(dst.octets(), src.octets(), 64);
    let mut packet = Vec::new();
    match inner.payload().ip_number {
        IpNumber::TCP => {
            let syn = TcpSlice::from_slice(inner.payload().payload).ok()?;
            if !syn.syn() || syn.ack() {
                return None;
            }
            ip.tcp(syn.destination_port(), syn.source_port(), 7, 64240)
                .syn()
                .ack(syn.sequence_number().wrapping_add(1))
                .write(&mut packet, &[])
                .ok()?;
        }
        IpNumber::UDP => {
            let probe = UdpSlice::from_slice(inner.payload().payload).ok()?;
            ip.udp(probe.destination_port(), probe.source_port())
                .write(&mut packet, b"pong")
                .ok()?;
        }
        _ => return None,
    }
    Some((packet, src))
}

/// Defect: a tunnel prober kept one source port and one ISN for its whole
/// life, so an answer to its first probe also answered every later one: a
/// backend whose decap was detached passed on the SYN-ACKs it retransmits
/// after a lost RST, and one observed probe let anyone forge "up". Now a
/// replayed answer fails the probe (TCP and UDP), while an honest backend
/// passes every probe.
#[test]
fn cp_tunnel_probe_is_not_answered_by_the_answer_to_an_earlier_probe() {
    use lb_userspace::{
        config::HealthCheck,
        tunnel_probe::{TunnelPath, TunnelProber},
    };
    const TUNNEL_SOURCE: &str = "198.51.100.2";
    let ns = Netns::new("replay");
    for a in [TUNNEL_SOURCE, BACKEND] {
        ns.exec(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    let source = TUNNEL_SOURCE.parse().unwrap();
    for (kind, port) in [("tcp", 80), ("udp", 53)] {
        let check: HealthCheck = serde_json::from_value(json!({"type": kind})).unwrap();
        let prober = TunnelProber::new(TunnelPath {
            backend: BACKEND.parse().unwrap(),
            outer_src: source,
            vip: std::net::SocketAddr::new(VIP.parse().unwrap(), port),
            inner_src: source,
        });
        ns.enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let probe = || {
                runtime.block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_millis(500),
                        prober.probe(&check),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer".into()))
                })
            };
            let honest = ProbeAnswerer::start(false);
            for i in 0..3 {
                assert!(probe().is_ok(), "{kind}: honest answer to probe {i}");
            }
            drop(honest);
            let _replaying = ProbeAnswerer::start(true);
            assert!(probe().is_ok(), "{kind}: the first probe's own answer");
            for i in 1..3 {
                let result = probe();
                assert!(
                    result.is_err(),
                    "{kind}: probe {i} passed on the first probe's answer: {result:?}"
                );
            }
        });
    }
}
