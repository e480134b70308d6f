//! lbd: owns the desired state and keeps the kernel's maps equal to it.
//!
//! One task owns all state (`Daemon`) and handles, in turn: control
//! requests, health events, SIGHUP reloads and a one-second tick for drain
//! timeouts. Every change, whatever its source, goes the same way: a new
//! configuration is validated, an image computed, and the difference
//! written (`sync`). A change that fails leaves the running state as it was.
//!
//! lbd never detaches the program when it exits: the link and maps are
//! pinned, forwarding continues, and the next lbd adopts them. The routes
//! that announce VIPs (`announce`) stay too, and are adopted the same way. One lbd
//! runs per pin directory (`pin_lock`). Link events from the kernel make
//! it attach again to an interface deleted and created anew
//! (`attachments`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lb_common::{
    FlowKey, Reason,
    flow::{PROTO_TCP, flow_hash, maglev_slot},
    maps::{
        BACKEND_F_DOWN, MAP_BACKENDS, MAP_CONNS, MAP_PROBATION, MAP_RINGS, MAP_VIPS,
        VIP_F_AFFINITY, VIP_F_PORTLESS, VipKey, backend_serves, entry_pins,
    },
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use crate::{
    addr::{from_map, to_map},
    announce::{self, Announcer},
    attachments::{self, Attachments, Change},
    backend_load::BackendLoad,
    backend_reports::{self, BackendReports, ScrapeKey},
    capture::{CaptureEvent, CaptureMaps, CaptureSpec, Capturer},
    config::BalancingMode,
    config::{AdminState, CheckKind, Config, HealthCheck, NodeOverrides, Protocol, Tables, Vip},
    config_format::ConfigFormat,
    conn_list,
    control::{self, Reply, Request, VipRef},
    datapath::{Attached, Datapath, MapSizes, pinned_entries},
    egress::{self, Outlets},
    errors,
    health::{self, HealthEvent, Target},
    ids::{BackendKey, Ids, VipKeyOrd},
    image::{self, BackendStatus, Image},
    layout::PinOwner,
    load_report::ReportEvent,
    maps::{FillMethod, Maps, MapsError, TableFill},
    metrics::{InterfaceLabels, InterfaceName, Metrics},
    netdev, onlink,
    pin_lock::PinDirLock,
    ring_digest,
    runtime_state::{self, DataPlaneId, StateWriter},
    speaker::SpeakerWatch,
    sync::{self, SyncReport},
    tunnel_probe::TunnelPath,
    weight_controller::{self, Load, Member},
};

/// Where the kernel keeps no element count, `status` and metrics count
/// table entries up to this many (one syscall each).
const CONN_COUNT_LIMIT: usize = 200_000;
/// Without the kernel's counts, metrics walk the tables once per this many
/// one-second ticks.
const WALK_EVERY_TICKS: u64 = 30;

/// What a health checker's results are filed under: the backend, and
/// which of its checkers sent them. A checker replaced because its check
/// changed may have results queued still; they carry the old generation
/// and are dropped, so they cannot flip the backend after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckKey {
    pub backend: BackendKey,
    pub generation: u64,
}

/// How a health check names itself in logs: the backend and its VIP.
impl std::fmt::Display for CheckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

/// What the daemon knows of one backend's health.
struct HealthRecord {
    up: bool,
    /// The generation of the checker whose results count.
    generation: u64,
    check: HealthCheck,
    port: u16,
    /// Where the probe through the tunnel goes, if the VIP has one.
    tunnel: Option<TunnelPath>,
    /// The response header the check reads a load report from, if any.
    report_header: Option<String>,
    checker: Option<tokio::task::JoinHandle<()>>,
    last_reason: String,
    last_latency: Option<Duration>,
    since: Instant,
}

impl Drop for HealthRecord {
    fn drop(&mut self) {
        if let Some(h) = self.checker.take() {
            h.abort();
        }
    }
}

pub struct Daemon {
    config: Config,
    config_path: PathBuf,
    /// Holds the loaded programs, to attach again to interfaces that
    /// come back.
    dp: Datapath,
    /// This lbd's hold on the pin directory, for its whole life.
    _pin_lock: PinDirLock,
    maps: Maps,
    ids: Ids,
    applied: Image,
    health: BTreeMap<BackendKey, HealthRecord>,
    drain_started: BTreeMap<BackendKey, Instant>,
    health_tx: mpsc::Sender<HealthEvent<CheckKey>>,
    /// The generation the next checker started gets.
    next_generation: u64,
    attachments: Attachments,
    adopted: bool,
    /// Command-line settings that win over every configuration applied.
    node: NodeOverrides,
    started: Instant,
    /// The interfaces the applied configuration sends out of.
    outlets: Outlets,
    /// The configuration file's text the running configuration came from.
    file_text: String,
    state: StateWriter,
    /// One-second ticks since the start.
    ticks: u64,
    /// Each VIP's live ring digest (`ring_digest`), taken after every
    /// write that changed a ring.
    ring_digests: BTreeMap<VipKeyOrd, u64>,
    /// The routes that announce VIPs, and whether the node is drained.
    announcer: Announcer,
    /// Whether BIRD is there to export those routes.
    speaker: SpeakerWatch,
    /// Live flows and rates per backend, from the data plane.
    load: BackendLoad,
    /// Whether the last sample of `load` succeeded.
    load_fresh: bool,
    /// The weight controller of each `load`-mode VIP.
    balancers: BTreeMap<VipKeyOrd, weight_controller::Controller>,
    /// Load reported by the backends (`source: prometheus` or `header`).
    reports: BackendReports,
    pub metrics: Arc<Metrics>,
}

impl Daemon {
    /// Load (or adopt) the data plane, apply `config`, attach.
    /// Start over `config`, which already has `node` applied; later
    /// configurations (reloads, `lbctl apply`) get `node` applied too.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        node: NodeOverrides,
        health_tx: mpsc::Sender<HealthEvent<CheckKey>>,
        report_tx: mpsc::Sender<ReportEvent<ScrapeKey>>,
    ) -> anyhow::Result<Self> {
        crate::bpffs::prepare(&config.pin_dir).context("pin_dir")?;
        let adopted = Datapath::has_pinned_state(&config.pin_dir);
        // A restart resumes lbctl's edits and drain deadlines.
        let file_text = std::fs::read_to_string(&config_path).unwrap_or_default();
        let state_file = config.state_file.clone();
        // Only the state written for the very data plane adopted.
        let adopting = adopted.then(|| DataPlaneId::of_pins(&config.pin_dir));
        let resumed = runtime_state::resume(&state_file, config, &file_text, &node, adopting);
        if let Some(why) = &resumed.discarded {
            warn!(state_file = %state_file.display(), why = %why, "saved runtime state not used");
        } else if adopted {
            info!(state_file = %state_file.display(), drains = resumed.drain_started.len(), "resuming the saved runtime state");
        }
        let config = resumed.config;
        let drain_started = resumed.drain_started;
        if resumed.node.drained {
            warn!(
                "this node is drained (lbctl node drain): no VIP is announced until `lbctl node resume`"
            );
        }
        // What can fail from the host's side is checked before any map is
        // written: a start that fails leaves a running data plane as it was.
        let outlets = egress::resolve(&config)?;
        onlink::check(&config, None)?;
        if let Some(table) = config.announce {
            announce::check_table(table).map_err(anyhow::Error::msg)?;
        }
        if let Some(name) = &config.control.group {
            group_id(name).with_context(|| format!("control.group: no group {name:?}"))?;
        }
        let pin_lock = PinDirLock::acquire(&config.pin_dir).map_err(|e| {
            if e.is_held() {
                anyhow::anyhow!(
                    "{e}: one lbd runs per pin directory; stop the other first, or give this \
                     one another pin_dir"
                )
            } else {
                anyhow::Error::new(e)
            }
        })?;
        let t = config.tables;
        if adopted {
            refuse_other_table_sizes(&config.pin_dir, &t)?;
        }
        let sizes = MapSizes {
            max_vips: t.max_vips,
            max_backends: t.max_backends,
            ring_size: t.ring_size,
            conn_entries: t.conn_entries,
            probation_entries: t.probation_entries(),
            frag_entries: lb_common::maps::DEFAULT_FRAG_ENTRIES,
        };
        let mut dp =
            Datapath::load_pinned(sizes, &config.pin_dir, PinOwner::LBD).with_context(|| {
                format!(
                    "loading the data plane (pins in {})",
                    config.pin_dir.display()
                )
            })?;
        for m in &dp.migrations {
            info!(migration = %m, "migrated a pinned map to this lbd's layout");
        }
        let data_plane = DataPlaneId::of_pins(&config.pin_dir)
            .map_err(anyhow::Error::msg)
            .context("identifying the data plane for the state file")?;
        let mut maps = Maps::take(&mut dp.ebpf, t.ring_size)?;
        let mut ids = Ids::new(t.max_vips, t.max_backends);
        let mut up_before = BTreeMap::new();
        if adopted {
            let vips: Vec<(VipKey, _)> = maps.vips()?;
            let by_id: BTreeMap<u32, VipKeyOrd> =
                vips.iter().map(|(k, m)| (m.vip_id, (*k).into())).collect();
            let mut backends = Vec::new();
            for (id, b) in maps.backends()? {
                let (Some(vip), Some(addr)) = (by_id.get(&b.vip_id), from_map(&b.addr, b.family))
                else {
                    continue;
                };
                let key = BackendKey { vip: *vip, addr };
                up_before.insert(key, b.flags & BACKEND_F_DOWN == 0);
                backends.push((key, id));
            }
            ids = Ids::adopt(
                t.max_vips,
                t.max_backends,
                vips.iter().map(|(k, m)| ((*k).into(), m.vip_id)),
                backends,
            );
            info!(
                vips = vips.len(),
                backends = up_before.len(),
                "adopted the running data plane"
            );
        }
        // Ports first: the configuration written next may redirect to them.
        egress::open(&mut maps, &outlets, None)?;
        let (health_records, status) = initial_health(&config, &up_before);
        let known = ids.clone();
        // A drain resumed from the saved state may have run out meanwhile.
        let drain_expired = |k: &BackendKey| match (drain_started.get(k), vip_of(&config, &k.vip)) {
            (Some(since), Some(vip)) => since.elapsed() >= Duration::from_secs(vip.drain_timeout_s),
            _ => false,
        };
        let image = image::build(
            &config,
            &mut ids,
            |k| BackendStatus {
                drain_expired: drain_expired(k),
                ..status(k)
            },
            outlets.egress,
        )?;
        clear_stats_of_new_ids(&mut maps, &ids, &known)?;
        let report = sync::apply(&mut maps, None, &image)?;
        egress::close_others(&mut maps, &outlets)?;
        info!(?report, "data plane written");
        let attachments = Attachments::attach_all(&mut dp, &config)?;
        let metrics = Arc::new(Metrics::default());
        metrics.table_rebuilds.inc_by(report.rings_rebuilt as u64);
        metrics.add_slots_moved(&report.slots_moved);
        let announcer = Announcer::new(config.announce, &resumed.node);
        let speaker = SpeakerWatch::start(watched_speaker(&config));
        for a in attachments.iter() {
            log_attached(&a.name, &a.attached);
            show_attachment(&metrics, &a.name, Some(&a.attached));
            // From zero, so that the first re-attach is an increase.
            metrics
                .reattached
                .get_or_create(&InterfaceName {
                    interface: a.name.clone(),
                })
                .inc_by(0);
        }
        for link in attachments.unconfigured() {
            let warning = attachments::unconfigured_warning(&config.pin_dir, link);
            match link {
                crate::pinned_links::OtherLink::Failed { error, .. } => {
                    error!(interface = %link.interface(), error = %errors::chain(error), "{warning}")
                }
                _ => warn!(interface = %link.interface(), "{warning}"),
            }
        }
        let mut daemon = Self {
            config,
            config_path,
            dp,
            _pin_lock: pin_lock,
            maps,
            ids,
            applied: image,
            health: BTreeMap::new(),
            drain_started,
            health_tx,
            next_generation: 1,
            attachments,
            adopted,
            node,
            started: Instant::now(),
            outlets,
            ticks: 0,
            ring_digests: BTreeMap::new(),
            announcer,
            speaker,
            load: BackendLoad::default(),
            load_fresh: false,
            balancers: BTreeMap::new(),
            reports: BackendReports::new(report_tx),
            metrics,
            file_text,
            state: StateWriter::new(state_file, data_plane, node),
        };
        daemon.health = health_records;
        daemon.refresh_ring_digests();
        daemon.refresh_checkers();
        daemon.reports.refresh(&daemon.config);
        daemon.refresh_drains();
        daemon.refresh_announcements();
        daemon.save_state();
        Ok(daemon)
    }

    fn status_of(&self, key: &BackendKey) -> BackendStatus {
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
    fn refresh_ring_digests(&mut self) {
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

    /// Write the runtime state (lbctl's edits, drain start times) so a
    /// restart resumes it. A failure is logged: forwarding does not depend
    /// on it, only what a restart remembers.
    /// Save what a restart must not lose; the error, if it could not be.
    fn save_state(&mut self) -> Option<String> {
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
    fn write(&mut self, config: Config, outlets: Outlets) -> Result<SyncReport, String> {
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
    fn reapply(&mut self) {
        let (config, outlets) = (self.config.clone(), self.outlets.clone());
        if let Err(e) = self.write(config, outlets) {
            error!(error = %e, "re-applying the configuration failed");
        }
    }

    /// Bring the routes that announce VIPs in line with what should be
    /// announced now (`announce::plan`), and show the result in metrics.
    /// Called after every write, every interface change and once a second:
    /// a failure is retried at the next call.
    fn refresh_announcements(&mut self) {
        let attached = self.attachments.iter().any(|a| a.ifindex.is_some());
        let plan = announce::plan(
            &self.config,
            &self.applied,
            attached,
            self.announcer.drained(),
        );
        let before = self.announcer.node_state();
        if !self.announcer.refresh(self.config.announce, plan) {
            self.metrics.announce_failures.inc();
        }
        self.metrics.set_announced(
            &self.config,
            |address| self.announcer.is_announced(address),
            self.announcer.drained(),
        );
        if self.announcer.node_state() != before {
            self.save_state();
        }
    }

    /// `lbctl node drain` (`drained`) and `node resume`: withdraw every VIP
    /// or announce again. The node goes on forwarding what arrives. The
    /// reply comes once the routes are written, and says if that failed.
    fn set_drained(&mut self, drained: bool) -> Result<Value, String> {
        if drained && self.config.announce.is_none() {
            return Err("announce is not configured: this node announces no VIP, so draining would withdraw nothing (see docs/cluster.md)".into());
        }
        let was = self.announcer.drained();
        self.announcer.set_drained(drained);
        self.refresh_announcements();
        let unsaved = self.save_state();
        if was != drained {
            if drained {
                warn!(
                    "node drained: every VIP withdrawn; forwarding goes on for what still arrives"
                );
            } else {
                info!("node resumed: VIPs announced again");
            }
        }
        Ok(json!({
            "drained": drained,
            "was_drained": was,
            "announced": self.announcer.announced().collect::<Vec<_>>(),
            "error": self.announcer.error(),
            "unsaved": unsaved,
        }))
    }

    /// Start checkers for new backends, restart those whose check changed,
    /// stop those of removed backends.
    fn refresh_checkers(&mut self) {
        let mut wanted = BTreeMap::new();
        for vip in &self.config.vips {
            let vkey = image::vip_key(vip.address, vip.port, vip.protocol);
            let port = vip.health_check.port.unwrap_or(vip.port);
            let report_header = vip.balancing.report_header();
            for b in &vip.backends {
                let tunnel = TunnelPath::of(&self.config.tunnel_source, vip, b.address);
                wanted.insert(
                    BackendKey {
                        vip: vkey,
                        addr: b.address,
                    },
                    (
                        vip.health_check.clone(),
                        port,
                        tunnel,
                        report_header.clone(),
                    ),
                );
            }
        }
        self.health.retain(|k, _| wanted.contains_key(k));
        for (key, (check, port, tunnel, report_header)) in wanted {
            let current = self.health.get(&key);
            if current.is_some_and(|h| {
                h.check == check
                    && h.port == port
                    && h.tunnel == tunnel
                    && h.report_header == report_header
                    && h.checker.is_some()
            }) {
                continue;
            }
            let up = current
                .map(|h| h.up)
                .unwrap_or(check.kind == CheckKind::None);
            let target = Target {
                addr: key.addr,
                port,
            };
            let generation = self.next_generation;
            self.next_generation += 1;
            let check_key = CheckKey {
                backend: key,
                generation,
            };
            let checker = health::spawn_checker(
                check.clone(),
                target,
                tunnel,
                report_header.clone(),
                check_key,
                up,
                self.health_tx.clone(),
            );
            self.health.insert(
                key,
                HealthRecord {
                    up,
                    generation,
                    check,
                    port,
                    tunnel,
                    report_header,
                    checker: Some(checker),
                    last_reason: String::new(),
                    last_latency: None,
                    since: Instant::now(),
                },
            );
        }
    }

    fn refresh_drains(&mut self) {
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

    pub fn on_health(&mut self, ev: HealthEvent<CheckKey>) {
        let key = ev.key.backend;
        let Some(rec) = self.health.get_mut(&key) else {
            return;
        };
        if rec.generation != ev.key.generation {
            debug!(backend = %key.addr, "result of a replaced health checker ignored");
            return;
        }
        if let Some(vip) = vip_of(&self.config, &key.vip) {
            self.metrics.observe_check(vip, key.addr, ev.result.latency);
            self.reports.on_probe(key, vip, &ev.result);
        }
        let Some(rec) = self.health.get_mut(&key) else {
            return;
        };
        rec.last_reason = ev.result.reason.clone();
        rec.last_latency = Some(ev.result.latency);
        if rec.up != ev.up {
            rec.up = ev.up;
            rec.since = Instant::now();
            info!(backend = %key.addr, up = ev.up, reason = %ev.result.reason, "backend health changed");
            self.reapply();
        }
    }

    /// A scraper's load report (`source: prometheus`).
    pub fn on_report(&mut self, ev: ReportEvent<ScrapeKey>) {
        self.reports.on_scrape(ev);
    }

    /// Once a second: cut off drains that ran out of time.
    pub fn on_tick(&mut self) {
        let expired_now = self.drain_started.keys().any(|k| {
            let st = self.status_of(k);
            let applied_down = self
                .ids
                .backend(k)
                .and_then(|id| self.applied.backends.get(&id))
                .is_some_and(|b| b.flags & BACKEND_F_DOWN != 0);
            st.drain_expired && !applied_down
        });
        if expired_now {
            info!("a drain timeout expired: cutting the backend off");
            self.reapply();
        }
        self.metrics
            .update_from(&self.maps, &self.ids, &self.config, |k| {
                self.health.get(k).is_none_or(|h| h.up)
            });
        self.sample_load();
        self.balance();
        self.metrics.set_effective_weights(&self.config, |k| {
            self.weight_shown(k)
                .map(|w| f64::from(w.effective) / f64::from(weight_controller::SCALE))
        });
        self.show_load_reports();
        // The kernel's element counts cost a syscall each; a key walk (on
        // kernels without them) costs one per entry, so it is done rarely.
        self.ticks = self.ticks.wrapping_add(1);
        if (self.maps.counts_in_kernel() || self.ticks % WALK_EVERY_TICKS == 1)
            && let Ok(fill) = self.maps.fill(CONN_COUNT_LIMIT)
        {
            self.metrics.set_fill(&fill);
        }
        // Puts back what someone removed, retries what failed.
        self.refresh_announcements();
        self.metrics.set_speaker(&self.speaker.state());
    }

    /// The backends' load reports and hard-limit states into the metrics.
    fn show_load_reports(&self) {
        let now = Instant::now();
        let limited =
            |v: &Vip| v.balancing.hard_limit.is_some() && v.balancing.mode == BalancingMode::Load;
        self.metrics.set_load_reports(
            &self.config,
            |k, v| {
                let r = self.reports.shown(k, v, now)?;
                Some(crate::metrics::ReportGauges {
                    utilization: r.reading.map(|x| x.utilization),
                    load: r.reading.map(|x| x.load),
                    age_s: r.age.map(|a| a.as_secs_f64()),
                    stale: r.stale,
                    over_limit: limited(v)
                        .then(|| self.weight_shown(k).is_some_and(|w| w.over_limit)),
                })
            },
            |key| {
                let v = vip_of(&self.config, key)?;
                limited(v).then(|| self.balancers.get(key).is_some_and(|c| c.limit_waived()))
            },
        );
    }

    /// Read the backends' live load (`backend_load`) into the metrics.
    fn sample_load(&mut self) {
        let ids: Vec<u32> = self.ids.backends().map(|(_, id)| *id).collect();
        self.load_fresh = match self.load.sample(&self.maps, &ids, Instant::now()) {
            Ok(()) => true,
            Err(e) => {
                warn!("reading the backends' load: {e}");
                false
            }
        };
        self.metrics.set_backend_load(&self.config, |k| {
            self.ids.backend(k).and_then(|id| self.load.get(id))
        });
    }

    /// The weight `key`'s share of new flows follows, and why, as shown:
    /// the configured one in `static` mode, the controller's in `load`
    /// mode; `None` while the backend is out of the ring.
    fn weight_shown(&self, key: &BackendKey) -> Option<weight_controller::Weight> {
        let vip = vip_of(&self.config, &key.vip)?;
        let backend = vip.backends.iter().find(|b| b.address == key.addr)?;
        let id = self.ids.backend(key)?;
        let in_ring = self
            .applied
            .vips
            .get(&key.vip)
            .is_some_and(|i| i.members.iter().any(|m| m.id == id));
        match vip.balancing.mode {
            BalancingMode::Static => in_ring.then(|| weight_controller::Weight {
                effective: backend.weight * weight_controller::SCALE,
                why: "configured (balancing static)".into(),
                over_limit: false,
            }),
            BalancingMode::Load => self.balancers.get(&key.vip)?.weight(&key.addr),
        }
    }

    /// The effective weight of `key` (`weight_controller`), if its VIP is
    /// in `load` mode and the backend in service.
    fn effective_weight(&self, key: &BackendKey) -> Option<u32> {
        effective_weight(&self.config, &self.balancers, key)
    }

    /// Each `load`-mode VIP whose interval has passed: adjust its
    /// backends' effective weights, and rebuild its ring if they changed,
    /// logging why. Controllers of VIPs no longer in `load` mode go (their
    /// next rebuild uses the configured weights).
    fn balance(&mut self) {
        let now = Instant::now();
        let load_vips: BTreeMap<VipKeyOrd, crate::config::Balancing> = self
            .config
            .vips
            .iter()
            .filter(|v| v.balancing.mode == BalancingMode::Load)
            .map(|v| {
                (
                    image::vip_key(v.address, v.port, v.protocol),
                    v.balancing.clone(),
                )
            })
            .collect();
        let before = self.balancers.len();
        self.balancers.retain(|k, _| load_vips.contains_key(k));
        let mut rebuild = self.balancers.len() != before;
        let ring_size = self.config.tables.ring_size;
        for (key, params) in &load_vips {
            let controller = self.balancers.entry(*key).or_default();
            if !controller.due(params, now) {
                continue;
            }
            let Some(vip) = self.applied.vips.get(key) else {
                continue;
            };
            let Some(config) = vip_of(&self.config, key) else {
                continue;
            };
            let members: Vec<Member> = vip
                .members
                .iter()
                .filter_map(|m| {
                    let configured = config.backends.iter().find(|b| b.address == m.addr)?.weight;
                    let (load, limit) = match backend_reports::reported_source(config) {
                        None => {
                            let flows = self
                                .load_fresh
                                .then(|| self.load.get(m.id).map(|l| l.active_flows))
                                .flatten();
                            (flows.map(Load::Flows), None)
                        }
                        Some(_) => {
                            let bkey = BackendKey {
                                vip: *key,
                                addr: m.addr,
                            };
                            let reading = self.reports.fresh(&bkey, config, now);
                            (
                                reading.map(|r| Load::Utilization(r.utilization)),
                                reading.and_then(|r| r.limit),
                            )
                        }
                    };
                    Some(Member {
                        addr: m.addr,
                        id: m.id,
                        configured,
                        load,
                        limit,
                    })
                })
                .collect();
            let ring_moved = |old: &[(u32, u32)], new: &[(u32, u32)]| {
                weight_controller::moved_share(&members, old, new, ring_size)
            };
            let change = controller.step(params, &members, now, ring_moved);
            for event in controller.take_limit_events() {
                if event.entered {
                    warn!(vip = %key, "hard limit: {}", event.text);
                } else {
                    info!(vip = %key, "hard limit: {}", event.text);
                }
            }
            if let Some(change) = change {
                info!(
                    vip = %key,
                    ring_moved = format!("{:.1}%", change.ring_moved * 100.0),
                    reason = %change.reason,
                    "effective weights changed: rebuilding the ring"
                );
                rebuild = true;
            }
        }
        if rebuild {
            self.reapply();
        }
    }

    /// Compare the attached interfaces with those that exist now (a link
    /// event arrived): attach again to an interface deleted and created
    /// anew, and give the data plane its new index (and the egress its new
    /// MAC). The first start made all this true; this keeps it true.
    pub fn reconcile_interfaces(&mut self) {
        for change in self.attachments.reconcile(&mut self.dp) {
            match change {
                Change::Gone { name, ifindex } => {
                    warn!(interface = %name, "interface gone: forwarding on it has stopped; lbd attaches again when it comes back");
                    show_attachment(&self.metrics, &name, None);
                    // The kernel dropped its redirect port with it; nothing
                    // written from now on may count on it (or its MAC).
                    self.outlets.ports.remove(&ifindex);
                    if let Err(e) = self.maps.remove_tx_port(ifindex) {
                        warn!(interface = %name, error = %e, "forgetting the gone interface's port failed");
                    }
                }
                Change::Reattached {
                    name,
                    ifindex,
                    attached,
                } => {
                    // The redirect port under the old index went with the
                    // interface; the program may redirect to the new one.
                    let opened = netdev::mac_address(&name)
                        .map_err(|e| errors::report(&e))
                        .and_then(|mac| {
                            self.maps
                                .add_tx_port(ifindex, mac)
                                .map_err(|e| e.to_string())?;
                            self.outlets.ports.insert(ifindex, mac);
                            Ok(())
                        });
                    if let Err(e) = opened {
                        error!(interface = %name, error = %e, "allowing redirects to the re-created interface failed");
                    }
                    info!(interface = %name, ifindex, replaced_dead_link = attached.replaced_dead_link, "interface re-created: program attached again");
                    log_attached(&name, &attached);
                    self.metrics
                        .reattached
                        .get_or_create(&InterfaceName {
                            interface: name.clone(),
                        })
                        .inc();
                    show_attachment(&self.metrics, &name, Some(&attached));
                }
                Change::Failed { name, error } => {
                    error!(interface = %name, error = %crate::errors::chain(&error), "attaching to the re-created interface failed; retried at the next link event");
                }
            }
        }
        self.refresh_outlets();
        // An interface gone may have been the last one attached, or the
        // first one back.
        self.refresh_announcements();
    }

    /// Interfaces deleted and created again have new indexes, and the
    /// egress interface a new MAC: resolve the running configuration's
    /// outlets again and write them if they changed (the egress in
    /// LB_CONFIG, TX ports opened before, stale ones closed after). An
    /// interface of `interfaces` still gone is left out; while the egress
    /// interface is gone the old values stay, and its packets are dropped
    /// and counted.
    fn refresh_outlets(&mut self) {
        let Ok((now, _gone)) = egress::resolve_present(&self.config) else {
            return;
        };
        if now == self.outlets {
            return;
        }
        let config = self.config.clone();
        match self.write(config, now) {
            Ok(_) => info!(
                "re-created interfaces: the data plane sends through their new indexes and MACs"
            ),
            Err(e) => {
                error!(error = %e, "updating the data plane for re-created interfaces failed")
            }
        }
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

    pub fn handle(&mut self, req: Request) -> Reply {
        match self.dispatch(req) {
            Ok(v) => Reply::data(v),
            Err(e) => Reply::error(e),
        }
    }

    fn edit(
        &mut self,
        change: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<Value, String> {
        let mut config = self.config.clone();
        change(&mut config)?;
        let report = self.apply(config)?;
        Ok(
            json!({ "applied": true, "rings_rebuilt": report.rings_rebuilt, "elapsed_ms": report.elapsed.as_secs_f64() * 1e3 }),
        )
    }

    fn dispatch(&mut self, req: Request) -> Result<Value, String> {
        match req {
            Request::Status => Ok(self.status()),
            Request::VipList => Ok(self.vip_list()),
            Request::VipAdd { vip } => self.edit(|c| {
                c.vips.push(*vip);
                Ok(())
            }),
            Request::VipDel { vip } => self.edit(|c| {
                let i = find_vip(c, &vip)?;
                c.vips.remove(i);
                Ok(())
            }),
            Request::BackendList { vip } => self.backend_list(vip.as_ref()),
            Request::VipShow { vip } => self.vip_show(&vip),
            Request::BackendAdd { vip, backend } => self.edit(|c| {
                let i = find_vip(c, &vip)?;
                c.vips[i].backends.push(backend);
                Ok(())
            }),
            Request::BackendDel { vip, address } => self.edit(|c| {
                let (i, j) = find_backend(c, &vip, address)?;
                c.vips[i].backends.remove(j);
                Ok(())
            }),
            Request::BackendDrain { vip, address } => {
                self.edit(|c| set_state(c, &vip, address, AdminState::Drain))
            }
            Request::BackendUndrain { vip, address } => {
                self.edit(|c| set_state(c, &vip, address, AdminState::Active))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => self.edit(|c| {
                let (i, j) = find_backend(c, &vip, address)?;
                c.vips[i].backends[j].weight = weight;
                Ok(())
            }),
            Request::Stats => self.stats(),
            Request::Flow {
                src,
                sport,
                dst,
                dport,
                protocol,
            } => self.flow(src, sport, dst, dport, protocol),
            Request::ConnList {
                vip,
                backend,
                client,
                probation,
                limit,
                scan,
            } => {
                let filter = conn_list::ConnFilter {
                    vip,
                    backend,
                    client,
                    probation,
                    limit: limit.min(CONN_LIST_MAX_ROWS),
                    scan: scan.min(CONN_LIST_MAX_SCAN),
                };
                let list =
                    conn_list::list(&self.maps, &self.ids, &filter).map_err(|e| e.to_string())?;
                serde_json::to_value(list).map_err(|e| e.to_string())
            }
            Request::Apply { text, format } => {
                let config =
                    Config::from_text_for(&text, format, &self.node).map_err(|e| e.to_string())?;
                let report = self.apply(config)?;
                Ok(
                    json!({ "applied": true, "rings_rebuilt": report.rings_rebuilt, "elapsed_ms": report.elapsed.as_secs_f64() * 1e3 }),
                )
            }
            Request::ConfigDump => serde_json::to_value(&self.config).map_err(|e| e.to_string()),
            Request::NodeDrain => self.set_drained(true),
            Request::NodeResume => self.set_drained(false),
            Request::Capture { .. } => Err("capture is served on its own connection".into()),
        }
    }

    /// One line for the service manager's status (`systemctl status lbd`).
    pub fn summary(&self) -> String {
        let in_service: usize = self.applied.vips.values().map(|v| v.members.len()).sum();
        format!(
            "forwarding: {} VIPs, {} backends in service",
            self.config.vips.len(),
            in_service
        )
    }

    fn status(&self) -> Value {
        let backends: usize = self.config.vips.iter().map(|v| v.backends.len()).sum();
        let up = self.health.values().filter(|h| h.up).count();
        let reasons: BTreeMap<&str, u64> = Reason::ALL
            .iter()
            .filter_map(|r| {
                self.maps
                    .reason_count(*r)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| (r.name(), n))
            })
            .collect();
        let fill = self.maps.fill(CONN_COUNT_LIMIT).ok();
        let table = |t: Option<TableFill>| {
            t.map(|t| json!({"entries": t.entries, "capacity": t.capacity, "fill": t.ratio()}))
        };
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "config": self.config_path.display().to_string(),
            "pin_dir": self.config.pin_dir.display().to_string(),
            "adopted_running_data_plane": self.adopted,
            "interfaces": self.attachments.status(),
            "unconfigured_links": self.attachments.unconfigured_status(),
            "vips": self.config.vips.len(),
            "backends": backends,
            "backends_up": up,
            "ring_size": self.config.tables.ring_size,
            "connection_entries": fill.as_ref().map(|f| f.conns.entries),
            "connection_table_size": self.config.tables.conn_entries,
            "occupancy": {
                "connections": table(fill.as_ref().map(|f| f.conns)),
                "probation": table(fill.as_ref().map(|f| f.probation)),
                "exact": fill.as_ref().map(|f| f.exact),
                "counted_by": fill.as_ref().map(|f| match &f.method {
                    FillMethod::Kernel => "kernel element count".to_string(),
                    FillMethod::Walk(why) => format!("key walk, at most {CONN_COUNT_LIMIT} ({why})"),
                }),
            },
            "table_rebuilds": self.metrics.table_rebuilds.get(),
            "drained": self.announcer.drained(),
            "announce": self.announcer.status(),
            "speaker": self.config.announce.map(|_| self.speaker.state().to_json()),
            "ring_digests": self.config.vips.iter().map(|v| {
                let key = image::vip_key(v.address, v.port, v.protocol);
                let vip = VipRef { address: v.address, port: v.port, protocol: v.protocol };
                (vip.to_string(), json!(self.ring_digests.get(&key).map(|d| ring_digest::hex(*d))))
            }).collect::<serde_json::Map<String, Value>>(),
            "counters": reasons,
        })
    }

    fn vip_list(&self) -> Value {
        let rows: Vec<Value> = self
            .config
            .vips
            .iter()
            .map(|v| {
                let key = image::vip_key(v.address, v.port, v.protocol);
                let up = v
                    .backends
                    .iter()
                    .filter(|b| {
                        self.health
                            .get(&BackendKey {
                                vip: key,
                                addr: b.address,
                            })
                            .is_none_or(|h| h.up)
                    })
                    .count();
                let in_table = self.applied.vips.get(&key).map_or(0, |i| i.members.len());
                json!({
                    "name": v.name,
                    "address": v.address,
                    "port": v.port,
                    "protocol": v.protocol.name(),
                    "forwarding": v.forwarding,
                    "affinity": v.affinity,
                    "id": self.ids.vip(&key),
                    "backends": v.backends.len(),
                    "healthy": up,
                    "in_table": in_table,
                    "ring_digest": self.ring_digests.get(&key).map(|d| ring_digest::hex(*d)),
                    "announced": self.config.announce.map(|_| self.announcer.is_announced(v.address)),
                })
            })
            .collect();
        Value::Array(rows)
    }

    /// `lbctl vip show`: how `vref`'s new flows are shared, and why.
    fn vip_show(&self, vref: &VipRef) -> Result<Value, String> {
        let v = &self.config.vips[find_vip(&self.config, vref)?];
        let key = image::vip_key(v.address, v.port, v.protocol);
        let now = Instant::now();
        let controller = self.balancers.get(&key);
        let backends = v
            .backends
            .iter()
            .map(|b| {
                let bkey = BackendKey {
                    vip: key,
                    addr: b.address,
                };
                let weight = self.weight_shown(&bkey);
                let shown = self.reports.shown(&bkey, v, now);
                let health = match self.health.get(&bkey) {
                    _ if v.health_check.kind == CheckKind::None => "unchecked",
                    Some(h) if h.up => "up",
                    _ => "down",
                };
                control::BackendShow {
                    address: b.address,
                    weight: b.weight,
                    state: b.state,
                    health: health.into(),
                    effective_weight: weight
                        .as_ref()
                        .map(|w| f64::from(w.effective) / f64::from(weight_controller::SCALE)),
                    why: weight.as_ref().map(|w| w.why.clone()),
                    active_flows: self
                        .ids
                        .backend(&bkey)
                        .and_then(|id| self.load.get(id))
                        .map(|l| l.active_flows),
                    report: shown.map(|r| control::ReportShow {
                        utilization: r.reading.map(|x| x.utilization),
                        load: r.reading.map(|x| x.load),
                        limit_value: r.reading.and_then(|x| x.limit),
                        age_s: r.age.map(|a| a.as_secs_f64()),
                        stale: r.stale,
                        error: r.error,
                    }),
                    over_hard_limit: weight.is_some_and(|w| w.over_limit),
                }
            })
            .collect();
        let show = control::VipShow {
            vip: *vref,
            mode: v.balancing.mode,
            source: v.balancing.source,
            hard_limit: v.balancing.hard_limit.clone(),
            hard_limit_waived: controller.is_some_and(|c| c.limit_waived()),
            backends,
        };
        serde_json::to_value(show).map_err(|e| e.to_string())
    }

    fn backend_list(&self, only: Option<&VipRef>) -> Result<Value, String> {
        if let Some(v) = only {
            find_vip(&self.config, v)?;
        }
        let mut rows = Vec::new();
        for v in &self.config.vips {
            let vref = VipRef {
                address: v.address,
                port: v.port,
                protocol: v.protocol,
            };
            if only.is_some_and(|o| *o != vref) {
                continue;
            }
            let key = image::vip_key(v.address, v.port, v.protocol);
            let members = self
                .applied
                .vips
                .get(&key)
                .map(|i| i.members.clone())
                .unwrap_or_default();
            for b in &v.backends {
                let bkey = BackendKey {
                    vip: key,
                    addr: b.address,
                };
                let id = self.ids.backend(&bkey);
                let h = self.health.get(&bkey);
                let load = id.and_then(|id| self.load.get(id));
                let effective = self.weight_shown(&bkey);
                let health = match h {
                    _ if v.health_check.kind == CheckKind::None => "unchecked",
                    Some(h) if h.up => "up",
                    _ => "down",
                };
                let drain_left = self.drain_started.get(&bkey).map(|since| {
                    let left =
                        Duration::from_secs(v.drain_timeout_s).saturating_sub(since.elapsed());
                    left.as_secs_f64().ceil() as u64
                });
                rows.push(json!({
                    "vip": vref.to_string(),
                    "address": b.address,
                    "id": id,
                    "weight": b.weight,
                    "state": b.state,
                    "health": health,
                    "in_table": id.is_some_and(|id| members.iter().any(|m| m.id == id)),
                    "last_check": h.map(|h| h.last_reason.clone()),
                    "check_latency_ms": h.and_then(|h| h.last_latency).map(|d| d.as_secs_f64() * 1e3),
                    "drain_remaining_s": drain_left,
                    "effective_weight": effective.as_ref().map(|w| f64::from(w.effective) / f64::from(weight_controller::SCALE)),
                    "weight_reason": effective.map(|w| w.why),
                    "active_flows": load.map(|l| l.active_flows),
                    "inactive_flows": load.map(|l| l.inactive_flows),
                    "new_flows_per_s": load.map(|l| l.new_flows_per_s),
                    "bytes_per_s": load.map(|l| l.bytes_per_s),
                }));
            }
        }
        Ok(Value::Array(rows))
    }

    fn stats(&self) -> Result<Value, String> {
        let mut vips = Vec::new();
        let mut backends = Vec::new();
        for v in &self.config.vips {
            let key = image::vip_key(v.address, v.port, v.protocol);
            let vref = VipRef {
                address: v.address,
                port: v.port,
                protocol: v.protocol,
            };
            if let Some(id) = self.ids.vip(&key) {
                let s = self.maps.vip_stats(id).map_err(|e| e.to_string())?;
                vips.push(json!({ "vip": vref.to_string(), "packets": s.packets, "bytes": s.bytes, "new_flows": s.new_flows, "dropped": s.dropped }));
            }
            for b in &v.backends {
                if let Some(id) = self.ids.backend(&BackendKey {
                    vip: key,
                    addr: b.address,
                }) {
                    let s = self.maps.backend_stats(id).map_err(|e| e.to_string())?;
                    backends.push(json!({ "vip": vref.to_string(), "address": b.address, "packets": s.packets, "bytes": s.bytes, "new_flows": s.new_flows }));
                }
            }
        }
        let reasons: BTreeMap<&str, u64> = Reason::ALL
            .iter()
            .filter_map(|r| self.maps.reason_count(*r).ok().map(|n| (r.name(), n)))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(
            json!({ "time_s": now.as_secs_f64(), "vips": vips, "backends": backends, "counters": reasons }),
        )
    }

    /// What the data plane does with the flow's next packet, decided the
    /// way it decides (`lb_common::maps::entry_pins` / `backend_serves`)
    /// over the live maps: a connection entry that the program would find
    /// stale is reported as such, with where the flow goes instead.
    fn flow(
        &self,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        protocol: Protocol,
    ) -> Result<Value, String> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err("source and destination must be of the same address family".into());
        }
        let exact = image::vip_key(dst, dport, protocol);
        let portless = image::vip_key(dst, 0, protocol);
        let (vkey, vip) = [exact, portless]
            .into_iter()
            .find_map(|k| self.applied.vips.get(&k).map(|v| (k, v.clone())))
            .filter(|(k, v)| k.port == dport || v.flags & VIP_F_PORTLESS != 0)
            .ok_or_else(|| format!("{dst}:{dport}/{} is not a VIP", protocol.name()))?;
        let (s, family) = to_map(src);
        let (d, _) = to_map(dst);
        let proto = vkey.proto;
        let flow = FlowKey {
            src: s,
            dst: d,
            sport,
            dport,
            proto,
            family,
            _pad: [0; 2],
        };
        let describe = |id: u32| {
            self.ids
                .backends()
                .find(|(_, i)| **i == id)
                .map(|(k, _)| k.addr.to_string())
                .unwrap_or_else(|| format!("id {id}"))
        };
        let backend = |id: u32| self.maps.backend(id).map_err(|e| e.to_string());
        // The program looks in the connection table, and only when the
        // flow has no entry there, in the probation table.
        let conn = self.maps.conn(&flow).map_err(|e| e.to_string())?;
        let (entry, table, holds) = match conn {
            Some(e) => (
                Some(e),
                "connection",
                "connection entry (established flow keeps its backend)",
            ),
            None => (
                self.maps
                    .probation_entry(&flow)
                    .map_err(|e| e.to_string())?,
                "probation",
                "probation entry (one packet seen; the next enters the connection table)",
            ),
        };
        let mut stale = None;
        if let Some(entry) = entry {
            match entry_pins(&entry, vip.id, &backend(entry.backend_id)?) {
                Ok(()) => {
                    return Ok(json!({
                        "backend": describe(entry.backend_id),
                        "backend_id": entry.backend_id,
                        "reason": holds,
                    }));
                }
                Err(_) if entry.vip_id != vip.id => {
                    stale = Some(format!("its {table} entry was made for another VIP"));
                }
                Err(why) => {
                    stale = Some(format!(
                        "its {table} entry names backend id {} ({}), which can no longer take it: {}",
                        entry.backend_id,
                        describe(entry.backend_id),
                        why.help()
                    ));
                }
            }
        }
        let rescheduled = stale
            .as_ref()
            .map(|why| format!("; rescheduled, since {why}"))
            .unwrap_or_default();
        let hash = flow_hash(&flow, vip.flags & VIP_F_AFFINITY != 0);
        let slot = maglev_slot(hash, self.config.tables.ring_size);
        let meta = self
            .maps
            .vip(&vkey.into())
            .map_err(|e| e.to_string())?
            .ok_or("VIP not in the data plane")?;
        let id = self
            .maps
            .ring_slot(&meta, slot)
            .map_err(|e| e.to_string())?;
        if id == lb_common::maps::NO_BACKEND {
            return Ok(json!({
                "backend": null,
                "stale_entry": stale,
                "reason": format!("table slot {slot} is empty: the VIP has no backend in service (drop_no_backend){rescheduled}"),
            }));
        }
        if let Err(why) = backend_serves(&backend(id)?, vip.id) {
            return Ok(json!({
                "backend": null,
                "stale_entry": stale,
                "reason": format!("table slot {slot} names backend {}, which cannot take it: dropped as {} ({}){rescheduled}", describe(id), why.name(), why.help()),
            }));
        }
        let second_hop = if proto == PROTO_TCP {
            self.second_hop(meta.vip_id, slot, id)?
        } else {
            None
        };
        let note = match second_hop {
            Some(prev) => format!(
                " (the slot moved from {} within the VIP's second-chance window: a packet in neither table but a SYN goes there with {} as its second hop, which keeps it if it has the connection)",
                describe(prev),
                describe(prev)
            ),
            None if proto == PROTO_TCP => " (a SYN is not entered in the connection table; the handshake's ACK goes on probation, the next packet enters it)".to_string(),
            None => String::new(),
        };
        Ok(json!({
            "backend": describe(id),
            "backend_id": id,
            "hash": hash,
            "slot": slot,
            "second_hop": second_hop.map(describe),
            "stale_entry": stale,
            "reason": format!("table slot {slot} of {}{note}{rescheduled}", self.config.tables.ring_size),
        }))
    }

    /// The previous owner a packet on `slot` of VIP `vip_id` (owned by
    /// `owner` now) takes along as a second hop, while the slot's window is
    /// open and second chance is on.
    fn second_hop(&self, vip_id: u32, slot: u32, owner: u32) -> Result<Option<u32>, String> {
        let e = |e: crate::maps::MapsError| e.to_string();
        if self.maps.second_chance().map_err(e)?.gue_port == 0 {
            return Ok(None);
        }
        let now_s = lb_common::maps::coarse_seconds(crate::second_chance::monotonic_ns());
        let prev = self.maps.prev_owners(vip_id).map_err(e)?[slot as usize];
        Ok((prev.live_at(now_s) && prev.owner != owner).then_some(prev.owner))
    }

    /// The data plane's packet capture, for the control socket to serve
    /// (once: it takes the capture maps).
    pub fn capturer(&mut self) -> anyhow::Result<Capturer> {
        let maps = CaptureMaps::take(&mut self.dp.ebpf).context("capture maps")?;
        Capturer::new(maps, self.config.pin_dir.clone()).context("capture ring buffer")
    }

    pub fn control_socket(&self) -> (PathBuf, Option<String>) {
        (
            self.config.control.socket.clone(),
            self.config.control.group.clone(),
        )
    }
}

fn log_attached(name: &str, a: &Attached) {
    if a.native_refused.is_some() {
        let reason = a.native_refused.as_deref().unwrap_or("unknown");
        warn!(interface = %name, reason, "native XDP refused: running in generic (skb) mode, which is much slower");
    }
    info!(interface = %name, native = a.native, replaced = a.replaced, replaced_dead_link = a.replaced_dead_link, "attached");
}

/// `lb_attached` for `name`: 1 under the mode it has, 0 while it is not
/// attached (`None`: the last mode's series stays, at 0).
fn show_attachment(metrics: &Metrics, name: &str, attached: Option<&Attached>) {
    let labels = |mode: &str| InterfaceLabels {
        interface: name.to_string(),
        mode: mode.into(),
    };
    match attached {
        Some(a) => {
            let mode = attachments::mode_name(a);
            for other in ["native", "generic"].into_iter().filter(|m| *m != mode) {
                metrics.attached.remove(&labels(other));
            }
            metrics.attached.get_or_create(&labels(mode)).set(1);
        }
        None => {
            for mode in ["native", "generic"] {
                if let Some(g) = metrics.attached.get(&labels(mode)) {
                    g.set(0);
                }
            }
        }
    }
}

/// Zero the data plane's counters of the ids that `now` uses and `before`
/// did not, before any map entry names them: a recycled id must not carry
/// its last owner's packets and bytes into `lbctl stats` and the metrics.
/// Nothing counts under a free id (no VIP or backend entry has it), so the
/// counts start from zero.
fn clear_stats_of_new_ids(maps: &mut Maps, now: &Ids, before: &Ids) -> Result<(), MapsError> {
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

/// The effective weight of backend `key` in `config`: its controller's, if
/// its VIP is in `load` mode and the controller has it in service.
fn effective_weight(
    config: &Config,
    balancers: &BTreeMap<VipKeyOrd, weight_controller::Controller>,
    key: &BackendKey,
) -> Option<u32> {
    let vip = vip_of(config, &key.vip)?;
    if vip.balancing.mode != BalancingMode::Load {
        return None;
    }
    balancers
        .get(&key.vip)?
        .weight(&key.addr)
        .map(|w| w.effective)
}

fn vip_of<'a>(config: &'a Config, key: &VipKeyOrd) -> Option<&'a Vip> {
    config
        .vips
        .iter()
        .find(|v| image::vip_key(v.address, v.port, v.protocol) == *key)
}

fn check_for<'a>(config: &'a Config, key: &BackendKey) -> Option<&'a HealthCheck> {
    config
        .vips
        .iter()
        .find(|v| image::vip_key(v.address, v.port, v.protocol) == key.vip)
        .map(|v| &v.health_check)
}

/// Health records at startup: adopted backends keep the state the data
/// plane had (a restart never blackholes traffic); others with checks
/// start down until they pass `rise` checks.
#[allow(clippy::type_complexity)]
fn initial_health(
    config: &Config,
    up_before: &BTreeMap<BackendKey, bool>,
) -> (
    BTreeMap<BackendKey, HealthRecord>,
    Box<dyn Fn(&BackendKey) -> BackendStatus>,
) {
    let mut records = BTreeMap::new();
    let mut ups = BTreeMap::new();
    for vip in &config.vips {
        let vkey = image::vip_key(vip.address, vip.port, vip.protocol);
        for b in &vip.backends {
            let key = BackendKey {
                vip: vkey,
                addr: b.address,
            };
            let up = vip.health_check.kind == CheckKind::None
                || up_before.get(&key).copied().unwrap_or(false);
            ups.insert(key, up);
            records.insert(
                key,
                HealthRecord {
                    up,
                    // No checker yet: `refresh_checkers` starts one.
                    generation: 0,
                    check: vip.health_check.clone(),
                    port: vip.health_check.port.unwrap_or(vip.port),
                    tunnel: None,
                    report_header: None,
                    checker: None,
                    last_reason: String::new(),
                    last_latency: None,
                    since: Instant::now(),
                },
            );
        }
    }
    let status = move |k: &BackendKey| BackendStatus {
        healthy: ups.get(k).copied().unwrap_or(true),
        drain_expired: false,
        weight: None,
    };
    (records, Box::new(status))
}

fn find_vip(c: &Config, v: &VipRef) -> Result<usize, String> {
    c.vips
        .iter()
        .position(|x| x.address == v.address && x.port == v.port && x.protocol == v.protocol)
        .ok_or_else(|| format!("no VIP {v}"))
}

fn find_backend(c: &Config, v: &VipRef, address: IpAddr) -> Result<(usize, usize), String> {
    let i = find_vip(c, v)?;
    let j = c.vips[i]
        .backends
        .iter()
        .position(|b| b.address == address)
        .ok_or_else(|| format!("VIP {v} has no backend {address}"))?;
    Ok((i, j))
}

fn set_state(c: &mut Config, v: &VipRef, address: IpAddr, state: AdminState) -> Result<(), String> {
    let (i, j) = find_backend(c, v, address)?;
    c.vips[i].backends[j].state = state;
    Ok(())
}

/// A request from a control connection, with where to send the reply.
pub type ControlMsg = (Request, oneshot::Sender<Reply>);

/// Accept control connections; each is served by its own task, so a slow
/// or stalled client holds up no one else.
/// The BIRD socket to watch: only while VIPs are announced.
fn watched_speaker(config: &Config) -> Option<PathBuf> {
    config
        .announce
        .and_then(|_| config.speaker.bird_socket.clone())
}

pub async fn serve_control(
    listener: UnixListener,
    tx: mpsc::Sender<ControlMsg>,
    capturer: Option<Arc<Capturer>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let capturer = capturer.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let reply = match control::read_request(&mut reader).await {
                    Ok(None) => return,
                    // Streams its replies, then the connection ends.
                    Ok(Some(Request::Capture { spec })) => {
                        return serve_capture(capturer.as_deref(), &spec, reader, write).await;
                    }
                    Ok(Some(req)) => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send((req, reply_tx)).await.is_err() {
                            return;
                        }
                        match reply_rx.await {
                            Ok(r) => r,
                            Err(_) => Reply::error("lbd is shutting down"),
                        }
                    }
                    Err(reply) => {
                        let _ = write_reply(&mut write, &reply).await;
                        return;
                    }
                };
                if write_reply(&mut write, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One `lbctl capture` on its connection: a line per event, or one error.
async fn serve_capture(
    capturer: Option<&Capturer>,
    spec: &CaptureSpec,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
) {
    let Some(capturer) = capturer else {
        let _ = write_reply(&mut write, &Reply::error("this lbd cannot capture")).await;
        return;
    };
    // lbctl sends nothing more: anything readable is its end.
    let gone = async {
        let _ = reader.fill_buf().await;
    };
    let (events_tx, mut events) = mpsc::channel::<CaptureEvent>(1024);
    let run = capturer.run(spec, gone, events_tx);
    let forward = async {
        while let Some(event) = events.recv().await {
            let reply = match serde_json::to_value(&event) {
                Ok(data) => Reply::data(data),
                Err(e) => Reply::error(format!("encoding a capture record: {e}")),
            };
            if write_reply(&mut write, &reply).await.is_err() {
                // Dropping the receiver ends the capture.
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(run, forward);
    match result {
        Ok(Some(end)) => {
            info!(packets = end.packets, ended_by = %end.ended_by, lost = end.lost, "capture ended")
        }
        Ok(None) => info!("capture ended: lbctl went away"),
        Err(why) => {
            let _ = write_reply(&mut write, &Reply::error(why)).await;
        }
    }
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"reply encoding failed"}"#.to_vec());
    line.push(b'\n');
    w.write_all(&line).await
}

/// Create the control socket: owned by root, mode 0600, or 0660 with a
/// group. It is created under a umask that leaves it 0600, so no moment
/// exists in which others could connect; the group gets it only after the
/// owner group is set.
pub fn bind_control(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let gid = match group {
        Some(name) => {
            Some(group_id(name).with_context(|| format!("control.group: no group {name:?}"))?)
        }
        None => None,
    };
    // SAFETY: umask only swaps this process's file-creation mask; nothing
    // else creates files while lbd starts.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = gid {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid path; uid -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            bail!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// Pinned maps keep the sizes they were created with: running on would
/// silently use the old ones. Refused before anything is loaded or
/// written, naming each difference; the running program keeps forwarding.
fn refuse_other_table_sizes(pin_dir: &Path, t: &Tables) -> anyhow::Result<()> {
    let entries = |name| pinned_entries(pin_dir, name);
    let (vips, backends, conns, rings) = (
        entries(MAP_VIPS)?,
        entries(MAP_BACKENDS)?,
        entries(MAP_CONNS)?,
        entries(MAP_RINGS)?,
    );
    let probation = entries(MAP_PROBATION)?;
    let mut differ = Vec::new();
    // The ring map holds two rings of ring_size slots per VIP.
    if let (Some(rings), Some(vips)) = (rings, vips.filter(|v| *v > 0)) {
        let ring_size = rings / (2 * vips);
        if ring_size != t.ring_size {
            differ.push(format!(
                "tables.ring_size is {} but the running data plane uses {ring_size}",
                t.ring_size
            ));
        }
    }
    for (field, want, have) in [
        ("max_vips", t.max_vips, vips),
        ("max_backends", t.max_backends, backends),
        ("conn_entries", t.conn_entries, conns),
        ("probation_entries", t.probation_entries(), probation),
    ] {
        if let Some(have) = have.filter(|have| *have != want) {
            let derived = field == "probation_entries" && t.probation_entries.is_none();
            let field = if derived {
                "probation_entries (by default conn_entries / 8)"
            } else {
                field
            };
            differ.push(format!(
                "tables.{field} is {want} but the pinned map holds {have}"
            ));
        }
    }
    if !differ.is_empty() {
        bail!(
            "{}: table sizes change only with `lbd --teardown` first (drops connections), or revert the config",
            differ.join("; ")
        );
    }
    Ok(())
}

/// Remove everything lbd pinned: detaches the program (forwarding stops).
/// Refused while an lbd runs over the pins: it would go on writing maps
/// that no longer drive anything.
pub fn teardown(config: &Config) -> anyhow::Result<()> {
    let dir = &config.pin_dir;
    let _lock = if dir.exists() {
        Some(PinDirLock::acquire(dir).map_err(|e| {
            if e.is_held() {
                anyhow::anyhow!("{e}: stop lbd first (e.g. `systemctl stop lbd`), then tear down")
            } else {
                anyhow::Error::new(e)
            }
        })?)
    } else {
        None
    };
    // The routes first, and all of them, or nothing else: routes left in
    // the table would keep the router sending to a node that no longer
    // balances.
    let saved = runtime_state::saved_node_state(&config.state_file, dir).unwrap_or_default();
    let tables: std::collections::BTreeSet<_> = config
        .announce
        .into_iter()
        .chain(saved.route_tables)
        .collect();
    let withdrawn = announce::remove_all(&tables).map_err(|e| {
        let flush: Vec<String> = tables
            .iter()
            .map(|t| format!("ip route flush table {} proto {}", t.table, t.protocol))
            .collect();
        anyhow::anyhow!(
            "removing lbd's routes failed: {e}; nothing was detached, since the routes would keep the router sending here: fix that and run --teardown again, or remove them by hand ({}) first",
            flush.join("; ")
        )
    })?;
    if !dir.exists() {
        info!(pin_dir = %dir.display(), "nothing pinned");
        return Ok(());
    }
    if withdrawn > 0 {
        // BIRD withdraws at once; the router needs a moment to follow.
        info!(
            seconds = TEARDOWN_WITHDRAW_WAIT.as_secs(),
            "VIP routes withdrawn: waiting for the router to stop sending before forwarding stops"
        );
        std::thread::sleep(TEARDOWN_WITHDRAW_WAIT);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    // The runtime state belongs to the data plane just removed.
    runtime_state::remove(&config.state_file)
        .with_context(|| format!("removing {}", config.state_file.display()))?;
    info!(pin_dir = %dir.display(), "detached and unpinned");
    Ok(())
}

/// `lbctl conn list` bounds: rows returned, and entries read per table
/// (the daemon's loop waits while the table is read, about a microsecond
/// per entry).
const CONN_LIST_MAX_ROWS: usize = 100_000;
const CONN_LIST_MAX_SCAN: usize = 2_000_000;

/// How long `lbd --teardown` waits between withdrawing its VIP routes and
/// detaching: BIRD withdraws them over BGP at once, the router's forwarding
/// table follows within milliseconds to a second. For no loss at all, drain
/// the node first (`lbctl node drain --wait`).
const TEARDOWN_WITHDRAW_WAIT: Duration = Duration::from_secs(2);
