//! Backend choice for a flow without a connection entry: the flow hash picks
//! a slot on the VIP's live Maglev ring, which names a backend.

use lb_common::{
    FlowKey, Reason,
    flow::{flow_hash, maglev_slot, ring_index},
    maps::{Backend, NO_BACKEND, VIP_F_AFFINITY, VipMeta, backend_serves},
};

use crate::maps::{BACKENDS, RINGS};

/// A backend chosen for a packet, with its map entry.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub id: u32,
    pub backend: Backend,
}

/// The backend behind `id`, if it may take a packet of VIP `vip_id`
/// (`lb_common::maps::backend_serves`).
#[inline(always)]
pub fn backend_of_vip(id: u32, vip_id: u32) -> Result<Chosen, Reason> {
    let backend = match BACKENDS.get(id) {
        Some(b) => *b,
        None => return Err(Reason::DropNoBackend),
    };
    backend_serves(&backend, vip_id)?;
    Ok(Chosen { id, backend })
}

/// The slot of the VIP's rings the flow hashes to.
#[inline(always)]
pub fn slot_of(flow: &FlowKey, vip: &VipMeta, ring_size: u32) -> u32 {
    maglev_slot(flow_hash(flow, vip.flags & VIP_F_AFFINITY != 0), ring_size)
}

/// Look the flow up on the VIP's live ring. The slot's backend must serve
/// this VIP: a ring that outlived its backends' ids (recycled to another
/// VIP) must not send this VIP's flow to another VIP's backend.
#[inline(always)]
pub fn pick(flow: &FlowKey, vip: &VipMeta, ring_size: u32) -> Result<Chosen, Reason> {
    pick_at(slot_of(flow, vip, ring_size), vip, ring_size)
}

/// `pick` for a flow whose slot (`slot_of`) is known already.
#[inline(always)]
pub fn pick_at(slot: u32, vip: &VipMeta, ring_size: u32) -> Result<Chosen, Reason> {
    let index = ring_index(vip.vip_id, vip.active_ring, slot, ring_size);
    let id = match RINGS.get(index) {
        Some(id) => *id,
        None => return Err(Reason::DropNoBackend),
    };
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    backend_of_vip(id, vip.vip_id)
}
