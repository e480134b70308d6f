//! Load-mode balancing: the weight controllers of `load`-mode VIPs, fed by
//! the data plane's live load or the backends' reports, and the weight
//! each backend's share of new flows follows.

use std::{collections::BTreeMap, time::Instant};

use tracing::{info, warn};

use crate::{
    backend_reports::{self, ScrapeKey},
    config::{BalancingMode, Config},
    ids::{BackendKey, VipKeyOrd},
    image,
    load_report::ReportEvent,
    weight_controller::{self, Load, Member},
};

use super::{Daemon, vip_of};

impl Daemon {
    /// A scraper's load report (`source: prometheus`).
    pub fn on_report(&mut self, ev: ReportEvent<ScrapeKey>) {
        self.reports.on_scrape(ev);
    }

    /// The weight `key`'s share of new flows follows, and why, as shown:
    /// the configured one in `static` mode, the controller's in `load`
    /// mode; `None` while the backend is out of the ring.
    pub(super) fn weight_shown(&self, key: &BackendKey) -> Option<weight_controller::Weight> {
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
    pub(super) fn effective_weight(&self, key: &BackendKey) -> Option<u32> {
        effective_weight(&self.config, &self.balancers, key)
    }

    /// Each `load`-mode VIP whose interval has passed: adjust its
    /// backends' effective weights, and rebuild its ring if they changed,
    /// logging why. Controllers of VIPs no longer in `load` mode go (their
    /// next rebuild uses the configured weights).
    pub(super) fn balance(&mut self) {
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
}

/// The effective weight of backend `key` in `config`: its controller's, if
/// its VIP is in `load` mode and the controller has it in service.
pub(super) fn effective_weight(
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
