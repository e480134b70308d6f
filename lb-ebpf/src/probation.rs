//! The probation table: where a flow waits, after its first packet, to show
//! it is real before it may take a place in the connection table.
//!
//! A spoofed packet from a random source is the only packet of its flow. If
//! it entered `CONNS` at once, a flood of them (ACKs, UDP) would push the
//! least recently used real connections out, and a connection that then
//! misses is rescheduled by a ring that may have changed since it started.
//! So the first non-SYN packet of an unknown flow goes to the small LRU
//! `PROBATION` (pinned to its backend there too), and the second moves it
//! into `CONNS`. A flood of one-packet flows then churns only `PROBATION`.
//! A flow evicted from probation before its second packet loses nothing it
//! had: it is balanced by the ring, as every packet of it so far was.
//!
//! A spoofer who sends two packets per 5-tuple does get promoted, so
//! promotions are also rate-limited per CPU (`PROMOTION_LIMIT`): whatever
//! the flood's packet rate, it replaces `CONNS` entries no faster than the
//! limit, and a flow that speaks at least once in that time keeps its
//! entry. A promotion without credit is deferred: the flow stays on
//! probation, pinned there, and its next packet tries again.

use lb_common::{
    Reason,
    maps::{ConnEntry, NO_BACKEND},
};

use crate::{
    conntrack::{self, Packet, Selected},
    maps::{PROBATION, PROMOTION_BUCKET, PROMOTION_LIMIT},
    rate,
    second_chance::{self, Placement},
    stats,
};

/// The backend for a packet whose flow has no `CONNS` entry.
#[inline(always)]
pub fn select(pkt: &Packet) -> Result<Selected, Reason> {
    // SAFETY: copied out at once.
    let waiting = unsafe { PROBATION.get(pkt.flow) }.copied();
    let Some(entry) = waiting else {
        stats::event(Reason::ConnMiss);
        let chosen = conntrack::from_ring(pkt)?;
        // A flow on a slot that moved recently is not entered: this node
        // cannot tell which of the slot's two backends has it, so every
        // packet of it takes the same path until the slot's window closes.
        let placement = second_chance::placement(pkt, &chosen);
        if !pkt.syn_only && placement == Placement::Settled {
            enter(pkt, chosen.id);
        } else if pkt.syn_only {
            enter_syn_on_moved_slot(pkt, chosen.id, &chosen);
        }
        return Ok(Selected {
            chosen,
            new_flow: conntrack::new_flow(pkt),
            second_hop: placement.hop(),
        });
    };
    if pkt.syn_only {
        // A SYN starts a new connection on this 5-tuple: the old flow's
        // unconfirmed choice goes, and the SYN and its ACK both take the
        // ring's (never a draining backend's).
        let _ = PROBATION.remove(pkt.flow);
        stats::event(Reason::ConnMiss);
        let chosen = conntrack::from_ring(pkt)?;
        enter_syn_on_moved_slot(pkt, chosen.id, &chosen);
        return Ok(Selected {
            chosen,
            new_flow: conntrack::new_flow(pkt),
            second_hop: NO_BACKEND,
        });
    }
    // The second packet (or a later one, if the promotion was deferred):
    // it goes to the backend the first went to if that one still serves
    // the VIP.
    let (chosen, new_flow, moved) = match conntrack::pinned_backend(&entry, pkt.vip.vip_id) {
        Ok(chosen) => (chosen, false, false),
        Err(_) => {
            stats::event(Reason::ConnRescheduled);
            let chosen = conntrack::from_ring(pkt)?;
            (chosen, conntrack::new_flow(pkt), true)
        }
    };
    if !promotion_allowed(pkt.now) {
        stats::event(Reason::ConnPromotionDeferred);
        if moved {
            // The probation pin follows the flow to its new backend.
            let _ = PROBATION.insert(pkt.flow, &pin(pkt, chosen.id, entry.last_seen_ns), 0);
        }
        return Ok(Selected {
            chosen,
            new_flow,
            second_hop: NO_BACKEND,
        });
    }
    conntrack::insert(pkt, chosen.id);
    let _ = PROBATION.remove(pkt.flow);
    stats::event(Reason::ConnPromoted);
    Ok(Selected {
        chosen,
        new_flow,
        second_hop: NO_BACKEND,
    })
}

/// A SYN on a slot that moved recently opens its connection on the owner
/// now, which this node sees; so it is pinned there on probation, and its
/// handshake's ACK is promoted like any second packet. Left out, the
/// connection's packets would all miss both tables and travel with a hop
/// until the slot's window closed, and a further move of the slot within
/// it would send them to backends that never had the connection.
/// Elsewhere a SYN enters nothing (the SYN-flood guard); here a flood of
/// them churns only the probation table.
#[inline(always)]
pub fn enter_syn_on_moved_slot(pkt: &Packet, backend_id: u32, chosen: &crate::maglev::Chosen) {
    if second_chance::previous_owner(pkt, chosen).is_some() {
        enter(pkt, backend_id);
    }
}

/// Whether this CPU may promote one more flow now. No limit written: yes.
#[inline(always)]
fn promotion_allowed(now: u64) -> bool {
    let (Some(limit), Some(bucket)) = (PROMOTION_LIMIT.get(0), PROMOTION_BUCKET.get_ptr_mut(0))
    else {
        return true;
    };
    if limit.interval_ns == 0 {
        return true;
    }
    // SAFETY: a per-CPU map value, ours for this program run.
    let bucket = unsafe { &mut *bucket };
    rate::take(bucket, limit.interval_ns, limit.burst_ns, now)
}

/// A probation entry pinning the flow to `backend_id`.
#[inline(always)]
fn pin(pkt: &Packet, backend_id: u32, since_ns: u64) -> ConnEntry {
    ConnEntry {
        backend_id,
        vip_id: pkt.vip.vip_id,
        last_seen_ns: since_ns,
    }
}

/// Put the flow on probation, pinned to `backend_id`. A full table evicts
/// its least recently used entry.
#[inline(always)]
fn enter(pkt: &Packet, backend_id: u32) {
    let _ = PROBATION.insert(pkt.flow, &pin(pkt, backend_id, pkt.now), 0);
    stats::event(Reason::ConnProbation);
}
