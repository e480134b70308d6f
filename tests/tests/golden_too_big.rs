//! Golden packets for path-MTU discovery through the tunnel: a client
//! packet too big for `mtu` once encapsulated is answered with an ICMP
//! "fragmentation needed" or ICMPv6 "packet too big" from the VIP, back
//! out of the interface it came in on; what is not answered is dropped as
//! it arrived. Expected answers are built with etherparse from the input.

use etherparse::PacketBuilder;
use lb_common::{Reason, flow::*, maps::*};
use lb_tests::{harness::*, packets::*};

/// An LB with one TCP VIP on port 80 of `vip`, served by `backend`.
fn lb_with(vip: &str, backend: &str) -> Lb {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(vip, 80, PROTO_TCP),
        0,
        &[BackendSpec::new(1, backend)],
    );
    lb
}

/// A TCP segment with DF set (etherparse's default) of `len` IP bytes.
fn tcp4_of_len(sport: u16, len: usize) -> Vec<u8> {
    tcp4(
        CLIENT_V4,
        sport,
        VIP_V4,
        80,
        Tcp::Ack,
        &vec![0x55; len - 40],
    )
}

fn tcp6_of_len(sport: u16, len: usize) -> Vec<u8> {
    tcp6(
        CLIENT_V6,
        sport,
        VIP_V6,
        80,
        Tcp::Ack,
        &vec![0x66; len - 60],
    )
}

/// Counters of the first TCP segment after the handshake that is
/// answered: it misses the connection table (and goes on probation, pinned
/// to its backend like any first packet), then is answered.
const ANSWERED_FIRST: &[(Reason, u64)] = &[
    (Reason::ConnMiss, 1),
    (Reason::ConnProbation, 1),
    (Reason::AnswerTooBig, 1),
];

/// Bind this thread to the CPU it is on: the rate limit is per CPU.
fn stay_on_this_cpu() {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for this thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn golden_ipv4_df_too_big_is_answered_with_icmp_fragmentation_needed() {
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    // MTU 1500 - 20 (IPv4 tunnel header) = 1480: 1481 bytes are too big.
    let big = to_lb(&tcp4_of_len(40000, 1481));
    let (out, counted) = lb.run_counted(&big);
    assert_eq!(
        (out, counted),
        (
            Outcome {
                action: XDP_TX,
                data: too_big_answer(&big, None, 1480)
            },
            ANSWERED_FIRST.to_vec()
        )
    );
    // Not forwarded: the VIP counts it as not delivered, no backend sees it.
    let vip = lb.maps.vip_stats(0).unwrap();
    assert_eq!((vip.packets, vip.dropped), (0, 1));
    assert_eq!(lb.maps.backend_stats(1).unwrap().packets, 0);
}

#[test]
fn golden_ipv4_too_big_for_an_ipv6_tunnel_reports_mtu_minus_40_and_quotes_548_bytes() {
    let mut lb = lb_with(VIP_V4, BACKEND_V6[0]);
    let big = to_lb(&tcp4_of_len(40001, 1461));
    let out = lb.run(&big);
    assert_eq!(
        out,
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&big, None, 1460)
        }
    );
    // 14 Ethernet + 576 IP: the original header and 528 bytes of payload.
    assert_eq!(out.data.len(), 14 + 576);
    assert_eq!(&out.data[14 + 28..], &big[14..14 + TOO_BIG_V4_QUOTE]);
}

#[test]
fn golden_ipv6_too_big_is_answered_with_icmpv6_packet_too_big() {
    let mut lb = lb_with(VIP_V6, BACKEND_V6[0]);
    // 1500 - 40 (IPv6 tunnel header) = 1460.
    let big = to_lb(&tcp6_of_len(40002, 1461));
    let (out, counted) = lb.run_counted(&big);
    assert_eq!(
        (out.clone(), counted),
        (
            Outcome {
                action: XDP_TX,
                data: too_big_answer(&big, None, 1460)
            },
            ANSWERED_FIRST.to_vec()
        )
    );
    // As much as fits in 1280 bytes.
    assert_eq!(out.data.len(), 14 + 1280);
}

#[test]
fn golden_ipv4_answer_quotes_a_shorter_packet_whole_whatever_its_length() {
    // With a path of 500 bytes (480 inside the tunnel) packets shorter
    // than the 548-byte quote limit are too big: each is quoted whole, so
    // the ICMP checksum runs over every length from 489 to 556 bytes, odd
    // ones included.
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    lb.maps
        .set_config(&LbConfig {
            mtu: 500,
            ..Lb::standard_config()
        })
        .unwrap();
    lb.maps
        .set_too_big_limit(&TooBigLimit {
            interval_ns: 1,
            burst_ns: 1_000_000_000,
        })
        .unwrap();
    for len in 481..=TOO_BIG_V4_QUOTE + 1 {
        let big = to_lb(&tcp4_of_len(40100 + len as u16, len));
        let want = too_big_answer(&big, None, 480);
        assert_eq!(
            want.len(),
            14 + 28 + len.min(TOO_BIG_V4_QUOTE),
            "length {len}"
        );
        assert_eq!(
            lb.run(&big),
            Outcome {
                action: XDP_TX,
                data: want
            },
            "length {len}"
        );
    }
}

#[test]
fn golden_too_big_with_a_vlan_tag_is_answered_on_the_same_vlan() {
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    let ip = tcp4_of_len(40004, 1500);
    let tagged = frame(LB_MAC, ROUTER_MAC, Some(7), ETH_IPV4, &ip);
    assert_eq!(
        lb.run(&tagged),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&tagged, Some(7), 1480)
        }
    );
    let mut lb6 = lb_with(VIP_V6, BACKEND_V6[0]);
    let ip6 = tcp6_of_len(40005, 1500);
    let tagged6 = frame(LB_MAC, ROUTER_MAC, Some(4094), ETH_IPV6, &ip6);
    assert_eq!(
        lb6.run(&tagged6),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&tagged6, Some(4094), 1460)
        }
    );
}

#[test]
fn golden_too_big_beyond_the_rate_limit_is_dropped_untouched() {
    stay_on_this_cpu();
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    // One answer a second, two back to back.
    lb.maps
        .set_too_big_limit(&TooBigLimit {
            interval_ns: 1_000_000_000,
            burst_ns: 2_000_000_000,
        })
        .unwrap();
    for sport in [40010, 40011] {
        let big = to_lb(&tcp4_of_len(sport, 1481));
        assert_eq!(
            lb.run(&big),
            Outcome {
                action: XDP_TX,
                data: too_big_answer(&big, None, 1480)
            }
        );
    }
    let third = to_lb(&tcp4_of_len(40012, 1481));
    let (out, counted) = lb.run_counted(&third);
    assert_eq!(
        (out, counted),
        (
            Outcome {
                action: XDP_DROP,
                data: third.clone()
            },
            vec![
                (Reason::DropTooBig, 1),
                (Reason::ConnMiss, 1),
                (Reason::ConnProbation, 1)
            ]
        )
    );
    assert_eq!(lb.count(Reason::AnswerTooBig), 2);
    // A limit of zero answers nothing.
    lb.maps.set_too_big_limit(&TooBigLimit::default()).unwrap();
    assert_eq!(lb.run(&third).action, XDP_DROP);
    assert_eq!(lb.count(Reason::DropTooBig), 2);
}

#[test]
fn golden_ipv4_without_df_is_dropped_and_the_same_with_df_answered() {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    let mut h = ipv4_header(CLIENT_V4, VIP_V4, 0, 0);
    h.dont_fragment = false;
    let no_df = to_lb(&udp4_with(h.clone(), 5353, 53, &[0x44; 1481 - 28]));
    let (out, counted) = lb.run_counted(&no_df);
    assert_eq!(
        (out, counted),
        (
            Outcome {
                action: XDP_DROP,
                data: no_df
            },
            vec![
                (Reason::DropTooBig, 1),
                (Reason::ConnMiss, 1),
                (Reason::NewFlow, 1),
                (Reason::ConnProbation, 1)
            ]
        )
    );
    h.dont_fragment = true;
    let df = to_lb(&udp4_with(h, 5353, 53, &[0x44; 1481 - 28]));
    assert_eq!(
        lb.run(&df),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&df, None, 1480)
        }
    );
}

#[test]
fn golden_packet_that_fits_is_forwarded_unchanged_one_byte_more_is_answered() {
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    let fits = tcp4_of_len(40020, 1480);
    assert_eq!(
        lb.run(&to_lb(&fits)),
        Outcome {
            action: XDP_TX,
            data: tunnelled(&fits, BACKEND_V4[0])
        }
    );
    let big = to_lb(&tcp4_of_len(40020, 1481));
    assert_eq!(
        lb.run(&big),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&big, None, 1480)
        }
    );
    assert_eq!(
        (lb.count(Reason::Tx), lb.count(Reason::AnswerTooBig)),
        (1, 1)
    );
}

#[test]
fn golden_icmp_too_big_that_is_itself_too_big_is_dropped_not_answered() {
    // A router's fragmentation-needed about a VIP reply goes to the
    // backend; if it does not fit the tunnel it is dropped: no ICMP error
    // about an ICMP error. A TCP segment of the same size is answered.
    let mut lb = lb_with(VIP_V4, BACKEND_V4[0]);
    lb.maps
        .set_config(&LbConfig {
            mtu: 590,
            ..Lb::standard_config()
        })
        .unwrap();
    let reply = tcp4(VIP_V4, 80, CLIENT_V4, 40030, Tcp::Ack, &[0x77; 1400]);
    let mut frag_needed = Vec::new();
    PacketBuilder::ipv4(v4("192.0.2.1"), v4(VIP_V4), 64)
        .icmpv4_raw(3, 4, [0, 0, 0x05, 0x78])
        .write(&mut frag_needed, &reply[..TOO_BIG_V4_QUOTE])
        .unwrap();
    assert_eq!(frag_needed.len(), 576);
    let frame_in = to_lb(&frag_needed);
    let (out, counted) = lb.run_counted(&frame_in);
    assert_eq!(
        (out, counted),
        (
            Outcome {
                action: XDP_DROP,
                data: frame_in
            },
            vec![(Reason::DropTooBig, 1), (Reason::IcmpTooBig, 1)]
        )
    );
    let tcp = to_lb(&tcp4_of_len(40031, 576));
    assert_eq!(
        lb.run(&tcp),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&tcp, None, 570)
        }
    );
}

#[test]
fn golden_ipv6_path_below_1280_is_dropped_not_answered() {
    // Clients discard a packet-too-big below the IPv6 minimum MTU, so the
    // LB does not send one (lbd refuses such an `mtu` for IPv6 VIPs).
    let mut lb = lb_with(VIP_V6, BACKEND_V6[0]);
    lb.maps
        .set_config(&LbConfig {
            mtu: 1319,
            ..Lb::standard_config()
        })
        .unwrap();
    let big = to_lb(&tcp6_of_len(40040, 1281));
    let (out, _) = lb.run_counted(&big);
    assert_eq!(
        out,
        Outcome {
            action: XDP_DROP,
            data: big
        }
    );
    assert_eq!(lb.count(Reason::DropTooBig), 1);
    // At 1320 the same packet is answered with 1280.
    lb.maps
        .set_config(&LbConfig {
            mtu: 1320,
            ..Lb::standard_config()
        })
        .unwrap();
    let big = to_lb(&tcp6_of_len(40041, 1281));
    assert_eq!(
        lb.run(&big),
        Outcome {
            action: XDP_TX,
            data: too_big_answer(&big, None, 1280)
        }
    );
}
