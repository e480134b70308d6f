//! Whether the maps an earlier lbd or lb-decap pinned fit this binary,
//! decided before anything is loaded.
//!
//! aya adopts a pinned map as it finds it (`EbpfLoader::map_pin_path`
//! compares nothing), so a release whose key or value layout differs would
//! misread the maps without a word. So each pinned map is first compared
//! with this binary's own definition of it, from the embedded eBPF object:
//! type, key size, value size, flags, and the number of entries where the
//! configuration does not set it (lbd compares those itself, naming the
//! `tables` setting). The pin directory also records the layout version
//! of the binary that last adopted it (`LAYOUT_VERSION`).
//!
//! The answer is a [`Plan`]: adopt, after the migrations it lists, or a
//! refusal that names every difference and what to do. Checking writes
//! nothing; the migrations run just before the programs are loaded (they
//! then take the new maps), and the version is recorded once they loaded.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapError, MapInfo, MapType, PerCpuArray};
use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_map_type};
use lb_common::maps::*;

use crate::errors::chain;

/// Who adopts the pins, for messages: the program, and how its user starts
/// over with fresh maps.
#[derive(Clone, Copy, Debug)]
pub struct PinOwner {
    pub program: &'static str,
    pub start_over: &'static str,
}

impl PinOwner {
    pub const LBD: Self = Self {
        program: "lbd",
        start_over: "`lbd --teardown` first (drops connections)",
    };
    pub const LB_DECAP: Self = Self {
        program: "lb-decap",
        start_over: "`lb-decap detach` from every interface first (tunnels go undecoded until the next attach)",
    };
}

/// A cause is part of the message and is not also returned from
/// `source()` (see `crate::errors`).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{}: run the {} version that pinned them, or {}",
        .differences.join("; "), .owner.program, .owner.start_over
    )]
    Incompatible {
        differences: Vec<String>,
        owner: PinOwner,
    },
    #[error(
        "the pinned maps have layout version {pinned}, newer than this {program}'s {ours}: \
         they were pinned by a newer {program} (a downgrade past a layout change); run that \
         version or a newer one, or {start_over}",
        program = .owner.program, ours = LAYOUT_VERSION, start_over = .owner.start_over
    )]
    Newer { pinned: u32, owner: PinOwner },
    #[error("pinned map {name}: {}", chain(.error))]
    Map { name: String, error: MapError },
    #[error("pinning {}: {}", .path.display(), chain(.error))]
    Pin {
        path: PathBuf,
        error: aya::pin::PinError,
    },
    #[error("replacing {}: {error}", .path.display())]
    Replace {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What must match for a pinned map to be reused: the map as the kernel
/// describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    pub max_entries: u32,
}

impl MapShape {
    pub fn of_definition(def: &aya_obj::Map) -> Self {
        Self {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            flags: def.map_flags(),
            max_entries: def.max_entries(),
        }
    }

    fn of_pin(path: &Path, name: &str) -> Result<Self, LayoutError> {
        let err = |error| LayoutError::Map {
            name: name.to_string(),
            error,
        };
        let info = MapInfo::from_pin(path).map_err(err)?;
        let mut flags = info.map_flags();
        let map_type = info.map_type().map_err(err)? as u32;
        // The kernel makes device maps read-only to programs by itself.
        if matches!(
            map_type_of(map_type),
            Some(MapType::DevMap | MapType::DevMapHash)
        ) {
            flags &= !BPF_F_RDONLY_PROG;
        }
        Ok(Self {
            map_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            flags,
            max_entries: info.max_entries(),
        })
    }
}

fn map_type_of(raw: u32) -> Option<MapType> {
    bpf_map_type::try_from(raw)
        .ok()
        .and_then(|t| MapType::try_from(t).ok())
}

fn type_name(raw: u32) -> String {
    map_type_of(raw).map_or_else(|| format!("#{raw}"), |t| format!("{t:?}"))
}

/// How a map's number of entries is decided, and so which a pinned map
/// may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// By this binary: equal, or the map does not fit.
    Fixed,
    /// By the configuration (`tables`): lbd compares these itself, naming
    /// the setting.
    Configured,
    /// One per row of a reason table, which only grows at its end: a
    /// smaller pinned map is grown (its counts copied), a larger one, left
    /// by a newer binary, is reused as it is.
    PerReason,
    /// The configuration's slots (`CONFIG_SLOTS`): layout 1 had one, which
    /// grows to this binary's slots with its entry kept.
    ConfigSlots,
}

pub fn entries_of(name: &str) -> Entries {
    match name {
        MAP_VIPS | MAP_VIP_STATS | MAP_BACKENDS | MAP_BACKEND_STATS | MAP_BACKEND_FLOWS
        | MAP_RINGS | MAP_CONNS | MAP_PROBATION | MAP_PREV_OWNERS => Entries::Configured,
        MAP_GLOBAL_STATS | MAP_DECAP_STATS => Entries::PerReason,
        MAP_CONFIG => Entries::ConfigSlots,
        _ => Entries::Fixed,
    }
}

/// What reusing pinned map `name` of shape `pinned` takes, where this
/// binary defines it as `wanted`.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    Reuse,
    Grow,
    /// One clause per difference.
    Differs(Vec<String>),
}

pub fn fit(name: &str, pinned: &MapShape, wanted: &MapShape, program: &str) -> Fit {
    let mut differences = Vec::new();
    let mut differ = |what: &str, have: String, need: String| {
        differences.push(format!(
            "pinned map {name}: {what} {have}, this {program} needs {need}"
        ));
    };
    if pinned.map_type != wanted.map_type {
        differ(
            "type",
            type_name(pinned.map_type),
            type_name(wanted.map_type),
        );
    }
    if pinned.key_size != wanted.key_size {
        differ(
            "key size",
            pinned.key_size.to_string(),
            wanted.key_size.to_string(),
        );
    }
    if pinned.value_size != wanted.value_size {
        differ(
            "value size",
            pinned.value_size.to_string(),
            wanted.value_size.to_string(),
        );
    }
    if pinned.flags != wanted.flags {
        differ(
            "flags",
            format!("{:#x}", pinned.flags),
            format!("{:#x}", wanted.flags),
        );
    }
    let entries = entries_of(name);
    let grows = match entries {
        Entries::PerReason => pinned.max_entries < wanted.max_entries,
        Entries::ConfigSlots => pinned.max_entries == 1 && wanted.max_entries > 1,
        Entries::Fixed | Entries::Configured => false,
    };
    let size_differs = match entries {
        Entries::Fixed => pinned.max_entries != wanted.max_entries,
        Entries::ConfigSlots => !grows && pinned.max_entries != wanted.max_entries,
        Entries::PerReason | Entries::Configured => false,
    };
    if size_differs {
        differ(
            "max_entries",
            pinned.max_entries.to_string(),
            wanted.max_entries.to_string(),
        );
    }
    if !differences.is_empty() {
        return Fit::Differs(differences);
    }
    if grows {
        return Fit::Grow;
    }
    Fit::Reuse
}

/// A change made to a pinned map before this binary adopts it.
#[derive(Clone, Debug)]
pub enum Migration {
    /// A counter map indexed by reason grows to this binary's reasons: a
    /// new map, the old counts copied, pinned in the old one's place.
    GrowCounters {
        name: &'static str,
        from: u32,
        to: aya_obj::Map,
    },
    /// Layout 1's one-slot configuration map grows to `CONFIG_SLOTS`
    /// slots, its entry in slot 0 (the live one while `CONFIG_ACTIVE` is
    /// new, or 0).
    GrowConfigSlots {
        name: &'static str,
        to: aya_obj::Map,
    },
    /// Layout 2's `PREV_OWNERS` (a bare owner per slot, two slots to an
    /// entry, one expiry per VIP in `PREV_OWNERS_UNTIL`), which only
    /// pre-release builds pinned, is unpinned with `PREV_OWNERS_UNTIL`:
    /// the programs then make `PREV_OWNERS` anew, empty. Its values would
    /// read as other slots' owners, so nothing is carried over: flows on
    /// slots that moved within the window lose their second hop.
    ForgetPrevOwners,
}

/// The pin name of layout 2's per-VIP expiry map, gone since layout 3.
pub const LAYOUT_2_PREV_OWNERS_UNTIL: &str = "PREV_OWNERS_UNTIL";

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GrowCounters { name, from, to } => write!(
                f,
                "{name}: grown from {from} to {} counters, counts kept",
                to.max_entries()
            ),
            Self::GrowConfigSlots { name, to } => write!(
                f,
                "{name}: grown to {} slots, the configuration kept",
                to.max_entries()
            ),
            Self::ForgetPrevOwners => write!(
                f,
                "{MAP_PREV_OWNERS}: a pre-release layout (one expiry per VIP), made anew \
                 with an expiry per slot; the previous owners it held are forgotten"
            ),
        }
    }
}

/// What adopting a pin directory takes.
#[derive(Debug)]
pub struct Plan {
    pin_dir: PathBuf,
    /// The pins' layout version; `None` when nothing is pinned yet.
    pinned_version: Option<u32>,
    pub migrations: Vec<Migration>,
}

/// Compare what is pinned in `pin_dir` with `wanted` (each pinned map's
/// name and this binary's definition of it, sized as it would create it).
/// Reads only.
pub fn check(
    pin_dir: &Path,
    wanted: &[(&'static str, aya_obj::Map)],
    owner: PinOwner,
) -> Result<Plan, LayoutError> {
    let pinned_version = match read_version(pin_dir, owner)? {
        Some(v) => Some(v),
        // v0.1.0 pinned no version: its maps are the first layout.
        None if wanted.iter().any(|(name, _)| pin_dir.join(name).exists()) => Some(1),
        None => None,
    };
    if let Some(pinned) = pinned_version.filter(|v| *v > LAYOUT_VERSION) {
        return Err(LayoutError::Newer { pinned, owner });
    }
    let mut differences = Vec::new();
    let mut migrations = Vec::new();
    let layout_2_prev_owners = pinned_version.is_some_and(|v| v < 3)
        && [MAP_PREV_OWNERS, LAYOUT_2_PREV_OWNERS_UNTIL]
            .iter()
            .any(|name| pin_dir.join(name).exists());
    if layout_2_prev_owners {
        migrations.push(Migration::ForgetPrevOwners);
    }
    for (name, def) in wanted {
        let path = pin_dir.join(name);
        if !path.exists() || (layout_2_prev_owners && *name == MAP_PREV_OWNERS) {
            continue;
        }
        let pinned = MapShape::of_pin(&path, name)?;
        match fit(name, &pinned, &MapShape::of_definition(def), owner.program) {
            Fit::Reuse => {}
            Fit::Grow if entries_of(name) == Entries::ConfigSlots => {
                migrations.push(Migration::GrowConfigSlots {
                    name,
                    to: def.clone(),
                })
            }
            Fit::Grow => migrations.push(Migration::GrowCounters {
                name,
                from: pinned.max_entries,
                to: def.clone(),
            }),
            Fit::Differs(d) => differences.extend(d),
        }
    }
    if !differences.is_empty() {
        return Err(LayoutError::Incompatible { differences, owner });
    }
    Ok(Plan {
        pin_dir: pin_dir.to_path_buf(),
        pinned_version,
        migrations,
    })
}

impl Plan {
    /// Carry out the migrations. Before the programs are loaded: they then
    /// take the migrated maps from the pins.
    pub fn migrate(&self) -> Result<(), LayoutError> {
        for m in &self.migrations {
            match m {
                Migration::GrowCounters { name, to, .. } => grow_counters(&self.pin_dir, name, to)?,
                Migration::GrowConfigSlots { name, to } => grow_config(&self.pin_dir, name, to)?,
                Migration::ForgetPrevOwners => {
                    for name in [MAP_PREV_OWNERS, LAYOUT_2_PREV_OWNERS_UNTIL] {
                        unpin(&self.pin_dir.join(name))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Pinned maps this plan does not adopt as they are: a caller that
    /// migrates nothing (`Datapath::open_pinned`) must not read them.
    pub fn not_adoptable(&self) -> Vec<&'static str> {
        self.migrations
            .iter()
            .filter(|m| matches!(m, Migration::ForgetPrevOwners))
            .map(|_| MAP_PREV_OWNERS)
            .collect()
    }

    /// Record that the pins have this binary's layout now. After the
    /// programs loaded over them.
    pub fn record_version(&self) -> Result<(), LayoutError> {
        if self.pinned_version == Some(LAYOUT_VERSION)
            && self.pin_dir.join(MAP_LAYOUT_VERSION).exists()
        {
            return Ok(());
        }
        write_version(&self.pin_dir, LAYOUT_VERSION)
    }
}

/// The one shape the version map ever has.
const VERSION_SHAPE: MapShape = MapShape {
    map_type: bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
    key_size: 4,
    value_size: 4,
    flags: 0,
    max_entries: 1,
};

fn version_map(data: MapData) -> Result<Array<MapData, u32>, LayoutError> {
    Array::try_from(Map::Array(data)).map_err(|error| LayoutError::Map {
        name: MAP_LAYOUT_VERSION.into(),
        error,
    })
}

/// The layout version pinned in `pin_dir`, if a version map is there.
pub fn read_version(pin_dir: &Path, owner: PinOwner) -> Result<Option<u32>, LayoutError> {
    let path = pin_dir.join(MAP_LAYOUT_VERSION);
    if !path.exists() {
        return Ok(None);
    }
    let err = |error| LayoutError::Map {
        name: MAP_LAYOUT_VERSION.into(),
        error,
    };
    let shape = MapShape::of_pin(&path, MAP_LAYOUT_VERSION)?;
    if shape != VERSION_SHAPE {
        let Fit::Differs(differences) =
            fit(MAP_LAYOUT_VERSION, &shape, &VERSION_SHAPE, owner.program)
        else {
            unreachable!("shapes that differ in a fixed-size map have a difference")
        };
        return Err(LayoutError::Incompatible { differences, owner });
    }
    let map = version_map(MapData::from_pin(&path).map_err(err)?)?;
    map.get(&0, 0).map(Some).map_err(err)
}

/// Pin (or overwrite) the version map of `pin_dir` with `version`. The
/// value is written before a new map is pinned: no one sees it empty.
pub fn write_version(pin_dir: &Path, version: u32) -> Result<(), LayoutError> {
    let path = pin_dir.join(MAP_LAYOUT_VERSION);
    let err = |error| LayoutError::Map {
        name: MAP_LAYOUT_VERSION.into(),
        error,
    };
    if path.exists() {
        let mut map = version_map(MapData::from_pin(&path).map_err(err)?)?;
        return map.set(0, version, 0).map_err(err);
    }
    let s = VERSION_SHAPE;
    let def =
        aya_obj::Map::new_from_params(s.map_type, s.key_size, s.value_size, s.max_entries, s.flags);
    let mut map = version_map(MapData::create(def, MAP_LAYOUT_VERSION, None).map_err(err)?)?;
    map.set(0, version, 0).map_err(err)?;
    map.pin(&path)
        .map_err(|error| LayoutError::Pin { path, error })
}

/// Remove the pin at `path`, if there is one (the map lives on while a
/// program uses it).
fn unpin(path: &Path) -> Result<(), LayoutError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(LayoutError::Replace {
            path: path.to_path_buf(),
            error,
        }),
        _ => Ok(()),
    }
}

/// Grow the per-CPU counter map `name` to `to`'s size: a new map with the
/// old counts, pinned under a temporary name and renamed over the old pin
/// (bpffs names may not hold a dot).
fn grow_counters(pin_dir: &Path, name: &str, to: &aya_obj::Map) -> Result<(), LayoutError> {
    let err = |error| LayoutError::Map {
        name: name.to_string(),
        error,
    };
    let path = pin_dir.join(name);
    let old: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&path).map_err(err)?))
            .map_err(err)?;
    let new = MapData::create(to.clone(), name, None).map_err(err)?;
    let mut new: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(new)).map_err(err)?;
    for index in 0..old.len().min(new.len()) {
        let counts = old.get(&index, 0).map_err(err)?;
        new.set(index, counts, 0).map_err(err)?;
    }
    let staged = pin_dir.join(format!("migrating_{name}"));
    // Left by a migration that stopped half-way: never adopted by anyone.
    let _ = std::fs::remove_file(&staged);
    new.pin(&staged).map_err(|error| LayoutError::Pin {
        path: staged.clone(),
        error,
    })?;
    std::fs::rename(&staged, &path).map_err(|error| LayoutError::Replace { path, error })
}

/// Grow layout 1's one-slot `LB_CONFIG` to `to`'s slots, its entry kept in
/// slot 0, replacing the pin as `grow_counters` does.
fn grow_config(pin_dir: &Path, name: &str, to: &aya_obj::Map) -> Result<(), LayoutError> {
    let err = |error| LayoutError::Map {
        name: name.to_string(),
        error,
    };
    let path = pin_dir.join(name);
    let old: Array<MapData, LbConfig> =
        Array::try_from(Map::Array(MapData::from_pin(&path).map_err(err)?)).map_err(err)?;
    let live = old.get(&0, 0).map_err(err)?;
    let mut new: Array<MapData, LbConfig> = Array::try_from(Map::Array(
        MapData::create(to.clone(), name, None).map_err(err)?,
    ))
    .map_err(err)?;
    new.set(0, live, 0).map_err(err)?;
    let staged = pin_dir.join(format!("migrating_{name}"));
    let _ = std::fs::remove_file(&staged);
    new.pin(&staged).map_err(|error| LayoutError::Pin {
        path: staged.clone(),
        error,
    })?;
    std::fs::rename(&staged, &path).map_err(|error| LayoutError::Replace { path, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: u32 = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    const LRU: u32 = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
    const PERCPU_ARRAY: u32 = bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32;

    fn shape(map_type: u32, value_size: u32, max_entries: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: 40,
            value_size,
            flags: 0,
            max_entries,
        }
    }

    #[test]
    fn each_difference_is_named_with_what_this_binary_needs() {
        let pinned = MapShape {
            flags: 0x400,
            ..shape(HASH, 24, 10)
        };
        assert_eq!(
            fit(MAP_CONNS, &pinned, &shape(LRU, 16, 20), "lbd"),
            Fit::Differs(vec![
                "pinned map CONNS: type Hash, this lbd needs LruHash".into(),
                "pinned map CONNS: value size 24, this lbd needs 16".into(),
                "pinned map CONNS: flags 0x400, this lbd needs 0x0".into(),
            ]),
            "a configured size is lbd's to compare"
        );
    }

    #[test]
    fn the_one_slot_configuration_of_layout_1_grows_and_nothing_else_does() {
        const ARRAY: u32 = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
        let want = shape(ARRAY, 48, CONFIG_SLOTS);
        let fit_of = |slots| fit(MAP_CONFIG, &shape(ARRAY, 48, slots), &want, "lbd");
        assert_eq!(fit_of(1), Fit::Grow);
        assert_eq!(fit_of(CONFIG_SLOTS), Fit::Reuse);
        assert_eq!(
            fit_of(3),
            Fit::Differs(vec![format!(
                "pinned map LB_CONFIG: max_entries 3, this lbd needs {CONFIG_SLOTS}"
            )])
        );
    }

    #[test]
    fn a_fixed_size_must_match() {
        assert_eq!(
            fit(
                MAP_FRAGS,
                &shape(LRU, 16, 8),
                &shape(LRU, 16, 16),
                "lb-decap"
            ),
            Fit::Differs(vec![
                "pinned map FRAGS: max_entries 8, this lb-decap needs 16".into()
            ])
        );
    }

    #[test]
    fn reason_counters_grow_and_a_larger_map_is_reused() {
        let ours = shape(PERCPU_ARRAY, 8, 23);
        for name in [MAP_GLOBAL_STATS, MAP_DECAP_STATS] {
            let smaller = shape(PERCPU_ARRAY, 8, 20);
            assert_eq!(fit(name, &smaller, &ours, "lbd"), Fit::Grow);
            let larger = shape(PERCPU_ARRAY, 8, 30);
            assert_eq!(fit(name, &larger, &ours, "lbd"), Fit::Reuse);
        }
        // A smaller counter map of another value size is not grown.
        assert!(matches!(
            fit(MAP_GLOBAL_STATS, &shape(PERCPU_ARRAY, 16, 20), &ours, "lbd"),
            Fit::Differs(_)
        ));
    }

    #[test]
    fn the_refusal_says_what_to_do() {
        let e = LayoutError::Incompatible {
            differences: vec!["pinned map CONNS: value size 24, this lbd needs 16".into()],
            owner: PinOwner::LBD,
        };
        assert_eq!(
            e.to_string(),
            "pinned map CONNS: value size 24, this lbd needs 16: run the lbd version that \
             pinned them, or `lbd --teardown` first (drops connections)"
        );
    }
}
