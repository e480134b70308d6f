//! The verifier accepts both programs in native (driver) XDP mode on this
//! kernel, and they work on real frames: a client packet crosses a veth into
//! the LB, is encapsulated and sent back out (XDP_TX), and the decap program
//! on the other end strips the tunnel.

use std::{net::UdpSocket, time::Duration};

use aya::programs::XdpMode;
use lb_common::{
    Reason,
    flow::PROTO_UDP,
    maps::{PROG_DECAP, PROG_LB},
    stats::DecapReason,
};
use lb_tests::{
    harness::*,
    netns::{Netns, veth},
    packets::*,
};

#[test]
fn golden_native_xdp_attach_on_veth_forwards_and_decapsulates() {
    let lb_ns = Netns::new("lb");
    let peer_ns = Netns::new("peer");
    veth(&lb_ns, "lb0", &peer_ns, "peer0");
    let mut lb = Lb::new();
    lb_ns
        .enter(|| lb.dp.attach(PROG_LB, "lb0", XdpMode::Driver))
        .expect("native attach of lb");
    peer_ns
        .enter(|| lb.dp.attach(PROG_DECAP, "peer0", XdpMode::Driver))
        .expect("native attach of lb_decap");
    // Native mode shows as "xdp", the generic fallback as "xdpgeneric".
    for (ns, dev) in [(&lb_ns, "lb0"), (&peer_ns, "peer0")] {
        let link = ns.exec(&["ip", "-details", "link", "show", dev]);
        assert!(
            link.contains("prog/xdp") && !link.contains("xdpgeneric"),
            "{dev}: {link}"
        );
    }

    // The LB tunnels to a backend behind the peer's MAC; the peer accepts
    // tunnels for that backend address from the LB's tunnel source.
    let peer_mac = peer_ns.mac("peer0");
    let mut config = Lb::standard_config();
    config.gateway_mac = peer_mac;
    lb.maps.set_config(&config).unwrap();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    lb.accept_tunnels(&[BACKEND_V4[0]], &[OUTER_SRC_V4]);

    let lb_mac = lb_ns.mac("lb0");
    let lb_mac_text: Vec<String> = lb_mac.iter().map(|b| format!("{b:02x}")).collect();
    peer_ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{CLIENT_V4}/24"),
        "dev",
        "peer0",
    ]);
    peer_ns.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "peer0"]);
    peer_ns.exec(&[
        "ip",
        "neigh",
        "replace",
        VIP_V4,
        "lladdr",
        &lb_mac_text.join(":"),
        "dev",
        "peer0",
        "nud",
        "permanent",
    ]);

    const PACKETS: u64 = 5;
    peer_ns.enter(|| {
        let socket = UdpSocket::bind((CLIENT_V4, 0)).expect("bind");
        for _ in 0..PACKETS {
            socket.send_to(b"hello", (VIP_V4, 53)).expect("send");
        }
    });
    // Frames cross the veth asynchronously; wait (bounded) for the counters.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lb.decap_count(DecapReason::Decapsulated) < PACKETS
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        lb.count(Reason::Tx),
        PACKETS,
        "the LB encapsulated and sent back every packet"
    );
    assert_eq!(lb.maps.backend_stats(1).unwrap().packets, PACKETS);
    assert_eq!(
        lb.decap_count(DecapReason::Decapsulated),
        PACKETS,
        "the peer stripped every tunnel"
    );
}
