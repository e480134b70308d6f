//! Golden packets for what the parser refuses: truncated frames cut at every
//! header, bad IP headers, long IPv6 extension chains, stacked VLAN tags.
//! All of it goes to the kernel byte for byte (XDP_PASS) with one reason
//! counted. And what it accepts around the edges: Ethernet padding, IPv4
//! options, IPv6 extension headers, one 802.1Q or 802.1ad tag.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::{Ipv4Header, Ipv6Header};
use lb_common::{FlowKey, Reason, flow::*};
use lb_tests::{harness::*, packets::*};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 18;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Run `prog` on `frame`, or `None` when BPF_PROG_TEST_RUN refuses it: the
/// kernel hands XDP no frame shorter than an Ethernet header (EINVAL, even
/// with the shortfall made up by XDP metadata), as NICs drop such runts.
fn try_run(prog: &mut Xdp, frame: &[u8]) -> Option<Outcome> {
    let mut out = vec![0u8; frame.len() + 256];
    match prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    }) {
        Ok(result) => {
            out.truncate(result.data_size_out as usize);
            Some(Outcome {
                action: result.return_value,
                data: out,
            })
        }
        Err(e) => {
            assert!(frame.len() < ETH_HLEN, "{} bytes refused: {e}", frame.len());
            None
        }
    }
}

/// Run the LB on `frame` and check that it went to the kernel untouched with
/// exactly `reason` counted, and nothing else.
fn assert_passed(lb: &mut Lb, frame: &[u8], reason: Reason, what: &str) {
    if let Err(e) = check_passed(lb, frame, reason) {
        panic!("{what}: {e}");
    }
}

/// What `assert_passed` checks, as an error naming what went wrong.
fn check_passed(lb: &mut Lb, frame: &[u8], reason: Reason) -> Result<(), String> {
    let before = lb.counts();
    let Some(out) = try_run(lb.dp.lb().expect("lb program"), frame) else {
        // Refused before the program ran: nothing may have been counted.
        return match moved(&before, &lb.counts()) {
            m if m.is_empty() => Ok(()),
            m => Err(format!("refused by the kernel, yet counted {m:?}")),
        };
    };
    let counted = moved(&before, &lb.counts());
    let expected = Outcome {
        action: XDP_PASS,
        data: frame.to_vec(),
    };
    if out != expected || counted != vec![(reason, 1)] {
        let bytes = if out.data == frame {
            "untouched"
        } else {
            "changed"
        };
        return Err(format!(
            "expected XDP_PASS untouched counting {reason:?}, got action {} \
             ({} bytes, {bytes}) counting {counted:?}; output:\n{out:?}",
            out.action,
            out.data.len(),
        ));
    }
    Ok(())
}

/// `ip` (IPv4) with its total length set to its real length and the header
/// checksum recomputed.
fn relength_v4(ip: &[u8]) -> Vec<u8> {
    let (mut h, _) = Ipv4Header::from_slice(ip).expect("IPv4 header");
    h.total_len = ip.len() as u16;
    h.header_checksum = h.calc_header_checksum();
    cat(&h.to_bytes(), &ip[h.header_len()..])
}

/// `ip` (IPv6) with its payload length set to what follows the header.
fn relength_v6(ip: &[u8]) -> Vec<u8> {
    let (mut h, _) = Ipv6Header::from_slice(ip).expect("IPv6 header");
    h.payload_length = (ip.len() - IPV6_HLEN) as u16;
    cat(&h.to_bytes(), &ip[IPV6_HLEN..])
}

/// An LB with VIPs for TCP :80 and UDP :53 on both VIP addresses, three
/// backends each (IPv4 backends for the IPv4 VIP, IPv6 for the IPv6 one).
fn lb_with_vips() -> Lb {
    let mut lb = Lb::new();
    // A backend is an (address, VIP) pair with an id of its own: the
    // program sends a VIP's flows only to that VIP's backends.
    let specs = |first: u32, addrs: &[&str; 3]| -> Vec<BackendSpec> {
        (0..3)
            .map(|i| BackendSpec::new(first + i, addrs[i as usize]))
            .collect()
    };
    lb.add_vip(vip_key(VIP_V4, 80, PROTO_TCP), 0, &specs(1, &BACKEND_V4));
    lb.add_vip(vip_key(VIP_V4, 53, PROTO_UDP), 0, &specs(4, &BACKEND_V4));
    lb.add_vip(vip_key(VIP_V6, 80, PROTO_TCP), 0, &specs(11, &BACKEND_V6));
    lb.add_vip(vip_key(VIP_V6, 53, PROTO_UDP), 0, &specs(14, &BACKEND_V6));
    lb
}

/// The address of backend `id` as `lb_with_vips` configured it.
fn backend_addr(id: u32) -> &'static str {
    match id {
        1..=6 => BACKEND_V4[(id as usize - 1) % 3],
        11..=16 => BACKEND_V6[(id as usize - 11) % 3],
        _ => panic!("no backend {id}"),
    }
}

/// The frame the LB sends for `inner` (an IP packet whose flow is `flow`)
/// arriving untagged, when it goes to backend `id`.
fn encapsulated(id: u32, inner: &[u8], flow: &FlowKey, trailer: &[u8]) -> Vec<u8> {
    let addr = backend_addr(id);
    let (ether_type, outer) = if id < 10 {
        (ETH_IPV4, outer_v4(OUTER_SRC_V4, addr, inner))
    } else {
        (ETH_IPV6, outer_v6(OUTER_SRC_V6, addr, inner, flow))
    };
    let packet = cat(&cat(&outer, inner), trailer);
    frame(GATEWAY_MAC, LB_MAC, None, ether_type, &packet)
}

#[test]
fn golden_truncated_ipv4_tcp_syn_at_every_length_is_passed_untouched() {
    let mut lb = lb_with_vips();
    let full = to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b""));
    assert_eq!(full.len(), ETH_HLEN + IPV4_HLEN + 20);
    for cut in 0..full.len() {
        // Short of the Ethernet header: no frame. Past it the IP header is
        // truncated, or complete with a total length beyond the frame.
        let reason = if cut < ETH_HLEN {
            Reason::PassShortFrame
        } else {
            Reason::PassBadIpHeader
        };
        assert_passed(&mut lb, &full[..cut], reason, &format!("cut at {cut}"));
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_truncated_ipv6_udp_at_every_length_is_passed_untouched() {
    let mut lb = lb_with_vips();
    let full = to_lb(&udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query"));
    assert_eq!(full.len(), ETH_HLEN + IPV6_HLEN + 8 + 5);
    for cut in 0..full.len() {
        let reason = if cut < ETH_HLEN {
            Reason::PassShortFrame
        } else {
            // Truncated fixed header, or payload length beyond the frame.
            Reason::PassBadIpHeader
        };
        assert_passed(&mut lb, &full[..cut], reason, &format!("cut at {cut}"));
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_truncated_vlan_ipv4_udp_at_every_length_is_passed_untouched() {
    let mut lb = lb_with_vips();
    let ip = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"query");
    let full = frame(LB_MAC, ROUTER_MAC, Some(42), ETH_IPV4, &ip);
    assert_eq!(full.len(), VLAN_HLEN + IPV4_HLEN + 8 + 5);
    for cut in 0..full.len() {
        // The tag and the ethertype after it belong to the link header.
        let reason = if cut < VLAN_HLEN {
            Reason::PassShortFrame
        } else {
            Reason::PassBadIpHeader
        };
        assert_passed(&mut lb, &full[..cut], reason, &format!("cut at {cut}"));
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_l4_header_cut_with_consistent_ip_length_is_bad_l4_header() {
    let mut lb = lb_with_vips();
    // IPv4 TCP: the parser needs all 20 bytes of the TCP header.
    let tcp = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    for l4 in 0..20 {
        let ip = relength_v4(&tcp[..IPV4_HLEN + l4]);
        let what = format!("IPv4 TCP header of {l4} bytes");
        assert_passed(&mut lb, &to_lb(&ip), Reason::PassBadL4Header, &what);
    }
    // IPv6 UDP: 8 bytes.
    let udp = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query");
    for l4 in 0..8 {
        let ip = relength_v6(&udp[..IPV6_HLEN + l4]);
        let what = format!("IPv6 UDP header of {l4} bytes");
        assert_passed(&mut lb, &to_lb(&ip), Reason::PassBadL4Header, &what);
    }
    // VLAN-tagged IPv4 UDP: 8 bytes.
    let udp = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"query");
    for l4 in 0..8 {
        let ip = relength_v4(&udp[..IPV4_HLEN + l4]);
        let tagged = frame(LB_MAC, ROUTER_MAC, Some(42), ETH_IPV4, &ip);
        let what = format!("tagged IPv4 UDP header of {l4} bytes");
        assert_passed(&mut lb, &tagged, Reason::PassBadL4Header, &what);
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_l4_header_cut_inside_ethernet_padding_is_bad_l4_header() {
    // On the wire a frame is at least 60 bytes: a short IP packet is
    // followed by zero padding, which is no part of its L4 header.
    let mut lb = lb_with_vips();
    let pad = |mut f: Vec<u8>| {
        f.resize(f.len().max(60), 0);
        f
    };
    let mut failures = Vec::new();
    let tcp = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    let udp = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"query");
    for (name, packet, header) in [("TCP", &tcp, 20), ("UDP", &udp, 8)] {
        for l4 in 0..header {
            let ip = relength_v4(&packet[..IPV4_HLEN + l4]);
            let f = pad(to_lb(&ip));
            if let Err(e) = check_passed(&mut lb, &f, Reason::PassBadL4Header) {
                let summary = e.lines().next().unwrap_or_default().to_string();
                failures.push(format!("{name} header of {l4} bytes: {summary}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 28 cuts:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_l4_header_cut_after_ipv4_options_is_bad_l4_header() {
    let mut lb = lb_with_vips();
    let mut h = ipv4_header(CLIENT_V4, VIP_V4, 0, 0);
    h.options = [1, 1, 1, 1, 1, 1, 1, 0].into();
    let ip = udp4_with(h, 40000, 53, b"query");
    let ihl = IPV4_HLEN + 8;
    // Any of the 8 UDP bytes missing: the options are no UDP header.
    for l4 in 0..8 {
        let cut = relength_v4(&ip[..ihl + l4]);
        let what = format!("UDP header of {l4} bytes after options");
        assert_passed(&mut lb, &to_lb(&cut), Reason::PassBadL4Header, &what);
    }
    // The options themselves cut: total length shorter than the IHL says.
    for len in IPV4_HLEN..ihl {
        // (Too short for etherparse to rewrite: the length by hand.)
        let mut cut = ip[..len].to_vec();
        cut[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let what = format!("IPv4 packet of {len} bytes with IHL 7");
        assert_passed(&mut lb, &to_lb(&cut), Reason::PassBadIpHeader, &what);
    }
}

#[test]
fn golden_ipv4_bad_version_ihl_or_total_length_is_bad_ip_header() {
    let mut lb = lb_with_vips();
    let good = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    let total = good.len() as u16;
    let set_total = |ip: &mut Vec<u8>, len: u16| ip[2..4].copy_from_slice(&len.to_be_bytes());
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for version in [0u8, 5, 6, 15] {
        let mut ip = good.clone();
        ip[0] = (version << 4) | 5;
        cases.push(("version not 4", ip));
    }
    for ihl in 0u8..5 {
        let mut ip = good.clone();
        ip[0] = 0x40 | ihl;
        cases.push(("IHL below 5", ip));
    }
    for len in [0u16, 1, 19] {
        let mut ip = good.clone();
        set_total(&mut ip, len);
        cases.push(("total length below the header length", ip));
    }
    let mut ip = good.clone();
    ip[0] = 0x4f; // 60-byte header in a 40-byte packet
    cases.push(("IHL beyond the total length", ip));
    for len in [total + 1, 1500, u16::MAX] {
        let mut ip = good.clone();
        set_total(&mut ip, len);
        cases.push(("total length beyond the frame", ip));
    }
    for (what, ip) in cases {
        let f = frame(LB_MAC, ROUTER_MAC, None, ETH_IPV4, &ip);
        assert_passed(&mut lb, &f, Reason::PassBadIpHeader, what);
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_ipv6_bad_version_or_payload_length_is_bad_ip_header() {
    let mut lb = lb_with_vips();
    let good = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query");
    let payload = (good.len() - IPV6_HLEN) as u16;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for version in [0u8, 4, 7, 15] {
        let mut ip = good.clone();
        ip[0] = (version << 4) | (ip[0] & 0x0f);
        cases.push(("version not 6", ip));
    }
    for len in [payload + 1, 1500, u16::MAX] {
        let mut ip = good.clone();
        ip[4..6].copy_from_slice(&len.to_be_bytes());
        cases.push(("payload length beyond the frame", ip));
    }
    for (what, ip) in cases {
        let f = frame(LB_MAC, ROUTER_MAC, None, ETH_IPV6, &ip);
        assert_passed(&mut lb, &f, Reason::PassBadIpHeader, what);
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_truncated_packet_to_non_vip_is_passed_untouched_too() {
    // The parse comes before the VIP lookup: same verdicts elsewhere.
    let mut lb = lb_with_vips();
    let ip = tcp4(CLIENT_V4, 40000, "192.0.2.200", 80, Tcp::Syn, b"");
    let f = to_lb(&ip);
    assert_passed(&mut lb, &f[..30], Reason::PassBadIpHeader, "cut IP header");
    let cut = relength_v4(&ip[..IPV4_HLEN + 10]);
    assert_passed(&mut lb, &to_lb(&cut), Reason::PassBadL4Header, "cut TCP");
    assert_passed(&mut lb, &f, Reason::PassNonVip, "whole packet");
}

#[test]
fn golden_ethernet_padding_after_ip_packet_is_forwarded() {
    let mut lb = lb_with_vips();
    // A SYN is 54 bytes: Ethernet pads it to the 60-byte minimum.
    let inner = tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Syn, b"");
    let padding = [0u8; 6];
    let padded = cat(&to_lb(&inner), &padding);
    let flow = flow_of(&inner);
    let id = lb.ring_backend(&vip_key(VIP_V4, 80, PROTO_TCP), &flow);
    let before = lb.counts();
    let out = lb.run(&padded);
    // The outer length covers the inner packet, not the padding, which
    // stays behind it at the end of the frame.
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: encapsulated(id, &inner, &flow, &padding)
        }
    );
    assert_eq!(
        moved(&before, &lb.counts()),
        vec![
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::SynNotTracked, 1),
            (Reason::NewFlow, 1)
        ]
    );

    // IPv6 with trailing bytes after its payload length.
    let inner = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"q");
    let trailer = [0xa5u8; 7];
    let flow = flow_of(&inner);
    let id = lb.ring_backend(&vip_key(VIP_V6, 53, PROTO_UDP), &flow);
    let before = lb.counts();
    let out = lb.run(&cat(&to_lb(&inner), &trailer));
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: encapsulated(id, &inner, &flow, &trailer)
        }
    );
    assert_eq!(
        moved(&before, &lb.counts()),
        vec![
            (Reason::Tx, 1),
            (Reason::ConnMiss, 1),
            (Reason::NewFlow, 1),
            (Reason::ConnProbation, 1)
        ]
    );
    assert!(lb.maps.probation_entry(&flow).unwrap().is_some());
}

#[test]
fn golden_ipv4_options_are_skipped_for_ports_and_carried_in_tunnel() {
    let mut lb = lb_with_vips();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    // Router alert (4 bytes), NOPs + end (8), the 40-byte maximum.
    let mut max = vec![1u8; 39];
    max.push(0);
    let options: [&[u8]; 3] = [&[0x94, 0x04, 0, 0], &[1, 1, 1, 1, 1, 1, 1, 0], &max];
    for (i, opts) in options.iter().enumerate() {
        let mut h = ipv4_header(CLIENT_V4, VIP_V4, 0, 0);
        h.options = (*opts).try_into().unwrap();
        let inner = udp4_with(h, 40000 + i as u16, 53, b"query");
        assert_eq!(inner[0] & 0x0f, 5 + opts.len() as u8 / 4);
        let flow = flow_of(&inner);
        assert_eq!((flow.sport, flow.dport), (40000 + i as u16, 53));
        let id = lb.ring_backend(&key, &flow);
        let before = lb.counts();
        let out = lb.run(&to_lb(&inner));
        assert_eq!(
            out,
            Outcome {
                action: XDP_TX,
                data: encapsulated(id, &inner, &flow, b"")
            },
            "{} bytes of options",
            opts.len()
        );
        assert_eq!(
            moved(&before, &lb.counts()),
            vec![
                (Reason::Tx, 1),
                (Reason::ConnMiss, 1),
                (Reason::NewFlow, 1),
                (Reason::ConnProbation, 1)
            ]
        );
        // The entry (on probation: a first packet) is keyed by the ports
        // read past the options.
        assert_eq!(
            lb.maps.probation_entry(&flow).unwrap().unwrap().backend_id,
            id
        );
    }
}

#[test]
fn golden_ipv6_four_extension_headers_are_walked_to_the_ports() {
    let mut lb = lb_with_vips();
    let key = vip_key(VIP_V6, 53, PROTO_UDP);
    let chains = [
        vec![hop_by_hop()],
        vec![dest_opts()],
        vec![hop_by_hop(), routing()],
        vec![hop_by_hop(), routing(), atomic_fragment(7), dest_opts()],
    ];
    for (i, exts) in chains.iter().enumerate() {
        let plain = udp6(CLIENT_V6, 40000 + i as u16, VIP_V6, 53, b"query");
        let inner = with_ext_headers(&plain, exts);
        // The flow is the plain packet's: same addresses, ports, protocol.
        let flow = flow_of(&plain);
        let id = lb.ring_backend(&key, &flow);
        let before = lb.counts();
        let out = lb.run(&to_lb(&inner));
        assert_eq!(
            out,
            Outcome {
                action: XDP_TX,
                data: encapsulated(id, &inner, &flow, b"")
            },
            "{} extension headers",
            exts.len()
        );
        // An atomic fragment is a whole datagram: no fragment event.
        assert_eq!(
            moved(&before, &lb.counts()),
            vec![
                (Reason::Tx, 1),
                (Reason::ConnMiss, 1),
                (Reason::NewFlow, 1),
                (Reason::ConnProbation, 1)
            ]
        );
        assert_eq!(
            lb.maps.probation_entry(&flow).unwrap().unwrap().backend_id,
            id
        );
    }
}

#[test]
fn golden_ipv6_five_extension_headers_are_passed_untouched() {
    let mut lb = lb_with_vips();
    let plain = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query");
    let five = [
        hop_by_hop(),
        dest_opts(),
        routing(),
        atomic_fragment(7),
        dest_opts(),
    ];
    let ip = with_ext_headers(&plain, &five);
    assert_passed(
        &mut lb,
        &to_lb(&ip),
        Reason::PassIpv6ExtHeaders,
        "five extension headers",
    );
    let mut six = five.to_vec();
    six.push(dest_opts());
    let ip = with_ext_headers(&plain, &six);
    assert_passed(
        &mut lb,
        &to_lb(&ip),
        Reason::PassIpv6ExtHeaders,
        "six extension headers",
    );
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_ipv6_extension_header_past_the_packet_is_passed_untouched() {
    let mut lb = lb_with_vips();
    let plain = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query");
    // A hop-by-hop header with one byte of it present.
    let mut ip = plain[..IPV6_HLEN + 1].to_vec();
    ip[6] = 0;
    let ip = relength_v6(&ip);
    assert_passed(
        &mut lb,
        &to_lb(&ip),
        Reason::PassIpv6ExtHeaders,
        "hop-by-hop header cut",
    );
    // Two headers, the second cut after its first byte.
    let two = with_ext_headers(&plain, &[hop_by_hop(), dest_opts()]);
    let ip = relength_v6(&two[..IPV6_HLEN + 8 + 1]);
    assert_passed(
        &mut lb,
        &to_lb(&ip),
        Reason::PassIpv6ExtHeaders,
        "second extension header cut",
    );
    // A hop-by-hop header claiming 16 bytes where 8 are: the UDP header it
    // points to runs past the packet.
    let mut ip = with_ext_headers(&plain, &[hop_by_hop()]);
    ip[IPV6_HLEN + 1] = 1;
    assert_passed(
        &mut lb,
        &to_lb(&ip),
        Reason::PassBadL4Header,
        "hop-by-hop length past the packet",
    );
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}

#[test]
fn golden_ipv6_truncated_extension_header_of_each_type_is_counted_as_extension_header_problem() {
    let mut lb = lb_with_vips();
    let plain = udp6(CLIENT_V6, 40000, VIP_V6, 53, b"query");
    let kinds = [
        ("hop-by-hop", hop_by_hop()),
        ("routing", routing()),
        ("destination options", dest_opts()),
        ("fragment", atomic_fragment(7)),
    ];
    for (name, ext) in kinds {
        let whole = with_ext_headers(&plain, std::slice::from_ref(&ext));
        // The packet ends 4 bytes into the extension header.
        let ip = relength_v6(&whole[..IPV6_HLEN + 4]);
        assert_passed(
            &mut lb,
            &to_lb(&ip),
            Reason::PassIpv6ExtHeaders,
            &format!("{name} header cut after 4 bytes"),
        );
        // The packet ends after the header's first 8 bytes, where the
        // header says it is longer (fragment headers are always 8).
        if ext.0 != 44 {
            let mut ip = whole[..IPV6_HLEN + 8].to_vec();
            ip[IPV6_HLEN + 1] = 1;
            let ip = relength_v6(&ip);
            assert_passed(
                &mut lb,
                &to_lb(&ip),
                Reason::PassIpv6ExtHeaders,
                &format!("{name} header longer than the packet"),
            );
        }
        // Behind a complete hop-by-hop header, the same cut.
        let two = with_ext_headers(&plain, &[hop_by_hop(), ext]);
        let ip = relength_v6(&two[..IPV6_HLEN + 8 + 4]);
        assert_passed(
            &mut lb,
            &to_lb(&ip),
            Reason::PassIpv6ExtHeaders,
            &format!("{name} header cut behind a hop-by-hop header"),
        );
    }
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
    assert_eq!(lb.maps.probation_count(usize::MAX), 0);
}

/// A frame with one VLAN tag of protocol `tpid`.
fn tagged(dst: [u8; 6], src: [u8; 6], tpid: u16, tci: u16, ether_type: u16, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

#[test]
fn golden_single_vlan_tag_8021q_or_8021ad_is_kept_on_the_tunnel() {
    let mut lb = lb_with_vips();
    let key = vip_key(VIP_V4, 53, PROTO_UDP);
    // TCI with priority bits and DEI set, so the whole tag must be copied.
    for (i, tpid) in [0x8100u16, 0x88a8].into_iter().enumerate() {
        let tci = 0xb000 | 0x123;
        let inner = udp4(CLIENT_V4, 41000 + i as u16, VIP_V4, 53, b"query");
        let flow = flow_of(&inner);
        let id = lb.ring_backend(&key, &flow);
        let before = lb.counts();
        let out = lb.run(&tagged(LB_MAC, ROUTER_MAC, tpid, tci, ETH_IPV4, &inner));
        let outer = outer_v4(OUTER_SRC_V4, backend_addr(id), &inner);
        let expected = tagged(
            GATEWAY_MAC,
            LB_MAC,
            tpid,
            tci,
            ETH_IPV4,
            &cat(&outer, &inner),
        );
        assert_eq!(
            out,
            Outcome {
                action: XDP_TX,
                data: expected
            },
            "TPID {tpid:#06x}"
        );
        assert_eq!(
            moved(&before, &lb.counts()),
            vec![
                (Reason::Tx, 1),
                (Reason::ConnMiss, 1),
                (Reason::NewFlow, 1),
                (Reason::ConnProbation, 1)
            ]
        );
    }
}

#[test]
fn golden_stacked_vlan_tags_and_non_ip_are_passed_untouched() {
    let mut lb = lb_with_vips();
    let ip = udp4(CLIENT_V4, 40000, VIP_V4, 53, b"query");
    // 802.1ad outer tag, 802.1Q inner tag (QinQ): one tag is all we read.
    let inner_tag = cat(&cat(&[0x00, 0x64], &ETH_IPV4.to_be_bytes()), &ip);
    let qinq = tagged(LB_MAC, ROUTER_MAC, 0x88a8, 0x00c8, 0x8100, &inner_tag);
    assert_passed(&mut lb, &qinq, Reason::PassNotIp, "QinQ");
    let arp = frame(LB_MAC, ROUTER_MAC, None, 0x0806, &[0u8; 28]);
    assert_passed(&mut lb, &arp, Reason::PassNotIp, "ARP");
    let tagged_arp = frame(LB_MAC, ROUTER_MAC, Some(5), 0x0806, &[0u8; 28]);
    assert_passed(&mut lb, &tagged_arp, Reason::PassNotIp, "tagged ARP");
    assert_eq!(lb.maps.conn_count(usize::MAX), 0);
}
