//! End to end, second chance: a real lbd, backends running `lb_decap`
//! with GUE on and each other as peers. A ring change between a
//! handshake's SYN and its ACK no longer resets the handshake, and a
//! long-lived connection whose connection-table entry is gone (as on an
//! LB node that never saw it) keeps its backend after a backend is added.
//! Both fail without second chance: the segment reaches the slot's new
//! owner, whose listener answers it with a reset.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_common::stats::DecapReason;
use lb_tests::{
    backend_server::BackendServer,
    http_client::{Stream, request, response_body},
    lbd::{Lbd, Paths},
    pins,
    topology::{CLIENT, Topology, VIP},
};
use serde_json::{Value, json};

const VIP_REF: &str = "198.51.100.10:80/tcp";

/// Three backend hosts with second chance on, their servers, and an lbd
/// balancing over the first two of them (the third is added by the test).
fn setup(tag: &str) -> (Topology, Vec<BackendServer>, Lbd) {
    let mut topo = Topology::new(3);
    topo.enable_second_chance();
    let servers = topo.backends.iter().map(|b| b.serve()).collect();
    let mut config = topo.lbd_config(80, "tcp", json!({"type": "none"}));
    config["vips"][0]["backends"]
        .as_array_mut()
        .unwrap()
        .truncate(2);
    config["second_chance"] = json!({"enabled": true});
    let lbd = Lbd::start(&topo.lb, Paths::new(tag), config);
    (topo, servers, lbd)
}

/// The backend (address) lbd says the client's flow from `port` goes to.
fn flow_backend(lbd: &Lbd, port: u16) -> String {
    let reply = lbd.json(&[
        "flow",
        &CLIENT.to_string(),
        &port.to_string(),
        &VIP.to_string(),
        "80",
        "tcp",
    ]);
    reply["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("no backend for port {port}: {reply}"))
        .to_string()
}

fn name_of(topo: &Topology, addr: &str) -> String {
    topo.backends
        .iter()
        .find(|b| b.addr.to_string() == addr)
        .unwrap_or_else(|| panic!("no backend {addr}"))
        .name
        .clone()
}

fn index_of(topo: &Topology, addr: &str) -> usize {
    topo.backends
        .iter()
        .position(|b| b.addr.to_string() == addr)
        .unwrap_or_else(|| panic!("no backend {addr}"))
}

/// A TCP connection from the client's `port` to the VIP, made in the
/// client's namespace.
fn connect_from(topo: &Topology, port: u16) -> TcpStream {
    topo.client.enter(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_reuse_address(true).expect("reuse");
        s.bind(&SocketAddr::new(IpAddr::V4(CLIENT), port).into())
            .expect("bind the client port");
        s.connect_timeout(
            &SocketAddr::new(IpAddr::V4(VIP), 80).into(),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("connect from port {port}: {e}"));
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    })
}

fn lb_counter(lbd: &Lbd, name: &str) -> u64 {
    let stats: Value = lbd.json(&["stats", "--interval", "0.1"]);
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// The ports whose flow the ring change moved, with the backend before
/// and after.
fn moved(before: &BTreeMap<u16, String>, lbd: &Lbd) -> BTreeMap<u16, (String, String)> {
    before
        .iter()
        .filter_map(|(port, was)| {
            let now = flow_backend(lbd, *port);
            (now != *was).then(|| (*port, (was.clone(), now)))
        })
        .collect()
}

/// Every moved flow went through its new owner, which sent it on, to its
/// old one, which took it in.
fn assert_sent_on(topo: &Topology, lbd: &Lbd, moved: &BTreeMap<u16, (String, String)>) {
    assert!(lb_counter(lbd, "second_chance") >= moved.len() as u64);
    for (port, (was, now)) in moved {
        let (was, now) = (index_of(topo, was), index_of(topo, now));
        assert!(
            topo.decap_count(now, DecapReason::SecondChanceForwarded) > 0,
            "port {port}: the new owner sent nothing on"
        );
        assert!(
            topo.decap_count(was, DecapReason::SecondChanceReceived) > 0,
            "port {port}: the old owner received nothing sent on"
        );
    }
}

#[test]
fn e2e_handshake_whose_ack_follows_a_ring_change_completes_on_the_backend_that_saw_the_syn() {
    let (topo, _servers, lbd) = setup("sc-handshake");
    // The client's ACKs (every segment but SYNs) are held back, so the
    // handshakes stop half-way: the backends hold request sockets.
    topo.client.exec(&[
        "nft",
        "add table inet hold; add chain inet hold out { type filter hook output priority 0; }; \
         add rule inet hold out ip daddr 198.51.100.10 tcp dport 80 tcp flags & syn == 0 drop",
    ]);
    let ports: Vec<u16> = (41000..41016).collect();
    let conns: Vec<(u16, TcpStream)> = ports
        .iter()
        .map(|p| (*p, connect_from(&topo, *p)))
        .collect();
    let before: BTreeMap<u16, String> =
        ports.iter().map(|p| (*p, flow_backend(&lbd, *p))).collect();

    // The ring changes while the ACKs are held.
    let added = topo.backends[2].addr.to_string();
    lbd.json(&["backend", "add", VIP_REF, &added]);
    let moved = moved(&before, &lbd);
    assert!(
        !moved.is_empty(),
        "adding a backend moved none of the {} flows",
        ports.len()
    );

    topo.client.exec(&["nft", "delete table inet hold"]);
    for (port, mut conn) in conns {
        conn.write_all(request(IpAddr::V4(VIP), "/").as_bytes())
            .expect("send the request");
        let body = response_body(conn)
            .unwrap_or_else(|e| panic!("port {port} (moved: {:?}): {e}", moved.get(&port)));
        assert_eq!(
            body,
            name_of(&topo, &before[&port]),
            "port {port}: answered by another backend than the one that got the SYN"
        );
    }
    assert_sent_on(&topo, &lbd, &moved);
}

#[test]
fn e2e_long_lived_connection_without_its_table_entry_keeps_its_backend_after_a_backend_is_added() {
    let (topo, _servers, lbd) = setup("sc-stream");
    const TOKENS: usize = 50;
    let path = format!("/stream?tokens={TOKENS}&ms=100");
    let ports: Vec<u16> = (42000..42012).collect();
    let mut streams: Vec<(u16, Stream, String, String)> = ports
        .iter()
        .map(|port| {
            let conn = connect_from(&topo, *port);
            let mut stream = Stream::request(conn, IpAddr::V4(VIP), &path).expect("stream");
            let first = stream.next_chunk().expect("first chunk").expect("a token");
            let serving = first.trim().rsplit(' ').next().unwrap().to_string();
            (*port, stream, serving, first)
        })
        .collect();

    // A backend is added, then the flows reach a node with no entry for
    // them: the same as another LB node taking over.
    let added = topo.backends[2].addr.to_string();
    lbd.json(&["backend", "add", VIP_REF, &added]);
    assert!(
        pins::forget_flows(&lbd.paths.pin_dir) > 0,
        "no entries to forget"
    );
    let mut moved_ports = Vec::new();
    for (port, _, serving, _) in &streams {
        let now = name_of(&topo, &flow_backend(&lbd, *port));
        if now != *serving {
            moved_ports.push((*port, serving.clone(), now));
        }
    }
    assert!(
        !moved_ports.is_empty(),
        "adding a backend moved none of the {} flows",
        ports.len()
    );

    for (port, stream, serving, first) in &mut streams {
        let mut text = first.clone();
        while let Some(chunk) = stream
            .next_chunk()
            .unwrap_or_else(|e| panic!("port {port} on {serving}: stream broke: {e}"))
        {
            text.push_str(&chunk);
        }
        let expected: String = (0..TOKENS)
            .map(|i| format!("token {i} from {serving}\n"))
            .collect();
        assert_eq!(text, expected, "port {port}");
    }
    let addr_of = |name: &str| {
        topo.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap()
            .addr
            .to_string()
    };
    let moved: BTreeMap<u16, (String, String)> = moved_ports
        .into_iter()
        .map(|(port, was, now)| (port, (addr_of(&was), addr_of(&now))))
        .collect();
    assert_sent_on(&topo, &lbd, &moved);
}
