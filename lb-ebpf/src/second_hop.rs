//! Second chance, the backend's part: a GUE packet with a hop left is a
//! packet the load balancer could not place (its flow is in no table there
//! and its ring slot changed recently). It stays here if this host has a
//! socket for it, and is sent on to the hop, the slot's previous owner,
//! otherwise.
//!
//! "A socket for it" is what the kernel would deliver the packet to: an
//! established (or closing) connection, a request socket of a handshake in
//! progress, a time-wait socket, or, for a handshake's ACK when the
//! listener answered with a SYN cookie, a valid cookie. A listener alone
//! does not count: the kernel would answer a stray segment with a reset.
//! An ICMP too-big about a segment this host sent (the load balancer sends
//! one with a hop like its flow's packets) stays if the connection it
//! quotes is here. Anything else (a SYN, which the load balancer never
//! sends with a hop, other ICMP, another protocol) stays.
//!
//! A hop is only ever sent to an address in `DECAP_PEERS` (the other
//! backends, `lb-decap attach --peer`, one address each), from this
//! backend's own address, with no hop left; `decap.rs` checks the hop
//! before it asks for a socket. The next hop's MAC comes from the kernel's FIB; when
//! this host does not forward (the FIB then answers nothing) or has not
//! resolved the neighbour, the packet goes back to the MAC it came from: a
//! router or a load balancer, which routes it on.

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, tcphdr,
    },
    cty::c_void,
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_xdp_adjust_head},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use lb_common::{
    flow::{FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, PROTO_TCP, PROTO_UDP},
    maps::{DECAP_SOURCE_FAMILY_BITS, DecapSource},
    stats::{DecapReason, Reason},
};

use network_types::ip::Ipv4Hdr;

use crate::{
    csum, fib,
    forward::write_l2,
    gue::{self, ip_hdr_len},
    icmp::{ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HDR_LEN, ICMPV6_PACKET_TOO_BIG},
    ipv4,
    maps::{DECAP_PEERS, gue_port},
    packet::{self, header, read},
    parse::{self, ETH_P_IPV4, ETH_P_IPV6, Fragment, L2, TCP_FLAG_SYN},
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_HDR_LEN: usize = 20;
const OUTER_TTL: u8 = 64;
/// The fragment-offset bits of the IPv4 flags/offset field.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

/// Whether the inner packet at `inner` (an `inner_type` packet that ends
/// by `end`) stays on this backend.
#[inline(always)]
pub fn stays_here(ctx: &XdpContext, inner: usize, inner_type: u16, end: usize) -> bool {
    match transport(ctx, inner, inner_type, end) {
        Some((PROTO_TCP, l4)) => segment_stays(ctx, inner, inner_type, l4, end),
        Some((PROTO_ICMP | PROTO_ICMPV6, l4)) => too_big_stays(ctx, inner_type, l4, end),
        _ => true,
    }
}

/// Whether the TCP segment whose IP header is at `inner` and TCP header at
/// `l4` stays: a SYN does, any other segment if a socket has it.
#[inline(always)]
fn segment_stays(ctx: &XdpContext, inner: usize, inner_type: u16, l4: usize, end: usize) -> bool {
    if l4 + TCP_HDR_LEN > end {
        return true;
    }
    let Some(tcp) = packet::ptr_at::<[u8; TCP_HDR_LEN]>(ctx, l4) else {
        return true;
    };
    // SAFETY: `ptr_at` checked the 20 bytes lie in the packet.
    let flags = unsafe { (*tcp)[13] };
    if flags & TCP_FLAG_SYN != 0 {
        return true;
    }
    if inner_type == ETH_P_IPV4 {
        let Some(ip) = packet::ptr_at::<[u8; IPV4_HDR_LEN]>(ctx, inner) else {
            return true;
        };
        // SAFETY: as above, for the header and the ports.
        let (h, t) = unsafe { (*ip, *tcp) };
        let mut tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
                    daddr: u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
                    sport: u16::from_ne_bytes([t[0], t[1]]),
                    dport: u16::from_ne_bytes([t[2], t[3]]),
                },
            },
        };
        // SAFETY: a valid tuple of the size given; the reference the
        // helper returns is released by `has_socket`.
        let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut c_void, &mut tuple, 12, NETNS, 0) };
        has_socket(sk, ip as *mut c_void, IPV4_HDR_LEN as u32, tcp)
    } else {
        let Some(ip) = packet::ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, inner) else {
            return true;
        };
        // SAFETY: as above.
        let (h, t) = unsafe { (*ip, *tcp) };
        let mut tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr: words(&h, 8),
                    daddr: words(&h, 24),
                    sport: u16::from_ne_bytes([t[0], t[1]]),
                    dport: u16::from_ne_bytes([t[2], t[3]]),
                },
            },
        };
        // SAFETY: as above.
        let sk = unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut c_void, &mut tuple, 36, NETNS, 0) };
        has_socket(sk, ip as *mut c_void, IPV6_HDR_LEN as u32, tcp)
    }
}

/// Whether the ICMP message at `l4` stays: an ICMP "fragmentation
/// needed" or ICMPv6 "packet too big" about a TCP segment this host sent
/// stays if the connection is here (the load balancer sends one with a hop
/// when the flow's slot moved, `balancer::too_big_target`); any other
/// message, or one whose quote cannot be read, stays too, as it would
/// without a hop. The quoted segment is this host's reply (VIP to client),
/// so the connection is looked up reversed: the client as the source.
#[inline(always)]
fn too_big_stays(ctx: &XdpContext, inner_type: u16, l4: usize, end: usize) -> bool {
    let v4 = inner_type == ETH_P_IPV4;
    let Some((addrs, p)) = quoted_reply(ctx, v4, l4, end) else {
        return true;
    };
    let (sport, dport) = ([p[2], p[3]], [p[0], p[1]]);
    let sk = if v4 {
        let Some(a) = read::<[u8; 8]>(ctx, addrs) else {
            return true;
        };
        let mut tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                    saddr: u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                    daddr: u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                    sport: u16::from_ne_bytes(sport),
                    dport: u16::from_ne_bytes(dport),
                },
            },
        };
        // SAFETY: a valid tuple of the size given; the reference the
        // helper returns is released by `has_connection`.
        unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut c_void, &mut tuple, 12, NETNS, 0) }
    } else {
        let (Some(src), Some(dst)) = (
            read::<[u32; 4]>(ctx, addrs),
            read::<[u32; 4]>(ctx, addrs + 16),
        ) else {
            return true;
        };
        let mut tuple = bpf_sock_tuple {
            __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr: dst,
                    daddr: src,
                    sport: u16::from_ne_bytes(sport),
                    dport: u16::from_ne_bytes(dport),
                },
            },
        };
        // SAFETY: as above.
        unsafe { bpf_skc_lookup_tcp(ctx.ctx as *mut c_void, &mut tuple, 36, NETNS, 0) }
    };
    has_connection(sk)
}

/// Where the addresses of the TCP segment an ICMP too-big at `l4` quotes
/// start (source, then destination), and its ports; `None` for any other
/// message, or a quote that cannot be read by `end`. IPv6: a quote with
/// extension headers is not read.
#[inline(always)]
fn quoted_reply(ctx: &XdpContext, v4: bool, l4: usize, end: usize) -> Option<(usize, [u8; 4])> {
    let kind: [u8; 2] = read(ctx, l4)?;
    let quote = l4 + ICMP_HDR_LEN;
    let (addrs, ports) = if v4 {
        let ip = header::<Ipv4Hdr>(ctx, quote)?;
        let ihl = ipv4::header_len(ip)?;
        let later = u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_OFFSET != 0;
        if kind != [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED] || ip.proto != PROTO_TCP || later {
            return None;
        }
        (quote + 12, quote + ihl)
    } else {
        let h: [u8; 8] = read(ctx, quote)?;
        if kind[0] != ICMPV6_PACKET_TOO_BIG || h[0] >> 4 != 6 || h[6] != PROTO_TCP {
            return None;
        }
        (quote + 8, quote + IPV6_HDR_LEN)
    };
    if ports + 4 > end {
        return None;
    }
    Some((addrs, read(ctx, ports)?))
}

/// The caller's network namespace, for `bpf_skc_lookup_tcp`.
const NETNS: u64 = BPF_F_CURRENT_NETNS as u64;

/// Whether `sk` (from `bpf_skc_lookup_tcp`, null for nothing) is a socket
/// of the segment's connection, or a listener whose SYN cookie the
/// segment carries (`iph` and `th` point at its IP and TCP headers);
/// releases `sk`.
#[inline(always)]
fn has_socket(sk: *mut bpf_sock, iph: *mut c_void, iph_len: u32, th: *mut [u8; 20]) -> bool {
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the kernel returned, not yet released; `state` is
    // readable on every socket kind the lookup returns.
    let state = unsafe { core::ptr::addr_of!((*sk).state).read_volatile() };
    let ours = state != BPF_TCP_LISTEN
        // Linux 5.2: a listener that answered with a SYN cookie kept no
        // request socket; the cookie in the ACK stands for it.
        // SAFETY: a listener socket; both headers lie in the packet.
        || unsafe {
            bpf_tcp_check_syncookie(
                sk as *mut c_void,
                iph,
                iph_len,
                th as *mut tcphdr,
                TCP_HDR_LEN as u32,
            )
        } == 0;
    // SAFETY: the reference the lookup took, released once.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    ours
}

/// Whether `sk` (from `bpf_skc_lookup_tcp`, null for nothing) is a
/// connection's socket, not a listener's; releases `sk`. No SYN cookie can
/// stand for the connection here: an ICMP error quotes no cookie.
#[inline(always)]
fn has_connection(sk: *mut bpf_sock) -> bool {
    if sk.is_null() {
        return false;
    }
    // SAFETY: as in `has_socket`.
    let state = unsafe { core::ptr::addr_of!((*sk).state).read_volatile() };
    // SAFETY: the reference the lookup took, released once.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    state != BPF_TCP_LISTEN
}

/// The transport protocol and its header's offset of the whole
/// (unfragmented) packet at `inner`: TCP, or the ICMP of the packet's
/// family.
#[inline(always)]
fn transport(ctx: &XdpContext, inner: usize, inner_type: u16, end: usize) -> Option<(u8, usize)> {
    let (proto, l4, icmp) = if inner_type == ETH_P_IPV4 {
        let h: [u8; IPV4_HDR_LEN] = read(ctx, inner)?;
        let frags = u16::from_be_bytes([h[6], h[7]]);
        if frags & 0x3fff != 0 {
            return None;
        }
        (h[9], inner + ((h[0] & 0x0f) as usize) * 4, PROTO_ICMP)
    } else {
        let h: [u8; 8] = read(ctx, inner)?;
        let chain = parse::ipv6_chain(
            ctx,
            h[6],
            inner + IPV6_HDR_LEN,
            end,
            Reason::PassIpv6ExtHeaders,
        )
        .ok()?;
        if chain.fragment != Fragment::None {
            return None;
        }
        (chain.proto, chain.l4_off, PROTO_ICMPV6)
    };
    (proto == PROTO_TCP || proto == icmp).then_some((proto, l4))
}

/// Where the frame sent on goes: its link-layer addresses.
pub struct Via {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// The way to `hop` (a peer, of `family`, from our address `from`) for an
/// outer packet of `tot_len` bytes: only out of the interface the packet
/// came in on.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    l2: &L2,
    family: u8,
    from: &[u8; 16],
    hop: &[u8; 16],
    tot_len: u16,
) -> Result<Via, DecapReason> {
    let back = Via {
        dmac: l2.src_mac,
        smac: l2.dst_mac,
    };
    let Some((rc, fib)) = fib::lookup(ctx, family, from, hop, tot_len) else {
        return Ok(back);
    };
    let here = fib.ifindex == 0 || fib.ifindex as usize == ctx.ingress_ifindex();
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS if here => Ok(Via {
            dmac: fib.dmac,
            smac: fib.smac,
        }),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Ok(back),
        BPF_FIB_LKUP_RET_NO_NEIGH if here => Ok(back),
        _ => Err(DecapReason::DropSecondHopNoRoute),
    }
}

/// Whether `addr` (of `family`) is in `DECAP_PEERS`.
#[inline(always)]
pub fn is_peer(family: u8, addr: &[u8; 16]) -> bool {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        DECAP_SOURCE_FAMILY_BITS + bits,
        DecapSource {
            family,
            addr: *addr,
        },
    );
    DECAP_PEERS.get(&key).is_some()
}

/// A packet to send on: the inner packet, and what its new headers hold.
pub struct Onward<'a> {
    pub l2: &'a L2,
    pub via: &'a Via,
    /// The outer family, of `from` and `hop`.
    pub family: u8,
    /// This backend's address the packet came to: the new source.
    pub from: &'a [u8; 16],
    pub hop: &'a [u8; 16],
    /// The arriving UDP source port and IPv6 flow label: the load
    /// balancer's flow entropy, kept.
    pub sport: u16,
    pub label: u32,
    /// Frame offset, ethertype and length of the inner packet.
    pub inner: usize,
    pub inner_type: u16,
    pub inner_len: u16,
}

/// Bytes of the outer IP packet `send_on` builds for an inner packet of
/// `inner_len` bytes: IP, UDP, GUE, an empty hop list, the inner packet.
#[inline(always)]
pub fn outer_len(family: u8, inner_len: u16) -> usize {
    ip_hdr_len(family) + lb_common::gue::udp_to_inner(family, 0) + inner_len as usize
}

/// Replace everything in front of the inner packet by the link header
/// towards `via` and an outer header from `from` to `hop` with no hop
/// left. The inner packet stays where it is.
#[inline(always)]
pub fn send_on(ctx: &XdpContext, o: &Onward) -> Result<(), DecapReason> {
    let tos = inner_tos(ctx, o.inner, o.inner_type).ok_or(DecapReason::PassMalformed)?;
    let header = gue::Header {
        family: o.family,
        sport: o.sport,
        dport: gue_port(),
        inner_proto: if o.inner_type == ETH_P_IPV4 {
            PROTO_IPIP
        } else {
            PROTO_IPV6
        },
        inner_len: o.inner_len,
        hop: None,
    };
    let ip_len = ip_hdr_len(o.family);
    let headers = o.l2.len() + ip_len + header.len();
    let shrink = o
        .inner
        .checked_sub(headers)
        .ok_or(DecapReason::PassMalformed)?;
    // SAFETY: shrinking the head by bytes that lie inside the packet (the
    // old headers, longer than the new ones).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, shrink as i32) } != 0 {
        return Err(DecapReason::PassMalformed);
    }
    // From here on the frame is half rewritten: a failure drops it, never
    // passes it up.
    let payload = (header.len() + o.inner_len as usize) as u16;
    let written = if o.family == FAMILY_V4 {
        write_l2(ctx, o.l2, &o.via.dmac, &o.via.smac, ETH_P_IPV4)
            && write_ipv4(ctx, o.l2.len(), tos, payload, o.from, o.hop)
    } else {
        write_l2(ctx, o.l2, &o.via.dmac, &o.via.smac, ETH_P_IPV6)
            && write_ipv6(ctx, o.l2.len(), tos, o.label, payload, o.from, o.hop)
    };
    if !written || !gue::write(ctx, o.l2.len() + ip_len, &header) {
        return Err(DecapReason::DropSecondHopRewriteFailed);
    }
    Ok(())
}

/// The inner packet's DSCP and ECN byte, which the new outer header
/// carries as the load balancer's does.
#[inline(always)]
fn inner_tos(ctx: &XdpContext, inner: usize, inner_type: u16) -> Option<u8> {
    let h: [u8; 2] = read(ctx, inner)?;
    Some(if inner_type == ETH_P_IPV4 {
        h[1]
    } else {
        (h[0] << 4) | (h[1] >> 4)
    })
}

/// An outer IPv4 header at `off`: DF, ID 0, TTL 64, protocol UDP.
#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    off: usize,
    tos: u8,
    payload: u16,
    from: &[u8; 16],
    to: &[u8; 16],
) -> bool {
    let Some(h) = packet::header::<[u8; IPV4_HDR_LEN]>(ctx, off) else {
        return false;
    };
    let len = (payload + IPV4_HDR_LEN as u16).to_be_bytes();
    *h = [
        0x45, tos, len[0], len[1], 0, 0, 0x40, 0, OUTER_TTL, PROTO_UDP, 0, 0, from[0], from[1],
        from[2], from[3], to[0], to[1], to[2], to[3],
    ];
    let check = csum::ipv4_header(h).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
    true
}

/// An outer IPv6 header at `off`: traffic class `tc`, flow label `label`,
/// hop limit 64, next header UDP.
#[inline(always)]
fn write_ipv6(
    ctx: &XdpContext,
    off: usize,
    tc: u8,
    label: u32,
    payload: u16,
    from: &[u8; 16],
    to: &[u8; 16],
) -> bool {
    let Some(h) = packet::header::<[u8; IPV6_HDR_LEN]>(ctx, off) else {
        return false;
    };
    let len = payload.to_be_bytes();
    h[0] = 0x60 | (tc >> 4);
    h[1] = (tc << 4) | ((label >> 16) as u8 & 0x0f);
    h[2] = (label >> 8) as u8;
    h[3] = label as u8;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = PROTO_UDP;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(from);
    h[24..40].copy_from_slice(to);
    true
}

/// Four big-endian words of the address at byte `at` of an IPv6 header,
/// as the socket tuple holds them.
#[inline(always)]
fn words(h: &[u8; IPV6_HDR_LEN], at: usize) -> [u32; 4] {
    [
        u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]),
        u32::from_ne_bytes([h[at + 4], h[at + 5], h[at + 6], h[at + 7]]),
        u32::from_ne_bytes([h[at + 8], h[at + 9], h[at + 10], h[at + 11]]),
        u32::from_ne_bytes([h[at + 12], h[at + 13], h[at + 14], h[at + 15]]),
    ]
}
