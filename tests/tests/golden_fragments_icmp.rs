//! Golden packets for IP fragments and ICMP too-big messages: the first
//! fragment is balanced like its flow and remembered, later ones follow it;
//! a too-big about a VIP flow goes to that flow's backend, whole and
//! encapsulated.

use etherparse::{IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder};
use lb_common::{
    FlowKey, Reason,
    flow::*,
    maps::{FragEntry, FragKey, VipKey},
};
use lb_tests::{harness::*, packets::*};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Run `frame` and check the verdict, the whole output and exactly which
/// counters moved.
fn expect(lb: &mut Lb, frame: &[u8], action: u32, data: Vec<u8>, counted: &[(Reason, u64)]) {
    let got = lb.run_counted(frame);
    assert_eq!(got, (Outcome { action, data }, counted.to_vec()));
}

/// Backend ids and addresses: 1..=3 IPv4, 11..=13 IPv6.
fn backends_v4() -> Vec<BackendSpec> {
    (0..3)
        .map(|i| BackendSpec::new(i as u32 + 1, BACKEND_V4[i]))
        .collect()
}

fn backends_v6() -> Vec<BackendSpec> {
    (0..3)
        .map(|i| BackendSpec::new(i as u32 + 11, BACKEND_V6[i]))
        .collect()
}

fn backend_addr(id: u32) -> &'static str {
    match id {
        1..=3 => BACKEND_V4[id as usize - 1],
        11..=13 => BACKEND_V6[id as usize - 11],
        _ => panic!("no backend {id}"),
    }
}

/// The frame the LB sends for `inner` (flow `flow` as the data plane reads
/// it) to backend `id`.
fn encapsulated(id: u32, inner: &[u8], flow: &FlowKey) -> Vec<u8> {
    let addr = backend_addr(id);
    if id < 10 {
        let outer = outer_v4(OUTER_SRC_V4, addr, inner);
        frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV4, &cat(&outer, inner))
    } else {
        let outer = outer_v6(OUTER_SRC_V6, addr, inner, flow);
        frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV6, &cat(&outer, inner))
    }
}

// ---------------------------------------------------------------------------
// Fragments

/// An IPv4 fragment of a UDP datagram from `src` to `dst`: `data` is the
/// slice of the datagram's L4 bytes at `offset` (a multiple of 8).
fn frag4(src: &str, dst: &str, id: u16, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(data.len() as u16, 64, IpNumber::UDP, v4(src), v4(dst)).unwrap();
    h.identification = id;
    h.more_fragments = more;
    h.fragment_offset = IpFragOffset::try_new((offset / 8) as u16).unwrap();
    h.header_checksum = h.calc_header_checksum();
    cat(&h.to_bytes(), data)
}

/// An IPv6 fragment: fixed header, fragment header (next header UDP), data.
fn frag6(src: &str, dst: &str, id: u32, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: (8 + data.len()) as u16,
        next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    };
    let mut fh = vec![PROTO_UDP, 0];
    fh.extend_from_slice(&(((offset / 8) as u16) << 3 | more as u16).to_be_bytes());
    fh.extend_from_slice(&id.to_be_bytes());
    cat(&cat(&h.to_bytes(), &fh), data)
}

/// The flow of a later fragment as the data plane reads it: no ports.
fn portless(flow: &FlowKey) -> FlowKey {
    FlowKey {
        sport: 0,
        dport: 0,
        ..*flow
    }
}

fn frag_key(flow: &FlowKey, id: u32) -> FragKey {
    FragKey {
        src: flow.src,
        dst: flow.dst,
        id,
        proto: flow.proto,
        family: flow.family,
        _pad: [0; 2],
    }
}

/// A client port whose flow the ring sends to a different backend than the
/// same flow without ports: a later fragment balanced on its own (no ports)
/// would then visibly go astray.
fn telling_port(lb: &Lb, key: &VipKey, datagram: impl Fn(u16) -> Vec<u8>) -> u16 {
    (40000..41000)
        .find(|&port| {
            let flow = flow_of(&datagram(port));
            lb.ring_backend(key, &flow) != lb.ring_backend(key, &portless(&flow))
        })
        .expect("a client port that tells the two apart")
}

/// A 56-byte UDP payload: 64 bytes of L4, in fragments of 24 + 24 + 16.
const PAYLOAD: &[u8; 56] = b"fragmented datagram payload, fifty-six bytes of it......";
const PIECES: [(usize, usize); 3] = [(0, 24), (24, 48), (48, 64)];

#[test]
fn golden_ipv4_fragments_follow_their_first_fragment() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    let meta = lb.add_vip(key, 0, &backends_v4());
    let datagram = |port| udp4(CLIENT_V4, port, VIP_V4, 53, PAYLOAD);
    let port = telling_port(&lb, &key, datagram);
    let whole = datagram(port);
    let l4 = &whole[IPV4_HLEN..];
    let flow = flow_of(&whole);
    let id = lb.ring_backend(&key, &flow);
    let frags: Vec<Vec<u8>> = PIECES
        .iter()
        .map(|&(a, b)| frag4(CLIENT_V4, VIP_V4, 0x1234, a, b < l4.len(), &l4[a..b]))
        .collect();

    // The first carries the ports: balanced, a new UDP flow, remembered.
    expect(
        &mut lb,
        &to_lb(&frags[0]),
        XDP_TX,
        encapsulated(id, &frags[0], &flow),
        &[
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::NewFlow, 1),
            (Reason::Fragment, 1),
            (Reason::ConnProbation, 1),
        ],
    );
    assert_eq!(
        lb.maps.frag(&frag_key(&flow, 0x1234)).unwrap(),
        Some(FragEntry {
            backend_id: id,
            vip_id: meta.vip_id,
            vip_flags: 0,
            _pad: 0
        })
    );
    // The later ones follow it, the last one (MF clear) too.
    for f in &frags[1..] {
        expect(
            &mut lb,
            &to_lb(f),
            XDP_TX,
            encapsulated(id, f, &portless(&flow)),
            &[(Reason::Tx, 1), (Reason::Fragment, 1)],
        );
    }
    assert_eq!(lb.maps.backend_stats(id).unwrap().packets, 3);
}

#[test]
fn golden_ipv6_fragments_follow_their_first_fragment() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    let meta = lb.add_vip(key, 0, &backends_v6());
    let datagram = |port| udp6(CLIENT_V6, port, VIP_V6, 53, PAYLOAD);
    let port = telling_port(&lb, &key, datagram);
    let whole = datagram(port);
    let l4 = &whole[IPV6_HLEN..];
    let flow = flow_of(&whole);
    let id = lb.ring_backend(&key, &flow);
    let frag_id = 0xdead_beef;
    let frags: Vec<Vec<u8>> = PIECES
        .iter()
        .map(|&(a, b)| frag6(CLIENT_V6, VIP_V6, frag_id, a, b < l4.len(), &l4[a..b]))
        .collect();

    // The outer flow label comes from the flow as read: with ports for the
    // first fragment, without for the later ones.
    expect(
        &mut lb,
        &to_lb(&frags[0]),
        XDP_TX,
        encapsulated(id, &frags[0], &flow),
        &[
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::NewFlow, 1),
            (Reason::Fragment, 1),
            (Reason::ConnProbation, 1),
        ],
    );
    assert_eq!(
        lb.maps.frag(&frag_key(&flow, frag_id)).unwrap(),
        Some(FragEntry {
            backend_id: id,
            vip_id: meta.vip_id,
            vip_flags: 0,
            _pad: 0
        })
    );
    for f in &frags[1..] {
        expect(
            &mut lb,
            &to_lb(f),
            XDP_TX,
            encapsulated(id, f, &portless(&flow)),
            &[(Reason::Tx, 1), (Reason::Fragment, 1)],
        );
    }
    assert_eq!(lb.maps.backend_stats(id).unwrap().packets, 3);
}

#[test]
fn golden_ipv6_fragments_with_dest_opts_after_the_fragment_header_follow_the_first() {
    // RFC 8200: headers after the fragment header belong to the
    // fragmentable part, so only the first fragment has them; a later
    // fragment has payload bytes there. IPv4 backends: an IPv4 outer header
    // has no flow label, so the expected bytes do not depend on which flow
    // the label would hash.
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    lb.add_vip(key, 0, &backends_v4());
    let whole = udp6(CLIENT_V6, 40000, VIP_V6, 53, PAYLOAD);
    let flow = flow_of(&whole);
    let id = lb.ring_backend(&key, &flow);
    // Destination options (16 bytes, next header UDP), then the UDP bytes.
    let mut fragmentable = vec![PROTO_UDP, 1, 1, 12];
    fragmentable.extend_from_slice(&[0; 12]);
    fragmentable.extend_from_slice(&whole[IPV6_HLEN..]);
    let with_next = |mut f: Vec<u8>| {
        // The fragment header's next header: destination options.
        f[IPV6_HLEN] = 60;
        f
    };
    let first = with_next(frag6(CLIENT_V6, VIP_V6, 21, 0, true, &fragmentable[..32]));
    let later = with_next(frag6(CLIENT_V6, VIP_V6, 21, 32, false, &fragmentable[32..]));
    expect(
        &mut lb,
        &to_lb(&first),
        XDP_TX,
        encapsulated(id, &first, &flow),
        &[
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::NewFlow, 1),
            (Reason::Fragment, 1),
            (Reason::ConnProbation, 1),
        ],
    );
    expect(
        &mut lb,
        &to_lb(&later),
        XDP_TX,
        encapsulated(id, &later, &portless(&flow)),
        &[(Reason::Tx, 1), (Reason::Fragment, 1)],
    );
}

/// A UDP datagram in two fragments to a VIP: the first is sent (and
/// checked to reach the ring's backend), then that backend leaves the ring
/// (it stays configured). Returns the balancer, the VIP, the flow, the
/// backend's id and the last fragment, not sent yet.
fn first_fragment_then_its_backend_leaves(datagram_id: u16) -> (Lb, VipKey, FlowKey, u32, Vec<u8>) {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    lb.add_vip(key, 0, &backends_v4());
    let whole = udp4(CLIENT_V4, 40000, VIP_V4, 53, PAYLOAD);
    let l4 = &whole[IPV4_HLEN..];
    let flow = flow_of(&whole);
    let id = lb.ring_backend(&key, &flow);
    let first = frag4(CLIENT_V4, VIP_V4, datagram_id, 0, true, &l4[..24]);
    let last = frag4(CLIENT_V4, VIP_V4, datagram_id, 24, false, &l4[24..]);
    assert_eq!(lb.run(&to_lb(&first)).data, encapsulated(id, &first, &flow));
    let rest: Vec<BackendSpec> = backends_v4().into_iter().filter(|b| b.id != id).collect();
    lb.set_backends(&key, &rest);
    (lb, key, flow, id, last)
}

#[test]
fn golden_later_fragments_keep_their_backend_when_the_ring_changes() {
    let (mut lb, key, flow, id, last) = first_fragment_then_its_backend_leaves(77);
    assert_ne!(lb.ring_backend(&key, &flow), id);
    expect(
        &mut lb,
        &to_lb(&last),
        XDP_TX,
        encapsulated(id, &last, &portless(&flow)),
        &[(Reason::Tx, 1), (Reason::Fragment, 1)],
    );
}

#[test]
fn golden_later_fragment_without_its_first_is_passed_untracked() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 53, PROTO_UDP), 0, &backends_v4());
    lb.add_vip(vip_key(VIP_V6, 53, PROTO_UDP), 0, &backends_v6());
    let l4_v4 = udp4(CLIENT_V4, 40000, VIP_V4, 53, PAYLOAD)[IPV4_HLEN..].to_vec();
    let l4_v6 = udp6(CLIENT_V6, 40000, VIP_V6, 53, PAYLOAD)[IPV6_HLEN..].to_vec();
    let cases = [
        frag4(CLIENT_V4, VIP_V4, 9, 24, true, &l4_v4[24..48]),
        frag4(CLIENT_V4, VIP_V4, 9, 48, false, &l4_v4[48..]),
        frag6(CLIENT_V6, VIP_V6, 9, 24, true, &l4_v6[24..48]),
        frag6(CLIENT_V6, VIP_V6, 9, 48, false, &l4_v6[48..]),
    ];
    for ip in &cases {
        let f = to_lb(ip);
        expect(
            &mut lb,
            &f,
            XDP_PASS,
            f.clone(),
            &[(Reason::PassFragUntracked, 1), (Reason::Fragment, 1)],
        );
    }
    // A first fragment of another datagram (other id) does not adopt them.
    let first = frag4(CLIENT_V4, VIP_V4, 10, 0, true, &l4_v4[..24]);
    assert_eq!(lb.run(&to_lb(&first)).action, XDP_TX);
    let f = to_lb(&cases[0]);
    expect(
        &mut lb,
        &f,
        XDP_PASS,
        f.clone(),
        &[(Reason::PassFragUntracked, 1), (Reason::Fragment, 1)],
    );
    // Only the first fragment's flow, seen once: on probation.
    assert_eq!(lb.maps.probation_count(usize::MAX), 1);
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_first_fragment_to_non_vip_is_passed_and_not_remembered() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 53, PROTO_UDP), 0, &backends_v4());
    // Same address, a port with no VIP.
    let whole = udp4(CLIENT_V4, 40000, VIP_V4, 54, PAYLOAD);
    let l4 = &whole[IPV4_HLEN..];
    let first = frag4(CLIENT_V4, VIP_V4, 5, 0, true, &l4[..24]);
    let later = frag4(CLIENT_V4, VIP_V4, 5, 24, false, &l4[24..]);
    let f = to_lb(&first);
    expect(
        &mut lb,
        &f,
        XDP_PASS,
        f.clone(),
        &[(Reason::PassNonVip, 1), (Reason::Fragment, 1)],
    );
    assert_eq!(lb.maps.frag(&frag_key(&flow_of(&whole), 5)).unwrap(), None);
    let f = to_lb(&later);
    expect(
        &mut lb,
        &f,
        XDP_PASS,
        f.clone(),
        &[(Reason::PassFragUntracked, 1), (Reason::Fragment, 1)],
    );
}

// ---------------------------------------------------------------------------
// ICMP too-big

/// Establish the client's TCP flow to the VIP with two ACKs (the first puts
/// it on probation, the second enters it in the connection table), then
/// take its backend out of the ring so the ring disagrees with the entry.
/// Returns the entry's backend.
fn establish_then_move_ring(lb: &mut Lb, key: &VipKey, ack: &[u8], all: &[BackendSpec]) -> u32 {
    let flow = flow_of(ack);
    let id = lb.ring_backend(key, &flow);
    assert_eq!(lb.run(&to_lb(ack)).action, XDP_TX);
    assert_eq!(lb.run(&to_lb(ack)).action, XDP_TX);
    assert_eq!(lb.maps.conn(&flow).unwrap().unwrap().backend_id, id);
    let rest: Vec<BackendSpec> = all.iter().copied().filter(|b| b.id != id).collect();
    lb.set_backends(key, &rest);
    assert_ne!(lb.ring_backend(key, &flow), id);
    id
}

#[test]
fn golden_icmpv4_frag_needed_goes_to_the_connection_entry_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(key, 0, &backends_v4());
    let ack = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"");
    let id = establish_then_move_ring(&mut lb, &key, &ack, &backends_v4());
    let entry = lb.maps.conn(&flow_of(&ack)).unwrap();

    // The backend's reply VIP:80 -> client:40000, quoted as IP header + 8.
    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40000, Tcp::Ack, &[0x55; 1460]);
    let icmp = frag_needed(&reply[..IPV4_HLEN + 8]);
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(id, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
    assert_eq!(lb.maps.conn(&flow_of(&ack)).unwrap(), entry);
    assert_eq!(lb.maps.conn_count(usize::MAX), 1);
}

#[test]
fn golden_icmp_too_big_goes_to_the_probation_entry_backend_and_promotes_nothing() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let all = backends_v4();
    lb.add_vip(key, 0, &all);
    // One packet of the flow: on probation, pinned to the ring's backend.
    let ack = tcp4(CLIENT_V4, 40003, VIP_V4, 80, Tcp::Ack, b"");
    let flow = flow_of(&ack);
    let id = lb.ring_backend(&key, &flow);
    assert_eq!(lb.run(&to_lb(&ack)).action, XDP_TX);
    let waiting = lb
        .maps
        .probation_entry(&flow)
        .unwrap()
        .expect("on probation");
    let rest: Vec<BackendSpec> = all.iter().copied().filter(|b| b.id != id).collect();
    lb.set_backends(&key, &rest);
    assert_ne!(lb.ring_backend(&key, &flow), id);

    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40003, Tcp::Ack, &[0x55; 1460]);
    let icmp = frag_needed(&reply[..IPV4_HLEN + 8]);
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(id, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
    // The ICMP message is not the flow's second packet.
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), Some(waiting));
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_icmpv4_frag_needed_without_entry_goes_to_the_ring_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(key, 0, &backends_v4());
    let flow = flow_of(&tcp4(CLIENT_V4, 40001, VIP_V4, 80, Tcp::Ack, b""));
    let id = lb.ring_backend(&key, &flow);
    // A longer quote (whole headers and some payload) changes nothing.
    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40001, Tcp::Ack, &[0x55; 1460]);
    for quote in [IPV4_HLEN + 8, IPV4_HLEN + 20 + 100] {
        let icmp = frag_needed(&reply[..quote]);
        expect(
            &mut lb,
            &to_lb(&icmp),
            XDP_TX,
            encapsulated(id, &icmp, &icmp_flow(&icmp)),
            &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
        );
    }
    // Never entered in the connection table.
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_icmpv6_packet_too_big_goes_to_the_connection_entry_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 443, PROTO_TCP);
    lb.add_vip(key, 0, &backends_v6());
    let ack = tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Ack, b"");
    let id = establish_then_move_ring(&mut lb, &key, &ack, &backends_v6());
    let entry = lb.maps.conn(&flow_of(&ack)).unwrap();

    // IPv6 routers quote as much as fits in the minimum MTU.
    let reply = tcp6(VIP_V6, 443, CLIENT_V6, 40000, Tcp::Ack, &[0x66; 1000]);
    let icmp = packet_too_big(&reply);
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(id, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
    assert_eq!(lb.maps.conn(&flow_of(&ack)).unwrap(), entry);
    assert_eq!(lb.maps.conn_count(usize::MAX), 1);
}

#[test]
fn golden_icmpv6_packet_too_big_without_entry_goes_to_the_ring_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    lb.add_vip(key, 0, &backends_v6());
    let flow = flow_of(&udp6(CLIENT_V6, 40002, VIP_V6, 53, b""));
    let id = lb.ring_backend(&key, &flow);
    let reply = udp6(VIP_V6, 53, CLIENT_V6, 40002, &[0x77; 1400]);
    let icmp = packet_too_big(&reply[..IPV6_HLEN + 8]);
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(id, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_other_icmp_to_a_vip_is_passed_non_vip() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &backends_v4());
    lb.add_vip(vip_key(VIP_V6, 80, PROTO_TCP), 0, &backends_v6());
    let mut cases = Vec::new();
    let mut out = Vec::new();
    PacketBuilder::ipv4(v4(CLIENT_V4), v4(VIP_V4), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .unwrap();
    cases.push(("ICMPv4 echo request", out));
    let mut out = Vec::new();
    PacketBuilder::ipv6(v6(CLIENT_V6), v6(VIP_V6), 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut out, b"ping")
        .unwrap();
    cases.push(("ICMPv6 echo request", out));
    // Destination unreachable, but not "fragmentation needed" (port unreachable).
    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40000, Tcp::Ack, b"");
    let mut icmp = frag_needed(&reply[..IPV4_HLEN + 8]);
    icmp[IPV4_HLEN + 1] = 3;
    cases.push(("ICMPv4 port unreachable", icmp));
    // Too-big about a port that is no VIP.
    let reply = tcp4(VIP_V4, 8080, CLIENT_V4, 40000, Tcp::Ack, b"");
    cases.push(("too-big about a non-VIP port", frag_needed(&reply)));
    // Too-big quoting a packet that did not come from the address it was sent to.
    let reply = tcp4(BACKEND_V4[0], 80, CLIENT_V4, 40000, Tcp::Ack, b"");
    cases.push(("too-big quoting another source", frag_needed(&reply)));
    // Too-big about ICMP (the VIP's echo reply): no ports to follow.
    let mut echo_reply = Vec::new();
    PacketBuilder::ipv6(v6(VIP_V6), v6(CLIENT_V6), 64)
        .icmpv6_echo_reply(1, 1)
        .write(&mut echo_reply, b"pong")
        .unwrap();
    cases.push(("too-big about an echo reply", packet_too_big(&echo_reply)));
    for (what, ip) in cases {
        let f = to_lb(&ip);
        let before = lb.counts();
        let out = lb.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_PASS,
                data: f
            },
            "{what}"
        );
        assert_eq!(
            moved(&before, &lb.counts()),
            vec![(Reason::PassNonVip, 1)],
            "{what}"
        );
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_icmp_too_big_with_truncated_embedded_header_is_bad_l4_header() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &backends_v4());
    lb.add_vip(vip_key(VIP_V6, 80, PROTO_TCP), 0, &backends_v6());
    let reply4 = tcp4(VIP_V4, 80, CLIENT_V4, 40000, Tcp::Ack, b"");
    let reply6 = tcp6(VIP_V6, 80, CLIENT_V6, 40000, Tcp::Ack, b"");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Quoted IPv4 header cut, or complete without the 4 bytes of ports.
    for quote in [0, 1, 10, 19, 20, 21, 23] {
        let what = format!("ICMPv4 quoting {quote} bytes");
        cases.push((what, frag_needed(&reply4[..quote])));
    }
    // Quoted IPv4 header with a bad IHL or version.
    let mut bad = reply4.clone();
    bad[0] = 0x44;
    cases.push(("quoted IHL 4".into(), frag_needed(&bad[..28])));
    let mut bad = reply4.clone();
    bad[0] = 0x65;
    cases.push(("quoted version 6".into(), frag_needed(&bad[..28])));
    // Quoted IPv4 options that leave no room for the ports.
    let mut bad = reply4.clone();
    bad[0] = 0x47;
    cases.push(("quoted IHL 7".into(), frag_needed(&bad[..28])));
    for quote in [0, 1, 39, 40, 43] {
        let what = format!("ICMPv6 quoting {quote} bytes");
        cases.push((what, packet_too_big(&reply6[..quote])));
    }
    // The ICMP header itself cut (the IP length kept consistent).
    let icmp = frag_needed(&reply4[..28]);
    let mut cut = icmp[..IPV4_HLEN + 7].to_vec();
    let (mut h, _) = Ipv4Header::from_slice(&cut).unwrap();
    h.total_len = cut.len() as u16;
    h.header_checksum = h.calc_header_checksum();
    cut[..IPV4_HLEN].copy_from_slice(&h.to_bytes());
    cases.push(("ICMPv4 header of 7 bytes".into(), cut));
    for (what, ip) in cases {
        let f = to_lb(&ip);
        let before = lb.counts();
        let out = lb.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_PASS,
                data: f
            },
            "{what}"
        );
        assert_eq!(
            moved(&before, &lb.counts()),
            vec![(Reason::PassBadL4Header, 1)],
            "{what}"
        );
    }
}

#[test]
fn golden_later_fragment_does_not_follow_a_backend_id_given_to_another_vip() {
    // The first fragment's backend leaves, and its id goes to a backend of
    // another VIP: the remembered id no longer means this datagram's backend.
    let (mut lb, _, _, id, last) = first_fragment_then_its_backend_leaves(78);
    lb.add_vip(
        vip_key(VIP_V6, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(id, BACKEND_V6[0])],
    );
    let f = to_lb(&last);
    expect(
        &mut lb,
        &f,
        XDP_DROP,
        f.clone(),
        &[(Reason::DropNoBackend, 1), (Reason::Fragment, 1)],
    );
}

#[test]
fn golden_icmp_too_big_does_not_follow_an_entry_to_a_backend_id_of_another_vip() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(key, 0, &backends_v4());
    let ack = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"");
    let id = establish_then_move_ring(&mut lb, &key, &ack, &backends_v4());
    // The entry's backend id now belongs to a backend of another VIP.
    lb.add_vip(
        vip_key(VIP_V6, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(id, BACKEND_V6[0])],
    );
    let ring = lb.ring_backend(&key, &flow_of(&ack));
    assert_ne!(ring, id);
    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40000, Tcp::Ack, &[0x55; 1460]);
    let icmp = frag_needed(&reply[..IPV4_HLEN + 8]);
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(ring, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
}

#[test]
fn golden_icmpv6_packet_too_big_quoting_extension_headers_goes_to_the_flow_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    lb.add_vip(key, 0, &backends_v6());
    let flow = flow_of(&udp6(CLIENT_V6, 40003, VIP_V6, 53, b""));
    let id = lb.ring_backend(&key, &flow);
    let reply = udp6(VIP_V6, 53, CLIENT_V6, 40003, &[0x77; 1400]);
    let cases = [
        ("destination options", vec![dest_opts()]),
        ("a first fragment", vec![fragment(0, true, 9)]),
        (
            "destination options, then a first fragment",
            vec![dest_opts(), fragment(0, true, 9)],
        ),
    ];
    for (what, exts) in cases {
        let quoted = with_ext_headers(&reply, &exts);
        // The headers, the UDP header and a little payload.
        let icmp = packet_too_big(&quoted[..IPV6_HLEN + 24 + 8 + 32]);
        let before = lb.counts();
        let out = lb.run(&to_lb(&icmp));
        assert_eq!(
            (out, moved(&before, &lb.counts())),
            (
                Outcome {
                    action: XDP_TX,
                    data: encapsulated(id, &icmp, &icmp_flow(&icmp)),
                },
                vec![(Reason::Tx, 1), (Reason::IcmpTooBig, 1)]
            ),
            "{what}"
        );
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_icmp_too_big_quoting_a_later_fragment_is_passed_not_matched_by_its_payload() {
    let mut lb = Lb::new();
    let key4 = vip_key(VIP_V4, 53, PROTO_UDP);
    lb.add_vip(key4, 0, &backends_v4());
    lb.add_vip(vip_key(VIP_V6, 53, PROTO_UDP), 0, &backends_v6());
    // A later fragment of a reply VIP:53 -> client whose first payload bytes
    // read like the ports 53 -> 40000 of a flow of the VIP.
    let mut payload = vec![0, 53, 0x9c, 0x40, 0, 16, 0, 0];
    payload.extend_from_slice(&[0x55; 24]);
    let later4 = frag4(VIP_V4, CLIENT_V4, 7, 1480, false, &payload);
    let later6 = frag6(VIP_V6, CLIENT_V6, 7, 1448, false, &payload);
    for (what, ip) in [
        ("ICMPv4 quoting a later fragment", frag_needed(&later4)),
        ("ICMPv6 quoting a later fragment", packet_too_big(&later6)),
    ] {
        let f = to_lb(&ip);
        let before = lb.counts();
        let out = lb.run(&f);
        assert_eq!(
            (out, moved(&before, &lb.counts())),
            (
                Outcome {
                    action: XDP_PASS,
                    data: f
                },
                vec![(Reason::PassIcmpQuotedFragment, 1)]
            ),
            "{what}"
        );
    }
    // A quoted first fragment carries the ports: matched as before.
    let reply = udp4(VIP_V4, 53, CLIENT_V4, 40000, &[0x55; 1400]);
    let first4 = frag4(VIP_V4, CLIENT_V4, 8, 0, true, &reply[IPV4_HLEN..][..64]);
    let icmp = frag_needed(&first4[..IPV4_HLEN + 8]);
    let id = lb.ring_backend(&key4, &flow_of(&udp4(CLIENT_V4, 40000, VIP_V4, 53, b"")));
    expect(
        &mut lb,
        &to_lb(&icmp),
        XDP_TX,
        encapsulated(id, &icmp, &icmp_flow(&icmp)),
        &[(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
    );
}
