//! Golden packets for second chance (`lb_common::gue`): the exact GUE
//! packet the `lb` program sends for a TCP packet it cannot place on a
//! ring slot that changed hands, and what `lb_decap` does with one: keep it
//! when the backend has a socket for it (established, IPv4 and IPv6; a
//! valid SYN cookie; time-wait), send it on to the hop with the hop list
//! emptied, drop a hop that is not a peer before asking for a socket,
//! strip GUE with no hop left, drop GUE from a source it does not trust
//! and GUE with a hop from a peer. Steady-state packets (a SYN, a slot
//! whose window closed) stay plain IP-in-IP, and a first fragment on a
//! moved slot goes plain without taking the flow's second chance away. An
//! ICMP too-big about a flow in no table takes the hop like the flow's
//! packets, and the backend keeps it only if it has the connection quoted.
//!
//! The decap tests run in a namespace of their own: `lb_decap` asks its
//! namespace's sockets and FIB (of the loopback device, under
//! BPF_PROG_TEST_RUN), so the host's state must not leak in.

use std::net::{IpAddr, SocketAddr, TcpListener};

use etherparse::{
    IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, TcpHeader,
};
use lb_common::{
    FlowKey, Reason,
    flow::{PROTO_IPIP, PROTO_IPV6, PROTO_TCP, tunnel_entropy_of},
    gue::{DEFAULT_GUE_PORT, HOPS_TYPE, source_port},
    maps::{NO_BACKEND, PrevOwner, SecondChance, VIP_F_STATELESS, VipKey},
    stats::DecapReason,
};
use lb_tests::{harness::*, netns::Netns, packets::*};
use lb_userspace::decap_sources::{DecapSources, parse_source};

const PORT: u16 = DEFAULT_GUE_PORT;
/// The backend host's own NIC, and the router (or LB) that delivers to it.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];

// ---------------------------------------------------------------------------
// The wire format, built independently of the program's writer.

/// UDP, GUE and the hop list in front of `inner`, as the format says.
fn gue(sport: u16, inner: &[u8], hop: &[u8]) -> Vec<u8> {
    let udp_len = (8 + 4 + 4 + hop.len() + inner.len()) as u16;
    let proto = if inner[0] >> 4 == 4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&PORT.to_be_bytes());
    h.extend_from_slice(&udp_len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    // Version 0, C 0, Hlen in words after the base header; no flags.
    h.extend_from_slice(&[((4 + hop.len()) / 4) as u8, proto, 0, 0]);
    h.extend_from_slice(&HOPS_TYPE.to_be_bytes());
    h.extend_from_slice(&[u8::from(!hop.is_empty()), 0]);
    h.extend_from_slice(hop);
    h
}

fn inner_tos(inner: &[u8]) -> u8 {
    if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    }
}

/// An outer IPv4 header carrying `payload_len` bytes of UDP.
fn outer_udp_v4(src: &str, dst: &str, tos: u8, payload_len: usize) -> Vec<u8> {
    let mut h =
        Ipv4Header::new(payload_len as u16, 64, IpNumber::UDP, v4(src), v4(dst)).expect("outer");
    h.dont_fragment = true;
    h.identification = 0;
    h.dscp = IpDscp::try_new(tos >> 2).unwrap();
    h.ecn = IpEcn::try_new(tos & 3).unwrap();
    h.header_checksum = h.calc_header_checksum();
    h.to_bytes().to_vec()
}

/// An outer IPv6 header carrying `payload_len` bytes of UDP.
fn outer_udp_v6(src: &str, dst: &str, tc: u8, label: u32, payload_len: usize) -> Vec<u8> {
    Ipv6Header {
        traffic_class: tc,
        flow_label: Ipv6FlowLabel::try_new(label).unwrap(),
        payload_length: payload_len as u16,
        next_header: IpNumber::UDP,
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    }
    .to_bytes()
    .to_vec()
}

/// The IP packet (outer header onwards) of `inner` in GUE from `src` to
/// `dst` with `hop` (an address of the outer family, or none).
fn gue_packet(src: &str, dst: &str, sport: u16, label: u32, inner: &[u8], hop: &str) -> Vec<u8> {
    let tos = inner_tos(inner);
    if src.contains(':') {
        let hop = if hop.is_empty() {
            vec![]
        } else {
            v6(hop).to_vec()
        };
        let udp = cat(&gue(sport, inner, &hop), inner);
        cat(&outer_udp_v6(src, dst, tos, label, udp.len()), &udp)
    } else {
        let hop = if hop.is_empty() {
            vec![]
        } else {
            v4(hop).to_vec()
        };
        let udp = cat(&gue(sport, inner, &hop), inner);
        cat(&outer_udp_v4(src, dst, tos, udp.len()), &udp)
    }
}

fn ether_type(ip: &[u8]) -> u16 {
    ether_type_of(ip)
}

// ---------------------------------------------------------------------------
// The load balancer's side.

/// A VIP over two backends whose every ring slot changed hands within an
/// open window: each slot's previous owner is the other backend.
fn moved_vip(vip: &str, backends: [&str; 2]) -> (Lb, VipKey, Vec<u32>) {
    moved_vip_with(vip, backends, 0)
}

/// `moved_vip` with VIP flags `flags`.
fn moved_vip_with(vip: &str, backends: [&str; 2], flags: u32) -> (Lb, VipKey, Vec<u32>) {
    let mut lb = Lb::new();
    let key = vip_key(vip, 80, PROTO_TCP);
    let specs = [
        BackendSpec::new(0, backends[0]),
        BackendSpec::new(1, backends[1]),
    ];
    let meta = lb.add_vip(key, flags, &specs);
    let ring = lb.maps.live_ring(&meta).expect("ring");
    let prev: Vec<u32> = ring
        .iter()
        .map(|id| {
            if *id == NO_BACKEND {
                NO_BACKEND
            } else {
                1 - id
            }
        })
        .collect();
    set_prev_owners(&mut lb, meta.vip_id, &prev, u32::MAX);
    lb.maps
        .set_second_chance(&SecondChance {
            gue_port: PORT,
            _pad: [0; 2],
        })
        .expect("gue port");
    (lb, key, prev)
}

/// Give every slot of VIP `vip_id` its previous owner in `prev`, all until
/// `until_s` (`lb_common::maps::coarse_seconds`; 0: none counts).
fn set_prev_owners(lb: &mut Lb, vip_id: u32, prev: &[u32], until_s: u32) {
    let owners: Vec<PrevOwner> = prev
        .iter()
        .map(|&owner| PrevOwner { owner, until_s })
        .collect();
    lb.maps.set_prev_owners(vip_id, &owners).expect("prev");
}

fn lb_sport(inner: &[u8]) -> u16 {
    source_port(tunnel_entropy_of(&flow_of(inner)))
}

fn lb_label(flow: &FlowKey) -> u32 {
    tunnel_entropy_of(flow) & 0xfffff
}

/// The ACK goes to the ring's backend with the other one as the hop, and
/// enters no table: its second packet travels the same way. A stateless
/// VIP looks in no table either (no `conn_miss`).
fn expect_second_hop(
    lb: &mut Lb,
    key: &VipKey,
    inner: &[u8],
    backends: [&str; 2],
    outer_src: &str,
) {
    let owner = lb.ring_backend(key, &flow_of(inner)) as usize;
    let (to, hop) = (backends[owner], backends[1 - owner]);
    let ip = gue_packet(
        outer_src,
        to,
        lb_sport(inner),
        lb_label(&flow_of(inner)),
        inner,
        hop,
    );
    let expected = Outcome {
        action: XDP_TX,
        data: frame(GATEWAY_MAC, LB_MAC, None, ether_type(&ip), &ip),
    };
    let stateless = lb.maps.vip(key).unwrap().unwrap().flags & VIP_F_STATELESS != 0;
    let counted = if stateless {
        vec![(Reason::Tx, 1), (Reason::SecondChance, 1)]
    } else {
        vec![
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::SecondChance, 1),
        ]
    };
    for packet in ["first", "second"] {
        let (out, moved) = lb.run_counted(&to_lb(inner));
        assert_eq!(out, expected, "{packet} ACK");
        assert_eq!(moved, counted, "{packet} ACK");
    }
    assert_eq!(lb.maps.conn_count(16), 0, "connection table");
    assert_eq!(lb.maps.probation_count(16), 0, "probation table");
}

#[test]
fn golden_ipv4_tcp_ack_on_a_moved_slot_goes_in_gue_with_the_previous_owner_as_hop() {
    let (mut lb, key, _) = moved_vip(VIP_V4, [BACKEND_V4[0], BACKEND_V4[1]]);
    let inner = tcp4(
        CLIENT_V4,
        40000,
        VIP_V4,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    expect_second_hop(
        &mut lb,
        &key,
        &inner,
        [BACKEND_V4[0], BACKEND_V4[1]],
        OUTER_SRC_V4,
    );
}

#[test]
fn golden_ipv6_tcp_ack_on_a_moved_slot_goes_in_gue_with_the_previous_owner_as_hop() {
    let (mut lb, key, _) = moved_vip(VIP_V6, [BACKEND_V6[0], BACKEND_V6[1]]);
    let inner = tcp6(
        CLIENT_V6,
        40000,
        VIP_V6,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    expect_second_hop(
        &mut lb,
        &key,
        &inner,
        [BACKEND_V6[0], BACKEND_V6[1]],
        OUTER_SRC_V6,
    );
}

#[test]
fn golden_steady_state_packets_stay_plain_ipip_with_second_chance_on() {
    let (mut lb, key, prev) = moved_vip(VIP_V4, [BACKEND_V4[0], BACKEND_V4[1]]);
    let backend =
        |lb: &Lb, inner: &[u8]| BACKEND_V4[lb.ring_backend(&key, &flow_of(inner)) as usize];
    // A SYN opens its connection on the owner now: no hop.
    let syn = tcp4(CLIENT_V4, 40001, VIP_V4, 80, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&syn));
    assert_eq!(out.data, tunnelled(&syn, backend(&lb, &syn)), "SYN");
    // UDP has no socket to ask.
    let udp_key = vip_key(VIP_V4, 53, lb_common::flow::PROTO_UDP);
    lb.add_vip(udp_key, 0, &[BackendSpec::new(2, BACKEND_V4[2])]);
    let dgram = udp4(CLIENT_V4, 40002, VIP_V4, 53, b"q");
    assert_eq!(
        lb.run(&to_lb(&dgram)).data,
        tunnelled(&dgram, BACKEND_V4[2]),
        "UDP"
    );
    // A flow in the connection table keeps its plain tunnel: its first
    // packet came before the window opened.
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    set_prev_owners(&mut lb, meta.vip_id, &prev, 0);
    let ack = tcp4(CLIENT_V4, 40003, VIP_V4, 80, Tcp::Ack, b"x");
    for _ in 0..2 {
        assert_eq!(
            lb.run(&to_lb(&ack)).data,
            tunnelled(&ack, backend(&lb, &ack))
        );
    }
    set_prev_owners(&mut lb, meta.vip_id, &prev, u32::MAX);
    let (out, moved) = lb.run_counted(&to_lb(&ack));
    assert_eq!(out.data, tunnelled(&ack, backend(&lb, &ack)), "table hit");
    assert_eq!(moved, vec![(Reason::Tx, 1), (Reason::ConnHit, 1)]);
    // The window closed: the ring alone, as before.
    set_prev_owners(&mut lb, meta.vip_id, &prev, 1);
    let fresh = tcp4(CLIENT_V4, 40004, VIP_V4, 80, Tcp::Ack, b"x");
    assert_eq!(
        lb.run(&to_lb(&fresh)).data,
        tunnelled(&fresh, backend(&lb, &fresh))
    );
    assert_eq!(lb.count(Reason::SecondChance), 0);
}

/// A first fragment (not the whole segment) of a flow on a moved slot
/// cannot take a hop along: it goes plain to the owner now, and its flow
/// is entered in no table, so the flow's next whole segment still gets its
/// second chance (entered, it would be pinned to the owner now and reset
/// there if it is the previous owner's).
#[test]
fn golden_first_fragment_on_a_moved_slot_is_not_entered_and_the_next_segment_takes_the_hop() {
    let backends = [BACKEND_V4[0], BACKEND_V4[1]];
    let (mut lb, key, _) = moved_vip(VIP_V4, backends);
    let whole = tcp4(
        CLIENT_V4,
        40010,
        VIP_V4,
        80,
        Tcp::Ack,
        b"a segment long enough for two fragments",
    );
    // The IP header again, with MF set and the first 24 bytes of L4.
    let mut h = Ipv4Header::from_slice(&whole).expect("ipv4").0;
    h.more_fragments = true;
    h.identification = 0x4321;
    h.set_payload_len(24).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let first = cat(&h.to_bytes(), &whole[20..44]);
    let owner = backends[lb.ring_backend(&key, &flow_of(&whole)) as usize];
    let (out, moved) = lb.run_counted(&to_lb(&first));
    assert_eq!(out.data, tunnelled(&first, owner), "first fragment");
    assert_eq!(
        moved,
        vec![
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::Fragment, 1)
        ],
        "first fragment: not on probation"
    );
    expect_second_hop(&mut lb, &key, &whole, backends, OUTER_SRC_V4);
}

// ---------------------------------------------------------------------------
// Stateless VIPs: the ring and the second hop alone.

/// Every non-SYN packet of a stateless VIP on a moved slot takes the
/// previous owner along, as a packet of a stateful VIP that misses both
/// tables does, but without looking in them; a SYN goes plain.
#[test]
fn golden_stateless_vip_on_a_moved_slot_sends_every_packet_with_the_previous_owner_as_hop() {
    for (vip, backends, outer, client) in [
        (
            VIP_V4,
            [BACKEND_V4[0], BACKEND_V4[1]],
            OUTER_SRC_V4,
            CLIENT_V4,
        ),
        (
            VIP_V6,
            [BACKEND_V6[0], BACKEND_V6[1]],
            OUTER_SRC_V6,
            CLIENT_V6,
        ),
    ] {
        let (mut lb, key, _) = moved_vip_with(vip, backends, VIP_F_STATELESS);
        let tcp = if client.contains(':') { tcp6 } else { tcp4 };
        let ack = tcp(client, 41000, vip, 80, Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n");
        expect_second_hop(&mut lb, &key, &ack, backends, outer);
        let syn = tcp(client, 41001, vip, 80, Tcp::Syn, b"");
        let owner = backends[lb.ring_backend(&key, &flow_of(&syn)) as usize];
        let (out, moved) = lb.run_counted(&to_lb(&syn));
        assert_eq!(out.data, tunnelled(&syn, owner), "{vip}: SYN");
        assert_eq!(
            moved,
            vec![(Reason::Tx, 1), (Reason::NewFlow, 1)],
            "{vip}: SYN"
        );
        assert_eq!(
            lb.maps.probation_count(16),
            0,
            "{vip}: the SYN entered nothing"
        );
    }
}

/// A stateless VIP ignores the connection table: a flow entered there
/// while the VIP kept state, pinned to a backend the ring no longer gives
/// it, follows the ring once the VIP is stateless, and its entry (neither
/// read nor refreshed) pins it again when the VIP keeps state again. New
/// flows enter no table.
#[test]
fn golden_stateless_vip_places_packets_by_the_ring_alone_and_the_switch_is_per_packet() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let both = [
        BackendSpec::new(0, BACKEND_V4[0]),
        BackendSpec::new(1, BACKEND_V4[1]),
    ];
    lb.add_vip(key, 0, &both);
    let ack = tcp4(CLIENT_V4, 42000, VIP_V4, 80, Tcp::Ack, b"x");
    let pinned = lb.ring_backend(&key, &flow_of(&ack));
    for _ in 0..2 {
        lb.run(&to_lb(&ack));
    }
    assert_eq!(lb.maps.conn_count(16), 1, "entered while stateful");
    let entry_before = lb.maps.conn(&flow_of(&ack)).unwrap().unwrap();
    // Only the other backend on the ring now; the pinned one stays a
    // backend of the VIP, so its entry still holds.
    let other_addr = BACKEND_V4[1 - pinned as usize];
    let other = BackendSpec::new(1 - pinned, other_addr);
    lb.set_backends(&key, &[other]);
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    let ring = lb.maps.live_ring(&meta).unwrap();
    let publish = |lb: &mut Lb, flags: u32| lb.maps.publish_ring(&key, &ring, flags).unwrap();
    publish(&mut lb, VIP_F_STATELESS);

    let (out, moved) = lb.run_counted(&to_lb(&ack));
    assert_eq!(out.data, tunnelled(&ack, other_addr), "the ring's");
    assert_eq!(moved, vec![(Reason::Tx, 1)], "no table looked at");
    for port in 42001..42011 {
        for flags in [Tcp::Syn, Tcp::Ack, Tcp::Ack] {
            let p = tcp4(CLIENT_V4, port, VIP_V4, 80, flags, b"");
            assert_eq!(lb.run(&to_lb(&p)).data, tunnelled(&p, other_addr));
        }
    }
    assert_eq!(lb.maps.conn_count(16), 1, "no new connection entries");
    assert_eq!(lb.maps.probation_count(16), 0, "no probation entries");
    assert_eq!(lb.maps.conn(&flow_of(&ack)).unwrap().unwrap(), entry_before);

    publish(&mut lb, 0);
    let (out, moved) = lb.run_counted(&to_lb(&ack));
    assert_eq!(
        out.data,
        tunnelled(&ack, BACKEND_V4[pinned as usize]),
        "pinned again"
    );
    assert_eq!(moved, vec![(Reason::Tx, 1), (Reason::ConnHit, 1)]);
}

// ---------------------------------------------------------------------------
// ICMP too-big: where the flow it is about goes.

/// The ICMP too-big a router sends the VIP about the backend's reply from
/// `vip:vport` to `client:cport` (`vip` is `VIP_V4` or `VIP_V6`).
fn too_big_about(client: &str, cport: u16, vip: &str, vport: u16) -> Vec<u8> {
    if vip.contains(':') {
        let reply = tcp6(vip, vport, client, cport, Tcp::Ack, &[0x66; 1300]);
        packet_too_big(&reply[..40 + 20 + 64])
    } else {
        let reply = tcp4(vip, vport, client, cport, Tcp::Ack, &[0x55; 1400]);
        frag_needed(&reply[..20 + 8])
    }
}

/// The frame the LB sends for the ICMP message `icmp` to `to`: plain
/// IP-in-IP, or GUE with `hop`.
fn icmp_to_backend(icmp: &[u8], to: &str, hop: &str) -> Vec<u8> {
    let flow = icmp_flow(icmp);
    let outer_src = if to.contains(':') {
        OUTER_SRC_V6
    } else {
        OUTER_SRC_V4
    };
    let ip = if hop.is_empty() && to.contains(':') {
        cat(&outer_v6(outer_src, to, icmp, &flow), icmp)
    } else if hop.is_empty() {
        cat(&outer_v4(outer_src, to, icmp), icmp)
    } else {
        let sport = source_port(tunnel_entropy_of(&flow));
        gue_packet(outer_src, to, sport, lb_label(&flow), icmp, hop)
    };
    frame(GATEWAY_MAC, LB_MAC, None, ether_type(&ip), &ip)
}

/// A too-big about a stateless VIP's flow on a moved slot goes to the
/// owner now with the previous owner as hop, as the flow's own packets
/// do: the flow may be the previous owner's (a drained backend's long
/// stream), and only the backend that sent the reply can use the MTU.
/// With the slot's window closed it goes plain to the owner.
#[test]
fn golden_stateless_vip_too_big_about_a_flow_on_a_moved_slot_takes_the_previous_owner_as_hop() {
    for (vip, backends, client) in [
        (VIP_V4, [BACKEND_V4[0], BACKEND_V4[1]], CLIENT_V4),
        (VIP_V6, [BACKEND_V6[0], BACKEND_V6[1]], CLIENT_V6),
    ] {
        let (mut lb, key, prev) = moved_vip_with(vip, backends, VIP_F_STATELESS);
        let tcp = if client.contains(':') { tcp6 } else { tcp4 };
        let flow = flow_of(&tcp(client, 43000, vip, 80, Tcp::Ack, b""));
        let owner = lb.ring_backend(&key, &flow) as usize;
        let icmp = too_big_about(client, 43000, vip, 80);
        let (out, moved) = lb.run_counted(&to_lb(&icmp));
        assert_eq!(
            out,
            Outcome {
                action: XDP_TX,
                data: icmp_to_backend(&icmp, backends[owner], backends[1 - owner]),
            },
            "{vip}: moved slot"
        );
        assert_eq!(
            moved,
            vec![
                (Reason::Tx, 1),
                (Reason::IcmpTooBig, 1),
                (Reason::SecondChance, 1)
            ],
            "{vip}: moved slot"
        );
        let meta = lb.maps.vip(&key).unwrap().unwrap();
        set_prev_owners(&mut lb, meta.vip_id, &prev, 1);
        let (out, moved) = lb.run_counted(&to_lb(&icmp));
        assert_eq!(
            out.data,
            icmp_to_backend(&icmp, backends[owner], ""),
            "{vip}: window closed"
        );
        assert_eq!(
            moved,
            vec![(Reason::Tx, 1), (Reason::IcmpTooBig, 1)],
            "{vip}: window closed"
        );
        assert_eq!(lb.maps.probation_count(16), 0, "{vip}: entered nothing");
    }
}

/// A stateful VIP's too-big follows its flow's entry, moved slot or not;
/// about a flow in neither table it takes the hop as the flow's next
/// packet would, and enters nothing.
#[test]
fn golden_stateful_vip_too_big_takes_the_hop_only_for_a_flow_in_no_table() {
    let backends = [BACKEND_V4[0], BACKEND_V4[1]];
    let (mut lb, key, prev) = moved_vip(VIP_V4, backends);
    let unseen = flow_of(&tcp4(CLIENT_V4, 43100, VIP_V4, 80, Tcp::Ack, b""));
    let owner = lb.ring_backend(&key, &unseen) as usize;
    let icmp = too_big_about(CLIENT_V4, 43100, VIP_V4, 80);
    let (out, moved) = lb.run_counted(&to_lb(&icmp));
    assert_eq!(
        out.data,
        icmp_to_backend(&icmp, backends[owner], backends[1 - owner]),
        "in no table"
    );
    assert_eq!(
        moved,
        vec![
            (Reason::Tx, 1),
            (Reason::IcmpTooBig, 1),
            (Reason::SecondChance, 1)
        ]
    );
    assert_eq!(lb.maps.conn_count(16), 0);
    assert_eq!(lb.maps.probation_count(16), 0);

    // A flow entered while the window was closed keeps its entry's plain
    // tunnel once it opens.
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    set_prev_owners(&mut lb, meta.vip_id, &prev, 0);
    let ack = tcp4(CLIENT_V4, 43101, VIP_V4, 80, Tcp::Ack, b"x");
    for _ in 0..2 {
        lb.run(&to_lb(&ack));
    }
    let entry = lb.maps.conn(&flow_of(&ack)).unwrap().expect("entered");
    set_prev_owners(&mut lb, meta.vip_id, &prev, u32::MAX);
    let icmp = too_big_about(CLIENT_V4, 43101, VIP_V4, 80);
    let (out, moved) = lb.run_counted(&to_lb(&icmp));
    assert_eq!(
        out.data,
        icmp_to_backend(&icmp, backends[entry.backend_id as usize], ""),
        "the entry's backend"
    );
    assert_eq!(moved, vec![(Reason::Tx, 1), (Reason::IcmpTooBig, 1)]);
}

// ---------------------------------------------------------------------------
// The backend's side.

/// A backend host in a namespace of its own (no forwarding: a sent-on
/// packet goes back to the MAC it came from), whose `lb_decap` takes
/// tunnels for `BACKEND_*[0]` from the LB and GUE on `PORT`, with
/// `BACKEND_*[1]` as its only peer.
struct BackendHost {
    lb: Lb,
    ns: Netns,
}

impl BackendHost {
    fn new() -> Self {
        let ns = Netns::new("gue");
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=0"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
        let mut lb = Lb::new();
        lb.accept_tunnels(
            &[BACKEND_V4[0], BACKEND_V6[0]],
            &[OUTER_SRC_V4, OUTER_SRC_V6],
        );
        let peers = [BACKEND_V4[1], BACKEND_V6[1]].map(|p| parse_source(p).unwrap());
        lb.maps.set_decap_peers(&peers).expect("peers");
        lb.maps
            .set_second_chance(&SecondChance {
                gue_port: PORT,
                _pad: [0; 2],
            })
            .expect("gue port");
        Self { lb, ns }
    }

    /// Run `frame` through `lb_decap` in this host's namespace: the
    /// outcome and the decap counters it moved.
    fn run(&mut self, frame: &[u8]) -> (Outcome, Vec<(DecapReason, u64)>) {
        let counts = |lb: &Lb| -> Vec<u64> {
            DecapReason::ALL
                .iter()
                .map(|r| lb.decap_count(*r))
                .collect()
        };
        let before = counts(&self.lb);
        let lb = &mut self.lb;
        let out = self.ns.enter(|| lb.run_decap(frame));
        let after = counts(&self.lb);
        let moved = DecapReason::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, (b, a))| (*r, a - b))
            .collect();
        (out, moved)
    }
}

/// The LB's tunnel source, this host's address and the hop (the other
/// backend), all of one family.
type Route = (&'static str, &'static str, &'static str);

/// The route of GUE from the LB in `inner`'s family.
fn route_of(inner: &[u8]) -> Route {
    if inner[0] >> 4 == 4 {
        (OUTER_SRC_V4, BACKEND_V4[0], BACKEND_V4[1])
    } else {
        (OUTER_SRC_V6, BACKEND_V6[0], BACKEND_V6[1])
    }
}

impl BackendHost {
    /// GUE from the LB to this host's address of `inner`'s family, with
    /// the other backend as hop, stays here: stripped, passed up, counted
    /// `second_chance_local` (`what` names the case).
    fn expect_kept(&mut self, inner: &[u8], what: &str) {
        let (lb_src, ours, hop) = route_of(inner);
        let (out, moved) = self.run(&gue_frame(lb_src, ours, inner, hop));
        assert_eq!(
            out,
            Outcome {
                action: XDP_PASS,
                data: stripped(inner),
            },
            "{what}"
        );
        assert_eq!(moved, vec![(DecapReason::SecondChanceLocal, 1)], "{what}");
    }

    /// `expect_sent_on_via` the route of `inner`'s family.
    fn expect_sent_on(&mut self, inner: &[u8], what: &str) {
        self.expect_sent_on_via(route_of(inner), inner, what);
    }

    /// GUE of `inner` from the LB over `route` is sent on to the hop: from
    /// this host's address, no hop left, the LB's UDP source port and flow
    /// label kept; back to the MAC it came from (this host does not
    /// forward); counted `second_chance_forwarded`.
    fn expect_sent_on_via(&mut self, (lb_src, ours, hop): Route, inner: &[u8], what: &str) {
        let (out, moved) = self.run(&gue_frame(lb_src, ours, inner, hop));
        let ip = gue_packet(ours, hop, 0xc123, 0x12345, inner, "");
        let expected = Outcome {
            action: XDP_TX,
            data: frame(HOP_MAC, HOST_MAC, None, ether_type(&ip), &ip),
        };
        assert_eq!(out, expected, "{what}");
        assert_eq!(
            moved,
            vec![(DecapReason::SecondChanceForwarded, 1)],
            "{what}"
        );
    }
}

/// The frame the LB (or a peer) sends the backend: GUE from `src` to the
/// backend's address with `hop`.
fn gue_frame(src: &str, dst: &str, inner: &[u8], hop: &str) -> Vec<u8> {
    let ip = gue_packet(src, dst, 0xc123, 0x12345, inner, hop);
    frame(HOST_MAC, HOP_MAC, None, ether_type(&ip), &ip)
}

/// The inner packet as the backend's kernel gets it: the link header
/// kept, with the inner packet's ethertype.
fn stripped(inner: &[u8]) -> Vec<u8> {
    frame(HOST_MAC, HOP_MAC, None, ether_type(inner), inner)
}

#[test]
fn golden_decap_gue_without_a_hop_is_stripped_from_a_peer_and_from_the_lb() {
    let mut host = BackendHost::new();
    for (src, dst, inner) in [
        (
            OUTER_SRC_V4,
            BACKEND_V4[0],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
        (
            BACKEND_V4[1],
            BACKEND_V4[0],
            tcp6(CLIENT_V6, 40000, VIP_V6, 80, Tcp::Ack, b"data"),
        ),
        (
            BACKEND_V6[1],
            BACKEND_V6[0],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
    ] {
        let (out, moved) = host.run(&gue_frame(src, dst, &inner, ""));
        assert_eq!(
            out,
            Outcome {
                action: XDP_PASS,
                data: stripped(&inner),
            },
            "from {src}"
        );
        assert_eq!(
            moved,
            vec![(DecapReason::SecondChanceReceived, 1)],
            "from {src}"
        );
    }
}

#[test]
fn golden_decap_gue_from_an_untrusted_source_is_dropped() {
    let mut host = BackendHost::new();
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data");
    for (src, dst, hop) in [
        ("203.0.113.66", BACKEND_V4[0], ""),
        ("203.0.113.66", BACKEND_V4[0], BACKEND_V4[1]),
        ("2001:db8:66::1", BACKEND_V6[0], ""),
    ] {
        let f = gue_frame(src, dst, &inner, hop);
        let (out, moved) = host.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_DROP,
                data: f.clone(),
            },
            "from {src}"
        );
        assert_eq!(
            moved,
            vec![(DecapReason::DropUntrustedSource, 1)],
            "from {src}"
        );
    }
    // With second chance off on this host, UDP to the port is no tunnel.
    host.lb
        .maps
        .set_second_chance(&SecondChance::default())
        .unwrap();
    let f = gue_frame("203.0.113.66", BACKEND_V4[0], &inner, "");
    let (out, moved) = host.run(&f);
    assert_eq!((out.action, out.data), (XDP_PASS, f));
    assert_eq!(moved, vec![(DecapReason::PassNotTunnel, 1)]);
}

#[test]
fn golden_decap_second_hop_without_a_socket_is_sent_on_with_the_hop_list_emptied() {
    let mut host = BackendHost::new();
    for (lb_src, ours, hop, inner) in [
        (
            OUTER_SRC_V4,
            BACKEND_V4[0],
            BACKEND_V4[1],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
        (
            OUTER_SRC_V6,
            BACKEND_V6[0],
            BACKEND_V6[1],
            tcp6(CLIENT_V6, 40000, VIP_V6, 80, Tcp::Ack, b"data"),
        ),
        (
            OUTER_SRC_V6,
            BACKEND_V6[0],
            BACKEND_V6[1],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
    ] {
        host.expect_sent_on_via((lb_src, ours, hop), &inner, &format!("to {hop}"));
    }
}

#[test]
fn golden_decap_second_hop_that_is_not_a_peer_is_dropped_never_sent_on() {
    let mut host = BackendHost::new();
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data");
    for (ours, hop) in [
        (BACKEND_V4[0], BACKEND_V4[2]),
        (BACKEND_V4[0], "192.0.2.1"),
        (BACKEND_V6[0], BACKEND_V6[2]),
    ] {
        let f = gue_frame(
            if ours.contains(':') {
                OUTER_SRC_V6
            } else {
                OUTER_SRC_V4
            },
            ours,
            &inner,
            hop,
        );
        let (out, moved) = host.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_DROP,
                data: f.clone(),
            },
            "hop {hop}"
        );
        assert_eq!(
            moved,
            vec![(DecapReason::DropSecondHopNotPeer, 1)],
            "hop {hop}"
        );
    }
}

/// Put `addrs` on the host's loopback (IPv6 without duplicate address
/// detection, so they are usable at once).
fn on_loopback(host: &BackendHost, addrs: &[&str]) {
    for a in addrs {
        if a.contains(':') {
            host.ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        } else {
            host.ns
                .exec(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
    }
}

/// The sockets of a connection from `client:cport` to a service on
/// `vip:port`, established in the host's namespace: listener, client,
/// server. Kept open by the caller.
fn establish(
    host: &BackendHost,
    client: &str,
    cport: u16,
    vip: &str,
    port: u16,
) -> (TcpListener, socket2::Socket, std::net::TcpStream) {
    let vip: IpAddr = vip.parse().unwrap();
    let client: IpAddr = client.parse().unwrap();
    host.ns.enter(|| {
        let listener = TcpListener::bind(SocketAddr::new(vip, port)).expect("listen");
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(SocketAddr::new(client, 0)),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(client, cport).into())
            .expect("bind");
        socket
            .connect(&SocketAddr::new(vip, port).into())
            .expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (listener, socket, server)
    })
}

#[test]
fn golden_decap_second_hop_with_a_local_socket_stays_here() {
    let mut host = BackendHost::new();
    // The service and a connection of the client's, established in the
    // host's namespace (client and VIP on its loopback).
    on_loopback(&host, &[VIP_V4, CLIENT_V4]);
    let _sockets = establish(&host, CLIENT_V4, 40100, VIP_V4, 8080);
    let ours = tcp4(CLIENT_V4, 40100, VIP_V4, 8080, Tcp::Ack, b"data");
    host.expect_kept(&ours, "kept");
    // Another port of the same client: only the listener, which would
    // answer with a reset. Sent on.
    let theirs = tcp4(CLIENT_V4, 40101, VIP_V4, 8080, Tcp::Ack, b"data");
    host.expect_sent_on(&theirs, "sent on");
    // A hop that is no peer is dropped before the socket lookup: even
    // the flow whose socket is here.
    let f = gue_frame(OUTER_SRC_V4, BACKEND_V4[0], &ours, BACKEND_V4[2]);
    let (out, moved) = host.run(&f);
    assert_eq!(
        out,
        Outcome {
            action: XDP_DROP,
            data: f
        }
    );
    assert_eq!(moved, vec![(DecapReason::DropSecondHopNotPeer, 1)]);
}

/// The IPv6 socket lookup: a packet of an established IPv6 connection
/// stays; one of a port with only the listener is sent on.
#[test]
fn golden_decap_ipv6_second_hop_with_a_local_socket_stays_here() {
    let mut host = BackendHost::new();
    on_loopback(&host, &[VIP_V6, CLIENT_V6]);
    let _sockets = establish(&host, CLIENT_V6, 40100, VIP_V6, 8080);
    let ours = tcp6(CLIENT_V6, 40100, VIP_V6, 8080, Tcp::Ack, b"data");
    host.expect_kept(&ours, "kept");
    let theirs = tcp6(CLIENT_V6, 40101, VIP_V6, 8080, Tcp::Ack, b"data");
    host.expect_sent_on(&theirs, "sent on");
}

/// An IPv4 TCP segment from `src:sport` to `dst:dport` with sequence and
/// acknowledgment numbers of our choosing.
fn segment(src: &str, sport: u16, dst: &str, dport: u16, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, seq, 64240);
    match ack {
        Some(n) => {
            h.ack = true;
            h.acknowledgment_number = n;
        }
        None => h.syn = true,
    }
    let mut out = Vec::new();
    PacketBuilder::ipv4(v4(src), v4(dst), 64)
        .tcp_header(h)
        .write(&mut out, b"")
        .expect("build");
    out
}

/// A listener that answers with SYN cookies keeps no request socket: the
/// handshake's ACK stays here because it carries a valid cookie (from a
/// real SYN-ACK of this host's kernel), and one with a wrong cookie is
/// sent on.
#[test]
fn golden_decap_second_hop_with_a_valid_syn_cookie_stays_here() {
    let mut host = BackendHost::new();
    host.ns
        .exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syncookies=2"]);
    on_loopback(&host, &[VIP_V4, CLIENT_V4]);
    let (cport, port, isn) = (40200, 8081, 7000);
    // The same listener throughout: the kernel checks a cookie only on a
    // listener that sent cookies recently.
    let (_listener, cookie) = host.ns.enter(|| {
        let listener =
            TcpListener::bind(SocketAddr::new(VIP_V4.parse().unwrap(), port)).expect("listen");
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::TCP),
        )
        .expect("raw socket");
        raw.set_header_included_v4(true).expect("IP_HDRINCL");
        raw.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let vip = SocketAddr::new(VIP_V4.parse().unwrap(), 0);
        let syn = segment(CLIENT_V4, cport, VIP_V4, port, isn, None);
        raw.send_to(&syn, &vip.into()).expect("send the SYN");
        // The raw socket sees every TCP segment this host takes in, our SYN
        // too: wait for the listener's SYN-ACK.
        let mut buf = [0u8; 1500];
        loop {
            let n = std::io::Read::read(&mut &raw, &mut buf).expect("a SYN-ACK within 2 s");
            let (ip, tcp) = buf[..n].split_at(20);
            let from_listener = ip[12..16] == v4(VIP_V4)
                && u16::from_be_bytes([tcp[0], tcp[1]]) == port
                && u16::from_be_bytes([tcp[2], tcp[3]]) == cport;
            if from_listener && tcp[13] & 0x12 == 0x12 {
                assert_eq!(
                    u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
                    isn + 1,
                    "a SYN-ACK of our SYN"
                );
                break (
                    listener,
                    u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                );
            }
        }
    });
    let ack = segment(CLIENT_V4, cport, VIP_V4, port, isn + 1, Some(cookie + 1));
    host.expect_kept(&ack, "kept");
    // A cookie from another time (its top byte counts minutes): the same
    // hash bits, too old to be valid.
    let stale = (cookie ^ 0x8000_0000).wrapping_add(1);
    let forged = segment(CLIENT_V4, cport, VIP_V4, port, isn + 1, Some(stale));
    host.expect_sent_on(&forged, "a wrong cookie");
}

/// A connection this host closed first sits in time-wait: a late segment
/// of it stays here (the kernel answers it as time-wait says), not sent
/// on, with no listener left.
#[test]
fn golden_decap_second_hop_of_a_time_wait_connection_stays_here() {
    let mut host = BackendHost::new();
    on_loopback(&host, &[VIP_V4, CLIENT_V4]);
    let (listener, client, server) = establish(&host, CLIENT_V4, 40300, VIP_V4, 8082);
    drop(listener);
    // The server closes first, then the client: the server's end waits.
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let tw = host.ns.exec(&["ss", "-Htan", "state", "time-wait"]);
        if tw.contains(&format!("{VIP_V4}:8082")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no time-wait socket: {tw}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let late = tcp4(CLIENT_V4, 40300, VIP_V4, 8082, Tcp::Ack, b"late");
    host.expect_kept(&late, "kept");
}

/// GUE with a hop left comes only from a load balancer: a peer (or any
/// other host) cannot make this backend send packets on, nor have them
/// kept, whatever the hop. A peer's GUE with no hop left is taken
/// (`golden_decap_gue_without_a_hop_is_stripped_from_a_peer_and_from_the_lb`).
#[test]
fn golden_decap_gue_with_a_hop_left_from_a_peer_is_dropped() {
    let mut host = BackendHost::new();
    for (peer, ours, hop, inner) in [
        (
            BACKEND_V4[1],
            BACKEND_V4[0],
            BACKEND_V4[1],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
        (
            BACKEND_V6[1],
            BACKEND_V6[0],
            BACKEND_V6[1],
            tcp6(CLIENT_V6, 40000, VIP_V6, 80, Tcp::Ack, b"data"),
        ),
        (
            BACKEND_V4[1],
            BACKEND_V4[0],
            BACKEND_V4[2],
            tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data"),
        ),
    ] {
        let f = gue_frame(peer, ours, &inner, hop);
        let (out, moved) = host.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_DROP,
                data: f.clone(),
            },
            "from {peer} with hop {hop}"
        );
        assert_eq!(
            moved,
            vec![(DecapReason::DropUntrustedSource, 1)],
            "from {peer} with hop {hop}"
        );
    }
}

/// A connection whose SYN this node sees on a slot that moved recently
/// opens on the owner now, which holds it: the SYN is pinned there on
/// probation (a retransmitted SYN too) and its ACK promotes the flow, so
/// every later packet is a table hit in plain IP-in-IP. Left out of the
/// tables, the connection would travel with a hop for the slot's whole
/// window, and a further move of the slot would send it to backends that
/// never had it.
#[test]
fn golden_a_connection_opened_on_a_moved_slot_is_entered_at_its_ack_and_takes_no_hop() {
    let (mut lb, key, _) = moved_vip(VIP_V4, [BACKEND_V4[0], BACKEND_V4[1]]);
    let syn = tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Syn, b"");
    let owner = BACKEND_V4[lb.ring_backend(&key, &flow_of(&syn)) as usize];
    for attempt in ["SYN", "retransmitted SYN"] {
        let (out, moved) = lb.run_counted(&to_lb(&syn));
        assert_eq!(out.data, tunnelled(&syn, owner), "{attempt}");
        assert!(
            moved.contains(&(Reason::ConnProbation, 1)),
            "{attempt}: {moved:?}"
        );
    }
    assert_eq!(lb.maps.probation_count(usize::MAX), 1);
    let ack = tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Ack, b"");
    let (out, moved) = lb.run_counted(&to_lb(&ack));
    assert_eq!(
        out.data,
        tunnelled(&ack, owner),
        "the ACK: plain, to the SYN's backend"
    );
    assert!(moved.contains(&(Reason::ConnPromoted, 1)), "{moved:?}");
    let data = tcp4(
        CLIENT_V4,
        40010,
        VIP_V4,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let (out, moved) = lb.run_counted(&to_lb(&data));
    assert_eq!(out.data, tunnelled(&data, owner));
    assert_eq!(moved, vec![(Reason::Tx, 1), (Reason::ConnHit, 1)]);
    assert_eq!(lb.count(Reason::SecondChance), 0);
    assert_eq!(lb.maps.conn_count(usize::MAX), 1);
    // A flow whose SYN this node did not see still takes the hop.
    let unseen = tcp4(CLIENT_V4, 40011, VIP_V4, 80, Tcp::Ack, b"x");
    lb.run(&to_lb(&unseen));
    assert_eq!(lb.count(Reason::SecondChance), 1);
}

/// A peer inside an allowed source prefix is still only a peer: it may
/// hand on what an LB node sent it (no hop left), never start a second
/// hop. With `--allow-any-source` anyone may tunnel, but no source that is
/// not listed may start a second hop through this backend to its peers.
#[test]
fn golden_decap_no_peer_inside_an_allowed_prefix_and_no_stranger_starts_a_second_hop() {
    let mut host = BackendHost::new();
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"data");
    let drop_untrusted = |host: &mut BackendHost, f: Vec<u8>, what: &str| {
        let (out, moved) = host.run(&f);
        assert_eq!(
            out,
            Outcome {
                action: XDP_DROP,
                data: f
            },
            "{what}"
        );
        assert_eq!(moved, vec![(DecapReason::DropUntrustedSource, 1)], "{what}");
    };
    // The LB's prefix takes in the peers too.
    host.lb
        .maps
        .set_decap_sources(&DecapSources::Only(vec![
            parse_source("198.51.100.0/24").unwrap(),
        ]))
        .unwrap();
    drop_untrusted(
        &mut host,
        gue_frame(BACKEND_V4[1], BACKEND_V4[0], &inner, BACKEND_V4[1]),
        "a peer inside the allowed prefix, with a hop",
    );
    let (out, _) = host.run(&gue_frame(BACKEND_V4[1], BACKEND_V4[0], &inner, ""));
    assert_eq!(out.data, stripped(&inner), "the same peer, no hop left");

    host.lb.maps.set_decap_sources(&DecapSources::Any).unwrap();
    let stranger = "203.0.113.99";
    drop_untrusted(
        &mut host,
        gue_frame(stranger, BACKEND_V4[0], &inner, BACKEND_V4[1]),
        "any source, with a hop",
    );
    let (out, moved) = host.run(&gue_frame(stranger, BACKEND_V4[0], &inner, ""));
    assert_eq!(out.data, stripped(&inner), "any source, no hop left");
    assert_eq!(moved, vec![(DecapReason::SecondChanceReceived, 1)]);
}

/// A too-big with a hop is about this host's reply: it stays when the
/// connection it quotes (reversed: the client is the peer) is here, and
/// is sent on, its hop list emptied, when only the listener is.
#[test]
fn golden_decap_too_big_with_a_hop_stays_with_its_connection_else_is_sent_on() {
    for (vip, client, lb_src, ours, hop) in [
        (
            VIP_V4,
            CLIENT_V4,
            OUTER_SRC_V4,
            BACKEND_V4[0],
            BACKEND_V4[1],
        ),
        (
            VIP_V6,
            CLIENT_V6,
            OUTER_SRC_V6,
            BACKEND_V6[0],
            BACKEND_V6[1],
        ),
    ] {
        let mut host = BackendHost::new();
        on_loopback(&host, &[vip, client]);
        let _sockets = establish(&host, client, 40400, vip, 8083);
        let icmp = too_big_about(client, 40400, vip, 8083);
        host.expect_kept(&icmp, &format!("{vip}: the connection is here"));

        let theirs = too_big_about(client, 40401, vip, 8083);
        host.expect_sent_on_via(
            (lb_src, ours, hop),
            &theirs,
            &format!("{vip}: only the listener"),
        );
    }
}

/// The lookup is of the connection seen from this host: a too-big about
/// a connection of which only the server's end is left (time-wait, the
/// client's end gone) stays. Looked up the way the quote reads (VIP as
/// the peer), it would find nothing and be sent on.
#[test]
fn golden_decap_too_big_about_a_time_wait_connection_stays_here() {
    let mut host = BackendHost::new();
    on_loopback(&host, &[VIP_V4, CLIENT_V4]);
    let (listener, client, server) = establish(&host, CLIENT_V4, 40500, VIP_V4, 8084);
    drop(listener);
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = host.ns.exec(&["ss", "-Htan"]);
        let ends: Vec<&str> = left.lines().filter(|l| l.contains(":40500")).collect();
        if let [end] = ends[..]
            && end.starts_with("TIME-WAIT")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lone time-wait socket: {left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let icmp = too_big_about(CLIENT_V4, 40500, VIP_V4, 8084);
    host.expect_kept(&icmp, "kept");
}

/// What is no too-big about a TCP segment, or whose quote cannot be read,
/// stays as it would without a hop: other ICMP, a quote cut before the
/// ports, a quote of UDP, a quoted IPv6 header followed by extension
/// headers.
#[test]
fn golden_decap_other_icmp_and_unreadable_quotes_with_a_hop_stay() {
    let mut host = BackendHost::new();
    let reply4 = tcp4(VIP_V4, 8085, CLIENT_V4, 40600, Tcp::Ack, &[0x55; 100]);
    let mut unreachable = frag_needed(&reply4[..28]);
    // Port unreachable (code 3) instead of fragmentation needed; the
    // checksum is not what lb_decap reads.
    unreachable[20 + 1] = 3;
    let reply6 = tcp6(VIP_V6, 8085, CLIENT_V6, 40600, Tcp::Ack, &[0x66; 100]);
    let (dest_opts_type, dest_opts_body) = dest_opts();
    let with_opts = with_ext_headers(&reply6, &[(dest_opts_type, dest_opts_body)]);
    let cases = [
        ("ICMP port unreachable", unreachable),
        ("quote cut before the ports", frag_needed(&reply4[..22])),
        (
            "quote of UDP",
            frag_needed(&udp4(VIP_V4, 53, CLIENT_V4, 40600, b"answer")[..28]),
        ),
        ("quoted IPv6 extension headers", packet_too_big(&with_opts)),
    ];
    for (what, icmp) in cases {
        host.expect_kept(&icmp, what);
    }
}
