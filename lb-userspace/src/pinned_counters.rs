//! Counter maps pinned by an older release have one row per reason that
//! release knew; a new reason's row is past their end, so its packets would
//! go uncounted and reading it would fail. Before loading, such a map is
//! unpinned (its counts kept in memory) so the loader creates and pins one
//! with every row; the counts are then written back into it. The old
//! program keeps counting into the old map until it is swapped out, so
//! the packets of that short window are not carried over.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
};
use lb_common::{
    maps::{MAP_DECAP_STATS, MAP_GLOBAL_STATS},
    stats::{DECAP_REASON_COUNT, REASON_COUNT},
};

use crate::errors::chain;

/// Per-CPU `u64` counter arrays indexed by a reason, with the rows this
/// build counts.
const COUNTER_MAPS: [(&str, u32); 2] = [
    (MAP_GLOBAL_STATS, REASON_COUNT),
    (MAP_DECAP_STATS, DECAP_REASON_COUNT),
];

#[derive(Debug, thiserror::Error)]
#[error("growing the pinned counter map {name}: {reason}")]
pub struct GrowError {
    pub name: &'static str,
    pub reason: String,
}

/// A too-short counter map taken out of the pin directory.
pub struct Unpinned {
    name: &'static str,
    old: Map,
    counts: Vec<PerCpuValues<u64>>,
}

/// Unpin every counter map under `pin_dir` that has fewer rows than this
/// build counts, keeping its counts.
pub fn unpin_short(pin_dir: &Path) -> Result<Vec<Unpinned>, GrowError> {
    let mut out = Vec::new();
    for (name, rows) in COUNTER_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let fail = |reason: String| GrowError { name, reason };
        let data = MapData::from_pin(&path).map_err(|e| fail(chain(&e)))?;
        let have = data.info().map_err(|e| fail(chain(&e)))?.max_entries();
        if have >= rows {
            continue;
        }
        let old = Map::from_map_data(data).map_err(|e| fail(chain(&e)))?;
        let counts = {
            let array: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(&old).map_err(|e| fail(chain(&e)))?;
            (0..have)
                .map(|i| array.get(&i, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(chain(&e)))?
        };
        std::fs::remove_file(&path)
            .map_err(|e| fail(format!("removing {}: {e}", path.display())))?;
        out.push(Unpinned { name, old, counts });
    }
    Ok(out)
}

/// The load failed: pin the old maps back where they were.
pub fn put_back(unpinned: Vec<Unpinned>, pin_dir: &Path) {
    for u in unpinned {
        let _ = u.old.pin(pin_dir.join(u.name));
    }
}

/// Write the carried counts into the maps of `ebpf`, which were created
/// (and pinned) with every row.
pub fn carry_over(ebpf: &mut Ebpf, unpinned: Vec<Unpinned>) -> Result<(), GrowError> {
    for u in unpinned {
        let fail = |reason: String| GrowError {
            name: u.name,
            reason,
        };
        let map: &mut Map = ebpf
            .map_mut(u.name)
            .ok_or_else(|| fail("missing from the eBPF object".into()))?;
        let mut array: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| fail(chain(&e)))?;
        for (i, values) in u.counts.into_iter().enumerate() {
            array
                .set(i as u32, values, 0)
                .map_err(|e| fail(chain(&e)))?;
        }
    }
    Ok(())
}
