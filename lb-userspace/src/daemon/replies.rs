//! The read-only replies of the control socket: `status`, `vip list`,
//! `vip show`, `backend list`, `stats`, and the service manager's summary.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::Reason;

use crate::{
    config::{CheckKind, Vip},
    control::{
        BackendCounters, BackendHealth, BackendRow, BackendShow, Occupancy, ReportShow, Stats,
        Status, TableOccupancy, VipCounters, VipRef, VipRow, VipShow,
    },
    ids::BackendKey,
    image,
    maps::{FillMethod, TableFill},
    ring_digest, weight_controller,
};

use super::{CONN_COUNT_LIMIT, Daemon, HealthRecord, requests::find_vip};

impl Daemon {
    /// One line for the service manager's status (`systemctl status lbd`).
    pub fn summary(&self) -> String {
        let in_service: usize = self.applied.vips.values().map(|v| v.members.len()).sum();
        format!(
            "forwarding: {} VIPs, {} backends in service",
            self.config.vips.len(),
            in_service
        )
    }

    pub(super) fn status(&self) -> Status {
        let backends: usize = self.config.vips.iter().map(|v| v.backends.len()).sum();
        let up = self.health.values().filter(|h| h.up).count();
        let counters = Reason::ALL
            .iter()
            .filter_map(|r| {
                self.maps
                    .reason_count(*r)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| (r.name().to_string(), n))
            })
            .collect();
        let fill = self.maps.fill(CONN_COUNT_LIMIT).ok();
        let table = |t: TableFill| TableOccupancy {
            entries: t.entries,
            capacity: t.capacity,
            fill: t.ratio(),
        };
        let ring_digests = self
            .config
            .vips
            .iter()
            .map(|v| {
                let key = image::vip_key(v.address, v.port, v.protocol);
                let digest = self.ring_digests.get(&key).map(|d| ring_digest::hex(*d));
                (vip_ref(v).to_string(), digest)
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            config: self.config_path.display().to_string(),
            pin_dir: self.config.pin_dir.display().to_string(),
            adopted_running_data_plane: self.adopted,
            interfaces: self.attachments.status(),
            unconfigured_links: self.attachments.unconfigured_status(),
            vips: self.config.vips.len(),
            backends,
            backends_up: up,
            ring_size: self.config.tables.ring_size,
            connection_entries: fill.as_ref().map(|f| f.conns.entries),
            connection_table_size: self.config.tables.conn_entries,
            occupancy: Occupancy {
                connections: fill.as_ref().map(|f| table(f.conns)),
                probation: fill.as_ref().map(|f| table(f.probation)),
                exact: fill.as_ref().map(|f| f.exact),
                counted_by: fill.as_ref().map(|f| match &f.method {
                    FillMethod::Kernel => "kernel element count".to_string(),
                    FillMethod::Walk(why) => {
                        format!("key walk, at most {CONN_COUNT_LIMIT} ({why})")
                    }
                }),
            },
            table_rebuilds: self.metrics.table_rebuilds.get(),
            drained: self.announcer.drained(),
            announce: self.announcer.status(),
            speaker: self.config.announce.map(|_| self.speaker.state().status()),
            ring_digests,
            counters,
        }
    }

    pub(super) fn vip_list(&self) -> Vec<VipRow> {
        self.config
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
                VipRow {
                    name: v.name.clone(),
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol.into(),
                    forwarding: v.forwarding.into(),
                    affinity: v.affinity,
                    stateless: v.stateless,
                    id: self.ids.vip(&key),
                    backends: v.backends.len(),
                    healthy: up,
                    in_table,
                    ring_digest: self.ring_digests.get(&key).map(|d| ring_digest::hex(*d)),
                    announced: self
                        .config
                        .announce
                        .map(|_| self.announcer.is_announced(v.address)),
                }
            })
            .collect()
    }

    /// `lbctl vip show`: how `vref`'s new flows are shared, and why.
    pub(super) fn vip_show(&self, vref: &VipRef) -> Result<VipShow, String> {
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
                BackendShow {
                    address: b.address,
                    weight: b.weight,
                    state: b.state.into(),
                    health: health_shown(v, self.health.get(&bkey)).into(),
                    effective_weight: weight
                        .as_ref()
                        .map(|w| f64::from(w.effective) / f64::from(weight_controller::SCALE)),
                    why: weight.as_ref().map(|w| w.why.clone()),
                    active_flows: self
                        .ids
                        .backend(&bkey)
                        .and_then(|id| self.load.get(id))
                        .map(|l| l.active_flows),
                    report: shown.map(|r| ReportShow {
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
        Ok(VipShow {
            vip: *vref,
            mode: v.balancing.mode.into(),
            source: v.balancing.source.into(),
            hard_limit: v.balancing.hard_limit.as_ref().map(Into::into),
            hard_limit_waived: controller.is_some_and(|c| c.limit_waived()),
            backends,
        })
    }

    pub(super) fn backend_list(&self, only: Option<&VipRef>) -> Result<Vec<BackendRow>, String> {
        if let Some(v) = only {
            find_vip(&self.config, v)?;
        }
        let mut rows = Vec::new();
        for v in &self.config.vips {
            let vref = vip_ref(v);
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
                let drain_left = self.drain_started.get(&bkey).map(|since| {
                    let left =
                        Duration::from_secs(v.drain_timeout_s).saturating_sub(since.elapsed());
                    left.as_secs_f64().ceil() as u64
                });
                rows.push(BackendRow {
                    vip: vref.to_string(),
                    address: b.address,
                    id,
                    weight: b.weight,
                    state: b.state.into(),
                    health: health_shown(v, h).into(),
                    in_table: id.is_some_and(|id| members.iter().any(|m| m.id == id)),
                    last_check: h.map(|h| h.last_reason.clone()),
                    check_latency_ms: h
                        .and_then(|h| h.last_latency)
                        .map(|d| d.as_secs_f64() * 1e3),
                    drain_remaining_s: drain_left,
                    effective_weight: effective
                        .as_ref()
                        .map(|w| f64::from(w.effective) / f64::from(weight_controller::SCALE)),
                    weight_reason: effective.map(|w| w.why),
                    active_flows: load.map(|l| l.active_flows),
                    inactive_flows: load.map(|l| l.inactive_flows),
                    new_flows_per_s: load.map(|l| l.new_flows_per_s),
                    bytes_per_s: load.map(|l| l.bytes_per_s),
                });
            }
        }
        Ok(rows)
    }

    pub(super) fn stats(&self) -> Result<Stats, String> {
        let mut vips = Vec::new();
        let mut backends = Vec::new();
        for v in &self.config.vips {
            let key = image::vip_key(v.address, v.port, v.protocol);
            let vref = vip_ref(v);
            if let Some(id) = self.ids.vip(&key) {
                let s = self.maps.vip_stats(id).map_err(|e| e.to_string())?;
                vips.push(VipCounters {
                    vip: vref.to_string(),
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                    dropped: s.dropped,
                });
            }
            for b in &v.backends {
                if let Some(id) = self.ids.backend(&BackendKey {
                    vip: key,
                    addr: b.address,
                }) {
                    let s = self.maps.backend_stats(id).map_err(|e| e.to_string())?;
                    backends.push(BackendCounters {
                        vip: vref.to_string(),
                        address: b.address,
                        packets: s.packets,
                        bytes: s.bytes,
                        new_flows: s.new_flows,
                    });
                }
            }
        }
        let counters: BTreeMap<String, u64> = Reason::ALL
            .iter()
            .filter_map(|r| {
                let n = self.maps.reason_count(*r).ok()?;
                Some((r.name().to_string(), n))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Stats {
            time_s: now.as_secs_f64(),
            vips,
            backends,
            counters,
        })
    }
}

fn vip_ref(v: &Vip) -> VipRef {
    VipRef {
        address: v.address,
        port: v.port,
        protocol: v.protocol,
    }
}

/// A backend's health as lbctl shows it: `unchecked` without a check.
fn health_shown(v: &Vip, record: Option<&HealthRecord>) -> BackendHealth {
    match record {
        _ if v.health_check.kind == CheckKind::None => BackendHealth::Unchecked,
        Some(h) if h.up => BackendHealth::Up,
        _ => BackendHealth::Down,
    }
}
