//! Hostile tunnel packets through the real decapsulation program
//! (BPF_PROG_TEST_RUN), with a fixed seed: random bytes, and valid tunnels
//! of every shape (both outer and inner families, VLAN tag, IPv4 options,
//! IPv6 extension headers, fragments, every ECN pair, allowed and
//! disallowed sources, our address or another) mutated by bit flips,
//! truncation, random header bytes and growth. Half of the mutated IPv4
//! outer headers get their checksum fixed, so that the mutations reach
//! past the checksum check. Every seed tunnel that goes in unmutated gets
//! exactly the verdict, counter and bytes its shape calls for: an allowed
//! tunnel to our address is decapsulated. Whatever arrives:
//! - the verdict is XDP_PASS or XDP_DROP, never XDP_ABORTED;
//! - exactly one decap counter moves, and its kind is the verdict's;
//! - a packet dropped, or passed without decapsulation, is byte-identical;
//! - a decapsulated packet is exactly the input's inner packet behind the
//!   input's link header (with the inner ethertype), its ECN field as RFC
//!   6040 says (and an IPv4 checksum updated to match);
//! - nothing from a disallowed source, to another address, with a bad
//!   outer checksum, fragmented, routed on past our address, or with an
//!   inner packet reaching past the outer one is decapsulated; a tunnel
//!   to our address from a disallowed source (whole, fragmented, or behind
//!   IPv6 extension headers that may hide one) is dropped as untrusted,
//!   and one with a bad outer IPv4 checksum as such;
//! - the test run itself succeeds for every frame but one shorter than an
//!   Ethernet header, which the kernel refuses to run (counted).
//!
//! With second chance on (GUE on its port, peers given), GUE seeds of
//! every shape (hop or none, a peer hop or not, trusted, peer or foreign
//! source) get their exact verdict unmutated, and whatever arrives is
//! sent on (XDP_TX) only to a peer, from the address it came to, with an
//! empty hop list, and only if it came from a trusted source.
//!
//! The expectations are computed here, independently of the program: the
//! allowlist with `IpNet::contains`, ECN with the RFC's table, the IPv6
//! chain by a walk written from RFC 8200.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
use lb_common::stats::{DecapReason, ReasonKind};
use lb_tests::{fuzz, harness::*, packets::*};
use lb_userspace::decap_sources::IpNet;
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Seed fixed for CI; `FUZZ_SEED` and `FUZZ_CASES` widen a local run.
fn seed() -> u64 {
    fuzz::seed(0xdeca_95ed)
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

/// A valid tunnel frame of a random shape, and what the program must make
/// of it: the verdict's counter and the frame it leaves.
struct Seed {
    frame: Vec<u8>,
    reason: DecapReason,
    data: Vec<u8>,
}

/// Extension headers an IPv6 outer header may carry in front of the tunnel.
fn random_chain(rng: &mut SmallRng) -> Vec<(u8, Vec<u8>)> {
    (0..rng.random_range(1..=3))
        .map(|_| match rng.random_range(0..8) {
            0 | 1 => hop_by_hop(),
            2 | 3 => dest_opts(),
            4 => routing(),
            5 => atomic_fragment(rng.random()),
            // A waypoint: one segment left.
            6 => (43, vec![0, 253, 1, 0, 0, 0, 0]),
            _ => fragment(8 * rng.random_range(0..4), rng.random(), rng.random()),
        })
        .collect()
}

fn random_tunnel(rng: &mut SmallRng, t: &Target) -> Seed {
    let tc = rng.random::<u8>();
    let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
    let v4_inner = rng.random_bool(0.5);
    let (ident, sport) = (rng.random(), rng.random());
    // The inner packet with ECN field `ecn`, built whole (checksums too).
    let inner_with = |ecn: u8| {
        if v4_inner {
            let mut h = ipv4_header(CLIENT_V4, VIP_V4, tc >> 2, ecn);
            h.identification = ident;
            udp4_with(h, sport, 53, &payload)
        } else {
            udp6_tc(CLIENT_V6, sport, VIP_V6, 53, (tc & !3) | ecn, &payload)
        }
    };
    let inner = inner_with(tc & 3);
    let proto = if v4_inner { 4 } else { 41 };
    let outer_tc = rng.random::<u8>();
    let ours = rng.random_bool(0.9);
    let (src, dst, packet, fragmented, passes_through);
    if rng.random_bool(0.5) {
        src = pick(rng, &SOURCES_V4);
        dst = if ours { BACKEND_V4[0] } else { BACKEND_V4[1] };
        let mut h =
            Ipv4Header::new(inner.len() as u16, 64, IpNumber(proto), v4(src), v4(dst)).unwrap();
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
        packet = cat(&h.to_bytes(), &inner);
        (fragmented, passes_through) = (false, false);
    } else {
        src = pick(rng, &SOURCES_V6);
        dst = if ours { BACKEND_V6[0] } else { BACKEND_V6[1] };
        let outer = Ipv6Header {
            traffic_class: outer_tc,
            flow_label: Ipv6FlowLabel::try_new(rng.random_range(0..1 << 20)).unwrap(),
            payload_length: inner.len() as u16,
            next_header: IpNumber(proto),
            hop_limit: 64,
            source: v6(src),
            destination: v6(dst),
        }
        .to_bytes();
        let chain = if rng.random_bool(0.4) {
            random_chain(rng)
        } else {
            Vec::new()
        };
        // Headers after a later fragment are its payload: unseen.
        let seen = chain
            .iter()
            .position(|(kind, b)| *kind == 44 && b[1..3] != [0, 0] && b[1..3] != [0, 1])
            .map_or(chain.len(), |i| i + 1);
        fragmented = chain
            .iter()
            .any(|(kind, b)| *kind == 44 && b[1..3] != [0, 0]);
        passes_through = chain[..seen]
            .iter()
            .any(|(kind, b)| *kind == 43 && b[2] != 0);
        packet = if chain.is_empty() {
            cat(&outer, &inner)
        } else {
            with_ext_headers(&cat(&outer, &inner), &chain)
        };
    }
    let vlan = rng.random_bool(0.3).then(|| rng.random_range(1..4095));
    let input = frame(HOST_MAC, HOP_MAC, vlan, ether_type_of(&packet), &packet);
    let src: IpAddr = src.parse().unwrap();
    let ecn = RFC_6040[(tc & 3) as usize][(outer_tc & 3) as usize];
    let reason = if !ours {
        DecapReason::PassNotOurAddress
    } else if !t.allowed.iter().any(|n| n.contains(&src)) {
        DecapReason::DropUntrustedSource
    } else if fragmented {
        DecapReason::PassMalformed
    } else if passes_through {
        DecapReason::PassNotOurAddress
    } else if ecn.is_none() {
        DecapReason::DropCeNotEct
    } else {
        DecapReason::Decapsulated
    };
    let data = match ecn {
        Some(ecn) if reason == DecapReason::Decapsulated => {
            let inner = inner_with(ecn);
            frame(HOST_MAC, HOP_MAC, vlan, ether_type_of(&inner), &inner)
        }
        _ => input.clone(),
    };
    Seed {
        frame: input,
        reason,
        data,
    }
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
    /// The outer header with its options or extension headers.
    outer_len: usize,
    /// Frame offset where the outer packet ends.
    end: usize,
    /// `None`: an IPv6 chain that may hide a tunnel but cannot be walked.
    inner_ether_type: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    ecn: u8,
    checksum_ok: bool,
    fragmented: bool,
    /// A routing header with segments left.
    passes_through: bool,
}

/// The program walks at most this many IPv6 extension headers.
const MAX_EXT_HEADERS: usize = 4;

fn is_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 60)
}

/// Where the IPv6 extension-header chain of `ip` (a whole IPv6 packet of
/// `end` bytes) leads, as RFC 8200 lays it out: `(next header, offset,
/// fragmented, later fragment, passes through)`, or `None` when it cannot
/// be walked to its end.
fn ipv6_chain(ip: &[u8], end: usize) -> Option<(u8, usize, bool, bool, bool)> {
    let (mut next, mut off) = (ip[6], 40);
    let (mut fragmented, mut later, mut passes) = (false, false, false);
    for _ in 0..MAX_EXT_HEADERS {
        if !is_ext(next) {
            break;
        }
        if off + 8 > end {
            return None;
        }
        let h = &ip[off..off + 8];
        if next == 44 {
            let offset_flags = u16::from_be_bytes([h[2], h[3]]);
            fragmented |= offset_flags & 0xfff9 != 0;
            later = offset_flags >> 3 != 0;
            next = h[0];
            off += 8;
            if later {
                break;
            }
        } else {
            passes |= next == 43 && h[3] != 0;
            next = h[0];
            off += (h[1] as usize + 1) * 8;
        }
    }
    if !later && (off > end || is_ext(next)) {
        return None;
    }
    Some((next, off, fragmented, later, passes))
}

/// The tunnel `p` is, if its outer header is whole, consistent with the
/// frame and names protocol 4 or 41 (an IPv6 one behind its extension
/// headers), or may hide one behind extension headers it cannot show.
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
                end: l3 + total,
                inner_ether_type: Some(inner_type(ip[9])?),
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                ecn: ip[1] & 3,
                checksum_ok: ones_sum(&ip[..ihl]) == 0xffff,
                fragmented: u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0,
                passes_through: false,
            })
        }
        ETH_IPV6 if ip.len() >= 40 => {
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if ip[0] >> 4 != 6 || 40 + payload > ip.len() {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            let mut t = Tunnel {
                l3,
                outer_len: 40,
                end: l3 + 40 + payload,
                inner_ether_type: None,
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                ecn: (ip[1] >> 4) & 3,
                checksum_ok: true,
                fragmented: false,
                passes_through: false,
            };
            if !is_ext(ip[6]) {
                t.inner_ether_type = Some(inner_type(ip[6])?);
                return Some(t);
            }
            let Some((next, off, fragmented, later, passes)) = ipv6_chain(ip, 40 + payload) else {
                return Some(t);
            };
            t.inner_ether_type = inner_type(next);
            if t.inner_ether_type.is_none() && !(later && is_ext(next)) {
                return None;
            }
            t.outer_len = off;
            t.fragmented = fragmented;
            t.passes_through = passes;
            Some(t)
        }
        _ => None,
    }
}

/// The inner packet of `t` in `p` is whole, and ends within the outer one.
fn inner_fits(p: &[u8], t: &Tunnel) -> bool {
    let off = t.l3 + t.outer_len;
    let Some(inner) = p.get(off..t.end) else {
        return false;
    };
    match t.inner_ether_type {
        Some(ETH_IPV4) if inner.len() >= 20 => {
            let ihl = ((inner[0] & 0x0f) as usize) * 4;
            let total = u16::from_be_bytes([inner[2], inner[3]]) as usize;
            inner[0] >> 4 == 4 && ihl >= 20 && total >= ihl && total <= inner.len()
        }
        Some(ETH_IPV6) if inner.len() >= 40 => {
            let payload = u16::from_be_bytes([inner[4], inner[5]]) as usize;
            inner[0] >> 4 == 6 && 40 + payload <= inner.len()
        }
        _ => false,
    }
}

/// The frame the kernel must get from decapsulating `p`, or `None` where
/// RFC 6040 says drop (or the inner header is too short to say).
fn decapsulated(p: &[u8], t: &Tunnel) -> Option<Vec<u8>> {
    let inner_ether_type = t.inner_ether_type?;
    let mut inner = p[t.l3 + t.outer_len..].to_vec();
    if inner_ether_type == ETH_IPV4 {
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
    out.extend_from_slice(&inner_ether_type.to_be_bytes());
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
        if !t.ours.contains(&tun.dst)
            || !tun.checksum_ok
            || tun.fragmented
            || tun.passes_through
            || !inner_fits(input, &tun)
        {
            return Err(
                "decapsulated a tunnel not ours, bad, fragmented, routed on or overlong".into(),
            );
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

/// An input, and for an unmutated seed the exact outcome it must get.
struct Input {
    frame: Vec<u8>,
    exact: Option<(DecapReason, Outcome)>,
}

/// What `run_all` saw.
struct Ran {
    /// Inputs the program ran on.
    ran: usize,
    /// Frames shorter than an Ethernet header, which the kernel refuses to
    /// run a program on.
    refused_short: usize,
    /// Count per reason, indexed by `DecapReason`.
    by_reason: Vec<u64>,
}

/// Run every input and check it; a test run that fails on a frame at
/// least an Ethernet header long is a failure, not a skip.
fn run_all(t: &mut Target, inputs: impl Iterator<Item = Input>) -> Ran {
    let first = counts(&t.lb);
    let mut before = first.clone();
    let (mut ran, mut refused_short) = (0, 0);
    let mut failures = Vec::new();
    for input in inputs {
        let out = match try_run_frame(t.lb.dp.decap().unwrap(), &input.frame) {
            Ok(out) => out,
            Err(_) if input.frame.len() < 14 => {
                refused_short += 1;
                continue;
            }
            Err(e) => {
                failures.push(format!("test run failed: {e}: input {:02x?}", input.frame));
                continue;
            }
        };
        ran += 1;
        let after = counts(&t.lb);
        let counted: Vec<(DecapReason, u64)> = DecapReason::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, (b, a))| (*r, a - b))
            .collect();
        before = after;
        let verdict = match &input.exact {
            Some((reason, want)) if (&out, counted.as_slice()) != (want, &[(*reason, 1)][..]) => {
                Err(format!(
                    "seed tunnel: got action {} counting {counted:?}, output {:02x?}; want action {} counting {reason:?}, output {:02x?}",
                    out.action, out.data, want.action, want.data
                ))
            }
            _ => check(t, &input.frame, &out, &counted),
        };
        if let Err(e) = verdict {
            failures.push(format!("{e}: input {:02x?}", input.frame));
        }
    }
    failures.truncate(5);
    assert!(failures.is_empty(), "{failures:#?}");
    let by_reason = first.iter().zip(&before).map(|(f, b)| b - f).collect();
    Ran {
        ran,
        refused_short,
        by_reason,
    }
}

fn share(by_reason: &[u64], reason: DecapReason) -> u64 {
    by_reason[reason as usize]
}

#[test]
fn fuzz_decap_random_bytes_never_abort_and_are_counted_once() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed());
    let n = fuzz::cases(10_000);
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
        Input {
            frame: p,
            exact: None,
        }
    });
    let ran = run_all(&mut t, inputs);
    assert_eq!((ran.ran, ran.refused_short), (n, 0));
}

#[test]
fn fuzz_decap_mutated_tunnels_are_decapsulated_exactly_or_counted_untouched() {
    let mut t = target();
    let mut rng = SmallRng::seed_from_u64(seed() ^ 1);
    let n = fuzz::cases(20_000);
    let mut seeds = [0u64; DecapReason::ALL.len()];
    let mut short = 0;
    let inputs: Vec<Input> = (0..n)
        .map(|_| {
            let seed = random_tunnel(&mut rng, &t);
            if rng.random_bool(0.2) {
                seeds[seed.reason as usize] += 1;
                let action = match seed.reason.kind() {
                    ReasonKind::Dropped => XDP_DROP,
                    _ => XDP_PASS,
                };
                let want = Outcome {
                    action,
                    data: seed.data,
                };
                return Input {
                    frame: seed.frame,
                    exact: Some((seed.reason, want)),
                };
            }
            let mut p = fuzz::mutate(&mut rng, &seed.frame, 100);
            if rng.random_bool(0.5) {
                fix_outer_checksum(&mut p);
            }
            short += (p.len() < 14) as usize;
            Input {
                frame: p,
                exact: None,
            }
        })
        .collect();
    let ran = run_all(&mut t, inputs.into_iter());
    eprintln!(
        "{} run, {} shorter than an Ethernet header refused by the kernel",
        ran.ran, ran.refused_short
    );
    assert_eq!(ran.ran + ran.refused_short, n);
    assert!(ran.refused_short <= short);
    // The unmutated seeds reached every outcome a whole tunnel can have.
    for reason in [
        DecapReason::Decapsulated,
        DecapReason::DropUntrustedSource,
        DecapReason::DropCeNotEct,
        DecapReason::PassNotOurAddress,
        DecapReason::PassMalformed,
    ] {
        assert!(
            seeds[reason as usize] > 10,
            "only {} unmutated seeds expected {reason:?}",
            seeds[reason as usize]
        );
    }
    let (ran, by_reason) = (ran.ran, ran.by_reason);
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

// ---------------------------------------------------------------------------
// GUE (second chance): the program also parses UDP to the GUE port, and
// may send a packet on (XDP_TX). Whatever arrives, it sends on only to a
// peer, only from one of our addresses, only what came from a source it
// trusts, and only with no hop left.

const GUE_PORT: u16 = lb_common::gue::DEFAULT_GUE_PORT;
const PEERS: [&str; 2] = [BACKEND_V4[1], BACKEND_V6[1]];

/// A GUE tunnel of a random shape (outer family, source, hop or none, a
/// peer hop or not, inner family) carrying a TCP ACK no socket here has,
/// and what it must get unmutated: the verdict's counter and action.
fn random_gue(rng: &mut SmallRng, t: &Target, peers: &[IpNet]) -> (Vec<u8>, DecapReason, u32) {
    let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
    let inner = if rng.random_bool(0.5) {
        tcp4(
            CLIENT_V4,
            rng.random_range(1024..u16::MAX),
            VIP_V4,
            80,
            Tcp::Ack,
            &payload,
        )
    } else {
        tcp6(
            CLIENT_V6,
            rng.random_range(1024..u16::MAX),
            VIP_V6,
            80,
            Tcp::Ack,
            &payload,
        )
    };
    let proto = if inner[0] >> 4 == 4 { 4 } else { 41 };
    let v4_outer = rng.random_bool(0.5);
    let (src, dst, hop) = if v4_outer {
        let src = pick(
            rng,
            &[SOURCES_V4[0], SOURCES_V4[1], SOURCES_V4[4], PEERS[0]],
        );
        let hop = pick(rng, &["", PEERS[0], BACKEND_V4[2]]);
        (src, BACKEND_V4[0], hop)
    } else {
        let src = pick(rng, &[SOURCES_V6[0], SOURCES_V6[2], PEERS[1]]);
        let hop = pick(rng, &["", PEERS[1], BACKEND_V6[2]]);
        (src, BACKEND_V6[0], hop)
    };
    let hop_bytes = match (hop, v4_outer) {
        ("", _) => Vec::new(),
        (h, true) => v4(h).to_vec(),
        (h, false) => v6(h).to_vec(),
    };
    let mut udp = Vec::new();
    udp.extend_from_slice(&rng.random_range(49152..=u16::MAX).to_be_bytes());
    udp.extend_from_slice(&GUE_PORT.to_be_bytes());
    udp.extend_from_slice(&((16 + hop_bytes.len() + inner.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[
        0,
        0,
        ((4 + hop_bytes.len()) / 4) as u8,
        proto,
        0,
        0,
        0x4c,
        0x42,
    ]);
    udp.extend_from_slice(&[u8::from(!hop.is_empty()), 0]);
    udp.extend_from_slice(&hop_bytes);
    udp.extend_from_slice(&inner);
    let packet = if v4_outer {
        let mut h = Ipv4Header::new(udp.len() as u16, 64, IpNumber::UDP, v4(src), v4(dst)).unwrap();
        h.header_checksum = h.calc_header_checksum();
        cat(&h.to_bytes(), &udp)
    } else {
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::try_new(rng.random_range(0..1 << 20)).unwrap(),
            payload_length: udp.len() as u16,
            next_header: IpNumber::UDP,
            hop_limit: 64,
            source: v6(src),
            destination: v6(dst),
        };
        cat(&h.to_bytes(), &udp)
    };
    let vlan = rng.random_bool(0.3).then(|| rng.random_range(1..4095));
    let input = frame(HOST_MAC, HOP_MAC, vlan, ether_type_of(&packet), &packet);
    let src: IpAddr = src.parse().unwrap();
    // A hop left only from a load balancer; none left from one or a peer.
    let from_lb = t.allowed.iter().any(|n| n.contains(&src));
    let from_peer = peers.iter().any(|n| n.contains(&src));
    let (reason, action) = if !(from_lb || from_peer) {
        (DecapReason::DropUntrustedSource, XDP_DROP)
    } else if hop.is_empty() {
        (DecapReason::SecondChanceReceived, XDP_PASS)
    } else if !from_lb {
        (DecapReason::DropUntrustedSource, XDP_DROP)
    } else if peers
        .iter()
        .any(|n| n.contains(&hop.parse::<IpAddr>().unwrap()))
    {
        (DecapReason::SecondChanceForwarded, XDP_TX)
    } else {
        (DecapReason::DropSecondHopNotPeer, XDP_DROP)
    };
    (input, reason, action)
}

/// The outer source and destination of the IP packet in `p`, and the
/// frame offset of what follows the fixed outer header.
fn outer_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    let (l3, et) = link_of(p)?;
    let ip = p.get(l3..)?;
    match et {
        ETH_IPV4 if ip.len() >= 20 => {
            let src: [u8; 4] = ip[12..16].try_into().unwrap();
            let dst: [u8; 4] = ip[16..20].try_into().unwrap();
            Some((
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                l3 + 20,
            ))
        }
        ETH_IPV6 if ip.len() >= 40 => {
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            Some((
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                l3 + 40,
            ))
        }
        _ => None,
    }
}

/// The rules for a run with GUE on.
fn check_gue(
    t: &Target,
    peers: &[IpNet],
    input: &[u8],
    out: &Outcome,
    counted: &[(DecapReason, u64)],
) -> Result<(), String> {
    let [(reason, 1)] = counted else {
        return Err(format!("counted {counted:?}, not one verdict"));
    };
    let want_action = match reason.kind() {
        ReasonKind::Dropped => XDP_DROP,
        ReasonKind::Forwarded => XDP_TX,
        _ => XDP_PASS,
    };
    if out.action != want_action {
        return Err(format!("{reason:?} with action {}", out.action));
    }
    let stripped = matches!(
        reason,
        DecapReason::Decapsulated
            | DecapReason::SecondChanceReceived
            | DecapReason::SecondChanceLocal
    );
    let trusted = |a: &IpAddr| t.allowed.iter().chain(peers).any(|n| n.contains(a));
    let from_lb = |a: &IpAddr| t.allowed.iter().any(|n| n.contains(a));
    if *reason == DecapReason::SecondChanceForwarded {
        let (in_src, in_dst, _) = outer_addrs(input).ok_or("sent on what has no outer header")?;
        let (src, dst, udp) = outer_addrs(&out.data).ok_or("sent on without an outer header")?;
        if !from_lb(&in_src) || !t.ours.contains(&in_dst) {
            return Err(format!("sent on a packet from {in_src} to {in_dst}"));
        }
        if !peers.iter().any(|n| n.contains(&dst)) {
            return Err(format!("sent on to {dst}, not a peer"));
        }
        if src != in_dst {
            return Err(format!("sent on from {src}, not from {in_dst}"));
        }
        let h = out.data.get(udp..udp + 16).ok_or("no GUE header sent on")?;
        if u16::from_be_bytes([h[2], h[3]]) != GUE_PORT || h[14] != 0 || h[8] != 1 {
            return Err(format!(
                "sent on with UDP/GUE header {h:02x?}, not an empty hop list"
            ));
        }
    } else if stripped {
        let (src, dst, _) = outer_addrs(input).ok_or("stripped what has no outer header")?;
        if !trusted(&src) || !t.ours.contains(&dst) {
            return Err(format!("stripped a packet from {src} to {dst}"));
        }
        // Kept with a hop left: only a load balancer sends those.
        if *reason == DecapReason::SecondChanceLocal && !from_lb(&src) {
            return Err(format!("kept a packet with a hop from {src}"));
        }
        if out.data.len() >= input.len() {
            return Err("stripped, yet no shorter".into());
        }
    } else if out.data != input {
        return Err(format!("{reason:?}, yet the packet changed"));
    }
    Ok(())
}

#[test]
fn fuzz_decap_mutated_gue_is_sent_on_only_to_peers_from_trusted_sources() {
    let mut t = target();
    let peers: Vec<IpNet> = PEERS
        .iter()
        .map(|p| lb_userspace::decap_sources::parse_peer(p).unwrap())
        .collect();
    t.lb.maps.set_decap_peers(&peers).unwrap();
    t.lb.maps
        .set_second_chance(&lb_common::maps::SecondChance {
            gue_port: GUE_PORT,
            _pad: [0; 2],
        })
        .unwrap();
    // No sockets, no forwarding: a packet with a peer hop is sent on,
    // back to the MAC it came from.
    let ns = lb_tests::netns::Netns::new("fuzz-gue");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=0"]);
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    let mut rng = SmallRng::seed_from_u64(seed() ^ 2);
    let n = fuzz::cases(20_000);
    let mut seeds = [0u64; DecapReason::ALL.len()];
    let mut by_reason = [0u64; DecapReason::ALL.len()];
    let mut failures = Vec::new();
    let mut before = counts(&t.lb);
    for _ in 0..n {
        let (frame, reason, action) = random_gue(&mut rng, &t, &peers);
        let exact = rng.random_bool(0.2);
        let input = if exact {
            seeds[reason as usize] += 1;
            frame
        } else {
            let mut p = fuzz::mutate(&mut rng, &frame, 100);
            if rng.random_bool(0.5) {
                fix_outer_checksum(&mut p);
            }
            p
        };
        let prog = t.lb.dp.decap().unwrap();
        let out = match ns.enter(|| try_run_frame(prog, &input)) {
            Ok(out) => out,
            Err(_) if input.len() < 14 => continue,
            Err(e) => {
                failures.push(format!("test run failed: {e}: input {input:02x?}"));
                continue;
            }
        };
        let after = counts(&t.lb);
        let counted: Vec<(DecapReason, u64)> = DecapReason::ALL
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, (b, a))| (*r, a - b))
            .collect();
        before = after;
        for (r, k) in &counted {
            by_reason[*r as usize] += k;
        }
        let verdict = if exact && (out.action, counted.as_slice()) != (action, &[(reason, 1)][..]) {
            Err(format!(
                "seed: got action {} counting {counted:?}; want {action} counting {reason:?}",
                out.action
            ))
        } else {
            check_gue(&t, &peers, &input, &out, &counted)
        };
        if let Err(e) = verdict {
            failures.push(format!("{e}: input {input:02x?}"));
        }
    }
    failures.truncate(5);
    assert!(failures.is_empty(), "{failures:#?}");
    for reason in [
        DecapReason::SecondChanceReceived,
        DecapReason::SecondChanceForwarded,
        DecapReason::DropSecondHopNotPeer,
        DecapReason::DropUntrustedSource,
    ] {
        assert!(
            seeds[reason as usize] > 10,
            "only {} unmutated seeds expected {reason:?}",
            seeds[reason as usize]
        );
        assert!(
            by_reason[reason as usize] > n as u64 / 500,
            "only {} of {n} counted {reason:?}",
            by_reason[reason as usize]
        );
    }
    assert!(by_reason[DecapReason::PassMalformed as usize] > n as u64 / 500);
}
