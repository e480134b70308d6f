//! Hostile packets through the real program (BPF_PROG_TEST_RUN), with a
//! fixed seed: random bytes, and valid packets mutated by bit flips,
//! truncation and random header bytes. Whatever arrives:
//! - the verdict is never XDP_ABORTED;
//! - a passed packet leaves byte-identical;
//! - a forwarded packet is a correct tunnel: a valid outer header to one of
//!   the VIP's backends, followed by the input's IP packet unchanged;
//! - every packet is counted under exactly one verdict reason.

use std::{collections::BTreeSet, net::IpAddr};

use etherparse::Ipv4Header;
use lb_common::{
    Reason,
    flow::{PROTO_TCP, PROTO_UDP},
    maps::{PromotionLimit, VIP_F_PORTLESS},
    stats::ReasonKind,
};
use lb_tests::{flood::*, fuzz, harness::*, packets::*};
use lb_userspace::maps::FillMethod;
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Seed fixed for CI; `FUZZ_SEED` and `FUZZ_CASES` widen a local run.
fn seed() -> u64 {
    fuzz::seed(0x10ad_ba1a)
}

struct Target {
    lb: Lb,
    backends: BTreeSet<IpAddr>,
}

fn target() -> Target {
    let mut lb = Lb::new();
    let mut backends = BTreeSet::new();
    let mut id = 1;
    let mut add = |lb: &mut Lb, key, flags, addrs: &[&str]| {
        let specs: Vec<BackendSpec> = addrs
            .iter()
            .map(|a| {
                backends.insert(a.parse().unwrap());
                id += 1;
                BackendSpec::new(id, a)
            })
            .collect();
        lb.add_vip(key, flags, &specs);
    };
    add(&mut lb, vip_key(VIP_V4, 80, PROTO_TCP), 0, &BACKEND_V4);
    add(
        &mut lb,
        vip_key(VIP_V4, 0, PROTO_UDP),
        VIP_F_PORTLESS,
        &BACKEND_V4[..2],
    );
    add(&mut lb, vip_key(VIP_V6, 443, PROTO_TCP), 0, &BACKEND_V6);
    add(
        &mut lb,
        vip_key(VIP_V6, 443, PROTO_UDP),
        0,
        &[BACKEND_V4[2], BACKEND_V6[0]],
    );
    Target { lb, backends }
}

/// Valid packets of every shape the parser knows, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let mut opts =
        Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, v4(CLIENT_V4), v4(VIP_V4)).unwrap();
    opts.options = [1u8, 1, 1, 0].as_slice().try_into().unwrap();
    let mut frag =
        Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, v4(CLIENT_V4), v4(VIP_V4)).unwrap();
    frag.more_fragments = true;
    frag.identification = 77;
    vec![
        to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"")),
        to_lb(&tcp4(
            CLIENT_V4,
            40001,
            VIP_V4,
            80,
            Tcp::Ack,
            b"GET / HTTP/1.1\r\n\r\n",
        )),
        to_lb(&udp4(CLIENT_V4, 5353, VIP_V4, 53, b"query")),
        to_lb(&tcp6(CLIENT_V6, 40002, VIP_V6, 443, Tcp::Syn, b"")),
        to_lb(&udp6(CLIENT_V6, 40003, VIP_V6, 443, b"quic initial")),
        to_lb(&tcp4(CLIENT_V4, 40004, "198.51.100.99", 80, Tcp::Syn, b"")),
        to_lb(&udp4_with(opts, 5000, 53, b"options")),
        to_lb(&udp4_with(frag, 5001, 53, &[9u8; 64])),
        frame(
            LB_MAC,
            ROUTER_MAC,
            Some(7),
            ETH_IPV4,
            &udp4(CLIENT_V4, 5002, VIP_V4, 53, b"vlan"),
        ),
    ]
}

fn verdicts(lb: &Lb) -> u64 {
    Reason::ALL
        .iter()
        .filter(|r| r.kind() != ReasonKind::Event)
        .map(|r| lb.count(*r))
        .sum()
}

/// Check one outcome against the rules in the module comment.
fn check(t: &Target, input: &[u8], out: &Outcome) -> Result<(), String> {
    match out.action {
        XDP_PASS | XDP_DROP => {
            if out.data != input {
                return Err("a passed or dropped packet was modified".into());
            }
        }
        XDP_TX | XDP_REDIRECT => check_tunnel(t, input, &out.data)?,
        XDP_ABORTED => return Err("XDP_ABORTED".into()),
        other => return Err(format!("unknown verdict {other}")),
    }
    Ok(())
}

fn check_tunnel(t: &Target, input: &[u8], output: &[u8]) -> Result<(), String> {
    let l2 = if u16::from_be_bytes([input[12], input[13]]) == 0x8100 {
        18
    } else {
        14
    };
    let outer_type = u16::from_be_bytes([output[l2 - 2], output[l2 - 1]]);
    let (outer_len, dst): (usize, IpAddr) = match outer_type {
        ETH_IPV4 => {
            let (h, _) =
                Ipv4Header::from_slice(&output[l2..]).map_err(|e| format!("outer IPv4: {e}"))?;
            if h.header_checksum != h.calc_header_checksum() {
                return Err("outer IPv4 checksum".into());
            }
            if h.total_len as usize
                != output.len() - l2 - (input.len() - l2 - inner_ip_len(&input[l2..]))
            {
                return Err("outer IPv4 total length".into());
            }
            (20, IpAddr::from(h.destination))
        }
        ETH_IPV6 => {
            let mut d = [0u8; 16];
            d.copy_from_slice(&output[l2 + 24..l2 + 40]);
            (40, IpAddr::from(d))
        }
        other => return Err(format!("outer ethertype {other:#x}")),
    };
    if !t.backends.contains(&dst) {
        return Err(format!("tunnel to {dst}, not a backend"));
    }
    if output[l2 + outer_len..] != input[l2..] {
        return Err("the inner packet changed".into());
    }
    Ok(())
}

/// Length of the IP packet at the start of `ip` (from its header).
fn inner_ip_len(ip: &[u8]) -> usize {
    if ip[0] >> 4 == 4 {
        u16::from_be_bytes([ip[2], ip[3]]) as usize
    } else {
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize
    }
}

fn run_all(t: &mut Target, inputs: impl Iterator<Item = Vec<u8>>) -> (u64, usize) {
    let before = verdicts(&t.lb);
    let mut ran = 0u64;
    let mut forwarded = 0;
    let prog_failures: Vec<String> = inputs
        .filter_map(|input| {
            let out = try_run_frame(t.lb.dp.lb().unwrap(), &input).ok()?;
            ran += 1;
            if matches!(out.action, XDP_TX | XDP_REDIRECT) {
                forwarded += 1;
            }
            check(t, &input, &out)
                .err()
                .map(|e| format!("{e}: input {input:02x?}"))
        })
        .take(5)
        .collect();
    assert!(prog_failures.is_empty(), "{prog_failures:#?}");
    assert_eq!(
        verdicts(&t.lb) - before,
        ran,
        "every packet counted under exactly one verdict"
    );
    (ran, forwarded)
}

#[test]
fn fuzz_random_bytes_never_abort_and_pass_untouched() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed());
    let n = fuzz::cases(10_000);
    let inputs = (0..n).map(|_| {
        let len = rng.random_range(14..200);
        let mut p: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half of them look like IP, so the parser gets past Ethernet.
        if rng.random_bool(0.5) {
            let et = if rng.random_bool(0.5) {
                ETH_IPV4
            } else {
                ETH_IPV6
            };
            p[12..14].copy_from_slice(&et.to_be_bytes());
        }
        p
    });
    let (ran, _) = run_all(&mut t, inputs);
    assert_eq!(ran as usize, n);
}

#[test]
fn fuzz_mutated_valid_packets_are_forwarded_correctly_or_counted() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed() ^ 1);
    let seeds = seeds();
    let n = fuzz::cases(20_000);
    let inputs: Vec<Vec<u8>> = (0..n)
        .map(|i| fuzz::mutate(&mut rng, &seeds[i % seeds.len()], 70))
        .collect();
    let (ran, forwarded) = run_all(&mut t, inputs.into_iter());
    // Not only rejections: a good share still goes through, and is checked.
    assert!(
        forwarded > ran as usize / 10,
        "only {forwarded} of {ran} forwarded"
    );
}

#[test]
fn fuzz_syn_flood_from_spoofed_sources_does_not_evict_real_connections() {
    let mut t = target();
    let real: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            tcp4(
                &format!("203.0.113.{}", i % 250 + 1),
                30000 + i,
                VIP_V4,
                80,
                Tcp::Ack,
                b"",
            )
        })
        .collect();
    // Established: the handshake's ACK and the request right after it
    // (here the same packet twice) enter each flow in the connection table.
    for p in &real {
        assert_eq!(t.lb.run(&to_lb(p)).action, XDP_TX);
        assert_eq!(t.lb.run(&to_lb(p)).action, XDP_TX);
    }
    // A flood ten times the test table's size (1024 entries).
    let mut rng = SmallRng::seed_from_u64(seed() ^ 2);
    for _ in 0..10_240 {
        let src = format!("198.18.{}.{}", rng.random::<u8>(), rng.random::<u8>());
        let syn = tcp4(
            &src,
            rng.random_range(1024..=65535),
            VIP_V4,
            80,
            Tcp::Syn,
            b"",
        );
        assert_eq!(t.lb.run(&to_lb(&syn)).action, XDP_TX);
    }
    let survivors = real
        .iter()
        .filter(|p| t.lb.maps.conn(&flow_of(p)).unwrap().is_some())
        .count();
    assert_eq!(
        survivors,
        real.len(),
        "SYNs are not entered, so no real connection is evicted"
    );
    assert_eq!(t.lb.maps.conn_count(usize::MAX), real.len());
}

/// A flood of ten times the connection table, `per_flow` packets per
/// spoofed 5-tuple of `proto`, the real flows idle or speaking every
/// `active_gap` flood packets.
fn spoofed_flood(proto: u8, per_flow: u32, active_gap: Option<u32>) -> (Lb, FloodOutcome) {
    flood(FloodShape {
        proto,
        packets: FLOOD_CONN_ENTRIES * 10,
        per_flow,
        active_gap,
        seed: seed() ^ 3 ^ proto as u64,
        limit: PromotionLimit::default(),
    })
}

/// One packet per spoofed flow: only the probation table churns, and the
/// kernel's element counts agree with a walk over the keys.
fn one_packet_flood_keeps_established_flows(proto: u8) {
    let (lb, o) = spoofed_flood(proto, 1, None);
    let fill = lb.maps.fill(usize::MAX).unwrap();
    assert_eq!(fill.method, FillMethod::Kernel);
    assert_eq!(
        (fill.conns.entries, fill.probation.entries),
        (
            lb.maps.conn_count(usize::MAX) as u64,
            lb.maps.probation_count(usize::MAX) as u64
        )
    );
    assert!(fill.probation.entries <= fill.probation.capacity as u64);
    eprintln!(
        "proto {proto}: {} of {REAL_FLOWS} real flows kept their backend",
        o.idle_kept
    );
    assert!(
        o.idle_kept * 100 >= REAL_FLOWS as usize * 99,
        "only {} of {REAL_FLOWS} real flows kept their backend",
        o.idle_kept
    );
}

#[test]
fn fuzz_spoofed_one_packet_ack_flood_does_not_move_established_tcp_flows() {
    one_packet_flood_keeps_established_flows(PROTO_TCP);
}

#[test]
fn fuzz_spoofed_one_packet_udp_flood_does_not_move_established_udp_flows() {
    one_packet_flood_keeps_established_flows(PROTO_UDP);
}

/// Without a promotion limit a flood that sends two packets per spoofed
/// 5-tuple enters the connection table at half its packet rate: 20,480
/// flows through a table of 4,096. Idle flows are pushed out; a flow that
/// speaks every 4,096 flood packets (2,048 promotions, half the table) is
/// looked up again before the LRU reaches it and keeps its backend.
#[test]
fn fuzz_unlimited_two_packet_flood_moves_idle_flows_and_keeps_flows_that_speak() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let (_, o) = spoofed_flood(proto, 2, Some(FLOOD_CONN_ENTRIES));
        eprintln!("proto {proto}: {o:?}");
        let pairs = (FLOOD_CONN_ENTRIES * 10 / 2) as u64;
        assert!(o.promoted + 10 >= pairs, "{o:?}");
        assert_eq!((o.active_kept, o.active), (500, 500), "{o:?}");
        assert_eq!((o.idle_kept, o.idle), (0, 500), "{o:?}");
    }
}

/// With a promotion limit, the same flood replaces no more of the table
/// than the limit's credit allows, whatever its packet rate: here each CPU
/// may promote 100 flows and earns one more only after 1,000 s, and every
/// idle flow keeps its backend.
#[test]
fn fuzz_promotion_limit_keeps_idle_flows_through_a_two_packet_flood() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let (lb, o) = flood(FloodShape {
            proto,
            packets: FLOOD_CONN_ENTRIES * 10,
            per_flow: 2,
            active_gap: None,
            seed: seed() ^ 4 ^ proto as u64,
            limit: PromotionLimit {
                interval_ns: 1_000_000_000_000,
                burst_ns: 100 * 1_000_000_000_000,
            },
        });
        eprintln!("proto {proto}: {o:?}");
        let cpus = lb.maps.cpus().unwrap() as u64;
        assert!(o.promoted <= cpus * 101, "{o:?}");
        let pairs = (FLOOD_CONN_ENTRIES * 10 / 2) as u64;
        assert_eq!(
            lb.count(Reason::ConnPromotionDeferred) + o.promoted,
            pairs,
            "each spoofed flow's second packet is promoted or deferred"
        );
        assert_eq!((o.idle_kept, o.idle), (REAL_FLOWS as usize, 1000), "{o:?}");
    }
}
