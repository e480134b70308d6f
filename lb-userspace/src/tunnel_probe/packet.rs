//! The inner packets of a tunnel probe, built byte by byte, and the one
//! reply of interest read back.
//!
//! The kernel adds the outer header (the raw socket's protocol is IPIP or
//! IPV6), so what is built here is exactly what the backend's kernel sees
//! after `lb_decap` has stripped that header: an IPv4 or IPv6 packet from
//! the tunnel source to the VIP. Checksums are complete, since no NIC
//! offload will finish them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use lb_common::flow::{PROTO_TCP, PROTO_UDP};

/// TTL / hop limit of the inner packet.
pub const INNER_TTL: u8 = 64;
/// Receive window announced in the SYN. Nothing is ever received on the
/// connection, so any value does.
pub const SYN_WINDOW: u16 = 64240;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
/// IPv4 flags and fragment offset: don't fragment, first and only piece.
const IPV4_DF: u16 = 0x4000;

/// Source and destination of an inner packet, of one family by
/// construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    V4 {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    V6 {
        src: SocketAddrV6,
        dst: SocketAddrV6,
    },
}

impl Flow {
    /// `None` when the two addresses are of different families.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Option<Self> {
        match (src, dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => Some(Self::V4 { src, dst }),
            (SocketAddr::V6(src), SocketAddr::V6(dst)) => Some(Self::V6 { src, dst }),
            _ => None,
        }
    }

    pub fn src(&self) -> SocketAddr {
        match self {
            Self::V4 { src, .. } => (*src).into(),
            Self::V6 { src, .. } => (*src).into(),
        }
    }

    pub fn dst(&self) -> SocketAddr {
        match self {
            Self::V4 { dst, .. } => (*dst).into(),
            Self::V6 { dst, .. } => (*dst).into(),
        }
    }
}

/// A TCP SYN with initial sequence number `isn` and no options.
pub fn tcp_syn(flow: &Flow, isn: u32) -> Vec<u8> {
    tcp(flow, isn, TCP_SYN, SYN_WINDOW)
}

/// The RST that ends the half-open connection a SYN with `isn` opened: it
/// carries the next sequence number, the only one the backend accepts in
/// SYN-RECEIVED (RFC 9293 3.10.7.4).
pub fn tcp_rst(flow: &Flow, isn: u32) -> Vec<u8> {
    tcp(flow, isn.wrapping_add(1), TCP_RST, 0)
}

/// A UDP datagram carrying `payload`.
pub fn udp(flow: &Flow, payload: &[u8]) -> Vec<u8> {
    let len = UDP_HDR_LEN + payload.len();
    let mut seg = Vec::with_capacity(len);
    let (sport, dport) = ports(flow);
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&(len as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let mut sum = transport_checksum(flow, PROTO_UDP, &seg);
    // 0 means "no checksum" in UDP over IPv4 and is invalid over IPv6; the
    // all-ones form is the same value (RFC 768, RFC 8200 8.1).
    if sum == 0 {
        sum = 0xffff;
    }
    seg[6..8].copy_from_slice(&sum.to_be_bytes());
    ip_packet(flow, PROTO_UDP, &seg)
}

fn tcp(flow: &Flow, seq: u32, flags: u8, window: u16) -> Vec<u8> {
    let mut seg = Vec::with_capacity(TCP_HDR_LEN);
    let (sport, dport) = ports(flow);
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
    seg.push(((TCP_HDR_LEN / 4) as u8) << 4); // data offset, no options
    seg.push(flags);
    seg.extend_from_slice(&window.to_be_bytes());
    seg.extend_from_slice(&[0, 0]); // checksum, below
    seg.extend_from_slice(&[0, 0]); // urgent pointer
    let sum = transport_checksum(flow, PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    ip_packet(flow, PROTO_TCP, &seg)
}

fn ports(flow: &Flow) -> (u16, u16) {
    (flow.src().port(), flow.dst().port())
}

/// The IP header of `flow`'s family in front of `payload`.
fn ip_packet(flow: &Flow, proto: u8, payload: &[u8]) -> Vec<u8> {
    match flow {
        Flow::V4 { src, dst } => {
            let total = (IPV4_HDR_LEN + payload.len()) as u16;
            let mut p = Vec::with_capacity(total as usize);
            p.push(0x45); // version 4, 5 words
            p.push(0); // DSCP, ECN
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0]); // identification: unused with DF (RFC 6864)
            p.extend_from_slice(&IPV4_DF.to_be_bytes());
            p.push(INNER_TTL);
            p.push(proto);
            p.extend_from_slice(&[0, 0]); // checksum, below
            p.extend_from_slice(&src.ip().octets());
            p.extend_from_slice(&dst.ip().octets());
            let sum = checksum(0, &p);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(payload);
            p
        }
        Flow::V6 { src, dst } => {
            let mut p = Vec::with_capacity(IPV6_HDR_LEN + payload.len());
            p.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no class, no flow label
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.push(proto);
            p.push(INNER_TTL);
            p.extend_from_slice(&src.ip().octets());
            p.extend_from_slice(&dst.ip().octets());
            p.extend_from_slice(payload);
            p
        }
    }
}

/// The TCP or UDP checksum of `segment` (its checksum field zero), over
/// the pseudo-header of `flow`'s family.
fn transport_checksum(flow: &Flow, proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    let pseudo = match flow {
        Flow::V4 { src, dst } => {
            let mut h = Vec::with_capacity(12);
            h.extend_from_slice(&src.ip().octets());
            h.extend_from_slice(&dst.ip().octets());
            h.extend_from_slice(&[0, proto]);
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h
        }
        Flow::V6 { src, dst } => {
            let mut h = Vec::with_capacity(40);
            h.extend_from_slice(&src.ip().octets());
            h.extend_from_slice(&dst.ip().octets());
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, proto]);
            h
        }
    };
    checksum(sum_words(0, &pseudo), segment)
}

/// The Internet checksum (RFC 1071) of `data`, continuing a partial sum.
fn checksum(partial: u32, data: &[u8]) -> u16 {
    let mut sum = sum_words(partial, data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One's-complement-ready sum of 16-bit big-endian words; an odd last
/// byte is padded with zero. Folded often enough never to overflow.
fn sum_words(partial: u32, data: &[u8]) -> u32 {
    let mut sum = partial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u32;
        if sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    sum
}

/// The parts of a received TCP segment a probe looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpReply {
    pub src: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ack: u32,
    pub flags: u8,
}

impl TcpReply {
    pub fn is_syn_ack(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
    }

    pub fn is_rst(&self) -> bool {
        self.flags & TCP_RST != 0
    }
}

/// Read a TCP segment as a raw IPv4 socket returns it: the IPv4 header
/// first. `None` if it is not a whole, unfragmented TCP header.
pub fn read_tcp_v4(packet: &[u8]) -> Option<TcpReply> {
    let vihl = *packet.first()?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let frag = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
    if vihl >> 4 != 4 || ihl < IPV4_HDR_LEN || *packet.get(9)? != PROTO_TCP || frag & 0x1fff != 0 {
        return None;
    }
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    read_tcp(IpAddr::V4(Ipv4Addr::from(src)), packet.get(ihl..)?)
}

/// Read a TCP segment as a raw IPv6 socket returns it: the TCP header
/// first, the source address from `recvfrom`.
pub fn read_tcp_v6(src: Ipv6Addr, segment: &[u8]) -> Option<TcpReply> {
    read_tcp(IpAddr::V6(src), segment)
}

fn read_tcp(src: IpAddr, seg: &[u8]) -> Option<TcpReply> {
    let header = seg.get(..TCP_HDR_LEN)?;
    let word = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    Some(TcpReply {
        src,
        sport: word(0),
        dport: word(2),
        ack: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
        flags: header[13],
    })
}

#[cfg(test)]
mod tests {
    //! Byte-for-byte comparisons with an independent builder (etherparse)
    //! are in tests/tests/golden_tunnel_probe.rs; here, the checksum rules.

    use super::*;

    fn v4() -> Flow {
        Flow::new(
            "198.51.100.2:40000".parse().unwrap(),
            "198.51.100.10:80".parse().unwrap(),
        )
        .unwrap()
    }

    /// A packet with a correct checksum sums to zero (all ones before the
    /// final complement).
    fn verifies(partial: u32, data: &[u8]) -> bool {
        checksum(partial, data) == 0
    }

    #[test]
    fn ipv4_header_and_segment_checksums_verify() {
        let p = tcp_syn(&v4(), 0x0102_0304);
        assert!(verifies(0, &p[..20]), "IPv4 header");
        let pseudo = [198, 51, 100, 2, 198, 51, 100, 10, 0, 6, 0, 20];
        assert!(verifies(sum_words(0, &pseudo), &p[20..]), "TCP");
    }

    #[test]
    fn odd_length_payload_is_padded_for_the_checksum() {
        let p = udp(&v4(), b"ping!");
        let pseudo = [198, 51, 100, 2, 198, 51, 100, 10, 0, 17, 0, 13];
        assert!(verifies(sum_words(0, &pseudo), &p[20..]));
    }

    #[test]
    fn families_must_match() {
        let v6: SocketAddr = "[2001:db8::10]:80".parse().unwrap();
        assert!(Flow::new("198.51.100.2:1".parse().unwrap(), v6).is_none());
    }

    #[test]
    fn reply_reader_takes_what_it_needs_and_refuses_the_rest() {
        // A SYN-ACK from the VIP, IPv4 with options (IHL 6).
        let mut p = vec![0x46, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 10, 198, 51, 100, 2]);
        p.extend_from_slice(&[1, 1, 0, 0]); // an IP option (NOP NOP EOL EOL)
        p.extend_from_slice(&80u16.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&0x0102_0305u32.to_be_bytes());
        p.extend_from_slice(&[0x50, TCP_SYN | TCP_ACK, 0xff, 0xff, 0, 0, 0, 0]);
        let r = read_tcp_v4(&p).unwrap();
        assert_eq!(
            r,
            TcpReply {
                src: "198.51.100.10".parse().unwrap(),
                sport: 80,
                dport: 40000,
                ack: 0x0102_0305,
                flags: TCP_SYN | TCP_ACK,
            }
        );
        assert!(r.is_syn_ack() && !r.is_rst());
        assert!(read_tcp_v4(&p[..30]).is_none(), "truncated");
        let mut later_fragment = p.clone();
        later_fragment[7] = 1;
        assert!(read_tcp_v4(&later_fragment).is_none());
        let mut udp = p.clone();
        udp[9] = 17;
        assert!(read_tcp_v4(&udp).is_none());
    }
}
