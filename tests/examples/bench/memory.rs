//! Kernel memory of the maps at the default sizes.

use std::collections::BTreeMap;

use lb_userspace::datapath::{Datapath, MapSizes};

/// Kernel memory (memlock) of each map at the default sizes, from fdinfo.
pub fn map_memory() -> BTreeMap<String, u64> {
    let dp = Datapath::load(MapSizes::default()).expect("load");
    let mut out = BTreeMap::new();
    for (name, map) in dp.ebpf.maps() {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = match map {
            aya::maps::Map::Array(m)
            | aya::maps::Map::PerCpuArray(m)
            | aya::maps::Map::HashMap(m)
            | aya::maps::Map::LruHashMap(m)
            | aya::maps::Map::DevMapHash(m) => m.fd().as_fd().as_raw_fd(),
            _ => continue,
        };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        if let Some(bytes) = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
        {
            out.insert(name.to_string(), bytes);
        }
    }
    out
}
