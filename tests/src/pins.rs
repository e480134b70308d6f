//! Pin directories as another release would leave them, for the tests of
//! adopting pinned maps: a pin replaced by a map of another shape, counts
//! read straight from a pinned counter map, and what every pin holds (to
//! show that a refusal changed nothing).

use std::{collections::BTreeMap, path::Path};

use aya::{
    maps::{Map, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::links::{FdLink, PinnedLink},
};
use lb_userspace::layout::MapShape;

/// Pin at `path` a new, empty map of `shape`, named like the pin, in place
/// of the map pinned there (which a running program keeps using). Returns
/// that map, so the test can put it back with `restore`.
pub fn replace(path: &Path, shape: MapShape) -> MapData {
    let before = MapData::from_pin(path).expect("pinned map");
    let name = path.file_name().unwrap().to_str().unwrap();
    let def = aya_obj::Map::new_from_params(
        shape.map_type,
        shape.key_size,
        shape.value_size,
        shape.max_entries,
        shape.flags,
    );
    let map = MapData::create(def, name, None).expect("create a map");
    std::fs::remove_file(path).expect("unpin");
    map.pin(path).expect("pin the replacement");
    before
}

/// Pin at `path`, where nothing is pinned, a new, empty map of `shape`, as
/// a release that had such a map would have left it.
pub fn create(path: &Path, shape: MapShape) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let def = aya_obj::Map::new_from_params(
        shape.map_type,
        shape.key_size,
        shape.value_size,
        shape.max_entries,
        shape.flags,
    );
    let map = MapData::create(def, name, None).expect("create a map");
    map.pin(path).expect("pin");
}

/// Pin `map` at `path` again, in place of whatever is there.
pub fn restore(path: &Path, map: &MapData) {
    std::fs::remove_file(path).expect("unpin");
    map.pin(path).expect("pin");
}

/// The shape of the map pinned at `path`.
pub fn shape(path: &Path) -> MapShape {
    let info = MapInfo::from_pin(path).expect("pinned map");
    MapShape {
        map_type: info.map_type().expect("map type") as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        flags: info.map_flags(),
        max_entries: info.max_entries(),
    }
}

/// A per-CPU `u64` counter map, opened from its pin.
pub fn counters(path: &Path) -> PerCpuArray<MapData, u64> {
    let map = MapData::from_pin(path).expect("pinned counter map");
    PerCpuArray::try_from(Map::PerCpuArray(map)).expect("a per-CPU u64 array")
}

/// Counter `index` of the pinned counter map at `path`, summed over CPUs.
pub fn count(path: &Path, index: u32) -> u64 {
    counters(path).get(&index, 0).expect("counter").iter().sum()
}

/// Set counter `index` to `per_cpu[i]` on CPU i (0 on the others).
pub fn set_count(map: &mut PerCpuArray<MapData, u64>, index: u32, per_cpu: &[u64]) {
    let cpus = aya::util::nr_cpus().expect("CPU count");
    let values: Vec<u64> = (0..cpus)
        .map(|i| per_cpu.get(i).copied().unwrap_or(0))
        .collect();
    let values = PerCpuValues::try_from(values).expect("per-CPU values");
    map.set(index, values, 0).expect("set counter");
}

/// Every pin in `dir` and the kernel object it holds: a map's id, or a
/// link's id and its program's id.
pub fn objects(dir: &Path) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("pin dir") {
        let path = entry.expect("pin").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let ids = match MapInfo::from_pin(&path) {
            Ok(info) => (info.id(), 0),
            Err(_) => {
                let link = FdLink::from(PinnedLink::from_pin(&path).expect("a map or a link"));
                let info = link.info().expect("link info");
                (info.id(), info.program_id())
            }
        };
        out.insert(name, ids);
    }
    out
}

/// The pinned connection table or probation table `name` under `pin_dir`.
fn flow_table(
    pin_dir: &Path,
    name: &str,
) -> aya::maps::HashMap<MapData, lb_common::FlowKey, lb_common::maps::ConnEntry> {
    let map = MapData::from_pin(pin_dir.join(name)).expect("pinned table");
    aya::maps::HashMap::try_from(Map::LruHashMap(map)).expect("an LRU hash of flows")
}

/// Every entry of the pinned connection and probation tables under
/// `pin_dir`, with the name of the table that holds it.
pub fn flows(
    pin_dir: &Path,
) -> Vec<(&'static str, lb_common::FlowKey, lb_common::maps::ConnEntry)> {
    use lb_common::maps::{MAP_CONNS, MAP_PROBATION};
    [MAP_CONNS, MAP_PROBATION]
        .into_iter()
        .flat_map(|name| {
            flow_table(pin_dir, name)
                .iter()
                .map(|e| {
                    let (k, v) = e.expect("entry");
                    (name, k, v)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Write `entry` for `key` into the pinned connection table under
/// `pin_dir`: an entry the data plane did not make (one a failed walk or an
/// older lbd left behind).
pub fn put_conn(pin_dir: &Path, key: &lb_common::FlowKey, entry: &lb_common::maps::ConnEntry) {
    flow_table(pin_dir, lb_common::maps::MAP_CONNS)
        .insert(key, entry, 0)
        .expect("insert a connection entry");
}

/// Delete every entry of the pinned connection and probation tables under
/// `pin_dir`: as if the flows had come to an LB node that never saw them.
/// How many entries went.
pub fn forget_flows(pin_dir: &Path) -> usize {
    use lb_common::maps::{MAP_CONNS, MAP_PROBATION};
    let mut gone = 0;
    for name in [MAP_CONNS, MAP_PROBATION] {
        let mut table = flow_table(pin_dir, name);
        let keys: Vec<lb_common::FlowKey> = table.keys().map(|k| k.expect("key")).collect();
        for k in keys {
            if table.remove(&k).is_ok() {
                gone += 1;
            }
        }
    }
    gone
}
