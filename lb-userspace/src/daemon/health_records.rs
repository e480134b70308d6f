//! What the daemon knows of each backend's health: the checkers it runs
//! (started, restarted, stopped as the configuration changes), the
//! results they send, and the records a start begins with.

use std::{collections::BTreeMap, time::Instant};

use tracing::{debug, info};

use crate::{
    config::{CheckKind, Config},
    health::{self, HealthEvent, Target},
    ids::BackendKey,
    image::{self, BackendStatus},
    tunnel_probe::TunnelPath,
};

use super::{CheckKey, Daemon, HealthRecord, vip_of};

impl Daemon {
    /// Start checkers for new backends, restart those whose check changed,
    /// stop those of removed backends.
    pub(super) fn refresh_checkers(&mut self) {
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
}

/// Health records at startup: adopted backends keep the state the data
/// plane had (a restart never blackholes traffic); others with checks
/// start down until they pass `rise` checks.
#[allow(clippy::type_complexity)]
pub(super) fn initial_health(
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
