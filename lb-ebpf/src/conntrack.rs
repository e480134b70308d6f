//! The connection table: an established flow stays on its backend whatever
//! the rings do, unless that backend is down or removed, or the entry is
//! stale: made for another VIP, or naming a backend id that has since been
//! given to another VIP (ids are recycled).
//!
//! A flow earns its place in `CONNS` with two packets. A TCP SYN is not
//! entered at all; the first other packet of an unknown flow (the
//! handshake's ACK, a first UDP datagram) is entered in the small
//! `PROBATION` table instead, and its second packet moves it into `CONNS`
//! (`probation.rs`). Spoofed one-packet flows, SYNs or not, therefore churn
//! only the probation table and cannot evict real clients' connections.
//! The hit path (`CONNS` has the flow) is the same lookup as without
//! probation.
//!
//! Each entry made counts a flow opened for its backend, and the first
//! FIN or RST of a TCP flow marks its entry closed (`CONN_CLOSED`, kept
//! in the entry's timestamp) and counts a flow closed (`BACKEND_FLOWS`);
//! a SYN on a closed entry opens it anew. The entry itself stays until
//! the LRU evicts it, so a closing flow's last packets still reach its
//! backend.

use core::cell::Cell;

use lb_common::{
    FlowKey, Reason,
    flow::PROTO_TCP,
    maps::{BACKEND_F_DRAINING, CONN_CLOSED, ConnEntry, NO_BACKEND, VipMeta, entry_pins},
};

use crate::{
    clock,
    maglev::{self, Chosen},
    maps::{BACKENDS, CONNS},
    parse::{TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    probation, stats,
};

/// Refresh an entry's timestamp at most this often, to spare cache lines.
const REFRESH_NS: u64 = 1_000_000_000;

pub struct Selected {
    pub chosen: Chosen,
    pub new_flow: bool,
    /// The backend id the packet takes along as a second hop
    /// (`second_chance.rs`); `NO_BACKEND` for none, the steady state.
    pub second_hop: u32,
}

/// What `select` knows about the packet, passed on to the miss path.
pub struct Packet<'a> {
    pub flow: &'a FlowKey,
    pub vip: &'a VipMeta,
    pub ring_size: u32,
    pub now: u64,
    /// A TCP SYN without ACK: opens a connection, never enters a table.
    pub syn_only: bool,
    pub is_tcp: bool,
    /// Not a fragment: it has its ports, and no later fragment follows it.
    pub whole: bool,
    /// The flow's ring slot once hashed (`SLOT_UNKNOWN` before): `slot`.
    pub slot: Cell<u32>,
}

/// `Packet::slot` not hashed yet; no ring has this many slots.
pub const SLOT_UNKNOWN: u32 = u32::MAX;

impl<'a> Packet<'a> {
    /// What the tables and the ring need to know of a parsed packet.
    #[inline(always)]
    pub fn new(
        flow: &'a FlowKey,
        tcp_flags: u8,
        whole: bool,
        vip: &'a VipMeta,
        ring_size: u32,
    ) -> Self {
        let is_tcp = flow.proto == PROTO_TCP;
        Self {
            flow,
            vip,
            ring_size,
            now: clock::coarse_ns(),
            syn_only: is_tcp && tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
            is_tcp,
            whole,
            slot: Cell::new(SLOT_UNKNOWN),
        }
    }

    /// The flow's slot on the VIP's rings, hashed at most once per packet:
    /// the ring's owner and the slot's previous owner are both read there,
    /// and the hash costs as much as either read. A table hit never needs it.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        let known = self.slot.get();
        if known != SLOT_UNKNOWN {
            return known;
        }
        let slot = maglev::slot_of(self.flow, self.vip, self.ring_size);
        self.slot.set(slot);
        slot
    }
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

/// Whether a SYN must not follow `chosen`: it starts a new connection on
/// the 5-tuple of an old one, which must not go to a draining backend.
#[inline(always)]
fn syn_leaves(pkt: &Packet, chosen: &Chosen) -> bool {
    pkt.syn_only && chosen.backend.flags & BACKEND_F_DRAINING != 0
}

/// The backend for a packet of a VIP that keeps state (`tcp_flags` are
/// the packet's, for the close mark): its connection entry's, else its
/// probation entry's, else the ring's.
#[inline(always)]
pub fn select(pkt: &Packet, tcp_flags: u8) -> Result<Selected, Reason> {
    let Some(entry) = CONNS.get_ptr_mut(pkt.flow) else {
        return probation::select(pkt);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let entry = unsafe { &mut *entry };
    match pinned_backend(entry, pkt.vip.vip_id) {
        // The entry goes, so the handshake's ACK picks from the ring too.
        Ok(c) if syn_leaves(pkt, &c) => {
            let _ = CONNS.remove(pkt.flow);
        }
        Ok(chosen) => {
            stats::event(Reason::ConnHit);
            touch(entry, pkt, tcp_flags);
            return Ok(Selected {
                chosen,
                new_flow: false,
                second_hop: NO_BACKEND,
            });
        }
        Err(_) => {}
    }
    stats::event(Reason::ConnRescheduled);
    // The flow had earned its entry: it is moved, not put on probation.
    let chosen = from_ring(pkt)?;
    if !pkt.syn_only {
        insert(pkt, chosen.id);
    } else {
        probation::enter_syn_on_moved_slot(pkt, chosen.id, &chosen);
    }
    Ok(Selected {
        chosen,
        new_flow: new_flow(pkt),
        second_hop: NO_BACKEND,
    })
}

/// Keep a hit entry's timestamp current (at most once a second) and its
/// close mark true: set by the flow's first FIN or RST, cleared by a SYN
/// that opens the 5-tuple anew. Each change of the mark is counted once
/// per entry; two CPUs marking it at once count twice, which lbd's next
/// walk of the table corrects.
#[inline(always)]
fn touch(entry: &mut ConnEntry, pkt: &Packet, tcp_flags: u8) {
    let last = entry.last_seen_ns;
    if tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST | TCP_FLAG_SYN) != 0 {
        let closed = last & CONN_CLOSED != 0;
        if pkt.syn_only && closed {
            entry.last_seen_ns = pkt.now;
            stats::flow_opened(entry.backend_id);
            return;
        }
        if tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 && !closed {
            entry.last_seen_ns = pkt.now | CONN_CLOSED;
            stats::flow_closed(entry.backend_id);
            return;
        }
    }
    // Signed: another CPU's clock reading, a tick ahead of this one's, is
    // no reason to write an older time over it.
    let since = (pkt.now as i64).wrapping_sub((last & !CONN_CLOSED) as i64);
    if since > REFRESH_NS as i64 {
        entry.last_seen_ns = pkt.now | (last & CONN_CLOSED);
    }
}

/// The ring's backend for the packet, counting a SYN left out of the tables.
#[inline(always)]
pub fn from_ring(pkt: &Packet) -> Result<Chosen, Reason> {
    let chosen = maglev::pick_at(pkt.slot(), pkt.vip, pkt.ring_size)?;
    if pkt.syn_only {
        stats::event(Reason::SynNotTracked);
    }
    Ok(chosen)
}

/// Whether a packet whose backend came from the ring starts a new flow: a
/// TCP SYN does, and so does any non-TCP packet that had no usable entry.
#[inline(always)]
pub fn new_flow(pkt: &Packet) -> bool {
    let new_flow = pkt.syn_only || !pkt.is_tcp;
    if new_flow {
        stats::event(Reason::NewFlow);
    }
    new_flow
}

/// Enter (or overwrite) the flow in `CONNS`, pinned to `backend_id`, and
/// count it opened there. A full table evicts its least recently used
/// entry; a failed insert only costs this flow its pinning, so the packet
/// is still sent.
#[inline(always)]
pub fn insert(pkt: &Packet, backend_id: u32) {
    let entry = ConnEntry {
        backend_id,
        vip_id: pkt.vip.vip_id,
        last_seen_ns: pkt.now,
    };
    if CONNS.insert(pkt.flow, &entry, 0).is_ok() {
        stats::flow_opened(backend_id);
    }
}
