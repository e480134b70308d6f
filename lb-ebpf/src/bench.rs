//! Bench-only programs (see `lb_common::bench`). They share the object with
//! the balancer so the bench loads exactly what it measures against, but
//! lbd never attaches them.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_get_smp_processor_id, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::bench::{BenchGen, SINK_FRAMES, SINK_SLOTS, SINK_TUNNELLED};

use crate::{
    csum,
    maps::{TX_PORTS, live_config},
    packet,
};

#[map(name = "BENCH_GEN")]
static BENCH_GEN: Array<BenchGen> = Array::with_max_entries(1, 0);

/// Frames generated so far, per CPU.
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(SINK_SLOTS, 0);

const ETH_LEN: usize = 14;
const IP_SRC: usize = ETH_LEN + 12;
const IP_CSUM: usize = ETH_LEN + 10;
const UDP_SPORT: usize = ETH_LEN + 20;
const UDP_CSUM: usize = UDP_SPORT + 6;

/// MAC swap + XDP_TX, the least any XDP forwarder does. `cargo xtask
/// bench` reports the load balancer's cost above this.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    match packet::read::<[u8; 12]>(&ctx, 0) {
        Some(macs) => {
            let mut swapped = [0u8; 12];
            swapped[..6].copy_from_slice(&macs[6..]);
            swapped[6..].copy_from_slice(&macs[..6]);
            packet::write(&ctx, 0, swapped);
            XDP_TX
        }
        None => XDP_PASS,
    }
}

/// Live-frames generator: the next flow's source address and port, a
/// fresh Ethernet header and IPv4 checksum, then out to `ifindex`.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let (Some(gen_cfg), Some(seq)) = (BENCH_GEN.get(0), BENCH_SEQ.get_ptr_mut(0)) else {
        return XDP_DROP;
    };
    // SAFETY: a per-CPU slot, only this CPU touches it.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flow = n % gen_cfg.flows.max(1);
    let mut eth = [0u8; ETH_LEN];
    eth[..6].copy_from_slice(&gen_cfg.dst_mac);
    eth[6..12].copy_from_slice(&gen_cfg.src_mac);
    eth[12..].copy_from_slice(&[0x08, 0x00]);
    let source = [203, 0, 113, flow as u8];
    // Each CPU its own flows, as RSS would spread them on a real NIC.
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let port_step = gen_cfg.cpus.max(1);
    let sport = (1024 + ((flow >> 8) * port_step + cpu % port_step) as u16).to_be_bytes();
    if !(packet::write(&ctx, 0, eth)
        && packet::write(&ctx, IP_SRC, source)
        && packet::write(&ctx, UDP_SPORT, sport)
        && packet::write(&ctx, UDP_CSUM, [0u8; 2]))
    {
        return XDP_DROP;
    }
    let Some(mut ip) = packet::read::<[u8; 20]>(&ctx, ETH_LEN) else {
        return XDP_DROP;
    };
    ip[10] = 0;
    ip[11] = 0;
    packet::write(&ctx, IP_CSUM, csum::ipv4_header(&ip).to_be_bytes());
    // SAFETY: a helper call with plain integer arguments.
    unsafe { bpf_redirect(gen_cfg.ifindex, 0) as u32 }
}

/// The forwarding baseline: every frame to the balancer's egress
/// interface through its devmap, untouched.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match live_config() {
        Some(cfg) => TX_PORTS.redirect(cfg.egress_ifindex, 0).unwrap_or(XDP_DROP),
        None => XDP_DROP,
    }
}

/// Counts every frame, and those tunnelled IPv4-in-IPv4, then drops it.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    count(SINK_FRAMES);
    let ipip = packet::read::<[u8; 2]>(&ctx, 12) == Some([0x08, 0x00])
        && packet::read::<u8>(&ctx, ETH_LEN + 9) == Some(4);
    if ipip {
        count(SINK_TUNNELLED);
    }
    XDP_DROP
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = BENCH_SINK.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, only this CPU touches it.
        unsafe { *c += 1 };
    }
}
