//! The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, in ns) that the
//! connection table's timestamps and the rate limits use, read once per
//! tick on each CPU.
//!
//! The coarse clock only moves when the kernel's tick does, and so does
//! `jiffies`, which the verifier turns into a plain load (no helper call,
//! where `bpf_ktime_get_coarse_ns` is a call and a return on every
//! packet). So each CPU keeps the last reading with the tick it was taken
//! in, and asks the kernel again only once `jiffies` has moved. The kernel
//! moves `jiffies` a moment before the clock: a reading in between that
//! finds the clock where it was is not kept for the new tick, so the next
//! packet asks again. Readings on different CPUs can still differ by about
//! a tick (a few ms), as the coarse clock's own readings do across a tick;
//! whatever compares them allows for it (wrapping or saturating
//! differences, windows of seconds).

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::SCRATCH;

/// A CPU's last reading of the coarse clock.
#[derive(Clone, Copy)]
pub struct TickReading {
    /// `jiffies` when `ns` was read; 0: never read.
    jiffies: u64,
    ns: u64,
}

/// The coarse monotonic time in ns, as of this tick.
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: bpf_jiffies64 has no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: a per-CPU map value, ours for this program run.
    let reading = unsafe { &mut (*scratch).clock };
    if reading.jiffies != jiffies || reading.ns == 0 {
        // SAFETY: no preconditions.
        let ns = unsafe { bpf_ktime_get_coarse_ns() };
        if ns != reading.ns {
            reading.jiffies = jiffies;
        }
        reading.ns = ns;
    }
    reading.ns
}
