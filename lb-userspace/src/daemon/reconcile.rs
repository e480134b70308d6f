//! The running configuration made true in the data plane: validate, build
//! an image, write the difference (`sync`), or change nothing; re-apply
//! when health or drains change, reload on SIGHUP, and save the runtime
//! state a restart resumes.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use crate::{
    addr::from_map,
    announce,
    config::{AdminState, CheckKind, Config, Vip},
    config_format::ConfigFormat,
    control::VipRef,
    egress::{self, Outlets},
    errors,
    ids::{BackendKey, Ids, VipKeyOrd},
    image::{self, BackendStatus},
    maps::{Maps, MapsError},
    onlink, ring_digest,
    sync::{self, SyncReport},
};

use super::{Daemon, announcing::watched_speaker, balancing::effective_weight, check_for, vip_of};

impl Daemon {
    pub(super) fn status_of(&self, key: &BackendKey) -> BackendStatus {
        let healthy = self.health.get(key).is_none_or(|h| h.up);
        let drain_expired = match (self.drain_started.get(key), self.vip_config(&key.vip)) {
            (Some(since), Some(vip)) => since.elapsed() >= Duration::from_secs(vip.drain_timeout_s),
            _ => false,
        };
        BackendStatus {
            healthy,
            drain_expired,
            weight: self.effective_weight(key),
        }
    }

    fn vip_config(&self, key: &VipKeyOrd) -> Option<&Vip> {
        vip_of(&self.config, key)
    }

    /// Digest each VIP's live ring, read back from the data plane, with its
    /// slots named by backend address (`ring_digest`): equal on every node
    /// that serves the same backends. A VIP whose ring cannot be read has
    /// none (and lbd logs why).
    pub(super) fn refresh_ring_digests(&mut self) {
        let mut digests = BTreeMap::new();
        for key in self.applied.vips.keys() {
            let ring = self
                .maps
                .vip(&(*key).into())
                .and_then(|meta| meta.ok_or(MapsError::UnknownVip((*key).into())))
                .and_then(|meta| self.maps.live_ring(&meta));
            let ring = match ring {
                Ok(ring) => ring,
                Err(e) => {
                    warn!(error = %e, "reading a live ring for its digest failed");
                    continue;
                }
            };
            let slots = ring_digest::addresses(&ring, |id| {
                let b = self.applied.backends.get(&id)?;
                from_map(&b.addr, b.family)
            });
            digests.insert(*key, ring_digest::digest(&slots));
        }
        self.metrics
            .set_ring_digests(self.config.vips.iter().filter_map(|v| {
                let key = image::vip_key(v.address, v.port, v.protocol);
                let vip = VipRef {
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol,
                };
                Some((vip.to_string(), *digests.get(&key)?))
            }));
        self.ring_digests = digests;
    }

    /// Write the runtime state (lbctl's edits, drain start times, a node
    /// drain) so a restart resumes it; the error, if it could not be. A
    /// failure is logged: forwarding does not depend on it, only what a
    /// restart remembers.
    pub(super) fn save_state(&mut self) -> Option<String> {
        let node = self.announcer.node_state();
        let saved = self
            .state
            .save(&self.config, &self.file_text, &self.drain_started, &node);
        if let Err(e) = &saved {
            warn!(state_file = %self.config.state_file.display(), error = %e, "saving the runtime state failed: a restart would lose lbctl edits, drain times and a node drain");
        }
        saved.err().map(|e| e.to_string())
    }

    /// Make `config` the running configuration, or change nothing. The
    /// host is asked again about the interfaces it names.
    pub fn apply(&mut self, config: Config) -> Result<SyncReport, String> {
        config.validate().map_err(|e| e.to_string())?;
        for (field, same) in [
            ("interfaces", config.interfaces == self.config.interfaces),
            ("tables", config.tables == self.config.tables),
            ("pin_dir", config.pin_dir == self.config.pin_dir),
            ("state_file", config.state_file == self.config.state_file),
            ("control", config.control == self.config.control),
        ] {
            if !same {
                return Err(format!(
                    "{field}: cannot change while lbd runs; restart lbd to change it{}",
                    if field == "tables" {
                        " (after `lbd --teardown`, which drops connections: pinned tables keep their sizes)"
                    } else {
                        ""
                    }
                ));
            }
        }
        let (outlets, gone) = egress::resolve_present(&config).map_err(|e| errors::report(&e))?;
        for name in gone {
            warn!(interface = %name, "interface gone: the configuration is applied without it; lbd sends out of it again when it returns");
        }
        onlink::check(&config, Some(&self.config)).map_err(|e| e.to_string())?;
        if let Some(table) = config.announce.filter(|t| Some(*t) != self.config.announce) {
            announce::check_table(table)?;
        }
        self.write(config, outlets)
    }

    /// Write `config`, sending out of `outlets`, or change nothing.
    pub(super) fn write(&mut self, config: Config, outlets: Outlets) -> Result<SyncReport, String> {
        let mut ids = self.ids.clone();
        // Backends new to this config start as their checks say: unknown
        // ones with checks wait for `rise` successes.
        let health = &self.health;
        let drains = &self.drain_started;
        let balancers = &self.balancers;
        let status = |k: &BackendKey| {
            let healthy = match health.get(k) {
                Some(h) => h.up,
                None => check_for(&config, k).is_none_or(|c| c.kind == CheckKind::None),
            };
            let drain_expired = match (
                drains.get(k),
                config
                    .vips
                    .iter()
                    .find(|v| image::vip_key(v.address, v.port, v.protocol) == k.vip),
            ) {
                (Some(since), Some(vip)) => {
                    since.elapsed() >= Duration::from_secs(vip.drain_timeout_s)
                }
                _ => false,
            };
            BackendStatus {
                healthy,
                drain_expired,
                weight: effective_weight(&config, balancers, k),
            }
        };
        let image =
            image::build(&config, &mut ids, status, outlets.egress).map_err(|e| e.to_string())?;
        clear_stats_of_new_ids(&mut self.maps, &ids, &self.ids)
            .map_err(|e| format!("writing the data plane: {e}"))?;
        if let Err(e) = egress::open(&mut self.maps, &outlets, Some(&self.outlets)) {
            // Nothing but ports was written: close those again.
            error!(error = %e, "allowing redirects failed; the configuration was not written");
            if let Err(e2) = egress::close_others(&mut self.maps, &self.outlets) {
                error!(error = %e2, "closing the ports just opened failed");
            }
            return Err(format!("writing the data plane: {e}"));
        }
        let report = match sync::apply(&mut self.maps, Some(&self.applied), &image) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "writing maps failed; restoring the previous state");
                // Only what differs between the two images can have been
                // written, so only that is written back: VIPs this change
                // did not touch keep their rings.
                let restored =
                    sync::apply(&mut self.maps, Some(&image), &self.applied).and_then(|report| {
                        egress::close_others(&mut self.maps, &self.outlets).map(|()| report)
                    });
                match restored {
                    Ok(report) => info!(?report, "previous state restored"),
                    Err(e2) => error!(error = %e2, "restoring the previous state failed"),
                }
                return Err(format!("writing the data plane: {e}"));
            }
        };
        // The configuration written no longer sends out of these.
        if let Err(e) = egress::close_others(&mut self.maps, &outlets) {
            warn!(error = %e, "removing unused TX ports failed; they stay allowed");
        }
        let (gone_vips, gone_backends) = image::unused(&ids, &image);
        for k in &gone_vips {
            ids.release_vip(k);
        }
        for k in &gone_backends {
            ids.release_backend(k);
        }
        self.metrics
            .table_rebuilds
            .inc_by(report.rings_rebuilt as u64);
        self.metrics.add_slots_moved(&report.slots_moved);
        self.speaker.set_socket(watched_speaker(&config));
        self.config = config;
        self.ids = ids;
        self.applied = image;
        self.outlets = outlets;
        if report.rings_rebuilt > 0 || report.vips_removed > 0 {
            self.refresh_ring_digests();
        }
        self.refresh_checkers();
        self.reports.refresh(&self.config);
        self.refresh_drains();
        self.refresh_announcements();
        self.save_state();
        info!(?report, "configuration applied");
        Ok(report)
    }

    /// Re-apply the running configuration (health or drain state changed),
    /// to the interfaces it was applied with: a health change must not
    /// depend on what the host says about them now, and writes no port
    /// (`egress::open` skips the open ones), so it works while an
    /// interface is gone.
    pub(super) fn reapply(&mut self) {
        let (config, outlets) = (self.config.clone(), self.outlets.clone());
        if let Err(e) = self.write(config, outlets) {
            error!(error = %e, "re-applying the configuration failed");
        }
    }

    pub(super) fn refresh_drains(&mut self) {
        let mut draining = BTreeMap::new();
        for vip in &self.config.vips {
            let vkey = image::vip_key(vip.address, vip.port, vip.protocol);
            for b in vip.backends.iter().filter(|b| b.state == AdminState::Drain) {
                let key = BackendKey {
                    vip: vkey,
                    addr: b.address,
                };
                draining.insert(
                    key,
                    self.drain_started
                        .get(&key)
                        .copied()
                        .unwrap_or_else(Instant::now),
                );
            }
        }
        self.drain_started = draining;
    }

    /// Re-read the configuration file (SIGHUP).
    /// The file replaces the running configuration, lbctl's edits included.
    pub fn reload(&mut self) {
        let text = match std::fs::read_to_string(&self.config_path) {
            Ok(text) => text,
            Err(e) => {
                error!(path = %self.config_path.display(), error = %e, "reload rejected: the file cannot be read; running state unchanged");
                return;
            }
        };
        // lbd started with this file, so its name has a format's extension.
        let parsed = ConfigFormat::of_path(&self.config_path)
            .and_then(|format| Config::from_text_for(&text, format, &self.node));
        match parsed {
            Ok(c) => match self.apply(c) {
                Ok(_) => {
                    self.file_text = text;
                    self.save_state();
                    info!(path = %self.config_path.display(), "reloaded")
                }
                Err(e) => {
                    error!(path = %self.config_path.display(), error = %e, "reload rejected; running state unchanged")
                }
            },
            Err(e) => {
                error!(path = %self.config_path.display(), error = %e, "reload rejected; running state unchanged")
            }
        }
    }
}

/// Zero the data plane's counters of the ids that `now` uses and `before`
/// did not, before any map entry names them: a recycled id must not carry
/// its last owner's packets and bytes into `lbctl stats` and the metrics.
/// Nothing counts under a free id (no VIP or backend entry has it), so the
/// counts start from zero.
pub(super) fn clear_stats_of_new_ids(
    maps: &mut Maps,
    now: &Ids,
    before: &Ids,
) -> Result<(), MapsError> {
    let (vips, backends) = now.allocated_since(before);
    for id in vips {
        maps.clear_vip_stats(id)?;
    }
    for id in backends {
        maps.clear_backend_stats(id)?;
        maps.clear_backend_flows(id)?;
    }
    Ok(())
}
