//! Ethernet (one 802.1Q/802.1ad tag), IPv4 (with options), IPv6 (with a
//! short extension-header chain), TCP, UDP and ICMP headers, read into a
//! `Parsed` summary. Anything we cannot read gets a `Pass*` reason: traffic
//! we cannot classify belongs to the kernel.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey, Reason,
    flow::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    ipv4, mem,
    packet::{self, header, read},
};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPV6_EXT_HOP_BY_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_FRAGMENT: u8 = 44;
const IPV6_EXT_DEST_OPTS: u8 = 60;
/// Extension headers we walk before giving up on a packet.
const IPV6_MAX_EXT_HEADERS: usize = 4;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// The link-layer header, kept to rebuild it in front of a tunnel header.
#[derive(Clone, Copy)]
pub struct L2 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// TPID and TCI of the VLAN tag, as on the wire; `None` when untagged.
    pub vlan: Option<[u8; 4]>,
}

impl L2 {
    #[inline(always)]
    pub fn len(&self) -> usize {
        if self.vlan.is_some() {
            EthHdr::LEN + 4
        } else {
            EthHdr::LEN
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    None,
    /// Offset 0 with more to follow: carries the L4 header.
    First(u32),
    /// Offset > 0: no L4 header; follows its first fragment.
    Later(u32),
}

pub struct Parsed {
    pub l2: L2,
    /// Length of the whole IP packet (header included), from its header.
    pub ip_len: u16,
    /// IPv4 TOS or IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    pub flow: FlowKey,
    pub l4_off: usize,
    pub fragment: Fragment,
    pub tcp_flags: u8,
    /// Protocol that keys fragment tracking: the IPv4 protocol, or the
    /// next header named by the IPv6 fragment header (the same in every
    /// fragment of a datagram, unlike what follows it).
    pub frag_proto: u8,
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<(L2, u16), Reason> {
    let eth: &EthHdr = header(ctx, 0).ok_or(Reason::PassShortFrame)?;
    let ether_type = u16::from_be(eth.ether_type);
    let mut l2 = L2 {
        dst_mac: eth.dst_addr,
        src_mac: eth.src_addr,
        vlan: None,
    };
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag: [u8; 6] = read(ctx, 12).ok_or(Reason::PassShortFrame)?;
        l2.vlan = Some([tag[0], tag[1], tag[2], tag[3]]);
        return Ok((l2, be16([tag[4], tag[5]])));
    }
    Ok((l2, ether_type))
}

/// Parse headers up to L4 into `p` (scratch memory: every field is
/// written). Non-first fragments stop at L3.
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Parsed) -> Result<(), Reason> {
    let (l2, ether_type) = parse_l2(ctx)?;
    let l3 = l2.len();
    p.l2 = l2;
    p.ip_len = 0;
    p.tos = 0;
    mem::zero(&mut p.flow);
    p.l4_off = 0;
    p.fragment = Fragment::None;
    p.tcp_flags = 0;
    p.frag_proto = 0;
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3, p)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, p)?,
        _ => return Err(Reason::PassNotIp),
    }
    if let Fragment::Later(_) = p.fragment {
        return Ok(());
    }
    parse_l4(ctx, p)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, p: &mut Parsed) -> Result<(), Reason> {
    let ip: &Ipv4Hdr = header(ctx, l3).ok_or(Reason::PassBadIpHeader)?;
    let (ihl, tot_len) = ipv4::whole(ip, l3, packet::len(ctx)).ok_or(Reason::PassBadIpHeader)?;
    p.ip_len = tot_len as u16;
    p.tos = ip.tos;
    p.flow.family = FAMILY_V4;
    p.flow.proto = ip.proto;
    p.frag_proto = ip.proto;
    p.flow.src[..4].copy_from_slice(&ip.src_addr);
    p.flow.dst[..4].copy_from_slice(&ip.dst_addr);
    p.l4_off = l3 + ihl;
    let frags = be16(ip.frags);
    let more_fragments = frags & 0x2000 != 0;
    let offset = frags & 0x1fff;
    let id = be16(ip.id) as u32;
    p.fragment = if offset != 0 {
        Fragment::Later(id)
    } else if more_fragments {
        Fragment::First(id)
    } else {
        Fragment::None
    };
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, p: &mut Parsed) -> Result<(), Reason> {
    let ip: &Ipv6Hdr = header(ctx, l3).ok_or(Reason::PassBadIpHeader)?;
    let payload_len = be16(ip.payload_len);
    if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload_len as usize > packet::len(ctx) {
        return Err(Reason::PassBadIpHeader);
    }
    p.ip_len = (Ipv6Hdr::LEN as u16).saturating_add(payload_len);
    p.tos = (ip.vcf[0] << 4) | (ip.vcf[1] >> 4);
    p.flow.family = FAMILY_V6;
    mem::copy_addr(&mut p.flow.src, &ip.src_addr);
    mem::copy_addr(&mut p.flow.dst, &ip.dst_addr);
    // Every problem with the chain, too long or an extension header cut
    // short by the packet's end, is an extension-header problem: the IPv6
    // header itself was fine.
    let chain = ipv6_chain(
        ctx,
        ip.next_hdr,
        l3 + Ipv6Hdr::LEN,
        l3 + p.ip_len as usize,
        Reason::PassIpv6ExtHeaders,
    )?;
    p.flow.proto = chain.proto;
    p.l4_off = chain.l4_off;
    p.fragment = chain.fragment;
    p.frag_proto = chain.frag_proto;
    Ok(())
}

/// Hop-by-hop, routing, destination options or fragment: an IPv6
/// extension header `ipv6_chain` walks past.
#[inline(always)]
pub fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS | IPV6_EXT_FRAGMENT
    )
}

/// Where an IPv6 packet's extension-header chain ends.
pub struct Ipv6Chain {
    /// The protocol after the chain; for a later fragment, the one its
    /// fragment header names.
    pub proto: u8,
    /// Offset of that protocol's header (of payload, for a later fragment).
    pub l4_off: usize,
    pub fragment: Fragment,
    /// The next header named by the fragment header; 0 without one.
    pub frag_proto: u8,
    /// A routing header still has segments left: the destination address
    /// is a waypoint, not where the packet ends up.
    pub passes_through: bool,
}

/// Walk the extension headers after a fixed IPv6 header that names `next`
/// and ends at `off`: hop-by-hop, routing, destination options and
/// fragment, at most `IPV6_MAX_EXT_HEADERS` of them, none reaching past
/// `end` (the end of the IP packet holding them). Used for the packet
/// itself, for the packet an ICMPv6 error quotes, which is where
/// `truncated` (the reason for a header cut short) differs, and by
/// `lb_decap` for a tunnel's outer header. A longer chain is
/// `pass_ipv6_ext_headers`.
#[inline(always)]
pub fn ipv6_chain(
    ctx: &XdpContext,
    mut next: u8,
    mut off: usize,
    end: usize,
    truncated: Reason,
) -> Result<Ipv6Chain, Reason> {
    let mut fragment = Fragment::None;
    let mut frag_proto = 0;
    let mut later = false;
    let mut passes_through = false;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        // Each extension header is a multiple of 8 bytes, at least 8.
        if is_ipv6_extension(next) && off + 8 > end {
            return Err(truncated);
        }
        match next {
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS => {
                // Next header, length, and for a routing header its type
                // and segments left.
                let h: [u8; 4] = read(ctx, off).ok_or(truncated)?;
                if next == IPV6_EXT_ROUTING && h[3] != 0 {
                    passes_through = true;
                }
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPV6_EXT_FRAGMENT => {
                let h: [u8; 8] = read(ctx, off).ok_or(truncated)?;
                next = h[0];
                frag_proto = h[0];
                let offset_flags = be16([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                fragment = if offset_flags >> 3 != 0 {
                    later = true;
                    Fragment::Later(id)
                } else if offset_flags & 1 != 0 {
                    Fragment::First(id)
                } else {
                    // An atomic fragment (RFC 6946) is a whole datagram,
                    // but does not make an earlier fragment header's
                    // packet whole.
                    fragment
                };
                off += 8;
                // What follows in a later fragment is payload, not headers.
                if later {
                    break;
                }
            }
            _ => break,
        }
    }
    // The last header walked claims more than the packet holds.
    if !later && off > end {
        return Err(truncated);
    }
    // Still an extension header after the last one walked: too long a chain.
    if !later && is_ipv6_extension(next) {
        return Err(Reason::PassIpv6ExtHeaders);
    }
    Ok(Ipv6Chain {
        proto: next,
        l4_off: off,
        fragment,
        frag_proto,
        passes_through,
    })
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, p: &mut Parsed) -> Result<(), Reason> {
    // Bound by the IP packet, not the frame: Ethernet padding after a
    // short packet is not a header.
    let end = p.l2.len() + p.ip_len as usize;
    let need = match p.flow.proto {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    };
    if p.l4_off + need > end {
        return Err(Reason::PassBadL4Header);
    }
    match p.flow.proto {
        PROTO_TCP => {
            // Ports, and the flags byte at offset 13 of a 20-byte header.
            let h: &[u8; 20] = header(ctx, p.l4_off).ok_or(Reason::PassBadL4Header)?;
            p.flow.sport = be16([h[0], h[1]]);
            p.flow.dport = be16([h[2], h[3]]);
            p.tcp_flags = h[13];
        }
        PROTO_UDP => {
            let h: [u8; 8] = read(ctx, p.l4_off).ok_or(Reason::PassBadL4Header)?;
            p.flow.sport = be16([h[0], h[1]]);
            p.flow.dport = be16([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let _: [u8; 8] = read(ctx, p.l4_off).ok_or(Reason::PassBadL4Header)?;
        }
        _ => {}
    }
    Ok(())
}
