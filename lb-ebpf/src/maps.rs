//! The BPF maps. Names come from lb-common so userspace finds them; sizes
//! are defaults the control plane overrides at load time.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    FlowKey,
    maps::*,
    stats::{DECAP_REASON_COUNT, REASON_COUNT},
};

use crate::rate::Bucket;

/// Double-buffered: see `lb_common::maps::CONFIG_SLOTS`; read it through
/// `live_config`.
#[map(name = "LB_CONFIG")]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// Which slot of `LB_CONFIG` is live (0 or 1).
#[map(name = "CONFIG_ACTIVE")]
pub static CONFIG_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// The live configuration: one whole slot, never one being written.
#[inline(always)]
pub fn live_config() -> Option<&'static LbConfig> {
    let slot = CONFIG_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    LB_CONFIG.get(slot)
}

#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// A bit per VIP address (`lb_common::maps::vip_filter_bit`), read
/// before `VIPS` when `CFG_F_LOOKUP_CACHES` is set (`vip.rs`).
#[map(name = "VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// `VIPS` as a direct-mapped array (`lb_common::maps::CachedVip`), read in
/// its place when both `CFG_LOOKUP_CACHES` bits are set (`vip.rs`).
#[map(name = "VIP_CACHE")]
pub static VIP_CACHE: Array<CachedVip> = Array::with_max_entries(VIP_CACHE_SLOTS, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Two Maglev rings per VIP, flattened: see `lb_common::flow::ring_index`.
/// Mmapable, so the control plane writes a ring with stores, not a syscall
/// per slot.
#[map(name = "RINGS")]
pub static RINGS: Array<u32> = Array::with_max_entries(DEFAULT_RING_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "CONNS")]
pub static CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(DEFAULT_CONN_ENTRIES, 0);

/// Flows seen once, waiting for a second packet before they may enter
/// `CONNS` (see `probation.rs`).
#[map(name = "PROBATION")]
pub static PROBATION: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(DEFAULT_PROBATION_ENTRIES, 0);

#[map(name = "FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(DEFAULT_FRAG_ENTRIES, 0);

#[map(name = "GLOBAL_STATS")]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<FlowStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Per backend id: flows that entered `CONNS` for it, and closed there
/// (`conntrack.rs`); lbd reads them between its walks of the table.
#[map(name = "BACKEND_FLOWS")]
pub static BACKEND_FLOWS: PerCpuArray<FlowEvents> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Interfaces we may redirect to, keyed by ifindex.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// The MAC of each `TX_PORTS` interface, written with it by lbd.
#[map(name = "TX_PORT_MACS")]
pub static TX_PORT_MACS: HashMap<u32, PortMac> = HashMap::with_max_entries(MAX_TX_PORTS, 0);

/// `TX_PORT_MACS` in an array, for the check every VIP packet makes
/// (`balancer::addressed_here`).
#[map(name = "PORT_MAC_CACHE")]
pub static PORT_MAC_CACHE: Array<CachedPortMac> = Array::with_max_entries(PORT_MAC_CACHE_SLOTS, 0);

#[map(name = "DECAP_ADDRS")]
pub static DECAP_ADDRS: HashMap<DecapAddr, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Outer source prefixes tunnels are accepted from (`DecapSource` keys).
#[map(name = "DECAP_SOURCES")]
pub static DECAP_SOURCES: LpmTrie<DecapSource, u32> =
    LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

#[map(name = "DECAP_CONFIG")]
pub static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

#[map(name = "DECAP_STATS")]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_REASON_COUNT, 0);

#[map(name = "TOO_BIG_LIMIT")]
pub static TOO_BIG_LIMIT: Array<TooBigLimit> = Array::with_max_entries(1, 0);

/// A CPU's token bucket for ICMP too-big answers (`pmtu.rs`).
#[map(name = "TOO_BIG_BUCKET")]
pub static TOO_BIG_BUCKET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "PROMOTION_LIMIT")]
pub static PROMOTION_LIMIT: Array<PromotionLimit> = Array::with_max_entries(1, 0);

/// A CPU's token bucket for promotions into `CONNS` (`probation.rs`).
#[map(name = "PROMOTION_BUCKET")]
pub static PROMOTION_BUCKET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// The previous owner of each VIP's ring slots and until when it counts,
/// one `PrevOwner` per slot (`lb_common::maps::prev_owner_index`), each
/// with its own expiry (`second_chance.rs`). Mmapable, written by lbd like
/// the rings.
#[map(name = "PREV_OWNERS")]
pub static PREV_OWNERS: Array<PrevOwner> =
    Array::with_max_entries(DEFAULT_PREV_OWNER_ENTRIES, BPF_F_MMAPABLE);

/// The GUE port of second-chance packets; 0: off (`lb_common::gue`).
#[map(name = "SECOND_CHANCE")]
pub static SECOND_CHANCE: Array<SecondChance> = Array::with_max_entries(1, 0);

/// On a backend: the addresses second-chance packets may be sent on to
/// (the other backends), and GUE may come from besides `DECAP_SOURCES`.
#[map(name = "DECAP_PEERS")]
pub static DECAP_PEERS: LpmTrie<DecapSource, u32> = LpmTrie::with_max_entries(MAX_DECAP_PEERS, 0);

/// The GUE port, or 0 when second chance is off.
#[inline(always)]
pub fn gue_port() -> u16 {
    SECOND_CHANCE.get(0).map_or(0, |c| c.gue_port)
}

/// Per-CPU working memory for one packet: the parsed headers and the FIB
/// lookup's parameter block would not fit on the 512-byte BPF stack next to
/// the rest of the packet path.
pub struct Scratch {
    pub parsed: crate::parse::Parsed,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// Packets `lbctl capture --sample N` passed over since its last record
    /// on this CPU (`capture.rs`).
    pub capture_seen: u32,
    /// This CPU's reading of the coarse clock and the tick it was taken in
    /// (`clock.rs`).
    pub clock: crate::clock::TickReading,
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
