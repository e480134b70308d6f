//! ICMP "fragmentation needed" (IPv4) and "packet too big" (IPv6) about a VIP
//! flow. A router between a backend and its client sends these to the VIP,
//! since DSR replies carry the VIP as their source. They must reach the
//! backend that owns the flow, or its path-MTU discovery stalls.
//!
//! The flow is read from the packet the message quotes: its addresses, and
//! its ports after the IPv6 extension headers it carried (walked as the
//! packet's own are). A quoted non-first fragment has no ports, only
//! payload where they would be: it is passed, counted, never matched.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey, Reason,
    flow::{FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    ipv4,
    packet::{header, read},
    parse::{Fragment, Parsed, ipv6_chain},
};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP_HDR_LEN: usize = 8;
/// The fragment-offset bits of the IPv4 flags/offset field.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

/// The client-to-VIP flow whose reply was too big, when `p` is such an
/// ICMP message; `Ok(None)` for any other ICMP.
#[inline(always)]
pub fn too_big_flow(ctx: &XdpContext, p: &Parsed) -> Result<Option<FlowKey>, Reason> {
    let h: [u8; 2] = read(ctx, p.l4_off).ok_or(Reason::PassBadL4Header)?;
    let inner_off = p.l4_off + ICMP_HDR_LEN;
    // The embedded packet went VIP -> client; the flow we track is its reverse.
    let mut flow = FlowKey {
        family: p.flow.family,
        ..FlowKey::default()
    };
    let (ports_off, later_fragment) = if p.flow.family == FAMILY_V4 {
        if p.flow.proto != PROTO_ICMP || h[0] != ICMP_DEST_UNREACH || h[1] != ICMP_FRAG_NEEDED {
            return Ok(None);
        }
        let ip: &Ipv4Hdr = header(ctx, inner_off).ok_or(Reason::PassBadL4Header)?;
        let ihl = ipv4::header_len(ip).ok_or(Reason::PassBadL4Header)?;
        flow.proto = ip.proto;
        flow.src[..4].copy_from_slice(&ip.dst_addr);
        flow.dst[..4].copy_from_slice(&ip.src_addr);
        let fragment_offset = u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_OFFSET;
        (inner_off + ihl, fragment_offset != 0)
    } else {
        if p.flow.proto != PROTO_ICMPV6 || h[0] != ICMPV6_PACKET_TOO_BIG {
            return Ok(None);
        }
        let ip: &Ipv6Hdr = header(ctx, inner_off).ok_or(Reason::PassBadL4Header)?;
        flow.src = ip.dst_addr;
        flow.dst = ip.src_addr;
        let next = ip.next_hdr;
        // The quote ends with the message (an ICMPv6 error quotes only as
        // much of the packet as fits).
        let end = p.l2.len() + p.ip_len as usize;
        let chain = ipv6_chain(
            ctx,
            next,
            inner_off + Ipv6Hdr::LEN,
            end,
            Reason::PassBadL4Header,
        )?;
        flow.proto = chain.proto;
        (chain.l4_off, matches!(chain.fragment, Fragment::Later(_)))
    };
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return Ok(None);
    }
    // Only the message sent to the address the embedded packet came from.
    if flow.dst != p.flow.dst {
        return Ok(None);
    }
    if later_fragment {
        return Err(Reason::PassIcmpQuotedFragment);
    }
    let ports: [u8; 4] = read(ctx, ports_off).ok_or(Reason::PassBadL4Header)?;
    flow.sport = u16::from_be_bytes([ports[2], ports[3]]);
    flow.dport = u16::from_be_bytes([ports[0], ports[1]]);
    Ok(Some(flow))
}
