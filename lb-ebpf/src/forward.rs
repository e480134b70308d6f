//! Sending a packet on to its backend: the next hop, then either IP-in-IP
//! encapsulation (DSR across routers), GUE with a second hop (a flow that
//! may belong to its ring slot's previous owner, `second_chance`), or L2
//! DSR (only the destination MAC changes), then XDP_TX or a devmap
//! redirect.
//!
//! Everything that can fail is decided before the packet is touched, so a
//! dropped packet is dropped as it arrived. A packet too big to encapsulate
//! is handed to `pmtu`, which may answer it with an ICMP too-big instead.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use lb_common::{
    FlowKey, Reason,
    flow::{FAMILY_V4, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, tunnel_entropy},
    maps::{Backend, CFG_F_NEXTHOP_FIB, LbConfig, VIP_F_L2_DSR},
};

use crate::{
    csum, fib, gue,
    maps::{BACKENDS, TX_PORT_MACS, TX_PORTS, gue_port},
    mem, packet,
    parse::{ETH_P_IPV4, ETH_P_IPV6, L2},
    pmtu,
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
/// TTL / hop limit of the outer header.
const OUTER_TTL: u8 = 64;
const ZERO_MAC: [u8; 6] = [0; 6];

/// The packet about to be forwarded.
pub struct Outgoing<'a> {
    pub l2: &'a L2,
    pub flow: &'a FlowKey,
    /// Length of the IP packet we carry (header included).
    pub ip_len: u16,
    pub tos: u8,
}

struct NextHop {
    dmac: [u8; 6],
    smac: [u8; 6],
    /// 0: out of the ingress interface.
    ifindex: u32,
}

/// Forward `out` to `backend` the way the VIP's flags ask.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    cfg: &LbConfig,
    vip_flags: u32,
    backend: &Backend,
    out: &Outgoing,
) -> Reason {
    if vip_flags & VIP_F_L2_DSR != 0 {
        let hop = match next_hop(ctx, cfg, out.l2, backend, out.ip_len, true) {
            Ok(hop) => hop,
            Err(Reason::DropTooBig) => return pmtu::answer(ctx, out, fib::route_mtu()),
            Err(reason) => return reason,
        };
        let egress = match egress(ctx, hop.ifindex) {
            Ok(egress) => egress,
            Err(reason) => return reason,
        };
        if !packet::write(ctx, 0, hop.dmac) || !packet::write(ctx, 6, hop.smac) {
            return Reason::DropEncapFailed;
        }
        return send(egress);
    }
    encapsulate(ctx, cfg, backend, out, Tunnel::IpIp)
}

/// Forward `out` to `backend` in GUE, with backend `hop_id` (the previous
/// owner of the flow's ring slot, `second_chance`) as the second hop.
///
/// Inlined, as a branch of its own: a call would stack its frame below
/// the packet path's, and the two do not fit the 512 bytes together. The
/// path without a second hop runs none of it.
#[inline(always)]
pub fn forward_with_second_hop(
    ctx: &XdpContext,
    cfg: &LbConfig,
    backend: &Backend,
    hop_id: u32,
    out: &Outgoing,
) -> Reason {
    // `second_chance` found a port; 0 now means lbd turned second chance
    // off since, and the packet is not worth a tunnel nobody decodes.
    let port = gue_port();
    let Some(hop) = BACKENDS.get(hop_id) else {
        return Reason::DropEncapFailed;
    };
    if port == 0 {
        return Reason::DropEncapFailed;
    }
    let tunnel = Tunnel::SecondHop {
        hop: &hop.addr,
        port,
    };
    encapsulate(ctx, cfg, backend, out, tunnel)
}

/// How a packet travels to its backend.
#[derive(Clone, Copy)]
enum Tunnel<'a> {
    /// IP-in-IP: an outer header only.
    IpIp,
    /// GUE to `port` with one hop, `hop` (of the outer header's family).
    SecondHop { hop: &'a [u8; 16], port: u16 },
}

impl Tunnel<'_> {
    /// Bytes in front of the client's packet, link header aside.
    #[inline(always)]
    fn overhead(&self, family: u8) -> usize {
        match self {
            Tunnel::IpIp if family == FAMILY_V4 => IPV4_HDR_LEN,
            Tunnel::IpIp => IPV6_HDR_LEN,
            Tunnel::SecondHop { .. } => gue::overhead(family),
        }
    }
}

/// Encapsulate `out` for `backend` and send it: the MTU and the next hop
/// are checked before the packet changes.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    cfg: &LbConfig,
    backend: &Backend,
    out: &Outgoing,
    tunnel: Tunnel,
) -> Reason {
    let overhead = tunnel.overhead(backend.family);
    let outer_len = out.ip_len as u32 + overhead as u32;
    if outer_len > u16::MAX as u32 {
        return Reason::DropTooBig;
    }
    if cfg.mtu != 0 && outer_len > cfg.mtu as u32 {
        return pmtu::answer(ctx, out, (cfg.mtu as u32).saturating_sub(overhead as u32));
    }
    let hop = match next_hop(ctx, cfg, out.l2, backend, outer_len as u16, false) {
        Ok(hop) => hop,
        Err(Reason::DropTooBig) => {
            return pmtu::answer(ctx, out, fib::route_mtu().saturating_sub(overhead as u32));
        }
        Err(reason) => return reason,
    };
    let egress = match egress(ctx, hop.ifindex) {
        Ok(egress) => egress,
        Err(reason) => return reason,
    };
    // SAFETY: the helper checks the headroom and fails cleanly without it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Reason::DropEncapFailed;
    }
    let ip_payload = (outer_len as usize - gue::ip_hdr_len(backend.family)) as u16;
    let proto = match tunnel {
        Tunnel::IpIp if out.flow.family == FAMILY_V4 => PROTO_IPIP,
        Tunnel::IpIp => PROTO_IPV6,
        Tunnel::SecondHop { .. } => PROTO_UDP,
    };
    let written = if backend.family == FAMILY_V4 {
        write_l2(ctx, out.l2, &hop.dmac, &hop.smac, ETH_P_IPV4)
            && write_outer_v4(ctx, out, cfg, backend, proto, ip_payload)
    } else {
        write_l2(ctx, out.l2, &hop.dmac, &hop.smac, ETH_P_IPV6)
            && write_outer_v6(ctx, out, cfg, backend, proto, ip_payload)
    };
    let written = written
        && match tunnel {
            Tunnel::IpIp => true,
            Tunnel::SecondHop { hop, port } => {
                let header = gue::Header {
                    family: backend.family,
                    sport: gue::source_port(entropy(out.flow)),
                    dport: port,
                    inner_proto: if out.flow.family == FAMILY_V4 {
                        PROTO_IPIP
                    } else {
                        PROTO_IPV6
                    },
                    inner_len: out.ip_len,
                    hop: Some(hop),
                };
                let off = out.l2.len() + gue::ip_hdr_len(backend.family);
                gue::write(ctx, off, &header)
            }
        };
    if !written {
        return Reason::DropEncapFailed;
    }
    send(egress)
}

/// The flow's `tunnel_entropy`, its addresses read a word at a time.
#[inline(always)]
fn entropy(flow: &FlowKey) -> u32 {
    let (src, dst) = (mem::src_words(flow), mem::dst_words(flow));
    tunnel_entropy(&src, &dst, flow.sport, flow.dport, flow.proto)
}

/// Out of the ingress interface, or redirected to another one.
#[derive(Clone, Copy)]
enum Egress {
    Tx,
    Redirect(u32),
}

/// Where `ifindex` (0: the ingress interface) is reached from XDP; an
/// interface missing from `TX_PORTS` is refused before the packet changes.
#[inline(always)]
fn egress(ctx: &XdpContext, ifindex: u32) -> Result<Egress, Reason> {
    if ifindex == 0 || ifindex as usize == ctx.ingress_ifindex() {
        return Ok(Egress::Tx);
    }
    match TX_PORTS.get_ifindex(ifindex) {
        Some(_) => Ok(Egress::Redirect(ifindex)),
        None => Err(Reason::DropNoTxPort),
    }
}

#[inline(always)]
fn send(egress: Egress) -> Reason {
    match egress {
        Egress::Tx => Reason::Tx,
        Egress::Redirect(ifindex) => match TX_PORTS.redirect(ifindex, 0) {
            Ok(_) => Reason::Redirect,
            Err(_) => Reason::DropNoTxPort,
        },
    }
}

/// Where the frame goes next: the backend's own MAC when configured (same
/// link), else the kernel's FIB, else the configured gateway (through the
/// interface the FIB chose, when it knew the route but not the neighbour).
///
/// With `l2_dsr` the packet keeps the VIP as its destination, so it must
/// reach the backend itself: a router (the gateway, or a FIB next hop that
/// is not the backend) would route it back to us.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    cfg: &LbConfig,
    l2: &L2,
    backend: &Backend,
    tot_len: u16,
    l2_dsr: bool,
) -> Result<NextHop, Reason> {
    let configured = |dmac: [u8; 6]| NextHop {
        dmac,
        smac: if cfg.egress_ifindex != 0 && cfg.egress_mac != ZERO_MAC {
            cfg.egress_mac
        } else {
            l2.dst_mac
        },
        ifindex: cfg.egress_ifindex,
    };
    if backend.mac != ZERO_MAC {
        return Ok(configured(backend.mac));
    }
    let gateway_mac = if l2_dsr { ZERO_MAC } else { cfg.gateway_mac };
    if cfg.flags & CFG_F_NEXTHOP_FIB != 0 {
        let (src, dst): (&[u8], &[u8]) = if backend.family == FAMILY_V4 {
            (&cfg.outer_src_v4, &backend.addr)
        } else {
            (&cfg.outer_src_v6, &backend.addr)
        };
        let Some((rc, fib)) = fib::lookup(ctx, backend.family, src, dst, tot_len) else {
            return Err(Reason::DropNoRoute);
        };
        let routed = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
        if l2_dsr && routed && !fib::next_hop_is(fib, backend.family, &backend.addr) {
            return Err(Reason::DropL2DsrOffLink);
        }
        match rc {
            BPF_FIB_LKUP_RET_SUCCESS => {
                return Ok(NextHop {
                    dmac: fib.dmac,
                    smac: fib.smac,
                    ifindex: fib.ifindex,
                });
            }
            BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::DropTooBig),
            // The route is known but not its neighbour: the kernel filled
            // in the interface (not the MACs), which the gateway is behind.
            BPF_FIB_LKUP_RET_NO_NEIGH if gateway_mac != ZERO_MAC => {
                return through(ctx, l2, gateway_mac, fib.ifindex);
            }
            _ => return Err(Reason::DropNoRoute),
        }
    }
    if gateway_mac != ZERO_MAC {
        return Ok(configured(gateway_mac));
    }
    Err(Reason::DropNoRoute)
}

/// Next-hop MAC `dmac` out of interface `ifindex`: back out of the ingress
/// interface with the MAC the frame came to, or redirected with the MAC lbd
/// wrote for that port (none: not a port we may send from).
#[inline(always)]
fn through(ctx: &XdpContext, l2: &L2, dmac: [u8; 6], ifindex: u32) -> Result<NextHop, Reason> {
    if ifindex == 0 || ifindex as usize == ctx.ingress_ifindex() {
        return Ok(NextHop {
            dmac,
            smac: l2.dst_mac,
            ifindex: 0,
        });
    }
    // SAFETY: copied out at once.
    match unsafe { TX_PORT_MACS.get(&ifindex) } {
        Some(port) => Ok(NextHop {
            dmac,
            smac: port.mac,
            ifindex,
        }),
        None => Err(Reason::DropNoTxPort),
    }
}

/// The link header in front of a new IP header, `l2`'s VLAN tag kept.
#[inline(always)]
pub fn write_l2(
    ctx: &XdpContext,
    l2: &L2,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    ether_type: u16,
) -> bool {
    let Some(eth) = packet::header::<[u8; 12]>(ctx, 0) else {
        return false;
    };
    eth[..6].copy_from_slice(dmac);
    eth[6..].copy_from_slice(smac);
    match l2.vlan {
        Some(tag) => {
            packet::write(ctx, 12, tag) && packet::write(ctx, 16, ether_type.to_be_bytes())
        }
        None => packet::write(ctx, 12, ether_type.to_be_bytes()),
    }
}

/// Outer IPv4: DF set (we never fragment), DSCP/ECN copied from the inner
/// header, protocol `proto` (4: IPv4 inside, 41: IPv6 inside, 17: GUE),
/// followed by `payload` bytes.
#[inline(always)]
fn write_outer_v4(
    ctx: &XdpContext,
    out: &Outgoing,
    cfg: &LbConfig,
    backend: &Backend,
    proto: u8,
    payload: u16,
) -> bool {
    let Some(h) = packet::header::<[u8; IPV4_HDR_LEN]>(ctx, out.l2.len()) else {
        return false;
    };
    let len = (payload + IPV4_HDR_LEN as u16).to_be_bytes();
    h[0] = 0x45;
    h[1] = out.tos;
    h[2] = len[0];
    h[3] = len[1];
    h[4] = 0;
    h[5] = 0;
    h[6] = 0x40;
    h[7] = 0;
    h[8] = OUTER_TTL;
    h[9] = proto;
    h[10] = 0;
    h[11] = 0;
    h[12..16].copy_from_slice(&cfg.outer_src_v4);
    h[16..20].copy_from_slice(&backend.addr[..4]);
    let check = csum::ipv4_header(h).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
    true
}

/// Outer IPv6: traffic class copied, flow label from the flow's
/// `tunnel_entropy` so that receivers spread tunnels of different flows
/// across queues; next header
/// `proto` (as for IPv4), `payload` bytes after it.
#[inline(always)]
fn write_outer_v6(
    ctx: &XdpContext,
    out: &Outgoing,
    cfg: &LbConfig,
    backend: &Backend,
    proto: u8,
    payload: u16,
) -> bool {
    let Some(h) = packet::header::<[u8; IPV6_HDR_LEN]>(ctx, out.l2.len()) else {
        return false;
    };
    let label = entropy(out.flow) & 0x000f_ffff;
    let len = payload.to_be_bytes();
    let tc = out.tos;
    h[0] = 0x60 | (tc >> 4);
    h[1] = (tc << 4) | ((label >> 16) as u8 & 0x0f);
    h[2] = (label >> 8) as u8;
    h[3] = label as u8;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = proto;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(&cfg.outer_src_v6);
    h[24..40].copy_from_slice(&backend.addr);
    true
}
