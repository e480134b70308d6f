//! Per-packet rows of stateless VIPs (`VIP_F_STATELESS`): the ring alone
//! places every packet, so a flow's first packet costs what any other
//! does. Beside `per_packet`'s stateful rows, in the same data plane, with
//! VIPs of the same backend addresses and ring size: a settled slot (IPv4,
//! IPv6; one flow, and new flows), a SYN, and a slot that changed hands
//! within its window (the packet leaves in GUE with the slot's previous
//! owner as its second hop). Second chance is on for these rows, as a
//! stateless VIP requires, so a non-SYN packet also reads its slot's
//! previous owner.

use lb_common::{
    flow::PROTO_TCP,
    gue::DEFAULT_GUE_PORT,
    maps::{PrevOwner, SecondChance, VIP_F_STATELESS},
};
use lb_tests::{
    harness::{run_frame, vip_key},
    packets::*,
};
use lb_userspace::{datapath::MapSizes, maps::Maps};

use crate::{
    forwarding::xdp,
    per_packet::{Before, add_vip, assert_tunnelled, fresh_flows, time},
};

/// Second chance on, as lbd has it for a stateless VIP.
pub fn second_chance_on(maps: &mut Maps) {
    maps.set_second_chance(&SecondChance {
        gue_port: DEFAULT_GUE_PORT,
        _pad: [0; 2],
    })
    .expect("gue port");
}

/// Every slot of VIP `vip_id`'s ring `ring` moved within an open window:
/// each slot's previous owner is the next backend of `ids` after the
/// slot's owner now.
fn move_every_slot(maps: &mut Maps, vip_id: u32, ring: &[u32], ids: &[u32]) {
    let owners: Vec<PrevOwner> = ring
        .iter()
        .map(|owner| {
            let i = ids
                .iter()
                .position(|id| id == owner)
                .expect("a VIP backend");
            PrevOwner {
                owner: ids[(i + 1) % ids.len()],
                until_s: u32::MAX,
            }
        })
        .collect();
    maps.set_prev_owners(vip_id, &owners).expect("prev owners");
}

/// The timed path's output, checked once: `frame` goes out in GUE over
/// IPv4 to one of `backends` with the next backend (the slot's previous
/// owner, `move_every_slot`) as its hop, the inner packet intact.
fn assert_second_hop(prog: &mut aya::programs::Xdp, frame: &[u8], backends: &[[u8; 4]]) {
    // Outer IPv4 20, UDP 8, GUE 4, hop-list head 4, one IPv4 hop 4.
    const INNER: usize = 14 + 20 + 8 + 4 + 4 + 4;
    let out = run_frame(prog, frame);
    assert_eq!(out.action, 3, "XDP_TX");
    let out = out.data;
    assert_eq!(out.len(), frame.len() + INNER - 14, "in GUE with one hop");
    assert_eq!(&out[INNER..], &frame[14..], "inner packet intact");
    assert_eq!(out[14 + 9], 17, "outer protocol UDP");
    assert_eq!(&out[36..38], &DEFAULT_GUE_PORT.to_be_bytes(), "GUE port");
    let owner = backends
        .iter()
        .position(|b| b[..] == out[30..34])
        .expect("outer destination is a backend");
    let hop = &out[INNER - 4..INNER];
    assert_eq!(
        hop,
        &backends[(owner + 1) % backends.len()][..],
        "the hop is the slot's previous owner"
    );
}

/// As `assert_tunnelled`, for an IPv6 tunnel.
fn assert_tunnelled_v6(prog: &mut aya::programs::Xdp, frame: &[u8], backends: &[[u8; 16]]) {
    let out = run_frame(prog, frame).data;
    assert_eq!(out.len(), frame.len() + 40, "encapsulated");
    assert_eq!(&out[14 + 40..], &frame[14..], "inner packet intact");
    assert!(
        backends.iter().any(|b| b[..] == out[14 + 24..14 + 40]),
        "outer destination is a backend"
    );
}

/// Stateless VIPs `first_vip_id`, `+ 1`, `+ 2` (after the stateful ones,
/// backend ids after `*last_id`), second chance on, and their rows.
pub fn per_packet_rows(
    dp: &mut lb_userspace::datapath::Datapath,
    maps: &mut Maps,
    sizes: MapSizes,
    first_vip_id: u32,
    last_id: &mut u32,
    results: &mut Vec<(String, f64, f64)>,
) {
    let settled_v4 = vip_key(VIP_V4, 81, PROTO_TCP);
    let settled_v6 = vip_key(VIP_V6, 444, PROTO_TCP);
    let moved = vip_key(VIP_V4, 82, PROTO_TCP);
    let flags = VIP_F_STATELESS;
    add_vip(
        maps,
        sizes,
        first_vip_id,
        &settled_v4,
        flags,
        &BACKEND_V4,
        last_id,
    );
    add_vip(
        maps,
        sizes,
        first_vip_id + 1,
        &settled_v6,
        flags,
        &BACKEND_V6,
        last_id,
    );
    let moved_ids = add_vip(
        maps,
        sizes,
        first_vip_id + 2,
        &moved,
        flags,
        &BACKEND_V4,
        last_id,
    );
    let meta = maps.vip(&moved).unwrap().expect("moved VIP");
    let ring = maps.live_ring(&meta).expect("ring");
    move_every_slot(maps, meta.vip_id, &ring, &moved_ids);
    second_chance_on(maps);

    // Distinct flows from random clients, as `per_packet`'s new flows.
    let fresh = |seed: u64, flags: Tcp| fresh_flows(seed, 81, flags);
    let one_v4 = vec![to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 81, Tcp::Ack, b""))];
    let one_v6 = vec![to_lb(&tcp6(CLIENT_V6, 40000, VIP_V6, 444, Tcp::Ack, b""))];
    let first_acks = fresh(11, Tcp::Ack);
    let syns = fresh(12, Tcp::Syn);
    let on_moved = vec![to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 82, Tcp::Ack, b""))];

    let prog = xdp(dp, lb_common::maps::PROG_LB);
    let v4_backends = BACKEND_V4.map(v4);
    assert_tunnelled(prog, &one_v4[0], &v4_backends);
    assert_tunnelled(prog, &first_acks[0], &v4_backends);
    assert_tunnelled(prog, &syns[0], &v4_backends);
    assert_tunnelled_v6(prog, &one_v6[0], &BACKEND_V6.map(v6));
    assert_second_hop(prog, &on_moved[0], &v4_backends);
    let tables = maps.fill(1 << 20).expect("table fill");
    let rows = [
        (
            "IPv4 TCP stateless VIP, any packet on a settled slot",
            &one_v4,
        ),
        (
            "IPv6 TCP stateless VIP, any packet on a settled slot",
            &one_v6,
        ),
        (
            "IPv4 TCP stateless VIP, new flow, first ACK (no insert)",
            &first_acks,
        ),
        ("IPv4 TCP stateless VIP, SYN", &syns),
        (
            "IPv4 TCP stateless VIP, packet on a moved slot (GUE, second hop)",
            &on_moved,
        ),
    ];
    for (name, frames) in rows {
        let (median, p10) = time(prog, frames, 3, Before::Nothing);
        results.push((name.to_string(), median, p10));
    }
    let after = maps.fill(1 << 20).expect("table fill");
    assert_eq!(
        (after.conns.entries, after.probation.entries),
        (tables.conns.entries, tables.probation.entries),
        "stateless rows entered no flow in either table"
    );
}
