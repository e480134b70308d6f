//! Golden packets for every forwarding path and for how flows keep (or
//! change) their backend: exact verdicts, whole output frames, counters.

use lb_common::{Reason, flow::*, maps::*};
use lb_tests::{
    harness::*,
    netns::{Netns, veth},
    packets::*,
};

fn three_v4() -> Vec<BackendSpec> {
    (0..3)
        .map(|i| BackendSpec::new(i as u32 + 1, BACKEND_V4[i]))
        .collect()
}

fn three_v6() -> Vec<BackendSpec> {
    (0..3)
        .map(|i| BackendSpec::new(i as u32 + 1, BACKEND_V6[i]))
        .collect()
}

fn addr_of(backends: &[BackendSpec], id: u32) -> String {
    backends
        .iter()
        .find(|b| b.id == id)
        .expect("backend id")
        .addr
        .to_string()
}

#[test]
fn golden_ipv4_udp_to_vip_is_encapsulated_ipip() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let inner = udp4(CLIENT_V4, 5353, VIP_V4, 53, b"query");
    let out = lb.run(&to_lb(&inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: tunnelled(&inner, BACKEND_V4[0])
        }
    );
    assert_eq!(lb.count(Reason::NewFlow), 1);
    assert_eq!(lb.count(Reason::ConnMiss), 1);
}

#[test]
fn golden_ipv6_tcp_syn_to_vip_is_encapsulated_ip6ip6_with_flow_label() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V6[0])],
    );
    let inner = tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: tunnelled(&inner, BACKEND_V6[0])
        }
    );
}

#[test]
fn golden_ipv6_udp_to_vip_is_encapsulated_ip6ip6() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V6[1])],
    );
    let inner = udp6(CLIENT_V6, 50000, VIP_V6, 443, b"quic initial");
    let out = lb.run(&to_lb(&inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: tunnelled(&inner, BACKEND_V6[1])
        }
    );
}

#[test]
fn golden_ipv4_vip_with_ipv6_backend_is_ipv4_in_ipv6() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V6[0])],
    );
    let inner = tcp4(CLIENT_V4, 40001, VIP_V4, 80, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    let outer = outer_v6(OUTER_SRC_V6, BACKEND_V6[0], &inner, &flow_of(&inner));
    assert_eq!(outer[6], PROTO_IPIP, "next header 4: IPv4 inside");
    let expected = frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV6, &cat(&outer, &inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: expected
        }
    );
}

#[test]
fn golden_ipv6_vip_with_ipv4_backend_is_ipv6_in_ipv4() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[2])],
    );
    let inner = tcp6(CLIENT_V6, 40002, VIP_V6, 443, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    let outer = outer_v4(OUTER_SRC_V4, BACKEND_V4[2], &inner);
    assert_eq!(outer[9], PROTO_IPV6, "protocol 41: IPv6 inside");
    let expected = frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV4, &cat(&outer, &inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: expected
        }
    );
}

#[test]
fn golden_l2_dsr_ipv4_tcp_rewrites_only_the_destination_mac() {
    let mut lb = Lb::new();
    let backend = BackendSpec::new(1, BACKEND_V4[0]).with_mac(backend_mac(1));
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), VIP_F_L2_DSR, &[backend]);
    let inner = tcp4(CLIENT_V4, 40003, VIP_V4, 80, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: frame(backend_mac(1), LB_MAC, None, ETH_IPV4, &inner)
        }
    );
}

/// Without the FIB an L2 DSR backend needs its own MAC (validation asks
/// for it): the gateway is a router, which would send the frame, still
/// addressed to the VIP, back to us.
#[test]
fn golden_l2_dsr_without_backend_mac_or_fib_never_goes_to_the_gateway() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let frame_in = to_lb(&tcp4(CLIENT_V4, 40015, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(
        (lb.run(&frame_in), lb.count(Reason::DropNoRoute)),
        (
            Outcome {
                action: XDP_DROP,
                data: frame_in
            },
            1
        )
    );
}

#[test]
fn golden_l2_dsr_ipv6_udp_rewrites_only_the_destination_mac() {
    let mut lb = Lb::new();
    let backend = BackendSpec::new(1, BACKEND_V6[0]).with_mac(backend_mac(2));
    lb.add_vip(vip_key(VIP_V6, 53, PROTO_UDP), VIP_F_L2_DSR, &[backend]);
    let inner = udp6(CLIENT_V6, 5300, VIP_V6, 53, b"q");
    let out = lb.run(&to_lb(&inner));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: frame(backend_mac(2), LB_MAC, None, ETH_IPV6, &inner)
        }
    );
}

#[test]
fn golden_dscp_and_ecn_are_copied_to_the_outer_ipv4_header() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    // DSCP 46 (EF), ECN ECT(0).
    let inner = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 46, 2), 5353, 53, b"voice");
    let out = lb.run(&to_lb(&inner));
    let expected = tunnelled(&inner, BACKEND_V4[0]);
    assert_eq!(expected[15], (46 << 2) | 2);
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: expected
        }
    );
}

#[test]
fn golden_traffic_class_is_copied_to_the_outer_ipv6_header() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V6, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V6[0])],
    );
    let inner = udp6_tc(CLIENT_V6, 5353, VIP_V6, 53, 0xb9, b"tc");
    let out = lb.run(&to_lb(&inner));
    let expected = tunnelled(&inner, BACKEND_V6[0]);
    assert_eq!((expected[14] & 0x0f, expected[15] >> 4), (0x0b, 0x09));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: expected
        }
    );
}

#[test]
fn golden_backend_mac_overrides_the_gateway_in_tunnel_mode() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0]).with_mac(backend_mac(9))],
    );
    let inner = tcp4(CLIENT_V4, 40004, VIP_V4, 80, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    let expected = frame(
        backend_mac(9),
        LB_MAC,
        None,
        ETH_IPV4,
        &cat(&outer_v4(OUTER_SRC_V4, BACKEND_V4[0], &inner), &inner),
    );
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: expected
        }
    );
}

#[test]
fn golden_configured_egress_interface_redirects_through_the_devmap() {
    let ns = Netns::new("egress");
    let peer = Netns::new("egresspeer");
    veth(&ns, "in0", &peer, "pin0");
    veth(&ns, "out0", &peer, "pout0");
    let (ingress, egress) = (ns.ifindex("in0"), ns.ifindex("out0"));
    // The frame leaves out0, so it carries out0's MAC as its source.
    const OUT0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0e];
    let mut lb = Lb::new();
    lb.maps
        .set_config(&LbConfig {
            egress_ifindex: egress,
            egress_mac: OUT0_MAC,
            ..Lb::standard_config()
        })
        .unwrap();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let inner = tcp4(CLIENT_V4, 40005, VIP_V4, 80, Tcp::Syn, b"");
    // The egress interface is not allowed yet: dropped untouched.
    let out = ns.enter(|| lb.run_on(ingress, &to_lb(&inner)));
    assert_eq!(
        out,
        Outcome {
            action: XDP_DROP,
            data: to_lb(&inner)
        }
    );
    assert_eq!(lb.count(Reason::DropNoTxPort), 1);
    ns.enter(|| lb.maps.add_tx_port(egress, OUT0_MAC)).unwrap();
    let out = ns.enter(|| lb.run_on(ingress, &to_lb(&inner)));
    let mut want = tunnelled(&inner, BACKEND_V4[0]);
    want[6..12].copy_from_slice(&OUT0_MAC);
    assert_eq!(
        out,
        Outcome {
            action: XDP_REDIRECT,
            data: want
        }
    );
    assert_eq!(lb.count(Reason::Redirect), 1);
}

#[test]
fn golden_no_gateway_mac_and_no_fib_drops_no_route_untouched() {
    let mut lb = Lb::new();
    lb.maps
        .set_config(&LbConfig {
            gateway_mac: [0; 6],
            ..Lb::standard_config()
        })
        .unwrap();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let frame_in = to_lb(&tcp4(CLIENT_V4, 40006, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&frame_in),
        Outcome {
            action: XDP_DROP,
            data: frame_in
        }
    );
    assert_eq!(lb.count(Reason::DropNoRoute), 1);
    assert_eq!(lb.maps.vip_stats(0).unwrap().dropped, 1);
}

#[test]
fn golden_vip_and_backend_counters_count_packets_bytes_and_new_flows() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(5, BACKEND_V4[0])],
    );
    let syn = tcp4(CLIENT_V4, 40009, VIP_V4, 80, Tcp::Syn, b"");
    let ack = tcp4(
        CLIENT_V4,
        40009,
        VIP_V4,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    for f in [&syn, &ack, &ack] {
        assert_eq!(lb.run(&to_lb(f)).action, XDP_TX);
    }
    let want = FlowStats {
        packets: 3,
        bytes: (syn.len() + 2 * ack.len()) as u64,
        new_flows: 1,
        dropped: 0,
    };
    assert_eq!(lb.maps.vip_stats(0).unwrap(), want);
    assert_eq!(lb.maps.backend_stats(5).unwrap(), want);
    // SYN: miss; handshake ACK: miss, on probation; request: promoted.
    assert_eq!(
        (
            lb.count(Reason::ConnMiss),
            lb.count(Reason::ConnProbation),
            lb.count(Reason::ConnPromoted),
            lb.count(Reason::ConnHit)
        ),
        (2, 1, 1, 0)
    );
}

/// A client port whose ring answer changes when `removed` leaves.
fn port_that_moves(
    lb: &mut Lb,
    key: &VipKey,
    make: impl Fn(u16) -> Vec<u8>,
    backends: &[BackendSpec],
    removed: u32,
) -> (u16, u32, u32) {
    let remaining: Vec<BackendSpec> = backends
        .iter()
        .copied()
        .filter(|b| b.id != removed)
        .collect();
    for port in 20000..30000 {
        let flow = flow_of(&make(port));
        lb.set_backends(key, backends);
        let before = lb.ring_backend(key, &flow);
        if before != removed {
            continue;
        }
        lb.set_backends(key, &remaining);
        let after = lb.ring_backend(key, &flow);
        lb.set_backends(key, backends);
        return (port, before, after);
    }
    panic!("no client port maps to backend {removed}");
}

#[test]
fn golden_established_ipv4_tcp_flow_keeps_its_backend_after_a_table_change() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"data");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 2);
    let ack = make(port);
    // Established: the handshake's ACK puts the flow on probation, the
    // request moves it into the connection table.
    for _ in 0..2 {
        assert_eq!(
            lb.run(&to_lb(&ack)).data,
            tunnelled(&ack, &addr_of(&backends, owner))
        );
    }
    assert_eq!(
        lb.maps.conn(&flow_of(&ack)).unwrap().unwrap().backend_id,
        owner
    );
    // The backend leaves the ring (drained), so the ring now says `other`...
    let mut drained = backends.clone();
    drained[1].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    assert_eq!(lb.ring_backend(&key, &flow_of(&ack)), other);
    // ...but the flow stays.
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, &addr_of(&backends, owner))
        }
    );
    assert_eq!(lb.count(Reason::ConnHit), 1);
}

#[test]
fn golden_established_ipv6_tcp_flow_keeps_its_backend_after_a_table_change() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 443, PROTO_TCP);
    let backends = three_v6();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp6(CLIENT_V6, p, VIP_V6, 443, Tcp::Ack, b"tls");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 3);
    let ack = make(port);
    lb.run(&to_lb(&ack));
    lb.run(&to_lb(&ack));
    assert_eq!(
        lb.maps.conn(&flow_of(&ack)).unwrap().unwrap().backend_id,
        owner
    );
    let mut two = backends.clone();
    two.truncate(2);
    lb.set_backends(&key, &two);
    assert_eq!(lb.ring_backend(&key, &flow_of(&ack)), other);
    // Backend 3 is still configured (just not in the ring): flow kept.
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, &addr_of(&backends, owner))
        }
    );
}

#[test]
fn golden_established_udp_flow_keeps_its_backend_after_a_table_change() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 443, PROTO_UDP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| udp4(CLIENT_V4, p, VIP_V4, 443, b"quic");
    let (port, owner, _) = port_that_moves(&mut lb, &key, make, &backends, 1);
    let dgram = make(port);
    lb.run(&to_lb(&dgram));
    assert_eq!(
        lb.maps.conn(&flow_of(&dgram)).unwrap(),
        None,
        "the first datagram puts the flow on probation only"
    );
    lb.run(&to_lb(&dgram));
    assert_eq!(
        lb.maps.conn(&flow_of(&dgram)).unwrap().unwrap().backend_id,
        owner,
        "the second datagram enters it"
    );
    let mut drained = backends.clone();
    drained[0].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    assert_eq!(
        lb.run(&to_lb(&dgram)).data,
        tunnelled(&dgram, &addr_of(&backends, owner))
    );
}

#[test]
fn golden_tcp_syn_is_not_entered_its_ack_goes_on_probation_and_the_request_promotes_it() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let syn = tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Syn, b"");
    let ack = tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Ack, b"");
    let request = tcp4(
        CLIENT_V4,
        40010,
        VIP_V4,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let flow = flow_of(&syn);
    let owner = lb.ring_backend(&key, &flow);
    let to_owner = |p: &[u8]| Outcome {
        action: XDP_TX,
        data: tunnelled(p, &addr_of(&backends, owner)),
    };
    assert_eq!(lb.run(&to_lb(&syn)), to_owner(&syn));
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), None);
    assert_eq!(
        (lb.count(Reason::SynNotTracked), lb.count(Reason::NewFlow)),
        (1, 1)
    );
    // The handshake's ACK: on probation, not in the connection table.
    assert_eq!(lb.run(&to_lb(&ack)), to_owner(&ack));
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
    let waiting = lb
        .maps
        .probation_entry(&flow)
        .unwrap()
        .expect("on probation");
    assert_eq!((waiting.backend_id, waiting.vip_id), (owner, 0));
    assert_eq!(lb.count(Reason::ConnProbation), 1);
    // The request: promoted, same backend, off probation.
    assert_eq!(lb.run(&to_lb(&request)), to_owner(&request));
    let entry = lb.maps.conn(&flow).unwrap().expect("promoted");
    assert_eq!((entry.backend_id, entry.vip_id), (owner, 0));
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), None);
    assert_eq!(
        (
            lb.count(Reason::ConnMiss),
            lb.count(Reason::ConnPromoted),
            lb.count(Reason::ConnHit),
            lb.count(Reason::NewFlow)
        ),
        (2, 1, 0, 1),
        "the ACK and the request are not new flows"
    );
    assert_eq!(lb.run(&to_lb(&request)), to_owner(&request));
    assert_eq!(lb.count(Reason::ConnHit), 1);
}

#[test]
fn golden_tcp_flow_counts_opened_at_promotion_and_closed_once_at_its_first_fin_or_rst() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let packet = |flags, payload: &[u8]| tcp4(CLIENT_V4, 40020, VIP_V4, 80, flags, payload);
    let flow = flow_of(&packet(Tcp::Syn, b""));
    let owner = lb.ring_backend(&key, &flow);
    let events = |lb: &Lb| {
        let e = lb.maps.backend_flows(owner).unwrap();
        (e.opened, e.closed)
    };
    let closed = |lb: &Lb| lb.maps.conn(&flow).unwrap().expect("entry").closed();
    let to_owner = |p: &[u8]| Outcome {
        action: XDP_TX,
        data: tunnelled(p, &addr_of(&backends, owner)),
    };
    for p in [packet(Tcp::Syn, b""), packet(Tcp::Ack, b"")] {
        assert_eq!(lb.run(&to_lb(&p)), to_owner(&p));
    }
    assert_eq!(events(&lb), (0, 0), "not in the connection table yet");
    let request = packet(Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(lb.run(&to_lb(&request)), to_owner(&request));
    assert_eq!(
        (events(&lb), closed(&lb)),
        ((1, 0), false),
        "promoted: open"
    );
    // The client's FIN, and its retransmission: one close, the entry kept
    // (and its mark) for the flow's last packets.
    let fin = packet(Tcp::FinAck, b"");
    for _ in 0..2 {
        assert_eq!(lb.run(&to_lb(&fin)), to_owner(&fin));
        assert_eq!((events(&lb), closed(&lb)), ((1, 1), true));
    }
    let last_ack = packet(Tcp::Ack, b"");
    assert_eq!(lb.run(&to_lb(&last_ack)), to_owner(&last_ack));
    assert_eq!((events(&lb), closed(&lb)), ((1, 1), true));
    let entry = lb.maps.conn(&flow).unwrap().expect("entry");
    assert_eq!((entry.backend_id, entry.vip_id), (owner, 0));
    // A new connection on the same 5-tuple opens the entry again; its RST
    // closes it again.
    let syn = packet(Tcp::Syn, b"");
    assert_eq!(lb.run(&to_lb(&syn)), to_owner(&syn));
    assert_eq!((events(&lb), closed(&lb)), ((2, 1), false));
    let rst = packet(Tcp::RstAck, b"");
    assert_eq!(lb.run(&to_lb(&rst)), to_owner(&rst));
    assert_eq!((events(&lb), closed(&lb)), ((2, 2), true));
    for b in backends.iter().filter(|b| b.id != owner) {
        assert_eq!(lb.maps.backend_flows(b.id).unwrap(), FlowEvents::default());
    }
}

#[test]
fn golden_udp_flow_counts_opened_at_promotion_and_never_closed() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let dgram = udp4(CLIENT_V4, 5300, VIP_V4, 53, b"query");
    let owner = lb.ring_backend(&key, &flow_of(&dgram));
    for _ in 0..3 {
        lb.run(&to_lb(&dgram));
    }
    let events = lb.maps.backend_flows(owner).unwrap();
    assert_eq!((events.opened, events.closed), (1, 0));
}

#[test]
fn golden_first_udp_datagram_goes_on_probation_and_the_second_promotes_it() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    let backends = three_v6();
    lb.add_vip(key, 0, &backends);
    let dgram = udp6(CLIENT_V6, 40011, VIP_V6, 53, b"query");
    let flow = flow_of(&dgram);
    let owner = lb.ring_backend(&key, &flow);
    let expected = Outcome {
        action: XDP_TX,
        data: tunnelled(&dgram, &addr_of(&backends, owner)),
    };
    assert_eq!(lb.run(&to_lb(&dgram)), expected);
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
    assert_eq!(
        lb.maps
            .probation_entry(&flow)
            .unwrap()
            .map(|e| e.backend_id),
        Some(owner)
    );
    assert_eq!(lb.run(&to_lb(&dgram)), expected);
    assert_eq!(
        lb.maps.conn(&flow).unwrap().map(|e| e.backend_id),
        Some(owner)
    );
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), None);
    assert_eq!(
        (
            lb.count(Reason::ConnMiss),
            lb.count(Reason::ConnProbation),
            lb.count(Reason::ConnPromoted),
            lb.count(Reason::NewFlow)
        ),
        (1, 1, 1, 1),
        "one new flow: the second datagram is not"
    );
}

#[test]
fn golden_flow_on_probation_keeps_its_backend_after_a_table_change() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 2);
    let ack = make(port);
    assert_eq!(
        lb.run(&to_lb(&ack)).data,
        tunnelled(&ack, &addr_of(&backends, owner))
    );
    // Its backend drains between the handshake's ACK and the request: the
    // request follows the probation entry, and is promoted there.
    let mut drained = backends.clone();
    drained[1].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    assert_eq!(lb.ring_backend(&key, &flow_of(&ack)), other);
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, &addr_of(&backends, owner))
        }
    );
    assert_eq!(
        lb.maps.conn(&flow_of(&ack)).unwrap().unwrap().backend_id,
        owner
    );
}

/// A limit that never has credit: every promotion is deferred.
const NO_PROMOTIONS: PromotionLimit = PromotionLimit {
    interval_ns: 1_000_000_000,
    burst_ns: 0,
};

#[test]
fn golden_promotion_over_the_limit_is_deferred_and_the_flow_stays_pinned_on_probation() {
    let mut lb = Lb::new();
    lb.maps.set_promotion_limit(&NO_PROMOTIONS).unwrap();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 2);
    let ack = make(port);
    let flow = flow_of(&ack);
    let to_owner = Outcome {
        action: XDP_TX,
        data: tunnelled(&ack, &addr_of(&backends, owner)),
    };
    assert_eq!(lb.run(&to_lb(&ack)), to_owner);
    let mut drained = backends.clone();
    drained[1].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    assert_eq!(lb.ring_backend(&key, &flow), other);
    // Second and third packets: no credit, so not promoted; they follow
    // the probation entry, not the ring.
    for deferred in 1..=2 {
        assert_eq!(lb.run(&to_lb(&ack)), to_owner);
        assert_eq!(lb.maps.conn(&flow).unwrap(), None);
        assert_eq!(
            lb.maps
                .probation_entry(&flow)
                .unwrap()
                .map(|e| e.backend_id),
            Some(owner)
        );
        assert_eq!(
            (
                lb.count(Reason::ConnPromotionDeferred),
                lb.count(Reason::ConnPromoted),
                lb.count(Reason::ConnRescheduled),
            ),
            (deferred, 0, 0)
        );
    }
    // With credit again, the next packet promotes it, to the same backend.
    lb.maps
        .set_promotion_limit(&PromotionLimit::default())
        .unwrap();
    assert_eq!(lb.run(&to_lb(&ack)), to_owner);
    assert_eq!(
        lb.maps.conn(&flow).unwrap().map(|e| e.backend_id),
        Some(owner)
    );
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), None);
    assert_eq!(lb.count(Reason::ConnPromoted), 1);
}

/// Keep the calling thread on the CPU it runs on: the promotion credit is
/// per CPU, and BPF_PROG_TEST_RUN runs the program on the caller's CPU.
fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on a zeroed, then filled, cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn golden_promotion_credit_is_earned_back_with_time() {
    stay_on_this_cpu();
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    lb.add_vip(key, 0, &three_v4());
    let a = to_lb(&udp4(CLIENT_V4, 40020, VIP_V4, 53, b"q"));
    let b = to_lb(&udp4(CLIENT_V4, 40021, VIP_V4, 53, b"q"));
    // One promotion's credit, and the next only after ten seconds.
    lb.maps
        .set_promotion_limit(&PromotionLimit {
            interval_ns: 10_000_000_000,
            burst_ns: 10_000_000_000,
        })
        .unwrap();
    for p in [&a, &a, &b, &b] {
        assert_eq!(lb.run(p).action, XDP_TX);
    }
    assert_eq!(
        (
            lb.count(Reason::ConnPromoted),
            lb.count(Reason::ConnPromotionDeferred)
        ),
        (1, 1)
    );
    // A promotion now costs 100 ms of credit: 300 ms later there is some.
    lb.maps
        .set_promotion_limit(&PromotionLimit {
            interval_ns: 100_000_000,
            burst_ns: 1_000_000_000,
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(lb.run(&b).action, XDP_TX);
    assert_eq!(lb.count(Reason::ConnPromoted), 2);
    assert_eq!(lb.maps.conn_count(usize::MAX), 2);
}

#[test]
fn golden_deferred_flow_whose_backend_goes_down_is_pinned_to_its_new_backend() {
    let mut lb = Lb::new();
    lb.maps.set_promotion_limit(&NO_PROMOTIONS).unwrap();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| udp4(CLIENT_V4, p, VIP_V4, 53, b"q");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 2);
    let dgram = make(port);
    let flow = flow_of(&dgram);
    assert_eq!(
        lb.run(&to_lb(&dgram)).data,
        tunnelled(&dgram, &addr_of(&backends, owner))
    );
    let mut down = backends.clone();
    down[1].flags |= BACKEND_F_DOWN;
    lb.set_backends(&key, &down);
    let to_other = Outcome {
        action: XDP_TX,
        data: tunnelled(&dgram, &addr_of(&backends, other)),
    };
    // Rescheduled and deferred: the probation entry now names the new
    // backend, so later packets go there even if the ring moves again.
    assert_eq!(lb.run(&to_lb(&dgram)), to_other);
    assert_eq!(
        lb.maps
            .probation_entry(&flow)
            .unwrap()
            .map(|e| e.backend_id),
        Some(other)
    );
    assert_eq!(lb.count(Reason::ConnRescheduled), 1);
    // The new backend drains: the ring gives the flow to the last one, the
    // probation pin keeps it where it went.
    let mut other_drains = down.clone();
    for b in &mut other_drains {
        if b.id == other {
            b.flags |= BACKEND_F_DRAINING;
        }
    }
    lb.set_backends(&key, &other_drains);
    assert_ne!(lb.ring_backend(&key, &flow), other);
    assert_eq!(lb.run(&to_lb(&dgram)), to_other);
    assert_eq!(
        (
            lb.count(Reason::ConnRescheduled),
            lb.count(Reason::ConnPromotionDeferred),
            lb.maps.conn_count(usize::MAX)
        ),
        (1, 2, 0)
    );
}

#[test]
fn golden_flow_evicted_from_probation_is_still_balanced_by_the_ring() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let dgram = udp4(CLIENT_V4, 40012, VIP_V4, 53, b"query");
    let flow = flow_of(&dgram);
    let owner = lb.ring_backend(&key, &flow);
    let expected = Outcome {
        action: XDP_TX,
        data: tunnelled(&dgram, &addr_of(&backends, owner)),
    };
    assert_eq!(lb.run(&to_lb(&dgram)), expected);
    // One-packet flows from elsewhere, ten times the probation table.
    let cap = Lb::standard_sizes().probation_entries as u16;
    for i in 0..cap * 10 {
        let other = udp4("203.0.113.200", 1024 + i, VIP_V4, 53, b"x");
        assert_eq!(lb.run(&to_lb(&other)).action, XDP_TX);
    }
    assert_eq!(lb.maps.probation_entry(&flow).unwrap(), None, "evicted");
    assert_eq!(lb.maps.conn_count(usize::MAX), 0, "no flood packet entered");
    // Its next packet goes where the ring says, as its first did, and
    // puts it on probation again.
    assert_eq!(lb.run(&to_lb(&dgram)), expected);
    assert!(lb.maps.probation_entry(&flow).unwrap().is_some());
    assert_eq!(lb.maps.conn(&flow).unwrap(), None);
}

#[test]
fn golden_new_syn_on_the_five_tuple_of_a_flow_on_probation_takes_the_ring() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let ack = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &key, ack, &backends, 1);
    // One packet of an old flow: on probation with backend 1.
    assert_eq!(
        lb.run(&to_lb(&ack(port))).data,
        tunnelled(&ack(port), &addr_of(&backends, owner))
    );
    let mut drained = backends.clone();
    drained[0].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    // A new connection on the 5-tuple: neither the SYN nor its ACK goes to
    // the draining backend the probation entry names.
    let syn = tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Syn, b"");
    assert_eq!(
        lb.run(&to_lb(&syn)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&syn, &addr_of(&backends, other))
        }
    );
    assert_eq!(lb.maps.probation_entry(&flow_of(&syn)).unwrap(), None);
    assert_eq!(
        lb.run(&to_lb(&ack(port))).data,
        tunnelled(&ack(port), &addr_of(&backends, other))
    );
    assert_eq!(
        lb.maps
            .probation_entry(&flow_of(&syn))
            .unwrap()
            .map(|e| e.backend_id),
        Some(other)
    );
}

#[test]
fn golden_established_flow_moves_when_its_backend_is_marked_down() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &key, make, &backends, 2);
    let ack = make(port);
    assert_eq!(
        lb.run(&to_lb(&ack)).data,
        tunnelled(&ack, &addr_of(&backends, owner))
    );
    let mut down = backends.clone();
    down[1].flags |= BACKEND_F_DOWN;
    lb.set_backends(&key, &down);
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, &addr_of(&backends, other))
        }
    );
    assert_eq!(lb.count(Reason::ConnRescheduled), 1);
    assert_eq!(
        lb.maps.conn(&flow_of(&ack)).unwrap().unwrap().backend_id,
        other,
        "entry rewritten"
    );
}

#[test]
fn golden_removed_backend_flow_is_rescheduled_not_blackholed() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, _, other) = port_that_moves(&mut lb, &key, make, &backends, 3);
    let ack = make(port);
    lb.run(&to_lb(&ack));
    // Removal: out of the ring, entry cleared.
    lb.set_backends(&key, &backends[..2]);
    lb.maps.set_backend(3, &Backend::default()).unwrap();
    assert_eq!(
        lb.run(&to_lb(&ack)).data,
        tunnelled(&ack, &addr_of(&backends, other))
    );
    assert_eq!(lb.count(Reason::ConnRescheduled), 1);
}

#[test]
fn golden_affinity_sends_every_port_of_a_client_to_one_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, VIP_F_AFFINITY, &backends);
    let first = tcp4(CLIENT_V4, 1024, VIP_V4, 80, Tcp::Syn, b"");
    let owner = lb.ring_backend(&key, &flow_of(&first));
    for port in (1024..65000).step_by(997) {
        let syn = tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Syn, b"");
        assert_eq!(
            lb.run(&to_lb(&syn)).data,
            tunnelled(&syn, &addr_of(&backends, owner)),
            "port {port}"
        );
    }
}

#[test]
fn golden_without_affinity_one_clients_ports_spread_over_backends() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let mut reached = std::collections::BTreeSet::new();
    for port in (1024..65000).step_by(997) {
        let syn = tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Syn, b"");
        let want = lb.ring_backend(&key, &flow_of(&syn));
        assert_eq!(
            lb.run(&to_lb(&syn)).data,
            tunnelled(&syn, &addr_of(&backends, want))
        );
        reached.insert(want);
    }
    assert_eq!(reached.len(), 3);
}

#[test]
fn golden_portless_vip_serves_every_port_of_its_address() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 0, PROTO_UDP),
        VIP_F_PORTLESS,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    for port in [1, 53, 443, 65535] {
        let d = udp4(CLIENT_V4, 5000, VIP_V4, port, b"x");
        assert_eq!(
            lb.run(&to_lb(&d)),
            Outcome {
                action: XDP_TX,
                data: tunnelled(&d, BACKEND_V4[0])
            },
            "port {port}"
        );
    }
    // Same address, other protocol: not this VIP.
    let t = to_lb(&tcp4(CLIENT_V4, 5000, VIP_V4, 443, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&t),
        Outcome {
            action: XDP_PASS,
            data: t
        }
    );
}

#[test]
fn golden_portless_vip_is_not_looked_up_until_the_config_says_one_exists() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 0, PROTO_UDP),
        VIP_F_PORTLESS,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let d = to_lb(&udp4(CLIENT_V4, 5000, VIP_V4, 53, b"x"));
    assert_eq!(lb.run(&d).action, XDP_TX);
    // Without CFG_F_PORTLESS_VIPS the program saves the second lookup.
    let config = lb.maps.config().unwrap();
    lb.maps
        .set_config(&LbConfig {
            flags: config.flags & !CFG_F_PORTLESS_VIPS,
            ..config
        })
        .unwrap();
    assert_eq!(
        lb.run(&d),
        Outcome {
            action: XDP_PASS,
            data: d.clone()
        }
    );
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

#[test]
fn golden_port_zero_key_without_the_portless_flag_matches_nothing() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 0, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let f = to_lb(&udp4(CLIENT_V4, 5000, VIP_V4, 53, b"x"));
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_PASS,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

#[test]
fn golden_other_port_of_a_vip_address_passes_untouched() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let f = to_lb(&tcp4(CLIENT_V4, 40011, VIP_V4, 22, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_PASS,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::PassNonVip), 1);
}

#[test]
fn golden_ring_slot_of_a_backend_marked_down_drops_backend_down() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    lb.add_vip(key, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    // Marked down before the control plane rebuilt the ring.
    let mut down = BackendSpec::new(1, BACKEND_V4[0]);
    down.flags |= BACKEND_F_DOWN;
    lb.maps.set_backend(1, &down.entry()).unwrap();
    let f = to_lb(&tcp4(CLIENT_V4, 40012, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_DROP,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::DropBackendDown), 1);
    assert_eq!(lb.maps.vip_stats(0).unwrap().dropped, 1);
}

#[test]
fn golden_vip_without_backends_drops_no_backend() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V6, 443, PROTO_TCP), 0, &[]);
    let f = to_lb(&tcp6(CLIENT_V6, 40013, VIP_V6, 443, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_DROP,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::DropNoBackend), 1);
}

#[test]
fn golden_non_vip_ipv4_and_ipv6_pass_byte_identical() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    for f in [
        to_lb(&tcp4(CLIENT_V4, 40014, "198.51.100.99", 80, Tcp::Syn, b"")),
        to_lb(&udp6(CLIENT_V6, 40014, "2001:db8:100::99", 53, b"x")),
    ] {
        assert_eq!(
            lb.run(&f),
            Outcome {
                action: XDP_PASS,
                data: f
            }
        );
    }
    assert_eq!(lb.count(Reason::PassNonVip), 2);
}

#[test]
fn golden_arp_passes_untouched() {
    let mut lb = Lb::new();
    let mut arp = vec![0u8; 28];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    let f = frame([0xff; 6], ROUTER_MAC, None, 0x0806, &arp);
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_PASS,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::PassNotIp), 1);
}

#[test]
fn golden_unconfigured_program_passes_everything() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    lb.maps.set_config(&LbConfig::default()).unwrap();
    let f = to_lb(&tcp4(CLIENT_V4, 40015, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(
        lb.run(&f),
        Outcome {
            action: XDP_PASS,
            data: f
        }
    );
    assert_eq!(lb.count(Reason::PassNotConfigured), 1);
}

#[test]
fn golden_new_syn_on_an_old_five_tuple_does_not_follow_it_to_a_draining_backend() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = three_v4();
    lb.add_vip(key, 0, &backends);
    let ack = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &key, ack, &backends, 1);
    // An old connection on this 5-tuple, pinned to backend 1.
    lb.run(&to_lb(&ack(port)));
    let mut drained = backends.clone();
    drained[0].flags |= BACKEND_F_DRAINING;
    lb.set_backends(&key, &drained);
    // Its packets still go to backend 1 (established flows finish)...
    assert_eq!(
        lb.run(&to_lb(&ack(port))).data,
        tunnelled(&ack(port), &addr_of(&backends, owner))
    );
    // ...but a new SYN on the same 5-tuple goes where the ring says, and so
    // does the handshake's ACK after it.
    let syn = tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Syn, b"");
    assert_eq!(
        lb.run(&to_lb(&syn)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&syn, &addr_of(&backends, other))
        }
    );
    assert_eq!(
        lb.maps.conn(&flow_of(&syn)).unwrap(),
        None,
        "the stale entry is gone"
    );
    assert_eq!(
        lb.run(&to_lb(&ack(port))).data,
        tunnelled(&ack(port), &addr_of(&backends, other))
    );
}

#[test]
fn golden_entry_whose_backend_id_now_serves_another_vip_is_rescheduled() {
    entry_whose_backend_id_now_serves_another_vip(2);
}

#[test]
fn golden_probation_entry_whose_backend_id_now_serves_another_vip_is_rescheduled() {
    entry_whose_backend_id_now_serves_another_vip(1);
}

/// The flow sends `n` packets (1: on probation; 2: in the connection
/// table), then its backend's id moves to another VIP.
fn entry_whose_backend_id_now_serves_another_vip(n: u64) {
    let mut lb = Lb::new();
    let web = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = vec![
        BackendSpec::new(1, BACKEND_V4[0]),
        BackendSpec::new(2, BACKEND_V4[1]),
    ];
    lb.add_vip(web, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, other) = port_that_moves(&mut lb, &web, make, &backends, 1);
    assert_eq!((owner, other), (1, 2));
    let ack = make(port);
    for _ in 0..n {
        assert_eq!(
            lb.run(&to_lb(&ack)).data,
            tunnelled(&ack, BACKEND_V4[0]),
            "the flow is pinned to backend 1"
        );
    }
    assert_eq!(lb.maps.conn(&flow_of(&ack)).unwrap().is_some(), n == 2);
    // Backend 1 leaves the VIP, and its id is given to a backend of
    // another VIP: the entry still names id 1.
    lb.set_backends(&web, &backends[1..]);
    let other_vip = lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[2])],
    );
    assert_eq!(lb.maps.backend(1).unwrap().vip_id, other_vip.vip_id);
    assert_ne!(other_vip.vip_id, 0);
    // Not to the other VIP's backend: rescheduled from this VIP's ring.
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, BACKEND_V4[1])
        }
    );
    assert_eq!(
        (
            lb.count(Reason::ConnMiss),
            lb.count(Reason::ConnHit),
            lb.count(Reason::ConnRescheduled),
            lb.count(Reason::ConnPromoted),
            lb.count(Reason::Tx)
        ),
        (1, 0, 1, 1, n + 1)
    );
    let entry = lb.maps.conn(&flow_of(&ack)).unwrap().expect("entry");
    assert_eq!((entry.backend_id, entry.vip_id), (2, 0), "entry rewritten");
    assert_eq!(lb.maps.probation_entry(&flow_of(&ack)).unwrap(), None);
    assert_eq!(lb.maps.backend_stats(1).unwrap().packets, n);
    // The rewritten entry holds.
    assert_eq!(lb.run(&to_lb(&ack)).data, tunnelled(&ack, BACKEND_V4[1]));
    assert_eq!(lb.count(Reason::ConnHit), 1);
}

#[test]
fn golden_entry_made_for_another_vip_id_is_rescheduled() {
    entry_made_for_another_vip_id(2);
}

#[test]
fn golden_probation_entry_made_for_another_vip_id_is_rescheduled() {
    entry_made_for_another_vip_id(1);
}

/// The flow sends `n` packets (1: on probation; 2: in the connection
/// table), then its VIP is added again under a new id.
fn entry_made_for_another_vip_id(n: usize) {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 80, PROTO_TCP);
    let backends = vec![
        BackendSpec::new(1, BACKEND_V4[0]),
        BackendSpec::new(2, BACKEND_V4[1]),
    ];
    let first = lb.add_vip(key, 0, &backends);
    let make = |p| tcp4(CLIENT_V4, p, VIP_V4, 80, Tcp::Ack, b"");
    let (port, owner, _) = port_that_moves(&mut lb, &key, make, &backends, 1);
    assert_eq!(owner, 1);
    let ack = make(port);
    for _ in 0..n {
        assert_eq!(lb.run(&to_lb(&ack)).data, tunnelled(&ack, BACKEND_V4[0]));
    }
    // The VIP is removed and added again: it gets a new id, and its
    // backends come back under recycled ids. Backend 1 drains, so only an
    // entry of the new VIP would keep a flow on it.
    let mut again = backends.clone();
    again[0].flags |= BACKEND_F_DRAINING;
    let second = lb.add_vip(key, 0, &again);
    assert_ne!(second.vip_id, first.vip_id);
    assert_eq!(lb.maps.backend(1).unwrap().vip_id, second.vip_id);
    assert_eq!(
        lb.run(&to_lb(&ack)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&ack, BACKEND_V4[1])
        }
    );
    assert_eq!(
        (
            lb.count(Reason::ConnMiss),
            lb.count(Reason::ConnHit),
            lb.count(Reason::ConnRescheduled),
            lb.count(Reason::ConnPromoted)
        ),
        (1, 0, 1, 1)
    );
    let entry = lb.maps.conn(&flow_of(&ack)).unwrap().expect("entry");
    assert_eq!((entry.backend_id, entry.vip_id), (2, second.vip_id));
}
