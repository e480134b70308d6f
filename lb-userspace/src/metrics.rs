//! Prometheus metrics, served as text on `--metrics ADDR` (off by default).
//!
//! The data plane's counters live in per-CPU maps; the daemon copies their
//! sums here once a second (`update_from`), so a scrape never touches the
//! maps and never waits for the daemon. The per-VIP and per-backend series
//! are those of the running configuration: a VIP or backend that leaves it
//! loses its series at the next update.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lb_common::{
    Reason,
    maps::{FlowStats, LAYOUT_VERSION},
    stats::ReasonKind,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;

use crate::{
    backend_load::Load,
    config::{Config, Protocol},
    ids::{BackendKey, Ids, VipKeyOrd},
    image,
    maps::{Fill, Maps},
    speaker::SpeakerState,
};

/// The BGP speaker lbd watches (today always `bird`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpeakerLabels {
    pub speaker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabels {
    pub vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub vip: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
    /// `forwarded`, `passed`, `dropped` or `answered`.
    pub verdict: String,
}

/// A counted event (not a verdict: `lb_events_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

/// What this lbd is (`lb_build_info`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    /// The layout of the pinned maps it writes (`LAYOUT_VERSION`).
    pub map_layout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RingLabels {
    pub vip: String,
    /// The live ring's digest, 16 hex digits (`ring_digest`).
    pub digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `connections` or `probation`.
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabels {
    pub interface: String,
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceName {
    pub interface: String,
}

/// A backend's load report as the metrics show it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReportGauges {
    pub utilization: Option<f64>,
    pub load: Option<f64>,
    pub age_s: Option<f64>,
    pub stale: bool,
    /// `None` without a hard limit.
    pub over_limit: Option<bool>,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub table_rebuilds: Counter,
    ring_slots_moved: Family<VipLabels, Counter>,
    vip_packets: Family<VipLabels, Counter>,
    vip_bytes: Family<VipLabels, Counter>,
    vip_new_flows: Family<VipLabels, Counter>,
    vip_dropped: Family<VipLabels, Counter>,
    backend_packets: Family<BackendLabels, Counter>,
    backend_bytes: Family<BackendLabels, Counter>,
    backend_new_flows: Family<BackendLabels, Counter>,
    backend_up: Family<BackendLabels, Gauge>,
    backend_active_flows: Family<BackendLabels, Gauge>,
    backend_inactive_flows: Family<BackendLabels, Gauge>,
    backend_effective_weight: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    backend_reported_utilization: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    backend_reported_load: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    backend_report_age: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    backend_report_stale: Family<BackendLabels, Gauge>,
    backend_over_hard_limit: Family<BackendLabels, Gauge>,
    vip_hard_limit_waived: Family<VipLabels, Gauge>,
    check_latency: Family<BackendLabels, Histogram>,
    packets: Family<ReasonLabels, Counter>,
    events: Family<EventLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
    pub attached: Family<InterfaceLabels, Gauge>,
    pub reattached: Family<InterfaceName, Counter>,
    table_entries: Family<TableLabels, Gauge>,
    table_capacity: Family<TableLabels, Gauge>,
    ring_info: Family<RingLabels, Gauge>,
    vip_announced: Family<VipLabels, Gauge>,
    node_drained: Gauge,
    speaker_up: Family<SpeakerLabels, Gauge>,
    bgp_sessions: Family<SpeakerLabels, Gauge>,
    /// Refreshes of the announcing routes that failed (`announce`).
    pub announce_failures: Counter,
    /// The per-VIP and per-backend label sets that have series, so that
    /// those of VIPs and backends gone from the configuration can be removed.
    series: Mutex<Series>,
}

#[derive(Default)]
struct Series {
    vips: HashSet<VipLabels>,
    backends: HashSet<BackendLabels>,
    /// VIPs with an `lb_vip_announced` series.
    announced: HashSet<VipLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("lb")),
            table_rebuilds: Counter::default(),
            ring_slots_moved: Family::default(),
            vip_packets: Family::default(),
            vip_bytes: Family::default(),
            vip_new_flows: Family::default(),
            vip_dropped: Family::default(),
            backend_packets: Family::default(),
            backend_bytes: Family::default(),
            backend_new_flows: Family::default(),
            backend_up: Family::default(),
            backend_active_flows: Family::default(),
            backend_inactive_flows: Family::default(),
            backend_effective_weight: Family::default(),
            backend_reported_utilization: Family::default(),
            backend_reported_load: Family::default(),
            backend_report_age: Family::default(),
            backend_report_stale: Family::default(),
            backend_over_hard_limit: Family::default(),
            vip_hard_limit_waived: Family::default(),
            check_latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ])
            }),
            packets: Family::default(),
            events: Family::default(),
            build_info: Family::default(),
            attached: Family::default(),
            reattached: Family::default(),
            table_entries: Family::default(),
            table_capacity: Family::default(),
            ring_info: Family::default(),
            vip_announced: Family::default(),
            node_drained: Gauge::default(),
            speaker_up: Family::default(),
            bgp_sessions: Family::default(),
            announce_failures: Counter::default(),
            series: Mutex::new(Series::default()),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "table_rebuilds",
                "Maglev tables built and published",
                m.table_rebuilds.clone(),
            );
            r.register(
                "ring_slots_moved",
                "Slots of the VIP's Maglev ring that changed backend when it was rebuilt (backends added or removed, weights changed by hand or by balancing load)",
                m.ring_slots_moved.clone(),
            );
            r.register(
                "vip_packets",
                "Packets forwarded for a VIP",
                m.vip_packets.clone(),
            );
            r.register(
                "vip_bytes",
                "Bytes (IP) forwarded for a VIP",
                m.vip_bytes.clone(),
            );
            r.register(
                "vip_new_flows",
                "New flows of a VIP",
                m.vip_new_flows.clone(),
            );
            r.register(
                "vip_dropped",
                "Packets for a VIP that were dropped",
                m.vip_dropped.clone(),
            );
            r.register(
                "backend_packets",
                "Packets forwarded to a backend",
                m.backend_packets.clone(),
            );
            r.register(
                "backend_bytes",
                "Bytes (IP) forwarded to a backend",
                m.backend_bytes.clone(),
            );
            r.register(
                "backend_new_flows",
                "New flows sent to a backend",
                m.backend_new_flows.clone(),
            );
            r.register(
                "backend_up",
                "1 if the backend passes its health checks",
                m.backend_up.clone(),
            );
            r.register(
                "backend_active_flows",
                "Open flows of a backend in the connection table, heard from within their idle timeout (ipvsadm's ActiveConn)",
                m.backend_active_flows.clone(),
            );
            r.register(
                "backend_inactive_flows",
                "Flows of a backend seen closing, still in the connection table (ipvsadm's InActConn)",
                m.backend_inactive_flows.clone(),
            );
            r.register(
                "backend_effective_weight",
                "The weight the backend's share of new flows follows, in units of its configured weight: the configured weight with balancing static, the weight controller's with balancing load; absent while the backend takes no new flows",
                m.backend_effective_weight.clone(),
            );
            r.register(
                "backend_reported_utilization",
                "The backend's last reported load over its capacity (balancing source prometheus or header); absent until a report came",
                m.backend_reported_utilization.clone(),
            );
            r.register(
                "backend_reported_load",
                "The backend's last reported load, before the capacity (balancing source prometheus or header)",
                m.backend_reported_load.clone(),
            );
            r.register(
                "backend_report_age_seconds",
                "Seconds since the backend's last good load report",
                m.backend_report_age.clone(),
            );
            r.register(
                "backend_report_stale",
                "1 while the backend's last load report is too old to count (none, failed or late): the controller treats it as unreported",
                m.backend_report_stale.clone(),
            );
            r.register(
                "backend_over_hard_limit",
                "1 while the backend is over its VIP's hard limit and takes no new flows (unless the limit is waived), 0 under it; only for VIPs with a hard limit",
                m.backend_over_hard_limit.clone(),
            );
            r.register(
                "vip_hard_limit_waived",
                "1 while every backend in service of the VIP is over its hard limit, so the limit is waived; only for VIPs with a hard limit",
                m.vip_hard_limit_waived.clone(),
            );
            r.register(
                "health_check_seconds",
                "Health check latency",
                m.check_latency.clone(),
            );
            r.register(
                "packets",
                "Packets of the lb program by the reason of their verdict: each packet once, so sum() is every packet",
                m.packets.clone(),
            );
            r.register(
                "events",
                "Events the lb program counts in addition to verdicts (connection hits, new flows, fragments, ...)",
                m.events.clone(),
            );
            r.register(
                "build_info",
                "1, labelled with lbd's version and the layout version of the pinned maps it writes",
                m.build_info.clone(),
            );
            r.register(
                "attached",
                "1 per interface the program is attached to, by XDP mode; 0 while it is gone",
                m.attached.clone(),
            );
            r.register(
                "reattach",
                "Times the program was attached again to an interface deleted and re-created",
                m.reattached.clone(),
            );
            r.register(
                "conn_table_entries",
                "Entries in the connection table and in its probation table",
                m.table_entries.clone(),
            );
            r.register(
                "conn_table_capacity",
                "Entries the connection table and its probation table can hold",
                m.table_capacity.clone(),
            );
            r.register(
                "vip_ring_info",
                "1 for each VIP, labelled with its live Maglev ring's digest: equal on every node that serves the same backends",
                m.ring_info.clone(),
            );
            r.register(
                "vip_announced",
                "1 while the route that announces the VIP's address is in lbd's routing table (announce), else 0",
                m.vip_announced.clone(),
            );
            r.register(
                "node_drained",
                "1 while the node is drained (lbctl node drain): no VIP announced",
                m.node_drained.clone(),
            );
            r.register(
                "bgp_speaker_up",
                "1 while BIRD answers on speaker.bird_socket, else 0 (only while lbd announces VIPs and watches BIRD)",
                m.speaker_up.clone(),
            );
            r.register(
                "bgp_sessions_established",
                "BIRD's BGP sessions in state Established (only while lbd announces VIPs and watches BIRD)",
                m.bgp_sessions.clone(),
            );
            r.register(
                "announce_failures",
                "Refreshes of lbd's announcing routes that failed (netlink errors), one a second while it lasts",
                m.announce_failures.clone(),
            );
        }
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                map_layout: LAYOUT_VERSION.to_string(),
            })
            .set(1);
        m
    }
}

/// Every metric family lbd exports (without the `lb_` prefix and the
/// `_total` / `_bucket` suffixes of the text format), with its type.
pub const EXPORTED: &[(&str, &str)] = &[
    ("table_rebuilds", "counter"),
    ("ring_slots_moved", "counter"),
    ("vip_packets", "counter"),
    ("vip_bytes", "counter"),
    ("vip_new_flows", "counter"),
    ("vip_dropped", "counter"),
    ("backend_packets", "counter"),
    ("backend_bytes", "counter"),
    ("backend_new_flows", "counter"),
    ("backend_up", "gauge"),
    ("backend_active_flows", "gauge"),
    ("backend_inactive_flows", "gauge"),
    ("backend_effective_weight", "gauge"),
    ("backend_reported_utilization", "gauge"),
    ("backend_reported_load", "gauge"),
    ("backend_report_age_seconds", "gauge"),
    ("backend_report_stale", "gauge"),
    ("backend_over_hard_limit", "gauge"),
    ("vip_hard_limit_waived", "gauge"),
    ("health_check_seconds", "histogram"),
    ("packets", "counter"),
    ("events", "counter"),
    ("build_info", "gauge"),
    ("attached", "gauge"),
    ("reattach", "counter"),
    ("conn_table_entries", "gauge"),
    ("conn_table_capacity", "gauge"),
    ("vip_ring_info", "gauge"),
    ("vip_announced", "gauge"),
    ("node_drained", "gauge"),
    ("announce_failures", "counter"),
    ("bgp_speaker_up", "gauge"),
    ("bgp_sessions_established", "gauge"),
];

fn vip_name(address: std::net::IpAddr, port: u16, protocol: Protocol) -> String {
    crate::control::VipRef {
        address,
        port,
        protocol,
    }
    .to_string()
}

fn set(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

impl Metrics {
    /// Record a probe of `backend`, if it is still one of `vip`'s backends
    /// (a checker's last result can arrive after its backend was removed).
    pub fn observe_check(
        &self,
        vip: &crate::config::Vip,
        backend: std::net::IpAddr,
        latency: Duration,
    ) {
        if !vip.backends.iter().any(|b| b.address == backend) {
            return;
        }
        let labels = BackendLabels {
            vip: vip_name(vip.address, vip.port, vip.protocol),
            backend: backend.to_string(),
        };
        self.series_lock().backends.insert(labels.clone());
        self.check_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    fn series_lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count the slots each VIP's rebuilt ring handed to other backends.
    pub fn add_slots_moved(&self, moved: &BTreeMap<VipKeyOrd, u64>) {
        for (key, n) in moved {
            self.ring_slots_moved
                .get_or_create(&VipLabels {
                    vip: key.to_string(),
                })
                .inc_by(*n);
        }
    }

    /// Show each VIP's live ring digest, and only those of VIPs that exist.
    pub fn set_ring_digests(&self, digests: impl IntoIterator<Item = (String, u64)>) {
        self.ring_info.clear();
        for (vip, digest) in digests {
            self.ring_info
                .get_or_create(&RingLabels {
                    vip,
                    digest: crate::ring_digest::hex(digest),
                })
                .set(1);
        }
    }

    /// Show whether each VIP's address is announced (only with `announce`
    /// configured) and whether the node is drained.
    pub fn set_announced(
        &self,
        config: &Config,
        announced: impl Fn(std::net::IpAddr) -> bool,
        drained: bool,
    ) {
        // Series are set in place and only those of VIPs gone removed, so
        // that a scrape never finds them missing.
        let mut wanted = HashSet::new();
        if config.announce.is_some() {
            for v in &config.vips {
                let l = VipLabels {
                    vip: vip_name(v.address, v.port, v.protocol),
                };
                self.vip_announced
                    .get_or_create(&l)
                    .set(announced(v.address) as i64);
                wanted.insert(l);
            }
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for gone in series.announced.difference(&wanted) {
            self.vip_announced.remove(gone);
        }
        series.announced = wanted;
        self.node_drained.set(drained as i64);
    }

    /// Show what BIRD answered: no series while it is not watched.
    pub fn set_speaker(&self, state: &SpeakerState) {
        let l = SpeakerLabels {
            speaker: "bird".into(),
        };
        if matches!(state, SpeakerState::NotWatched | SpeakerState::Unknown) {
            self.speaker_up.remove(&l);
            self.bgp_sessions.remove(&l);
            return;
        }
        self.speaker_up
            .get_or_create(&l)
            .set(matches!(state, SpeakerState::Answered { .. }) as i64);
        self.bgp_sessions
            .get_or_create(&l)
            .set(state.established().unwrap_or(0) as i64);
    }

    /// Record how full the connection and probation tables are.
    pub fn set_fill(&self, fill: &Fill) {
        for (name, t) in [("connections", fill.conns), ("probation", fill.probation)] {
            let l = TableLabels { table: name.into() };
            self.table_entries
                .get_or_create(&l)
                .set(i64::try_from(t.entries).unwrap_or(i64::MAX));
            self.table_capacity
                .get_or_create(&l)
                .set(i64::from(t.capacity));
        }
    }

    /// Copy the data plane's counters (sums over CPUs) into the metrics.
    pub fn update_from(
        &self,
        maps: &Maps,
        ids: &Ids,
        config: &Config,
        up: impl Fn(&BackendKey) -> bool,
    ) {
        self.update(
            config,
            |r| maps.reason_count(r).ok(),
            |key| ids.vip(key).and_then(|id| maps.vip_stats(id).ok()),
            |key| ids.backend(key).and_then(|id| maps.backend_stats(id).ok()),
            up,
        );
    }

    /// Set each configured backend's flow counts (`backend_load`). After
    /// `update_from`, which removes the series of backends gone.
    pub fn set_backend_load(&self, config: &Config, load: impl Fn(&BackendKey) -> Option<Load>) {
        for (_, bkey, l) in configured_backends(config) {
            let Some(load) = load(&bkey) else { continue };
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.backend_active_flows
                .get_or_create(&l)
                .set(gauge(load.active_flows));
            self.backend_inactive_flows
                .get_or_create(&l)
                .set(gauge(load.inactive_flows));
        }
    }

    /// Set each configured backend's effective weight, in configured-weight
    /// units; a backend out of the ring has no series. After `update_from`.
    pub fn set_effective_weights(
        &self,
        config: &Config,
        weight: impl Fn(&BackendKey) -> Option<f64>,
    ) {
        for (_, bkey, l) in configured_backends(config) {
            match weight(&bkey) {
                Some(w) => {
                    self.backend_effective_weight.get_or_create(&l).set(w);
                }
                None => {
                    self.backend_effective_weight.remove(&l);
                }
            }
        }
    }

    /// Show each backend's load report and hard-limit state, for the VIPs
    /// that take reports (`report` gives `None` for the others) and have
    /// a hard limit (`waived` gives `None` for the others).
    pub fn set_load_reports(
        &self,
        config: &Config,
        report: impl Fn(&BackendKey, &crate::config::Vip) -> Option<ReportGauges>,
        waived: impl Fn(&crate::ids::VipKeyOrd) -> Option<bool>,
    ) {
        for v in &config.vips {
            let key = image::vip_key(v.address, v.port, v.protocol);
            let vl = VipLabels {
                vip: vip_name(v.address, v.port, v.protocol),
            };
            match waived(&key) {
                Some(w) => {
                    self.vip_hard_limit_waived.get_or_create(&vl).set(w as i64);
                }
                None => {
                    self.vip_hard_limit_waived.remove(&vl);
                }
            }
        }
        for (v, bkey, l) in configured_backends(config) {
            let Some(r) = report(&bkey, v) else {
                self.forget_report(&l);
                continue;
            };
            let gauge =
                |family: &Family<BackendLabels, Gauge<f64, AtomicU64>>, x: Option<f64>| match x {
                    Some(x) => {
                        family.get_or_create(&l).set(x);
                    }
                    None => {
                        family.remove(&l);
                    }
                };
            gauge(&self.backend_reported_utilization, r.utilization);
            gauge(&self.backend_reported_load, r.load);
            gauge(&self.backend_report_age, r.age_s);
            self.backend_report_stale
                .get_or_create(&l)
                .set(r.stale as i64);
            match r.over_limit {
                Some(o) => {
                    self.backend_over_hard_limit.get_or_create(&l).set(o as i64);
                }
                None => {
                    self.backend_over_hard_limit.remove(&l);
                }
            }
        }
    }

    fn forget_report(&self, l: &BackendLabels) {
        self.backend_reported_utilization.remove(l);
        self.backend_reported_load.remove(l);
        self.backend_report_age.remove(l);
        self.backend_report_stale.remove(l);
        self.backend_over_hard_limit.remove(l);
    }

    /// `update_from`, with the counters read through the given functions.
    fn update(
        &self,
        config: &Config,
        reason_count: impl Fn(Reason) -> Option<u64>,
        vip_stats: impl Fn(&VipKeyOrd) -> Option<FlowStats>,
        backend_stats: impl Fn(&BackendKey) -> Option<FlowStats>,
        up: impl Fn(&BackendKey) -> bool,
    ) {
        for r in Reason::ALL {
            let Some(n) = reason_count(*r) else { continue };
            let counter = match r.kind() {
                ReasonKind::Event => self.events.get_or_create(&EventLabels {
                    event: r.name().into(),
                }),
                kind => self.packets.get_or_create(&ReasonLabels {
                    reason: r.name().into(),
                    verdict: format!("{kind:?}").to_lowercase(),
                }),
            };
            set(&counter, n);
        }
        let mut series = self.series_lock();
        let mut vips = HashSet::new();
        let mut backends = HashSet::new();
        for v in &config.vips {
            let key = image::vip_key(v.address, v.port, v.protocol);
            let name = vip_name(v.address, v.port, v.protocol);
            let l = VipLabels { vip: name.clone() };
            if let Some(s) = vip_stats(&key) {
                set(&self.vip_packets.get_or_create(&l), s.packets);
                set(&self.vip_bytes.get_or_create(&l), s.bytes);
                set(&self.vip_new_flows.get_or_create(&l), s.new_flows);
                set(&self.vip_dropped.get_or_create(&l), s.dropped);
            }
            vips.insert(l);
            for b in &v.backends {
                let bkey = BackendKey {
                    vip: key,
                    addr: b.address,
                };
                let l = BackendLabels {
                    vip: name.clone(),
                    backend: b.address.to_string(),
                };
                self.backend_up.get_or_create(&l).set(up(&bkey) as i64);
                if let Some(s) = backend_stats(&bkey) {
                    set(&self.backend_packets.get_or_create(&l), s.packets);
                    set(&self.backend_bytes.get_or_create(&l), s.bytes);
                    set(&self.backend_new_flows.get_or_create(&l), s.new_flows);
                }
                backends.insert(l);
            }
        }
        for l in series.vips.difference(&vips) {
            self.ring_slots_moved.remove(l);
            self.vip_hard_limit_waived.remove(l);
            self.vip_packets.remove(l);
            self.vip_bytes.remove(l);
            self.vip_new_flows.remove(l);
            self.vip_dropped.remove(l);
        }
        for l in series.backends.difference(&backends) {
            self.backend_packets.remove(l);
            self.backend_bytes.remove(l);
            self.backend_new_flows.remove(l);
            self.backend_up.remove(l);
            self.backend_active_flows.remove(l);
            self.backend_inactive_flows.remove(l);
            self.backend_effective_weight.remove(l);
            self.forget_report(l);
            self.check_latency.remove(l);
        }
        series.vips = vips;
        series.backends = backends;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// Every configured backend with its VIP, its key and its series labels.
fn configured_backends(
    config: &Config,
) -> impl Iterator<Item = (&crate::config::Vip, BackendKey, BackendLabels)> {
    config.vips.iter().flat_map(|v| {
        let key = image::vip_key(v.address, v.port, v.protocol);
        let name = vip_name(v.address, v.port, v.protocol);
        v.backends.iter().map(move |b| {
            (
                v,
                BackendKey {
                    vip: key,
                    addr: b.address,
                },
                BackendLabels {
                    vip: name.clone(),
                    backend: b.address.to_string(),
                },
            )
        })
    })
}

/// Serve `GET /metrics` (and `GET /healthz`) on `addr`: a deliberately tiny
/// HTTP/1.0 responder, enough for Prometheus and probes.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vips: serde_json::Value) -> Config {
        let text = serde_json::json!({
            "interfaces": [{"name": "eth0"}],
            "tunnel_source": {"ipv4": "198.51.100.2"},
            "vips": vips,
        });
        Config::from_json(&text.to_string()).unwrap()
    }

    fn two_vips() -> Config {
        config(serde_json::json!([
            {"address": "198.51.100.10", "port": 80, "protocol": "tcp",
             "backends": [{"address": "198.51.100.101"}, {"address": "198.51.100.102"}]},
            {"address": "198.51.100.11", "port": 53, "protocol": "udp",
             "backends": [{"address": "198.51.100.111"}]},
        ]))
    }

    /// Update with every VIP and backend at `n` packets.
    fn update(m: &Metrics, config: &Config, n: u64) {
        let stats = FlowStats {
            packets: n,
            bytes: 100 * n,
            new_flows: 1,
            dropped: 0,
        };
        m.update(
            config,
            |_| Some(n),
            |_| Some(stats),
            |_| Some(stats),
            |_| true,
        );
    }

    fn lines_about(text: &str, what: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(what))
            .map(String::from)
            .collect()
    }

    #[test]
    fn a_removed_vip_loses_its_hard_limit_waiver_series() {
        let m = Metrics::default();
        let all = two_vips();
        update(&m, &all, 5);
        m.set_load_reports(&all, |_, _| None, |_| Some(true));
        let udp = "lb_vip_hard_limit_waived{vip=\"198.51.100.11:53/udp\"} 1";
        assert!(m.render().contains(udp), "{}", m.render());
        let mut fewer = all.clone();
        fewer.vips.truncate(1);
        update(&m, &fewer, 6);
        assert!(
            !m.render().contains("198.51.100.11:53/udp"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn series_of_removed_vips_and_backends_are_removed() {
        let m = Metrics::default();
        let all = two_vips();
        update(&m, &all, 5);
        for v in &all.vips {
            m.observe_check(v, v.backends[0].address, Duration::from_millis(2));
        }
        let text = m.render();
        // Four VIP counters; four backend series; a histogram of 11 bounds
        // (+Inf, sum and count make 14 lines).
        assert_eq!(
            lines_about(&text, "198.51.100.11:53/udp").len(),
            4 + 4 + 14,
            "{text}"
        );
        assert_eq!(lines_about(&text, "198.51.100.102\"").len(), 4, "{text}");

        // The UDP VIP and one backend of the other leave the configuration.
        let mut fewer = all.clone();
        fewer.vips.truncate(1);
        fewer.vips[0].backends.truncate(1);
        update(&m, &fewer, 6);
        let text = m.render();
        for gone in ["198.51.100.11:53/udp", "198.51.100.111", "198.51.100.102"] {
            assert_eq!(lines_about(&text, gone), Vec::<String>::new(), "{text}");
        }
        assert!(
            text.contains("lb_vip_packets_total{vip=\"198.51.100.10:80/tcp\"} 6"),
            "{text}"
        );
        assert!(
            text.contains(
                "lb_backend_packets_total{vip=\"198.51.100.10:80/tcp\",backend=\"198.51.100.101\"} 6"
            ),
            "{text}"
        );
        assert!(text.contains("lb_health_check_seconds_count{vip=\"198.51.100.10:80/tcp\",backend=\"198.51.100.101\"} 1"), "{text}");

        // Back again: series from the counters as they are now (zeroed for
        // new ids), not from the old values.
        update(&m, &all, 0);
        let text = m.render();
        assert!(
            text.contains("lb_vip_packets_total{vip=\"198.51.100.11:53/udp\"} 0"),
            "{text}"
        );
        assert_eq!(
            lines_about(
                &text,
                "lb_health_check_seconds_count{vip=\"198.51.100.11:53/udp\""
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_probe_of_a_removed_backend_makes_no_series() {
        let m = Metrics::default();
        let c = two_vips();
        update(&m, &c, 1);
        m.observe_check(
            &c.vips[0],
            "198.51.100.199".parse().unwrap(),
            Duration::from_millis(1),
        );
        assert_eq!(
            lines_about(&m.render(), "198.51.100.199"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn exported_list_matches_what_is_registered() {
        let m = Metrics::default();
        let b = BackendLabels {
            vip: "v".into(),
            backend: "b".into(),
        };
        let v = VipLabels { vip: "v".into() };
        m.vip_packets.get_or_create(&v).inc();
        m.vip_bytes.get_or_create(&v).inc();
        m.vip_new_flows.get_or_create(&v).inc();
        m.vip_dropped.get_or_create(&v).inc();
        m.ring_slots_moved.get_or_create(&v).inc();
        m.backend_packets.get_or_create(&b).inc();
        m.backend_bytes.get_or_create(&b).inc();
        m.backend_new_flows.get_or_create(&b).inc();
        m.backend_up.get_or_create(&b).set(1);
        m.check_latency.get_or_create(&b).observe(0.001);
        m.packets
            .get_or_create(&ReasonLabels {
                reason: "tx".into(),
                verdict: "forwarded".into(),
            })
            .inc();
        m.events
            .get_or_create(&EventLabels {
                event: "conn_hit".into(),
            })
            .inc();
        m.attached
            .get_or_create(&InterfaceLabels {
                interface: "eth0".into(),
                mode: "native".into(),
            })
            .set(1);
        m.reattached
            .get_or_create(&InterfaceName {
                interface: "eth0".into(),
            })
            .inc();
        let table = crate::maps::TableFill {
            entries: 1,
            capacity: 8,
        };
        m.set_fill(&Fill {
            conns: table,
            probation: table,
            exact: true,
            method: crate::maps::FillMethod::Kernel,
        });
        m.set_ring_digests([("v".to_string(), 7)]);
        m.add_slots_moved(&BTreeMap::from([(
            image::vip_key(
                "192.0.2.1".parse().expect("address"),
                80,
                crate::config::Protocol::Tcp,
            ),
            3,
        )]));
        m.set_backend_load(&two_vips(), |_| Some(Load::default()));
        m.set_effective_weights(&two_vips(), |_| Some(1.0));
        m.set_load_reports(
            &two_vips(),
            |_, _| {
                Some(ReportGauges {
                    utilization: Some(0.5),
                    load: Some(8.0),
                    age_s: Some(0.3),
                    stale: false,
                    over_limit: Some(false),
                })
            },
            |_| Some(false),
        );
        let mut announcing = two_vips();
        announcing.announce = Some(crate::config::Announce::default());
        m.set_announced(&announcing, |_| true, false);
        m.announce_failures.inc();
        m.set_speaker(&SpeakerState::Answered {
            version: "2.0.12".into(),
            sessions: Vec::new(),
        });
        let text = m.render();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, EXPORTED.len(), "{text}");
        for (name, kind) in EXPORTED {
            assert!(
                text.contains(&format!("# TYPE lb_{name} {kind}")),
                "lb_{name} {kind} missing:\n{text}"
            );
        }
    }
}
