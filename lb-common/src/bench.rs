//! Names and layouts of the bench-only XDP programs (`cargo xtask bench`):
//! a floor to measure the balancer against, a live-frames traffic
//! generator, a plain devmap redirect to compare forwarding rates with, and
//! a sink that counts what reaches a backend. None of them is ever attached
//! by lbd.

/// MAC swap + XDP_TX: the least any XDP forwarder does.
pub const PROG_BENCH_FLOOR: &str = "bench_floor";
/// Run through BPF_PROG_TEST_RUN in live-frames mode: gives each frame a
/// new flow (source address and port) and redirects it to an interface.
pub const PROG_BENCH_GEN: &str = "bench_gen";
/// Redirects every frame to `LB_CONFIG.egress_ifindex` through the
/// balancer's own devmap: the forwarding baseline.
pub const PROG_BENCH_REDIRECT: &str = "bench_redirect";
/// Counts and drops every frame: stands in for the backends.
pub const PROG_BENCH_SINK: &str = "bench_sink";

pub const MAP_BENCH_GEN: &str = "BENCH_GEN";
pub const MAP_BENCH_SEQ: &str = "BENCH_SEQ";
pub const MAP_BENCH_SINK: &str = "BENCH_SINK";

/// `BENCH_SINK` slots (per CPU).
pub const SINK_FRAMES: u32 = 0;
/// Frames that are IPv4-in-IPv4: what the balancer sends to backends.
pub const SINK_TUNNELLED: u32 = 1;
pub const SINK_SLOTS: u32 = 2;

/// The generator's settings, the single entry of `BENCH_GEN`.
///
/// The template frame (given to the test run) is Ethernet + IPv4 (no
/// options) + UDP. Frame `n` on CPU `c` gets flow `f = n % flows`: source
/// address `203.0.113.(f & 0xff)` and source port
/// `1024 + (f >> 8) * cpus + c % cpus`, so CPUs never share a flow (as with
/// RSS on a real NIC) and `flows * cpus` is at most 256 x 64512.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchGen {
    /// Where the frames go (`bpf_redirect`), in the generator's namespace.
    pub ifindex: u32,
    /// Distinct flows to cycle through, per CPU.
    pub flows: u32,
    /// CPUs generating at once.
    pub cpus: u32,
    /// Ethernet header written on every frame (a forwarder that
    /// encapsulates overwrites part of the previous one in place).
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

// SAFETY: #[repr(C)] plain data, no padding (4 + 4 + 4 + 6 + 6 bytes).
#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchGen {}
