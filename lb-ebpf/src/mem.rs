//! Filling and copying memory a word at a time.
//!
//! For the BPF target LLVM turns a large zeroing or a copy of unknown
//! alignment into a call to `memset`/`memmove`, which compiler_builtins
//! implements one byte per loop turn: zeroing the 40-byte flow key and
//! copying two IPv6 addresses cost some 500 instructions per packet, the
//! FIB parameter block another 300. Volatile word stores keep LLVM from
//! folding these back into those calls.

use lb_common::FlowKey;

use core::{
    mem::{align_of, size_of},
    ptr::write_volatile,
};

/// Zero `*dst` with 4-byte stores.
#[inline(always)]
pub fn zero<T>(dst: &mut T) {
    const {
        assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4));
    }
    let words = dst as *mut T as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: in bounds of `*dst`, and 4-aligned (asserted above).
        unsafe { write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// Copy an address into a field that starts 4-aligned (the address
/// fields of `FlowKey`: the struct is 4-aligned, they sit at 0 and 16).
/// `src` may be anywhere, packet data included.
#[inline(always)]
pub fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    debug_assert!((dst.as_ptr() as usize).is_multiple_of(4));
    let words = dst.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < 4 {
        let w = u32::from_ne_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
        // SAFETY: in bounds, and 4-aligned by this function's contract.
        unsafe { write_volatile(words.add(i), w) };
        i += 1;
    }
}

/// A flow key's destination address as four native-endian words, read a
/// word at a time (`lb_common::maps::addr_words` builds them from bytes;
/// LLVM would read those a byte at a time).
#[inline(always)]
pub fn dst_words(flow: &FlowKey) -> [u32; 4] {
    // SAFETY: one of `FlowKey`'s addresses, 4-aligned (asserted below).
    unsafe { addr_words_of(&flow.dst) }
}

/// The same of the source address.
#[inline(always)]
pub fn src_words(flow: &FlowKey) -> [u32; 4] {
    // SAFETY: as in `dst_words`.
    unsafe { addr_words_of(&flow.src) }
}

// `FlowKey` is 4-aligned and its addresses start at multiples of 4.
const _: () = {
    assert!(core::mem::align_of::<FlowKey>() >= 4);
    assert!(core::mem::offset_of!(FlowKey, src) % 4 == 0);
    assert!(core::mem::offset_of!(FlowKey, dst) % 4 == 0);
};

/// # Safety
/// `addr` must be 4-aligned.
#[inline(always)]
unsafe fn addr_words_of(addr: &[u8; 16]) -> [u32; 4] {
    let words = addr.as_ptr() as *const u32;
    // SAFETY: in bounds, and 4-aligned by the caller's promise.
    unsafe { [*words, *words.add(1), *words.add(2), *words.add(3)] }
}
