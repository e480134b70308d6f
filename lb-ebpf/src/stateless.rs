//! Stateless VIPs (`VIP_F_STATELESS`): the ring alone places every packet,
//! and this node keeps nothing per flow. A flow whose ring slot moved
//! within the slot's window takes the slot's previous owner along as a
//! second hop (`second_chance.rs`), so the owner now keeps the packet if it
//! has the connection and sends it on otherwise: every node that applied
//! the same ring changes sends a flow the same way, with no table to warm,
//! flush or lose. The price: a flow survives one move of its slot, for the
//! slot's window, instead of for as long as it has an entry.

use lb_common::{Reason, maps::NO_BACKEND};

use crate::{
    conntrack::{Packet, Selected},
    maglev, second_chance, stats,
};

/// The backend (and second hop) for a packet of a stateless VIP. A SYN
/// starts a flow on the owner now; any other packet on a moved slot takes
/// the previous owner along, a first fragment excepted (`Placement`). An
/// ICMP too-big about a flow in no table is placed here too (`tcp_flags`
/// 0), whatever the VIP (`balancer::too_big_target`).
#[inline(always)]
pub fn select(pkt: &Packet) -> Result<Selected, Reason> {
    let chosen = maglev::pick_at(pkt.slot(), pkt.vip, pkt.ring_size)?;
    if pkt.syn_only {
        stats::event(Reason::NewFlow);
        return Ok(Selected {
            chosen,
            new_flow: true,
            second_hop: NO_BACKEND,
        });
    }
    Ok(Selected {
        chosen,
        new_flow: false,
        second_hop: second_chance::placement(pkt, &chosen).hop(),
    })
}
