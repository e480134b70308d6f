//! Second chance, the load balancer's part: a TCP packet of a flow in
//! neither table falls on a ring slot whose owner changed recently. This
//! node cannot tell whether the flow began before the change (it belongs to
//! the slot's previous owner) or after it (to the owner now), so it sends
//! the packet to the owner now with the previous owner attached as a second
//! hop (`gue`); the backend keeps it if it has a socket for the flow and
//! sends it on otherwise (`lb_decap`, `second_hop.rs`). An ICMP too-big
//! about such a flow takes the same hop (`balancer::too_big_target`).
//!
//! lbd keeps each slot's previous owner, with the slot's own expiry, in
//! `PREV_OWNERS` (lb-userspace `second_chance`). The miss path of a TCP
//! packet on a tunnel VIP costs one array lookup; the hit path, SYNs and
//! UDP cost nothing.

use lb_common::maps::{NO_BACKEND, PrevOwner, VIP_F_L2_DSR, coarse_seconds, prev_owner_index};

use crate::{
    conntrack::Packet,
    maglev::{self, Chosen},
    maps::{PREV_OWNERS, gue_port},
};

/// What the ring's choice is worth for a packet of a flow in neither table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// As good as anyone can tell: the packet's slot has no previous owner
    /// in effect (or second chance does not apply to it). The flow may be
    /// entered in a table.
    Settled,
    /// Send the packet with this previous owner as its second hop, and
    /// enter the flow in no table: this node cannot tell which of the two
    /// backends has it.
    SecondHop(u32),
    /// The slot has a previous owner in effect, but the packet cannot take
    /// it along: a first fragment (the backend would have to reassemble
    /// before it could ask for a socket, and the later fragments carry no
    /// ports to follow it by on the backend). It goes plain to the owner
    /// now, as UDP does, and the flow is entered in no table, so that its
    /// next whole packet still gets its second chance.
    Unsettled,
}

impl Placement {
    /// The second hop to take along, or `NO_BACKEND`.
    #[inline(always)]
    pub fn hop(self) -> u32 {
        match self {
            Self::SecondHop(id) => id,
            Self::Settled | Self::Unsettled => NO_BACKEND,
        }
    }
}

/// Whether the packet should take its slot's previous owner along. Only
/// TCP that is not a SYN qualifies (a SYN starts a connection on the
/// owner now; UDP has no socket to ask), on a tunnel VIP, while the slot's
/// own expiry lies ahead, when the previous owner still serves the VIP and
/// has the family of the owner now (the hop is carried in the outer
/// header's family).
#[inline(always)]
pub fn placement(pkt: &Packet, chosen: &Chosen) -> Placement {
    if pkt.syn_only {
        return Placement::Settled;
    }
    let Some(prev) = previous_owner(pkt, chosen) else {
        return Placement::Settled;
    };
    if !pkt.whole {
        return Placement::Unsettled;
    }
    Placement::SecondHop(prev)
}

/// The previous owner of the packet's slot a TCP packet of this VIP would
/// take along, whatever the packet's flags: live, still the VIP's, of the
/// family of `chosen` (the owner now) and not `chosen` itself.
#[inline(always)]
pub fn previous_owner(pkt: &Packet, chosen: &Chosen) -> Option<u32> {
    if !pkt.is_tcp || pkt.vip.flags & VIP_F_L2_DSR != 0 || gue_port() == 0 {
        return None;
    }
    let index = prev_owner_index(pkt.vip.vip_id, pkt.slot(), pkt.ring_size);
    let entry = PREV_OWNERS.get_ptr(index)?;
    // SAFETY: a map value, 8-byte aligned; one load, so owner and expiry
    // come from the same write (lbd stores a slot as one `u64` too).
    let prev = PrevOwner::from_bits(unsafe { (entry as *const u64).read_volatile() });
    if !prev.live_at(coarse_seconds(pkt.now)) || prev.owner == chosen.id {
        return None;
    }
    match maglev::backend_of_vip(prev.owner, pkt.vip.vip_id) {
        Ok(p) if p.backend.family == chosen.backend.family => Some(prev.owner),
        _ => None,
    }
}
