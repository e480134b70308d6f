//! Kernel memory of the maps at the default sizes, and what that makes per
//! connection-table entry, per probation entry and per VIP (a flow of a
//! stateless VIP has no entry). The figures
//! are the kernel's own accounting of each map (`memlock` in its fdinfo),
//! which counts preallocated elements, hash buckets and per-CPU copies.

use std::collections::BTreeMap;

use lb_common::maps::*;
use lb_userspace::datapath::{Datapath, MapSizes};
use serde_json::{Value, json};

/// One map as the kernel accounts for it.
#[derive(Clone, Copy, Debug)]
pub struct MapMemory {
    pub bytes: u64,
    pub max_entries: u64,
}

/// Kernel memory (memlock) and entries of each map at the default sizes,
/// from fdinfo.
pub fn map_memory() -> BTreeMap<String, MapMemory> {
    let dp = Datapath::load(MapSizes::default()).expect("load");
    let mut out = BTreeMap::new();
    for (name, map) in dp.ebpf.maps() {
        if let (Some(bytes), Some(max_entries)) =
            (fdinfo(map, "memlock:"), fdinfo(map, "max_entries:"))
        {
            out.insert(name.to_string(), MapMemory { bytes, max_entries });
        }
    }
    out
}

/// The kernel's memory for `map`.
pub fn memlock(map: &aya::maps::Map) -> Option<u64> {
    fdinfo(map, "memlock:")
}

/// A number from the map's fdinfo; none for map kinds not read here.
fn fdinfo(map: &aya::maps::Map, key: &str) -> Option<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match map {
        aya::maps::Map::Array(m)
        | aya::maps::Map::PerCpuArray(m)
        | aya::maps::Map::HashMap(m)
        | aya::maps::Map::LruHashMap(m)
        | aya::maps::Map::DevMapHash(m) => m.fd().as_fd().as_raw_fd(),
        _ => return None,
    };
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// Maps with one share per VIP (`DEFAULT_MAX_VIPS` of them): its two
/// rings, its ring slots' previous owners, its per-CPU counters, its key.
const PER_VIP: [&str; 4] = [MAP_RINGS, MAP_PREV_OWNERS, MAP_VIP_STATS, MAP_VIPS];

/// Bytes per connection-table entry, per probation entry and per VIP,
/// each with the maps and divisor it comes from.
pub fn per_entry(memory: &BTreeMap<String, MapMemory>) -> Value {
    let per_entry = |name: &str| {
        let m = &memory[name];
        json!({
            "bytes": m.bytes as f64 / m.max_entries as f64,
            "map_bytes": m.bytes,
            "entries": m.max_entries,
        })
    };
    let vips = u64::from(DEFAULT_MAX_VIPS);
    let parts: BTreeMap<&str, f64> = PER_VIP
        .iter()
        .map(|name| (*name, memory[*name].bytes as f64 / vips as f64))
        .collect();
    json!({
        "connection_entry": per_entry(MAP_CONNS),
        "probation_entry": per_entry(MAP_PROBATION),
        // The ring alone places its packets: nothing per flow.
        "stateless_flow": {"bytes": 0},
        "vip": {
            "bytes": parts.values().sum::<f64>(),
            "vips": vips,
            "parts": parts,
        },
    })
}
