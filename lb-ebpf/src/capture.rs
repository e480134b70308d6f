//! `lbctl capture`: a record of a packet and its final verdict, emitted
//! after `stats::verdict` when capture is on (`lb_common::capture`).
//!
//! Off, a packet pays one array lookup (inlined by the verifier) and one
//! branch. On, the program also enforces the capture's bounds itself (the
//! deadline, the budget, sampling), so capture ends even if lbd is gone.
//! Recording never changes the packet or its verdict; a record the ring
//! buffer has no room for is counted as `capture_lost`.
//!
//! A ring buffer rather than a perf buffer: one ordered stream from all
//! CPUs that one reader drains, and a fixed-size record reserved in place,
//! with the frame's first bytes copied into it by `bpf_xdp_load_bytes`.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, RingBuf},
    programs::XdpContext,
};
use lb_common::{
    FlowKey, Reason,
    capture::{CAPTURE_RING_BYTES, CAPTURE_SNAP_LEN, CAPTURE_VIP, CaptureConfig, CaptureRecord},
};

use crate::{maps::SCRATCH, packet, stats};

#[map(name = "CAPTURE")]
static CAPTURE: Array<CaptureConfig> = Array::with_max_entries(1, 0);

#[map(name = "CAPTURE_RING")]
static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// Record the packet with its verdict, if capture is on and wants it.
#[inline(always)]
pub fn packet(ctx: &XdpContext, reason: Reason, action: u32) {
    let Some(cfg) = CAPTURE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one value; lbd may write it meanwhile, and any
    // value it holds is a valid configuration.
    let cfg = unsafe { &mut *cfg };
    if cfg.on != 0 {
        capture_on(ctx, cfg, reason, action);
    }
}

#[inline(always)]
fn capture_on(ctx: &XdpContext, cfg: &mut CaptureConfig, reason: Reason, action: u32) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > cfg.until_ns {
        cfg.on = 0;
        return;
    }
    if cfg.emitted >= cfg.budget {
        cfg.on = 0;
        return;
    }
    if cfg.filter == CAPTURE_VIP && !for_vip(cfg, reason) {
        return;
    }
    if !sampled(cfg.sample) {
        return;
    }
    // Not atomic (the BPF target has no atomic add in Rust): CPUs racing
    // here may lose an increment, so the budget is a bound on the order of
    // itself, not an exact count; lbd stops at the exact count.
    cfg.emitted += 1;
    emit(ctx, now, reason, action);
}

/// Whether this packet's parsed flow is for the filter's VIP. Packets that
/// did not parse as far as a flow have none to match.
#[inline(always)]
fn for_vip(cfg: &CaptureConfig, reason: Reason) -> bool {
    if !has_flow(reason) {
        return false;
    }
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch, parsed by this very program run.
    let flow: &FlowKey = unsafe { &(*scratch).parsed.flow };
    flow.proto == cfg.proto
        && flow.family == cfg.family
        && (cfg.port == 0 || flow.dport == cfg.port)
        && flow.dst == cfg.addr
}

/// Whether `parse` got as far as this packet's flow: every reason but the
/// ones parsing (or the missing configuration before it) returns.
#[inline(always)]
fn has_flow(reason: Reason) -> bool {
    !matches!(
        reason,
        Reason::PassNotConfigured
            | Reason::PassShortFrame
            | Reason::PassNotIp
            | Reason::PassBadIpHeader
            | Reason::PassIpv6ExtHeaders
            | Reason::PassBadL4Header
    )
}

/// One matching packet in `every`, counted per CPU.
#[inline(always)]
fn sampled(every: u32) -> bool {
    if every <= 1 {
        return true;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch, ours for this program run.
    let seen = unsafe { &mut (*scratch).capture_seen };
    *seen += 1;
    if *seen >= every {
        *seen = 0;
        true
    } else {
        false
    }
}

#[inline(always)]
fn emit(ctx: &XdpContext, now: u64, reason: Reason, action: u32) {
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        stats::event(Reason::CaptureLost);
        return;
    };
    let frame_len = packet::len(ctx);
    let snap = frame_len.min(CAPTURE_SNAP_LEN) as u32;
    // `snap` again, in a form whose range the verifier sees as 1 to the
    // snap length whatever the compiler makes of the tests around it.
    let copy_len = (snap.wrapping_sub(1) & (CAPTURE_SNAP_LEN as u32 - 1)) + 1;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved, writable entry; `snap` is at most
    // the size of `data` and of the frame.
    unsafe {
        (*record).ts_ns = now;
        (*record).ifindex = ctx.ingress_ifindex() as u32;
        (*record).action = action;
        (*record).reason = reason as u32;
        (*record).frame_len = frame_len as u32;
        (*record)._pad = 0;
        let copied = snap > 0
            && bpf_xdp_load_bytes(ctx.ctx, 0, (*record).data.as_mut_ptr() as *mut _, copy_len) == 0;
        (*record).captured_len = if copied { snap } else { 0 };
    }
    entry.submit(0);
}
