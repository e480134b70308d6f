//! Loading the eBPF object: map sizes chosen at load time, pinned maps
//! checked and adopted, the two programs loaded into the kernel, and
//! attaching them to interfaces.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::maps::*;

use crate::{
    EBPF_OBJECT,
    layout::{self, LayoutError, Migration, PinOwner},
};

/// Sizes of the maps that scale with the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub max_vips: u32,
    pub max_backends: u32,
    /// Maglev ring size M (a prime).
    pub ring_size: u32,
    pub conn_entries: u32,
    /// Flows seen once, waiting for their second packet before they may
    /// enter the connection table.
    pub probation_entries: u32,
    pub frag_entries: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            ring_size: DEFAULT_RING_SIZE,
            conn_entries: DEFAULT_CONN_ENTRIES,
            probation_entries: DEFAULT_PROBATION_ENTRIES,
            frag_entries: DEFAULT_FRAG_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("ring size {0} is too large: {1} VIPs x 2 rings x {0} slots overflow the ring map")]
    RingTooLarge(u32, u32),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinned link {path}: {reason}")]
    PinnedLink { path: PathBuf, reason: String },
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("parsing the embedded eBPF object: {0}")]
    Object(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
}

/// How a program ended up attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Native (driver) mode, or the generic fallback.
    pub native: bool,
    /// Why native mode was refused, when generic mode is the fallback.
    pub native_refused: Option<String>,
    /// An existing pinned link was updated in place (restart/upgrade)
    /// rather than a new attachment made.
    pub replaced: bool,
    /// A pinned link left attached to nothing (its interface was deleted,
    /// or the name now belongs to another interface) was unpinned and a
    /// new attachment made in its place.
    pub replaced_dead_link: bool,
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub sizes: MapSizes,
    /// What was changed in the pinned maps to adopt them (`load_pinned`).
    pub migrations: Vec<Migration>,
}

impl Datapath {
    /// Load the object with `sizes` and load both programs into the kernel
    /// (which runs the verifier on them). Nothing is attached yet.
    pub fn load(sizes: MapSizes) -> Result<Self, DatapathError> {
        Self::load_with(sizes, None)
    }

    /// Load with every map pinned under `pin_dir`: maps already pinned
    /// there are reused, contents and all (a restarted lbd keeps the
    /// connection table), and new ones are created and pinned. For a caller
    /// about to attach this build's program. Pinned maps are first checked
    /// against this build's definitions (`crate::layout`): a pin directory
    /// that does not fit is refused before anything in it changes; one that
    /// fits after a migration (a counter map of an older release with fewer
    /// rows, grown with its counts) is migrated, and its layout version
    /// recorded once the programs loaded.
    pub fn load_pinned(
        sizes: MapSizes,
        pin_dir: &Path,
        owner: PinOwner,
    ) -> Result<Self, DatapathError> {
        std::fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let plan = layout::check(pin_dir, &pinned_definitions(sizes)?, owner)?;
        plan.migrate()?;
        let mut dp = Self::load_with(sizes, Some((pin_dir, PINNED_MAPS)))?;
        plan.record_version()?;
        dp.migrations = plan.migrations;
        Ok(dp)
    }

    /// Load reusing the maps pinned under `pin_dir` as they are, pinning
    /// nothing new: for reading or editing the state of a data plane whose
    /// running program may be an older release's. A map this build has and
    /// the directory lacks is created unpinned (empty) and gone on exit.
    /// Pins that do not fit this build are refused as by `load_pinned`;
    /// nothing is migrated (the running program keeps its maps), so a
    /// counter map may lack this build's last rows.
    pub fn open_pinned(
        sizes: MapSizes,
        pin_dir: &Path,
        owner: PinOwner,
    ) -> Result<Self, DatapathError> {
        let plan = layout::check(pin_dir, &pinned_definitions(sizes)?, owner)?;
        let stale = plan.not_adoptable();
        let pins: Vec<&str> = PINNED_MAPS
            .iter()
            .copied()
            .filter(|name| pin_dir.join(name).exists() && !stale.contains(name))
            .collect();
        Self::load_with(sizes, Some((pin_dir, &pins)))
    }

    /// Whether a previous lbd left pinned maps in `pin_dir`.
    pub fn has_pinned_state(pin_dir: &Path) -> bool {
        pin_dir.join(MAP_CONNS).exists()
    }

    /// Load; with `pins`, the maps named there are pinned under (or
    /// reused from) the directory.
    fn load_with(sizes: MapSizes, pins: Option<(&Path, &[&str])>) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        for (name, entries) in sized_maps(sizes)? {
            loader.map_max_entries(name, entries);
        }
        if let Some((dir, names)) = pins {
            for name in names {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in [PROG_LB, PROG_DECAP] {
            let prog = xdp_program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            sizes,
            migrations: Vec::new(),
        })
    }

    /// The load balancer program (`lb`).
    pub fn lb(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf, PROG_LB)
    }

    /// The backend-side decapsulation program (`lb_decap`).
    pub fn decap(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf, PROG_DECAP)
    }

    /// Attach program `name` to `iface` in `mode`.
    pub fn attach(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<XdpLinkId, DatapathError> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        prog.attach(iface, mode)
            .map_err(|source| DatapathError::Program { name, source })
    }
}

/// The maps whose number of entries is chosen at load time, and theirs.
fn sized_maps(sizes: MapSizes) -> Result<[(&'static str, u32); 10], DatapathError> {
    let ring_entries = sizes
        .max_vips
        .checked_mul(2)
        .and_then(|n| n.checked_mul(sizes.ring_size))
        .ok_or(DatapathError::RingTooLarge(sizes.ring_size, sizes.max_vips))?;
    // One ring per VIP: fits whenever the two rings do.
    let prev_owner_entries = sizes.max_vips * prev_owner_entries_per_vip(sizes.ring_size);
    Ok([
        (MAP_VIPS, sizes.max_vips),
        (MAP_VIP_STATS, sizes.max_vips),
        (MAP_BACKENDS, sizes.max_backends),
        (MAP_BACKEND_STATS, sizes.max_backends),
        (MAP_BACKEND_FLOWS, sizes.max_backends),
        (MAP_RINGS, ring_entries),
        (MAP_CONNS, sizes.conn_entries),
        (MAP_PROBATION, sizes.probation_entries),
        (MAP_FRAGS, sizes.frag_entries),
        (MAP_PREV_OWNERS, prev_owner_entries),
    ])
}

/// This binary's definition of each pinned map, from the embedded object,
/// sized as `load_with` creates it.
fn pinned_definitions(sizes: MapSizes) -> Result<Vec<(&'static str, aya_obj::Map)>, DatapathError> {
    let mut object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| DatapathError::Object(crate::errors::chain(&e)))?;
    let sized = sized_maps(sizes)?;
    PINNED_MAPS
        .iter()
        .map(|&name| {
            let mut def = object
                .maps
                .remove(name)
                .ok_or(DatapathError::MissingMap(name))?;
            if let Some((_, entries)) = sized.iter().find(|(n, _)| *n == name) {
                def.set_max_entries(*entries);
            }
            Ok((name, def))
        })
        .collect()
}

/// The number of entries of pinned map `name` in `pin_dir`, if it is there:
/// what it was created with, whatever the configuration says now.
pub fn pinned_entries(pin_dir: &Path, name: &'static str) -> Result<Option<u32>, DatapathError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let info = aya::maps::MapInfo::from_pin(&path).map_err(|error| LayoutError::Map {
        name: name.into(),
        error,
    })?;
    Ok(Some(info.max_entries()))
}

/// Maps that outlive lbd: everything but per-packet scratch space.
pub const PINNED_MAPS: &[&str] = &[
    MAP_CONFIG,
    MAP_CONFIG_ACTIVE,
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_RINGS,
    MAP_CONNS,
    MAP_PROBATION,
    MAP_FRAGS,
    MAP_GLOBAL_STATS,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_TX_PORTS,
    MAP_TX_PORT_MACS,
    MAP_DECAP_ADDRS,
    MAP_DECAP_STATS,
    MAP_DECAP_SOURCES,
    MAP_DECAP_CONFIG,
    MAP_TOO_BIG_LIMIT,
    MAP_PROMOTION_LIMIT,
    MAP_PREV_OWNERS,
    MAP_SECOND_CHANCE,
    MAP_DECAP_PEERS,
    MAP_BACKEND_FLOWS,
    MAP_VIP_FILTER,
    MAP_PORT_MAC_CACHE,
    MAP_VIP_CACHE,
];

/// Where the XDP link of `iface` is pinned.
pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

impl Datapath {
    /// Attach the load balancer to `iface` through a pinned link, so it
    /// keeps forwarding when lbd exits. If a link is already pinned there
    /// (lbd restarted or upgraded), the program is swapped in place
    /// atomically (`bpf_link_update`): no packet goes unprocessed.
    /// With `prefer_native`, native mode is tried first and generic mode
    /// is the fallback (the caller warns); otherwise generic mode is used.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        pin_dir: &Path,
        prefer_native: bool,
    ) -> Result<Attached, DatapathError> {
        self.attach_program_pinned(PROG_LB, iface, pin_dir, prefer_native)
    }

    /// `attach_pinned` for program `name` (`lb`, or `lb_decap` on a
    /// backend). A pinned link that is no longer attached to `iface` (the
    /// interface was deleted, maybe created again with a new index) cannot
    /// be updated: it is unpinned, which frees it, and a new link made.
    pub fn attach_program_pinned(
        &mut self,
        name: &'static str,
        iface: &str,
        pin_dir: &Path,
        prefer_native: bool,
    ) -> Result<Attached, DatapathError> {
        let path = link_pin_path(pin_dir, iface);
        let bad = |reason: String| DatapathError::PinnedLink {
            path: path.clone(),
            reason,
        };
        let ifindex =
            crate::netdev::ifindex(iface).map_err(|_| DatapathError::NoInterface(iface.into()))?;
        let pinned_to = crate::xdp_link::attached_ifindex(&path).map_err(|e| bad(e.to_string()))?;
        let replaced_dead_link = pinned_to.is_some_and(|linked| linked != ifindex);
        if replaced_dead_link {
            std::fs::remove_file(&path).map_err(|e| bad(format!("removing a dead link: {e}")))?;
        } else if pinned_to.is_some() {
            let native = self.swap_into_link(name, iface, pin_dir)?;
            return Ok(Attached {
                native,
                native_refused: None,
                replaced: true,
                replaced_dead_link: false,
            });
        }
        let mut native = prefer_native;
        let mut native_refused = None;
        let first = if prefer_native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        let id = match xdp_program(&mut self.ebpf, name)?.attach(iface, first) {
            Ok(id) => id,
            Err(refused) if prefer_native => {
                native = false;
                native_refused = Some(crate::errors::chain(&refused));
                xdp_program(&mut self.ebpf, name)?
                    .attach(iface, XdpMode::Skb)
                    .map_err(|source| DatapathError::Program { name, source })?
            }
            Err(source) => {
                return Err(DatapathError::Program { name, source });
            }
        };
        let link = xdp_program(&mut self.ebpf, name)?
            .take_link(id)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd_link = FdLink::try_from(link).map_err(|e| bad(e.to_string()))?;
        fd_link.pin(&path).map_err(|e| bad(e.to_string()))?;
        Ok(Attached {
            native,
            native_refused,
            replaced: false,
            replaced_dead_link,
        })
    }
}

impl Datapath {
    /// Swap program `name` into the live link pinned for `iface`
    /// atomically (`bpf_link_update`), whatever program it ran; true when
    /// the link runs in native mode. For a link attached to nothing the
    /// kernel refuses (`ENOLINK`).
    pub fn swap_into_link(
        &mut self,
        name: &'static str,
        iface: &str,
        pin_dir: &Path,
    ) -> Result<bool, DatapathError> {
        let path = link_pin_path(pin_dir, iface);
        let bad = |reason: String| DatapathError::PinnedLink {
            path: path.clone(),
            reason,
        };
        let pinned = PinnedLink::from_pin(&path).map_err(|e| bad(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| bad(e.to_string()))?;
        let native = !link_is_generic(iface);
        let prog = xdp_program(&mut self.ebpf, name)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|source| DatapathError::Program { name, source })?;
        // The pin holds the link; keeping a descriptor here too would keep
        // it attached after someone removes the pin to detach it.
        drop(
            prog.take_link(id)
                .map_err(|source| DatapathError::Program { name, source })?,
        );
        Ok(native)
    }
}

/// Whether `iface` runs its XDP program in generic (skb) mode; an
/// interface the kernel cannot tell about counts as native.
fn link_is_generic(iface: &str) -> bool {
    crate::netdev::xdp_is_generic(iface).unwrap_or(false)
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
