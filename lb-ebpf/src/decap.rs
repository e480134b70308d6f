//! The backend side of IP-in-IP DSR: strip the outer header of a tunnel
//! packet addressed to this backend and hand the inner packet to the kernel,
//! which then sees a packet for the VIP (configured on its loopback).
//!
//! With second chance on (`SECOND_CHANCE` holds the GUE port), GUE to that
//! port is a tunnel too (`gue.rs`): with no hop left it is stripped like
//! IP-in-IP; with one, `second_hop.rs` decides whether the packet stays
//! here or goes on to the hop, which must be a peer (`DECAP_PEERS`, one
//! address per other backend). GUE with no hop left may also come from a
//! peer (a second hop it sent on); GUE with a hop left only from a load
//! balancer (`DECAP_SOURCES`), so no host can make this backend send
//! packets on for it.
//!
//! This kernel has no ipip/sit module, so without this program a backend
//! could not receive our tunnels at all.
//!
//! Only tunnels from an allowed outer source (`DECAP_SOURCES`: the load
//! balancers' tunnel sources) are stripped. Anyone else who can route IP
//! protocol 4 or 41 here could otherwise deliver packets with any inner
//! source past the host's firewall, which runs after XDP. Such tunnels are
//! dropped, not passed: a kernel with a tunnel device would strip them
//! itself. ECN is carried from the outer header into the inner one as RFC
//! 6040 section 4.2 says.
//!
//! An IPv6 outer header may put extension headers (hop-by-hop, routing,
//! destination options, fragment) in front of the tunnel; the kernel would
//! find the tunnel behind them, so the checks walk them too, with the
//! parser's own walker. A trusted tunnel behind them is stripped together
//! with them (RFC 2473 section 4: a Linux ip6tnl sender adds a
//! destination-options header by default); their options are not
//! interpreted.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    Reason,
    flow::{FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6, PROTO_UDP},
    maps::{DECAP_F_ANY_SOURCE, DECAP_SOURCE_FAMILY_BITS, DecapAddr, DecapSource},
    stats::DecapReason,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    gue, ipv4,
    maps::{DECAP_ADDRS, DECAP_CONFIG, DECAP_PEERS, DECAP_SOURCES, gue_port},
    packet::{self, header, read},
    parse::{self, ETH_P_IPV4, ETH_P_IPV6, Fragment, L2, parse_l2},
    second_hop,
};

const ECN_MASK: u8 = 0x03;
const ECN_NOT_ECT: u8 = 0b00;
const ECN_ECT1: u8 = 0b01;
const ECN_ECT0: u8 = 0b10;
const ECN_CE: u8 = 0b11;
/// The longest IPv4 header (IHL 15), in 32-bit words.
const IPV4_MAX_WORDS: usize = 15;

/// What the outer header of a tunnel packet says, once it is whole.
struct Outer {
    /// From the outer header's start to the inner packet: the fixed header
    /// with its IPv4 options or IPv6 extension headers.
    len: usize,
    /// Frame offset where the outer packet ends (its header's start plus
    /// its total length): the inner packet must end by then. What follows
    /// is link padding or junk, not tunnel payload.
    end: usize,
    /// `PROTO_IPIP` or `PROTO_IPV6`, `PROTO_UDP` for GUE; 0 when an IPv6
    /// extension-header chain could not be walked to the end, so what it
    /// carries is unknown.
    inner_proto: u8,
    ecn: u8,
    /// The IPv6 flow label (0 for IPv4): kept when a second hop is sent on.
    label: u32,
    fragmented: bool,
    /// An IPv6 routing header still has segments left: our address is a
    /// waypoint, not where the packet ends up.
    passes_through: bool,
}

#[inline(always)]
pub fn process(ctx: &XdpContext) -> DecapReason {
    match try_process(ctx) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
fn try_process(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let (l2, ether_type) = parse_l2(ctx).map_err(|_| DecapReason::PassNotTunnel)?;
    let l3 = l2.len();
    let gue_port = gue_port();
    let mut ours = DecapAddr::default();
    let mut from = DecapSource::default();
    let outer = match ether_type {
        ETH_P_IPV4 => outer_ipv4(ctx, l3, gue_port, &mut ours, &mut from)?,
        ETH_P_IPV6 => outer_ipv6(ctx, l3, gue_port, &mut ours, &mut from)?,
        _ => return Err(DecapReason::PassNotTunnel),
    };
    // SAFETY: only tested for presence.
    if unsafe { DECAP_ADDRS.get(&ours) }.is_none() {
        return Err(DecapReason::PassNotOurAddress);
    }
    let is_gue = outer.inner_proto == PROTO_UDP;
    let sender = sender(&from, is_gue).ok_or(DecapReason::DropUntrustedSource)?;
    // A fragmented tunnel packet cannot be stripped piecewise.
    if outer.fragmented {
        return Err(DecapReason::PassMalformed);
    }
    if outer.passes_through {
        return Err(DecapReason::PassNotOurAddress);
    }
    let mut inner = l3 + outer.len;
    let mut end = outer.end;
    let mut inner_proto = outer.inner_proto;
    let mut hops = None;
    if is_gue {
        let g = gue::parse(ctx, inner, end, ours.family)?;
        if g.hops != 0 && sender == Sender::Peer {
            return Err(DecapReason::DropUntrustedSource);
        }
        inner += g.len;
        end = g.end;
        inner_proto = g.inner_proto;
        hops = Some(g);
    }
    let inner_type = match inner_proto {
        PROTO_IPIP if inner_ipv4_fits(ctx, inner, end) => ETH_P_IPV4,
        PROTO_IPV6 if inner_ipv6_fits(ctx, inner, end) => ETH_P_IPV6,
        _ => return Err(DecapReason::PassMalformed),
    };
    let reason = match &hops {
        None => DecapReason::Decapsulated,
        Some(g) if g.hops == 0 => DecapReason::SecondChanceReceived,
        // Before the socket lookup: a flood of hops to anywhere costs a
        // trie lookup each, no more.
        Some(g) if !second_hop::is_peer(ours.family, &g.hop) => {
            return Err(DecapReason::DropSecondHopNotPeer);
        }
        Some(_) if second_hop::stays_here(ctx, inner, inner_type, end) => {
            DecapReason::SecondChanceLocal
        }
        Some(g) => {
            let inner_len = inner_len(ctx, inner, inner_type)?;
            let tot_len = second_hop::outer_len(ours.family, inner_len);
            let via = second_hop::route(ctx, &l2, ours.family, &ours.addr, &g.hop, tot_len as u16)?;
            set_inner_ecn(ctx, inner, inner_type, outer.ecn)?;
            let onward = second_hop::Onward {
                l2: &l2,
                via: &via,
                family: ours.family,
                from: &ours.addr,
                hop: &g.hop,
                sport: g.sport,
                label: outer.label,
                inner,
                inner_type,
                inner_len,
            };
            second_hop::send_on(ctx, &onward)?;
            return Ok(DecapReason::SecondChanceForwarded);
        }
    };
    set_inner_ecn(ctx, inner, inner_type, outer.ecn)?;
    strip(ctx, &l2, inner - l3, inner_type)?;
    Ok(reason)
}

/// Whether the UDP datagram whose header is at `udp` goes to the GUE port
/// (`port`, 0: second chance off, nothing does).
#[inline(always)]
fn to_gue_port(ctx: &XdpContext, udp: usize, port: u16) -> bool {
    port != 0 && read::<[u8; 4]>(ctx, udp).is_some_and(|p| u16::from_be_bytes([p[2], p[3]]) == port)
}

/// The length of the whole inner packet at `inner` (checked by
/// `inner_ipv4_fits` / `inner_ipv6_fits`).
#[inline(always)]
fn inner_len(ctx: &XdpContext, inner: usize, inner_type: u16) -> Result<u16, DecapReason> {
    let h: [u8; 6] = read(ctx, inner).ok_or(DecapReason::PassMalformed)?;
    let len = if inner_type == ETH_P_IPV4 {
        u16::from_be_bytes([h[2], h[3]])
    } else {
        u16::from_be_bytes([h[4], h[5]]).saturating_add(Ipv6Hdr::LEN as u16)
    };
    Ok(len)
}

/// The outer IPv4 header at `l3`: whole, consistent with the frame, and
/// with a right checksum. A header damaged on the way may name a wrong
/// source or destination, and once it is stripped nothing downstream can
/// tell (the kernel drops such a header; so do we).
#[inline(always)]
fn outer_ipv4(
    ctx: &XdpContext,
    l3: usize,
    gue_port: u16,
    ours: &mut DecapAddr,
    from: &mut DecapSource,
) -> Result<Outer, DecapReason> {
    let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(DecapReason::PassMalformed)?;
    // The header is checked once it is known to be a tunnel's: a header
    // that is not one passes as not ours, whatever its shape.
    let claimed_ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let frags = u16::from_be_bytes(ip.frags);
    // A later fragment's UDP "header" is payload: no GUE to see there.
    let tunnel = match ip.proto {
        PROTO_IPIP | PROTO_IPV6 => true,
        PROTO_UDP => frags & 0x1fff == 0 && to_gue_port(ctx, l3 + claimed_ihl, gue_port),
        _ => false,
    };
    if !tunnel {
        return Err(DecapReason::PassNotTunnel);
    }
    let (ihl, tot_len) = ipv4::whole(ip, l3, packet::len(ctx)).ok_or(DecapReason::PassMalformed)?;
    ours.family = FAMILY_V4;
    ours.addr[..4].copy_from_slice(&ip.dst_addr);
    from.family = FAMILY_V4;
    from.addr[..4].copy_from_slice(&ip.src_addr);
    let outer = Outer {
        len: ihl,
        end: l3 + tot_len,
        inner_proto: ip.proto,
        ecn: ip.tos & ECN_MASK,
        label: 0,
        fragmented: frags & 0x3fff != 0,
        passes_through: false,
    };
    match ipv4_header_sum(ctx, l3, ihl) {
        Some(0xffff) => Ok(outer),
        Some(_) => Err(DecapReason::DropBadOuterChecksum),
        None => Err(DecapReason::PassMalformed),
    }
}

/// RFC 1071 one's-complement sum of the `ihl`-byte IPv4 header at `off`,
/// options and checksum field included: 0xffff when the checksum is right.
#[inline(always)]
fn ipv4_header_sum(ctx: &XdpContext, off: usize, ihl: usize) -> Option<u16> {
    let mut sum: u32 = 0;
    for word in 0..IPV4_MAX_WORDS {
        if word * 4 >= ihl {
            break;
        }
        let w: [u8; 4] = read(ctx, off + word * 4)?;
        sum += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    Some(fold(sum))
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The outer IPv6 header at `l3`, consistent with the frame, and the
/// extension headers after it. A chain that cannot be walked to its end
/// (longer than the walker goes, or cut short, as a first fragment's may
/// be until reassembly makes it whole) cannot be shown not to hide a
/// tunnel: it gets the address and source checks, and is never stripped.
#[inline(always)]
fn outer_ipv6(
    ctx: &XdpContext,
    l3: usize,
    gue_port: u16,
    ours: &mut DecapAddr,
    from: &mut DecapSource,
) -> Result<Outer, DecapReason> {
    let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(DecapReason::PassMalformed)?;
    let next = ip.next_hdr;
    let maybe = match next {
        PROTO_IPIP | PROTO_IPV6 => true,
        // Most UDP to a backend is not GUE: tell at once.
        PROTO_UDP => to_gue_port(ctx, l3 + Ipv6Hdr::LEN, gue_port),
        _ => parse::is_ipv6_extension(next),
    };
    if !maybe {
        return Err(DecapReason::PassNotTunnel);
    }
    if ip.vcf[0] >> 4 != 6 {
        return Err(DecapReason::PassMalformed);
    }
    let end = l3 + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
    ours.family = FAMILY_V6;
    ours.addr = ip.dst_addr;
    from.family = FAMILY_V6;
    from.addr = ip.src_addr;
    let mut outer = Outer {
        len: Ipv6Hdr::LEN,
        end,
        inner_proto: 0,
        ecn: (ip.vcf[1] >> 4) & ECN_MASK,
        label: u32::from_be_bytes([0, ip.vcf[1] & 0x0f, ip.vcf[2], ip.vcf[3]]),
        fragmented: false,
        passes_through: false,
    };
    let chain = parse::ipv6_chain(
        ctx,
        next,
        l3 + Ipv6Hdr::LEN,
        end,
        Reason::PassIpv6ExtHeaders,
    );
    // Checked after the walk, not before: knowing `end` within the frame,
    // the compiler would drop the walker's own bounds checks, which the
    // verifier needs to see.
    if end > packet::len(ctx) {
        return Err(DecapReason::PassMalformed);
    }
    let Ok(chain) = chain else {
        return Ok(outer);
    };
    let later = matches!(chain.fragment, Fragment::Later(_));
    let tunnel = chain.proto == PROTO_IPIP
        || chain.proto == PROTO_IPV6
        || (chain.proto == PROTO_UDP && !later && to_gue_port(ctx, chain.l4_off, gue_port));
    // A later fragment shows only the next header its fragment header
    // names. The kernel takes the chain from the first fragment (checked
    // on its own), but an extension header named here may still lead to
    // a tunnel: treat it as one.
    let may_hide_one = later && parse::is_ipv6_extension(chain.proto);
    if !(tunnel || may_hide_one) {
        return Err(DecapReason::PassNotTunnel);
    }
    outer.len = chain.l4_off - l3;
    outer.inner_proto = if tunnel { chain.proto } else { 0 };
    outer.fragmented = chain.fragment != Fragment::None;
    outer.passes_through = chain.passes_through;
    Ok(outer)
}

/// Who sent a tunnel packet, as far as its outer source says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// In `DECAP_SOURCES` (and no peer), or any source of IP-in-IP when
    /// the operator opted out of the check (`DECAP_F_ANY_SOURCE`): any
    /// tunnel.
    LoadBalancer,
    /// In `DECAP_PEERS`, or any source of GUE under `DECAP_F_ANY_SOURCE`:
    /// GUE with no hop left only (a second hop sent on here).
    Peer,
}

/// The sender of a tunnel (`gue`: GUE) from `from`; `None`: untrusted. A
/// peer is a peer even inside an allowed source prefix, and a source that
/// is allowed only because the operator opted out of the check
/// (`DECAP_F_ANY_SOURCE`) counts as a peer for GUE: neither may start a
/// second hop through this backend to its peers.
#[inline(always)]
fn sender(from: &DecapSource, gue: bool) -> Option<Sender> {
    let addr_bits = if from.family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(DECAP_SOURCE_FAMILY_BITS + addr_bits, *from);
    if gue && DECAP_PEERS.get(&key).is_some() {
        return Some(Sender::Peer);
    }
    if DECAP_SOURCES.get(&key).is_some() {
        return Some(Sender::LoadBalancer);
    }
    if DECAP_CONFIG
        .get(0)
        .is_some_and(|c| c.flags & DECAP_F_ANY_SOURCE != 0)
    {
        return Some(if gue {
            Sender::Peer
        } else {
            Sender::LoadBalancer
        });
    }
    None
}

/// The inner IPv4 header at `off` is whole, and so is the packet it heads,
/// inside the outer packet, which ends at `end`: the kernel gets nothing
/// we would not have forwarded, and no link padding or trailing junk
/// passes for the inner packet's bytes.
#[inline(always)]
fn inner_ipv4_fits(ctx: &XdpContext, off: usize, end: usize) -> bool {
    let Some(ip) = header::<Ipv4Hdr>(ctx, off) else {
        return false;
    };
    ipv4::whole(ip, off, end).is_some()
}

/// `inner_ipv4_fits` for an inner IPv6 packet.
#[inline(always)]
fn inner_ipv6_fits(ctx: &XdpContext, off: usize, end: usize) -> bool {
    let Some(ip) = header::<Ipv6Hdr>(ctx, off) else {
        return false;
    };
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    ip.vcf[0] >> 4 == 6 && off + Ipv6Hdr::LEN + payload <= end
}

/// RFC 6040 section 4.2: the inner ECN field after decapsulation, or
/// `None` when the packet must be dropped (congestion marked on a packet
/// whose transport would not see it).
#[inline(always)]
fn decapsulated_ecn(inner: u8, outer: u8) -> Option<u8> {
    match (inner, outer) {
        (ECN_NOT_ECT, ECN_CE) => None,
        (ECN_ECT0 | ECN_ECT1, ECN_CE) => Some(ECN_CE),
        (ECN_ECT0, ECN_ECT1) => Some(ECN_ECT1),
        _ => Some(inner),
    }
}

/// Write the decapsulated ECN field into the inner header at `off`.
#[inline(always)]
fn set_inner_ecn(
    ctx: &XdpContext,
    off: usize,
    inner_type: u16,
    outer_ecn: u8,
) -> Result<(), DecapReason> {
    if inner_type == ETH_P_IPV4 {
        let mut h: [u8; 12] = read(ctx, off).ok_or(DecapReason::PassMalformed)?;
        let ecn = decapsulated_ecn(h[1] & ECN_MASK, outer_ecn).ok_or(DecapReason::DropCeNotEct)?;
        if ecn == h[1] & ECN_MASK {
            return Ok(());
        }
        let old = u16::from_be_bytes([h[0], h[1]]);
        h[1] = (h[1] & !ECN_MASK) | ecn;
        let new = u16::from_be_bytes([h[0], h[1]]);
        // Incremental checksum update (RFC 1624): HC' = ~(~HC + ~m + m').
        let check = u16::from_be_bytes([h[10], h[11]]);
        let sum = (!check) as u32 + (!old) as u32 + new as u32;
        let check = (!fold(sum)).to_be_bytes();
        h[10] = check[0];
        h[11] = check[1];
        write_or_malformed(ctx, off, h)
    } else {
        // The traffic class straddles bytes 0 and 1; ECN is bits 4-5 of byte 1.
        let mut h: [u8; 2] = read(ctx, off).ok_or(DecapReason::PassMalformed)?;
        let inner = (h[1] >> 4) & ECN_MASK;
        let ecn = decapsulated_ecn(inner, outer_ecn).ok_or(DecapReason::DropCeNotEct)?;
        if ecn == inner {
            return Ok(());
        }
        h[1] = (h[1] & !(ECN_MASK << 4)) | (ecn << 4);
        write_or_malformed(ctx, off, h)
    }
}

#[inline(always)]
fn write_or_malformed<T: Copy>(ctx: &XdpContext, off: usize, value: T) -> Result<(), DecapReason> {
    if packet::write(ctx, off, value) {
        Ok(())
    } else {
        Err(DecapReason::PassMalformed)
    }
}

/// Move the link header forward to sit in front of the inner packet, with
/// the inner packet's ethertype, and drop the `outer_len` bytes before it.
#[inline(always)]
fn strip(ctx: &XdpContext, l2: &L2, outer_len: usize, inner_type: u16) -> Result<(), DecapReason> {
    let et = inner_type.to_be_bytes();
    let d = l2.dst_mac;
    let s = l2.src_mac;
    match l2.vlan {
        Some(t) => write_or_malformed(
            ctx,
            outer_len,
            [
                d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], t[0], t[1],
                t[2], t[3], et[0], et[1],
            ],
        )?,
        None => write_or_malformed(
            ctx,
            outer_len,
            [
                d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], et[0],
                et[1],
            ],
        )?,
    }
    // SAFETY: shrinking the head by the outer header's length, which lies
    // inside the packet (checked when it was read).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapReason::PassMalformed);
    }
    Ok(())
}
