//! Next hops from the kernel FIB (`CFG_F_NEXTHOP_FIB`): the program asks
//! `bpf_fib_lookup` for the route and neighbour of the backend, as if the
//! packet had arrived on a veth in a namespace the test builds.

use lb_common::{
    Reason,
    flow::PROTO_TCP,
    maps::{CFG_F_NEXTHOP_FIB, LbConfig, VIP_F_L2_DSR},
};
use lb_tests::{
    harness::*,
    netns::{Netns, veth},
    packets::*,
};

const ROUTER_V4: &str = "192.0.2.1";
const ROUTER_V6: &str = "2001:db8:ffff::1";
const ROUTER_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const OTHER_ROUTER_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A namespace with uplink `up0` (where packets arrive and, by default,
/// leave), forwarding on, routes to the backends via a router whose
/// neighbour entry is permanent.
struct Site {
    ns: Netns,
    _peer: Netns,
}

impl Site {
    fn new() -> Self {
        let ns = Netns::new("fib");
        let peer = Netns::new("fibpeer");
        veth(&ns, "up0", &peer, "peer0");
        for s in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            ns.exec(&["sysctl", "-q", "-w", s]);
        }
        ns.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", "up0"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            "2001:db8:ffff::2/64",
            "dev",
            "up0",
            "nodad",
        ]);
        ns.exec(&[
            "ip",
            "neigh",
            "replace",
            ROUTER_V4,
            "lladdr",
            &mac_text(ROUTER_NEIGH_MAC),
            "dev",
            "up0",
            "nud",
            "permanent",
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            ROUTER_V6,
            "lladdr",
            &mac_text(ROUTER_NEIGH_MAC),
            "dev",
            "up0",
            "nud",
            "permanent",
        ]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "198.51.100.96/28",
            "via",
            ROUTER_V4,
            "dev",
            "up0",
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:200::/64",
            "via",
            ROUTER_V6,
            "dev",
            "up0",
        ]);
        Self { ns, _peer: peer }
    }
}

fn fib_lb() -> Lb {
    let mut lb = Lb::new();
    let config = LbConfig {
        flags: CFG_F_NEXTHOP_FIB,
        ..Lb::standard_config()
    };
    lb.maps.set_config(&config).unwrap();
    lb
}

#[test]
fn golden_fib_next_hop_uses_kernel_route_and_neighbour_ipv4() {
    let site = Site::new();
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    let up = site.ns.ifindex("up0");
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    let our_mac = site.ns.mac("up0");
    let outer = outer_v4(OUTER_SRC_V4, BACKEND_V4[0], &inner);
    let expected = frame(
        ROUTER_NEIGH_MAC,
        our_mac,
        None,
        ETH_IPV4,
        &cat(&outer, &inner),
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
fn golden_fib_next_hop_uses_kernel_route_and_neighbour_ipv6() {
    let site = Site::new();
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_TCP),
        0,
        &[BackendSpec::new(1, BACKEND_V6[0])],
    );
    let inner = tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Syn, b"");
    let up = site.ns.ifindex("up0");
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    let outer = outer_v6(OUTER_SRC_V6, BACKEND_V6[0], &inner, &flow_of(&inner));
    let expected = frame(
        ROUTER_NEIGH_MAC,
        site.ns.mac("up0"),
        None,
        ETH_IPV6,
        &cat(&outer, &inner),
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
fn golden_fib_unresolved_neighbour_falls_back_to_gateway_mac() {
    let site = Site::new();
    // A route via a router the kernel has no neighbour entry for.
    site.ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.120/32",
        "via",
        "192.0.2.9",
        "dev",
        "up0",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, "198.51.100.120")],
    );
    let inner = tcp4(CLIENT_V4, 40001, VIP_V4, 80, Tcp::Syn, b"");
    let up = site.ns.ifindex("up0");
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    let outer = outer_v4(OUTER_SRC_V4, "198.51.100.120", &inner);
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
fn golden_fib_without_route_or_gateway_drops_no_route() {
    let site = Site::new();
    let mut lb = Lb::new();
    let config = LbConfig {
        flags: CFG_F_NEXTHOP_FIB,
        gateway_mac: [0; 6],
        ..Lb::standard_config()
    };
    lb.maps.set_config(&config).unwrap();
    // 203.0.113.200 has no route in the site namespace.
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, "203.0.113.200")],
    );
    let frame_in = to_lb(&tcp4(CLIENT_V4, 40002, VIP_V4, 80, Tcp::Syn, b""));
    let up = site.ns.ifindex("up0");
    let out = site.ns.enter(|| lb.run_on(up, &frame_in));
    assert_eq!(
        out,
        Outcome {
            action: XDP_DROP,
            data: frame_in
        }
    );
    assert_eq!(lb.count(Reason::DropNoRoute), 1);
    assert_eq!(lb.maps.vip_stats(0).unwrap().dropped, 1);
}

impl Site {
    /// A second link, `down0` (192.0.2.129/25), to a namespace of its own,
    /// which the returned guard removes.
    fn second_link(&self) -> Netns {
        let other = Netns::new("fibother");
        veth(&self.ns, "down0", &other, "other0");
        self.ns
            .exec(&["ip", "addr", "add", "192.0.2.129/25", "dev", "down0"]);
        other
    }
}

#[test]
fn golden_fib_route_via_other_interface_redirects_through_devmap() {
    let site = Site::new();
    let _other = site.second_link();
    site.ns.exec(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.130",
        "lladdr",
        &mac_text(OTHER_ROUTER_NEIGH_MAC),
        "dev",
        "down0",
        "nud",
        "permanent",
    ]);
    site.ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.122/32",
        "via",
        "192.0.2.130",
        "dev",
        "down0",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, "198.51.100.122")],
    );
    let inner = tcp4(CLIENT_V4, 40004, VIP_V4, 80, Tcp::Syn, b"");
    let up = site.ns.ifindex("up0");
    let down = site.ns.ifindex("down0");

    // Not allowed as an egress port yet: dropped, counted, untouched.
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    assert_eq!(
        out,
        Outcome {
            action: XDP_DROP,
            data: to_lb(&inner)
        }
    );
    assert_eq!(lb.count(Reason::DropNoTxPort), 1);

    let down_mac = site.ns.mac("down0");
    site.ns
        .enter(|| lb.maps.add_tx_port(down, down_mac))
        .unwrap();
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    let outer = outer_v4(OUTER_SRC_V4, "198.51.100.122", &inner);
    let expected = frame(
        OTHER_ROUTER_NEIGH_MAC,
        site.ns.mac("down0"),
        None,
        ETH_IPV4,
        &cat(&outer, &inner),
    );
    assert_eq!(
        out,
        Outcome {
            action: XDP_REDIRECT,
            data: expected
        }
    );
    assert_eq!(lb.count(Reason::Redirect), 1);
}

/// The FIB knows the route (out of another interface) but not the
/// neighbour: the gateway MAC is the next hop, reached through the
/// interface the FIB chose, with that interface's MAC as the source.
#[test]
fn golden_fib_unresolved_neighbour_on_another_interface_goes_out_of_that_interface() {
    let site = Site::new();
    let _other = site.second_link();
    // No neighbour entry for 192.0.2.131.
    site.ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.123/32",
        "via",
        "192.0.2.131",
        "dev",
        "down0",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, "198.51.100.123")],
    );
    let inner = tcp4(CLIENT_V4, 40007, VIP_V4, 80, Tcp::Syn, b"");
    let up = site.ns.ifindex("up0");
    let down = site.ns.ifindex("down0");

    // Not a port lbd gave us: dropped untouched.
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    assert_eq!(
        (out, lb.count(Reason::DropNoTxPort)),
        (
            Outcome {
                action: XDP_DROP,
                data: to_lb(&inner)
            },
            1
        )
    );

    let down_mac = site.ns.mac("down0");
    site.ns
        .enter(|| lb.maps.add_tx_port(down, down_mac))
        .unwrap();
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&inner)));
    let outer = outer_v4(OUTER_SRC_V4, "198.51.100.123", &inner);
    let expected = frame(GATEWAY_MAC, down_mac, None, ETH_IPV4, &cat(&outer, &inner));
    assert_eq!(
        (out, lb.count(Reason::Redirect)),
        (
            Outcome {
                action: XDP_REDIRECT,
                data: expected
            },
            1
        )
    );
}

/// Run `frame` as if it arrived on `up0` and return the outcome with the
/// counters it moved.
fn run_counted(site: &Site, lb: &mut Lb, frame: &[u8]) -> (Outcome, Vec<(Reason, u64)>) {
    let up = site.ns.ifindex("up0");
    let before = lb.counts();
    let out = site.ns.enter(|| lb.run_on(up, frame));
    (out, moved(&before, &lb.counts()))
}

/// L2 DSR keeps the VIP as the destination, so a backend the FIB reaches
/// through a router is not on our link: the router would send the frame
/// back. Dropped untouched and counted, resolved router or not; the
/// gateway MAC does not stand in for an unresolved one.
#[test]
fn golden_fib_l2_dsr_backend_behind_a_router_is_dropped_off_link() {
    let site = Site::new();
    site.ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.120/32",
        "via",
        "192.0.2.9",
        "dev",
        "up0",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    lb.add_vip(
        vip_key(VIP_V6, 443, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(2, BACKEND_V6[0])],
    );
    lb.add_vip(
        vip_key(VIP_V4, 81, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(3, "198.51.100.120")],
    );
    let cases = [
        (
            "IPv4, via a resolved router",
            tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Syn, b""),
        ),
        (
            "IPv6, via a resolved router",
            tcp6(CLIENT_V6, 40011, VIP_V6, 443, Tcp::Syn, b""),
        ),
        (
            "IPv4, via an unresolved router",
            tcp4(CLIENT_V4, 40012, VIP_V4, 81, Tcp::Syn, b""),
        ),
    ];
    for (vip_id, (what, ip)) in cases.into_iter().enumerate() {
        let f = to_lb(&ip);
        assert_eq!(
            run_counted(&site, &mut lb, &f),
            (
                Outcome {
                    action: XDP_DROP,
                    data: f
                },
                vec![
                    (Reason::ConnMiss, 1),
                    (Reason::SynNotTracked, 1),
                    (Reason::NewFlow, 1),
                    (Reason::DropL2DsrOffLink, 1),
                ]
            ),
            "{what}"
        );
        assert_eq!(lb.maps.vip_stats(vip_id as u32).unwrap().dropped, 1);
    }
}

/// An L2 DSR backend on our link gets its neighbour's MAC from the FIB; if
/// the neighbour is unresolved there is no next hop (the gateway, a router,
/// would send the frame back).
#[test]
fn golden_fib_l2_dsr_on_link_backend_gets_its_neighbour_and_never_the_gateway() {
    let site = Site::new();
    const BACKEND_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x32];
    site.ns.exec(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.50",
        "lladdr",
        &mac_text(BACKEND_NEIGH_MAC),
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(1, "192.0.2.50")],
    );
    lb.add_vip(
        vip_key(VIP_V4, 81, PROTO_TCP),
        VIP_F_L2_DSR,
        &[BackendSpec::new(2, "192.0.2.51")],
    );
    let resolved = tcp4(CLIENT_V4, 40013, VIP_V4, 80, Tcp::Syn, b"");
    let (out, _) = run_counted(&site, &mut lb, &to_lb(&resolved));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: frame(
                BACKEND_NEIGH_MAC,
                site.ns.mac("up0"),
                None,
                ETH_IPV4,
                &resolved
            )
        }
    );
    let f = to_lb(&tcp4(CLIENT_V4, 40014, VIP_V4, 81, Tcp::Syn, b""));
    let (out, counted) = run_counted(&site, &mut lb, &f);
    assert_eq!(
        (out, counted),
        (
            Outcome {
                action: XDP_DROP,
                data: f
            },
            vec![
                (Reason::DropNoRoute, 1),
                (Reason::ConnMiss, 1),
                (Reason::SynNotTracked, 1),
                (Reason::NewFlow, 1),
            ]
        )
    );
}

#[test]
fn golden_fib_route_mtu_too_small_is_answered_with_the_route_mtu() {
    // `mtu` allows 1500, but the kernel's route to the backend says 1300
    // (locked: a forwarding lookup ignores an unlocked route MTU): the
    // client learns 1300 - 20 (the IPv4 tunnel header).
    let site = Site::new();
    site.ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.112/28",
        "via",
        ROUTER_V4,
        "dev",
        "up0",
        "mtu",
        "lock",
        "1300",
    ]);
    let mut lb = fib_lb();
    lb.add_vip(
        vip_key(VIP_V4, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, "198.51.100.113")],
    );
    let up = site.ns.ifindex("up0");
    let fits = tcp4(CLIENT_V4, 40010, VIP_V4, 80, Tcp::Ack, &[0x55; 1280 - 40]);
    let out = site.ns.enter(|| lb.run_on(up, &to_lb(&fits)));
    assert_eq!(out.action, XDP_TX);
    assert_eq!(&out.data[14 + 20..], &fits[..], "forwarded, encapsulated");
    let big = to_lb(&tcp4(
        CLIENT_V4,
        40010,
        VIP_V4,
        80,
        Tcp::Ack,
        &[0x55; 1281 - 40],
    ));
    let out = site.ns.enter(|| lb.run_on(up, &big));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&big, None, 1280)
        }
    );
    assert_eq!(lb.count(Reason::AnswerTooBig), 1);
}
