//! End to end, the promises: failover after a backend dies, draining that
//! lets a long stream finish byte for byte, lbd killed and restarted under
//! load without a failed request, a broken config rejected under load, and
//! the other forwarding modes and families.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::BackendServer,
    http_client::{Load, Stream, get},
    lbd::{Lbd, Paths},
    topology::{Topology, VIP, VIP6},
};
use serde_json::{Value, json};

const VIP_REF: &str = "198.51.100.10:80/tcp";

fn servers(topo: &Topology) -> Vec<Option<BackendServer>> {
    topo.backends.iter().map(|b| Some(b.serve())).collect()
}

fn http_check() -> Value {
    json!({"type": "http", "port": 80, "interval_ms": 200, "timeout_ms": 100, "rise": 2, "fall": 2})
}

fn wait_healthy(lbd: &Lbd, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd
        .json(&["backend", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["health"] == "up")
        .count()
        != n
    {
        assert!(
            Instant::now() < deadline,
            "backends not healthy:\n{}",
            lbd.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn spread(topo: &Topology, addr: IpAddr, requests: usize) -> BTreeMap<String, usize> {
    topo.client.enter(|| {
        let mut counts = BTreeMap::new();
        for i in 0..requests {
            let name = get(addr, 80, "/").unwrap_or_else(|e| panic!("request {i} failed: {e}"));
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    })
}

#[test]
fn e2e_weights_one_two_three_spread_proportionally() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let mut config = topo.lbd_config(80, "tcp", http_check());
    for (i, w) in [1, 2, 3].into_iter().enumerate() {
        config["vips"][0]["backends"][i]["weight"] = json!(w);
    }
    let lbd = Lbd::start(&topo.lb, Paths::new("weights"), config);
    wait_healthy(&lbd, 3);
    let counts = spread(&topo, VIP.into(), 600);
    // Shares 1/6, 2/6, 3/6 of 600: within 35% of each.
    for (name, want) in [("b1", 100.0), ("b2", 200.0), ("b3", 300.0)] {
        let got = *counts.get(name).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= want * 0.35,
            "{name}: {got} vs {want}: {counts:?}"
        );
    }
}

#[test]
fn e2e_failover_no_new_connection_reaches_a_dead_backend() {
    let topo = Topology::new(3);
    let mut servers = servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("failover"),
        topo.lbd_config(80, "tcp", http_check()),
    );
    wait_healthy(&lbd, 3);
    // b2 dies.
    servers[1] = None;
    // fall x interval = 400 ms; one second more.
    thread::sleep(Duration::from_millis(1400));
    let counts = spread(&topo, VIP.into(), 150);
    assert!(!counts.contains_key("b2"), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 150);
    assert_eq!(lbd.json(&["backend", "list"])[1]["health"], "down");
}

#[test]
fn e2e_drained_backend_finishes_a_streaming_response_byte_for_byte() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("drain"),
        topo.lbd_config(80, "tcp", http_check()),
    );
    wait_healthy(&lbd, 3);
    const TOKENS: u64 = 50;
    // A 5-second stream, like an LLM answer: 50 tokens, one per 100 ms.
    let mut stream = topo
        .client
        .enter(|| Stream::open(VIP.into(), 80, &format!("/stream?tokens={TOKENS}&ms=100")))
        .unwrap();
    let first = stream.next_chunk().unwrap().unwrap();
    let serving = first.trim().rsplit(' ').next().unwrap().to_string();
    let addr = topo
        .backends
        .iter()
        .find(|b| b.name == serving)
        .unwrap()
        .addr
        .to_string();
    lbd.json(&["backend", "drain", VIP_REF, &addr]);

    let mut text = first;
    while let Some(chunk) = stream
        .next_chunk()
        .unwrap_or_else(|e| panic!("stream broke: {e}\n{}", lbd.log()))
    {
        text.push_str(&chunk);
    }
    let expected: String = (0..TOKENS)
        .map(|i| format!("token {i} from {serving}\n"))
        .collect();
    assert_eq!(text, expected);

    // New connections avoid the draining backend.
    let counts = spread(&topo, VIP.into(), 90);
    assert!(
        !counts.contains_key(&serving),
        "{serving} still gets new flows: {counts:?}"
    );
}

#[test]
fn e2e_lbd_killed_and_restarted_under_load_loses_nothing() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let mut lbd = Lbd::start(
        &topo.lb,
        Paths::new("kill"),
        topo.lbd_config(80, "tcp", http_check()),
    );
    wait_healthy(&lbd, 3);
    let mut stream = topo
        .client
        .enter(|| Stream::open(VIP.into(), 80, "/stream?tokens=30&ms=100"))
        .unwrap();
    let mut text = stream.next_chunk().unwrap().unwrap();
    let load = Load::start(&topo.client, VIP.into(), 80);
    thread::sleep(Duration::from_millis(500));
    lbd.kill();
    thread::sleep(Duration::from_millis(500));
    lbd.restart();
    thread::sleep(Duration::from_millis(500));
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests ran");
    while let Some(chunk) = stream
        .next_chunk()
        .expect("the open stream survives the restart")
    {
        text.push_str(&chunk);
    }
    assert_eq!(text.lines().count(), 30);
}

#[test]
fn e2e_broken_config_under_load_is_rejected_without_a_failed_request() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("broken"),
        topo.lbd_config(80, "tcp", http_check()),
    );
    wait_healthy(&lbd, 3);
    let load = Load::start(&topo.client, VIP.into(), 80);
    thread::sleep(Duration::from_millis(300));
    let mut broken = lbd.json(&["config", "dump"]);
    broken["vips"][0]["backends"][0]["address"] = json!("198.51.100.999");
    let file = lbd.paths.dir.join("broken.json");
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = lbd.ctl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vips[0].backends[0].address"),
        "{out:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let (ok, errors) = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(ok > 10);
}

#[test]
fn e2e_l2_dsr_forwards_without_a_tunnel() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let mut config = topo.lbd_config(80, "tcp", http_check());
    config["vips"][0]["forwarding"] = json!("l2_dsr");
    let lbd = Lbd::start(&topo.lb, Paths::new("l2dsr"), config);
    wait_healthy(&lbd, 3);
    let counts = spread(&topo, VIP.into(), 90);
    assert_eq!(counts.len(), 3, "{counts:?}");
}

#[test]
fn e2e_ipv6_http_through_ip6ip6() {
    let topo = Topology::new(3);
    let _servers = servers(&topo);
    let mut config = topo.lbd_config(80, "tcp", http_check());
    config["vips"][0]["address"] = json!(VIP6.to_string());
    config["vips"][0]["backends"] = topo
        .backends
        .iter()
        .map(|b| json!({"address": b.addr6.to_string()}))
        .collect::<Vec<_>>()
        .into();
    let lbd = Lbd::start(&topo.lb, Paths::new("v6"), config);
    wait_healthy(&lbd, 3);
    // Up means the VIP answered through the ip6ip6 tunnel too.
    for b in lbd.json(&["backend", "list"]).as_array().unwrap() {
        assert_eq!(
            b["last_check"], "HTTP 200; through the tunnel: SYN-ACK",
            "{b}"
        );
    }
    let counts = spread(&topo, VIP6.into(), 90);
    assert_eq!(counts.len(), 3, "{counts:?}");
}

/// `lbctl backend list`'s row of backend `addr`.
fn backend_row(lbd: &Lbd, addr: &str) -> Value {
    let list = lbd.json(&["backend", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .unwrap_or_else(|| panic!("no backend {addr}: {list}"))
        .clone()
}

/// Poll until backend `addr` is no longer up (at most 5 s): its row, and
/// how long after `since` that was seen.
fn wait_not_up(lbd: &Lbd, addr: &str, since: Instant) -> (Value, Duration) {
    let mut row = backend_row(lbd, addr);
    while row["health"] == "up" && since.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
        row = backend_row(lbd, addr);
    }
    (row, since.elapsed())
}

/// Defect: checks went to the backend's own address, so a backend whose
/// `lb_decap` was detached (its interface recreated, say) stayed up while
/// every client packet tunnelled to it was lost. The check now also probes
/// the VIP through the tunnel: that backend goes down within
/// fall x interval + 200 ms and no request fails afterwards.
#[test]
fn e2e_backend_whose_decap_is_detached_goes_down_and_no_request_fails() {
    let mut topo = Topology::new(3);
    let _servers = servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("tunnelprobe"),
        topo.lbd_config(80, "tcp", http_check()),
    );
    wait_healthy(&lbd, 3);
    let broken = topo.backends[1].addr.to_string();

    topo.detach_decap(1);
    let (row, took) = wait_not_up(&lbd, &broken, Instant::now());
    assert_eq!(
        row["health"],
        "down",
        "{broken} stays up with its decap detached: {row}\n{}",
        lbd.log()
    );
    eprintln!("{broken} marked down {took:?} after its decap was detached");
    // interval_ms 200 x fall 2, plus 200 ms.
    let deadline = Duration::from_millis(200 * 2 + 200);
    assert!(
        took <= deadline,
        "{broken} marked down {took:?} after the detach, more than {deadline:?}"
    );
    assert_eq!(
        row["last_check"], "through the tunnel: no SYN-ACK within 100 ms",
        "the direct check still passes: {row}"
    );
    for other in [&topo.backends[0], &topo.backends[2]] {
        let row = backend_row(&lbd, &other.addr.to_string());
        assert_eq!(row["health"], "up", "{row}");
        assert_eq!(row["last_check"], "HTTP 200; through the tunnel: SYN-ACK");
    }

    let counts = spread(&topo, VIP.into(), 200);
    assert_eq!(counts.values().sum::<usize>(), 200);
    assert!(!counts.contains_key("b2"), "{counts:?}");
    let log = lbd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("probe through the tunnel failed")
                && l.contains(&broken)
                && l.contains("no SYN-ACK within 100 ms")),
        "the failure is not logged with its reason:\n{log}"
    );
}

/// The same for a UDP service: the check's payload goes to the VIP through
/// the tunnel, and a backend whose decap is detached goes down although
/// it echoes on its own address.
#[test]
fn e2e_udp_backend_whose_decap_is_detached_goes_down() {
    let mut topo = Topology::new(3);
    // The VIP's echo (for clients and the probe through the tunnel), and
    // one on each backend address for the direct probe.
    let _servers = servers(&topo);
    let _direct: Vec<BackendServer> = topo
        .backends
        .iter()
        .map(|b| BackendServer::start(&b.ns, &b.name, (b.addr, 8080).into(), (b.addr, 53).into()))
        .collect();
    let check = json!({"type": "udp", "payload": "ping", "expect": "b",
                       "interval_ms": 200, "timeout_ms": 100, "rise": 2, "fall": 2});
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("udptunnel"),
        topo.lbd_config(53, "udp", check),
    );
    wait_healthy(&lbd, 3);
    let broken = topo.backends[1].addr.to_string();

    topo.detach_decap(1);
    let (row, took) = wait_not_up(&lbd, &broken, Instant::now());
    assert_eq!(row["health"], "down", "{row}\n{}", lbd.log());
    assert!(took <= Duration::from_millis(600), "took {took:?}");
    assert_eq!(
        row["last_check"],
        "through the tunnel: no UDP reply within 100 ms"
    );
    assert_eq!(
        backend_row(&lbd, &topo.backends[0].addr.to_string())["last_check"],
        "UDP reply; through the tunnel: UDP reply"
    );
    let names: Vec<String> = topo.client.enter(|| {
        (0..60)
            .map(|i| {
                let s = std::net::UdpSocket::bind((lb_tests::topology::CLIENT, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(format!("q{i}").as_bytes(), (VIP, 53)).unwrap();
                let mut buf = [0u8; 256];
                let (n, _) = s
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("no echo for q{i}: {e}"));
                let reply = String::from_utf8_lossy(&buf[..n]).to_string();
                reply.split(':').next().unwrap().to_string()
            })
            .collect()
    });
    assert!(!names.iter().any(|n| n == "b2"), "{names:?}");
}
