//! Bounds-checked access to packet bytes: the one place that turns an offset
//! into a pointer, so the verifier sees the same check everywhere.

use aya_ebpf::programs::XdpContext;
use core::mem;

/// Headers we read lie within this many bytes of the frame's start. The
/// bound also tells the verifier that an offset kept in map memory (the
/// per-CPU scratch) cannot overflow the packet pointer.
pub const MAX_HEADER_OFFSET: usize = 512;

/// ICMP errors the program builds (`pmtu.rs`) quote the client's packet up
/// to this many bytes into the frame: an ICMPv6 error is at most 1280 bytes
/// behind an 18-byte tagged Ethernet header.
pub const MAX_QUOTE_END: usize = 1280 + 18;

/// Pointer to a `T` at `offset` bytes into the packet, if it fits.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_below(ctx, offset, MAX_HEADER_OFFSET)
}

/// `ptr_at` for the quoted bytes of an ICMP error, which reach further.
#[inline(always)]
pub fn quote_ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_below(ctx, offset, MAX_QUOTE_END)
}

#[inline(always)]
fn ptr_below<T>(ctx: &XdpContext, offset: usize, limit: usize) -> Option<*mut T> {
    if offset > limit {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The `T` at `offset`, in place, if it fits. Valid until the packet's
/// head or tail moves (`bpf_xdp_adjust_*`). `T` must have alignment 1
/// (network headers are byte arrays), since packet data is unaligned.
#[inline(always)]
pub fn header<'a, T>(ctx: &XdpContext, offset: usize) -> Option<&'a mut T> {
    // SAFETY: ptr_at checked the bounds; the types used are all align(1).
    ptr_at::<T>(ctx, offset).map(|p| unsafe { &mut *p })
}

/// Copy of the `T` at `offset`, if it fits.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes lie inside the packet.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Overwrite the `T` at `offset`; false if it does not fit.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> bool {
    match ptr_at::<T>(ctx, offset) {
        Some(p) => {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_unaligned(p, value) };
            true
        }
        None => false,
    }
}

/// Frame length in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
