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
//!
//! The parts, each a file of this folder: `lifecycle` (start, teardown),
//! `reconcile` (configuration to maps), `health_records`, `balancing`
//! (load-mode weights), `tick` (the one-second tick and its metrics),
//! `interfaces` and `announcing` (the host around the data plane),
//! `control_socket` (the server), `requests`, `replies` and `flow_lookup`
//! (the answers).

mod announcing;
mod balancing;
mod control_socket;
mod flow_lookup;
mod health_records;
mod interfaces;
mod lifecycle;
mod reconcile;
mod replies;
mod requests;
mod tick;

pub use control_socket::{ControlMsg, bind_control, serve_control};
pub use lifecycle::teardown;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    announce::Announcer,
    attachments::Attachments,
    backend_load::BackendLoad,
    backend_reports::BackendReports,
    config::{Config, HealthCheck, NodeOverrides, Vip},
    datapath::Datapath,
    egress::Outlets,
    health::HealthEvent,
    ids::{BackendKey, Ids, VipKeyOrd},
    image::{self, Image},
    maps::Maps,
    metrics::Metrics,
    pin_lock::PinDirLock,
    runtime_state::StateWriter,
    speaker::SpeakerWatch,
    tunnel_probe::TunnelPath,
    weight_controller,
};

/// Where the kernel keeps no element count, `status` and metrics count
/// table entries up to this many (one syscall each).
const CONN_COUNT_LIMIT: usize = 200_000;

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

/// The running lbd: the configuration it applies, the data plane it
/// writes, and the health checks, drains, announcements and attachments it
/// keeps; `lbd`'s loop hands it requests, health results and ticks.
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
