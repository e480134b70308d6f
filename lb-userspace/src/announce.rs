//! Announcing VIPs to the network: which VIP addresses this node announces,
//! and keeping lbd's routes in the kernel (`route_table`) equal to that.
//!
//! With `announce` configured, a VIP address is announced while all of
//! these hold: the node is not drained (`lbctl node drain`), the program
//! is attached to at least one interface, and at least one VIP on the
//! address has a backend in service (in its ring). VIPs that share an
//! address (other ports or protocols) share its one route. The daemon
//! calls `Announcer::refresh` after every change of configuration, health
//! or interfaces, and once a second: each call lists the table and writes
//! only the difference, so the table converges whatever happened to it.
//!
//! The routes outlive lbd, like the pinned program: a restarted lbd
//! adopts them, `lbd --teardown` removes them. A netlink failure is logged
//! once, shown in `lbctl status` and counted; forwarding never depends on
//! it, and the next refresh tries again.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    config::{Announce, Config},
    control::{AnnounceStatus, AnnouncedAddress},
    image::{self, Image},
    route_table::{self, SyncReport},
};

/// Why a VIP address is not announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withheld {
    /// `lbctl node drain`: every VIP is withdrawn.
    Drained,
    /// The program is attached to no interface: packets would not be
    /// balanced here.
    NotAttached,
    /// No VIP on the address has a backend in its ring.
    NoBackendInService,
}

impl Withheld {
    pub fn reason(self) -> &'static str {
        match self {
            Withheld::Drained => {
                "withdrawn: the node is drained (lbctl node resume announces again)"
            }
            Withheld::NotAttached => "withdrawn: the program is attached to no interface",
            Withheld::NoBackendInService => {
                "withdrawn: no VIP on this address has a backend in service"
            }
        }
    }
}

/// For each VIP address of `config`: announced (`None`) or why not, with
/// the rings of `image`.
pub fn plan(
    config: &Config,
    image: &Image,
    attached: bool,
    drained: bool,
) -> BTreeMap<IpAddr, Option<Withheld>> {
    let mut plan = BTreeMap::new();
    for vip in &config.vips {
        let key = image::vip_key(vip.address, vip.port, vip.protocol);
        let in_service = image.vips.get(&key).is_some_and(|v| !v.members.is_empty());
        let this = if drained {
            Some(Withheld::Drained)
        } else if !attached {
            Some(Withheld::NotAttached)
        } else if !in_service {
            Some(Withheld::NoBackendInService)
        } else {
            None
        };
        // One VIP in service on the address is enough.
        let entry = plan.entry(vip.address).or_insert(this);
        if this.is_none() {
            *entry = None;
        }
    }
    plan
}

/// What lbd keeps about announcing across restarts (in the runtime state,
/// resumed whatever else of it is not: see `runtime_state`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Drained by `lbctl node drain`, not resumed since.
    #[serde(default)]
    pub drained: bool,
    /// The tables (with protocol numbers) that may hold lbd's routes: the
    /// configured one, and any earlier one not yet cleaned.
    #[serde(default)]
    pub route_tables: Vec<Announce>,
}

/// lbd's side of announcing: the node's drain state, where its routes are
/// and what the last refresh found.
pub struct Announcer {
    /// Where routes go; `None`: `announce` is not configured.
    current: Option<Announce>,
    /// Tables lbd wrote to under an earlier `announce`, whose routes are
    /// still to be removed.
    leftover: BTreeSet<Announce>,
    drained: bool,
    plan: BTreeMap<IpAddr, Option<Withheld>>,
    /// The VIP addresses whose route the last refresh found or wrote.
    present: BTreeSet<IpAddr>,
    /// What failed at the last refresh; `None` when all went through.
    error: Option<String>,
}

impl Announcer {
    /// Start with `current` configured, over what an earlier lbd saved.
    pub fn new(current: Option<Announce>, saved: &NodeState) -> Self {
        Self {
            current,
            leftover: saved
                .route_tables
                .iter()
                .copied()
                .filter(|t| Some(*t) != current)
                .collect(),
            drained: saved.drained,
            plan: BTreeMap::new(),
            present: BTreeSet::new(),
            error: None,
        }
    }

    pub fn drained(&self) -> bool {
        self.drained
    }

    pub fn set_drained(&mut self, drained: bool) {
        self.drained = drained;
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether the route of `address` is in the table (as the last refresh
    /// found or left it).
    pub fn is_announced(&self, address: IpAddr) -> bool {
        self.present.contains(&address)
    }

    /// The addresses announced now.
    pub fn announced(&self) -> impl Iterator<Item = &IpAddr> {
        self.present.iter()
    }

    /// What a restart must remember.
    pub fn node_state(&self) -> NodeState {
        NodeState {
            drained: self.drained,
            route_tables: self.current.iter().chain(&self.leftover).copied().collect(),
        }
    }

    /// Make the kernel say what `plan` says, with `announce` as configured
    /// now (a table no longer configured is emptied of lbd's routes).
    /// Returns false when something failed (see `error`).
    pub fn refresh(
        &mut self,
        announce: Option<Announce>,
        plan: BTreeMap<IpAddr, Option<Withheld>>,
    ) -> bool {
        if announce != self.current {
            if let Some(old) = self.current {
                self.leftover.insert(old);
            }
            if let Some(now) = announce {
                self.leftover.remove(&now);
            }
            self.current = announce;
            self.present.clear();
        }
        let mut errors = Vec::new();
        for old in self.leftover.clone() {
            match block_on(route_table::remove_all(old)) {
                Ok(report) if report.failed.is_empty() => {
                    info!(routes = %old, withdrawn = ?report.withdrawn, "lbd's routes removed from a table no longer configured");
                    self.leftover.remove(&old);
                }
                Ok(report) => errors.extend(report.failed),
                Err(e) => errors.push(format!("emptying {old}, no longer configured: {e}")),
            }
        }
        self.plan = plan;
        if let Some(current) = self.current {
            let wanted: BTreeSet<IpAddr> = self
                .plan
                .iter()
                .filter(|(_, withheld)| withheld.is_none())
                .map(|(a, _)| *a)
                .collect();
            match block_on(route_table::sync(current, &wanted)) {
                Ok(report) => {
                    self.log_changes(&report);
                    errors.extend(report.failed);
                    self.present = report.present;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        match (&self.error, &error) {
            (old, Some(new)) if old.as_ref() != Some(new) => {
                error!(error = %new, "announcing VIPs: the kernel's route table could not be brought in line; forwarding goes on, retried every second");
            }
            (Some(_), None) => info!("announcing VIPs: the kernel's route table is in line again"),
            _ => {}
        }
        self.error = error;
        self.error.is_none()
    }

    fn log_changes(&self, report: &SyncReport) {
        for address in &report.added {
            info!(%address, "VIP address announced (route added)");
        }
        for address in &report.withdrawn {
            let reason = self
                .plan
                .get(address)
                .copied()
                .flatten()
                .map_or("not a VIP address of this configuration", Withheld::reason);
            info!(%address, reason, "VIP address withdrawn (route removed)");
        }
        for route in &report.removed_other {
            warn!(%route, "removed a route of lbd's protocol number that lbd does not write");
        }
    }

    /// The `announce` part of `lbctl status`: `None` when not configured.
    pub fn status(&self) -> Option<AnnounceStatus> {
        let leftover_tables: Vec<String> = self.leftover.iter().map(|t| t.to_string()).collect();
        let Some(current) = self.current else {
            // Routes of an earlier `announce` not yet removed are still
            // exported: worth showing with `announce` gone.
            if leftover_tables.is_empty() && self.error.is_none() {
                return None;
            }
            return Some(AnnounceStatus {
                table: None,
                protocol: None,
                drained: self.drained,
                addresses: Vec::new(),
                leftover_tables,
                error: self.error.clone(),
            });
        };
        let addresses = self
            .plan
            .iter()
            .map(|(address, withheld)| {
                let announced = self.present.contains(address);
                let state = match (withheld, announced) {
                    (None, true) => "announced",
                    (None, false) => "not announced: its route could not be written (see error)",
                    (Some(_), true) => {
                        "still announced: its route could not be removed (see error)"
                    }
                    (Some(w), false) => w.reason(),
                };
                AnnouncedAddress {
                    address: *address,
                    announced,
                    state: state.into(),
                }
            })
            .collect();
        Some(AnnounceStatus {
            table: Some(current.table),
            protocol: Some(current.protocol),
            drained: self.drained,
            addresses,
            leftover_tables,
            error: self.error.clone(),
        })
    }
}

/// Remove lbd's routes from every table in `tables` (`lbd --teardown`);
/// how many VIP routes were removed.
pub fn remove_all(tables: &BTreeSet<Announce>) -> Result<usize, String> {
    let mut errors = Vec::new();
    let mut withdrawn = 0;
    for table in tables {
        match block_on(route_table::remove_all(*table)) {
            Ok(report) => {
                info!(routes = %table, withdrawn = ?report.withdrawn, "lbd's routes removed");
                withdrawn += report.withdrawn.len();
                errors.extend(report.failed);
            }
            Err(e) => errors.push(format!("{table}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(withdrawn)
    } else {
        Err(errors.join("; "))
    }
}

/// Refuse `announce.table` if an `ip rule` looks it up: the host would
/// route by lbd's blackhole routes, dropping its own packets to its VIPs.
/// Asked when lbd starts and when the table changes. Rules that cannot be
/// listed are not a reason to refuse (announcing then fails visibly).
pub fn check_table(announce: Announce) -> Result<(), String> {
    let rules = match block_on(route_table::rules_looking_up(announce.table)) {
        Ok(rules) => rules,
        Err(e) => {
            warn!(error = %e, "could not check that no ip rule looks up announce.table");
            return Ok(());
        }
    };
    if rules.is_empty() {
        return Ok(());
    }
    Err(format!(
        "announce.table: {} is looked up by {}: lbd's blackhole routes there would drop this host's own packets to its VIPs; give lbd a table that no ip rule looks up",
        announce.table,
        rules.join(", ")
    ))
}

/// Run `f` to completion from synchronous code: the daemon's loop (on a
/// multi-threaded runtime, whose other threads drive the netlink socket
/// meanwhile), or `lbd --teardown` and tests (no runtime: one is made).
fn block_on<F: Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime for a netlink call")
            .block_on(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::Ids,
        image::{BackendStatus, Egress},
    };

    const CONFIG: &str = r#"{
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "announce": {},
        "vips": [
            {"address": "198.51.100.10", "port": 80, "protocol": "tcp",
             "backends": [{"address": "198.51.100.101"}]},
            {"address": "198.51.100.10", "port": 53, "protocol": "udp",
             "backends": [{"address": "198.51.100.102"}]},
            {"address": "198.51.100.11", "port": 80, "protocol": "tcp",
             "backends": [{"address": "198.51.100.103", "state": "drain"}]},
            {"address": "198.51.100.12", "port": 80, "protocol": "tcp"}
        ]
    }"#;

    fn plan_with(down: &[&str], attached: bool, drained: bool) -> Vec<(String, Option<Withheld>)> {
        let config = Config::from_json(CONFIG).unwrap();
        let mut ids = Ids::new(8, 16);
        let down: Vec<IpAddr> = down.iter().map(|a| a.parse().unwrap()).collect();
        let image = image::build(
            &config,
            &mut ids,
            |k| BackendStatus {
                healthy: !down.contains(&k.addr),
                drain_expired: false,
                weight: None,
            },
            Egress::default(),
        )
        .unwrap();
        plan(&config, &image, attached, drained)
            .into_iter()
            .map(|(a, w)| (a.to_string(), w))
            .collect()
    }

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_has_a_backend_in_service() {
        use Withheld::*;
        // .11's only backend drains, .12 has none.
        assert_eq!(
            plan_with(&[], true, false),
            [
                ("198.51.100.10".to_string(), None),
                ("198.51.100.11".to_string(), Some(NoBackendInService)),
                ("198.51.100.12".to_string(), Some(NoBackendInService)),
            ]
        );
        // One of .10's two VIPs down: the other keeps the address announced.
        assert_eq!(plan_with(&["198.51.100.101"], true, false)[0].1, None);
        assert_eq!(
            plan_with(&["198.51.100.101", "198.51.100.102"], true, false)[0].1,
            Some(NoBackendInService)
        );
        assert_eq!(plan_with(&[], false, false)[0].1, Some(NotAttached));
        assert!(
            plan_with(&[], true, true)
                .iter()
                .all(|(_, w)| *w == Some(Drained))
        );
    }

    #[test]
    fn a_table_no_longer_configured_is_kept_until_emptied() {
        let old = Announce {
            table: 300,
            protocol: 201,
        };
        let now = Announce::default();
        let saved = NodeState {
            drained: true,
            route_tables: vec![old, now],
        };
        let a = Announcer::new(Some(now), &saved);
        assert!(a.drained());
        assert_eq!(a.leftover, BTreeSet::from([old]));
        assert_eq!(a.node_state().route_tables, [now, old]);
    }
}
