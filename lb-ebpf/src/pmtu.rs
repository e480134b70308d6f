//! Path-MTU discovery through the tunnel (RFC 2003 section 4, RFC 1191,
//! RFC 8201): a client packet too big for the path to the backends once
//! encapsulated is answered, not silently dropped, with an ICMP
//! "fragmentation needed" (IPv4 with DF set) or ICMPv6 "packet too big"
//! from the VIP to the client, so the client sends smaller packets instead
//! of stalling in a black hole.
//!
//! The frame becomes the answer in place: the client's packet stays where
//! it is as the quote, its tail is trimmed to what an ICMP error may carry,
//! and the new IP and ICMP headers go into headroom in front of it. Answers
//! are rate-limited per CPU (`TOO_BIG_LIMIT`); a packet not answered is
//! dropped as before (`drop_too_big`).

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Reason,
    flow::{FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6},
};

use crate::{
    csum,
    forward::{self, Outgoing},
    maps::{TOO_BIG_BUCKET, TOO_BIG_LIMIT},
    packet,
    parse::{ETH_P_IPV4, ETH_P_IPV6},
    rate,
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const ICMP_HDR_LEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// An IPv4 ICMP error is at most 576 bytes long (RFC 1812 4.3.2.3).
const MAX_V4_QUOTE: usize = 576 - IPV4_HDR_LEN - ICMP_HDR_LEN;
/// The IPv6 minimum link MTU: an ICMPv6 error must fit in it (RFC 4443
/// 2.4 (c)), and a packet too big reporting less is discarded (RFC 8201 4).
const IPV6_MIN_MTU: u32 = 1280;
const MAX_V6_QUOTE: usize = IPV6_MIN_MTU as usize - IPV6_HDR_LEN - ICMP_HDR_LEN;
/// The smallest MTU an IPv4 host must accept (RFC 791).
const IPV4_MIN_MTU: u32 = 68;
/// IPv4 ICMP errors carry precedence 6, internetwork control (RFC 1812
/// 4.3.2.5).
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;
const IPV4_DF: u8 = 0x40;

/// Answer `out`, too big for a path of `mtu` bytes (the inner packet's
/// limit: the tunnel header already taken off), or drop it.
///
/// Not inlined: the packet path that forwards pays nothing for it.
#[inline(never)]
pub fn answer(ctx: &XdpContext, out: &Outgoing, mtu: u32) -> Reason {
    if !answerable(ctx, out, mtu) || !take_token() {
        return Reason::DropTooBig;
    }
    let built = if out.flow.family == FAMILY_V4 {
        reply_v4(ctx, out, mtu)
    } else {
        reply_v6(ctx, out, mtu)
    };
    match built {
        Some(()) => Reason::AnswerTooBig,
        None => Reason::DropTooBig,
    }
}

/// Whether an ICMP error may be sent about `out`.
#[inline(always)]
fn answerable(ctx: &XdpContext, out: &Outgoing, mtu: u32) -> bool {
    let src = &out.flow.src;
    // Never an error about an ICMP message (RFC 1122 3.2.2, RFC 4443 2.4).
    if out.flow.proto == PROTO_ICMP || out.flow.proto == PROTO_ICMPV6 {
        return false;
    }
    // The MTU must be smaller than the packet (RFC 1191): anything else
    // would not make the sender shrink it (a kernel older than 5.12 does
    // not report a route's MTU and leaves the packet's length there).
    if mtu >= out.ip_len as u32 {
        return false;
    }
    if out.flow.family == FAMILY_V4 {
        // Only a sender that does path-MTU discovery (DF set) expects an
        // answer; one that leaves DF clear expects fragmentation, which
        // the load balancer does not do.
        let Some(frag) = packet::read::<[u8; 1]>(ctx, out.l2.len() + 6) else {
            return false;
        };
        // A unicast source (not 0/8, loopback, multicast or class E).
        frag[0] & IPV4_DF != 0
            && mtu >= IPV4_MIN_MTU
            && src[0] != 0
            && src[0] != 127
            && src[0] < 224
    } else {
        // A unicast source: neither multicast nor the unspecified address.
        let unspecified = src.iter().fold(0u8, |acc, b| acc | b) == 0;
        mtu >= IPV6_MIN_MTU && src[0] != 0xff && !unspecified
    }
}

/// Take one answer's credit from this CPU's bucket.
#[inline(always)]
fn take_token() -> bool {
    let (Some(limit), Some(bucket)) = (TOO_BIG_LIMIT.get(0), TOO_BIG_BUCKET.get_ptr_mut(0)) else {
        return false;
    };
    if limit.interval_ns == 0 {
        return false;
    }
    // SAFETY: a per-CPU map value, ours for this program run.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    rate::take(bucket, limit.interval_ns, limit.burst_ns, now)
}

/// ICMP type 3 code 4 with the next-hop MTU, quoting up to 548 bytes.
#[inline(always)]
fn reply_v4(ctx: &XdpContext, out: &Outgoing, mtu: u32) -> Option<()> {
    let l2 = out.l2.len();
    let quote = min(out.ip_len as usize, MAX_V4_QUOTE);
    reshape(ctx, l2, IPV4_HDR_LEN + ICMP_HDR_LEN, quote)?;
    write_l2(ctx, out, ETH_P_IPV4)?;
    let ip = packet::header::<[u8; IPV4_HDR_LEN]>(ctx, l2)?;
    let len = ((IPV4_HDR_LEN + ICMP_HDR_LEN + quote) as u16).to_be_bytes();
    *ip = [
        0x45,
        TOS_INTERNETWORK_CONTROL,
        len[0],
        len[1],
        0,
        0,
        // DF and ID 0: an atomic datagram (RFC 6864) of at most 576 bytes.
        IPV4_DF,
        0,
        TTL,
        PROTO_ICMP,
        0,
        0,
        // From the VIP, to the client.
        out.flow.dst[0],
        out.flow.dst[1],
        out.flow.dst[2],
        out.flow.dst[3],
        out.flow.src[0],
        out.flow.src[1],
        out.flow.src[2],
        out.flow.src[3],
    ];
    let check = csum::ipv4_header(ip).to_be_bytes();
    ip[10] = check[0];
    ip[11] = check[1];
    let icmp_off = l2 + IPV4_HDR_LEN;
    let next_hop_mtu = (min(mtu as usize, u16::MAX as usize) as u16).to_be_bytes();
    let icmp = packet::header::<[u8; ICMP_HDR_LEN]>(ctx, icmp_off)?;
    *icmp = [
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        next_hop_mtu[0],
        next_hop_mtu[1],
    ];
    let sum = csum::add_packet(ctx, icmp_off, ICMP_HDR_LEN + quote, 0)?;
    packet::write(ctx, icmp_off + 2, csum::finish(sum).to_ne_bytes()).then_some(())
}

/// ICMPv6 type 2 with the MTU, quoting up to 1232 bytes.
#[inline(always)]
fn reply_v6(ctx: &XdpContext, out: &Outgoing, mtu: u32) -> Option<()> {
    let l2 = out.l2.len();
    let quote = min(out.ip_len as usize, MAX_V6_QUOTE);
    reshape(ctx, l2, IPV6_HDR_LEN + ICMP_HDR_LEN, quote)?;
    write_l2(ctx, out, ETH_P_IPV6)?;
    let ip = packet::header::<[u8; IPV6_HDR_LEN]>(ctx, l2)?;
    let payload_len = (ICMP_HDR_LEN + quote) as u16;
    let len = payload_len.to_be_bytes();
    ip[..8].copy_from_slice(&[0x60, 0, 0, 0, len[0], len[1], PROTO_ICMPV6, TTL]);
    // From the VIP, to the client.
    ip[8..24].copy_from_slice(&out.flow.dst);
    ip[24..40].copy_from_slice(&out.flow.src);
    let icmp_off = l2 + IPV6_HDR_LEN;
    let m = mtu.to_be_bytes();
    let icmp = packet::header::<[u8; ICMP_HDR_LEN]>(ctx, icmp_off)?;
    *icmp = [ICMPV6_PACKET_TOO_BIG, 0, 0, 0, m[0], m[1], m[2], m[3]];
    // The pseudo-header (RFC 8200 8.1): both addresses, as written just
    // now, then the upper-layer length and next header as 32-bit words.
    let sum = csum::add_packet(ctx, l2 + 8, 32, 0)?;
    let sum = csum::add(sum, u16::from_ne_bytes(len) as u32);
    let sum = csum::add(sum, u16::from_ne_bytes([0, PROTO_ICMPV6]) as u32);
    let sum = csum::add_packet(ctx, icmp_off, ICMP_HDR_LEN + quote, sum)?;
    packet::write(ctx, icmp_off + 2, csum::finish(sum).to_ne_bytes()).then_some(())
}

/// Make the frame `[link header][hdrs bytes][first quote bytes of the IP
/// packet]`: trim the tail, then grow the head by `hdrs`. The link header
/// and the `hdrs` bytes hold garbage until written.
#[inline(always)]
fn reshape(ctx: &XdpContext, l2: usize, hdrs: usize, quote: usize) -> Option<()> {
    let len = packet::len(ctx);
    let keep = l2 + quote;
    if keep > len {
        return None;
    }
    let trim = keep as i32 - len as i32;
    // SAFETY: shrinking only, within the frame; the helper checks the rest
    // and fails cleanly.
    if trim != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, trim) } != 0 {
        return None;
    }
    // SAFETY: as for encapsulation, the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hdrs as i32)) } != 0 {
        return None;
    }
    Some(())
}

/// Back to where the packet came from: the MAC addresses swapped, the
/// VLAN tag kept.
#[inline(always)]
fn write_l2(ctx: &XdpContext, out: &Outgoing, ether_type: u16) -> Option<()> {
    forward::write_l2(ctx, out.l2, &out.l2.src_mac, &out.l2.dst_mac, ether_type).then_some(())
}

#[inline(always)]
fn min(a: usize, b: usize) -> usize {
    if a < b { a } else { b }
}
