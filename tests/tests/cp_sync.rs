//! Writing configuration images to the real maps (`lb_userspace::sync`),
//! checked by what the program then does with packets.

use lb_common::{Reason, maps::CFG_F_PORTLESS_VIPS};
use lb_tests::{harness::*, packets::*};
use lb_userspace::{
    config::Config,
    ids::Ids,
    image::{self, BackendStatus, Image},
    sync,
};

fn image_of(vips: &str, ids: &mut Ids) -> Image {
    let json = format!(
        r#"{{"interfaces": [{{"name": "eth0"}}],
            "tunnel_source": {{"ipv4": "{OUTER_SRC_V4}"}},
            "next_hop": {{"fib": false, "gateway_mac": "02:00:00:00:00:fe"}},
            "tables": {{"ring_size": {RING}}},
            "vips": [{vips}]}}"#
    );
    let config = Config::from_json(&json).expect("valid config");
    image::build(
        &config,
        ids,
        |_| BackendStatus {
            healthy: true,
            drain_expired: false,
        },
        image::Egress::default(),
    )
    .expect("image")
}

#[test]
fn cp_sync_adding_a_portless_vip_to_a_live_program_turns_its_lookup_on() {
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let tcp_vip = format!(
        r#"{{"address": "{VIP_V4}", "port": 80, "protocol": "tcp",
             "backends": [{{"address": "{}"}}]}}"#,
        BACKEND_V4[0]
    );
    let first = image_of(&tcp_vip, &mut ids);
    sync::apply(&mut lb.maps, None, &first).expect("first apply");
    assert_eq!(lb.maps.config().unwrap().flags & CFG_F_PORTLESS_VIPS, 0);
    let udp = to_lb(&udp4(CLIENT_V4, 5000, VIP_V4, 53, b"q"));
    assert_eq!(lb.run(&udp).action, XDP_PASS);
    assert_eq!(lb.count(Reason::PassNonVip), 1);

    let portless_vip = format!(
        r#"{{"address": "{VIP_V4}", "port": 0, "protocol": "udp",
             "backends": [{{"address": "{}"}}]}}"#,
        BACKEND_V4[1]
    );
    let second = image_of(&format!("{tcp_vip}, {portless_vip}"), &mut ids);
    sync::apply(&mut lb.maps, Some(&first), &second).expect("second apply");
    assert_ne!(lb.maps.config().unwrap().flags & CFG_F_PORTLESS_VIPS, 0);
    let out = lb.run(&udp);
    assert_eq!(out.action, XDP_TX);
    assert_eq!(&out.data[30..34], &v4(BACKEND_V4[1]), "tunnelled to it");

    // Removing it turns the lookup off again.
    sync::apply(&mut lb.maps, Some(&second), &first).expect("third apply");
    assert_eq!(lb.maps.config().unwrap().flags & CFG_F_PORTLESS_VIPS, 0);
    assert_eq!(lb.run(&udp).action, XDP_PASS);
}

#[test]
fn cp_sync_clearing_an_ids_counters_zeroes_them_on_every_cpu_and_nothing_else() {
    let mut lb = Lb::new();
    let key = vip_key(VIP_V4, 53, lb_common::flow::PROTO_UDP);
    lb.add_vip(key, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let other = lb.add_vip(
        vip_key(VIP_V6, 53, lb_common::flow::PROTO_UDP),
        0,
        &[BackendSpec::new(2, BACKEND_V4[1])],
    );
    for port in 5000..5003 {
        assert_eq!(
            lb.run(&to_lb(&udp4(CLIENT_V4, port, VIP_V4, 53, b"q")))
                .action,
            XDP_TX
        );
    }
    lb.run(&to_lb(&udp6(CLIENT_V6, 5000, VIP_V6, 53, b"q")));
    assert_eq!(lb.maps.vip_stats(0).unwrap().packets, 3);
    assert_eq!(lb.maps.backend_stats(1).unwrap().new_flows, 3);

    lb.maps.clear_vip_stats(0).unwrap();
    lb.maps.clear_backend_stats(1).unwrap();
    assert_eq!(lb.maps.vip_stats(0).unwrap(), Default::default());
    assert_eq!(lb.maps.backend_stats(1).unwrap(), Default::default());
    // The other VIP's and backend's counters are untouched.
    assert_eq!(lb.maps.vip_stats(other.vip_id).unwrap().packets, 1);
    assert_eq!(lb.maps.backend_stats(2).unwrap().packets, 1);
    // And counting goes on from zero.
    lb.run(&to_lb(&udp4(CLIENT_V4, 5000, VIP_V4, 53, b"q")));
    assert_eq!(lb.maps.backend_stats(1).unwrap().packets, 1);
}
