//! The one-second tick: drains that ran out of time, and the metrics
//! refreshed from the data plane (table fill, live load, load reports,
//! effective weights).

use std::time::Instant;

use lb_common::maps::BACKEND_F_DOWN;
use tracing::{info, warn};

use crate::{
    config::{BalancingMode, Vip},
    weight_controller,
};

use super::{CONN_COUNT_LIMIT, Daemon, vip_of};

impl Daemon {
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
}

/// Without the kernel's counts, metrics walk the tables once per this many
/// one-second ticks.
const WALK_EVERY_TICKS: u64 = 30;
