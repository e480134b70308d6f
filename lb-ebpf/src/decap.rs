//! The backend side of IP-in-IP DSR: strip the outer header of a tunnel
//! packet addressed to this backend and hand the inner packet to the kernel,
//! which then sees a packet for the VIP (configured on its loopback).
//!
//! This kernel has no ipip/sit module, so without this program a backend
//! could not receive our tunnels at all. An outer ECN "congestion
//! experienced" mark is carried into an ECN-capable inner header (RFC 6040).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    flow::{FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6},
    maps::DecapAddr,
    stats::DecapReason,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    maps::DECAP_ADDRS,
    packet::{self, header, read},
    parse::{ETH_P_IPV4, ETH_P_IPV6, parse_l2},
};

const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;

#[inline(always)]
pub fn process(ctx: &XdpContext) -> DecapReason {
    let (l2, ether_type) = match parse_l2(ctx) {
        Ok(v) => v,
        Err(_) => return DecapReason::PassNotTunnel,
    };
    let l3 = l2.len();
    let mut ours = DecapAddr::default();
    let (outer_len, inner_proto, outer_ecn) = match ether_type {
        ETH_P_IPV4 => {
            let Some(ip) = header::<Ipv4Hdr>(ctx, l3) else {
                return DecapReason::PassMalformed;
            };
            if ip.proto != PROTO_IPIP && ip.proto != PROTO_IPV6 {
                return DecapReason::PassNotTunnel;
            }
            let ihl = ((ip.vihl & 0x0f) as usize) * 4;
            // A fragmented tunnel packet cannot be stripped piecewise.
            let fragmented = u16::from_be_bytes(ip.frags) & 0x3fff != 0;
            let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
            if ip.vihl >> 4 != 4
                || ihl < Ipv4Hdr::LEN
                || fragmented
                || tot_len < ihl
                || l3 + tot_len > packet::len(ctx)
            {
                return DecapReason::PassMalformed;
            }
            ours.family = FAMILY_V4;
            ours.addr[..4].copy_from_slice(&ip.dst_addr);
            (ihl, ip.proto, ip.tos & ECN_MASK)
        }
        ETH_P_IPV6 => {
            let Some(ip) = header::<Ipv6Hdr>(ctx, l3) else {
                return DecapReason::PassMalformed;
            };
            if ip.next_hdr != PROTO_IPIP && ip.next_hdr != PROTO_IPV6 {
                return DecapReason::PassNotTunnel;
            }
            let payload = u16::from_be_bytes(ip.payload_len) as usize;
            if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload > packet::len(ctx) {
                return DecapReason::PassMalformed;
            }
            ours.family = FAMILY_V6;
            ours.addr = ip.dst_addr;
            (Ipv6Hdr::LEN, ip.next_hdr, (ip.vcf[1] >> 4) & ECN_MASK)
        }
        _ => return DecapReason::PassNotTunnel,
    };
    // SAFETY: copied out at once.
    if unsafe { DECAP_ADDRS.get(&ours) }.is_none() {
        return DecapReason::PassNotOurAddress;
    }
    let inner = l3 + outer_len;
    let inner_type = match inner_proto {
        PROTO_IPIP if inner_ipv4_fits(ctx, inner) => ETH_P_IPV4,
        PROTO_IPV6 if inner_ipv6_fits(ctx, inner) => ETH_P_IPV6,
        _ => return DecapReason::PassMalformed,
    };
    if outer_ecn == ECN_CE && !mark_ce(ctx, inner, inner_type) {
        return DecapReason::PassMalformed;
    }
    // The link header moves forward to sit in front of the inner packet.
    let et = inner_type.to_be_bytes();
    let d = l2.dst_mac;
    let s = l2.src_mac;
    let moved = match l2.vlan {
        Some(t) => packet::write(
            ctx,
            outer_len,
            [
                d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], t[0], t[1],
                t[2], t[3], et[0], et[1],
            ],
        ),
        None => packet::write(
            ctx,
            outer_len,
            [
                d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], et[0],
                et[1],
            ],
        ),
    };
    // SAFETY: shrinking the head by the outer header's length, which lies
    // inside the packet (checked when it was read).
    if !moved || unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return DecapReason::PassMalformed;
    }
    DecapReason::Decapsulated
}

/// The inner IPv4 header at `off` is whole, and so is the packet it heads:
/// the kernel gets nothing we would not have forwarded.
#[inline(always)]
fn inner_ipv4_fits(ctx: &XdpContext, off: usize) -> bool {
    let Some(ip) = header::<Ipv4Hdr>(ctx, off) else {
        return false;
    };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    ip.vihl >> 4 == 4 && ihl >= Ipv4Hdr::LEN && tot_len >= ihl && off + tot_len <= packet::len(ctx)
}

#[inline(always)]
fn inner_ipv6_fits(ctx: &XdpContext, off: usize) -> bool {
    let Some(ip) = header::<Ipv6Hdr>(ctx, off) else {
        return false;
    };
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    ip.vcf[0] >> 4 == 6 && off + Ipv6Hdr::LEN + payload <= packet::len(ctx)
}

/// Set ECN CE in the inner header at `off` if it is ECN-capable.
#[inline(always)]
fn mark_ce(ctx: &XdpContext, off: usize, inner_type: u16) -> bool {
    if inner_type == ETH_P_IPV4 {
        let Some(mut h) = read::<[u8; 12]>(ctx, off) else {
            return false;
        };
        if h[1] & ECN_MASK == 0 {
            return true;
        }
        let old = u16::from_be_bytes([h[0], h[1]]);
        h[1] |= ECN_CE;
        let new = u16::from_be_bytes([h[0], h[1]]);
        // Incremental checksum update (RFC 1624): HC' = ~(~HC + ~m + m').
        let check = u16::from_be_bytes([h[10], h[11]]);
        let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let check = (!(sum as u16)).to_be_bytes();
        h[10] = check[0];
        h[11] = check[1];
        packet::write(ctx, off, h)
    } else {
        let Some(mut h) = read::<[u8; 2]>(ctx, off) else {
            return false;
        };
        let ecn = (h[1] >> 4) & ECN_MASK;
        if ecn != 0 {
            h[1] |= ECN_CE << 4;
        }
        packet::write(ctx, off, h)
    }
}
