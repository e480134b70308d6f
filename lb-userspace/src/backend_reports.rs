//! The load reports lbd holds per backend of the VIPs balanced by a
//! reported load (`vips[].balancing.source` `prometheus` or `header`):
//! one scraper task per backend for `prometheus`, the HTTP health
//! check's header for `header`, and the last reading of each, with its
//! age. The weight controller takes a reading only while it is fresh
//! ([`BackendReports::fresh`]); `lbctl vip show` and the metrics show
//! every reading and error.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::debug;

use crate::{
    config::{BalancingMode, Config, HardLimit, LoadSource, PrometheusLoad, Vip},
    health::{ProbeResult, Target},
    ids::BackendKey,
    image,
    load_report::{self, Reading, ReportEvent},
};

/// What a scraper's readings are filed under: the backend, and which of
/// its scrapers sent them (a replaced scraper's queued readings carry the
/// old generation and are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrapeKey {
    pub backend: BackendKey,
    pub generation: u64,
}

impl fmt::Display for ScrapeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.backend.fmt(f)
    }
}

/// What the scraper of one backend was started with.
#[derive(Clone, Debug, PartialEq)]
struct ScrapeSpec {
    prometheus: PrometheusLoad,
    limit: Option<HardLimit>,
    target: Target,
    interval: Duration,
}

struct Scraper {
    spec: ScrapeSpec,
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The last report of one backend.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The last good reading and when it came.
    pub last: Option<(Reading, Instant)>,
    /// Why the latest report was unusable, if it was.
    pub error: Option<String>,
}

/// A backend's report as `lbctl vip show` and the metrics show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    pub reading: Option<Reading>,
    /// Since the last good reading.
    pub age: Option<Duration>,
    /// Too old for the controller to use.
    pub stale: bool,
    pub error: Option<String>,
}

pub struct BackendReports {
    records: BTreeMap<BackendKey, Record>,
    scrapers: BTreeMap<BackendKey, Scraper>,
    tx: mpsc::Sender<ReportEvent<ScrapeKey>>,
    next_generation: u64,
}

impl BackendReports {
    pub fn new(tx: mpsc::Sender<ReportEvent<ScrapeKey>>) -> Self {
        Self {
            records: BTreeMap::new(),
            scrapers: BTreeMap::new(),
            tx,
            next_generation: 1,
        }
    }

    /// Start scrapers for the backends of `prometheus` VIPs that have
    /// none, restart those whose settings changed, stop the rest; forget
    /// the reports of backends no longer reporting.
    pub fn refresh(&mut self, config: &Config) {
        let mut wanted = BTreeMap::new();
        let mut reporting = BTreeSet::new();
        for vip in &config.vips {
            let Some(source) = reported_source(vip) else {
                continue;
            };
            let vkey = image::vip_key(vip.address, vip.port, vip.protocol);
            for b in &vip.backends {
                let key = BackendKey {
                    vip: vkey,
                    addr: b.address,
                };
                reporting.insert(key);
                if let (LoadSource::Prometheus, Some(p)) = (source, &vip.balancing.prometheus) {
                    let port = p.port.or(vip.health_check.port).unwrap_or(vip.port);
                    wanted.insert(
                        key,
                        ScrapeSpec {
                            prometheus: p.clone(),
                            limit: vip.balancing.hard_limit.clone(),
                            target: Target {
                                addr: b.address,
                                port,
                            },
                            interval: Duration::from_secs(vip.balancing.interval_s),
                        },
                    );
                }
            }
        }
        self.records.retain(|k, _| reporting.contains(k));
        self.scrapers.retain(|k, s| wanted.get(k) == Some(&s.spec));
        for (key, spec) in wanted {
            if self.scrapers.contains_key(&key) {
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            let task = load_report::spawn_scraper(
                spec.prometheus.clone(),
                spec.limit.clone(),
                spec.target,
                spec.interval,
                ScrapeKey {
                    backend: key,
                    generation,
                },
                self.tx.clone(),
            );
            self.scrapers.insert(
                key,
                Scraper {
                    spec,
                    generation,
                    task,
                },
            );
        }
    }

    /// A scraper's reading.
    pub fn on_scrape(&mut self, ev: ReportEvent<ScrapeKey>) {
        let current = self
            .scrapers
            .get(&ev.key.backend)
            .is_some_and(|s| s.generation == ev.key.generation);
        if !current {
            debug!(backend = %ev.key.backend.addr, "reading of a replaced scraper ignored");
            return;
        }
        self.file(ev.key.backend, ev.reading);
    }

    /// The report a health probe of `key` (of `vip`) carried, for a VIP
    /// whose source is `header`; a failed probe is a missing report.
    pub fn on_probe(&mut self, key: BackendKey, vip: &Vip, result: &ProbeResult) {
        if reported_source(vip) != Some(LoadSource::Header) {
            return;
        }
        let reading = if result.success {
            let header = vip.balancing.header.clone().unwrap_or_default();
            load_report::from_header(
                &header,
                vip.balancing.hard_limit.as_ref(),
                result.report.as_deref(),
            )
        } else {
            Err(format!("health check failed: {}", result.reason))
        };
        self.file(key, reading);
    }

    fn file(&mut self, key: BackendKey, reading: Result<Reading, String>) {
        let record = self.records.entry(key).or_default();
        match reading {
            Ok(r) => {
                record.last = Some((r, Instant::now()));
                record.error = None;
            }
            Err(e) => record.error = Some(e),
        }
    }

    /// `key`'s reading if it is fresh at `now`: no older than one report
    /// period of `vip` and a second.
    pub fn fresh(&self, key: &BackendKey, vip: &Vip, now: Instant) -> Option<Reading> {
        let (reading, at) = self.records.get(key)?.last?;
        (now.saturating_duration_since(at) <= freshness(vip)).then_some(reading)
    }

    /// `key`'s report as shown, if its VIP takes reports.
    pub fn shown(&self, key: &BackendKey, vip: &Vip, now: Instant) -> Option<Shown> {
        reported_source(vip)?;
        let record = self.records.get(key).cloned().unwrap_or_default();
        let age = record.last.map(|(_, at)| now.saturating_duration_since(at));
        Some(Shown {
            reading: record.last.map(|(r, _)| r),
            age,
            stale: age.is_none_or(|a| a > freshness(vip)),
            error: record.error,
        })
    }
}

/// The source of `vip`'s reports, if it balances by reported load.
pub fn reported_source(vip: &Vip) -> Option<LoadSource> {
    let b = &vip.balancing;
    (b.mode == BalancingMode::Load && b.source != LoadSource::Flows).then_some(b.source)
}

/// How old a reading of `vip` may be and still be used: a report period
/// (the balancing interval plus the scrape's timeout, or the health
/// check's interval) and a second for the scheduling between.
fn freshness(vip: &Vip) -> Duration {
    let period = match (vip.balancing.source, &vip.balancing.prometheus) {
        (LoadSource::Prometheus, Some(p)) => {
            Duration::from_secs(vip.balancing.interval_s) + Duration::from_millis(p.timeout_ms)
        }
        _ => Duration::from_millis(vip.health_check.interval_ms),
    };
    period + Duration::from_secs(1)
}
