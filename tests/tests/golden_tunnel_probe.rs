//! The inner packets of the probe through the tunnel
//! (`lb_userspace::tunnel_probe::packet`), compared byte for byte with the
//! same packets built by etherparse: header fields, lengths and checksums.

use std::net::SocketAddr;

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader};
use lb_tests::packets::{OUTER_SRC_V4, OUTER_SRC_V6, VIP_V4, VIP_V6};
use lb_userspace::tunnel_probe::packet::{self, Flow, INNER_TTL, SYN_WINDOW};

const SPORT: u16 = 40123;
const ISN: u32 = 0xfedc_ba98;

fn flow(src: &str, dst: &str, dport: u16) -> Flow {
    let src: SocketAddr = SocketAddr::new(src.parse().unwrap(), SPORT);
    let dst: SocketAddr = SocketAddr::new(dst.parse().unwrap(), dport);
    Flow::new(src, dst).expect("one family")
}

fn v4_flow() -> Flow {
    flow(OUTER_SRC_V4, VIP_V4, 80)
}

fn v6_flow() -> Flow {
    flow(OUTER_SRC_V6, VIP_V6, 80)
}

/// The IP header etherparse builds for `flow`, carrying `len` bytes of
/// `proto`: IPv4 with DF, id 0, TTL 64; IPv6 with no class or label.
enum Ip {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

fn ip_header(flow: &Flow, proto: IpNumber, len: usize) -> Ip {
    match flow {
        Flow::V4 { src, dst } => {
            let mut h = Ipv4Header::new(
                len as u16,
                INNER_TTL,
                proto,
                src.ip().octets(),
                dst.ip().octets(),
            )
            .unwrap();
            assert!(h.dont_fragment && h.identification == 0);
            h.header_checksum = h.calc_header_checksum();
            Ip::V4(h)
        }
        Flow::V6 { src, dst } => Ip::V6(Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: len as u16,
            next_header: proto,
            hop_limit: INNER_TTL,
            source: src.ip().octets(),
            destination: dst.ip().octets(),
        }),
    }
}

fn ip_bytes(ip: &Ip) -> Vec<u8> {
    match ip {
        Ip::V4(h) => h.to_bytes().to_vec(),
        Ip::V6(h) => h.to_bytes().to_vec(),
    }
}

/// A whole TCP packet of `flow` with `tcp`'s fields, checksummed by etherparse.
fn etherparse_tcp(flow: &Flow, mut tcp: TcpHeader) -> Vec<u8> {
    let ip = ip_header(flow, IpNumber::TCP, tcp.header_len());
    tcp.checksum = match &ip {
        Ip::V4(h) => tcp.calc_checksum_ipv4(h, &[]).unwrap(),
        Ip::V6(h) => tcp.calc_checksum_ipv6(h, &[]).unwrap(),
    };
    let mut p = ip_bytes(&ip);
    p.extend_from_slice(&tcp.to_bytes());
    p
}

fn etherparse_udp(flow: &Flow, payload: &[u8]) -> Vec<u8> {
    let (sport, dport) = (flow.src().port(), flow.dst().port());
    let ip = ip_header(flow, IpNumber::UDP, 8 + payload.len());
    let udp = match &ip {
        Ip::V4(h) => UdpHeader::with_ipv4_checksum(sport, dport, h, payload).unwrap(),
        Ip::V6(h) => UdpHeader::with_ipv6_checksum(sport, dport, h, payload).unwrap(),
    };
    let mut p = ip_bytes(&ip);
    p.extend_from_slice(&udp.to_bytes());
    p.extend_from_slice(payload);
    p
}

fn syn_header(flow: &Flow) -> TcpHeader {
    let mut h = TcpHeader::new(flow.src().port(), flow.dst().port(), ISN, SYN_WINDOW);
    h.syn = true;
    h
}

#[test]
fn golden_tunnel_probe_ipv4_syn_is_etherparse_s() {
    let f = v4_flow();
    assert_eq!(packet::tcp_syn(&f, ISN), etherparse_tcp(&f, syn_header(&f)));
}

#[test]
fn golden_tunnel_probe_ipv6_syn_is_etherparse_s() {
    let f = v6_flow();
    assert_eq!(packet::tcp_syn(&f, ISN), etherparse_tcp(&f, syn_header(&f)));
}

#[test]
fn golden_tunnel_probe_rst_carries_the_next_sequence_number() {
    for f in [v4_flow(), v6_flow()] {
        let mut rst = TcpHeader::new(f.src().port(), f.dst().port(), ISN.wrapping_add(1), 0);
        rst.rst = true;
        assert_eq!(packet::tcp_rst(&f, ISN), etherparse_tcp(&f, rst), "{f:?}");
    }
    // The sequence number wraps.
    let f = v4_flow();
    let mut rst = TcpHeader::new(SPORT, 80, 0, 0);
    rst.rst = true;
    assert_eq!(packet::tcp_rst(&f, u32::MAX), etherparse_tcp(&f, rst));
}

#[test]
fn golden_tunnel_probe_udp_carries_the_check_payload() {
    // Even and odd lengths: the checksum pads an odd last byte.
    for payload in [&b"ping"[..], b"PING?", b""] {
        for f in [
            flow(OUTER_SRC_V4, VIP_V4, 53),
            flow(OUTER_SRC_V6, VIP_V6, 53),
        ] {
            assert_eq!(
                packet::udp(&f, payload),
                etherparse_udp(&f, payload),
                "{f:?} {payload:?}"
            );
        }
    }
}

#[test]
fn golden_tunnel_probe_syn_goes_to_the_check_port() {
    // `health_check.port` differs from the VIP's port: the SYN goes there.
    for f in [
        flow(OUTER_SRC_V4, VIP_V4, 8080),
        flow(OUTER_SRC_V6, VIP_V6, 8080),
    ] {
        let syn = packet::tcp_syn(&f, ISN);
        assert_eq!(syn, etherparse_tcp(&f, syn_header(&f)), "{f:?}");
        let tcp = &syn[syn.len() - 20..];
        assert_eq!(&tcp[2..4], &8080u16.to_be_bytes());
    }
}
