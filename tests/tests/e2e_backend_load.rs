//! End to end, live load per backend: a real lbd counts each backend's
//! open and closed flows (`lbctl backend list --json`, the metrics) from
//! the data plane, as the client opens and closes real TCP connections.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    conversations::EchoServer,
    lbd::{Lbd, Paths},
    topology::{Topology, VIP},
};
use serde_json::{Value, json};

const PORT: u16 = 9000;

/// A connection to the VIP from the client, with the greeting byte of the
/// backend that took it (1-based index into the topology's backends). A
/// message is echoed, so the flow has sent the packets that move it into
/// the connection table.
fn open(topo: &Topology) -> (TcpStream, u8) {
    let mut s = topo.client.enter(|| {
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(VIP), PORT),
            Duration::from_secs(3),
        )
        .expect("connect to the VIP")
    });
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 1];
    s.read_exact(&mut greeting).expect("greeting");
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
    (s, greeting[0])
}

/// Each backend's (active, inactive) flows, by its greeting byte.
fn flows(lbd: &Lbd, topo: &Topology) -> BTreeMap<u8, (u64, u64)> {
    let rows: Value = lbd.json(&["backend", "list"]);
    let mut out = BTreeMap::new();
    for row in rows.as_array().expect("rows") {
        let address = row["address"].as_str().expect("address");
        let index = topo
            .backends
            .iter()
            .position(|b| b.addr.to_string() == address)
            .expect("a backend of the topology");
        let count = |name: &str| row[name].as_u64().unwrap_or(u64::MAX);
        out.insert(
            index as u8 + 1,
            (count("active_flows"), count("inactive_flows")),
        );
    }
    out
}

/// Wait until `flows` is `want`; the data plane's events reach lbd at its
/// next one-second tick.
fn wait_for(lbd: &Lbd, topo: &Topology, want: &BTreeMap<u8, (u64, u64)>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let have = flows(lbd, topo);
        if have == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(active, inactive) flows by backend: have {have:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn e2e_backend_list_counts_each_backends_open_and_closed_connections() {
    let topo = Topology::new(2);
    let _servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| EchoServer::start(&b.ns, PORT, i as u8 + 1))
        .collect();
    let config = topo.lbd_config(PORT, "tcp", json!({"type": "none"}));
    let lbd = Lbd::start_with(
        &topo.lb,
        Paths::new("backend-load"),
        config,
        &["--metrics", "127.0.0.1:9464"],
    );
    wait_for(&lbd, &topo, &BTreeMap::from([(1, (0, 0)), (2, (0, 0))]));

    let conns: Vec<(TcpStream, u8)> = (0..12).map(|_| open(&topo)).collect();
    let tally = |conns: &[(TcpStream, u8)]| {
        let mut by_backend = BTreeMap::from([(1u8, 0u64), (2, 0)]);
        for (_, b) in conns {
            *by_backend.get_mut(b).expect("greeting 1 or 2") += 1;
        }
        by_backend
    };
    let opened = tally(&conns);
    assert!(
        opened.values().all(|n| *n > 0),
        "12 flows over 2 backends left one without: {opened:?}"
    );
    let want = |active: &BTreeMap<u8, u64>, inactive: &BTreeMap<u8, u64>| {
        active
            .keys()
            .map(|b| (*b, (active[b], inactive[b])))
            .collect::<BTreeMap<_, _>>()
    };
    let none = BTreeMap::from([(1u8, 0u64), (2, 0)]);
    wait_for(&lbd, &topo, &want(&opened, &none));

    // The client closes every other connection: its FIN makes the flow
    // inactive, the others stay active.
    let (closing, staying): (Vec<_>, Vec<_>) =
        conns.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let closing: Vec<(TcpStream, u8)> = closing.into_iter().map(|(_, c)| c).collect();
    let staying: Vec<(TcpStream, u8)> = staying.into_iter().map(|(_, c)| c).collect();
    let closed = tally(&closing);
    drop(closing);
    wait_for(&lbd, &topo, &want(&tally(&staying), &closed));

    // The metrics carry the same counts.
    let metrics = topo.lb.enter(|| {
        let mut s = TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    let active_sum: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("lb_backend_active_flows{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(active_sum, staying.len() as u64, "{metrics}");
}
