//! Writing configuration images to the real maps (`lb_userspace::sync`),
//! checked by what the program then does with packets.

use lb_common::{
    Reason,
    maps::{CFG_F_PORTLESS_VIPS, VIP_F_AFFINITY, VIP_F_L2_DSR, coarse_seconds},
};
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
            weight: None,
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

/// A TCP VIP on port 80 served by `backends` (indices into `BACKEND_V4`,
/// each with its `backend_mac`), with `affinity` and `forwarding`.
fn vip_json(backends: &[usize], affinity: bool, forwarding: &str) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|&i| {
            let mac = backend_mac(i as u8)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            format!(r#"{{"address": "{}", "mac": "{mac}"}}"#, BACKEND_V4[i])
        })
        .collect();
    format!(
        r#"{{"address": "{VIP_V4}", "port": 80, "protocol": "tcp", "affinity": {affinity},
             "forwarding": "{forwarding}", "backends": [{}]}}"#,
        backends.join(", ")
    )
}

/// Where the program sends a SYN from `client:port` to the VIP: the
/// backend index, and whether it went by L2 DSR (frame unchanged but for
/// the destination MAC) or IP-in-IP.
fn destination(lb: &mut Lb, client: &str, port: u16) -> (usize, bool) {
    let input = to_lb(&tcp4(client, port, VIP_V4, 80, Tcp::Syn, b""));
    let out = lb.run(&input);
    assert_eq!(out.action, XDP_TX, "{client}:{port} not forwarded: {out:?}");
    let l2 = out.data.len() == input.len();
    let index = if l2 {
        (0..3).find(|&i| out.data[..6] == backend_mac(i as u8))
    } else {
        (0..3).find(|&i| out.data[30..34] == v4(BACKEND_V4[i]))
    };
    (index.expect("sent to a configured backend"), l2)
}

/// Defect: an apply that changed a VIP's members and its flags together
/// wrote the flags back with the ring the entry named before the flip, so
/// the VIP kept serving its old members. Now members, affinity and
/// forwarding change together, in every direction, including a restore
/// (`old` unknown, as after a failed apply or a restart).
#[test]
fn cp_sync_members_and_flags_changed_together_take_effect_together() {
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let key = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let first = image_of(&vip_json(&[0, 1], false, "ipip"), &mut ids);
    sync::apply(&mut lb.maps, None, &first).expect("first apply");
    let clients: Vec<String> = (1..=16).map(|i| format!("203.0.113.{i}")).collect();
    let spread = |lb: &mut Lb| {
        let mut seen = std::collections::BTreeMap::new();
        for client in &clients {
            for port in 40000..40016 {
                let (backend, l2) = destination(lb, client, port);
                seen.entry(client.clone())
                    .or_insert_with(Vec::new)
                    .push((backend, l2));
            }
        }
        seen
    };
    for hops in spread(&mut lb).values() {
        assert!(hops.iter().all(|&(b, l2)| b < 2 && !l2), "{hops:?}");
    }

    // Members 1 and 2, with affinity, by L2 DSR: one apply.
    let second = image_of(&vip_json(&[1, 2], true, "l2_dsr"), &mut ids);
    sync::apply(&mut lb.maps, Some(&first), &second).expect("second apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    assert_eq!(meta.active_ring, 1, "the ring flip stays");
    assert_eq!(meta.flags, VIP_F_AFFINITY | VIP_F_L2_DSR);
    let mut used = std::collections::BTreeSet::new();
    for hops in spread(&mut lb).values() {
        // Affinity: all of a client's flows on one backend, by L2 DSR.
        assert!(hops.iter().all(|&h| h == hops[0]), "{hops:?}");
        assert!(hops[0].1, "L2 DSR: {hops:?}");
        assert_ne!(hops[0].0, 0, "backend 0 was removed: {hops:?}");
        used.insert(hops[0].0);
    }
    assert_eq!(lb.count(Reason::DropNoBackend), 0);
    assert!(
        used.contains(&2),
        "the added backend gets clients: {used:?}"
    );

    // The restore after a failed apply (and a restart) writes an image
    // over maps of unknown contents: the first one comes back whole.
    sync::apply(&mut lb.maps, None, &first).expect("restore");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    assert_eq!(meta.flags, 0);
    for hops in spread(&mut lb).values() {
        assert!(hops.iter().all(|&(b, l2)| b < 2 && !l2), "{hops:?}");
    }
    assert_eq!(lb.count(Reason::DropNoBackend), 0);
}

/// A ring slot whose backend id has since been given to another VIP's
/// backend does not send this VIP's flow there.
#[test]
fn cp_sync_a_ring_slot_naming_another_vips_backend_is_not_followed() {
    let mut lb = Lb::new();
    let web = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let dns = vip_key(VIP_V4, 53, lb_common::flow::PROTO_UDP);
    lb.add_vip(web, 0, &[BackendSpec::new(1, BACKEND_V4[0])]);
    let other = lb.add_vip(dns, 0, &[BackendSpec::new(2, BACKEND_V4[1])]);
    let syn = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(lb.run(&syn).action, XDP_TX);

    // Id 1 freed and given to a backend of the other VIP, while the web
    // VIP's ring still names it (a ring not rewritten in time).
    lb.maps
        .set_backend(
            1,
            &BackendSpec::new(1, BACKEND_V4[2]).entry_for(other.vip_id),
        )
        .unwrap();
    let out = lb.run(&syn);
    assert_eq!(out.action, XDP_DROP, "{out:?}");
    assert_eq!(lb.count(Reason::DropNoBackend), 1);
}

/// `image_of` with second chance on (GUE port 6080) and the VIP's
/// `second_chance_s` at `window_s` (none: the drain timeout's default).
fn image_with_second_chance(backends: &[usize], window_s: Option<u64>, ids: &mut Ids) -> Image {
    let mut vip: serde_json::Value =
        serde_json::from_str(&vip_json(backends, false, "ipip")).unwrap();
    if let Some(s) = window_s {
        vip["second_chance_s"] = s.into();
    }
    let json = serde_json::json!({
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": OUTER_SRC_V4},
        "next_hop": {"fib": false, "gateway_mac": "02:00:00:00:00:fe"},
        "tables": {"ring_size": RING},
        "second_chance": {"enabled": true},
        "vips": [vip],
    });
    let config = Config::from_json(&json.to_string()).expect("valid config");
    image::build(
        &config,
        ids,
        |_| BackendStatus {
            healthy: true,
            drain_expired: false,
            weight: None,
        },
        image::Egress::default(),
    )
    .expect("image")
}

/// The VIP's previous owner of every ring slot in effect now, as `lb`
/// reads them (`NO_BACKEND` for a slot whose window closed); `None` when
/// no slot has one.
fn previous_owners_in_effect(lb: &Lb, vip_id: u32) -> Option<Vec<u32>> {
    let now_s = coarse_seconds(lb_userspace::second_chance::monotonic_ns());
    let owners: Vec<u32> = lb
        .maps
        .prev_owners(vip_id)
        .unwrap()
        .iter()
        .map(|p| {
            if p.live_at(now_s) {
                p.owner
            } else {
                lb_common::maps::NO_BACKEND
            }
        })
        .collect();
    owners
        .iter()
        .any(|id| *id != lb_common::maps::NO_BACKEND)
        .then_some(owners)
}

#[test]
fn cp_sync_a_rebuild_remembers_each_moved_slots_previous_owner_for_the_vips_window() {
    use lb_common::maps::NO_BACKEND;
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let key = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let first = image_with_second_chance(&[0, 1], Some(60), &mut ids);
    sync::apply(&mut lb.maps, None, &first).expect("first apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    assert_eq!(lb.maps.second_chance().unwrap().gue_port, 6080);
    assert_eq!(
        previous_owners_in_effect(&lb, meta.vip_id),
        None,
        "a new VIP moved nothing"
    );

    // A backend joins: every slot it takes remembers its owner before.
    let before = lb.maps.live_ring(&meta).unwrap();
    let second = image_with_second_chance(&[0, 1, 2], Some(60), &mut ids);
    let now = lb_userspace::second_chance::monotonic_ns();
    sync::apply(&mut lb.maps, Some(&first), &second).expect("second apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    let after = lb.maps.live_ring(&meta).unwrap();
    let owners = previous_owners_in_effect(&lb, meta.vip_id).expect("window open");
    let want: Vec<u32> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| if b != a { *b } else { NO_BACKEND })
        .collect();
    assert_eq!(owners, want);
    assert!(want.iter().any(|id| *id != NO_BACKEND), "no slot moved");
    let now_s = coarse_seconds(now);
    for (slot, p) in lb.maps.prev_owners(meta.vip_id).unwrap().iter().enumerate() {
        if want[slot] != NO_BACKEND {
            let window = p.until_s - now_s;
            assert!(
                (60..=62).contains(&window),
                "slot {slot}: window of {window} s, not 60 s"
            );
        }
    }

    // The program sends an ACK on a moved slot to the new owner with the
    // old one as the hop (IPv4 outer: the hop right after the 16 bytes of
    // UDP, GUE and hop-list head).
    let slot_moved = (40000..41000)
        .find(|port| {
            let ack = tcp4(CLIENT_V4, *port, VIP_V4, 80, Tcp::Ack, b"");
            let slot =
                lb_common::flow::maglev_slot(lb_common::flow_hash(&flow_of(&ack), false), RING);
            want[slot as usize] != NO_BACKEND
        })
        .expect("a port on a moved slot");
    let ack = tcp4(CLIENT_V4, slot_moved, VIP_V4, 80, Tcp::Ack, b"");
    let slot = lb_common::flow::maglev_slot(lb_common::flow_hash(&flow_of(&ack), false), RING);
    let out = lb.run(&to_lb(&ack));
    assert_eq!(out.action, XDP_TX);
    let hop_id = want[slot as usize];
    let hop = lb.maps.backend(hop_id).unwrap();
    assert_eq!(out.data[14 + 9], 17, "GUE over UDP");
    assert_eq!(&out.data[14 + 20 + 16..14 + 20 + 20], &hop.addr[..4]);

    // Backend 0 leaves: no slot names it any more (its id may be reused);
    // a slot moved by the join that kept its owner keeps its previous one.
    let third = image_with_second_chance(&[1, 2], Some(60), &mut ids);
    let removed = second
        .backends
        .iter()
        .find(|(_, b)| b.addr[..4] == v4(BACKEND_V4[0]))
        .map(|(id, _)| *id)
        .unwrap();
    sync::apply(&mut lb.maps, Some(&second), &third).expect("third apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    let last = lb.maps.live_ring(&meta).unwrap();
    let owners = previous_owners_in_effect(&lb, meta.vip_id).expect("window open");
    for s in 0..RING as usize {
        assert_ne!(owners[s], removed, "slot {s} names the removed backend");
        let expected = if after[s] != last[s] && after[s] != removed {
            after[s]
        } else if after[s] == last[s] && want[s] != removed {
            want[s]
        } else {
            NO_BACKEND
        };
        assert_eq!(owners[s], expected, "slot {s}");
    }

    // Window 0 for the VIP: nothing counts from now on.
    let fourth = image_with_second_chance(&[1], Some(0), &mut ids);
    sync::apply(&mut lb.maps, Some(&third), &fourth).expect("fourth apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    assert_eq!(previous_owners_in_effect(&lb, meta.vip_id), None);
}

#[test]
fn cp_sync_second_chance_off_records_nothing_and_sends_no_gue() {
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let key = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let first = image_of(&vip_json(&[0, 1], false, "ipip"), &mut ids);
    sync::apply(&mut lb.maps, None, &first).expect("first apply");
    let second = image_of(&vip_json(&[0, 1, 2], false, "ipip"), &mut ids);
    sync::apply(&mut lb.maps, Some(&first), &second).expect("second apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    assert_eq!(lb.maps.second_chance().unwrap().gue_port, 0);
    assert!(
        lb.maps
            .prev_owners(meta.vip_id)
            .unwrap()
            .iter()
            .all(|p| *p == lb_common::maps::PrevOwner::NONE || p.until_s == 0)
    );
    for port in 40000..40050 {
        let out = lb.run(&to_lb(&tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Ack, b"")));
        assert_eq!(out.data[14 + 9], lb_common::flow::PROTO_IPIP, "port {port}");
    }
}

/// Where the program sends an ACK from `CLIENT_V4:port`: in GUE (a second
/// hop) or plain IP-in-IP.
fn takes_second_hop(lb: &mut Lb, port: u16) -> bool {
    let out = lb.run(&to_lb(&tcp4(CLIENT_V4, port, VIP_V4, 80, Tcp::Ack, b"")));
    assert_eq!(out.action, XDP_TX, "port {port}");
    out.data[14 + 9] == lb_common::flow::PROTO_UDP
}

/// A client port whose flow falls on a slot in `slots`.
fn port_on(slots: &[usize]) -> u16 {
    (40000..60000)
        .find(|port| {
            let ack = tcp4(CLIENT_V4, *port, VIP_V4, 80, Tcp::Ack, b"");
            let slot =
                lb_common::flow::maglev_slot(lb_common::flow_hash(&flow_of(&ack), false), RING);
            slots.contains(&(slot as usize))
        })
        .expect("a port on one of the slots")
}

/// Each slot's window runs from when that slot moved: rebuilds that keep
/// coming (a backend flapping) and move other slots do not keep a slot
/// that moved once "recent", so its new connections stop travelling in
/// GUE once its window is over.
#[test]
fn cp_sync_a_slot_moved_once_leaves_second_chance_on_time_while_other_slots_keep_moving() {
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let key = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let window = std::time::Duration::from_secs(2);
    let one = image_with_second_chance(&[0], Some(2), &mut ids);
    sync::apply(&mut lb.maps, None, &one).expect("first apply");
    let ring = |lb: &Lb| {
        let meta = lb.maps.vip(&key).unwrap().unwrap();
        lb.maps.live_ring(&meta).unwrap()
    };
    let before = ring(&lb);
    // Backend 1 joins: the slots it takes move, once.
    let two = image_with_second_chance(&[0, 1], Some(2), &mut ids);
    sync::apply(&mut lb.maps, Some(&one), &two).expect("join");
    let joined = std::time::Instant::now();
    let after = ring(&lb);
    // Backend 2 then flaps in and out every 200 ms, past the window.
    let three = image_with_second_chance(&[0, 1, 2], Some(2), &mut ids);
    let with_2 = lb_userspace::maglev::build(&three.vips.values().next().unwrap().members, RING);
    // Slots backend 1 took and backend 2 never touches.
    let once: Vec<usize> = (0..RING as usize)
        .filter(|&s| before[s] != after[s] && with_2[s] == after[s])
        .collect();
    let flapping: Vec<usize> = (0..RING as usize)
        .filter(|&s| with_2[s] != after[s])
        .collect();
    assert!(!once.is_empty() && !flapping.is_empty());
    let (settled_port, flapping_port) = (port_on(&once), port_on(&flapping));
    assert!(takes_second_hop(&mut lb, settled_port), "within its window");
    let mut live = &two;
    while joined.elapsed() < window + std::time::Duration::from_millis(1500) {
        let next = if std::ptr::eq(live, &two) {
            &three
        } else {
            &two
        };
        sync::apply(&mut lb.maps, Some(live), next).expect("flap");
        live = next;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if !std::ptr::eq(live, &three) {
        sync::apply(&mut lb.maps, Some(live), &three).expect("flap");
    }
    assert!(
        !takes_second_hop(&mut lb, settled_port),
        "a slot that moved {:?} ago, not since, still sends in GUE",
        joined.elapsed()
    );
    assert!(
        takes_second_hop(&mut lb, flapping_port),
        "a slot that just moved has its second chance"
    );
}

/// A window made shorter while lbd runs takes effect at once, not at the
/// next ring change: 0 ends every second hop of the VIP.
#[test]
fn cp_sync_a_window_set_to_zero_ends_second_hops_without_a_ring_change() {
    let mut lb = Lb::new();
    let mut ids = Ids::new(8, 64);
    let key = vip_key(VIP_V4, 80, lb_common::flow::PROTO_TCP);
    let two = image_with_second_chance(&[0, 1], Some(60), &mut ids);
    sync::apply(&mut lb.maps, None, &two).expect("first apply");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    let before = lb.maps.live_ring(&meta).unwrap();
    let three = image_with_second_chance(&[0, 1, 2], Some(60), &mut ids);
    sync::apply(&mut lb.maps, Some(&two), &three).expect("join");
    let meta = lb.maps.vip(&key).unwrap().unwrap();
    let after = lb.maps.live_ring(&meta).unwrap();
    let moved: Vec<usize> = (0..RING as usize)
        .filter(|&s| before[s] != after[s])
        .collect();
    let port = port_on(&moved);
    assert!(takes_second_hop(&mut lb, port), "within the window");
    let off = image_with_second_chance(&[0, 1, 2], Some(0), &mut ids);
    sync::apply(&mut lb.maps, Some(&three), &off).expect("window 0");
    assert_eq!(
        lb.maps
            .live_ring(&lb.maps.vip(&key).unwrap().unwrap())
            .unwrap(),
        after,
        "no ring change"
    );
    assert!(!takes_second_hop(&mut lb, port), "window 0");
}
