//! Counters: the verdict of every packet, events, and per-VIP/backend traffic.

use aya_ebpf::bindings::xdp_action;
use lb_common::{
    maps::FlowStats,
    stats::{DecapReason, Reason, ReasonKind},
};

use crate::maps::{BACKEND_FLOWS, BACKEND_STATS, DECAP_STATS, GLOBAL_STATS, VIP_STATS};

#[inline(always)]
fn bump(slot: Option<*mut u64>) {
    if let Some(p) = slot {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Count a non-verdict event.
#[inline(always)]
pub fn event(reason: Reason) {
    bump(GLOBAL_STATS.get_ptr_mut(reason as u32));
}

/// Count the packet's verdict and return its XDP action.
#[inline(always)]
pub fn verdict(reason: Reason) -> u32 {
    bump(GLOBAL_STATS.get_ptr_mut(reason as u32));
    match reason.kind() {
        ReasonKind::Forwarded => match reason {
            Reason::Redirect => xdp_action::XDP_REDIRECT,
            _ => xdp_action::XDP_TX,
        },
        ReasonKind::Answered => xdp_action::XDP_TX,
        ReasonKind::Dropped => xdp_action::XDP_DROP,
        ReasonKind::Passed | ReasonKind::Event => xdp_action::XDP_PASS,
    }
}

/// Count the decapsulation program's verdict and return its XDP action.
#[inline(always)]
pub fn decap_verdict(reason: DecapReason) -> u32 {
    bump(DECAP_STATS.get_ptr_mut(reason as u32));
    match reason.kind() {
        ReasonKind::Dropped => xdp_action::XDP_DROP,
        ReasonKind::Forwarded => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn add(stats: Option<*mut FlowStats>, bytes: u64, new_flow: bool) {
    if let Some(s) = stats {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

/// A packet forwarded for a VIP to a backend.
#[inline(always)]
pub fn forwarded(vip_id: u32, backend_id: u32, bytes: u16, new_flow: bool) {
    add(VIP_STATS.get_ptr_mut(vip_id), bytes as u64, new_flow);
    add(
        BACKEND_STATS.get_ptr_mut(backend_id),
        bytes as u64,
        new_flow,
    );
}

/// A packet for a VIP that was dropped.
#[inline(always)]
pub fn vip_dropped(vip_id: u32) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).dropped += 1 };
    }
}

/// A flow entered the connection table for `backend_id`.
#[inline(always)]
pub fn flow_opened(backend_id: u32) {
    if let Some(e) = BACKEND_FLOWS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*e).opened += 1 };
    }
}

/// A flow of `backend_id` in the connection table was seen closing.
#[inline(always)]
pub fn flow_closed(backend_id: u32) {
    if let Some(e) = BACKEND_FLOWS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*e).closed += 1 };
    }
}
