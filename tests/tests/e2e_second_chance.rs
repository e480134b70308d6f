//! End to end, second chance: a real lbd, backends running `lb_decap`
//! with GUE on and each other as peers. A ring change between a
//! handshake's SYN and its ACK no longer resets the handshake, and a
//! long-lived connection whose connection-table entry is gone (as on an
//! LB node that never saw it) keeps its backend after a backend is added.
//! Both fail without second chance: the segment reaches the slot's new
//! owner, whose listener answers it with a reset. A stateless VIP, whose
//! LB keeps no entry at all, keeps its streams through a backend added
//! and a backend drained the same way.

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
    setup_with(tag, |_| {})
}

/// `setup`, with `vip` applied to the VIP's configuration first.
fn setup_with(tag: &str, vip: impl FnOnce(&mut Value)) -> (Topology, Vec<BackendServer>, Lbd) {
    let mut topo = Topology::new(3);
    topo.enable_second_chance();
    let servers = topo.backends.iter().map(|b| b.serve()).collect();
    let mut config = topo.lbd_config(80, "tcp", json!({"type": "none"}));
    config["vips"][0]["backends"]
        .as_array_mut()
        .unwrap()
        .truncate(2);
    config["second_chance"] = json!({"enabled": true});
    vip(&mut config["vips"][0]);
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

fn addr_of_name(topo: &Topology, name: &str) -> String {
    topo.backends
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no backend named {name}"))
        .addr
        .to_string()
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

/// A token stream (`/stream`) from one client port, its first token read.
struct OpenStream {
    port: u16,
    stream: Stream,
    /// The backend that sent the first token.
    serving: String,
    text: String,
}

impl OpenStream {
    /// Read the rest: the stream must end whole, every one of its `tokens`
    /// sent by the backend that sent the first.
    fn finish(mut self, tokens: usize) {
        let (port, serving) = (self.port, &self.serving);
        while let Some(chunk) = self
            .stream
            .next_chunk()
            .unwrap_or_else(|e| panic!("port {port} on {serving}: stream broke: {e}"))
        {
            self.text.push_str(&chunk);
        }
        let expected: String = (0..tokens)
            .map(|i| format!("token {i} from {serving}\n"))
            .collect();
        assert_eq!(self.text, expected, "port {port}");
    }
}

/// A stream of `tokens` tokens, one each 100 ms, from each client port.
fn open_streams(topo: &Topology, ports: &[u16], tokens: usize) -> Vec<OpenStream> {
    let path = format!("/stream?tokens={tokens}&ms=100");
    ports
        .iter()
        .map(|&port| {
            let conn = connect_from(topo, port);
            let mut stream = Stream::request(conn, IpAddr::V4(VIP), &path).expect("stream");
            let text = stream.next_chunk().expect("first chunk").expect("a token");
            let serving = text.trim().rsplit(' ').next().unwrap().to_string();
            OpenStream {
                port,
                stream,
                serving,
                text,
            }
        })
        .collect()
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

    // lbctl flow names the second hop of each moved flow.
    for (port, (was, _)) in &moved {
        let reply = lbd.json(&[
            "flow",
            &CLIENT.to_string(),
            &port.to_string(),
            &VIP.to_string(),
            "80",
            "tcp",
        ]);
        assert_eq!(reply["second_hop"], json!(was), "port {port}: {reply}");
    }

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
    let ports: Vec<u16> = (42000..42012).collect();
    let streams = open_streams(&topo, &ports, TOKENS);

    // A backend is added, then the flows reach a node with no entry for
    // them: the same as another LB node taking over.
    let added = topo.backends[2].addr.to_string();
    lbd.json(&["backend", "add", VIP_REF, &added]);
    assert!(
        pins::forget_flows(&lbd.paths.pin_dir) > 0,
        "no entries to forget"
    );
    let mut moved_ports = Vec::new();
    for s in &streams {
        let now = name_of(&topo, &flow_backend(&lbd, s.port));
        if now != s.serving {
            moved_ports.push((s.port, s.serving.clone(), now));
        }
    }
    assert!(
        !moved_ports.is_empty(),
        "adding a backend moved none of the {} flows",
        ports.len()
    );

    for stream in streams {
        stream.finish(TOKENS);
    }
    let moved: BTreeMap<u16, (String, String)> = moved_ports
        .into_iter()
        .map(|(port, was, now)| (port, (addr_of_name(&topo, &was), addr_of_name(&topo, &now))))
        .collect();
    assert_sent_on(&topo, &lbd, &moved);
}

/// Where lbd says the next packet of each stream goes: the stream's port,
/// the slot's owner now and the second hop it takes along, if any.
fn placements(lbd: &Lbd, streams: &[OpenStream]) -> Vec<(u16, String, Option<String>)> {
    streams
        .iter()
        .map(|s| {
            let reply = lbd.json(&[
                "flow",
                &CLIENT.to_string(),
                &s.port.to_string(),
                &VIP.to_string(),
                "80",
                "tcp",
            ]);
            let backend = reply["backend"]
                .as_str()
                .unwrap_or_else(|| panic!("no backend for port {}: {reply}", s.port));
            let hop = reply["second_hop"].as_str().map(str::to_string);
            (s.port, backend.to_string(), hop)
        })
        .collect()
}

/// The entries of the LB's connection and probation tables made for VIP
/// `vip_id`.
fn table_entries(lbd: &Lbd, vip_id: u32) -> Vec<String> {
    pins::flows(&lbd.paths.pin_dir)
        .into_iter()
        .filter(|(_, _, entry)| entry.vip_id == vip_id)
        .map(|(table, flow, entry)| format!("{table}: {flow:?} -> {entry:?}"))
        .collect()
}

/// Each backend's decap counter of `reason`.
fn decap_counts(topo: &Topology, reason: DecapReason) -> Vec<u64> {
    (0..topo.backends.len())
        .map(|i| topo.decap_count(i, reason))
        .collect()
}

/// A stateless VIP keeps nothing per flow on the LB: the ring alone
/// places every packet. Long-lived streams survive a backend added (slots
/// move to it) and then one of the original two drained (its slots move to
/// the others), every one of them byte-intact on the backend it started
/// on: the slot's new owner has no socket for a moved flow and sends it on
/// to the slot's previous owner. The LB's tables never hold an entry for
/// the VIP's flows, and new connections reach the added backend, none the
/// drained one. Without the second hop the new owner resets the moved
/// streams.
#[test]
fn e2e_stateless_vip_streams_survive_a_backend_added_and_a_drain_byte_intact() {
    // 20 s of tokens: every stream still runs after the drain's checks,
    // with room for a loaded machine.
    const TOKENS: usize = 200;
    let (topo, _servers, lbd) = setup_with("sc-stateless", |vip| {
        vip["stateless"] = json!(true);
        // The slots' window (the drain timeout, second_chance_s being
        // unset) outlasts the test.
        vip["drain_timeout_s"] = json!(60);
    });
    let vips = lbd.json(&["vip", "list"]);
    assert_eq!(vips[0]["stateless"], json!(true), "{vips}");
    let vip_id = vips[0]["id"].as_u64().expect("VIP id") as u32;
    let addr = |i: usize| topo.backends[i].addr.to_string();
    let (drained, added) = (addr(0), addr(2));
    let ports: Vec<u16> = (43000..43024).collect();
    let streams = open_streams(&topo, &ports, TOKENS);
    let serving: BTreeMap<u16, String> = streams
        .iter()
        .map(|s| (s.port, addr_of_name(&topo, &s.serving)))
        .collect();
    let second_chance_before = lb_counter(&lbd, "second_chance");

    // Mid-stream, a backend is added: the streams on slots that moved to
    // it now reach it first, with their backend as the second hop.
    lbd.json(&["backend", "add", VIP_REF, &added]);
    let mut moved_by_add = BTreeMap::new();
    for (port, now, hop) in placements(&lbd, &streams) {
        if now != serving[&port] {
            assert_eq!(
                now, added,
                "port {port}: moved elsewhere than to the added backend"
            );
            assert_eq!(
                hop.as_ref(),
                Some(&serving[&port]),
                "port {port}: second hop"
            );
            moved_by_add.insert(port, (serving[&port].clone(), now));
        }
    }
    assert!(
        !moved_by_add.is_empty(),
        "adding a backend moved none of the {} streams",
        streams.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_sent_on(&topo, &lbd, &moved_by_add);
    assert!(lb_counter(&lbd, "second_chance") > second_chance_before);
    let entries = table_entries(&lbd, vip_id);
    assert!(entries.is_empty(), "the LB keeps flow state: {entries:#?}");

    // Later, one of the original backends is drained: its slots move to
    // the other two, with it as the second hop. (One hop only: a slot
    // that moved again would keep only its latest previous owner; these
    // ports have none that moves twice.)
    let placed: BTreeMap<u16, String> = placements(&lbd, &streams)
        .into_iter()
        .map(|(port, now, _)| (port, now))
        .collect();
    let forwarded = decap_counts(&topo, DecapReason::SecondChanceForwarded);
    let received = decap_counts(&topo, DecapReason::SecondChanceReceived);
    lbd.json(&["backend", "drain", VIP_REF, &drained]);
    let mut moved_by_drain = BTreeMap::new();
    for (port, now, hop) in placements(&lbd, &streams) {
        let was = &serving[&port];
        assert!(
            now == *was || hop.as_ref() == Some(was),
            "port {port}: on {was}, now placed on {now} with second hop {hop:?}"
        );
        assert_ne!(now, drained, "port {port}: placed on the drained backend");
        if now != placed[&port] {
            moved_by_drain.insert(port, (was.clone(), now));
        }
    }
    assert!(
        moved_by_drain.values().any(|(was, _)| *was == drained),
        "draining moved none of the {} streams: {moved_by_drain:?}",
        streams.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    for (port, (was, now)) in &moved_by_drain {
        let (was, now) = (index_of(&topo, was), index_of(&topo, now));
        assert!(
            topo.decap_count(now, DecapReason::SecondChanceForwarded) > forwarded[now],
            "port {port}: its new owner sent nothing on after the drain"
        );
        assert!(
            topo.decap_count(was, DecapReason::SecondChanceReceived) > received[was],
            "port {port}: its backend received nothing sent on after the drain"
        );
    }

    for stream in streams {
        stream.finish(TOKENS);
    }
    let entries = table_entries(&lbd, vip_id);
    assert!(entries.is_empty(), "the LB keeps flow state: {entries:#?}");

    // New connections go by the new ring: to the added backend too, to
    // the drained one never. Every slot of the added backend moved to it
    // within the window, so their packets after the SYN come with a second
    // hop, which the added backend keeps: it has the socket.
    let local = topo.decap_count(2, DecapReason::SecondChanceLocal);
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for port in 43100..43124u16 {
        let mut conn = connect_from(&topo, port);
        conn.write_all(request(IpAddr::V4(VIP), "/").as_bytes())
            .expect("send the request");
        let body = response_body(conn).unwrap_or_else(|e| panic!("new connection {port}: {e}"));
        *answered.entry(body).or_default() += 1;
    }
    let name = |i: usize| topo.backends[i].name.clone();
    assert!(answered.contains_key(&name(2)), "{answered:?}");
    assert!(!answered.contains_key(&name(0)), "{answered:?}");
    assert!(topo.decap_count(2, DecapReason::SecondChanceLocal) > local);
    let entries = table_entries(&lbd, vip_id);
    assert!(entries.is_empty(), "the LB keeps flow state: {entries:#?}");
}
