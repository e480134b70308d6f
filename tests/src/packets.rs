//! Packet builders for the tests: IP packets from etherparse, framed with
//! Ethernet (and optionally a VLAN tag) by hand so expected outputs can be
//! composed from the same parts. Addresses are documentation ranges.

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpDscp, IpEcn, IpHeaders, IpNumber,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, TcpHeader, icmpv4::DestUnreachableHeader,
};
use lb_common::{
    FlowKey,
    flow::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6},
};

pub const CLIENT_V4: &str = "203.0.113.7";
pub const CLIENT_V6: &str = "2001:db8:c::7";
pub const VIP_V4: &str = "198.51.100.10";
pub const VIP_V6: &str = "2001:db8:100::10";
pub const OUTER_SRC_V4: &str = "198.51.100.2";
pub const OUTER_SRC_V6: &str = "2001:db8:100::2";
pub const BACKEND_V4: [&str; 3] = ["198.51.100.101", "198.51.100.102", "198.51.100.103"];
pub const BACKEND_V6: [&str; 3] = ["2001:db8:200::1", "2001:db8:200::2", "2001:db8:200::3"];
/// A router on the path between a backend and its client.
pub const ROUTER_V4: &str = "192.0.2.1";
pub const ROUTER_V6: &str = "2001:db8:ffff::1";

/// The upstream router that hands client packets to the LB.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// The LB's own interface.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The configured next hop towards the backends.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, i]
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;

pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .expect("IPv4 address")
        .octets()
}

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("IPv6 address")
        .octets()
}

/// Ethernet header (+ optional 802.1Q tag with `vlan` id) and payload.
pub fn frame(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ether_type: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(id) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A client packet as it reaches the LB: router -> LB MAC.
pub fn to_lb(ip_packet: &[u8]) -> Vec<u8> {
    frame(
        LB_MAC,
        ROUTER_MAC,
        None,
        ether_type_of(ip_packet),
        ip_packet,
    )
}

pub fn ether_type_of(ip_packet: &[u8]) -> u16 {
    if ip_packet[0] >> 4 == 6 {
        ETH_IPV6
    } else {
        ETH_IPV4
    }
}

/// TCP flags for the builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    Ack,
    SynAck,
    /// FIN with ACK: the client closes its side.
    FinAck,
    /// RST with ACK: the client aborts.
    RstAck,
}

fn tcp_header(sport: u16, dport: u16, flags: Tcp) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    match flags {
        Tcp::Syn => h.syn = true,
        Tcp::Ack => {
            h.ack = true;
            h.acknowledgment_number = 1;
        }
        Tcp::SynAck => {
            h.syn = true;
            h.ack = true;
        }
        Tcp::FinAck | Tcp::RstAck => {
            h.fin = flags == Tcp::FinAck;
            h.rst = flags == Tcp::RstAck;
            h.ack = true;
            h.acknowledgment_number = 1;
        }
    }
    h
}

/// An IPv4 TCP packet with `payload`.
pub fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(v4(src), v4(dst), 64).tcp_header(tcp_header(sport, dport, flags));
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

pub fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(v6(src), v6(dst), 64).tcp_header(tcp_header(sport, dport, flags));
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

pub fn udp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(v4(src), v4(dst), 64).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

pub fn udp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(v6(src), v6(dst), 64).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

/// An IPv4 UDP packet from an explicit header (options, TOS, fragments).
pub fn udp4_with(header: Ipv4Header, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ip(IpHeaders::Ipv4(header, Default::default())).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

/// An IPv6 UDP packet with a given traffic class.
pub fn udp6_tc(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    traffic_class: u8,
    payload: &[u8],
) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: 0,
        next_header: IpNumber::UDP,
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    };
    let b = PacketBuilder::ip(IpHeaders::Ipv6(h, Default::default())).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

/// A 20-byte IPv4 header (no options) for `udp4_with`.
pub fn ipv4_header(src: &str, dst: &str, dscp: u8, ecn: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, v4(src), v4(dst)).expect("header");
    h.dscp = IpDscp::try_new(dscp).expect("dscp");
    h.ecn = IpEcn::try_new(ecn).expect("ecn");
    h
}

/// The outer IPv4 header the LB puts in front of `inner`.
pub fn outer_v4(src: &str, dst: &str, inner: &[u8]) -> Vec<u8> {
    let (proto, tos) = if inner[0] >> 4 == 4 {
        (PROTO_IPIP, inner[1])
    } else {
        (PROTO_IPV6, (inner[0] << 4) | (inner[1] >> 4))
    };
    let mut h =
        Ipv4Header::new(inner.len() as u16, 64, IpNumber(proto), v4(src), v4(dst)).expect("outer");
    h.dont_fragment = true;
    h.identification = 0;
    h.dscp = IpDscp::try_new(tos >> 2).unwrap();
    h.ecn = IpEcn::try_new(tos & 3).unwrap();
    h.header_checksum = h.calc_header_checksum();
    h.to_bytes().to_vec()
}

/// The outer IPv6 header the LB puts in front of `inner`, whose flow is `flow`.
pub fn outer_v6(src: &str, dst: &str, inner: &[u8], flow: &FlowKey) -> Vec<u8> {
    let (next, tc) = if inner[0] >> 4 == 4 {
        (PROTO_IPIP, inner[1])
    } else {
        (PROTO_IPV6, (inner[0] << 4) | (inner[1] >> 4))
    };
    let label = lb_common::flow::tunnel_entropy_of(flow) & 0xfffff;
    let h = Ipv6Header {
        traffic_class: tc,
        flow_label: Ipv6FlowLabel::try_new(label).unwrap(),
        payload_length: inner.len() as u16,
        next_header: IpNumber(next),
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    };
    h.to_bytes().to_vec()
}

/// The encapsulated frame the LB sends for `inner` to backend `to`, out of
/// the interface it came in on towards the gateway.
pub fn tunnelled(inner: &[u8], to: &str) -> Vec<u8> {
    if to.contains(':') {
        let outer = outer_v6(OUTER_SRC_V6, to, inner, &flow_of(inner));
        frame(GATEWAY_MAC, LB_MAC, None, ETH_IPV6, &cat(&outer, inner))
    } else {
        frame(
            GATEWAY_MAC,
            LB_MAC,
            None,
            ETH_IPV4,
            &cat(&outer_v4(OUTER_SRC_V4, to, inner), inner),
        )
    }
}

/// Quoted bytes of the client's packet, at most: 576 bytes of ICMP error
/// in IPv4, 1280 in IPv6.
pub const TOO_BIG_V4_QUOTE: usize = 576 - 20 - 8;
pub const TOO_BIG_V6_QUOTE: usize = 1280 - 40 - 8;

/// The answer the LB sends for `frame_in` (from the router, to the LB,
/// tagged with `vlan` or not), reporting `mtu`: MACs swapped, from the VIP
/// to the client, quoting the start of the client's packet.
pub fn too_big_answer(frame_in: &[u8], vlan: Option<u16>, mtu: u32) -> Vec<u8> {
    let ip = &frame_in[if vlan.is_some() { 18 } else { 14 }..];
    let mut packet = Vec::new();
    if ip[0] >> 4 == 4 {
        let quote = &ip[..ip.len().min(TOO_BIG_V4_QUOTE)];
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            }),
            quote,
        );
        let (client, vip) = (&ip[12..16], &ip[16..20]);
        let mut h = Ipv4Header::new(
            (icmp.header_len() + quote.len()) as u16,
            64,
            IpNumber::ICMP,
            vip.try_into().unwrap(),
            client.try_into().unwrap(),
        )
        .unwrap();
        // Precedence 6 (internetwork control), DF, ID 0.
        h.dscp = IpDscp::try_new(0xc0 >> 2).unwrap();
        h.dont_fragment = true;
        h.identification = 0;
        h.header_checksum = h.calc_header_checksum();
        packet.extend_from_slice(&h.to_bytes());
        packet.extend_from_slice(&icmp.to_bytes());
        packet.extend_from_slice(quote);
    } else {
        let quote = &ip[..ip.len().min(TOO_BIG_V6_QUOTE)];
        let client: [u8; 16] = ip[8..24].try_into().unwrap();
        let vip: [u8; 16] = ip[24..40].try_into().unwrap();
        let icmp =
            Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, vip, client, quote)
                .unwrap();
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (icmp.header_len() + quote.len()) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source: vip,
            destination: client,
        };
        packet.extend_from_slice(&h.to_bytes());
        packet.extend_from_slice(&icmp.to_bytes());
        packet.extend_from_slice(quote);
    }
    frame(ROUTER_MAC, LB_MAC, vlan, ether_type_of(ip), &packet)
}

/// `a` followed by `b`.
pub fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    v
}

/// The flow key the data plane derives from an IP packet (no extension
/// headers, no options), for computing expected backends.
pub fn flow_of(ip_packet: &[u8]) -> FlowKey {
    let mut k = FlowKey::default();
    let (l4, proto) = if ip_packet[0] >> 4 == 4 {
        k.family = 4;
        k.src[..4].copy_from_slice(&ip_packet[12..16]);
        k.dst[..4].copy_from_slice(&ip_packet[16..20]);
        (((ip_packet[0] & 0xf) as usize) * 4, ip_packet[9])
    } else {
        k.family = 6;
        k.src.copy_from_slice(&ip_packet[8..24]);
        k.dst.copy_from_slice(&ip_packet[24..40]);
        (40, ip_packet[6])
    };
    k.proto = proto;
    k.sport = u16::from_be_bytes([ip_packet[l4], ip_packet[l4 + 1]]);
    k.dport = u16::from_be_bytes([ip_packet[l4 + 2], ip_packet[l4 + 3]]);
    k
}

/// ICMPv4 "fragmentation needed" (MTU 1400) from a router to the VIP,
/// quoting `quoted` (the start of the backend's too-big reply).
pub fn frag_needed(quoted: &[u8]) -> Vec<u8> {
    let mtu = 1400u16.to_be_bytes();
    let b =
        PacketBuilder::ipv4(v4(ROUTER_V4), v4(VIP_V4), 64).icmpv4_raw(3, 4, [0, 0, mtu[0], mtu[1]]);
    let mut out = Vec::new();
    b.write(&mut out, quoted).unwrap();
    out
}

/// ICMPv6 "packet too big" (MTU 1280) from a router to the VIP.
pub fn packet_too_big(quoted: &[u8]) -> Vec<u8> {
    let b =
        PacketBuilder::ipv6(v6(ROUTER_V6), v6(VIP_V6), 64).icmpv6_raw(2, 0, 1280u32.to_be_bytes());
    let mut out = Vec::new();
    b.write(&mut out, quoted).unwrap();
    out
}

/// The flow of an ICMP message as the data plane reads it (no ports).
pub fn icmp_flow(icmp: &[u8]) -> FlowKey {
    let mut k = FlowKey::default();
    if icmp[0] >> 4 == 4 {
        k.family = FAMILY_V4;
        k.proto = PROTO_ICMP;
        k.src[..4].copy_from_slice(&icmp[12..16]);
        k.dst[..4].copy_from_slice(&icmp[16..20]);
    } else {
        k.family = FAMILY_V6;
        k.proto = PROTO_ICMPV6;
        k.src.copy_from_slice(&icmp[8..24]);
        k.dst.copy_from_slice(&icmp[24..40]);
    }
    k
}

/// Extension header bodies for `with_ext_headers`: (type, bytes after the
/// next-header byte).
pub fn hop_by_hop() -> (u8, Vec<u8>) {
    // Hdr Ext Len 0, PadN of 4.
    (0, vec![0, 1, 4, 0, 0, 0, 0])
}

pub fn routing() -> (u8, Vec<u8>) {
    // Hdr Ext Len 0, an experimental type (253), segments left 0.
    (43, vec![0, 253, 0, 0, 0, 0, 0])
}

pub fn atomic_fragment(id: u32) -> (u8, Vec<u8>) {
    // Offset 0, M clear: a whole datagram in one fragment (RFC 6946).
    let mut b = vec![0, 0, 0];
    b.extend_from_slice(&id.to_be_bytes());
    (44, b)
}

/// A fragment header: `offset` in bytes (a multiple of 8), more fragments
/// to follow or not, the datagram's `id`.
pub fn fragment(offset: u16, more: bool, id: u32) -> (u8, Vec<u8>) {
    let mut b = vec![0];
    b.extend_from_slice(&((offset / 8) << 3 | more as u16).to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    (44, b)
}

pub fn dest_opts() -> (u8, Vec<u8>) {
    // Hdr Ext Len 1 (16 bytes), PadN of 12.
    let mut b = vec![1, 1, 12];
    b.extend_from_slice(&[0; 12]);
    (60, b)
}

/// An IPv6 packet (no extension headers) with `exts` inserted between its
/// fixed header and its upper-layer header.
pub fn with_ext_headers(ip: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let (mut h, _) = Ipv6Header::from_slice(ip).expect("IPv6 header");
    let upper = h.next_header;
    let mut chain = Vec::new();
    for (i, (_, body)) in exts.iter().enumerate() {
        chain.push(exts.get(i + 1).map_or(upper.0, |e| e.0));
        chain.extend_from_slice(body);
        assert_eq!(chain.len() % 8, 0, "extension header length");
    }
    h.next_header = IpNumber(exts[0].0);
    h.payload_length += chain.len() as u16;
    cat(&cat(&h.to_bytes(), &chain), &ip[Ipv6Header::LEN..])
}
