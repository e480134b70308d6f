//! The daemon's start and lbd's teardown: taking over (or loading) the
//! pinned data plane, checking what the host must offer before any map is
//! written, and removing everything pinned again (`lbd --teardown`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lb_common::maps::{
    BACKEND_F_DOWN, MAP_BACKENDS, MAP_CONNS, MAP_PROBATION, MAP_RINGS, MAP_VIPS, VipKey,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    addr::from_map,
    announce::{self, Announcer},
    attachments::{self, Attachments},
    backend_load::BackendLoad,
    backend_reports::{BackendReports, ScrapeKey},
    config::{Config, NodeOverrides, Tables},
    datapath::{Datapath, MapSizes, pinned_entries},
    egress, errors,
    health::HealthEvent,
    ids::{BackendKey, Ids, VipKeyOrd},
    image::{self, BackendStatus},
    layout::PinOwner,
    load_report::ReportEvent,
    maps::Maps,
    metrics::{InterfaceName, Metrics},
    onlink,
    pin_lock::PinDirLock,
    runtime_state::{self, DataPlaneId, StateWriter},
    speaker::SpeakerWatch,
    sync,
};

use super::{
    CheckKey, Daemon,
    announcing::watched_speaker,
    control_socket::group_id,
    health_records::initial_health,
    interfaces::{log_attached, show_attachment},
    reconcile::clear_stats_of_new_ids,
    vip_of,
};

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
        // Before anything is written or attached: what an older lbd left
        // (or did not have) in the program's lookup caches.
        maps.sync_lookup_caches()?;
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

    /// lbd is exiting and the program stays attached: it stops reading
    /// the lookup caches, which the next lbd (maybe an older one) might not
    /// keep true (`Maps::release_lookup_caches`).
    pub fn on_exit(&mut self) {
        if let Err(e) = self.maps.release_lookup_caches() {
            warn!(error = %e, "could not switch the lookup caches off before exiting");
        }
    }
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

/// How long `lbd --teardown` waits between withdrawing its VIP routes and
/// detaching: BIRD withdraws them over BGP at once, the router's forwarding
/// table follows within milliseconds to a second. For no loss at all, drain
/// the node first (`lbctl node drain --wait`).
const TEARDOWN_WITHDRAW_WAIT: Duration = Duration::from_secs(2);
