//! Writing an image to the maps: only what differs from the image applied
//! before, in an order where no packet can see a reference to something not
//! written yet.
//!
//! 1. Backends that are new or changed (so rings may name them), and the
//!    GUE port of second chance when it turns on.
//! 2. Rings: a new VIP's table is filled before its VIP entry exists (its
//!    previous owners cleared first: the id may be a removed VIP's); a
//!    changed VIP's previous owners are recorded (`second_chance`), its
//!    inactive table is filled, then the VIP flips to it. A VIP whose
//!    second-chance window alone changed has its expiries cut to it.
//! 3. VIP entries that are new or changed; removed VIPs are deleted.
//! 4. Removed backends leave the previous owners, then are cleared (their
//!    flows get rescheduled); the GUE port goes when second chance turns
//!    off.
//! 5. The rate limit of ICMP too-big answers, then the global
//!    configuration, last on first apply: forwarding starts
//!    only once everything it needs is in place. One exception: a live
//!    program is told that port-less VIPs exist (`CFG_F_PORTLESS_VIPS`)
//!    before the first one is written, or it would not look it up.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use lb_common::maps::{
    BACKEND_F_ACTIVE, Backend, CFG_F_PORTLESS_VIPS, LbConfig, VIP_F_STATELESS, VipMeta,
};

use crate::{
    ids::VipKeyOrd,
    image::{self, Image},
    maglev,
    maps::{Maps, MapsError},
    second_chance,
};

/// What one apply did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub backends_written: usize,
    pub backends_cleared: usize,
    pub vips_written: usize,
    pub vips_removed: usize,
    pub rings_rebuilt: usize,
    /// Slots that changed backend, by VIP, over the rebuilds of live rings
    /// (a new VIP's first ring moves none).
    pub slots_moved: BTreeMap<VipKeyOrd, u64>,
    /// VIPs whose rebuild moved slots, their previous owners recorded.
    pub previous_owners_recorded: usize,
    /// Table entries of VIPs whose `stateless` switch changed
    /// (`Maps::forget_flows_of_vips`).
    pub entries_forgotten: usize,
    pub too_big_limit_written: bool,
    pub promotion_limit_written: bool,
    pub config_written: bool,
    pub elapsed: Duration,
}

/// Bring the maps from `old` (what they hold; `None` for empty maps, or
/// unknown rings after adoption) to `new`.
pub fn apply(maps: &mut Maps, old: Option<&Image>, new: &Image) -> Result<SyncReport, MapsError> {
    let started = Instant::now();
    let mut report = SyncReport::default();

    let live = maps.config()?;
    let portless_added = new.config.flags & CFG_F_PORTLESS_VIPS != 0
        && live.flags & CFG_F_PORTLESS_VIPS == 0
        && live.ring_size != 0;
    if portless_added {
        maps.set_config(&LbConfig {
            flags: live.flags | CFG_F_PORTLESS_VIPS,
            ..live
        })?;
    }

    for (id, backend) in &new.backends {
        if old.and_then(|o| o.backends.get(id)) != Some(backend) {
            write_backend(maps, *id, backend)?;
            report.backends_written += 1;
        }
    }
    // On before this apply's rebuilds, so that their second hops go out;
    // off (below) only after them.
    let turning_on = new.second_chance.gue_port != 0;
    if turning_on && maps.second_chance()? != new.second_chance {
        maps.set_second_chance(&new.second_chance)?;
    }
    let now = second_chance::monotonic_ns();

    // A VIP's table entries are forgotten whenever its `stateless` switch
    // changes, while the program ignores them: before the flag goes off
    // (they were neither followed nor refreshed while it was on, and a
    // 5-tuple reused meanwhile, a client port behind a NAT, would follow
    // its old entry), after it goes on (so no count shows them as flows).
    let (keeping_state, going_stateless) = stateless_switches(maps, new)?;
    if !keeping_state.is_empty() {
        report.entries_forgotten += maps.forget_flows_of_vips(&keeping_state)?;
    }

    for (key, vip) in &new.vips {
        let before = old.and_then(|o| o.vips.get(key));
        let members_changed = before.is_none_or(|b| b.members != vip.members);
        // Unknown after a restart: the window may have shrunk meanwhile.
        let window_changed =
            before.is_none_or(|b| b.second_chance_window != vip.second_chance_window);
        let live = maps.vip(&(*key).into())?;
        match live {
            // Already serving (from before, or adopted): flip rings. The
            // flip and new flags are one write, so no packet sees the new
            // ring with the old flags, and a flags change never writes
            // back the ring the entry named before the flip.
            Some(meta) if meta.vip_id == vip.id => {
                if members_changed {
                    let ring = maglev::build(&vip.members, maps.ring_size());
                    let live = maps.live_ring(&meta)?;
                    let window = vip.second_chance_window;
                    if second_chance::record(
                        maps,
                        vip.id,
                        &live,
                        &ring,
                        window,
                        &new.backends,
                        now,
                    )? {
                        report.previous_owners_recorded += 1;
                    }
                    maps.publish_ring(&(*key).into(), &ring, vip.flags)?;
                    report.rings_rebuilt += 1;
                    let moved = live.iter().zip(&ring).filter(|(a, b)| a != b).count();
                    report.slots_moved.insert(*key, moved as u64);
                    report.vips_written += usize::from(meta.flags != vip.flags);
                    continue;
                }
                if window_changed {
                    second_chance::cap(maps, vip.id, vip.second_chance_window, now)?;
                }
                if meta.flags != vip.flags {
                    maps.set_vip(
                        &(*key).into(),
                        &VipMeta {
                            flags: vip.flags,
                            ..meta
                        },
                    )?;
                    report.vips_written += 1;
                }
            }
            // New (or its id changed): table 0 first, then the entry.
            _ => {
                let ring = maglev::build(&vip.members, maps.ring_size());
                second_chance::forget(maps, vip.id)?;
                maps.fill_ring(vip.id, 0, &ring)?;
                report.rings_rebuilt += 1;
                let meta = VipMeta {
                    vip_id: vip.id,
                    flags: vip.flags,
                    active_ring: 0,
                    _pad: 0,
                };
                maps.set_vip(&(*key).into(), &meta)?;
                report.vips_written += 1;
            }
        }
    }

    if !going_stateless.is_empty() {
        report.entries_forgotten += maps.forget_flows_of_vips(&going_stateless)?;
    }

    for (key, _) in maps.vips()? {
        if !new.vips.contains_key(&key.into()) {
            maps.remove_vip(&key)?;
            report.vips_removed += 1;
        }
    }

    let live_backends = maps.backends()?;
    if live_backends
        .iter()
        .any(|(id, _)| !new.backends.contains_key(id))
    {
        second_chance::forget_removed(maps, new.vips.values().map(|v| v.id), &new.backends)?;
    }
    for (id, _) in live_backends {
        if !new.backends.contains_key(&id) {
            // Inactive first (only the flags change), then cleared: a
            // packet reading the entry meanwhile never finds it active
            // with a half-zeroed address.
            let live = maps.backend(id)?;
            maps.set_backend(id, &Backend { flags: 0, ..live })?;
            maps.set_backend(id, &Backend::default())?;
            report.backends_cleared += 1;
        }
    }

    if !turning_on && maps.second_chance()? != new.second_chance {
        maps.set_second_chance(&new.second_chance)?;
    }
    // Compared with what the maps hold, not with `old`: a restore over
    // maps of unknown contents then writes only what differs.
    if maps.too_big_limit()? != new.too_big_limit {
        maps.set_too_big_limit(&new.too_big_limit)?;
        report.too_big_limit_written = true;
    }
    let promotion_limit = image::promotion_limit(new.promotions_per_second, maps.cpus()?);
    if maps.promotion_limit()? != promotion_limit {
        maps.set_promotion_limit(&promotion_limit)?;
        report.promotion_limit_written = true;
    }
    if maps.config()? != new.config {
        maps.set_config(&new.config)?;
        report.config_written = true;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Write backend `id`. An array entry is updated in place, by a copy that a
/// packet on another CPU can read half-way; an id that takes a new backend
/// (a new id, or one recycled from another VIP's) is therefore written
/// inactive first, so a half-read entry never pairs the new address with
/// the old VIP id and the active flag. An entry that stays the same
/// backend changes only flags and MAC, in one write.
fn write_backend(maps: &mut Maps, id: u32, backend: &Backend) -> Result<(), MapsError> {
    let live = maps.backend(id)?;
    let same_backend = live.flags & BACKEND_F_ACTIVE != 0
        && live.vip_id == backend.vip_id
        && live.addr == backend.addr
        && live.family == backend.family;
    if !same_backend {
        maps.set_backend(
            id,
            &Backend {
                flags: 0,
                ..*backend
            },
        )?;
    }
    maps.set_backend(id, backend)
}

/// The ids of the live VIPs whose `stateless` switch `new` turns off, and
/// of those it turns on (a VIP new or with a new id has no entries).
fn stateless_switches(
    maps: &Maps,
    new: &Image,
) -> Result<(BTreeSet<u32>, BTreeSet<u32>), MapsError> {
    let (mut off, mut on) = (BTreeSet::new(), BTreeSet::new());
    for (key, vip) in &new.vips {
        let Some(meta) = maps.vip(&(*key).into())? else {
            continue;
        };
        let was = meta.flags & VIP_F_STATELESS != 0;
        let will = vip.flags & VIP_F_STATELESS != 0;
        if meta.vip_id == vip.id && was != will {
            if was {
                off.insert(vip.id)
            } else {
                on.insert(vip.id)
            };
        }
    }
    Ok((off, on))
}
