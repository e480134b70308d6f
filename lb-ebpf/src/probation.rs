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

use lb_common::{Reason, maps::ConnEntry};

use crate::{
    conntrack::{self, Packet, Selected},
    maps::PROBATION,
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
        if !pkt.syn_only {
            enter(pkt, chosen.id);
        }
        return Ok(Selected {
            chosen,
            new_flow: conntrack::new_flow(pkt),
        });
    };
    if pkt.syn_only {
        // A SYN starts a new connection on this 5-tuple: the old flow's
        // unconfirmed choice goes, and the SYN and its ACK both take the
        // ring's (never a draining backend's).
        let _ = PROBATION.remove(pkt.flow);
        stats::event(Reason::ConnMiss);
        let chosen = conntrack::from_ring(pkt)?;
        return Ok(Selected {
            chosen,
            new_flow: conntrack::new_flow(pkt),
        });
    }
    // The second packet: the flow is promoted, on the backend its first
    // packet went to if that one still serves the VIP.
    let (chosen, new_flow) = match conntrack::pinned_backend(&entry, pkt.vip.vip_id) {
        Ok(chosen) => (chosen, false),
        Err(_) => {
            stats::event(Reason::ConnRescheduled);
            let chosen = conntrack::from_ring(pkt)?;
            (chosen, conntrack::new_flow(pkt))
        }
    };
    conntrack::insert(pkt, chosen.id);
    let _ = PROBATION.remove(pkt.flow);
    stats::event(Reason::ConnPromoted);
    Ok(Selected { chosen, new_flow })
}

/// Put the flow on probation, pinned to `backend_id`. A full table evicts
/// its least recently used entry.
#[inline(always)]
fn enter(pkt: &Packet, backend_id: u32) {
    let entry = ConnEntry {
        backend_id,
        vip_id: pkt.vip.vip_id,
        last_seen_ns: pkt.now,
    };
    let _ = PROBATION.insert(pkt.flow, &entry, 0);
    stats::event(Reason::ConnProbation);
}
