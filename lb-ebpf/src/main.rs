//! The XDP programs: `lb`, the load balancer on the LB host's NIC, and
//! `lb_decap`, which strips our tunnel header on a backend. `bench` holds
//! the programs `cargo xtask bench` measures them against.
//!
//! The packet path reads top to bottom through the modules:
//! parse -> vip -> conntrack (-> probation -> second_chance) -> maglev ->
//! forward (encap / gue / l2) -> stats, with icmp and fragment handling
//! branching off after parse, and pmtu answering packets too big for the
//! tunnel; once the verdict is counted, capture records the packet when
//! `lbctl capture` runs. `lb_decap`: decap (-> gue -> second_hop) -> stats.
#![no_std]
#![no_main]
// Map keys and values go to aya-ebpf by reference on purpose: a by-value
// argument is one more copy on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod balancer;
mod bench;
mod capture;
mod clock;
mod conntrack;
mod csum;
mod decap;
mod fib;
mod forward;
mod fragment;
mod gue;
mod icmp;
mod ipv4;
mod maglev;
mod maps;
mod mem;
mod packet;
mod parse;
mod pmtu;
mod probation;
mod rate;
mod second_chance;
mod second_hop;
mod stateless;
mod stats;
mod vip;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// The load balancer. Every packet leaves through `stats::verdict`, which
/// counts the reason and maps it to the XDP action; `capture` sees the
/// verdict last, when nothing about the packet can change any more.
#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let reason = balancer::process(&ctx);
    let action = stats::verdict(reason);
    capture::packet(&ctx, reason, action);
    action
}

/// The backend-side tunnel terminator, which also sends second-chance
/// packets on to their second hop (XDP_TX).
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let reason = decap::process(&ctx);
    stats::decap_verdict(reason)
}

// On the host (clippy, tests) aya-ebpf links std, which brings its own.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
