//! Asking the kernel's routing table and neighbour cache for a next hop
//! (`bpf_fib_lookup`), in the per-CPU scratch block: for the load
//! balancer's backends (`forward.rs`) and a backend's second hops
//! (`second_hop.rs`).

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibLookup, helpers::bpf_fib_lookup, programs::XdpContext,
};
use lb_common::flow::FAMILY_V4;

use crate::{maps::SCRATCH, mem};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Look up the route from `src` to `dst` (addresses of `family`, IPv4 in
/// their first four bytes) for a packet of `tot_len` bytes arriving on
/// this frame's interface. The kernel's answer code, and the parameter
/// block it filled in (MACs, egress interface, the MTU over `tot_len`);
/// `None` without scratch memory.
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    family: u8,
    src: &[u8],
    dst: &[u8],
    tot_len: u16,
) -> Option<(u32, &'static mut FibLookup)> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, ours for this run; all-zero is valid.
    let fib = unsafe { &mut *core::ptr::addr_of_mut!((*scratch).fib) };
    mem::zero(fib);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = tot_len;
    if family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(first4(src));
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(first4(dst));
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(src);
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: `fib` is a valid, fully initialised parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibLookup,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    Some((rc as u32, fib))
}

/// Whether the FIB's next hop is `addr` itself (of `family`). For a route
/// through a router `bpf_fib_lookup` replaces the destination with the
/// router's address (an IPv6 one, family and all, for an IPv4 route via
/// IPv6), on success and when only the neighbour is missing alike.
#[inline(always)]
pub fn next_hop_is(fib: &FibLookup, family: u8, addr: &[u8; 16]) -> bool {
    // SAFETY: plain integers in unions the kernel wrote per `family`.
    unsafe {
        if family == FAMILY_V4 {
            fib.family == AF_INET
                && fib.__bindgen_anon_4.ipv4_dst == u32::from_ne_bytes(first4(addr))
        } else {
            fib.family == AF_INET6 && fib.__bindgen_anon_4.ipv6_dst == words(addr)
        }
    }
}

/// The MTU of the route, after a lookup said the packet exceeds it (the
/// kernel writes it over `tot_len`); 0 if unknown.
#[inline(always)]
pub fn route_mtu() -> u32 {
    match SCRATCH.get_ptr(0) {
        // SAFETY: a per-CPU map value; the union's fields are all plain
        // integers.
        Some(scratch) => unsafe { (*scratch).fib.__bindgen_anon_1.mtu_result as u32 },
        None => 0,
    }
}

#[inline(always)]
fn first4(a: &[u8]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn words(a: &[u8]) -> [u32; 4] {
    [
        u32::from_ne_bytes(first4(&a[0..4])),
        u32::from_ne_bytes(first4(&a[4..8])),
        u32::from_ne_bytes(first4(&a[8..12])),
        u32::from_ne_bytes(first4(&a[12..16])),
    ]
}
