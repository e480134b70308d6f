//! Typed handles on the data plane's maps, and the only code that writes
//! them. Rings are published by filling the VIP's inactive ring and then
//! flipping its `active_ring`, so a packet sees either the old ring or the
//! new one, never a mix.

use crate::{errors::chain, ring_memory::RingMemory};
use aya::{
    Ebpf,
    maps::{
        Array, DevMapHash, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        xdp::XdpMapError,
    },
};
use lb_common::{FlowKey, Reason, flow::ring_index, maps::*, stats::DecapReason};

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
    #[error("map RINGS: {0}")]
    RingMemory(crate::ring_memory::RingMemoryError),
    #[error("ring has {got} slots, the data plane was loaded with {want}")]
    RingSize { got: usize, want: u32 },
    #[error("map {name}: {error}")]
    PerCpu {
        name: &'static str,
        error: std::io::Error,
    },
}

impl From<crate::ring_memory::RingMemoryError> for MapsError {
    fn from(e: crate::ring_memory::RingMemoryError) -> Self {
        Self::RingMemory(e)
    }
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
    vips: HashMap<MapData, VipKey, VipMeta>,
    backends: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    ring_memory: RingMemory,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    frags: HashMap<MapData, FragKey, FragEntry>,
    global_stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, FlowStats>,
    backend_stats: PerCpuArray<MapData, FlowStats>,
    tx_ports: DevMapHash<MapData>,
    decap_addrs: HashMap<MapData, DecapAddr, u32>,
    decap_stats: PerCpuArray<MapData, u64>,
    ring_size: u32,
}

impl Maps {
    /// Take the maps out of `ebpf` (the programs stay there).
    pub fn take(ebpf: &mut Ebpf, ring_size: u32) -> Result<Self, MapsError> {
        let rings: Array<MapData, u32> = take(ebpf, MAP_RINGS)?;
        let ring_memory = RingMemory::new(rings.map())?;
        Ok(Self {
            config: take(ebpf, MAP_CONFIG)?,
            vips: take(ebpf, MAP_VIPS)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            rings,
            ring_memory,
            conns: take(ebpf, MAP_CONNS)?,
            frags: take(ebpf, MAP_FRAGS)?,
            global_stats: take(ebpf, MAP_GLOBAL_STATS)?,
            vip_stats: take(ebpf, MAP_VIP_STATS)?,
            backend_stats: take(ebpf, MAP_BACKEND_STATS)?,
            tx_ports: take(ebpf, MAP_TX_PORTS)?,
            decap_addrs: take(ebpf, MAP_DECAP_ADDRS)?,
            decap_stats: take(ebpf, MAP_DECAP_STATS)?,
            ring_size,
        })
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Write the global configuration. With `ring_size` non-zero this turns
    /// forwarding on.
    pub fn set_config(&mut self, config: &LbConfig) -> Result<(), MapsError> {
        self.config.set(0, config, 0).map_err(err(MAP_CONFIG))
    }

    pub fn config(&self) -> Result<LbConfig, MapsError> {
        self.config.get(&0, 0).map_err(err(MAP_CONFIG))
    }

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapsError> {
        self.vips.insert(key, meta, 0).map_err(err(MAP_VIPS))
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

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapsError> {
        match self.vips.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(MapsError::Map {
                name: MAP_VIPS,
                error,
            }),
        }
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
            .write(ring_index(vip_id, table, 0, self.ring_size), ring)?;
        Ok(())
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

    /// Number of entries in the connection table, counting at most
    /// `limit` (each one is a syscall).
    pub fn conn_count(&self, limit: usize) -> usize {
        self.conns.keys().take(limit).filter(|k| k.is_ok()).count()
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

    /// Allow redirects to `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), MapsError> {
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

    /// Sum over CPUs of the counter for `reason`.
    pub fn reason_count(&self, reason: Reason) -> Result<u64, MapsError> {
        count(&self.global_stats, MAP_GLOBAL_STATS, reason as u32)
    }

    pub fn decap_count(&self, reason: DecapReason) -> Result<u64, MapsError> {
        count(&self.decap_stats, MAP_DECAP_STATS, reason as u32)
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
}

/// Counter `index` of a per-reason counter map, summed over CPUs. A map
/// adopted without migration (`Adopt::Inspect`) may predate the reason: it
/// has no such counter, and no packet was counted under it.
fn count(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    index: u32,
) -> Result<u64, MapsError> {
    match map.get(&index, 0) {
        Ok(values) => Ok(values.iter().sum()),
        Err(MapError::KeyNotFound) => Ok(0),
        Err(error) => Err(MapsError::Map { name, error }),
    }
}

fn clear(
    map: &mut PerCpuArray<MapData, FlowStats>,
    name: &'static str,
    index: u32,
) -> Result<(), MapsError> {
    let per_cpu = |error| MapsError::PerCpu { name, error };
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| per_cpu(error))?;
    let zero = PerCpuValues::try_from(vec![FlowStats::default(); cpus]).map_err(per_cpu)?;
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
