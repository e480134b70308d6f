//! Upgrading across versions: the previous release's lbd, built by
//! `cargo xtask upgrade-test`, replaced by this tree's over the same pins
//! and configuration while clients run, and then back again. No request
//! fails, a long stream arrives byte for byte, and the connection table,
//! with the backend of every established flow, survives both swaps.
//!
//! Without `LB_UPGRADE_OLD_BINARIES` (the old release's binary directory)
//! the test says so and does nothing.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    FlowKey,
    maps::{
        Backend, ConnEntry, LAYOUT_VERSION, LbConfig, MAP_BACKENDS, MAP_CONFIG, MAP_CONFIG_ACTIVE,
        MAP_CONNS, MAP_DECAP_STATS, MAP_GLOBAL_STATS,
    },
    stats::{DECAP_REASON_COUNT, REASON_COUNT},
};
use lb_tests::{
    http_client::{Load, Stream},
    lbd::{Paths, run_lbctl},
    pins,
    release::{Binaries, ReleaseLbd},
    topology::{Topology, VIP},
};
use lb_userspace::layout::{self, PinOwner};
use serde_json::json;

const OLD_BINARIES: &str = "LB_UPGRADE_OLD_BINARIES";

fn old_binaries() -> Option<Binaries> {
    let Some(dir) = std::env::var_os(OLD_BINARIES) else {
        eprintln!(
            "e2e_upgrade: skipped: {OLD_BINARIES} is not set (`cargo xtask upgrade-test` \
             builds the previous release and sets it)"
        );
        return None;
    };
    Some(Binaries::at(PathBuf::from(dir)))
}

/// Removes what the test pinned and wrote, also when it fails.
struct Cleanup<'a>(&'a Paths);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.pin_dir);
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}

fn wait_healthy(lbd: &ReleaseLbd, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backends = lbd.json(&["backend", "list"]);
        let up = backends
            .as_array()
            .expect("backend list")
            .iter()
            .filter(|b| b["health"] == "up")
            .count();
        if up == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backends not healthy: {backends}\n{}",
            lbd.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The pinned connection table: each flow's backend id. Read from the pin
/// directly, the same for every release (the layout is the first one).
fn connections(pin_dir: &Path) -> HashMap<FlowKey, u32> {
    let map = MapData::from_pin(pin_dir.join(MAP_CONNS)).expect("pinned CONNS");
    let conns: BpfHashMap<MapData, FlowKey, ConnEntry> =
        BpfHashMap::try_from(Map::LruHashMap(map)).expect("CONNS as a hash map");
    conns
        .iter()
        .map(|entry| {
            let (flow, conn) = entry.expect("connection entry");
            (flow, conn.backend_id)
        })
        .collect()
}

fn backend_address(pin_dir: &Path, id: u32) -> IpAddr {
    let map = MapData::from_pin(pin_dir.join(MAP_BACKENDS)).expect("pinned BACKENDS");
    let backends: Array<MapData, Backend> =
        Array::try_from(Map::Array(map)).expect("BACKENDS as an array");
    let b = backends.get(&id, 0).expect("backend entry");
    lb_userspace::addr::from_map(&b.addr, b.family).expect("backend address")
}

/// Every flow of `before` is still in the table, on the same backend.
fn assert_kept(before: &HashMap<FlowKey, u32>, pin_dir: &Path, when: &str) {
    let now = connections(pin_dir);
    let lost = before.keys().filter(|k| !now.contains_key(k)).count();
    let moved = before
        .iter()
        .filter(|(k, id)| now.get(k).is_some_and(|now| now != *id))
        .count();
    assert_eq!(
        (lost, moved),
        (0, 0),
        "{when}: of {} connection entries, {lost} are gone and {moved} changed backend",
        before.len()
    );
}

#[test]
fn e2e_upgrade_from_the_previous_release_and_back_under_load_loses_nothing() {
    let Some(old) = old_binaries() else {
        return;
    };
    let new = Binaries::current();
    let topo = Topology::new(3);
    let _servers: Vec<_> = topo.backends.iter().map(|b| b.serve()).collect();
    let paths = Paths::new("upgrade");
    let _cleanup = Cleanup(&paths);
    // Only fields the previous release knows: its parser denies the rest.
    let mut config = topo.lbd_config(
        80,
        "tcp",
        json!({"type": "http", "port": 80, "interval_ms": 200, "timeout_ms": 100, "rise": 2, "fall": 2}),
    );
    config["pin_dir"] = json!(paths.pin_dir);
    config["control"] = json!({"socket": paths.socket});
    std::fs::write(&paths.config, config.to_string()).expect("write config");
    let pin_dir = &paths.pin_dir;
    let start = |bins: &Binaries, run: &str| {
        let log = paths.dir.join(format!("lbd-{run}.log"));
        ReleaseLbd::start(bins, &topo.lb, &paths.config, &paths.socket, &log)
    };

    let lbd = start(&old, "old");
    wait_healthy(&lbd, 3);
    const TOKENS: usize = 80;
    let mut stream = topo
        .client
        .enter(|| Stream::open(VIP.into(), 80, &format!("/stream?tokens={TOKENS}&ms=100")))
        .expect("open the stream");
    let mut text = stream.next_chunk().unwrap().expect("first token");
    let server = text
        .trim()
        .rsplit(' ')
        .next()
        .expect("server name")
        .to_string();
    let load = Load::start(&topo.client, VIP.into(), 80);
    thread::sleep(Duration::from_millis(500));
    let table = connections(pin_dir);
    let stream_port = stream.local_addr().port();
    let (_, stream_backend) = table
        .iter()
        .find(|(k, _)| k.sport == stream_port)
        .expect("the stream's connection entry");
    let server_address = topo
        .backends
        .iter()
        .find(|b| b.name == server)
        .expect("the streaming backend")
        .addr;
    assert_eq!(
        backend_address(pin_dir, *stream_backend),
        IpAddr::V4(server_address)
    );

    // Upgrade: the old lbd stopped, this tree's started over its pins.
    lbd.terminate();
    thread::sleep(Duration::from_millis(300));
    let lbd = start(&new, "new");
    let status = lbd.json(&["status"]);
    assert_eq!(status["adopted_running_data_plane"], true, "{status}");
    assert_eq!(status["interfaces"][0]["replaced_existing_program"], true);
    assert_eq!(
        layout::read_version(pin_dir, PinOwner::LBD).unwrap(),
        Some(LAYOUT_VERSION),
        "the upgraded pins carry this layout's version"
    );
    // Counters added since the old release count (their map grew).
    for stats in [MAP_GLOBAL_STATS, MAP_DECAP_STATS] {
        let entries = pins::shape(&pin_dir.join(stats)).max_entries;
        let reasons = if stats == MAP_GLOBAL_STATS {
            REASON_COUNT
        } else {
            DECAP_REASON_COUNT
        };
        assert!(
            entries >= reasons,
            "{stats}: {entries} entries, {reasons} reasons"
        );
    }
    assert_kept(&table, pin_dir, "after the upgrade");
    // The previous release's lbctl, which sends no protocol version, is
    // answered by this lbd.
    let old_ctl = run_lbctl(
        &old.dir.join("lbctl"),
        &paths.socket,
        &["--json", "backend", "list"],
    );
    assert!(
        old_ctl.status.success(),
        "the old lbctl against this lbd: {}",
        String::from_utf8_lossy(&old_ctl.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&old_ctl.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
    // Configuration changes through lbd until the second configuration
    // slot is the live one: the downgrade below then meets a live slot 1
    // and a stale slot 0, which the old release, knowing only slot 0,
    // rewrites. (The upgrade itself may have flipped the slots already:
    // this release's configuration has flags the old one lacks.)
    let mut mtu = 1500;
    for attempt in 0..2 {
        mtu = 1480 - 10 * attempt;
        let mut changed = config.clone();
        changed["mtu"] = json!(mtu);
        let file = paths.dir.join(format!("changed{attempt}.json"));
        std::fs::write(&file, changed.to_string()).expect("write the changed config");
        lbd.json(&["apply", "-f", file.to_str().unwrap()]);
        if live_config_slot(pin_dir) == 1 {
            break;
        }
    }
    assert_eq!(live_config_slot(pin_dir), 1, "slot 1 is live");
    assert_eq!(config_slot(pin_dir, 1).mtu, mtu);
    thread::sleep(Duration::from_millis(500));

    // Downgrade: this lbd killed, the old one started over the same pins.
    lbd.kill();
    thread::sleep(Duration::from_millis(300));
    let lbd = start(&old, "old-again");
    assert_eq!(lbd.json(&["status"])["adopted_running_data_plane"], true);
    assert_eq!(
        config_slot(pin_dir, 0).mtu,
        1500,
        "the old release wrote its configuration to the slot it reads"
    );
    assert_kept(&table, pin_dir, "after the downgrade");
    // This lbctl against the previous release's lbd: it says which lbctl
    // to use, whether that lbd refuses the protocol version of a request
    // (`backend list`) or answers it unversioned, as it does the requests
    // without arguments (serde-rs/serde#2123), rather than print that
    // lbd's reply as if it were this version's.
    for args in [
        &["backend", "list"][..],
        &["status"],
        &["vip", "list"],
        &["config", "dump"],
        &["--json", "config", "dump"],
        &["config", "dump", "--format", "toml"],
        &["stats", "--interval", "0.1"],
    ] {
        let new_ctl = run_lbctl(&new.dir.join("lbctl"), &paths.socket, args);
        assert_eq!(
            (
                new_ctl.status.code(),
                String::from_utf8_lossy(&new_ctl.stderr).as_ref(),
                String::from_utf8_lossy(&new_ctl.stdout).as_ref(),
            ),
            (
                Some(1),
                "lbctl: lbd speaks control protocol 0 (an lbd from before protocol versions), \
                 this lbctl speaks 1: use the lbctl shipped with the running lbd (lbd \
                 --version)\n",
                ""
            ),
            "lbctl {}",
            args.join(" ")
        );
    }
    thread::sleep(Duration::from_millis(500));

    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests ran");
    while let Some(chunk) = stream.next_chunk().expect("the stream survives both swaps") {
        text.push_str(&chunk);
    }
    let expected: String = (0..TOKENS)
        .map(|i| format!("token {i} from {server}\n"))
        .collect();
    assert_eq!(text, expected);
    assert_kept(&table, pin_dir, "at the end");
    drop(lbd);
}

/// The live slot of the pinned `LB_CONFIG` (`CONFIG_ACTIVE`).
fn live_config_slot(pin_dir: &Path) -> u32 {
    let map = MapData::from_pin(pin_dir.join(MAP_CONFIG_ACTIVE)).expect("CONFIG_ACTIVE pinned");
    let active: Array<MapData, u32> = Array::try_from(Map::Array(map)).unwrap();
    active.get(&0, 0).unwrap()
}

/// Slot `slot` of the pinned `LB_CONFIG`.
fn config_slot(pin_dir: &Path, slot: u32) -> LbConfig {
    let map = MapData::from_pin(pin_dir.join(MAP_CONFIG)).expect("LB_CONFIG pinned");
    let config: Array<MapData, LbConfig> = Array::try_from(Map::Array(map)).unwrap();
    config.get(&slot, 0).unwrap()
}
