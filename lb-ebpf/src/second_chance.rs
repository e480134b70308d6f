//! Second chance, the load balancer's part: a TCP packet of a flow in
//! neither table falls on a ring slot whose owner changed recently. This
//! node cannot tell whether the flow began before the change (it belongs to
//! the slot's previous owner) or after it (to the owner now), so it sends
//! the packet to the owner now with the previous owner attached as a second
//! hop (`gue`); the backend keeps it if it has a socket for the flow and
//! sends it on otherwise (`lb_decap`, `second_hop.rs`).
//!
//! lbd keeps each slot's previous owner in `PREV_OWNERS` and the end of
//! the VIP's window in `PREV_OWNERS_UNTIL` (lb-userspace `second_chance`).
//! A VIP outside its window costs the miss path one array lookup; the hit
//! path, SYNs and UDP cost nothing.

use lb_common::maps::{NO_BACKEND, VIP_F_L2_DSR, prev_owner_index};

use crate::{
    conntrack::Packet,
    maglev::{self, Chosen},
    maps::{PREV_OWNERS, PREV_OWNERS_UNTIL, gue_port},
};

/// The previous owner of the packet's ring slot, if the packet should
/// take it along as a second hop; `NO_BACKEND` otherwise. Only a whole TCP
/// packet that is not a SYN qualifies (a SYN starts a connection on the
/// owner now; UDP has no socket to ask; later fragments follow the first
/// without their ports), on a tunnel VIP within its window, when the
/// previous owner still serves the VIP and has the family of the owner
/// now (the hop is carried in the outer header's family).
#[inline(always)]
pub fn previous_owner(pkt: &Packet, chosen: &Chosen) -> u32 {
    if !pkt.is_tcp || pkt.syn_only || !pkt.whole || pkt.vip.flags & VIP_F_L2_DSR != 0 {
        return NO_BACKEND;
    }
    match PREV_OWNERS_UNTIL.get(pkt.vip.vip_id) {
        Some(until) if *until > pkt.now => {}
        _ => return NO_BACKEND,
    }
    if gue_port() == 0 {
        return NO_BACKEND;
    }
    let slot = maglev::slot_of(pkt.flow, pkt.vip, pkt.ring_size);
    let (entry, half) = prev_owner_index(pkt.vip.vip_id, slot, pkt.ring_size);
    let prev = match PREV_OWNERS.get(entry) {
        Some(pair) if half == 0 => pair[0],
        Some(pair) => pair[1],
        None => return NO_BACKEND,
    };
    if prev == NO_BACKEND || prev == chosen.id {
        return NO_BACKEND;
    }
    match maglev::backend_of_vip(prev, pkt.vip.vip_id) {
        Ok(p) if p.backend.family == chosen.backend.family => prev,
        _ => NO_BACKEND,
    }
}
