//! Spoofed floods against established flows, through the real program
//! (BPF_PROG_TEST_RUN): the shared setup of the flood tests and of the
//! `flood` example that measures them.
//!
//! `REAL_FLOWS` real flows are established, then the ring moves so that
//! every one of them would land on another backend if it lost its
//! connection-table entry. A flood from spoofed sources follows; each
//! spoofed 5-tuple sends `per_flow` packets back to back. Half of the real
//! flows may keep talking during the flood (`active_gap`), the other half
//! stays idle. A flow is kept if every packet it sent after the ring moved
//! reached the backend it started on.

use lb_common::{
    Reason,
    flow::PROTO_TCP,
    maps::{BACKEND_F_DRAINING, PromotionLimit, probation_entries_for},
};
use lb_userspace::datapath::MapSizes;
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::{harness::*, packets::*};

pub const REAL_FLOWS: u16 = 1000;
/// The connection table of the flood setup; the probation table gets the
/// default eighth of it (512).
pub const FLOOD_CONN_ENTRIES: u32 = 4096;

/// One flood.
#[derive(Clone, Copy, Debug)]
pub struct FloodShape {
    /// `PROTO_TCP` (spoofed ACKs, real flows send ACKs with data) or
    /// `PROTO_UDP`.
    pub proto: u8,
    /// Flood packets in all.
    pub packets: u32,
    /// Packets each spoofed 5-tuple sends, back to back.
    pub per_flow: u32,
    /// `Some(n)`: the odd-numbered real flows are active, each sending one
    /// packet every `n` flood packets (round robin among them); `None`: all
    /// real flows are idle during the flood.
    pub active_gap: Option<u32>,
    /// Seed of the spoofed sources.
    pub seed: u64,
    /// The promotion limit during the flood (all zero: none).
    pub limit: PromotionLimit,
}

/// How the real flows fared.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodOutcome {
    pub idle: usize,
    pub idle_kept: usize,
    pub active: usize,
    pub active_kept: usize,
    /// Flows the flood moved into the connection table (`conn_promoted`
    /// during the flood, the real flows' own promotions included).
    pub promoted: u64,
}

/// The `i`th real client's packet to the VIP (TCP: an ACK with data; UDP: a
/// datagram).
pub fn real_packet(proto: u8, i: u16) -> Vec<u8> {
    let client = format!("203.0.113.{}", i % 250 + 1);
    if proto == PROTO_TCP {
        tcp4(&client, 20000 + i, VIP_V4, 80, Tcp::Ack, b"data")
    } else {
        udp4(&client, 20000 + i, VIP_V4, 80, b"data")
    }
}

/// A spoofed packet from `src`:`sport` (TCP: a bare ACK; UDP: an empty
/// datagram).
fn spoofed_packet(proto: u8, src: &str, sport: u16) -> Vec<u8> {
    if proto == PROTO_TCP {
        tcp4(src, sport, VIP_V4, 80, Tcp::Ack, b"")
    } else {
        udp4(src, sport, VIP_V4, 80, b"")
    }
}

/// The outer destination of a tunnelled IPv4 frame: the backend it reached.
pub fn tunnel_destination(out: &Outcome) -> [u8; 4] {
    assert_eq!(out.action, XDP_TX, "{out:?}");
    out.data[30..34].try_into().unwrap()
}

/// The data plane of the flood setup, with `REAL_FLOWS` established flows
/// of `proto` whose ring slots have all moved; and the backend each flow
/// reached before the move.
pub fn established(proto: u8) -> (Lb, Vec<[u8; 4]>) {
    let mut lb = Lb::with_sizes(MapSizes {
        conn_entries: FLOOD_CONN_ENTRIES,
        probation_entries: probation_entries_for(FLOOD_CONN_ENTRIES),
        ..Lb::standard_sizes()
    });
    let key = vip_key(VIP_V4, 80, proto);
    let first = [
        BackendSpec::new(1, BACKEND_V4[0]),
        BackendSpec::new(2, BACKEND_V4[1]),
    ];
    lb.add_vip(key, 0, &first);
    // Handshake ACK and request (TCP), or two datagrams (UDP): established.
    let mut owner = Vec::new();
    for i in 0..REAL_FLOWS {
        let p = to_lb(&real_packet(proto, i));
        let went = tunnel_destination(&lb.run(&p));
        assert_eq!(tunnel_destination(&lb.run(&p)), went);
        owner.push(went);
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), REAL_FLOWS as usize);
    // The first backends drain (kept for established flows only) and two
    // new ones take the whole ring.
    let mut moved = first.to_vec();
    for b in &mut moved {
        b.flags |= BACKEND_F_DRAINING;
    }
    moved.push(BackendSpec::new(3, BACKEND_V4[2]));
    moved.push(BackendSpec::new(4, "198.51.100.104"));
    lb.set_backends(&key, &moved);
    (lb, owner)
}

/// Run `shape` against freshly established flows: the data plane after the
/// flood and the last packet of every real flow, and the outcome.
pub fn flood(shape: FloodShape) -> (Lb, FloodOutcome) {
    let proto = shape.proto;
    let (mut lb, owner) = established(proto);
    let active: Vec<u16> = match shape.active_gap {
        Some(_) => (0..REAL_FLOWS).filter(|i| i % 2 == 1).collect(),
        None => Vec::new(),
    };
    // One real packet every `step` flood packets gives each active flow one
    // every `active_gap`.
    let step = shape
        .active_gap
        .map_or(u32::MAX, |gap| (gap / active.len() as u32).max(1));
    let mut broken = vec![false; REAL_FLOWS as usize];
    let mut speak = |lb: &mut Lb, i: u16| {
        let out = lb.run(&to_lb(&real_packet(proto, i)));
        if tunnel_destination(&out) != owner[i as usize] {
            broken[i as usize] = true;
        }
    };
    lb.maps.set_promotion_limit(&shape.limit).unwrap();
    let promoted_before = lb.count(Reason::ConnPromoted);
    let mut rng = SmallRng::seed_from_u64(shape.seed);
    let mut sent = 0u32;
    let mut next_active = 0usize;
    // Every spoofed flow is a new one: a (source, port) drawn twice would
    // find its first drawing's probation entry and be deferred twice.
    let mut drawn = std::collections::HashSet::new();
    while sent < shape.packets {
        let (host, port) = loop {
            let pick = (rng.random::<u8>(), rng.random_range(1024..=65535u16));
            if drawn.insert(pick) {
                break pick;
            }
        };
        let src = format!("192.0.2.{host}");
        let p = to_lb(&spoofed_packet(proto, &src, port));
        for _ in 0..shape.per_flow.min(shape.packets - sent) {
            assert_eq!(lb.run(&p).action, XDP_TX);
            sent += 1;
            if sent.is_multiple_of(step) {
                speak(&mut lb, active[next_active % active.len()]);
                next_active += 1;
            }
        }
    }
    let promoted = lb.count(Reason::ConnPromoted) - promoted_before;
    for i in 0..REAL_FLOWS {
        speak(&mut lb, i);
    }
    let kept = |flows: &mut dyn Iterator<Item = u16>| {
        flows.fold((0, 0), |(n, kept), i| {
            (n + 1, kept + usize::from(!broken[i as usize]))
        })
    };
    let (active_n, active_kept) = kept(&mut active.iter().copied());
    let (idle, idle_kept) = kept(&mut (0..REAL_FLOWS).filter(|i| !active.contains(i)));
    (
        lb,
        FloodOutcome {
            idle,
            idle_kept,
            active: active_n,
            active_kept,
            promoted,
        },
    )
}
