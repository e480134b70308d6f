//! Map names, keys and values shared by the XDP programs and the control plane.
//!
//! Sizes given here are the compiled-in defaults; the control plane resizes
//! the maps at load time from its configuration.

/// Map names, as they appear in the object file and under the pin directory.
pub const MAP_CONFIG: &str = "LB_CONFIG";
pub const MAP_CONFIG_ACTIVE: &str = "CONFIG_ACTIVE";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_RINGS: &str = "RINGS";
pub const MAP_CONNS: &str = "CONNS";
pub const MAP_PROBATION: &str = "PROBATION";
pub const MAP_FRAGS: &str = "FRAGS";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
pub const MAP_VIP_STATS: &str = "VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_TX_PORT_MACS: &str = "TX_PORT_MACS";
pub const MAP_DECAP_ADDRS: &str = "DECAP_ADDRS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
pub const MAP_DECAP_SOURCES: &str = "DECAP_SOURCES";
pub const MAP_DECAP_CONFIG: &str = "DECAP_CONFIG";
pub const MAP_TOO_BIG_LIMIT: &str = "TOO_BIG_LIMIT";
pub const MAP_PROMOTION_LIMIT: &str = "PROMOTION_LIMIT";
pub const MAP_PREV_OWNERS: &str = "PREV_OWNERS";
pub const MAP_SECOND_CHANCE: &str = "SECOND_CHANCE";
pub const MAP_DECAP_PEERS: &str = "DECAP_PEERS";
pub const MAP_BACKEND_FLOWS: &str = "BACKEND_FLOWS";
pub const MAP_VIP_FILTER: &str = "VIP_FILTER";
pub const MAP_PORT_MAC_CACHE: &str = "PORT_MAC_CACHE";
pub const MAP_VIP_CACHE: &str = "VIP_CACHE";
/// Pinned beside the others, created by the control plane (the programs
/// never read it): one `u32` entry, the `LAYOUT_VERSION` of the binary that
/// last adopted the maps. Its own layout never changes.
pub const MAP_LAYOUT_VERSION: &str = "LAYOUT_VERSION";

/// Version of the pinned maps' layout: their types, keys, values and flags.
/// Every change of a pinned map's layout bumps it, and needs a migration or
/// a refusal that says what to do (docs/architecture.md, "Maps"). Pins made
/// by v0.1.0, which has no `LAYOUT_VERSION` map, are layout 1. Adding a map,
/// or a row at the end of a reason table, is not a layout change.
///
/// - 2: `LB_CONFIG` holds `CONFIG_SLOTS` slots, the live one named by
///   `CONFIG_ACTIVE` (a one-slot map of layout 1 grows, its entry kept).
/// - 3: `PREV_OWNERS` holds a `PrevOwner` (owner and expiry) per ring
///   slot; `PREV_OWNERS_UNTIL` is gone. Only pre-release builds pinned
///   the layout-2 form (a bare owner, two slots to an entry): it is made
///   anew, empty (`layout::Migration::ForgetPrevOwners`).
pub const LAYOUT_VERSION: u32 = 3;

/// Slots of `LB_CONFIG`. An array value is updated in place, by a copy a
/// packet on another CPU can read half-way (new flags with the old egress
/// interface, say); so the control plane writes the slot no packet reads
/// and then flips `CONFIG_ACTIVE` (one aligned `u32`), as it does for rings.
pub const CONFIG_SLOTS: u32 = 2;

/// Program names in the object file.
pub const PROG_LB: &str = "lb";
pub const PROG_DECAP: &str = "lb_decap";

pub const DEFAULT_MAX_VIPS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Maglev ring size M: a prime, so every backend's permutation covers the ring.
pub const DEFAULT_RING_SIZE: u32 = 65537;
pub const DEFAULT_CONN_ENTRIES: u32 = 1 << 20;
/// The probation table holds flows seen once; by default an eighth of the
/// connection table (see `probation_entries_for`).
pub const DEFAULT_PROBATION_ENTRIES: u32 = probation_entries_for(DEFAULT_CONN_ENTRIES);
pub const DEFAULT_FRAG_ENTRIES: u32 = 1 << 14;
/// Two rings (double buffer) per VIP.
pub const DEFAULT_RING_ENTRIES: u32 = DEFAULT_MAX_VIPS * 2 * DEFAULT_RING_SIZE;
pub const MAX_TX_PORTS: u32 = 64;
pub const MAX_DECAP_ADDRS: u32 = 64;
pub const MAX_DECAP_SOURCES: u32 = 256;
pub const MAX_DECAP_PEERS: u32 = 256;
/// `PREV_OWNERS` entries per VIP: one per ring slot.
pub const fn prev_owner_entries_per_vip(ring_size: u32) -> u32 {
    ring_size
}
pub const DEFAULT_PREV_OWNER_ENTRIES: u32 =
    DEFAULT_MAX_VIPS * prev_owner_entries_per_vip(DEFAULT_RING_SIZE);

/// The `PREV_OWNERS` entry of slot `slot` of VIP `vip_id`'s ring.
#[inline(always)]
pub fn prev_owner_index(vip_id: u32, slot: u32, ring_size: u32) -> u32 {
    vip_id * prev_owner_entries_per_vip(ring_size) + slot
}

/// Value of `PREV_OWNERS`: the backend that owned a ring slot before the
/// rebuild that last moved it, and until when (`coarse_seconds`) a packet
/// on the slot may take it along as a second hop. Each slot has its own
/// expiry, set when the slot moves and never extended by a rebuild that
/// leaves the slot where it is. All zero (as created): none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrevOwner {
    /// A backend id, or `NO_BACKEND`.
    pub owner: u32,
    /// Counts while `coarse_seconds(now) < until_s`; 0: never.
    pub until_s: u32,
}

impl PrevOwner {
    pub const NONE: Self = Self {
        owner: NO_BACKEND,
        until_s: 0,
    };

    /// Whether the slot has a previous owner at `now_s`.
    #[inline(always)]
    pub fn live_at(&self, now_s: u32) -> bool {
        self.owner != NO_BACKEND && self.until_s > now_s
    }

    /// The value as one `u64`, as the program reads it: a slot's owner and
    /// expiry are written and read together, never half of each.
    #[inline(always)]
    pub fn to_bits(self) -> u64 {
        (self.until_s as u64) << 32 | self.owner as u64
    }

    #[inline(always)]
    pub fn from_bits(bits: u64) -> Self {
        Self {
            owner: bits as u32,
            until_s: (bits >> 32) as u32,
        }
    }
}

/// The clock of `PrevOwner::until_s`: whole seconds of CLOCK_MONOTONIC
/// (`bpf_ktime_get_coarse_ns` in the program), which a `u32` holds for
/// 136 years of uptime.
#[inline(always)]
pub fn coarse_seconds(monotonic_ns: u64) -> u32 {
    (monotonic_ns / 1_000_000_000) as u32
}

/// The default probation-table size for a connection table of
/// `conn_entries`: an eighth of it, at least one entry.
pub const fn probation_entries_for(conn_entries: u32) -> u32 {
    let n = conn_entries / 8;
    if n == 0 { 1 } else { n }
}

/// A ring slot that holds no backend (the VIP has none in service).
pub const NO_BACKEND: u32 = u32::MAX;

/// Global configuration, the single entry of `LB_CONFIG`.
///
/// The program forwards nothing until `ring_size` is non-zero, so a freshly
/// loaded program passes all traffic to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Slots per Maglev ring (M).
    pub ring_size: u32,
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// Outer source of IPv6 encapsulation.
    pub outer_src_v6: [u8; 16],
    /// Outer source of IPv4 encapsulation.
    pub outer_src_v4: [u8; 4],
    /// Next-hop MAC when the FIB is not used, or its neighbour is unresolved.
    pub gateway_mac: [u8; 6],
    /// Largest L3 packet the egress link carries; 0 disables the check.
    pub mtu: u16,
    /// Without `CFG_F_NEXTHOP_FIB`: 0 sends back out of the ingress interface
    /// (XDP_TX), anything else redirects to that ifindex through `TX_PORTS`.
    pub egress_ifindex: u32,
    /// Source MAC of frames redirected to `egress_ifindex` with a configured
    /// next-hop MAC: that interface's own. Zero: the ingress frame's
    /// destination MAC (right for XDP_TX, where it is ours).
    pub egress_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Resolve next hops with `bpf_fib_lookup` (route + neighbour of the kernel).
pub const CFG_F_NEXTHOP_FIB: u32 = 1;
/// Some VIP is port-less: a packet that matches no (address, port) VIP is
/// looked up once more with port 0. Without it, non-VIP traffic (most of a
/// host's) costs one hash lookup instead of two.
pub const CFG_F_PORTLESS_VIPS: u32 = 1 << 1;
/// The program may read `VIP_FILTER` and `PORT_MAC_CACHE` (and, with
/// `CFG_F_VIP_CACHE` too, `VIP_CACHE`) in place of the hash maps they
/// stand for: `VIP_FILTER` holds the bit of every address in `VIPS`
/// (`vip_filter_bit`), so a packet whose destination's bit is clear is no
/// VIP's; `VIP_CACHE` answers for `VIPS` itself (`CachedVip`);
/// `PORT_MAC_CACHE` holds ports' MACs from `TX_PORT_MACS`. Set by lbd only
/// once it has rebuilt them all, and cleared when it exits, so that an
/// older lbd started next (which may know none of them) is never trusted
/// to have kept them true.
pub const CFG_F_LOOKUP_CACHES: u32 = 1 << 2;
/// The program may also read `VIP_CACHE` (with `CFG_F_LOOKUP_CACHES`). A
/// bit of its own because lbds that predate the cache already set
/// `CFG_F_LOOKUP_CACHES` without keeping `VIP_CACHE` true: their
/// configuration writes, built without this bit, switch the cache off.
pub const CFG_F_VIP_CACHE: u32 = 1 << 3;
/// Every lookup-cache bit this release keeps true: what lbd sets once it
/// has rebuilt the caches, and clears as it exits.
pub const CFG_LOOKUP_CACHES: u32 = CFG_F_LOOKUP_CACHES | CFG_F_VIP_CACHE;

/// `u64` words of `VIP_FILTER`: 65,536 bits, 8 KiB. With 100 VIP addresses
/// about one non-VIP address in 650 shares a bit with one and pays the
/// hash lookup it would have paid anyway.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// The bit of `VIP_FILTER` for a destination address (IPv4 in its first
/// four bytes): the address folded to 32 bits, then a multiplicative hash,
/// whose top 16 bits index the filter.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16], family: u8) -> u32 {
    let word = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded = if family == crate::flow::FAMILY_V4 {
        word(0)
    } else {
        word(0) ^ word(4) ^ word(8) ^ word(12) ^ 0x6a09_e667
    };
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// Slots of `VIP_CACHE`, a power of two: 4,096 slots of 40 bytes (160 KiB).
/// A VIP shares its slot with another with odds of about one in 64 per 64
/// VIPs (one in 4 at 1,000); a shared slot sends its packets to `VIPS`.
pub const VIP_CACHE_SLOTS: u32 = 4096;

/// `CachedVip::state`: no VIP's key falls in the slot, so a packet whose
/// key does is for no VIP (with that port).
pub const VIP_CACHE_EMPTY: u32 = 0;
/// One VIP's key falls in the slot, and the slot holds it.
pub const VIP_CACHE_ONE: u32 = 1;
/// Several VIPs' keys fall in the slot: ask `VIPS`.
pub const VIP_CACHE_SHARED: u32 = 2;

/// A slot of `VIP_CACHE`: what the program reads in place of a `VIPS`
/// lookup (`CFG_LOOKUP_CACHES`, both bits). A direct-mapped cache of the whole of
/// `VIPS`, so its answers are exact: a key falls in slot
/// `vip_cache_slot`, and the slot either holds that key's VIP, or no
/// VIP's key falls there (the key is no VIP), or it is shared (ask
/// `VIPS`).
///
/// lbd changes a slot so that a packet reading it while it changes gets
/// the old answer, the new one, or "shared" (and `VIPS` holds one of the
/// two): `state` changes alone (every state is one byte), and key and VIP
/// entry are written only while `state` says they are not read, so a slot
/// showing a VIP whose entry must change (a new ring, new flags, another
/// VIP) is marked shared first (lb-userspace `vip_cache`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVip {
    /// `VipKey::addr` as four native-endian words (`addr_words`), the
    /// way the program compares it.
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// `VIP_CACHE_EMPTY`, `VIP_CACHE_ONE` or `VIP_CACHE_SHARED`.
    pub state: u32,
    pub meta: VipMeta,
}

impl CachedVip {
    /// A slot that holds VIP `key` with `meta`.
    pub fn holding(key: &VipKey, meta: &VipMeta) -> Self {
        Self {
            addr: addr_words(&key.addr),
            port: key.port,
            proto: key.proto,
            family: key.family,
            state: VIP_CACHE_ONE,
            meta: *meta,
        }
    }

    /// Whether the slot's key is `key` (whatever its state).
    pub fn is_for(&self, key: &VipKey) -> bool {
        self.addr == addr_words(&key.addr)
            && self.port == key.port
            && self.proto == key.proto
            && self.family == key.family
    }
}

/// An address as four native-endian words: how the program reads the
/// 4-aligned address of a flow key.
#[inline(always)]
pub fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    let word = |i: usize| {
        u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ])
    };
    [word(0), word(1), word(2), word(3)]
}

/// The slot of `VIP_CACHE` for (address, port, protocol, family): the
/// address's words folded (`flow::fold_words`), the port, protocol and
/// family added through a multiplicative hash, and MurmurHash3's
/// finaliser over the sum, whose low bits index the cache. A few ALU
/// instructions in the program, against the `VIPS` lookup's jhash and
/// bucket walk.
#[inline(always)]
pub fn vip_cache_slot(addr: &[u32; 4], port: u16, proto: u8, family: u8) -> u32 {
    use crate::flow::{finalize, fold_words};
    let rest = ((port as u32) << 16) | ((proto as u32) << 8) | family as u32;
    finalize(fold_words(addr).wrapping_add(rest.wrapping_mul(0x9e37_79b1))) & (VIP_CACHE_SLOTS - 1)
}

/// Slots of `PORT_MAC_CACHE`, indexed by ifindex modulo this.
pub const PORT_MAC_CACHE_SLOTS: u32 = 64;

/// A slot of `PORT_MAC_CACHE`: `TX_PORT_MACS`'s entry for `ifindex`, in an
/// array the program reads without a hash lookup (with
/// `CFG_F_LOOKUP_CACHES`). `ifindex` 0: empty (the program then asks
/// `TX_PORT_MACS`). The control plane writes a slot's MAC before its
/// ifindex, which keeps a reader from pairing one port's ifindex with
/// another's MAC in all but a torn read of the 12-byte slot while it
/// changes (a port added or its MAC changed: one frame's MAC check).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedPortMac {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// How often the load balancer may answer a packet too big for the tunnel
/// with an ICMP too-big, the single entry of `TOO_BIG_LIMIT`: a token bucket
/// per CPU, kept in credit nanoseconds so the data plane only adds and
/// compares. A new map rather than fields of `LbConfig`, whose pinned
/// layout has no room for them. All zero (never written) answers nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TooBigLimit {
    /// Credit one answer costs: one second over the answers allowed per
    /// second per CPU. 0: never answer.
    pub interval_ns: u64,
    /// Most credit a CPU saves up: `interval_ns` times the burst.
    pub burst_ns: u64,
}

/// How fast flows may move from the probation table into the connection
/// table, the single entry of `PROMOTION_LIMIT`: a token bucket per CPU in
/// credit nanoseconds, like `TooBigLimit`. A flow whose promotion finds no
/// credit stays on probation, pinned to its backend there, and tries again
/// with its next packet. It bounds how fast any traffic, a flood of spoofed
/// multi-packet flows included, can replace the connection table's
/// entries. All zero (never written): no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromotionLimit {
    /// Credit one promotion costs on a CPU: one second over that CPU's
    /// share of the promotions allowed per second. 0: no limit.
    pub interval_ns: u64,
    /// Most credit a CPU saves up.
    pub burst_ns: u64,
}

/// Second chance on this host, the single entry of `SECOND_CHANCE`: the
/// UDP port of GUE second-chance packets (`gue`), which the load balancer
/// sends to and a backend's decapsulation program accepts. 0 (never
/// written): off, the load balancer sends none and the decapsulation
/// program takes UDP for what it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondChance {
    pub gue_port: u16,
    pub _pad: [u8; 2],
}

/// A virtual service: address, port (0 for a port-less VIP), protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into the rings and the per-VIP counters.
    pub vip_id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Which of the VIP's two rings is live (0 or 1). The control plane fills
    /// the other ring, then flips this, so no packet sees a half-written ring.
    pub active_ring: u32,
    pub _pad: u32,
}

/// Hash on the client address only: all of a client's flows share a backend.
pub const VIP_F_AFFINITY: u32 = 1;
/// The VIP serves every port of its address (its key has port 0).
pub const VIP_F_PORTLESS: u32 = 1 << 1;
/// L2 direct server return: rewrite the destination MAC only, no tunnel.
pub const VIP_F_L2_DSR: u32 = 1 << 2;
/// Stateless on the LB: every packet is placed by the ring alone, with the
/// slot's previous owner as a second hop while the slot's window lasts; no
/// connection or probation entry is looked up or made (`stateless.rs`).
pub const VIP_F_STATELESS: u32 = 1 << 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub family: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Backend's MAC for L2 DSR; all zero means "ask the FIB".
    pub mac: [u8; 6],
    /// The VIP this backend serves: lets a restarted control plane recover
    /// its id allocation from the pinned maps.
    pub vip_id: u32,
}

/// The slot holds a configured backend (a zeroed entry is a hole).
pub const BACKEND_F_ACTIVE: u8 = 1;
/// Failed its health checks: established flows move away from it.
pub const BACKEND_F_DOWN: u8 = 1 << 1;
/// Draining: kept for established flows, absent from the rings.
pub const BACKEND_F_DRAINING: u8 = 1 << 2;

/// Whether `backend` may take a packet of VIP `vip_id`: it is configured,
/// not down, and serves that VIP (ids are recycled: an id a ring slot or a
/// connection entry still names may since belong to another VIP). The data
/// plane decides with this, and `lbctl flow` explains with it.
#[inline(always)]
pub fn backend_serves(backend: &Backend, vip_id: u32) -> Result<(), crate::Reason> {
    if backend.flags & BACKEND_F_ACTIVE == 0 || backend.vip_id != vip_id {
        return Err(crate::Reason::DropNoBackend);
    }
    if backend.flags & BACKEND_F_DOWN != 0 {
        return Err(crate::Reason::DropBackendDown);
    }
    Ok(())
}

/// Whether connection `entry` still pins its flow for VIP `vip_id` to
/// `backend` (the entry's backend): the entry must have been made for this
/// VIP, and its backend must serve it. Otherwise the flow is rescheduled.
#[inline(always)]
pub fn entry_pins(entry: &ConnEntry, vip_id: u32, backend: &Backend) -> Result<(), crate::Reason> {
    if entry.vip_id != vip_id {
        return Err(crate::Reason::DropNoBackend);
    }
    backend_serves(backend, vip_id)
}

/// Connection table value, and probation table value (the same layout: a
/// flow in probation is pinned to its backend too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    pub backend_id: u32,
    pub vip_id: u32,
    /// `bpf_ktime_get_coarse_ns` at the last packet, refreshed at most
    /// once a second; bit 63 is `CONN_CLOSED` (read it through
    /// `last_seen` and `closed`).
    pub last_seen_ns: u64,
}

/// Set in a connection entry's `last_seen_ns` once its TCP flow was seen
/// closing (a FIN or RST from the client). The entry stays, so the flow's
/// last packets still reach its backend; the mark tells the data plane to
/// count the close once (`BACKEND_FLOWS`) and lbd to list the flow as
/// inactive. The bit lives in the timestamp so that `ConnEntry`, and so
/// the pinned connection table, keeps its layout across upgrades: the
/// clock (CLOCK_MONOTONIC in ns) reaches bit 63 only after 292 years of
/// uptime, so no entry written by an older release has it set, and an
/// older release reading a marked entry sees a time in the future (idle
/// 0 s, refreshed, and so unmarked, by its next packet).
pub const CONN_CLOSED: u64 = 1 << 63;

impl ConnEntry {
    /// When the flow last sent a packet (`bpf_ktime_get_coarse_ns`).
    #[inline(always)]
    pub fn last_seen(&self) -> u64 {
        self.last_seen_ns & !CONN_CLOSED
    }

    /// Whether the flow was seen closing (`CONN_CLOSED`).
    #[inline(always)]
    pub fn closed(&self) -> bool {
        self.last_seen_ns & CONN_CLOSED != 0
    }
}

/// Identifies the fragments of one datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Where the first fragment of a datagram went; later fragments follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub backend_id: u32,
    pub vip_id: u32,
    pub vip_flags: u32,
    pub _pad: u32,
}

/// Per-VIP and per-backend traffic counters (per CPU in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub dropped: u64,
}

/// Per-backend flow events of the connection table (per CPU in the
/// kernel), `BACKEND_FLOWS`: how many flows entered it for the backend
/// and how many of those were seen closing. lbd turns them into the live
/// active-flow count between its exact walks of the table
/// (`lb-userspace/src/backend_load.rs`); they drift (an LRU eviction, an
/// entry replaced, is no event), which the walks correct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvents {
    /// Flows entered into `CONNS` for the backend (promoted from
    /// probation, rescheduled to it, or a closed one opened anew by a SYN).
    pub opened: u64,
    /// Flows in `CONNS` for the backend that were marked `CONN_CLOSED`, or
    /// moved away from it before they closed.
    pub closed: u64,
}

/// Value of `TX_PORT_MACS`, keyed by the ifindex of a `TX_PORTS` interface:
/// that interface's MAC, the source address of frames redirected there
/// towards a next-hop MAC the FIB did not give (`next_hop.gateway_mac` when
/// the FIB's neighbour is unresolved).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PortMac>() == 8);
const _: () = assert!(core::mem::size_of::<PromotionLimit>() == 16);

/// An address the decapsulation program accepts tunnels for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// The data of a `DECAP_SOURCES` key (an LPM trie): an outer source prefix
/// the decapsulation program accepts tunnels from. The family comes first,
/// so one trie serves IPv4 and IPv6: a prefix of `len` address bits is a
/// key of `DECAP_SOURCE_FAMILY_BITS + len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapSource {
    pub family: u8,
    /// IPv4 fills the first four bytes.
    pub addr: [u8; 16],
}

// The trie's key is this, packed behind a 4-byte prefix length: no padding
// byte may be left for the kernel to compare.
const _: () = assert!(core::mem::size_of::<DecapSource>() == 17);

/// Bits of a `DecapSource` key in front of the address.
pub const DECAP_SOURCE_FAMILY_BITS: u32 = 8;

/// The decapsulation program's configuration, the single entry of
/// `DECAP_CONFIG`. All zero (as created) accepts tunnels only from the
/// sources in `DECAP_SOURCES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// `DECAP_F_*` bits.
    pub flags: u32,
}

/// Accept tunnels from any outer source (`lb-decap --allow-any-source`).
pub const DECAP_F_ANY_SOURCE: u32 = 1;

// The layouts pinned maps hold (PortMac and DecapSource are asserted above): a change of any of these sizes is a layout
// change (bump LAYOUT_VERSION). A layout change that keeps a size needs the
// bump all the same: these only catch the ones a reviewer could miss.
const _: () = {
    assert!(size_of::<LbConfig>() == 48);
    assert!(size_of::<VipKey>() == 20);
    assert!(size_of::<VipMeta>() == 16);
    assert!(size_of::<Backend>() == 28);
    assert!(size_of::<ConnEntry>() == 16);
    assert!(size_of::<FragKey>() == 40);
    assert!(size_of::<FragEntry>() == 16);
    assert!(size_of::<FlowStats>() == 32);
    assert!(size_of::<DecapAddr>() == 20);
    assert!(size_of::<DecapConfig>() == 4);
    assert!(size_of::<TooBigLimit>() == 16);
    assert!(size_of::<SecondChance>() == 4);
    assert!(size_of::<PrevOwner>() == 8);
    assert!(size_of::<FlowEvents>() == 16);
    assert!(size_of::<CachedPortMac>() == 12);
    assert!(size_of::<crate::FlowKey>() == 40);
    assert!(size_of::<CachedVip>() == 40);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::FlowKey;
    /// `aya::Pod` for map keys and values: plain `#[repr(C)]` data whose
    /// sizes the assertions above pin, with explicit `_pad` fields.
    macro_rules! plain_data {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: #[repr(C)] plain data with no padding holes that the
            // kernel could leave uninitialised (explicit _pad fields), and
            // every bit pattern is a valid value (integers and byte arrays).
            unsafe impl aya::Pod for $t {}
        )*};
    }
    plain_data!(
        LbConfig,
        VipKey,
        VipMeta,
        Backend,
        ConnEntry,
        FragKey,
        FragEntry,
        FlowStats,
        DecapAddr,
        PortMac,
        CachedPortMac,
        CachedVip,
        DecapSource,
        DecapConfig,
        TooBigLimit,
        PromotionLimit,
        SecondChance,
        PrevOwner,
        FlowEvents,
        FlowKey,
    );
}
