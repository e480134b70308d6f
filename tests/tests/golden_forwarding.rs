//! Golden packets for the forwarding paths: exact output bytes for IPv4 and
//! IPv6, TCP and UDP, IP-in-IP and L2 DSR.

use lb_common::{Reason, flow::*};
use lb_tests::{harness::*, packets::*};

fn one_backend_v4() -> BackendSpec {
    BackendSpec::new(1, BACKEND_V4[0])
}

#[test]
fn golden_ipv4_tcp_syn_to_vip_is_encapsulated_ipip() {
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &[one_backend_v4()]);
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    let out = lb.run(&to_lb(&inner));
    let expected = frame(
        GATEWAY_MAC,
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
    assert_eq!(lb.count(Reason::Tx), 1);
    assert_eq!(lb.count(Reason::NewFlow), 1);
}

/// A VIP frame that reached XDP although it was addressed to another
/// host's MAC (a switch flooding unknown unicast, a promiscuous NIC) is
/// passed untouched and counted, and enters no table: the LB node it was
/// sent to balances it. To the interface's own MAC it is balanced here; to
/// a group address it is not.
#[test]
fn golden_a_vip_frame_for_another_hosts_mac_is_passed_and_enters_no_table() {
    use lb_tests::netns::{Netns, veth};
    let ns = Netns::new("macck");
    let peer = Netns::new("macpeer");
    veth(&ns, "lb0", &peer, "p0");
    let ifindex = ns.ifindex("lb0");
    let mut lb = Lb::new();
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &[one_backend_v4()]);
    ns.enter(|| lb.maps.add_tx_port(ifindex, LB_MAC)).unwrap();
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b"");

    let other_host = frame([0x02, 0, 0, 0, 0, 0x02], ROUTER_MAC, None, ETH_IPV4, &inner);
    let out = ns.enter(|| lb.run_on(ifindex, &other_host));
    assert_eq!(
        out,
        Outcome {
            action: XDP_PASS,
            data: other_host
        }
    );
    assert_eq!(lb.count(Reason::PassOtherHost), 1);
    assert_eq!(lb.count(Reason::ConnProbation), 0);
    assert_eq!(lb.maps.probation_count(usize::MAX), 0);
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);

    let out = ns.enter(|| lb.run_on(ifindex, &to_lb(&inner)));
    assert_eq!(out.action, XDP_TX);
    assert_eq!(lb.maps.probation_count(usize::MAX), 1);
    // A group address is no host's (a reply would carry it as its source).
    let broadcast = frame([0xff; 6], ROUTER_MAC, None, ETH_IPV4, &inner);
    let out = ns.enter(|| lb.run_on(ifindex, &broadcast));
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassOtherHost), 2);
}
