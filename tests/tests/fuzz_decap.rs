//! Hostile tunnel packets through the real decapsulation program
//! (BPF_PROG_TEST_RUN), with a fixed seed: random bytes, and valid tunnels
//! of every shape (both outer and inner families, VLAN tag, IPv4 options,
//! every ECN pair, allowed and disallowed sources, our address or another)
//! mutated by bit flips, truncation, random header bytes and growth. Half
//! of the mutated IPv4 outer headers get their checksum fixed, so that the
//! mutations reach past the checksum check. Whatever arrives:
//! - the verdict is XDP_PASS or XDP_DROP, never XDP_ABORTED;
//! - exactly one decap counter moves, and its kind is the verdict's;
//! - a packet dropped, or passed without decapsulation, is byte-identical;
//! - a decapsulated packet is exactly the input's inner packet behind the
//!   input's link header (with the inner ethertype), its ECN field as RFC
//!   6040 says (and an IPv4 checksum updated to match);
//! - nothing from a disallowed source, to another address, with a bad
//!   outer checksum or fragmented is decapsulated; a whole tunnel to our
//!   address from a disallowed source is dropped as untrusted, and one with
//!   a bad outer IPv4 checksum as such.
//!
//! The expectations are computed here, independently of the program: the
//! allowlist with `IpNet::contains`, ECN with the RFC's table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
use lb_common::stats::{DecapReason, ReasonKind};
use lb_tests::{harness::*, packets::*};
use lb_userspace::decap_sources::IpNet;
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Seed fixed for CI; `FUZZ_SEED` and `FUZZ_CASES` widen a local run.
fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xdeca_95ed)
}

fn cases(default: usize) -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const ALLOWED: [&str; 3] = [OUTER_SRC_V4, "192.0.2.0/25", "2001:db8:100::/64"];
const OURS: [&str; 2] = [BACKEND_V4[0], BACKEND_V6[0]];
/// Outer sources the generator picks from: inside and outside `ALLOWED`.
const SOURCES_V4: [&str; 5] = [
    OUTER_SRC_V4,
    "192.0.2.77",
    "192.0.2.200",
    "198.51.100.3",
    CLIENT_V4,
];
const SOURCES_V6: [&str; 4] = [
    OUTER_SRC_V6,
    "2001:db8:100::99",
    "2001:db8:101::1",
    CLIENT_V6,
];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];

/// RFC 6040 section 4.2, figure 4, indexed [inner][outer] by codepoint
/// (Not-ECT 0, ECT(1) 1, ECT(0) 2, CE 3); `None` is a drop.
const RFC_6040: [[Option<u8>; 4]; 4] = [
    [Some(0), Some(0), Some(0), None],
    [Some(1), Some(1), Some(1), Some(3)],
    [Some(2), Some(1), Some(2), Some(3)],
    [Some(3), Some(3), Some(3), Some(3)],
];

struct Target {
    lb: Lb,
    allowed: Vec<IpNet>,
    ours: Vec<IpAddr>,
}

fn target() -> Target {
    let mut lb = Lb::new();
    lb.accept_tunnels(&OURS, &ALLOWED);
    Target {
        lb,
        allowed: ALLOWED
            .iter()
            .map(|s| lb_userspace::decap_sources::parse_source(s).unwrap())
            .collect(),
        ours: OURS.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn pick<'a>(rng: &mut SmallRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// A valid tunnel frame of a random shape.
fn random_tunnel(rng: &mut SmallRng) -> Vec<u8> {
    let tc = rng.random::<u8>();
    let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
    let inner = if rng.random_bool(0.5) {
        let mut h = ipv4_header(CLIENT_V4, VIP_V4, tc >> 2, tc & 3);
        h.identification = rng.random();
        udp4_with(h, rng.random(), 53, &payload)
    } else {
        udp6_tc(CLIENT_V6, rng.random(), VIP_V6, 53, tc, &payload)
    };
    let proto = if inner[0] >> 4 == 4 { 4 } else { 41 };
    let outer_tc = rng.random::<u8>();
    let outer = if rng.random_bool(0.5) {
        let dst = if rng.random_bool(0.9) {
            BACKEND_V4[0]
        } else {
            BACKEND_V4[1]
        };
        let mut h = Ipv4Header::new(
            inner.len() as u16,
            64,
            IpNumber(proto),
            v4(pick(rng, &SOURCES_V4)),
            v4(dst),
        )
        .unwrap();
        if rng.random_bool(0.2) {
            let words = rng.random_range(1..=10);
            let mut options = vec![1u8; words * 4];
            options[words * 4 - 1] = 0;
            h.options = options.as_slice().try_into().unwrap();
        }
        h.total_len = (h.header_len() + inner.len()) as u16;
        h.dont_fragment = rng.random_bool(0.5);
        h.identification = rng.random();
        h.dscp = IpDscp::try_new(outer_tc >> 2).unwrap();
        h.ecn = IpEcn::try_new(outer_tc & 3).unwrap();
        h.header_checksum = h.calc_header_checksum();
        h.to_bytes().to_vec()
    } else {
        let dst = if rng.random_bool(0.9) {
            BACKEND_V6[0]
        } else {
            BACKEND_V6[1]
        };
        Ipv6Header {
            traffic_class: outer_tc,
            flow_label: Ipv6FlowLabel::try_new(rng.random_range(0..1 << 20)).unwrap(),
            payload_length: inner.len() as u16,
            next_header: IpNumber(proto),
            hop_limit: 64,
            source: v6(pick(rng, &SOURCES_V6)),
            destination: v6(dst),
        }
        .to_bytes()
        .to_vec()
    };
    let vlan = rng.random_bool(0.3).then(|| rng.random_range(1..4095));
    frame(
        HOST_MAC,
        HOP_MAC,
        vlan,
        ether_type_of(&outer),
        &cat(&outer, &inner),
    )
}

fn mutate(rng: &mut SmallRng, packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    match rng.random_range(0..4) {
        // Flip a few bits anywhere.
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
        }
        // Cut it short.
        1 => p.truncate(rng.random_range(0..p.len())),
        // Random bytes over a header field (link to inner header).
        2 => {
            let start = rng.random_range(12..p.len().min(100));
            for b in p.iter_mut().skip(start).take(rng.random_range(1..=4)) {
                *b = rng.random();
            }
        }
        // Grow it with junk (lengths in headers now disagree).
        _ => p.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
    }
    p
}

/// Offset of the IP header and the ethertype, as the program reads them:
/// one 802.1Q or 802.1ad tag at most.
fn link_of(p: &[u8]) -> Option<(usize, u16)> {
    let et = u16::from_be_bytes([*p.get(12)?, *p.get(13)?]);
    if et == 0x8100 || et == 0x88a8 {
        Some((18, u16::from_be_bytes([*p.get(16)?, *p.get(17)?])))
    } else {
        Some((14, et))
    }
}

/// RFC 1071 sum of `header`, folded.
fn ones_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Give the outer IPv4 header of `p`, if it has one whole, a right checksum.
fn fix_outer_checksum(p: &mut [u8]) {
    let Some((l3, ETH_IPV4)) = link_of(p) else {
        return;
    };
    let Some(ihl) = p.get(l3).map(|b| ((b & 0x0f) as usize) * 4) else {
        return;
    };
    if ihl < 20 || p.len() < l3 + ihl {
        return;
    }
    p[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let check = !ones_sum(&p[l3..l3 + ihl]);
    p[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
}

/// What the outer header of a whole tunnel packet says.
struct Tunnel {
    l3: usize,
    outer_len: usize,
    inner_ether_type: u16,
    src: IpAddr,
    dst: IpAddr,
    ecn: u8,
    checksum_ok: bool,
    fragmented: bool,
}

/// The tunnel `p` is, if its outer header is whole, consistent with the
/// frame and names protocol 4 or 41.
fn tunnel_of(p: &[u8]) -> Option<Tunnel> {
    let (l3, et) = link_of(p)?;
    let ip = p.get(l3..)?;
    let inner_type = |proto| match proto {
        4 => Some(ETH_IPV4),
        41 => Some(ETH_IPV6),
        _ => None,
    };
    match et {
        ETH_IPV4 if ip.len() >= 20 => {
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
                return None;
            }
            let src: [u8; 4] = ip[12..16].try_into().unwrap();
            let dst: [u8; 4] = ip[16..20].try_into().unwrap();
            Some(Tunnel {
                l3,
                outer_len: ihl,
                inner_ether_type: inner_type(ip[9])?,
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                ecn: ip[1] & 3,
                checksum_ok: ones_sum(&ip[..ihl]) == 0xffff,
                fragmented: u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0,
            })
        }
        ETH_IPV6 if ip.len() >= 40 => {
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[0] >> 4 != 6 || 40 + payload > ip.len() {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            Some(Tunnel {
                l3,
                outer_len: 40,
                inner_ether_type: inner_type(ip[6])?,
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                ecn: (ip[1] >> 4) & 3,
                checksum_ok: true,
                fragmented: false,
            })
        }
        _ => None,
    }
}

/// The frame the kernel must get from decapsulating `p`, or `None` where
/// RFC 6040 says drop (or the inner header is too short to say).
fn decapsulated(p: &[u8], t: &Tunnel) -> Option<Vec<u8>> {
    let mut inner = p[t.l3 + t.outer_len..].to_vec();
    if t.inner_ether_type == ETH_IPV4 {
        let old_ecn = inner.get(1)? & 3;
        let ecn = RFC_6040[old_ecn as usize][t.ecn as usize]?;
        if inner.len() >= 12 && ecn != old_ecn {
            let old = u16::from_be_bytes([inner[0], inner[1]]);
            inner[1] = (inner[1] & !3) | ecn;
            let new = u16::from_be_bytes([inner[0], inner[1]]);
            // RFC 1624, equation 3.
            let check = u16::from_be_bytes([inner[10], inner[11]]);
            let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            inner[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
    } else {
        let old_ecn = (inner.get(1)? >> 4) & 3;
        let ecn = RFC_6040[old_ecn as usize][t.ecn as usize]?;
        inner[1] = (inner[1] & !0x30) | (ecn << 4);
    }
    let mut out = p[..t.l3 - 2].to_vec();
    out.extend_from_slice(&t.inner_ether_type.to_be_bytes());
    out.extend_from_slice(&inner);
    Some(out)
}

fn counts(lb: &Lb) -> Vec<u64> {
    DecapReason::ALL
        .iter()
        .map(|r| lb.decap_count(*r))
        .collect()
}

/// Check one run against the rules in the module comment.
fn check(
    t: &Target,
    input: &[u8],
    out: &Outcome,
    counted: &[(DecapReason, u64)],
) -> Result<(), String> {
    let [(reason, 1)] = counted else {
        return Err(format!("counted {counted:?}, not one verdict"));
    };
    let want_action = match reason.kind() {
        ReasonKind::Dropped => XDP_DROP,
        _ => XDP_PASS,
    };
    if out.action != want_action {
        return Err(format!("{reason:?} with action {}", out.action));
    }
    let tunnel = tunnel_of(input);
    let allowed = |a: &IpAddr| t.allowed.iter().any(|n| n.contains(a));
    if *reason == DecapReason::Decapsulated {
        let Some(tun) = tunnel else {
            return Err("decapsulated what is no whole tunnel".into());
        };
        if !allowed(&tun.src) {
            return Err(format!("decapsulated a tunnel from {}", tun.src));
        }
        if !t.ours.contains(&tun.dst) || !tun.checksum_ok || tun.fragmented {
            return Err("decapsulated a tunnel not ours, bad or fragmented".into());
        }
        if Some(&out.data) != decapsulated(input, &tun).as_ref() {
            return Err(format!(
                "decapsulated wrongly: got {:02x?}, want {:02x?}",
                out.data,
                decapsulated(input, &tun)
            ));
        }
        return Ok(());
    }
    if out.data != input {
        return Err(format!("{reason:?}, yet the packet changed"));
    }
    if let Some(tun) = &tunnel {
        let want = if !tun.checksum_ok {
            Some(DecapReason::DropBadOuterChecksum)
        } else if t.ours.contains(&tun.dst) && !allowed(&tun.src) {
            Some(DecapReason::DropUntrustedSource)
        } else {
            None
        };
        if want.is_some_and(|w| w != *reason) {
            return Err(format!("counted {reason:?}, expected {want:?}"));
        }
    }
    if *reason == DecapReason::DropCeNotEct {
        let tun = tunnel.as_ref().ok_or("CE drop of no tunnel")?;
        if decapsulated(input, tun).is_some() {
            return Err("dropped for CE, but the inner packet could carry it".into());
        }
    }
    Ok(())
}

/// Run every input; returns how many were run and the count per reason.
fn run_all(t: &mut Target, inputs: impl Iterator<Item = Vec<u8>>) -> (usize, Vec<u64>) {
    let first = counts(&t.lb);
    let mut before = first.clone();
    let mut ran = 0;
    let failures: Vec<String> = inputs
        .filter_map(|input| {
            let out = try_run_frame(t.lb.dp.decap().unwrap(), &input).ok()?;
            ran += 1;
            let after = counts(&t.lb);
            let counted: Vec<(DecapReason, u64)> = DecapReason::ALL
                .iter()
                .zip(before.iter().zip(&after))
                .filter(|(_, (b, a))| a != b)
                .map(|(r, (b, a))| (*r, a - b))
                .collect();
            before = after;
            check(t, &input, &out, &counted)
                .err()
                .map(|e| format!("{e}: input {input:02x?}"))
        })
        .take(5)
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let by_reason = first.iter().zip(&before).map(|(f, b)| b - f).collect();
    (ran, by_reason)
}

fn share(by_reason: &[u64], reason: DecapReason) -> u64 {
    by_reason[reason as usize]
}

#[test]
fn fuzz_decap_random_bytes_never_abort_and_are_counted_once() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed());
    let n = cases(10_000);
    let inputs = (0..n).map(|_| {
        let len = rng.random_range(14..200);
        let mut p: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Most of them look like IP carrying a tunnel, so the program gets
        // past Ethernet and the protocol check.
        if rng.random_bool(0.8) && len >= 54 {
            if rng.random_bool(0.5) {
                p[12..14].copy_from_slice(&ETH_IPV4.to_be_bytes());
                p[14] = 0x45;
                p[23] = if rng.random_bool(0.5) { 4 } else { 41 };
            } else {
                p[12..14].copy_from_slice(&ETH_IPV6.to_be_bytes());
                p[14] = 0x60 | (p[14] & 0x0f);
                p[20] = if rng.random_bool(0.5) { 4 } else { 41 };
            }
        }
        p
    });
    let (ran, _) = run_all(&mut t, inputs);
    assert_eq!(ran, n);
}

#[test]
fn fuzz_decap_mutated_tunnels_are_decapsulated_exactly_or_counted_untouched() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed() ^ 1);
    let n = cases(20_000);
    let inputs: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let tunnel = random_tunnel(&mut rng);
            if rng.random_bool(0.2) {
                return tunnel;
            }
            let mut p = mutate(&mut rng, &tunnel);
            if rng.random_bool(0.5) {
                fix_outer_checksum(&mut p);
            }
            p
        })
        .collect();
    let (ran, by_reason) = run_all(&mut t, inputs.into_iter());
    // Not only rejections: a good share of each outcome is reached, and
    // was checked.
    for reason in [
        DecapReason::Decapsulated,
        DecapReason::DropUntrustedSource,
        DecapReason::DropBadOuterChecksum,
        DecapReason::DropCeNotEct,
        DecapReason::PassMalformed,
    ] {
        assert!(
            share(&by_reason, reason) > ran as u64 / 500,
            "only {} of {ran} counted {reason:?}",
            share(&by_reason, reason)
        );
    }
}
