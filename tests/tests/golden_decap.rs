//! Golden packets for `lb_decap`, the backend-side tunnel terminator: the
//! outer header of a tunnel to one of our addresses comes off, the link
//! header (MACs, VLAN tag) stays with the ethertype of the inner packet,
//! and an outer ECN CE mark reaches an ECN-capable inner header. Anything
//! else goes to the kernel untouched.

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
use lb_common::{Reason, flow::*, stats::DecapReason};
use lb_tests::{harness::*, packets::*};

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
fn expect_decap(lb: &mut Lb, frame: &[u8], data: Vec<u8>, reason: DecapReason, what: &str) {
    let before = decap_counts(lb);
    let out = lb.run_decap(frame);
    let got = decap_moved(&before, &decap_counts(lb));
    assert_eq!(
        (out, got),
        (
            Outcome {
                action: XDP_PASS,
                data
            },
            vec![(reason, 1)]
        ),
        "{what}"
    );
}

/// Expect `frame` passed as it came, counted under `reason`.
fn expect_untouched(lb: &mut Lb, frame: &[u8], reason: DecapReason, what: &str) {
    expect_decap(lb, frame, frame.to_vec(), reason, what);
}

/// An LB whose decap program accepts tunnels to the first IPv4 and the
/// first IPv6 backend address.
fn backend_host() -> Lb {
    let mut lb = Lb::new();
    lb.maps
        .add_decap_addr(BACKEND_V4[0].parse().unwrap())
        .unwrap();
    lb.maps
        .add_decap_addr(BACKEND_V6[0].parse().unwrap())
        .unwrap();
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
    let mut h = Ipv4Header::new(
        inner.len() as u16,
        64,
        IpNumber(tunnel_proto(inner)),
        v4(OUTER_SRC_V4),
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
    Ipv6Header {
        traffic_class: tc,
        flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
        payload_length: inner.len() as u16,
        next_header: IpNumber(tunnel_proto(inner)),
        hop_limit: 64,
        source: v6(OUTER_SRC_V6),
        destination: v6(dst),
    }
    .to_bytes()
    .to_vec()
}

/// The tunnel frame as it reaches the backend host.
fn arriving(vlan: Option<u16>, outer: &[u8], inner: &[u8]) -> Vec<u8> {
    let ether_type = ether_type_of(outer);
    frame(HOST_MAC, HOP_MAC, vlan, ether_type, &cat(outer, inner))
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

#[test]
fn golden_decap_leaves_ecn_alone_without_outer_ce_or_inner_ect() {
    let mut lb = backend_host();
    let mut cases = Vec::new();
    // Outer not CE: inner kept whatever it says.
    for outer_ecn in [0u8, 1, 2] {
        for inner_ecn in [0u8, 1, 2] {
            let inner = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 0, inner_ecn), 1, 53, b"q");
            let outer = tunnel_v4(BACKEND_V4[0], &inner, outer_ecn, &[]);
            cases.push((outer, inner));
            let inner = udp6_tc(CLIENT_V6, 1, VIP_V6, 53, inner_ecn, b"q");
            let outer = tunnel_v6(BACKEND_V6[0], &inner, outer_ecn);
            cases.push((outer, inner));
        }
    }
    // Outer CE, inner Not-ECT: the inner packet cannot carry the mark.
    let inner = udp4_with(ipv4_header(CLIENT_V4, VIP_V4, 10, 0), 1, 53, b"q");
    cases.push((tunnel_v4(BACKEND_V4[0], &inner, 3, &[]), inner));
    let inner = udp6_tc(CLIENT_V6, 1, VIP_V6, 53, 10 << 2, b"q");
    cases.push((tunnel_v6(BACKEND_V6[0], &inner, 3), inner));
    for (outer, inner) in cases {
        expect_decap(
            &mut lb,
            &arriving(None, &outer, &inner),
            stripped(None, &inner),
            DecapReason::Decapsulated,
            "ECN",
        );
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
    // IPv6 with a fragment header in front of the tunnel: not IP-in-IP as
    // far as the outer header says.
    let inner = inner_v4();
    let mut outer = tunnel_v6(BACKEND_V6[0], &inner, 0);
    outer[6] = 44;
    cases.push(("IPv6 fragment header first", arriving(None, &outer, &inner)));
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
    cases.push(("IPv4 proto 4, IPv6 inside", arriving(None, &outer, &v6in)));
    let mut outer = tunnel_v4(BACKEND_V4[0], &v4in, 0, &[]);
    outer[9] = PROTO_IPV6;
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
