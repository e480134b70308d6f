//! The load balancer's packet path, start to verdict:
//! parse -> (fragment | ICMP too-big | vip -> conntrack -> maglev) -> forward
//! (with a second hop when `second_chance` says so); a stateless VIP skips
//! conntrack (`stateless`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Reason,
    flow::{PROTO_ICMP, PROTO_ICMPV6},
    maps::{
        CFG_F_LOOKUP_CACHES, LbConfig, NO_BACKEND, PORT_MAC_CACHE_SLOTS, VIP_F_STATELESS, VipMeta,
    },
    stats::ReasonKind,
};

use crate::{
    conntrack::{self, Packet},
    forward, fragment, icmp,
    maglev::{self, Chosen},
    maps::{CONNS, PORT_MAC_CACHE, PROBATION, SCRATCH, TX_PORT_MACS, live_config},
    parse::{self, Fragment, L2, Parsed},
    stateless, stats, vip,
};

/// Where a VIP packet goes.
struct Target {
    vip: VipMeta,
    chosen: Chosen,
    new_flow: bool,
    /// `NO_BACKEND`, or the previous owner to take along (`second_chance`).
    second_hop: u32,
}

#[inline(always)]
pub fn process(ctx: &XdpContext) -> Reason {
    let cfg = match live_config() {
        Some(cfg) if cfg.ring_size != 0 => cfg,
        _ => return Reason::PassNotConfigured,
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Reason::PassNotConfigured;
    };
    // SAFETY: a per-CPU map value, ours for this program run.
    let p = unsafe { &mut (*scratch).parsed };
    if let Err(reason) = parse::parse(ctx, p) {
        return reason;
    }
    let target = match find_target(ctx, p, cfg) {
        Ok(t) => t,
        Err((reason, None)) => return reason,
        Err((reason, Some(vip_id))) => {
            stats::vip_dropped(vip_id);
            return reason;
        }
    };
    if let Fragment::First(id) = p.fragment {
        fragment::remember(p, id, &target.vip, target.chosen.id);
    }
    let out = forward::Outgoing {
        l2: &p.l2,
        flow: &p.flow,
        ip_len: p.ip_len,
        tos: p.tos,
    };
    let reason = if target.second_hop == NO_BACKEND {
        forward::forward(ctx, cfg, target.vip.flags, &target.chosen.backend, &out)
    } else {
        let hop = target.second_hop;
        forward::forward_with_second_hop(ctx, cfg, &target.chosen.backend, hop, &out)
    };
    if reason.kind() == ReasonKind::Forwarded {
        if target.second_hop != NO_BACKEND {
            stats::event(Reason::SecondChance);
        }
        stats::forwarded(
            target.vip.vip_id,
            target.chosen.id,
            p.ip_len,
            target.new_flow,
        );
    } else {
        stats::vip_dropped(target.vip.vip_id);
    }
    reason
}

/// The VIP and backend for a parsed packet; on failure the reason and, when
/// the packet was for a VIP, that VIP's id.
#[inline(always)]
fn find_target(
    ctx: &XdpContext,
    p: &Parsed,
    cfg: &LbConfig,
) -> Result<Target, (Reason, Option<u32>)> {
    if p.fragment != Fragment::None {
        stats::event(Reason::Fragment);
    }
    if let Fragment::Later(id) = p.fragment {
        let (vip, chosen) = fragment::follow(p, id).map_err(|r| (r, None))?;
        return Ok(Target {
            vip,
            chosen,
            new_flow: false,
            second_hop: NO_BACKEND,
        });
    }
    if p.flow.proto == PROTO_ICMP || p.flow.proto == PROTO_ICMPV6 {
        return too_big_target(ctx, p, cfg);
    }
    let vip = vip::lookup(&p.flow, cfg).ok_or((Reason::PassNonVip, None))?;
    if !addressed_here(ctx, cfg, &p.l2) {
        return Err((Reason::PassOtherHost, None));
    }
    let whole = p.fragment == Fragment::None;
    let pkt = Packet::new(&p.flow, p.tcp_flags, whole, &vip, cfg.ring_size);
    let selected = if vip.flags & VIP_F_STATELESS != 0 {
        stateless::select(&pkt)
    } else {
        conntrack::select(&pkt, p.tcp_flags)
    }
    .map_err(|r| (r, Some(vip.vip_id)))?;
    Ok(Target {
        vip,
        chosen: selected.chosen,
        new_flow: selected.new_flow,
        second_hop: selected.second_hop,
    })
}

/// Whether the frame was sent to this host: to the ingress interface's MAC
/// as lbd wrote it in `TX_PORT_MACS`. A switch flooding unknown unicast,
/// or a NIC in promiscuous mode (tcpdump, a bridge port), hands XDP frames
/// meant for other hosts; with several LB nodes on one segment the node
/// they were sent to balances them, and a second copy from here would
/// reach the backend too. A group address is no host's: a reply sent back
/// would carry it as its source. Checked only once the packet is known to
/// be for a VIP, so other traffic pays nothing. `PORT_MAC_CACHE` answers
/// without a hash lookup for the ports lbd cached there, while lbd says the
/// caches hold (`CFG_F_LOOKUP_CACHES`).
#[inline(always)]
fn addressed_here(ctx: &XdpContext, cfg: &LbConfig, l2: &L2) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    if cfg.flags & CFG_F_LOOKUP_CACHES != 0
        && let Some(slot) = PORT_MAC_CACHE.get(ifindex % PORT_MAC_CACHE_SLOTS)
        && slot.ifindex == ifindex
    {
        return slot.mac == l2.dst_mac;
    }
    // SAFETY: copied out at once.
    match unsafe { TX_PORT_MACS.get(&ifindex) } {
        Some(port) => port.mac == l2.dst_mac,
        // An interface lbd did not write (a test run): unicast is ours.
        None => l2.dst_mac[0] & 1 == 0,
    }
}

/// An ICMP too-big goes where its flow goes: the connection entry's
/// backend, else the probation entry's, else the ring's. A flow in no
/// table (a stateless VIP's flows have none) is placed as a stateless
/// VIP's packet is: on a slot that moved within its window it takes the
/// previous owner along as a second hop, since the flow may be that
/// backend's (a drained backend's long stream), and only the backend that
/// sent the too-big reply can use the path MTU it reports. It never
/// creates an entry.
#[inline(always)]
fn too_big_target(
    ctx: &XdpContext,
    p: &Parsed,
    cfg: &LbConfig,
) -> Result<Target, (Reason, Option<u32>)> {
    let flow = match icmp::too_big_flow(ctx, p).map_err(|r| (r, None))? {
        Some(flow) => flow,
        None => return Err((Reason::PassNonVip, None)),
    };
    let vip = vip::lookup(&flow, cfg).ok_or((Reason::PassNonVip, None))?;
    if !addressed_here(ctx, cfg, &p.l2) {
        return Err((Reason::PassOtherHost, None));
    }
    stats::event(Reason::IcmpTooBig);
    let entry = if vip.flags & VIP_F_STATELESS != 0 {
        None
    } else {
        // SAFETY: copied out at once.
        unsafe { CONNS.get(&flow).or_else(|| PROBATION.get(&flow)) }
    };
    let Some(entry) = entry else {
        // Not a SYN (no flags to pass); a first fragment takes no hop.
        let whole = p.fragment == Fragment::None;
        let placed = stateless::select(&Packet::new(&flow, 0, whole, &vip, cfg.ring_size))
            .map_err(|r| (r, Some(vip.vip_id)))?;
        return Ok(Target {
            vip,
            chosen: placed.chosen,
            new_flow: false,
            second_hop: placed.second_hop,
        });
    };
    // A stale entry is rescheduled by the ring, with no hop, as
    // `conntrack::select` reschedules its flow's packets.
    let chosen = match conntrack::pinned_backend(entry, vip.vip_id) {
        Ok(chosen) => chosen,
        Err(_) => maglev::pick(&flow, &vip, cfg.ring_size).map_err(|r| (r, Some(vip.vip_id)))?,
    };
    Ok(Target {
        vip,
        chosen,
        new_flow: false,
        second_hop: NO_BACKEND,
    })
}
