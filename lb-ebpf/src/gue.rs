//! GUE headers on the wire (`lb_common::gue`): written by the load
//! balancer in front of a second-chance packet and by a backend sending
//! one on, read by the decapsulation program. One place for the format's
//! rules.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    flow::{FAMILY_V4, PROTO_IPIP, PROTO_IPV6},
    gue::{GUE_HDR_LEN, HOPS_HDR_LEN, HOPS_TYPE, MAX_HOPS, UDP_HDR_LEN, first_byte, hop_len},
    stats::DecapReason,
};

use crate::packet::{self, read};

pub use lb_common::gue::{ip_hdr_len, overhead, source_port};

/// Bytes of UDP, GUE and hop-list head: what `parse` reads at once.
const HEAD_LEN: usize = UDP_HDR_LEN + GUE_HDR_LEN + HOPS_HDR_LEN;

/// A GUE header as the decapsulation program found it.
pub struct Gue {
    /// Bytes from the UDP header to the inner packet.
    pub len: usize,
    /// Frame offset where the UDP datagram ends: the inner packet must end
    /// by then.
    pub end: usize,
    /// `PROTO_IPIP` or `PROTO_IPV6`.
    pub inner_proto: u8,
    /// Hops left: 0 or 1 (`MAX_HOPS`).
    pub hops: u8,
    /// The hop when `hops` is 1 (IPv4 in the first four bytes).
    pub hop: [u8; 16],
    /// The UDP source port: the sender's flow entropy, kept when sent on.
    pub sport: u16,
}

/// The UDP datagram at `udp` (up to `end`, where the outer packet ends),
/// in an outer header of `family`: a GUE header of ours, or
/// `pass_malformed`. Ours: GUE version 0, a data message (C clear), no
/// flags, protocol 4 or 41, and private data that is exactly our hop list
/// with at most `MAX_HOPS` hops of the outer family.
#[inline(always)]
pub fn parse(ctx: &XdpContext, udp: usize, end: usize, family: u8) -> Result<Gue, DecapReason> {
    let h: [u8; HEAD_LEN] = read(ctx, udp).ok_or(DecapReason::PassMalformed)?;
    let udp_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    if udp_len < HEAD_LEN || udp + udp_len > end {
        return Err(DecapReason::PassMalformed);
    }
    let first = h[8];
    let inner_proto = h[9];
    let hops = h[14];
    let well_formed = first >> 5 == 0
        && (inner_proto == PROTO_IPIP || inner_proto == PROTO_IPV6)
        && h[10] == 0
        && h[11] == 0
        && u16::from_be_bytes([h[12], h[13]]) == HOPS_TYPE
        && h[15] == 0
        && hops <= MAX_HOPS
        && first == first_byte(family, hops as usize);
    if !well_formed {
        return Err(DecapReason::PassMalformed);
    }
    let mut hop = [0u8; 16];
    if hops == 1 {
        if family == FAMILY_V4 {
            let a: [u8; 4] = read(ctx, udp + HEAD_LEN).ok_or(DecapReason::PassMalformed)?;
            hop[..4].copy_from_slice(&a);
        } else {
            hop = read(ctx, udp + HEAD_LEN).ok_or(DecapReason::PassMalformed)?;
        }
    }
    let len = HEAD_LEN + hops as usize * hop_len(family);
    if len > udp_len {
        return Err(DecapReason::PassMalformed);
    }
    Ok(Gue {
        len,
        end: udp + udp_len,
        inner_proto,
        hops,
        hop,
        sport: u16::from_be_bytes([h[0], h[1]]),
    })
}

/// What `write` puts in front of an inner packet.
pub struct Header<'a> {
    /// The outer header's family: that of the hop addresses.
    pub family: u8,
    pub sport: u16,
    pub dport: u16,
    /// `PROTO_IPIP` or `PROTO_IPV6`.
    pub inner_proto: u8,
    pub inner_len: u16,
    /// The one hop, or none.
    pub hop: Option<&'a [u8; 16]>,
}

impl Header<'_> {
    /// Bytes of UDP, GUE and hop list.
    #[inline(always)]
    pub fn len(&self) -> usize {
        HEAD_LEN + self.hops() * hop_len(self.family)
    }

    #[inline(always)]
    fn hops(&self) -> usize {
        if self.hop.is_some() { 1 } else { 0 }
    }
}

/// Write `hdr` at frame offset `off` (right after the outer IP header).
/// The UDP checksum is 0: the inner packet carries its own (RFC 6935 for
/// IPv6).
#[inline(always)]
pub fn write(ctx: &XdpContext, off: usize, hdr: &Header) -> bool {
    let sport = hdr.sport.to_be_bytes();
    let dport = hdr.dport.to_be_bytes();
    let len = (hdr.len() as u16 + hdr.inner_len).to_be_bytes();
    let ty = HOPS_TYPE.to_be_bytes();
    let head: [u8; HEAD_LEN] = [
        sport[0],
        sport[1],
        dport[0],
        dport[1],
        len[0],
        len[1],
        0,
        0,
        first_byte(hdr.family, hdr.hops()),
        hdr.inner_proto,
        0,
        0,
        ty[0],
        ty[1],
        hdr.hops() as u8,
        0,
    ];
    if !packet::write(ctx, off, head) {
        return false;
    }
    match hdr.hop {
        None => true,
        Some(hop) if hdr.family == FAMILY_V4 => {
            packet::write(ctx, off + HEAD_LEN, [hop[0], hop[1], hop[2], hop[3]])
        }
        Some(hop) => packet::write(ctx, off + HEAD_LEN, *hop),
    }
}
