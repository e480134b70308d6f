//! Per-packet rows with bigger tables: established flows and new flows
//! (first ACK, SYN) with 1 or 64 VIPs of 3 or 100 backends each, frames
//! spread over the VIPs, so that what more VIPs (a bigger VIP hash, a ring
//! of 65,537 slots each) and more backends cost shows beside the rows of
//! `per_packet`, which has 4 VIPs of 3 backends; then the same VIPs made
//! stateless (`stateless`). Each configuration gets a data plane of its
//! own, all with the same map sizes.

use lb_common::{flow::PROTO_TCP, maps::*};
use lb_tests::{
    harness::{run_frame, vip_key},
    packets::*,
};
use lb_userspace::{
    datapath::{Datapath, MapSizes},
    maglev,
    maps::Maps,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::{
    forwarding::xdp,
    per_packet::{Before, CALLS, assert_tunnelled, backend, configure, time},
};

/// (VIPs, backends per VIP).
const TABLE_SIZES: [(u32, u32); 4] = [(1, 3), (1, 100), (64, 3), (64, 100)];
/// Flows the established rows cycle through, each in the connection table.
const ESTABLISHED_FLOWS: usize = 4096;

pub fn run(results: &mut Vec<(String, f64, f64)>) {
    for (vips, backends) in TABLE_SIZES {
        rows(vips, backends, results);
    }
}

/// The `n`-th VIP's address; port 80, TCP.
fn vip_addr(n: u32) -> String {
    format!("198.51.100.{}", 10 + n)
}

/// The `n`-th backend's address (every VIP has the same addresses, under
/// backend ids of its own, as lbd gives them).
fn backend_addr(n: u32) -> String {
    format!("192.0.2.{}", 1 + n)
}

fn rows(vips: u32, backends: u32, results: &mut Vec<(String, f64, f64)>) {
    // Room for 64 x 100 backends (ids from 1), the same for every size.
    let sizes = MapSizes {
        max_backends: 8192,
        ..MapSizes::default()
    };
    assert!(vips <= sizes.max_vips && vips * backends < sizes.max_backends);
    let mut dp = Datapath::load(sizes).expect("load");
    let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size).expect("maps");
    configure(&mut maps, sizes);
    for vip_id in 0..vips {
        let key = vip_key(&vip_addr(vip_id), 80, PROTO_TCP);
        let mut members = Vec::new();
        for b in 0..backends {
            let (id, entry, m) = backend(vip_id * backends + b + 1, &backend_addr(b));
            maps.set_backend(id, &Backend { vip_id, ..entry }).unwrap();
            members.push(m);
        }
        maps.set_vip(
            &key,
            &VipMeta {
                vip_id,
                flags: 0,
                active_ring: 0,
                _pad: 0,
            },
        )
        .unwrap();
        maps.publish_ring(&key, &maglev::build(&members, sizes.ring_size), 0)
            .unwrap();
    }
    let vip_of = |i: usize| vip_addr(i as u32 % vips);
    // Source ports from 40000: never one of the new flows' below.
    let established: Vec<Vec<u8>> = (0..ESTABLISHED_FLOWS)
        .map(|i| {
            let client = format!("203.0.113.{}", 1 + i % 250);
            to_lb(&tcp4(
                &client,
                40000 + i as u16,
                &vip_of(i),
                80,
                Tcp::Ack,
                b"",
            ))
        })
        .collect();
    // Distinct flows (port 1024 + i), clients of the first ACKs and of
    // the SYNs apart, so no SYN finds a flow on probation.
    let fresh = |seed: u64, clients: std::ops::Range<u8>, flags: Tcp| -> Vec<Vec<u8>> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..CALLS)
            .map(|i| {
                let client = format!("203.0.113.{}", rng.random_range(clients.clone()));
                to_lb(&tcp4(&client, 1024 + i as u16, &vip_of(i), 80, flags, b""))
            })
            .collect()
    };
    let first_acks = fresh(1, 1..128, Tcp::Ack);
    let syns = fresh(2, 128..255, Tcp::Syn);

    let prog = xdp(&mut dp, PROG_LB);
    // Each established flow's first packet puts it on probation, its
    // second promotes it: all of them in the connection table.
    for frame in established.iter().chain(&established) {
        assert_eq!(run_frame(prog, frame).action, 3, "warm-up verdict");
    }
    let fill = maps.fill(ESTABLISHED_FLOWS * 2).expect("table fill");
    assert_eq!(
        fill.conns.entries, ESTABLISHED_FLOWS as u64,
        "every established flow is in the connection table"
    );
    let addrs: Vec<[u8; 4]> = (0..backends).map(|b| v4(&backend_addr(b))).collect();
    assert_tunnelled(prog, &syns[syns.len() - 1], &addrs);
    assert_tunnelled(prog, &established[established.len() - 1], &addrs);

    let label = format!(
        "{vips} VIP{} x {backends} backends",
        if vips == 1 { "" } else { "s" }
    );
    for (path, frames) in [
        (
            format!("IPv4 TCP established, {ESTABLISHED_FLOWS} flows"),
            &established,
        ),
        (
            "IPv4 TCP new flow, first ACK (probation insert)".to_string(),
            &first_acks,
        ),
        (
            "IPv4 TCP SYN, new flow (ring pick, no insert)".to_string(),
            &syns,
        ),
    ] {
        let (median, p10) = time(prog, frames, 3, Before::Nothing);
        results.push((format!("{label}: {path}"), median, p10));
    }

    // The same VIPs made stateless (second chance on, every slot settled):
    // the established flows' entries are no longer read, a first ACK
    // enters nothing.
    crate::stateless::second_chance_on(&mut maps);
    for vip_id in 0..vips {
        let key = vip_key(&vip_addr(vip_id), 80, PROTO_TCP);
        let meta = maps.vip(&key).unwrap().expect("VIP");
        let ring = maps.live_ring(&meta).expect("ring");
        maps.publish_ring(&key, &ring, VIP_F_STATELESS).unwrap();
    }
    assert_tunnelled(prog, &established[0], &addrs);
    assert_tunnelled(prog, &first_acks[0], &addrs);
    for (path, frames) in [
        (
            format!("IPv4 TCP stateless VIP, any packet, {ESTABLISHED_FLOWS} flows"),
            &established,
        ),
        (
            "IPv4 TCP stateless VIP, new flow, first ACK (no insert)".to_string(),
            &first_acks,
        ),
    ] {
        let (median, p10) = time(prog, frames, 3, Before::Nothing);
        results.push((format!("{label}: {path}"), median, p10));
    }
}
