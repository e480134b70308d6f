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
