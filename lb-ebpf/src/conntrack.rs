//! The connection table: an established flow stays on its backend whatever
//! the rings do, unless that backend is down or removed, or the entry is
//! stale: made for another VIP, or naming a backend id that has since been
//! given to another VIP (ids are recycled).
//!
//! A TCP SYN is not entered: the flow is entered by the first packet after
//! it (the handshake's ACK). Spoofed SYNs from a flood therefore never
//! occupy the LRU and cannot evict real clients' connections; the SYN and
//! its ACK pick the same backend from the ring unless the ring changed in
//! the round trip between them.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    FlowKey, Reason,
    flow::PROTO_TCP,
    maps::{BACKEND_F_DRAINING, ConnEntry, VipMeta, entry_pins},
};

use crate::{
    maglev::{self, Chosen},
    maps::{BACKENDS, CONNS},
    parse::{TCP_FLAG_ACK, TCP_FLAG_SYN},
    stats,
};

/// Refresh an entry's timestamp at most this often, to spare cache lines.
const REFRESH_NS: u64 = 1_000_000_000;

pub struct Selected {
    pub chosen: Chosen,
    pub new_flow: bool,
}

/// The backend `entry` pins its flow to, if the entry still holds for VIP
/// `vip_id` (`lb_common::maps::entry_pins`); otherwise the flow is
/// rescheduled.
#[inline(always)]
pub fn pinned_backend(entry: &ConnEntry, vip_id: u32) -> Result<Chosen, Reason> {
    let backend = match BACKENDS.get(entry.backend_id) {
        Some(b) => *b,
        None => return Err(Reason::DropNoBackend),
    };
    entry_pins(entry, vip_id, &backend)?;
    Ok(Chosen {
        id: entry.backend_id,
        backend,
    })
}

#[inline(always)]
pub fn select(
    flow: &FlowKey,
    tcp_flags: u8,
    vip: &VipMeta,
    ring_size: u32,
) -> Result<Selected, Reason> {
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let is_tcp = flow.proto == PROTO_TCP;
    let syn_only = is_tcp && tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if let Some(entry) = CONNS.get_ptr_mut(flow) {
        // SAFETY: a map value pointer, valid for this program run.
        let entry = unsafe { &mut *entry };
        match pinned_backend(entry, vip.vip_id) {
            // A SYN on the 5-tuple of an old connection is a new connection:
            // it must not follow the old one to a draining backend. The
            // entry goes, so the handshake's ACK picks from the ring too.
            Ok(c) if syn_only && c.backend.flags & BACKEND_F_DRAINING != 0 => {
                let _ = CONNS.remove(flow);
            }
            Ok(chosen) => {
                stats::event(Reason::ConnHit);
                if now.wrapping_sub(entry.last_seen_ns) > REFRESH_NS {
                    entry.last_seen_ns = now;
                }
                return Ok(Selected {
                    chosen,
                    new_flow: false,
                });
            }
            Err(_) => {}
        }
        stats::event(Reason::ConnRescheduled);
    } else {
        stats::event(Reason::ConnMiss);
    }
    let chosen = maglev::pick(flow, vip, ring_size)?;
    if syn_only {
        stats::event(Reason::SynNotTracked);
    } else {
        let entry = ConnEntry {
            backend_id: chosen.id,
            vip_id: vip.vip_id,
            last_seen_ns: now,
        };
        // A full table evicts its least recently used entry; a failed insert
        // only costs this flow its pinning, so the packet is still sent.
        let _ = CONNS.insert(flow, &entry, 0);
    }
    let new_flow = syn_only || !is_tcp;
    if new_flow {
        stats::event(Reason::NewFlow);
    }
    Ok(Selected { chosen, new_flow })
}
