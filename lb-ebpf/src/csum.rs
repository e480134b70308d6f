//! Internet checksums (RFC 1071): the IPv4 header's, and sums over a run of
//! packet bytes whose length is known only at run time (the quote of an
//! ICMP error), made of `bpf_csum_diff` calls of fixed sizes so that the
//! verifier can bound every read.
//!
//! A sum is a 32-bit one's-complement partial sum of 16-bit words taken in
//! memory order (what `bpf_csum_diff` returns); `finish` folds it into the
//! checksum, to be stored with `to_ne_bytes`. One's-complement sums do not
//! depend on byte order (RFC 1071 section 2), so no word is swapped.

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};

use crate::packet;

const IPV4_HDR_LEN: usize = 20;
/// Most bytes one `bpf_csum_diff` call reads (the kernel's limit).
const CSUM_DIFF_MAX: usize = 512;
/// Longest run `add_packet` sums: an ICMPv6 error, at most 1280 bytes.
pub const MAX_RUN: usize = 1280;

/// RFC 1071 checksum of a 20-byte IPv4 header whose checksum field is zero,
/// as a big-endian value.
#[inline(always)]
pub fn ipv4_header(h: &[u8; IPV4_HDR_LEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_HDR_LEN {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// `sum + word` with the carry wrapped around.
#[inline(always)]
pub fn add(sum: u32, word: u32) -> u32 {
    let (s, carry) = sum.overflowing_add(word);
    s + carry as u32
}

/// The checksum field's bytes for a sum (store with `to_ne_bytes`).
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// `sum` plus the `len` packet bytes at `offset` (an odd last byte counts
/// as a word with a zero byte after it). `None` if they are not all in the
/// packet or `len` exceeds `MAX_RUN`.
#[inline(always)]
pub fn add_packet(ctx: &XdpContext, offset: usize, len: usize, sum: u32) -> Option<u32> {
    if len > MAX_RUN {
        return None;
    }
    let mut off = offset;
    let mut rest = len;
    let mut sum = sum;
    let mut i = 0;
    while i < MAX_RUN / CSUM_DIFF_MAX && rest >= CSUM_DIFF_MAX {
        sum = chunk::<CSUM_DIFF_MAX>(ctx, off, sum)?;
        off += CSUM_DIFF_MAX;
        rest -= CSUM_DIFF_MAX;
        i += 1;
    }
    // The rest, below 512 bytes since `len <= MAX_RUN`: one fixed-size
    // call per bit of its length.
    if rest & 256 != 0 {
        sum = chunk::<256>(ctx, off, sum)?;
        off += 256;
    }
    if rest & 128 != 0 {
        sum = chunk::<128>(ctx, off, sum)?;
        off += 128;
    }
    if rest & 64 != 0 {
        sum = chunk::<64>(ctx, off, sum)?;
        off += 64;
    }
    if rest & 32 != 0 {
        sum = chunk::<32>(ctx, off, sum)?;
        off += 32;
    }
    if rest & 16 != 0 {
        sum = chunk::<16>(ctx, off, sum)?;
        off += 16;
    }
    if rest & 8 != 0 {
        sum = chunk::<8>(ctx, off, sum)?;
        off += 8;
    }
    if rest & 4 != 0 {
        sum = chunk::<4>(ctx, off, sum)?;
        off += 4;
    }
    if rest & 2 != 0 {
        let w: [u8; 2] = read(ctx, off)?;
        sum = add(sum, u16::from_ne_bytes(w) as u32);
        off += 2;
    }
    if rest & 1 != 0 {
        let [b]: [u8; 1] = read(ctx, off)?;
        sum = add(sum, u16::from_ne_bytes([b, 0]) as u32);
    }
    Some(sum)
}

/// `sum` plus the `N` packet bytes at `off` (`N` a multiple of 4, at most
/// 512: what `bpf_csum_diff` accepts).
#[inline(always)]
fn chunk<const N: usize>(ctx: &XdpContext, off: usize, sum: u32) -> Option<u32> {
    let p = packet::quote_ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: `p` points at N bytes inside the packet (checked above); the
    // helper only reads them. No "from" buffer: a plain sum of "to".
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, sum) };
    if r < 0 { None } else { Some(r as u32) }
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let p = packet::quote_ptr_at::<T>(ctx, off)?;
    // SAFETY: `p` points at size_of::<T>() bytes inside the packet.
    Some(unsafe { core::ptr::read_unaligned(p) })
}
