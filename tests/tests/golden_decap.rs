//! Golden packets for `lb_decap`, the backend-side tunnel terminator: the
//! outer header of a tunnel to one of our addresses from an allowed source
//! comes off, the link header (MACs, VLAN tag) stays with the ethertype of
//! the inner packet, and ECN is decapsulated as RFC 6040 says. Tunnels from
//! other sources, with a bad outer checksum, or with a congestion mark the
//! inner packet cannot carry are dropped; anything else goes to the kernel
//! untouched.

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
use lb_common::{Reason, flow::*, stats::DecapReason};
use lb_tests::{harness::*, packets::*};
use lb_userspace::decap_sources::{DecapSources, parse_source};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// The backend host's own NIC, and the router that delivers to it.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfd];

fn decap_counts(lb: &Lb) -> Vec<u64> {
    DecapReason::ALL
        .iter()
        .map(|r| lb.decap_count(*r))
        .collect()
}

/// The decap counters that changed between two snapshots, with how much.
fn decap_moved(before: &[u64], after: &[u64]) -> Vec<(DecapReason, u64)> {
    DecapReason::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect()
}

/// Run the decap program and check verdict, whole output, and that
/// exactly `reason` was counted.
fn expect_outcome(lb: &mut Lb, frame: &[u8], expected: Outcome, reason: DecapReason, what: &str) {
    let before = decap_counts(lb);
    let out = lb.run_decap(frame);
    let got = decap_moved(&before, &decap_counts(lb));
    assert_eq!((out, got), (expected, vec![(reason, 1)]), "{what}");
}

/// Expect `frame` passed up as `data`, counted under `reason`.
fn expect_decap(lb: &mut Lb, frame: &[u8], data: Vec<u8>, reason: DecapReason, what: &str) {
    let expected = Outcome {
        action: XDP_PASS,
        data,
    };
    expect_outcome(lb, frame, expected, reason, what);
}

/// Expect `frame` passed as it came, counted under `reason`.
fn expect_untouched(lb: &mut Lb, frame: &[u8], reason: DecapReason, what: &str) {
    expect_decap(lb, frame, frame.to_vec(), reason, what);
}

/// Expect `frame` dropped as it came, counted under `reason`.
fn expect_dropped(lb: &mut Lb, frame: &[u8], reason: DecapReason, what: &str) {
    let expected = Outcome {
        action: XDP_DROP,
        data: frame.to_vec(),
    };
    expect_outcome(lb, frame, expected, reason, what);
}

/// An LB whose decap program accepts tunnels to the first IPv4 and the
/// first IPv6 backend address, from the LB's own tunnel sources.
fn backend_host() -> Lb {
    let mut lb = Lb::new();
    lb.accept_tunnels(
        &[BACKEND_V4[0], BACKEND_V6[0]],
        &[OUTER_SRC_V4, OUTER_SRC_V6],
    );
    lb
}

/// As `backend_host`, accepting tunnels only from `sources`.
fn backend_host_allowing(sources: &[&str]) -> Lb {
    let mut lb = Lb::new();
    lb.accept_tunnels(&[BACKEND_V4[0], BACKEND_V6[0]], sources);
    lb
}

fn tunnel_proto(inner: &[u8]) -> u8 {
    if inner[0] >> 4 == 4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    }
}

/// An outer IPv4 header to `dst` for `inner`, with TOS `tos` and IPv4
/// options `options` (a multiple of 4 bytes).
fn tunnel_v4(dst: &str, inner: &[u8], tos: u8, options: &[u8]) -> Vec<u8> {
    tunnel_v4_from(OUTER_SRC_V4, dst, inner, tos, options)
}

/// `tunnel_v4` from outer source `src`.
fn tunnel_v4_from(src: &str, dst: &str, inner: &[u8], tos: u8, options: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(
        inner.len() as u16,
        64,
        IpNumber(tunnel_proto(inner)),
        v4(src),
        v4(dst),
    )
    .unwrap();
    h.options = options.try_into().unwrap();
    h.total_len = (h.header_len() + inner.len()) as u16;
    h.dont_fragment = true;
    h.dscp = IpDscp::try_new(tos >> 2).unwrap();
    h.ecn = IpEcn::try_new(tos & 3).unwrap();
    h.header_checksum = h.calc_header_checksum();
    h.to_bytes().to_vec()
}

/// An outer IPv6 header to `dst` for `inner`, with traffic class `tc`.
fn tunnel_v6(dst: &str, inner: &[u8], tc: u8) -> Vec<u8> {
    tunnel_v6_from(OUTER_SRC_V6, dst, inner, tc)
}

/// `tunnel_v6` from outer source `src`.
fn tunnel_v6_from(src: &str, dst: &str, inner: &[u8], tc: u8) -> Vec<u8> {
    Ipv6Header {
        traffic_class: tc,
        flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
        payload_length: inner.len() as u16,
        next_header: IpNumber(tunnel_proto(inner)),
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    }
    .to_bytes()
    .to_vec()
}

/// Recompute the checksum of the outer IPv4 header at the start of `outer`
/// after a test changed a field.
fn with_checksum(mut outer: Vec<u8>) -> Vec<u8> {
    let (h, _) = Ipv4Header::from_slice(&outer).unwrap();
    let check = h.calc_header_checksum().to_be_bytes();
    outer[10..12].copy_from_slice(&check);
    outer
}

/// The tunnel frame as it reaches the backend host.
fn arriving(vlan: Option<u16>, outer: &[u8], inner: &[u8]) -> Vec<u8> {
    let ether_type = ether_type_of(outer);
    frame(HOST_MAC, HOP_MAC, vlan, ether_type, &cat(outer, inner))
}

/// A whole IP packet as it reaches the backend host.
fn to_host(vlan: Option<u16>, packet: &[u8]) -> Vec<u8> {
    frame(HOST_MAC, HOP_MAC, vlan, ether_type_of(packet), packet)
}

/// What the host's stack should get: same link header, inner packet.
fn stripped(vlan: Option<u16>, inner: &[u8]) -> Vec<u8> {
    frame(HOST_MAC, HOP_MAC, vlan, ether_type_of(inner), inner)
}

fn inner_v4() -> Vec<u8> {
    tcp4(
        CLIENT_V4,
        40000,
        VIP_V4,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    )
}

fn inner_v6() -> Vec<u8> {
    tcp6(
        CLIENT_V6,
        40000,
        VIP_V6,
        80,
        Tcp::Ack,
        b"GET / HTTP/1.1\r\n\r\n",
    )
}

#[test]
fn golden_decap_ipv4_outer_ipip_and_ipv6_in_ipv4() {
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        let outer = tunnel_v4(BACKEND_V4[0], &inner, 0, &[]);
        expect_decap(
            &mut lb,
            &arriving(None, &outer, &inner),
            stripped(None, &inner),
            DecapReason::Decapsulated,
            &format!("protocol {}", tunnel_proto(&inner)),
        );
    }
}

/// Also the good-checksum case of the outer checksum check: the sum covers
/// the options (golden_decap_bad_outer_ipv4_checksum_is_dropped_and_counted).
#[test]
fn golden_decap_ipv4_outer_with_options() {
    let mut lb = backend_host();
    let mut max = vec![1u8; 39];
    max.push(0);
    let options: [&[u8]; 3] = [&[0x94, 0x04, 0, 0], &[1, 1, 1, 1, 1, 1, 1, 0], &max];
    for opts in options {
        for inner in [inner_v4(), inner_v6()] {
            let outer = tunnel_v4(BACKEND_V4[0], &inner, 0, opts);
            assert_eq!(outer.len(), IPV4_HLEN + opts.len());
            expect_decap(
                &mut lb,
                &arriving(None, &outer, &inner),
                stripped(None, &inner),
                DecapReason::Decapsulated,
                &format!("{} bytes of options", opts.len()),
            );
        }
    }
}

#[test]
fn golden_decap_ipv6_outer_both_inner_families() {
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        let outer = tunnel_v6(BACKEND_V6[0], &inner, 0);
        expect_decap(
            &mut lb,
            &arriving(None, &outer, &inner),
            stripped(None, &inner),
            DecapReason::Decapsulated,
            &format!("next header {}", tunnel_proto(&inner)),
        );
    }
}

#[test]
fn golden_decap_keeps_the_vlan_tag() {
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for outer in [
            tunnel_v4(BACKEND_V4[0], &inner, 0, &[]),
            tunnel_v6(BACKEND_V6[0], &inner, 0),
        ] {
            expect_decap(
                &mut lb,
                &arriving(Some(0x0123), &outer, &inner),
                stripped(Some(0x0123), &inner),
                DecapReason::Decapsulated,
                "tagged",
            );
        }
    }
}

#[test]
fn golden_decap_outer_ce_marks_ecn_capable_inner_ipv4() {
    let mut lb = backend_host();
    // DSCP 10 (AF11) kept; ECT(0) and ECT(1) become CE.
    for ecn in [1u8, 2, 3] {
        let inner = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 10, ecn), 40000, 53, b"q");
        let marked = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 10, 3), 40000, 53, b"q");
        for outer in [
            tunnel_v4(BACKEND_V4[0], &inner, (10 << 2) | 3, &[]),
            tunnel_v4(BACKEND_V4[0], &inner, 3, &[0x94, 0x04, 0, 0]),
            tunnel_v6(BACKEND_V6[0], &inner, 3),
        ] {
            let before = decap_counts(&lb);
            let out = lb.run_decap(&arriving(None, &outer, &inner));
            assert_eq!(
                out,
                Outcome {
                    action: XDP_PASS,
                    data: stripped(None, &marked)
                },
                "inner ECN {ecn}"
            );
            assert_eq!(
                decap_moved(&before, &decap_counts(&lb)),
                vec![(DecapReason::Decapsulated, 1)]
            );
            // The incrementally updated checksum is the one etherparse computes.
            let (h, _) = Ipv4Header::from_slice(&out.data[14..]).unwrap();
            assert_eq!(h.ecn, IpEcn::CongestionExperienced);
            assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
    }
}

#[test]
fn golden_decap_ce_mark_checksum_is_right_for_many_headers() {
    // The checksum is updated incrementally: try it on headers whose
    // checksums cover the whole range (identification and TTL varied).
    let mut lb = backend_host();
    for (n, ident) in (0..=u16::MAX).step_by(251).enumerate() {
        let mut h = ipv4_header(CLIENT_V4, VIP_V4, (n % 64) as u8, 1 + (n % 2) as u8);
        h.identification = ident;
        h.time_to_live = (n % 256) as u8;
        let inner = udp4_with(h.clone(), 40000, 53, b"q");
        h.ecn = IpEcn::CongestionExperienced;
        let marked = udp4_with(h, 40000, 53, b"q");
        let outer = tunnel_v4(BACKEND_V4[0], &inner, 3, &[]);
        let out = lb.run_decap(&arriving(None, &outer, &inner));
        assert_eq!(
            out,
            Outcome {
                action: XDP_PASS,
                data: stripped(None, &marked)
            },
            "identification {ident:#06x}"
        );
    }
}

#[test]
fn golden_decap_outer_ce_marks_ecn_capable_inner_ipv6() {
    let mut lb = backend_host();
    // Traffic class DSCP 46 (EF) with ECT(0), ECT(1), CE.
    for ecn in [1u8, 2, 3] {
        let inner = udp6_tc(CLIENT_V6, 40000, VIP_V6, 53, (46 << 2) | ecn, b"q");
        let marked = udp6_tc(CLIENT_V6, 40000, VIP_V6, 53, (46 << 2) | 3, b"q");
        for outer in [
            tunnel_v4(BACKEND_V4[0], &inner, 3, &[]),
            tunnel_v6(BACKEND_V6[0], &inner, (46 << 2) | 3),
        ] {
            expect_decap(
                &mut lb,
                &arriving(None, &outer, &inner),
                stripped(None, &marked),
                DecapReason::Decapsulated,
                &format!("inner ECN {ecn}"),
            );
        }
    }
}

/// ECN codepoints.
const NOT_ECT: u8 = 0b00;
const ECT1: u8 = 0b01;
const ECT0: u8 = 0b10;
const CE: u8 = 0b11;

/// RFC 6040 section 4.2, figure 4: the inner ECN field after
/// decapsulation, by arriving inner (rows) and outer (columns, in the
/// order of `OUTER_ECN`) field; `None` is a drop.
const RFC_6040: [(u8, [Option<u8>; 4]); 4] = [
    (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
    (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
    (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
    (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
];
const OUTER_ECN: [u8; 4] = [NOT_ECT, ECT0, ECT1, CE];

#[test]
fn golden_decap_ecn_follows_rfc_6040_for_every_inner_and_outer_codepoint() {
    // Every cell of the table, for each inner family under each outer
    // family; DSCP (AF41) must survive, and an IPv4 inner checksum be right.
    let mut lb = backend_host();
    let dscp = 34;
    let inner_v4 = |ecn| udp4_with(ipv4_header(CLIENT_V4, VIP_V4, dscp, ecn), 40000, 53, b"q");
    let inner_v6 = |ecn| udp6_tc(CLIENT_V6, 40000, VIP_V6, 53, (dscp << 2) | ecn, b"q");
    for (inner_ecn, row) in RFC_6040 {
        for (outer_ecn, cell) in OUTER_ECN.into_iter().zip(row) {
            for (family, inner_of) in [
                ("IPv4", &inner_v4 as &dyn Fn(u8) -> Vec<u8>),
                ("IPv6", &inner_v6),
            ] {
                let inner = inner_of(inner_ecn);
                for (outer_family, outer) in [
                    (
                        "IPv4",
                        tunnel_v4(BACKEND_V4[0], &inner, (10 << 2) | outer_ecn, &[]),
                    ),
                    (
                        "IPv6",
                        tunnel_v6(BACKEND_V6[0], &inner, (10 << 2) | outer_ecn),
                    ),
                ] {
                    let what = format!(
                        "inner {family} ECN {inner_ecn:02b} in {outer_family} with ECN {outer_ecn:02b}"
                    );
                    let f = arriving(None, &outer, &inner);
                    match cell {
                        Some(ecn) => expect_decap(
                            &mut lb,
                            &f,
                            stripped(None, &inner_of(ecn)),
                            DecapReason::Decapsulated,
                            &what,
                        ),
                        None => expect_dropped(&mut lb, &f, DecapReason::DropCeNotEct, &what),
                    }
                }
            }
        }
    }
}

#[test]
fn golden_decap_tunnel_to_another_address_is_not_ours() {
    let mut lb = backend_host();
    let inner = inner_v4();
    for outer in [
        tunnel_v4(BACKEND_V4[1], &inner, 0, &[]),
        tunnel_v6(BACKEND_V6[1], &inner, 0),
        // The IPv4 address in an IPv6 header's place is still not ours.
        tunnel_v6("::ffff:198.51.100.101", &inner, 0),
    ] {
        let f = arriving(None, &outer, &inner);
        expect_untouched(&mut lb, &f, DecapReason::PassNotOurAddress, "other address");
    }
}

#[test]
fn golden_decap_non_tunnel_traffic_is_passed_untouched() {
    let mut lb = backend_host();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4 UDP to our address",
            to_lb(&udp4(CLIENT_V4, 1, BACKEND_V4[0], 53, b"q")),
        ),
        (
            "IPv6 TCP to our address",
            to_lb(&tcp6(CLIENT_V6, 1, BACKEND_V6[0], 22, Tcp::Syn, b"")),
        ),
        ("ARP", frame(HOST_MAC, HOP_MAC, None, 0x0806, &[0u8; 28])),
        (
            "tagged ARP",
            frame(HOST_MAC, HOP_MAC, Some(7), 0x0806, &[0u8; 28]),
        ),
        // A VLAN tag cut short: no link header to speak of.
        (
            "cut VLAN tag",
            frame(HOST_MAC, HOP_MAC, None, 0x8100, &[0, 7]),
        ),
    ];
    // IPv6 traffic behind extension headers, whole or a fragment, from a
    // source not allowed for tunnels: the chain ends in no tunnel.
    let udp = udp6(CLIENT_V6, 1, BACKEND_V6[0], 53, b"q");
    for exts in [
        vec![dest_opts()],
        vec![hop_by_hop(), routing(), fragment(0, true, 7)],
        vec![fragment(64, false, 7)],
    ] {
        let what = if exts.len() == 1 {
            "UDP behind one extension header"
        } else {
            "UDP behind three extension headers"
        };
        cases.push((what, to_host(None, &with_ext_headers(&udp, &exts))));
    }
    for (what, f) in cases {
        expect_untouched(&mut lb, &f, DecapReason::PassNotTunnel, what);
    }
}

#[test]
fn golden_decap_version_mismatch_and_fragmented_outer_are_malformed() {
    let mut lb = backend_host();
    let v4in = inner_v4();
    let v6in = inner_v6();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Protocol 4 carrying IPv6, 41 carrying IPv4, and junk versions.
    let mut outer = tunnel_v4(BACKEND_V4[0], &v6in, 0, &[]);
    outer[9] = PROTO_IPIP;
    let outer = with_checksum(outer);
    cases.push(("IPv4 proto 4, IPv6 inside", arriving(None, &outer, &v6in)));
    let mut outer = tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]);
    outer[9] = PROTO_IPV6;
    let outer = with_checksum(outer);
    cases.push(("IPv4 proto 41, IPv4 inside", arriving(None, &outer, &v4in)));
    let mut outer = tunnel_v6(BACKEND_V6[0], &v6in, 0);
    outer[6] = PROTO_IPIP;
    cases.push(("IPv6 next 4, IPv6 inside", arriving(None, &outer, &v6in)));
    let mut outer = tunnel_v6(BACKEND_V6[0], &v4in, 0);
    outer[6] = PROTO_IPV6;
    cases.push(("IPv6 next 41, IPv4 inside", arriving(None, &outer, &v4in)));
    let mut junk = v4in.clone();
    junk[0] = 0x55;
    let outer = tunnel_v4(BACKEND_V4[0], &junk, 0, &[]);
    cases.push(("inner version 5", arriving(None, &outer, &junk)));
    // Outer IPv4 header with a bad version or IHL.
    let mut outer = tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]);
    outer[0] = 0x65;
    let packet = cat(&outer, &v4in);
    let f = frame(HOST_MAC, HOP_MAC, None, ETH_IPV4, &packet);
    cases.push(("outer version 6 behind the IPv4 ethertype", f));

    let mut outer = tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]);
    outer[0] = 0x44;
    cases.push(("outer IHL 4", arriving(None, &outer, &v4in)));
    // Fragmented outer: more fragments, an offset, or both.
    for frags in [0x2000u16, 0x0001, 0x2010, 0x6000] {
        let mut h = Ipv4Header::from_slice(&tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]))
            .unwrap()
            .0;
        h.dont_fragment = frags & 0x4000 != 0;
        h.more_fragments = frags & 0x2000 != 0;
        h.fragment_offset = etherparse::IpFragOffset::try_new(frags & 0x1fff).unwrap();
        h.header_checksum = h.calc_header_checksum();
        cases.push(("fragmented outer", arriving(None, &h.to_bytes(), &v4in)));
    }
    // Outer header cut: the frame ends inside it, or right after the link
    // header.
    for ether_type in [ETH_IPV4, ETH_IPV6] {
        let f = frame(HOST_MAC, HOP_MAC, None, ether_type, &[]);
        cases.push(("bare Ethernet header", f));
    }
    let outer = tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]);
    cases.push((
        "IPv4 outer header cut",
        frame(HOST_MAC, HOP_MAC, None, ETH_IPV4, &outer[..19]),
    ));
    let outer = tunnel_v6(BACKEND_V6[0], &v4in, 0);
    cases.push((
        "IPv6 outer header cut",
        frame(HOST_MAC, HOP_MAC, None, ETH_IPV6, &outer[..39]),
    ));
    for (what, f) in cases {
        expect_untouched(&mut lb, &f, DecapReason::PassMalformed, what);
    }
}

#[test]
fn golden_decap_ipv6_outer_with_a_wrong_version_is_malformed() {
    // As for an IPv4 outer header: a version that does not match the
    // ethertype makes the header malformed, whatever follows.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for version in [0u8, 4, 7] {
            let outer = tunnel_v6(BACKEND_V6[0], &inner, 0);
            let mut packet = cat(&outer, &inner);
            packet[0] = (version << 4) | (packet[0] & 0x0f);
            let f = frame(HOST_MAC, HOP_MAC, None, ETH_IPV6, &packet);
            let what = format!("outer version {version} behind the IPv6 ethertype");
            expect_untouched(&mut lb, &f, DecapReason::PassMalformed, &what);
        }
    }
}

/// A tunnel whose inner packet is cut to `keep` bytes, the outer length
/// saying so (the outer header itself is consistent with the frame).
fn cut_inner_v4(inner: &[u8], keep: usize) -> Vec<u8> {
    let cut = &inner[..keep];
    let mut outer = tunnel_v4(BACKEND_V4[0], inner, 0, &[]);
    let (mut h, _) = Ipv4Header::from_slice(&outer).unwrap();
    h.total_len = (IPV4_HLEN + keep) as u16;
    h.header_checksum = h.calc_header_checksum();
    outer.copy_from_slice(&h.to_bytes());
    arriving(None, &outer, cut)
}

#[test]
fn golden_decap_truncated_inner_header_is_malformed() {
    let mut lb = backend_host();
    let v4in = inner_v4();
    let mut failures = Vec::new();
    // Fewer bytes than an inner IPv4 header, outer length consistent.
    for keep in [0, 1, 2, 10, 19] {
        let f = cut_inner_v4(&v4in, keep);
        let before = decap_counts(&lb);
        let out = lb.run_decap(&f);
        let got = decap_moved(&before, &decap_counts(&lb));
        if out.data != f || got != vec![(DecapReason::PassMalformed, 1)] {
            failures.push(format!(
                "inner IPv4 cut to {keep} bytes: action {}, {}, counted {got:?}",
                out.action,
                if out.data == f {
                    "untouched"
                } else {
                    "changed"
                }
            ));
        }
    }
    // Fewer bytes than an inner IPv6 header, behind an IPv6 outer header.
    let v6in = inner_v6();
    for keep in [1, 2, IPV6_HLEN - 1] {
        let mut outer = tunnel_v6(BACKEND_V6[0], &v6in, 0);
        outer[4..6].copy_from_slice(&(keep as u16).to_be_bytes());
        let f = arriving(None, &outer, &v6in[..keep]);
        let before = decap_counts(&lb);
        let out = lb.run_decap(&f);
        let got = decap_moved(&before, &decap_counts(&lb));
        if out.data != f || got != vec![(DecapReason::PassMalformed, 1)] {
            failures.push(format!(
                "inner IPv6 cut to {keep} bytes: action {}, {}, counted {got:?}",
                out.action,
                if out.data == f {
                    "untouched"
                } else {
                    "changed"
                }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_decap_tunnel_cut_at_every_length_is_passed_untouched() {
    // A tunnel frame cut short anywhere: short of a link header it is no
    // tunnel; past it the outer header is truncated, or complete with a
    // length beyond the frame, or the inner packet is truncated.
    let mut lb = backend_host();
    let mut failures = Vec::new();
    let inner = inner_v4();
    let fulls = [
        arriving(None, &tunnel_v4(BACKEND_V4[0], &inner, 0, &[]), &inner),
        arriving(Some(9), &tunnel_v6(BACKEND_V6[0], &inner, 0), &inner),
    ];
    for full in &fulls {
        let link = if full[12..14] == [0x81, 0x00] { 18 } else { 14 };
        // (Shorter than 14 bytes the kernel runs no program on it.)
        for cut in 14..full.len() {
            let f = &full[..cut];
            let reason = if cut < link {
                DecapReason::PassNotTunnel
            } else {
                DecapReason::PassMalformed
            };
            let before = decap_counts(&lb);
            let out = lb.run_decap(f);
            let got = decap_moved(&before, &decap_counts(&lb));
            assert_ne!(out.action, XDP_ABORTED);
            if out.data != f || got != vec![(reason, 1)] {
                let bytes = if out.data == f {
                    "untouched"
                } else {
                    "changed"
                };
                let what = format!(
                    "of {}: expected untouched counting {reason:?}, got action {}, {bytes}, counted {got:?}",
                    full.len(),
                    out.action,
                );
                failures.push((cut, what));
            }
        }
    }
    // One line per run of consecutive cuts that went wrong the same way.
    let mut lines: Vec<String> = Vec::new();
    let mut i = 0;
    while i < failures.len() {
        let mut j = i;
        while j + 1 < failures.len()
            && failures[j + 1].0 == failures[j].0 + 1
            && failures[j + 1].1 == failures[i].1
        {
            j += 1;
        }
        lines.push(format!(
            "cut at {}..={} {}",
            failures[i].0, failures[j].0, failures[i].1
        ));
        i = j + 1;
    }
    assert!(
        failures.is_empty(),
        "{} cuts wrong:\n{}",
        failures.len(),
        lines.join("\n")
    );
}

/// Run a client packet through the LB, then the LB's output through the
/// backend's decap program.
fn round_trip(lb: &mut Lb, client_frame: &[u8], inner: &[u8], vlan: Option<u16>) {
    let sent = lb.run(client_frame);
    assert_eq!(sent.action, XDP_TX);
    let before = decap_counts(lb);
    let received = lb.run_decap(&sent.data);
    // The original frame, addressed by the LB to its next hop.
    let expected = frame(GATEWAY_MAC, LB_MAC, vlan, ether_type_of(inner), inner);
    assert_eq!(
        received,
        Outcome {
            action: XDP_PASS,
            data: expected
        }
    );
    assert_eq!(
        decap_moved(&before, &decap_counts(lb)),
        vec![(DecapReason::Decapsulated, 1)]
    );
}

#[test]
fn golden_decap_round_trip_through_the_lb() {
    let mut lb = backend_host();
    // Each VIP has one backend: both families of VIP over both families
    // of tunnel.
    // A backend is an (address, VIP) pair: each VIP gets its own id.
    let b4 = |id| BackendSpec::new(id, BACKEND_V4[0]);
    let b6 = |id| BackendSpec::new(id, BACKEND_V6[0]);
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &[b4(1)]);
    lb.add_vip(vip_key(VIP_V4, 81, PROTO_TCP), 0, &[b6(2)]);
    lb.add_vip(vip_key(VIP_V6, 80, PROTO_TCP), 0, &[b6(3)]);
    lb.add_vip(vip_key(VIP_V6, 81, PROTO_TCP), 0, &[b4(4)]);
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_UDP), 0, &[b6(5)]);
    let packets = [
        tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""),
        tcp4(CLIENT_V4, 40000, VIP_V4, 81, Tcp::Ack, b"hello"),
        tcp6(CLIENT_V6, 40000, VIP_V6, 80, Tcp::Ack, b"hello"),
        tcp6(CLIENT_V6, 40000, VIP_V6, 81, Tcp::Syn, b""),
        // DSCP EF and ECT(0), carried through both headers unchanged.
        udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 46, 2), 40000, 80, b"x"),
    ];
    for inner in &packets {
        round_trip(&mut lb, &to_lb(inner), inner, None);
        let tagged = frame(LB_MAC, ROUTER_MAC, Some(100), ether_type_of(inner), inner);
        round_trip(&mut lb, &tagged, inner, Some(100));
    }
    assert_eq!(lb.count(Reason::Tx), 2 * packets.len() as u64);
}

#[test]
fn golden_decap_round_trip_with_congestion_on_the_way() {
    // ECT(0) from the client, copied to the outer header by the LB; a
    // router between LB and backend marks the outer header CE; the backend
    // gets the inner packet marked CE, checksum right.
    let mut lb = backend_host();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let inner = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 0, 2), 40000, 53, b"x");
    let sent = lb.run(&to_lb(&inner));
    assert_eq!(sent.action, XDP_TX);
    let mut on_wire = sent.data.clone();
    let (mut outer, _) = Ipv4Header::from_slice(&on_wire[14..]).unwrap();
    assert_eq!(outer.ecn, IpEcn::Ect0);
    outer.ecn = IpEcn::CongestionExperienced;
    outer.header_checksum = outer.calc_header_checksum();
    on_wire[14..14 + IPV4_HLEN].copy_from_slice(&outer.to_bytes());
    let marked = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 0, 3), 40000, 53, b"x");
    let received = lb.run_decap(&on_wire);
    assert_eq!(
        received,
        Outcome {
            action: XDP_PASS,
            data: frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV4, &marked)
        }
    );
}

#[test]
fn golden_decap_tunnels_from_disallowed_ipv4_and_ipv6_sources_are_dropped_and_counted() {
    // Allowed: the LB's own tunnel sources. A client that routes protocol 4
    // or 41 to the backend itself must not get a packet past its firewall
    // with any inner source it likes; nor may the kernel get the tunnel.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for (what, outer) in [
            (
                "IPv4 outer from a client",
                tunnel_v4_from(CLIENT_V4, BACKEND_V4[0], &inner, 0, &[]),
            ),
            (
                "IPv4 outer from the LB's neighbour",
                tunnel_v4_from("198.51.100.3", BACKEND_V4[0], &inner, 0, &[]),
            ),
            (
                "IPv6 outer from a client",
                tunnel_v6_from(CLIENT_V6, BACKEND_V6[0], &inner, 0),
            ),
            (
                "IPv6 outer from the LB's neighbour",
                tunnel_v6_from("2001:db8:100::3", BACKEND_V6[0], &inner, 0),
            ),
        ] {
            let f = arriving(Some(5), &outer, &inner);
            expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, what);
        }
    }
    // Even where no inner check would pass it: a fragment from an untrusted
    // source is no business of the kernel's reassembly (and a tunnel
    // device's) either.
    let inner = inner_v4();
    let mut h = Ipv4Header::from_slice(&tunnel_v4_from(CLIENT_V4, BACKEND_V4[0], &inner, 0, &[]))
        .unwrap()
        .0;
    h.dont_fragment = false;
    h.more_fragments = true;
    h.header_checksum = h.calc_header_checksum();
    let f = arriving(None, &h.to_bytes(), &inner);
    expect_dropped(
        &mut lb,
        &f,
        DecapReason::DropUntrustedSource,
        "fragment from a client",
    );
}

#[test]
fn golden_decap_source_prefixes_match_by_length_and_family() {
    // 192.0.2.0/24 and 2001:db8:f00::/48 allowed: sources inside each,
    // at its edges and just outside; IPv6 spellings of an allowed IPv4
    // source are other sources.
    let mut lb = backend_host_allowing(&["192.0.2.0/24", "2001:db8:f00::/48"]);
    let inner = inner_v4();
    for (src, allowed) in [
        ("192.0.2.1", true),
        ("192.0.2.255", true),
        ("192.0.3.0", false),
        ("192.0.1.255", false),
        ("198.51.100.2", false),
    ] {
        let outer = tunnel_v4_from(src, BACKEND_V4[0], &inner, 0, &[]);
        let f = arriving(None, &outer, &inner);
        if allowed {
            expect_decap(
                &mut lb,
                &f,
                stripped(None, &inner),
                DecapReason::Decapsulated,
                src,
            );
        } else {
            expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, src);
        }
    }
    for (src, allowed) in [
        ("2001:db8:f00::1", true),
        ("2001:db8:f00:ffff:ffff:ffff:ffff:ffff", true),
        ("2001:db8:f01::1", false),
        ("2001:db8:eff:ffff::1", false),
        // 192.0.2.1's bytes at the start of an IPv6 address.
        ("c000:201::", false),
        ("::ffff:192.0.2.1", false),
    ] {
        let outer = tunnel_v6_from(src, BACKEND_V6[0], &inner, 0);
        let f = arriving(None, &outer, &inner);
        if allowed {
            expect_decap(
                &mut lb,
                &f,
                stripped(None, &inner),
                DecapReason::Decapsulated,
                src,
            );
        } else {
            expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, src);
        }
    }
    // The family is part of the key: all of one family admits none of the
    // other, even where the address bits would match.
    for (allowed, outer, what) in [
        (
            ["::/0", "c000:200::/24"],
            tunnel_v4_from("192.0.2.1", BACKEND_V4[0], &inner, 0, &[]),
            "IPv4 source, IPv6 prefixes only",
        ),
        (
            ["0.0.0.0/0", "32.1.13.184/32"],
            tunnel_v6_from("2001:db8::1", BACKEND_V6[0], &inner, 0),
            "IPv6 source, IPv4 prefixes only",
        ),
    ] {
        let mut lb = backend_host_allowing(&allowed);
        let f = arriving(None, &outer, &inner);
        expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, what);
    }
}

#[test]
fn golden_decap_with_no_allowed_source_drops_every_tunnel() {
    // Addresses written, sources not: nothing is decapsulated.
    let mut lb = backend_host_allowing(&[]);
    let inner = inner_v6();
    for outer in [
        tunnel_v4(BACKEND_V4[0], &inner, 0, &[]),
        tunnel_v6(BACKEND_V6[0], &inner, 0),
    ] {
        let f = arriving(None, &outer, &inner);
        expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, "no sources");
    }
}

#[test]
fn golden_decap_any_source_flag_accepts_every_source_until_a_list_replaces_it() {
    let mut lb = backend_host();
    let inner = inner_v4();
    let from_client = arriving(
        None,
        &tunnel_v4_from(CLIENT_V4, BACKEND_V4[0], &inner, 0, &[]),
        &inner,
    );
    let from_client6 = arriving(
        None,
        &tunnel_v6_from(CLIENT_V6, BACKEND_V6[0], &inner, 0),
        &inner,
    );
    let from_lb = arriving(None, &tunnel_v4(BACKEND_V4[0], &inner, 0, &[]), &inner);
    lb.maps.set_decap_sources(&DecapSources::Any).unwrap();
    assert_eq!(lb.maps.decap_sources().unwrap(), DecapSources::Any);
    for (what, f) in [
        ("client, any source", &from_client),
        ("client over IPv6, any source", &from_client6),
        ("LB, any source", &from_lb),
    ] {
        expect_decap(
            &mut lb,
            f,
            stripped(None, &inner),
            DecapReason::Decapsulated,
            what,
        );
    }
    // A list replaces "any", and a later list replaces the earlier one.
    let only =
        |s: &[&str]| DecapSources::Only(s.iter().map(|s| parse_source(s).unwrap()).collect());
    lb.maps.set_decap_sources(&only(&[CLIENT_V4])).unwrap();
    assert_eq!(lb.maps.decap_sources().unwrap(), only(&["203.0.113.7/32"]));
    expect_decap(
        &mut lb,
        &from_client,
        stripped(None, &inner),
        DecapReason::Decapsulated,
        "client listed",
    );
    expect_dropped(
        &mut lb,
        &from_lb,
        DecapReason::DropUntrustedSource,
        "LB not listed",
    );
    lb.maps.set_decap_sources(&only(&[OUTER_SRC_V4])).unwrap();
    expect_dropped(
        &mut lb,
        &from_client,
        DecapReason::DropUntrustedSource,
        "client no longer listed",
    );
    expect_decap(
        &mut lb,
        &from_lb,
        stripped(None, &inner),
        DecapReason::Decapsulated,
        "LB listed",
    );
}

#[test]
fn golden_decap_bad_outer_ipv4_checksum_is_dropped_and_counted() {
    let mut lb = backend_host();
    let inner = inner_v4();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let opts: [&[u8]; 2] = [&[], &[0x94, 0x04, 0, 0, 1, 1, 1, 0]];
    for options in opts {
        let good = tunnel_v4(BACKEND_V4[0], &inner, 0, options);
        // Every byte of the header, options included, is covered: a bit
        // flipped anywhere (the checksum field too) is caught.
        for i in 0..good.len() {
            // Bytes the program reads before the checksum (version and IHL,
            // total length, protocol) give other verdicts when changed.
            if matches!(i, 0 | 2 | 3 | 9) {
                continue;
            }
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            cases.push((
                format!("byte {i} of a {}-byte header", good.len()),
                arriving(None, &bad, &inner),
            ));
        }
        // A checksum left as zero (as by a sender offloading it).
        let mut zero = good.clone();
        zero[10..12].copy_from_slice(&[0, 0]);
        cases.push(("zero checksum".into(), arriving(None, &zero, &inner)));
    }
    // From a disallowed source, to an address not ours: the header is not
    // to be trusted for either.
    let mut bad = tunnel_v4_from(CLIENT_V4, BACKEND_V4[1], &inner, 0, &[]);
    bad[8] ^= 1;
    cases.push((
        "another address, untrusted source".into(),
        arriving(None, &bad, &inner),
    ));
    for (what, f) in cases {
        expect_dropped(&mut lb, &f, DecapReason::DropBadOuterChecksum, &what);
    }
}

/// An IPv6 extension header for `with_ext_headers`: type and body.
type ExtHeader = (u8, Vec<u8>);

/// A tunnel from `src` to `dst` under an IPv6 outer header with the
/// extension headers `exts` between it and `inner`, as it arrives.
fn tunnel_v6_behind(src: &str, dst: &str, exts: &[ExtHeader], inner: &[u8]) -> Vec<u8> {
    let packet = with_ext_headers(&cat(&tunnel_v6_from(src, dst, inner, 0), inner), exts);
    to_host(None, &packet)
}

/// A routing header with one segment left: the destination address is a
/// waypoint.
fn routing_onwards() -> ExtHeader {
    (43, vec![0, 253, 1, 0, 0, 0, 0])
}

/// Extension-header chains a whole (unfragmented) tunnel may arrive with.
fn whole_chains() -> Vec<(&'static str, Vec<ExtHeader>)> {
    vec![
        ("destination options", vec![dest_opts()]),
        ("hop-by-hop", vec![hop_by_hop()]),
        ("routing, no segment left", vec![routing()]),
        ("atomic fragment", vec![atomic_fragment(9)]),
        (
            "hop-by-hop, routing, destination options, atomic fragment",
            vec![hop_by_hop(), routing(), dest_opts(), atomic_fragment(9)],
        ),
    ]
}

#[test]
fn golden_decap_ipv6_outer_extension_headers_are_stripped_with_the_outer_header() {
    // A trusted tunnel behind extension headers (a Linux ip6tnl sender
    // adds destination options): the outer header and all of its chain
    // come off, IPv4-in-IPv6 and IPv6-in-IPv6 alike.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for (what, exts) in whole_chains() {
            let f = tunnel_v6_behind(OUTER_SRC_V6, BACKEND_V6[0], &exts, &inner);
            let what = format!("{what}, next header {}", tunnel_proto(&inner));
            expect_decap(
                &mut lb,
                &f,
                stripped(None, &inner),
                DecapReason::Decapsulated,
                &what,
            );
        }
    }
    // The VLAN tag stays, and ECN is still the fixed header's: CE over
    // ECT(0) marks the inner packet.
    let inner = udp6_tc(CLIENT_V6, 40000, VIP_V6, 53, 2, b"q");
    let marked = udp6_tc(CLIENT_V6, 40000, VIP_V6, 53, 3, b"q");
    let mut outer = tunnel_v6(BACKEND_V6[0], &inner, 3);
    outer.extend_from_slice(&inner);
    let packet = with_ext_headers(&outer, &[dest_opts()]);
    expect_decap(
        &mut lb,
        &to_host(Some(42), &packet),
        stripped(Some(42), &marked),
        DecapReason::Decapsulated,
        "tagged, CE",
    );
}

#[test]
fn golden_decap_ipv6_tunnel_behind_extension_headers_from_a_disallowed_source_is_dropped() {
    // The kernel finds a tunnel behind extension headers too: a tunnel
    // device of its own (collect_md, any remote) would strip it. So the
    // allowlist holds behind any chain, whole or fragmented.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        let mut chains = whole_chains();
        chains.extend([
            ("routing, one segment left", vec![routing_onwards()]),
            ("first fragment", vec![fragment(0, true, 9)]),
            (
                "destination options, first fragment",
                vec![dest_opts(), fragment(0, true, 9)],
            ),
            ("later fragment", vec![fragment(8, true, 9)]),
            (
                "last fragment",
                vec![hop_by_hop(), fragment(1024, false, 9)],
            ),
        ]);
        for (what, exts) in chains {
            let f = tunnel_v6_behind(CLIENT_V6, BACKEND_V6[0], &exts, &inner);
            let what = format!("{what}, next header {}", tunnel_proto(&inner));
            expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, &what);
        }
    }
}

#[test]
fn golden_decap_fragmented_tunnels_are_dropped_untrusted_and_passed_trusted_in_both_families() {
    // A fragment of a tunnel cannot be stripped: from an allowed source it
    // goes to the kernel untouched (`pass_malformed`), from any other it
    // is dropped, for an IPv4 and an IPv6 outer header alike, first
    // fragment or later.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for (src_v4, src_v6, trusted) in [
            (OUTER_SRC_V4, OUTER_SRC_V6, true),
            (CLIENT_V4, CLIENT_V6, false),
        ] {
            let mut frames = Vec::new();
            for (more, offset) in [(true, 0u16), (true, 8), (false, 1024)] {
                let (mut h, _) =
                    Ipv4Header::from_slice(&tunnel_v4_from(src_v4, BACKEND_V4[0], &inner, 0, &[]))
                        .unwrap();
                h.dont_fragment = false;
                h.more_fragments = more;
                h.fragment_offset = etherparse::IpFragOffset::try_new(offset / 8).unwrap();
                h.header_checksum = h.calc_header_checksum();
                frames.push((
                    format!("IPv4 outer, fragment at {offset}, more {more}"),
                    arriving(None, &h.to_bytes(), &inner),
                ));
                let exts = [fragment(offset, more, 77)];
                frames.push((
                    format!("IPv6 outer, fragment at {offset}, more {more}"),
                    tunnel_v6_behind(src_v6, BACKEND_V6[0], &exts, &inner),
                ));
            }
            // A later fragment whose fragment header names another
            // extension header: what follows it is unknown.
            let mut exts = vec![fragment(8, true, 78), dest_opts()];
            let f = tunnel_v6_behind(src_v6, BACKEND_V6[0], &exts, &inner);
            frames.push(("IPv6 later fragment naming destination options".into(), f));
            exts.reverse();
            let f = tunnel_v6_behind(src_v6, BACKEND_V6[0], &exts, &inner);
            frames.push(("IPv6 destination options, later fragment".into(), f));
            // An atomic fragment header does not make an earlier
            // fragment whole.
            let exts = [fragment(0, true, 79), atomic_fragment(80)];
            let f = tunnel_v6_behind(src_v6, BACKEND_V6[0], &exts, &inner);
            frames.push(("IPv6 first fragment, then an atomic one".into(), f));
            for (what, f) in frames {
                let what = format!("{what}, next header {}", tunnel_proto(&inner));
                if trusted {
                    expect_untouched(&mut lb, &f, DecapReason::PassMalformed, &what);
                } else {
                    expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, &what);
                }
            }
        }
    }
}

#[test]
fn golden_decap_ipv6_chain_not_walkable_to_its_end_is_checked_but_never_stripped() {
    // Five extension headers (one more than the walker goes), or one cut
    // short by the packet's end (as a first fragment's may be until
    // reassembly completes it): what they carry is unknown, so they get
    // the address and source checks, and are not stripped.
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        let long = vec![dest_opts(); 5];
        let too_long = |src, dst| tunnel_v6_behind(src, dst, &long, &inner);
        // A destination-options header claiming 24 bytes more than the
        // packet holds.
        let cut = |src, dst| {
            let mut f = tunnel_v6_behind(src, dst, &[dest_opts()], &inner);
            let ext = 14 + IPV6_HLEN;
            f[ext + 1] = (((16 + inner.len() + 24) / 8) - 1) as u8;
            f
        };
        let proto = tunnel_proto(&inner);
        for (what, f) in [
            (
                "five extension headers",
                too_long(OUTER_SRC_V6, BACKEND_V6[0]),
            ),
            ("cut extension header", cut(OUTER_SRC_V6, BACKEND_V6[0])),
        ] {
            let what = format!("{what} from an allowed source, next header {proto}");
            expect_untouched(&mut lb, &f, DecapReason::PassMalformed, &what);
        }
        for (what, f) in [
            ("five extension headers", too_long(CLIENT_V6, BACKEND_V6[0])),
            ("cut extension header", cut(CLIENT_V6, BACKEND_V6[0])),
        ] {
            let what = format!("{what} from a client, next header {proto}");
            expect_dropped(&mut lb, &f, DecapReason::DropUntrustedSource, &what);
        }
        for (what, f) in [
            ("five extension headers", too_long(CLIENT_V6, BACKEND_V6[1])),
            ("cut extension header", cut(CLIENT_V6, BACKEND_V6[1])),
        ] {
            let what = format!("{what} to another address, next header {proto}");
            expect_untouched(&mut lb, &f, DecapReason::PassNotOurAddress, &what);
        }
    }
}

#[test]
fn golden_decap_ipv6_tunnel_routed_on_past_our_address_is_not_ours_to_strip() {
    // A routing header with segments left makes our address a waypoint:
    // a trusted tunnel is passed on untouched (the kernel routes it on);
    // an untrusted one is dropped like any other
    // (golden_decap_ipv6_tunnel_behind_extension_headers_from_a_disallowed_source_is_dropped).
    let mut lb = backend_host();
    for inner in [inner_v4(), inner_v6()] {
        for exts in [
            vec![routing_onwards()],
            vec![hop_by_hop(), routing_onwards(), dest_opts()],
        ] {
            let f = tunnel_v6_behind(OUTER_SRC_V6, BACKEND_V6[0], &exts, &inner);
            let what = format!(
                "{} headers, next header {}",
                exts.len(),
                tunnel_proto(&inner)
            );
            expect_untouched(&mut lb, &f, DecapReason::PassNotOurAddress, &what);
        }
    }
}

#[test]
fn golden_decap_inner_packet_must_end_within_the_outer_packet() {
    // The outer header's length says where the tunnel ends; bytes after
    // it (Ethernet padding, trailing junk) are no part of the inner
    // packet. An inner packet claiming them is malformed; one that ends
    // inside the outer packet is fine, and the padding behind it stays
    // (the kernel trims a packet to its own length).
    let mut lb = backend_host();
    let junk = [0xa5u8; 8];
    for inner in [inner_v4(), inner_v6()] {
        // The inner length field grown by 8, over 8 bytes of junk after
        // the outer packet.
        let mut long = inner.clone();
        if long[0] >> 4 == 4 {
            let (mut h, _) = Ipv4Header::from_slice(&long).unwrap();
            h.total_len += 8;
            h.header_checksum = h.calc_header_checksum();
            long[..IPV4_HLEN].copy_from_slice(&h.to_bytes());
        } else {
            let len = u16::from_be_bytes([long[4], long[5]]) + 8;
            long[4..6].copy_from_slice(&len.to_be_bytes());
        }
        let proto = tunnel_proto(&inner);
        for (family, outer) in [
            ("IPv4", tunnel_v4(BACKEND_V4[0], &long, 0, &[])),
            ("IPv6", tunnel_v6(BACKEND_V6[0], &long, 0)),
        ] {
            let f = cat(&arriving(None, &outer, &long), &junk);
            let what = format!("{family} outer, next header {proto}, inner into the junk");
            expect_untouched(&mut lb, &f, DecapReason::PassMalformed, &what);
        }
        let behind = tunnel_v6_behind(OUTER_SRC_V6, BACKEND_V6[0], &[dest_opts()], &long);
        let f = cat(&behind, &junk);
        let what = format!("IPv6 outer with destination options, next header {proto}");
        expect_untouched(&mut lb, &f, DecapReason::PassMalformed, &what);
        // The same junk after a consistent tunnel is only padding.
        for outer in [
            tunnel_v4(BACKEND_V4[0], &inner, 0, &[]),
            tunnel_v6(BACKEND_V6[0], &inner, 0),
        ] {
            expect_decap(
                &mut lb,
                &cat(&arriving(None, &outer, &inner), &junk),
                cat(&stripped(None, &inner), &junk),
                DecapReason::Decapsulated,
                &format!("padded, next header {proto}"),
            );
        }
    }
}
