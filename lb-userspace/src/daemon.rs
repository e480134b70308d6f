//! lbd: owns the desired state and keeps the kernel's maps equal to it.
//!
//! One task owns all state (`Daemon`) and handles, in turn: control
//! requests, health events, SIGHUP reloads and a one-second tick for drain
//! timeouts. Every change, whatever its source, goes the same way: a new
//! configuration is validated, an image computed, and the difference
//! written (`sync`). A change that fails leaves the running state as it was.
//!
//! lbd never detaches the program when it exits: the link and maps are
//! pinned, forwarding continues, and the next lbd adopts them.

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
    maps::{BACKEND_F_DOWN, VIP_F_AFFINITY, VIP_F_PORTLESS, VipKey},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    addr::{from_map, to_map},
    config::{
        AdminState, AttachMode, CheckKind, Config, HealthCheck, NodeOverrides, Protocol, Vip,
    },
    control::{self, Reply, Request, VipRef},
    datapath::{Attached, Datapath, MapSizes},
    health::{self, HealthEvent, Target},
    ids::{BackendKey, Ids, VipKeyOrd},
    image::{self, BackendStatus, Image},
    maps::{FillMethod, Maps, MapsError, TableFill},
    metrics::{InterfaceLabels, Metrics},
    netdev,
    sync::{self, SyncReport},
};

/// Where the kernel keeps no element count, `status` and metrics count
/// table entries up to this many (one syscall each).
const CONN_COUNT_LIMIT: usize = 200_000;
/// Without the kernel's counts, metrics walk the tables once per this many
/// one-second ticks.
const WALK_EVERY_TICKS: u64 = 30;

/// What the daemon knows of one backend's health.
struct HealthRecord {
    up: bool,
    check: HealthCheck,
    port: u16,
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
    /// Holds the loaded programs (and, until pinned, their links).
    _dp: Datapath,
    maps: Maps,
    ids: Ids,
    applied: Image,
    health: BTreeMap<BackendKey, HealthRecord>,
    drain_started: BTreeMap<BackendKey, Instant>,
    health_tx: mpsc::Sender<HealthEvent<BackendKey>>,
    attachments: Vec<(String, Attached)>,
    adopted: bool,
    /// Command-line settings that win over every configuration applied.
    node: NodeOverrides,
    started: Instant,
    /// One-second ticks since the start.
    ticks: u64,
    egress: image::Egress,
    pub metrics: Arc<Metrics>,
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

impl Daemon {
    /// Load (or adopt) the data plane, apply `config`, attach.
    /// Start over `config`, which already has `node` applied; later
    /// configurations (reloads, `lbctl apply`) get `node` applied too.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        node: NodeOverrides,
        health_tx: mpsc::Sender<HealthEvent<BackendKey>>,
    ) -> anyhow::Result<Self> {
        crate::bpffs::prepare(&config.pin_dir).context("pin_dir")?;
        // What can fail from the host's side is checked before any map is
        // written: a start that fails leaves a running data plane as it was.
        for iface in &config.interfaces {
            netdev::ifindex(&iface.name).with_context(|| format!("interfaces: {}", iface.name))?;
        }
        if let Some(name) = &config.control.group {
            group_id(name).with_context(|| format!("control.group: no group {name:?}"))?;
        }
        let t = config.tables;
        let sizes = MapSizes {
            max_vips: t.max_vips,
            max_backends: t.max_backends,
            ring_size: t.ring_size,
            conn_entries: t.conn_entries,
            probation_entries: t.probation_entries(),
            frag_entries: lb_common::maps::DEFAULT_FRAG_ENTRIES,
        };
        let adopted = Datapath::has_pinned_state(&config.pin_dir);
        let mut dp = Datapath::load_pinned(sizes, &config.pin_dir).with_context(|| {
            format!(
                "loading the data plane (pins in {})",
                config.pin_dir.display()
            )
        })?;
        let mut maps = Maps::take(&mut dp.ebpf, t.ring_size)?;
        let mut ids = Ids::new(t.max_vips, t.max_backends);
        let mut up_before = BTreeMap::new();
        if adopted {
            let live = maps.config()?;
            let mut differ = Vec::new();
            if live.ring_size != 0 && live.ring_size != t.ring_size {
                differ.push(format!(
                    "tables.ring_size is {} but the running data plane uses {}",
                    t.ring_size, live.ring_size
                ));
            }
            let have = maps.capacities()?;
            for (field, want, have) in [
                ("max_vips", t.max_vips, have.vips),
                ("max_backends", t.max_backends, have.backends),
                ("conn_entries", t.conn_entries, have.conns),
                ("probation_entries", t.probation_entries(), have.probation),
            ] {
                if want != have {
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
            // Pinned maps keep their sizes: running on would silently use
            // the old ones. The running program keeps forwarding meanwhile.
            if !differ.is_empty() {
                bail!(
                    "{}: table sizes change only with `lbd --teardown` first (drops connections), or revert the config",
                    differ.join("; ")
                );
            }
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
        let egress = match &config.next_hop.egress_interface {
            Some(name) if !config.next_hop.fib => image::Egress {
                ifindex: netdev::ifindex(name)?,
                mac: netdev::mac_address(name)?,
            },
            _ => image::Egress::default(),
        };
        // Ports first: the configuration written next may redirect to them.
        for iface in &config.interfaces {
            let index = netdev::ifindex(&iface.name)?;
            maps.add_tx_port(index)?;
        }
        if egress.ifindex != 0 {
            maps.add_tx_port(egress.ifindex)?;
        }
        let (health_records, status) = initial_health(&config, &up_before);
        let known = ids.clone();
        let image = image::build(&config, &mut ids, |k| status(k), egress)?;
        clear_stats_of_new_ids(&mut maps, &ids, &known)?;
        let report = sync::apply(&mut maps, None, &image)?;
        info!(?report, "data plane written");
        let mut attachments = Vec::new();
        for iface in &config.interfaces {
            let native = iface.mode == AttachMode::Native;
            let attached = dp
                .attach_pinned(&iface.name, &config.pin_dir, native)
                .with_context(|| format!("attaching to {}", iface.name))?;
            if native && !attached.native {
                let reason = attached.native_refused.as_deref().unwrap_or("unknown");
                warn!(interface = %iface.name, reason, "native XDP refused: running in generic (skb) mode, which is much slower");
            }
            info!(interface = %iface.name, native = attached.native, replaced = attached.replaced, "attached");
            attachments.push((iface.name.clone(), attached));
        }
        let metrics = Arc::new(Metrics::default());
        metrics.table_rebuilds.inc_by(report.rings_rebuilt as u64);
        for (name, a) in &attachments {
            let mode = if a.native { "native" } else { "generic" };
            let labels = InterfaceLabels {
                interface: name.clone(),
                mode: mode.into(),
            };
            metrics.attached.get_or_create(&labels).set(1);
        }
        let mut daemon = Self {
            config,
            config_path,
            _dp: dp,
            maps,
            ids,
            applied: image,
            health: BTreeMap::new(),
            drain_started: BTreeMap::new(),
            health_tx,
            attachments,
            adopted,
            node,
            started: Instant::now(),
            ticks: 0,
            egress,
            metrics,
        };
        daemon.health = health_records;
        daemon.refresh_checkers();
        daemon.refresh_drains();
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
        }
    }

    fn vip_config(&self, key: &VipKeyOrd) -> Option<&Vip> {
        self.config
            .vips
            .iter()
            .find(|v| image::vip_key(v.address, v.port, v.protocol) == *key)
    }

    /// Make `config` the running configuration, or change nothing.
    pub fn apply(&mut self, config: Config) -> Result<SyncReport, String> {
        config.validate().map_err(|e| e.to_string())?;
        for (field, same) in [
            ("interfaces", config.interfaces == self.config.interfaces),
            ("tables", config.tables == self.config.tables),
            ("pin_dir", config.pin_dir == self.config.pin_dir),
            ("control", config.control == self.config.control),
            (
                "next_hop.egress_interface",
                config.next_hop.egress_interface == self.config.next_hop.egress_interface,
            ),
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
        let mut ids = self.ids.clone();
        // Backends new to this config start as their checks say: unknown
        // ones with checks wait for `rise` successes.
        let health = &self.health;
        let drains = &self.drain_started;
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
            }
        };
        let image =
            image::build(&config, &mut ids, status, self.egress).map_err(|e| e.to_string())?;
        clear_stats_of_new_ids(&mut self.maps, &ids, &self.ids)
            .map_err(|e| format!("writing the data plane: {e}"))?;
        let report = match sync::apply(&mut self.maps, Some(&self.applied), &image) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "writing maps failed; restoring the previous state");
                if let Err(e2) = sync::apply(&mut self.maps, None, &self.applied) {
                    error!(error = %e2, "restoring the previous state failed");
                }
                return Err(format!("writing the data plane: {e}"));
            }
        };
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
        self.config = config;
        self.ids = ids;
        self.applied = image;
        self.refresh_checkers();
        self.refresh_drains();
        info!(?report, "configuration applied");
        Ok(report)
    }

    /// Re-apply the running configuration (health or drain state changed).
    fn reapply(&mut self) {
        let config = self.config.clone();
        if let Err(e) = self.apply(config) {
            error!(error = %e, "re-applying the configuration failed");
        }
    }

    /// Start checkers for new backends, restart those whose check changed,
    /// stop those of removed backends.
    fn refresh_checkers(&mut self) {
        let mut wanted = BTreeMap::new();
        for vip in &self.config.vips {
            let vkey = image::vip_key(vip.address, vip.port, vip.protocol);
            let port = vip.health_check.port.unwrap_or(vip.port);
            for b in &vip.backends {
                wanted.insert(
                    BackendKey {
                        vip: vkey,
                        addr: b.address,
                    },
                    (vip.health_check.clone(), port),
                );
            }
        }
        self.health.retain(|k, _| wanted.contains_key(k));
        for (key, (check, port)) in wanted {
            let current = self.health.get(&key);
            if current.is_some_and(|h| h.check == check && h.port == port && h.checker.is_some()) {
                continue;
            }
            let up = current
                .map(|h| h.up)
                .unwrap_or(check.kind == CheckKind::None);
            let target = Target {
                addr: key.addr,
                port,
            };
            let checker =
                health::spawn_checker(check.clone(), target, key, up, self.health_tx.clone());
            self.health.insert(
                key,
                HealthRecord {
                    up,
                    check,
                    port,
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

    pub fn on_health(&mut self, ev: HealthEvent<BackendKey>) {
        if let Some(vip) = self.vip_config(&ev.key.vip) {
            self.metrics
                .observe_check(vip, ev.key.addr, ev.result.latency);
        }
        let Some(rec) = self.health.get_mut(&ev.key) else {
            return;
        };
        rec.last_reason = ev.result.reason.clone();
        rec.last_latency = Some(ev.result.latency);
        if rec.up != ev.up {
            rec.up = ev.up;
            rec.since = Instant::now();
            info!(backend = %ev.key.addr, up = ev.up, reason = %ev.result.reason, "backend health changed");
            self.reapply();
        }
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
        // The kernel's element counts cost a syscall each; a key walk (on
        // kernels without them) costs one per entry, so it is done rarely.
        self.ticks = self.ticks.wrapping_add(1);
        if (self.maps.counts_in_kernel() || self.ticks % WALK_EVERY_TICKS == 1)
            && let Ok(fill) = self.maps.fill(CONN_COUNT_LIMIT)
        {
            self.metrics.set_fill(&fill);
        }
    }

    /// Re-read the configuration file (SIGHUP).
    pub fn reload(&mut self) {
        match Config::load_for(&self.config_path, &self.node) {
            Ok(c) => match self.apply(c) {
                Ok(_) => info!(path = %self.config_path.display(), "reloaded"),
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
                c.vips.push(vip);
                Ok(())
            }),
            Request::VipDel { vip } => self.edit(|c| {
                let i = find_vip(c, &vip)?;
                c.vips.remove(i);
                Ok(())
            }),
            Request::BackendList { vip } => self.backend_list(vip.as_ref()),
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
            Request::Apply { text } => {
                let config = Config::from_json_for(&text, &self.node).map_err(|e| e.to_string())?;
                let report = self.apply(config)?;
                Ok(
                    json!({ "applied": true, "rings_rebuilt": report.rings_rebuilt, "elapsed_ms": report.elapsed.as_secs_f64() * 1e3 }),
                )
            }
            Request::ConfigDump => serde_json::to_value(&self.config).map_err(|e| e.to_string()),
        }
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
            "interfaces": self.attachments.iter().map(|(name, a)| json!({
                "name": name,
                "mode": if a.native { "native" } else { "generic" },
                "replaced_existing_program": a.replaced,
            })).collect::<Vec<_>>(),
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
                    "protocol": proto_name(v.protocol),
                    "forwarding": v.forwarding,
                    "affinity": v.affinity,
                    "id": self.ids.vip(&key),
                    "backends": v.backends.len(),
                    "healthy": up,
                    "in_table": in_table,
                })
            })
            .collect();
        Value::Array(rows)
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
            .ok_or_else(|| format!("{dst}:{dport}/{} is not a VIP", proto_name(protocol)))?;
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
        let usable = |entry: &Option<lb_common::maps::ConnEntry>| {
            entry.filter(|e| {
                self.applied
                    .backends
                    .get(&e.backend_id)
                    .is_some_and(|b| b.flags & BACKEND_F_DOWN == 0)
            })
        };
        let entries = [
            (
                self.maps.conn(&flow),
                "connection entry (established flow keeps its backend)",
            ),
            (
                self.maps.probation_entry(&flow),
                "probation entry (one packet seen; the next enters the connection table)",
            ),
        ];
        for (entry, reason) in entries {
            if let Some(entry) = usable(&entry.unwrap_or(None)) {
                return Ok(json!({
                    "backend": describe(entry.backend_id),
                    "backend_id": entry.backend_id,
                    "reason": reason,
                }));
            }
        }
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
            return Ok(
                json!({ "backend": null, "reason": format!("table slot {slot} is empty: the VIP has no backend in service") }),
            );
        }
        let note = if proto == PROTO_TCP {
            " (a SYN is not entered in the connection table; the handshake's ACK goes on probation, the next packet enters it)"
        } else {
            ""
        };
        Ok(json!({
            "backend": describe(id),
            "backend_id": id,
            "hash": hash,
            "slot": slot,
            "reason": format!("table slot {slot} of {}{note}", self.config.tables.ring_size),
        }))
    }

    pub fn control_socket(&self) -> (PathBuf, Option<String>) {
        (
            self.config.control.socket.clone(),
            self.config.control.group.clone(),
        )
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
    }
    Ok(())
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
                    check: vip.health_check.clone(),
                    port: vip.health_check.port.unwrap_or(vip.port),
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
pub async fn serve_control(listener: UnixListener, tx: mpsc::Sender<ControlMsg>) {
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
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let reply = match control::read_request(&mut reader).await {
                    Ok(None) => return,
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

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"reply encoding failed"}"#.to_vec());
    line.push(b'\n');
    w.write_all(&line).await
}

/// Create the control socket: owned by root, mode 0600, or 0660 with a group.
pub fn bind_control(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(name) = group {
        let gid = group_id(name).with_context(|| format!("control.group: no group {name:?}"))?;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid path; uid -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            bail!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
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

/// Remove everything lbd pinned: detaches the program (forwarding stops).
pub fn teardown(config: &Config) -> anyhow::Result<()> {
    let dir = &config.pin_dir;
    if !dir.exists() {
        info!(pin_dir = %dir.display(), "nothing pinned");
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    info!(pin_dir = %dir.display(), "detached and unpinned");
    Ok(())
}
