//! Typed handles on the data plane's maps, and the only code that writes
//! them. Rings are published by filling the VIP's inactive ring and then
//! flipping its `active_ring`, so a packet sees either the old ring or the
//! new one, never a mix.

use crate::{
    decap_sources::{self, DecapSources, IpNet},
    errors::chain,
    occupancy::{ElemCountError, ElemCounter},
    ring_memory::RingMemory,
    vip_cache, vip_filter,
};
use aya::{
    Ebpf,
    maps::{
        Array, DevMapHash, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
        xdp::XdpMapError,
    },
};
use lb_common::{FlowKey, Reason, flow::ring_index, maps::*, stats::DecapReason};
use std::{
    collections::BTreeSet,
    sync::{
        OnceLock,
        atomic::{Ordering, fence},
    },
};

/// A failed map operation. A cause is part of the message and is not also
/// returned from `source()` (see `crate::errors`).
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {}", chain(.error))]
    Map { name: &'static str, error: MapError },
    #[error("map {0}: this kernel does not support the requested operation")]
    Unsupported(&'static str),
    #[error("VIP {0:?} is not in the VIP map")]
    UnknownVip(VipKey),
    #[error("map {name}: {error}")]
    Memory {
        name: &'static str,
        error: crate::ring_memory::RingMemoryError,
    },
    #[error("ring has {got} slots, the data plane was loaded with {want}")]
    RingSize { got: usize, want: u32 },
    #[error("map {name} holds at most {max} prefixes: {got} were given")]
    TooManyPrefixes {
        name: &'static str,
        got: usize,
        max: u32,
    },
    #[error("map {name}: {error}")]
    PerCpu {
        name: &'static str,
        error: std::io::Error,
    },
}

fn memory(name: &'static str) -> impl FnOnce(crate::ring_memory::RingMemoryError) -> MapsError {
    move |error| MapsError::Memory { name, error }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
    T::try_from(map).map_err(|error| MapsError::Map { name, error })
}

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |error| MapsError::Map { name, error }
}

/// All maps of a loaded data plane.
pub struct Maps {
    config: Array<MapData, LbConfig>,
    config_active: Array<MapData, u32>,
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_filter: Array<MapData, u64>,
    vip_cache: Array<MapData, CachedVip>,
    /// The lookup caches were rebuilt by this handle: they may be
    /// switched on (`CFG_LOOKUP_CACHES`).
    lookup_caches_synced: bool,
    backends: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    ring_memory: RingMemory,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    probation: HashMap<MapData, FlowKey, ConnEntry>,
    /// How entries are counted for `fill`: the kernel's own count where it
    /// has one, else a bounded walk (and why). Set up on first use: it
    /// reads the kernel's BTF, which users of the maps that never ask for
    /// occupancy (lb-decap, the packet tests) need not pay for.
    counters: OnceLock<Result<(ElemCounter, ElemCounter), String>>,
    frags: HashMap<MapData, FragKey, FragEntry>,
    global_stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, FlowStats>,
    backend_stats: PerCpuArray<MapData, FlowStats>,
    backend_flows: PerCpuArray<MapData, FlowEvents>,
    tx_ports: DevMapHash<MapData>,
    tx_port_macs: HashMap<MapData, u32, PortMac>,
    port_mac_cache: Array<MapData, CachedPortMac>,
    decap_addrs: HashMap<MapData, DecapAddr, u32>,
    decap_stats: PerCpuArray<MapData, u64>,
    decap_sources: LpmTrie<MapData, DecapSource, u32>,
    decap_config: Array<MapData, DecapConfig>,
    too_big_limit: Array<MapData, TooBigLimit>,
    promotion_limit: Array<MapData, PromotionLimit>,
    /// `PREV_OWNERS`, written and read through `prev_owner_memory` only.
    _prev_owners: Array<MapData, PrevOwner>,
    prev_owner_memory: RingMemory,
    second_chance: Array<MapData, SecondChance>,
    decap_peers: LpmTrie<MapData, DecapSource, u32>,
    ring_size: u32,
}

impl Maps {
    /// Take the maps out of `ebpf` (the programs stay there).
    pub fn take(ebpf: &mut Ebpf, ring_size: u32) -> Result<Self, MapsError> {
        let rings: Array<MapData, u32> = take(ebpf, MAP_RINGS)?;
        let ring_memory = RingMemory::new(rings.map()).map_err(memory(MAP_RINGS))?;
        let prev_owners: Array<MapData, PrevOwner> = take(ebpf, MAP_PREV_OWNERS)?;
        let prev_owner_memory =
            RingMemory::new(prev_owners.map()).map_err(memory(MAP_PREV_OWNERS))?;
        let conns: HashMap<MapData, FlowKey, ConnEntry> = take(ebpf, MAP_CONNS)?;
        let probation: HashMap<MapData, FlowKey, ConnEntry> = take(ebpf, MAP_PROBATION)?;
        Ok(Self {
            config: take(ebpf, MAP_CONFIG)?,
            config_active: take(ebpf, MAP_CONFIG_ACTIVE)?,
            vips: take(ebpf, MAP_VIPS)?,
            vip_filter: take(ebpf, MAP_VIP_FILTER)?,
            vip_cache: take(ebpf, MAP_VIP_CACHE)?,
            lookup_caches_synced: false,
            backends: take(ebpf, MAP_BACKENDS)?,
            rings,
            ring_memory,
            conns,
            probation,
            counters: OnceLock::new(),
            frags: take(ebpf, MAP_FRAGS)?,
            global_stats: take(ebpf, MAP_GLOBAL_STATS)?,
            vip_stats: take(ebpf, MAP_VIP_STATS)?,
            backend_stats: take(ebpf, MAP_BACKEND_STATS)?,
            backend_flows: take(ebpf, MAP_BACKEND_FLOWS)?,
            tx_ports: take(ebpf, MAP_TX_PORTS)?,
            tx_port_macs: take(ebpf, MAP_TX_PORT_MACS)?,
            port_mac_cache: take(ebpf, MAP_PORT_MAC_CACHE)?,
            decap_addrs: take(ebpf, MAP_DECAP_ADDRS)?,
            decap_stats: take(ebpf, MAP_DECAP_STATS)?,
            decap_sources: take(ebpf, MAP_DECAP_SOURCES)?,
            decap_config: take(ebpf, MAP_DECAP_CONFIG)?,
            too_big_limit: take(ebpf, MAP_TOO_BIG_LIMIT)?,
            promotion_limit: take(ebpf, MAP_PROMOTION_LIMIT)?,
            _prev_owners: prev_owners,
            prev_owner_memory,
            second_chance: take(ebpf, MAP_SECOND_CHANCE)?,
            decap_peers: take(ebpf, MAP_DECAP_PEERS)?,
            ring_size,
        })
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// What the maps were created to hold. Pinned maps keep the sizes they
    /// were created with.
    pub fn capacities(&self) -> Result<Capacities, MapsError> {
        let of = |name: &'static str, data: &MapData| {
            data.info().map(|i| i.max_entries()).map_err(err(name))
        };
        Ok(Capacities {
            vips: of(MAP_VIPS, self.vips.map())?,
            backends: of(MAP_BACKENDS, self.backends.map())?,
            conns: of(MAP_CONNS, self.conns.map())?,
            probation: of(MAP_PROBATION, self.probation.map())?,
        })
    }

    /// Write the global configuration. With `ring_size` non-zero this turns
    /// forwarding on. The slot no packet reads is written whole, then made
    /// the live one (`CONFIG_SLOTS`): a packet sees the old configuration
    /// or the new one, never a mixture.
    /// A configuration with a `CFG_LOOKUP_CACHES` bit first rebuilds the
    /// caches (once per handle), so the program never trusts a filter that
    /// misses a VIP or a stale MAC.
    pub fn set_config(&mut self, config: &LbConfig) -> Result<(), MapsError> {
        if config.flags & CFG_LOOKUP_CACHES != 0 && !self.lookup_caches_synced {
            self.sync_lookup_caches()?;
        }
        self.write_config(config)
    }

    /// `set_config` without the cache rebuild.
    fn write_config(&mut self, config: &LbConfig) -> Result<(), MapsError> {
        let next = self.config_slot()? ^ 1;
        self.config.set(next, config, 0).map_err(err(MAP_CONFIG))?;
        self.config_active
            .set(0, next, 0)
            .map_err(err(MAP_CONFIG_ACTIVE))
    }

    /// The live global configuration.
    pub fn config(&self) -> Result<LbConfig, MapsError> {
        let slot = self.config_slot()?;
        self.config.get(&slot, 0).map_err(err(MAP_CONFIG))
    }

    /// The slot of `LB_CONFIG` the program reads.
    fn config_slot(&self) -> Result<u32, MapsError> {
        let slot = self
            .config_active
            .get(&0, 0)
            .map_err(err(MAP_CONFIG_ACTIVE))?;
        Ok(slot & 1)
    }

    /// Write the rate limit of ICMP too-big answers.
    pub fn set_too_big_limit(&mut self, limit: &TooBigLimit) -> Result<(), MapsError> {
        self.too_big_limit
            .set(0, limit, 0)
            .map_err(err(MAP_TOO_BIG_LIMIT))
    }

    pub fn too_big_limit(&self) -> Result<TooBigLimit, MapsError> {
        self.too_big_limit
            .get(&0, 0)
            .map_err(err(MAP_TOO_BIG_LIMIT))
    }

    /// Write the rate limit of promotions into the connection table (see
    /// `image::promotion_limit`; all zero: no limit).
    pub fn set_promotion_limit(&mut self, limit: &PromotionLimit) -> Result<(), MapsError> {
        self.promotion_limit
            .set(0, limit, 0)
            .map_err(err(MAP_PROMOTION_LIMIT))
    }

    pub fn promotion_limit(&self) -> Result<PromotionLimit, MapsError> {
        self.promotion_limit
            .get(&0, 0)
            .map_err(err(MAP_PROMOTION_LIMIT))
    }

    /// The CPUs that can run the program: those online (not every CPU
    /// the kernel could bring up, which per-CPU maps are sized for), so
    /// that a limit split between them adds up to the whole.
    pub fn cpus(&self) -> Result<u32, MapsError> {
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if online < 1 {
            return Err(MapsError::PerCpu {
                name: MAP_PROMOTION_LIMIT,
                error: std::io::Error::last_os_error(),
            });
        }
        Ok(online as u32)
    }

    /// Write a VIP: its filter bit first (`crate::vip_filter`), then
    /// `VIPS`, then its cache slot (`crate::vip_cache`).
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapsError> {
        let (word, mask) = vip_filter::position(key);
        let had = self.vip_filter.get(&word, 0).map_err(err(MAP_VIP_FILTER))?;
        if had & mask == 0 {
            self.vip_filter
                .set(word, had | mask, 0)
                .map_err(err(MAP_VIP_FILTER))?;
        }
        self.vips.insert(key, meta, 0).map_err(err(MAP_VIPS))?;
        self.update_cached_vip(vip_cache::slot(key), |held| {
            vip_cache::with_vip(held, key, meta)
        })
    }

    /// Take cache slot `slot` to `want` of what it holds, through
    /// `vip_cache::steps`. On a failure the cache may disagree with
    /// `VIPS`, so the program stops reading it (`abandon_vip_cache`)
    /// before the error returns.
    fn update_cached_vip(
        &mut self,
        slot: u32,
        want: impl FnOnce(&CachedVip) -> CachedVip,
    ) -> Result<(), MapsError> {
        let result = self.try_update_cached_vip(slot, want);
        if result.is_err() {
            self.abandon_vip_cache();
        }
        result
    }

    fn try_update_cached_vip(
        &mut self,
        slot: u32,
        want: impl FnOnce(&CachedVip) -> CachedVip,
    ) -> Result<(), MapsError> {
        let held = self.vip_cache.get(&slot, 0).map_err(err(MAP_VIP_CACHE))?;
        for step in vip_cache::steps(&held, &want(&held)) {
            // Each update lands after the one before (a map update is
            // a syscall; this keeps the compiler and CPU from caring).
            fence(Ordering::SeqCst);
            self.vip_cache
                .set(slot, step, 0)
                .map_err(err(MAP_VIP_CACHE))?;
        }
        Ok(())
    }

    /// Stop the program reading `VIP_CACHE` after a failed write left it
    /// in doubt: the live configuration without `CFG_F_VIP_CACHE`, written
    /// as it is (packets then ask `VIPS`); the next `set_config` with the
    /// bit rebuilds the cache first. Best effort: a failing configuration
    /// write leaves nothing better to do.
    fn abandon_vip_cache(&mut self) {
        self.lookup_caches_synced = false;
        if let Ok(live) = self.config()
            && live.flags & CFG_F_VIP_CACHE != 0
        {
            let _ = self.write_config(&LbConfig {
                flags: live.flags & !CFG_F_VIP_CACHE,
                ..live
            });
        }
    }

    /// Rebuild what the program reads in place of a hash lookup from the
    /// maps they stand for: `VIP_FILTER` and `VIP_CACHE` from `VIPS`,
    /// `PORT_MAC_CACHE` from `TX_PORT_MACS`.
    pub fn sync_lookup_caches(&mut self) -> Result<(), MapsError> {
        self.sync_vip_filter()?;
        self.sync_vip_cache()?;
        for slot in 0..PORT_MAC_CACHE_SLOTS {
            let held = self
                .port_mac_cache
                .get(&slot, 0)
                .map_err(err(MAP_PORT_MAC_CACHE))?;
            let current = match self.tx_port_macs.get(&held.ifindex, 0) {
                Ok(port) => port.mac == held.mac,
                Err(MapError::KeyNotFound) => false,
                Err(error) => {
                    return Err(MapsError::Map {
                        name: MAP_TX_PORT_MACS,
                        error,
                    });
                }
            };
            if held.ifindex != 0 && !current {
                self.port_mac_cache
                    .set(slot, CachedPortMac::default(), 0)
                    .map_err(err(MAP_PORT_MAC_CACHE))?;
            }
        }
        for (ifindex, mac) in self.tx_ports()? {
            if mac != [0; 6] {
                self.cache_port_mac(ifindex, mac)?;
            }
        }
        self.lookup_caches_synced = true;
        Ok(())
    }

    /// Stop the program reading the lookup caches (the live configuration
    /// without `CFG_LOOKUP_CACHES`): lbd's last write before it exits,
    /// since the lbd started next may be an older one that would not keep
    /// them true. Until a new lbd sets it again, the program pays the hash
    /// lookups the caches save.
    pub fn release_lookup_caches(&mut self) -> Result<(), MapsError> {
        let live = self.config()?;
        if live.flags & CFG_LOOKUP_CACHES == 0 {
            return Ok(());
        }
        self.set_config(&LbConfig {
            flags: live.flags & !CFG_LOOKUP_CACHES,
            ..live
        })
    }

    /// The kernel's id of lookup-cache map `name` (`MAP_VIP_FILTER`,
    /// `MAP_VIP_CACHE` or `MAP_PORT_MAC_CACHE`), for tools and tests that
    /// open it as it is.
    pub fn lookup_cache_id(&self, name: &'static str) -> Result<u32, MapsError> {
        let data = match name {
            MAP_VIP_FILTER => self.vip_filter.map(),
            MAP_VIP_CACHE => self.vip_cache.map(),
            MAP_PORT_MAC_CACHE => self.port_mac_cache.map(),
            _ => return Err(MapsError::Missing(name)),
        };
        data.info().map(|i| i.id()).map_err(err(name))
    }

    /// Make `VIP_FILTER` hold exactly the addresses in `VIPS`, writing only
    /// the words that differ. lbd calls it before it attaches a program: a
    /// filter left by an older lbd (or none) may lack bits.
    pub fn sync_vip_filter(&mut self) -> Result<(), MapsError> {
        let keys = self
            .vips
            .keys()
            .collect::<Result<Vec<VipKey>, _>>()
            .map_err(err(MAP_VIPS))?;
        for (index, want) in vip_filter::exact(&keys).into_iter().enumerate() {
            let index = index as u32;
            if self
                .vip_filter
                .get(&index, 0)
                .map_err(err(MAP_VIP_FILTER))?
                != want
            {
                self.vip_filter
                    .set(index, want, 0)
                    .map_err(err(MAP_VIP_FILTER))?;
            }
        }
        Ok(())
    }

    /// Make `VIP_CACHE` answer for exactly the VIPs in `VIPS`, changing
    /// only the slots that differ. lbd calls it before it attaches a
    /// program, as for the filter.
    pub fn sync_vip_cache(&mut self) -> Result<(), MapsError> {
        let vips = self.vips()?;
        for (slot, want) in vip_cache::exact(&vips).into_iter().enumerate() {
            self.update_cached_vip(slot as u32, |_| want)?;
        }
        Ok(())
    }

    pub fn vip(&self, key: &VipKey) -> Result<Option<VipMeta>, MapsError> {
        match self.vips.get(key, 0) {
            Ok(meta) => Ok(Some(meta)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(MapsError::Map {
                name: MAP_VIPS,
                error,
            }),
        }
    }

    /// Remove a VIP: from its cache slot first, then from `VIPS`, then
    /// its filter bit unless another VIP needs it.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapsError> {
        let rest: Vec<VipKey> = self
            .vips
            .keys()
            .filter(|k| k.as_ref().map_or(true, |k| k != key))
            .collect::<Result<_, _>>()
            .map_err(err(MAP_VIPS))?;
        // The VIPs left in its cache slot, with their entries.
        let slot = vip_cache::slot(key);
        let mut here = Vec::new();
        for k in rest.iter().filter(|k| vip_cache::slot(k) == slot) {
            if let Some(meta) = self.vip(k)? {
                here.push((*k, meta));
            }
        }
        let want = vip_cache::content(here.iter().map(|(k, m)| (k, m)));
        self.update_cached_vip(slot, |_| want)?;
        match self.vips.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => {
                return Err(MapsError::Map {
                    name: MAP_VIPS,
                    error,
                });
            }
        }
        if vip_filter::still_needed(key, &rest) {
            return Ok(());
        }
        let (word, mask) = vip_filter::position(key);
        let had = self.vip_filter.get(&word, 0).map_err(err(MAP_VIP_FILTER))?;
        if had & mask != 0 {
            self.vip_filter
                .set(word, had & !mask, 0)
                .map_err(err(MAP_VIP_FILTER))?;
        }
        Ok(())
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapsError> {
        self.backends.set(id, backend, 0).map_err(err(MAP_BACKENDS))
    }

    pub fn backend(&self, id: u32) -> Result<Backend, MapsError> {
        self.backends.get(&id, 0).map_err(err(MAP_BACKENDS))
    }

    /// Make the VIP at `key` serve `ring` (one backend id per slot) with
    /// `flags`: the inactive ring is filled, then one write of the VIP
    /// entry flips it to that ring and sets the flags together.
    pub fn publish_ring(
        &mut self,
        key: &VipKey,
        ring: &[u32],
        flags: u32,
    ) -> Result<(), MapsError> {
        let mut meta = self.vip(key)?.ok_or(MapsError::UnknownVip(*key))?;
        let next = (meta.active_ring + 1) & 1;
        self.fill_ring(meta.vip_id, next, ring)?;
        meta.active_ring = next;
        meta.flags = flags;
        self.set_vip(key, &meta)
    }

    /// Write `ring` into table `table` (0 or 1) of VIP `vip_id`. Only for a
    /// table no VIP entry points at yet; `publish_ring` otherwise.
    pub fn fill_ring(&mut self, vip_id: u32, table: u32, ring: &[u32]) -> Result<(), MapsError> {
        if ring.len() != self.ring_size as usize {
            return Err(MapsError::RingSize {
                got: ring.len(),
                want: self.ring_size,
            });
        }
        self.ring_memory
            .write(ring_index(vip_id, table, 0, self.ring_size), ring)
            .map_err(memory(MAP_RINGS))
    }

    /// Every VIP entry.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, MapsError> {
        self.vips
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err(MAP_VIPS))
    }

    /// Every backend entry in use (flagged active), with its id.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError> {
        let mut out = Vec::new();
        for (id, b) in self.backends.iter().enumerate() {
            let b = b.map_err(err(MAP_BACKENDS))?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                out.push((id as u32, b));
            }
        }
        Ok(out)
    }

    /// The VIP's live ring: the backend id of each slot, read through a
    /// mapping of the ring map (one read, not a syscall per slot).
    pub fn live_ring(&self, meta: &VipMeta) -> Result<Vec<u32>, MapsError> {
        let first = ring_index(meta.vip_id, meta.active_ring, 0, self.ring_size);
        self.ring_memory
            .read(first, self.ring_size as usize)
            .map_err(memory(MAP_RINGS))
    }

    /// The previous owner of each slot of VIP `vip_id`'s ring, with its
    /// expiry, as the program reads them.
    pub fn prev_owners(&self, vip_id: u32) -> Result<Vec<PrevOwner>, MapsError> {
        let bits: Vec<u64> = self
            .prev_owner_memory
            .read(self.prev_owner_first(vip_id), self.ring_size as usize)
            .map_err(memory(MAP_PREV_OWNERS))?;
        Ok(bits.into_iter().map(PrevOwner::from_bits).collect())
    }

    /// Write VIP `vip_id`'s previous owners, one per ring slot. Each slot
    /// is a single aligned 8-byte store: a packet reads a slot's old owner
    /// and expiry or its new ones.
    pub fn set_prev_owners(&mut self, vip_id: u32, owners: &[PrevOwner]) -> Result<(), MapsError> {
        if owners.len() != self.ring_size as usize {
            return Err(MapsError::RingSize {
                got: owners.len(),
                want: self.ring_size,
            });
        }
        let bits: Vec<u64> = owners.iter().map(|o| o.to_bits()).collect();
        self.prev_owner_memory
            .write(self.prev_owner_first(vip_id), &bits)
            .map_err(memory(MAP_PREV_OWNERS))
    }

    /// The `PREV_OWNERS` entry of slot 0 of VIP `vip_id`.
    fn prev_owner_first(&self, vip_id: u32) -> u32 {
        prev_owner_index(vip_id, 0, self.ring_size)
    }

    /// The GUE port of second-chance packets (0: off).
    pub fn second_chance(&self) -> Result<SecondChance, MapsError> {
        self.second_chance
            .get(&0, 0)
            .map_err(err(MAP_SECOND_CHANCE))
    }

    pub fn set_second_chance(&mut self, value: &SecondChance) -> Result<(), MapsError> {
        self.second_chance
            .set(0, value, 0)
            .map_err(err(MAP_SECOND_CHANCE))
    }

    /// The backend id in `slot` of the VIP's live ring.
    pub fn ring_slot(&self, meta: &VipMeta, slot: u32) -> Result<u32, MapsError> {
        let index = ring_index(meta.vip_id, meta.active_ring, slot, self.ring_size);
        self.rings.get(&index, 0).map_err(err(MAP_RINGS))
    }

    pub fn conn(&self, flow: &FlowKey) -> Result<Option<ConnEntry>, MapsError> {
        match self.conns.get(flow, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(MapsError::Map {
                name: MAP_CONNS,
                error,
            }),
        }
    }

    /// The flow's probation entry: it has been seen once.
    pub fn probation_entry(&self, flow: &FlowKey) -> Result<Option<ConnEntry>, MapsError> {
        match self.probation.get(flow, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(MapsError::Map {
                name: MAP_PROBATION,
                error,
            }),
        }
    }

    /// Up to `limit` entries of the connection table, in the kernel's
    /// order (a syscall pair each). Entries that vanish while read (an LRU
    /// eviction) are skipped.
    pub fn conns(&self, limit: usize) -> Result<Vec<(FlowKey, ConnEntry)>, MapsError> {
        Ok(self
            .conns
            .iter()
            .take(limit)
            .filter_map(Result::ok)
            .collect())
    }

    /// Delete every entry of the VIPs `vip_ids` from the connection and
    /// probation tables: one walk of each (a syscall pair per entry, about
    /// a microsecond: a second or two for lbd at the default sizes), then a
    /// deletion per entry found, for the rare switch of a VIP's
    /// `stateless`. Entries that vanish while read are skipped; a walk that
    /// fails is an error, not a partial success. The number deleted.
    pub fn forget_flows_of_vips(&mut self, vip_ids: &BTreeSet<u32>) -> Result<usize, MapsError> {
        let mut forgotten = 0;
        for (table, name) in [
            (&mut self.conns, MAP_CONNS),
            (&mut self.probation, MAP_PROBATION),
        ] {
            let mut doomed = Vec::new();
            for item in table.iter() {
                match item {
                    Ok((key, entry)) if vip_ids.contains(&entry.vip_id) => doomed.push(key),
                    Ok(_) | Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(MapsError::Map { name, error }),
                }
            }
            for key in &doomed {
                forgotten += usize::from(table.remove(key).is_ok());
            }
        }
        Ok(forgotten)
    }

    /// Up to `limit` entries of the probation table, as `conns`.
    pub fn probation_entries(&self, limit: usize) -> Result<Vec<(FlowKey, ConnEntry)>, MapsError> {
        Ok(self
            .probation
            .iter()
            .take(limit)
            .filter_map(Result::ok)
            .collect())
    }

    /// Number of entries in the connection table, counting at most
    /// `limit` (each one is a syscall). Tests use it for exact counts;
    /// `fill` is the cheap way.
    pub fn conn_count(&self, limit: usize) -> usize {
        self.conns.keys().take(limit).filter(|k| k.is_ok()).count()
    }

    /// Number of entries in the probation table, as `conn_count`.
    pub fn probation_count(&self, limit: usize) -> usize {
        self.probation
            .keys()
            .take(limit)
            .filter(|k| k.is_ok())
            .count()
    }

    /// Whether `fill` reads the kernel's element counts (cheap) rather
    /// than walking keys.
    pub fn counts_in_kernel(&self) -> bool {
        self.counters().is_ok()
    }

    fn counters(&self) -> &Result<(ElemCounter, ElemCounter), String> {
        self.counters.get_or_init(|| {
            ElemCounter::new(self.conns.map())
                .and_then(|c| Ok((c, ElemCounter::new(self.probation.map())?)))
                .map_err(|e: ElemCountError| e.to_string())
        })
    }

    /// How full the connection and probation tables are. From the kernel's
    /// element counts (one syscall each) where the kernel has them; else
    /// by walking at most `walk_limit` keys of each (a syscall per key),
    /// and then `exact` is false if a walk stopped at the limit.
    pub fn fill(&self, walk_limit: usize) -> Result<Fill, MapsError> {
        let caps = self.capacities()?;
        let (conns, probation, method) = match self.counters() {
            Ok((c, p)) => match (c.count(), p.count()) {
                (Ok(c), Ok(p)) => (c, p, FillMethod::Kernel),
                (Err(e), _) | (_, Err(e)) => {
                    let (c, p) = self.walk(walk_limit);
                    (c, p, FillMethod::Walk(e.to_string()))
                }
            },
            Err(why) => {
                let (c, p) = self.walk(walk_limit);
                (c, p, FillMethod::Walk(why.clone()))
            }
        };
        let walked = |n: u64| matches!(method, FillMethod::Walk(_)) && n >= walk_limit as u64;
        Ok(Fill {
            exact: !walked(conns) && !walked(probation),
            conns: TableFill {
                entries: conns,
                capacity: caps.conns,
            },
            probation: TableFill {
                entries: probation,
                capacity: caps.probation,
            },
            method,
        })
    }

    fn walk(&self, limit: usize) -> (u64, u64) {
        (
            self.conn_count(limit) as u64,
            self.probation_count(limit) as u64,
        )
    }

    pub fn frag(&self, key: &FragKey) -> Result<Option<FragEntry>, MapsError> {
        match self.frags.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(MapsError::Map {
                name: MAP_FRAGS,
                error,
            }),
        }
    }

    /// Allow redirects to `ifindex`, whose MAC is `mac`. The MAC is written
    /// first: every port the program can redirect to has one.
    pub fn add_tx_port(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), MapsError> {
        let value = PortMac { mac, _pad: [0; 2] };
        self.tx_port_macs
            .insert(ifindex, value, 0)
            .map_err(err(MAP_TX_PORT_MACS))?;
        self.cache_port_mac(ifindex, mac)?;
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| match e {
                XdpMapError::MapError(error) => MapsError::Map {
                    name: MAP_TX_PORTS,
                    error,
                },
                XdpMapError::ChainedProgramNotSupported => MapsError::Unsupported(MAP_TX_PORTS),
            })
    }

    /// Put `ifindex`'s MAC in its `PORT_MAC_CACHE` slot, unless another
    /// port holds the slot (that one's packets keep it; this one's fall
    /// back to `TX_PORT_MACS`). The MAC is written with the slot still
    /// empty, then the ifindex, so no reader pairs one port's ifindex
    /// with another's MAC.
    fn cache_port_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), MapsError> {
        let slot = ifindex % PORT_MAC_CACHE_SLOTS;
        let held = self
            .port_mac_cache
            .get(&slot, 0)
            .map_err(err(MAP_PORT_MAC_CACHE))?;
        if held.ifindex != 0 && held.ifindex != ifindex {
            return Ok(());
        }
        let mut value = CachedPortMac {
            ifindex: 0,
            mac,
            _pad: [0; 2],
        };
        if held.ifindex == ifindex && held.mac == mac {
            return Ok(());
        }
        self.port_mac_cache
            .set(slot, value, 0)
            .map_err(err(MAP_PORT_MAC_CACHE))?;
        value.ifindex = ifindex;
        self.port_mac_cache
            .set(slot, value, 0)
            .map_err(err(MAP_PORT_MAC_CACHE))
    }

    /// Empty `ifindex`'s `PORT_MAC_CACHE` slot if it holds it.
    fn uncache_port_mac(&mut self, ifindex: u32) -> Result<(), MapsError> {
        let slot = ifindex % PORT_MAC_CACHE_SLOTS;
        let held = self
            .port_mac_cache
            .get(&slot, 0)
            .map_err(err(MAP_PORT_MAC_CACHE))?;
        if held.ifindex != ifindex {
            return Ok(());
        }
        self.port_mac_cache
            .set(slot, CachedPortMac::default(), 0)
            .map_err(err(MAP_PORT_MAC_CACHE))
    }

    /// The interfaces redirects may go to, with their MACs (zero for a port
    /// an older lbd added without one).
    pub fn tx_ports(&self) -> Result<Vec<(u32, [u8; 6])>, MapsError> {
        let mut ports = Vec::new();
        for ifindex in self.tx_ports.keys() {
            let ifindex = ifindex.map_err(err(MAP_TX_PORTS))?;
            let mac = match self.tx_port_macs.get(&ifindex, 0) {
                Ok(port) => port.mac,
                Err(MapError::KeyNotFound) => [0; 6],
                Err(error) => {
                    return Err(MapsError::Map {
                        name: MAP_TX_PORT_MACS,
                        error,
                    });
                }
            };
            ports.push((ifindex, mac));
        }
        ports.sort();
        Ok(ports)
    }

    /// Stop redirects to `ifindex`.
    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), MapsError> {
        match self.tx_ports.remove(ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => {
                return Err(MapsError::Map {
                    name: MAP_TX_PORTS,
                    error,
                });
            }
        }
        self.uncache_port_mac(ifindex)?;
        match self.tx_port_macs.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(MapsError::Map {
                name: MAP_TX_PORT_MACS,
                error,
            }),
        }
    }

    /// Accept tunnels addressed to `addr` (on a backend).
    pub fn add_decap_addr(&mut self, addr: std::net::IpAddr) -> Result<(), MapsError> {
        let (bytes, family) = crate::addr::to_map(addr);
        let key = DecapAddr {
            addr: bytes,
            family,
            _pad: [0; 3],
        };
        self.decap_addrs
            .insert(key, 1, 0)
            .map_err(err(MAP_DECAP_ADDRS))
    }

    /// The addresses tunnels are accepted for (on a backend).
    pub fn decap_addrs(&self) -> Result<Vec<std::net::IpAddr>, MapsError> {
        let mut addrs = Vec::new();
        for key in self.decap_addrs.keys() {
            let key = key.map_err(err(MAP_DECAP_ADDRS))?;
            addrs.extend(crate::addr::from_map(&key.addr, key.family));
        }
        addrs.sort();
        Ok(addrs)
    }

    /// Stop accepting tunnels addressed to `addr`.
    pub fn remove_decap_addr(&mut self, addr: std::net::IpAddr) -> Result<(), MapsError> {
        let (bytes, family) = crate::addr::to_map(addr);
        let key = DecapAddr {
            addr: bytes,
            family,
            _pad: [0; 3],
        };
        match self.decap_addrs.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(MapsError::Map {
                name: MAP_DECAP_ADDRS,
                error,
            }),
        }
    }

    /// Accept tunnels only from `sources` (or from anywhere), replacing the
    /// previous set. A packet in flight meets the old set, the new one, or
    /// their union, never less than both: new prefixes go in before stale
    /// ones come out, and "any" is set before the prefixes are removed and
    /// cleared after they are written. Only if old and new together
    /// overflow the map do stale prefixes go first.
    pub fn set_decap_sources(&mut self, sources: &DecapSources) -> Result<(), MapsError> {
        let any = |maps: &mut Self, on: bool| {
            let flags = if on { DECAP_F_ANY_SOURCE } else { 0 };
            maps.decap_config
                .set(0, DecapConfig { flags }, 0)
                .map_err(err(MAP_DECAP_CONFIG))
        };
        let new: Vec<IpNet> = match sources {
            DecapSources::Any => {
                any(self, true)?;
                Vec::new()
            }
            DecapSources::Only(nets) => nets.clone(),
        };
        let stale = Prefixes {
            trie: &mut self.decap_sources,
            name: MAP_DECAP_SOURCES,
        }
        .replace_adding(&new)?;
        if let DecapSources::Only(_) = sources {
            any(self, false)?;
        }
        Prefixes {
            trie: &mut self.decap_sources,
            name: MAP_DECAP_SOURCES,
        }
        .remove(&stale)
    }

    /// The outer sources tunnels are accepted from.
    pub fn decap_sources(&self) -> Result<DecapSources, MapsError> {
        let config = self
            .decap_config
            .get(&0, 0)
            .map_err(err(MAP_DECAP_CONFIG))?;
        if config.flags & DECAP_F_ANY_SOURCE != 0 {
            return Ok(DecapSources::Any);
        }
        Ok(DecapSources::Only(nets_of(
            &self.decap_sources,
            MAP_DECAP_SOURCES,
        )?))
    }

    /// Send second hops on only to `peers` (the other backends), and take
    /// GUE from them, replacing the previous set the way
    /// `set_decap_sources` does.
    pub fn set_decap_peers(&mut self, peers: &[IpNet]) -> Result<(), MapsError> {
        let mut trie = Prefixes {
            trie: &mut self.decap_peers,
            name: MAP_DECAP_PEERS,
        };
        let stale = trie.replace_adding(peers)?;
        trie.remove(&stale)
    }

    /// The peers second hops may be sent on to.
    pub fn decap_peers(&self) -> Result<Vec<IpNet>, MapsError> {
        nets_of(&self.decap_peers, MAP_DECAP_PEERS)
    }

    /// Sum over CPUs of the counter for `reason`.
    pub fn reason_count(&self, reason: Reason) -> Result<u64, MapsError> {
        let values = self
            .global_stats
            .get(&(reason as u32), 0)
            .map_err(err(MAP_GLOBAL_STATS))?;
        Ok(values.iter().sum())
    }

    /// Rows of the decap counter map: fewer than `DecapReason::ALL` when it
    /// was pinned by an older release and not grown yet (`lb-decap attach`
    /// grows it).
    pub fn decap_counter_rows(&self) -> Result<u32, MapsError> {
        self.decap_stats
            .map()
            .info()
            .map(|i| i.max_entries())
            .map_err(err(MAP_DECAP_STATS))
    }

    pub fn decap_count(&self, reason: DecapReason) -> Result<u64, MapsError> {
        let values = self
            .decap_stats
            .get(&(reason as u32), 0)
            .map_err(err(MAP_DECAP_STATS))?;
        Ok(values.iter().sum())
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<FlowStats, MapsError> {
        let values = self.vip_stats.get(&vip_id, 0).map_err(err(MAP_VIP_STATS))?;
        Ok(sum(&values))
    }

    /// Zero VIP `vip_id`'s counters on every CPU. For an id about to be
    /// given to a VIP: it must not start with what its last owner counted.
    pub fn clear_vip_stats(&mut self, vip_id: u32) -> Result<(), MapsError> {
        clear(&mut self.vip_stats, MAP_VIP_STATS, vip_id)
    }

    /// Zero backend `backend_id`'s counters on every CPU (see
    /// `clear_vip_stats`).
    pub fn clear_backend_stats(&mut self, backend_id: u32) -> Result<(), MapsError> {
        clear(&mut self.backend_stats, MAP_BACKEND_STATS, backend_id)
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<FlowStats, MapsError> {
        let values = self
            .backend_stats
            .get(&backend_id, 0)
            .map_err(err(MAP_BACKEND_STATS))?;
        Ok(sum(&values))
    }

    /// Backend `backend_id`'s connection-table events, summed over CPUs.
    pub fn backend_flows(&self, backend_id: u32) -> Result<FlowEvents, MapsError> {
        let values = self
            .backend_flows
            .get(&backend_id, 0)
            .map_err(err(MAP_BACKEND_FLOWS))?;
        Ok(values
            .iter()
            .fold(FlowEvents::default(), |acc, e| FlowEvents {
                opened: acc.opened + e.opened,
                closed: acc.closed + e.closed,
            }))
    }

    /// Zero backend `backend_id`'s connection-table events (see
    /// `clear_vip_stats`).
    pub fn clear_backend_flows(&mut self, backend_id: u32) -> Result<(), MapsError> {
        clear(&mut self.backend_flows, MAP_BACKEND_FLOWS, backend_id)
    }
}

/// An LPM trie of address prefixes (`DECAP_SOURCES`, `DECAP_PEERS`).
struct Prefixes<'a> {
    trie: &'a mut LpmTrie<MapData, DecapSource, u32>,
    name: &'static str,
}

impl Prefixes<'_> {
    /// Put `nets` in, keeping what else is there unless old and new
    /// together overflow the map (then what is stale goes first). The
    /// stale keys still in: a packet in flight meets the old set, the new
    /// one, or their union, never less than both.
    fn replace_adding(&mut self, nets: &[IpNet]) -> Result<Vec<(u32, DecapSource)>, MapsError> {
        let old = keys_of(self.trie, self.name)?;
        let mut new: Vec<(u32, DecapSource)> = nets.iter().map(decap_sources::to_key).collect();
        new.sort_by_key(|(bits, data)| (*bits, data.family, data.addr));
        new.dedup();
        let stale: Vec<(u32, DecapSource)> = old.into_iter().filter(|k| !new.contains(k)).collect();
        let max = self
            .trie
            .map()
            .info()
            .map_err(err(self.name))?
            .max_entries();
        if new.len() > max as usize {
            return Err(MapsError::TooManyPrefixes {
                name: self.name,
                got: new.len(),
                max,
            });
        }
        let stale_first = new.len() + stale.len() > max as usize;
        if stale_first {
            self.remove(&stale)?;
        }
        for (bits, data) in &new {
            self.trie
                .insert(&Key::new(*bits, *data), 1, 0)
                .map_err(err(self.name))?;
        }
        Ok(if stale_first { Vec::new() } else { stale })
    }

    fn remove(&mut self, keys: &[(u32, DecapSource)]) -> Result<(), MapsError> {
        for (bits, data) in keys {
            match self.trie.remove(&Key::new(*bits, *data)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => {
                    return Err(MapsError::Map {
                        name: self.name,
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

fn keys_of(
    trie: &LpmTrie<MapData, DecapSource, u32>,
    name: &'static str,
) -> Result<Vec<(u32, DecapSource)>, MapsError> {
    trie.keys()
        .map(|k| k.map(|k| (k.prefix_len(), k.data())))
        .collect::<Result<_, _>>()
        .map_err(err(name))
}

/// The prefixes in `trie`, sorted.
fn nets_of(
    trie: &LpmTrie<MapData, DecapSource, u32>,
    name: &'static str,
) -> Result<Vec<IpNet>, MapsError> {
    let mut nets: Vec<IpNet> = keys_of(trie, name)?
        .iter()
        .filter_map(|(bits, data)| decap_sources::from_key(*bits, data))
        .collect();
    nets.sort();
    Ok(nets)
}

/// What the maps were created to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub vips: u32,
    pub backends: u32,
    pub conns: u32,
    pub probation: u32,
}

/// Entries in one table, and how many it can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFill {
    pub entries: u64,
    pub capacity: u32,
}

impl TableFill {
    /// Entries per capacity, 0 to 1 (an LRU table never holds more).
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }
}

/// How the entries were counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FillMethod {
    /// The kernel's per-map element count.
    Kernel,
    /// A walk over the keys, bounded; why the kernel's count was not used.
    Walk(String),
}

/// How full the connection and probation tables are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub conns: TableFill,
    pub probation: TableFill,
    /// False when a bounded walk stopped before the end of a table.
    pub exact: bool,
    pub method: FillMethod,
}

fn clear<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    index: u32,
) -> Result<(), MapsError> {
    let per_cpu = |error| MapsError::PerCpu { name, error };
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| per_cpu(error))?;
    let zero = PerCpuValues::try_from(vec![T::default(); cpus]).map_err(per_cpu)?;
    map.set(index, zero, 0).map_err(err(name))
}

fn sum(values: &PerCpuValues<FlowStats>) -> FlowStats {
    values
        .iter()
        .fold(FlowStats::default(), |acc, s| FlowStats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            new_flows: acc.new_flows + s.new_flows,
            dropped: acc.dropped + s.dropped,
        })
}
