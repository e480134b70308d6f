//! Real sockets through the real load balancer: a client namespace talks to
//! the VIP, lbd runs the LB namespace, backends decapsulate with lb_decap
//! and answer directly (DSR). See `lb_tests::topology`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::BackendServer,
    lbd::{Lbd, Paths},
    topology::{CLIENT, Topology, VIP},
};
use serde_json::json;

fn start_servers(topo: &Topology) -> Vec<BackendServer> {
    topo.backends
        .iter()
        .map(|b| {
            BackendServer::start(
                &b.ns,
                &b.name,
                "0.0.0.0:80".parse().unwrap(),
                // UDP binds the VIP itself, so replies leave with it as source.
                SocketAddr::from((VIP, 53)),
            )
        })
        .collect()
}

fn wait_healthy(lbd: &Lbd, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = lbd.json(&["backend", "list"]);
        let up = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["health"] == "up")
            .count();
        if up == n {
            return;
        }
        assert!(Instant::now() < deadline, "backends not healthy: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP GET to the VIP on a new connection; the backend's name.
fn get(path: &str) -> Result<String, String> {
    let addr = SocketAddr::from((VIP, 80));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let body = response.split("\r\n\r\n").nth(1).ok_or("no body")?;
    Ok(body.trim().to_string())
}

#[test]
fn e2e_http_through_ipip_dsr_reaches_every_backend_evenly() {
    let topo = Topology::new(3);
    let _servers = start_servers(&topo);
    let check =
        json!({"type": "http", "port": 80, "path": "/", "interval_ms": 200, "timeout_ms": 100});
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("e2ehttp"),
        topo.lbd_config(80, "tcp", check),
    );
    wait_healthy(&lbd, 3);

    const REQUESTS: usize = 300;
    let counts: BTreeMap<String, usize> = topo.client.enter(|| {
        let mut counts = BTreeMap::new();
        for i in 0..REQUESTS {
            let name = get("/")
                .unwrap_or_else(|e| panic!("request {i} failed: {e}\nlbd log:\n{}", lbd.log()));
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    });
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2", "b3"],
        "{counts:?}"
    );
    // Equal weights: each backend within 40% of its share of 300 flows
    // (a binomial standard deviation is about 8 requests).
    for (name, n) in &counts {
        assert!(
            (60..=140).contains(n),
            "{name} got {n} of {REQUESTS}: {counts:?}"
        );
    }
    let stats = lbd.json(&["status"]);
    assert_eq!(
        stats["counters"]["drop_too_big"],
        serde_json::Value::Null,
        "{stats}"
    );
}

#[test]
fn e2e_udp_through_ipip_dsr_gets_echoes_from_backends() {
    let topo = Topology::new(3);
    let _servers = start_servers(&topo);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("e2eudp"),
        topo.lbd_config(53, "udp", json!({"type": "none"})),
    );
    let names: Vec<String> = topo.client.enter(|| {
        (0..60)
            .map(|i| {
                let s = UdpSocket::bind((CLIENT, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send_to(format!("q{i}").as_bytes(), (VIP, 53)).unwrap();
                let mut buf = [0u8; 256];
                let (n, from) = s
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("no echo for q{i}: {e}\n{}", lbd.log()));
                assert_eq!(
                    from,
                    SocketAddr::from((VIP, 53)),
                    "the reply comes from the VIP (DSR)"
                );
                let reply = String::from_utf8_lossy(&buf[..n]).to_string();
                let (name, payload) = reply.split_once(':').unwrap();
                assert_eq!(payload, format!("q{i}"));
                name.to_string()
            })
            .collect()
    });
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), 3, "{names:?}");
}

/// An IPv4 VIP on IPv6 backends: clients' packets and the check's probe
/// through the tunnel both travel IPv4 in IPv6 (the probe from
/// `tunnel_source.ipv4` inside, `tunnel_source.ipv6` outside), and the
/// backends answer over IPv4.
#[test]
fn e2e_ipv4_vip_on_ipv6_backends_is_checked_and_served_through_ip6_tunnels() {
    let topo = Topology::new(3);
    // HTTP on [::]:80: the direct check goes to the IPv6 address.
    let _servers: Vec<BackendServer> = topo.backends.iter().map(|b| b.serve()).collect();
    let check = json!({"type": "http", "interval_ms": 200, "timeout_ms": 100});
    let mut config = topo.lbd_config(80, "tcp", check);
    config["vips"][0]["backends"] = topo
        .backends
        .iter()
        .map(|b| json!({"address": b.addr6.to_string()}))
        .collect::<Vec<_>>()
        .into();
    let lbd = Lbd::start(&topo.lb, Paths::new("v4in6"), config);
    wait_healthy(&lbd, 3);
    for b in lbd.json(&["backend", "list"]).as_array().unwrap() {
        assert_eq!(
            b["last_check"], "HTTP 200; through the tunnel: SYN-ACK",
            "{b}"
        );
    }
    let before: u64 = (0..3).map(|i| topo.tunnel_packets(i)).sum();
    let names: std::collections::BTreeSet<String> = topo.client.enter(|| {
        (0..60)
            .map(|i| get("/").unwrap_or_else(|e| panic!("request {i}: {e}")))
            .collect()
    });
    assert_eq!(names.len(), 3, "{names:?}");
    let after: u64 = (0..3).map(|i| topo.tunnel_packets(i)).sum();
    assert!(
        after >= before + 60 * 3,
        "{before} -> {after} tunnel packets"
    );
}
