//! What lbd knows that neither the configuration file says nor the pinned
//! maps hold: the running configuration with the edits made through
//! `lbctl`, and when each drain began. It is written to `state_file` after
//! every change and read back at start, so a restarted lbd (a crash, an
//! upgrade) goes on where the last one stopped: edits are not lost and a
//! drain's deadline does not start over.
//!
//! The state belongs to one data plane: it is used only when lbd adopts
//! the very pinned maps it was written for (same pin directory, same boot
//! of the host, same kernel map behind the `CONNS` pin), and only while the
//! configuration file still says what it said when the running
//! configuration was derived from it. So a state file on persistent
//! storage is not resumed over pins made anew after a reboot or a
//! teardown, even by a start that failed after making them. An operator
//! who edits the file while lbd is down gets the file; a SIGHUP reload
//! replaces the edits too. The command-line overrides applied are saved
//! with the state: one no longer given at the restart gives way to the
//! file's value. Drain start times are kept on CLOCK_BOOTTIME, which a
//! restart does not reset.
//!
//! The node's state of announcing (`announce::NodeState`: drained by
//! `lbctl node drain`, the tables that may hold lbd's routes) is the
//! exception: it is not derived from the configuration file or tied to
//! the pins, so it is resumed from any state file of the same pin
//! directory. A drain ends only with `lbctl node resume` (or a teardown,
//! which removes the file), and routes left in a table no longer
//! configured are still found and removed.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    announce::NodeState,
    config::{Config, NodeOverrides},
    control::VipRef,
    ids::BackendKey,
    image,
};

/// Bumped when the file's shape changes; a file of another version is
/// ignored (with a warning), never misread.
const VERSION: u32 = 2;

/// Where the kernel says which boot this is: a random id made at boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    pin_dir: PathBuf,
    /// The data plane the state was written for.
    data_plane: DataPlaneId,
    /// The configuration file's text the running configuration came from.
    file_text: String,
    /// The command-line overrides `running` has applied.
    overrides: NodeOverrides,
    running: Config,
    drains: Vec<DrainRecord>,
    /// Absent from the files of lbds without announcing: not drained, no
    /// routes.
    #[serde(default)]
    node: NodeState,
}

/// The node's state alone, read whatever the file's version: a drained
/// node must stay drained over an upgrade that changes the rest.
#[derive(Deserialize)]
struct NodePart {
    pin_dir: PathBuf,
    #[serde(default)]
    node: NodeState,
}

/// The node state in `text` if it was saved for `pin_dir`, of any version.
fn node_state_of(text: &str, pin_dir: &Path) -> Option<NodeState> {
    let part = serde_json::from_str::<NodePart>(text).ok()?;
    (part.pin_dir == pin_dir).then_some(part.node)
}

/// Only the version, read first: a file of another version may not parse
/// as this one.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// One data plane, as the kernel tells them apart: pins do not outlive a
/// boot, and the kernel gives a map an id no other map gets during the
/// boot, so a `CONNS` map pinned anew has another id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneId {
    pub boot_id: String,
    pub conns_map_id: u32,
}

impl DataPlaneId {
    /// The data plane pinned in `pin_dir`.
    pub fn of_pins(pin_dir: &Path) -> Result<Self, String> {
        let boot_id = std::fs::read_to_string(BOOT_ID)
            .map_err(|e| format!("{BOOT_ID}: {e}"))?
            .trim()
            .to_string();
        let conns = pin_dir.join(lb_common::maps::MAP_CONNS);
        let conns_map_id = aya::maps::MapInfo::from_pin(&conns)
            .map_err(|e| format!("{}: {e}", conns.display()))?
            .id();
        Ok(Self {
            boot_id,
            conns_map_id,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DrainRecord {
    vip: VipRef,
    backend: IpAddr,
    /// CLOCK_BOOTTIME, in milliseconds, when the drain began.
    since_boottime_ms: u64,
}

/// The running configuration and drains a start resumes from.
pub struct Resumed {
    pub config: Config,
    pub drain_started: BTreeMap<BackendKey, Instant>,
    /// Why the saved state was not used, when there was one.
    pub discarded: Option<String>,
    /// The node's announcing state, from any readable state file of this
    /// pin directory (even one whose configuration is not resumed).
    pub node: NodeState,
}

/// What to start from: the saved state when it belongs to the data plane
/// being adopted (`adopting`: its identity, or why it could not be read;
/// `None` when the start makes a new one) and the file is unchanged, else
/// `file_config` with no drain history. `file_config` is the file's
/// configuration with `node` (this start's overrides) applied.
pub fn resume(
    path: &Path,
    file_config: Config,
    file_text: &str,
    node: &NodeOverrides,
    adopting: Option<Result<DataPlaneId, String>>,
) -> Resumed {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return fresh(
                file_config,
                Some(format!("cannot be read: {e}")),
                NodeState::default(),
            );
        }
    };
    let saved = text.as_deref().map(parse);
    let node_state = text
        .as_deref()
        .and_then(|t| node_state_of(t, &file_config.pin_dir))
        .unwrap_or_default();
    let Some(adopting) = adopting else {
        // A new data plane: only the node's state carries over. A file
        // that cannot be parsed is worth a word all the same.
        let discarded = match saved {
            Some(Err(why)) => Some(why),
            _ => None,
        };
        return fresh(file_config, discarded, node_state);
    };
    let saved = match saved {
        None => return fresh(file_config, None, node_state),
        Some(Err(why)) => return fresh(file_config, Some(why), node_state),
        Some(Ok(s)) => s,
    };
    let adopting = match adopting {
        Ok(id) => id,
        Err(e) => {
            return fresh(
                file_config,
                Some(format!("the pinned data plane cannot be identified: {e}")),
                node_state,
            );
        }
    };
    if let Some(why) = why_not(&saved, &file_config.pin_dir, file_text, &adopting) {
        return fresh(file_config, Some(why), node_state);
    }
    let mut running = saved.running;
    // An override given then and not now gives way to the file.
    saved.overrides.restore(&mut running, &file_config);
    node.apply(&mut running);
    if let Err(e) = running.validate() {
        return fresh(
            file_config,
            Some(format!("no longer valid: {e}")),
            node_state,
        );
    }
    let now_ms = boottime_ms();
    let now = Instant::now();
    let drain_started = saved
        .drains
        .iter()
        .map(|d| {
            let key = BackendKey {
                vip: image::vip_key(d.vip.address, d.vip.port, d.vip.protocol),
                addr: d.backend,
            };
            let age = Duration::from_millis(now_ms.saturating_sub(d.since_boottime_ms));
            (key, now.checked_sub(age).unwrap_or(now))
        })
        .collect();
    Resumed {
        config: running,
        drain_started,
        discarded: None,
        node: node_state,
    }
}

/// Start from the file's configuration, with no drain history.
fn fresh(config: Config, discarded: Option<String>, node: NodeState) -> Resumed {
    Resumed {
        config,
        drain_started: BTreeMap::new(),
        discarded,
        node,
    }
}

/// The saved state in `text`, of this version.
fn parse(text: &str) -> Result<StateFile, String> {
    let cannot = |e: serde_json::Error| format!("cannot be parsed: {e}");
    let version = serde_json::from_str::<Versioned>(text)
        .map_err(cannot)?
        .version;
    if version != VERSION {
        return Err(format!("version {version} is not {VERSION}"));
    }
    serde_json::from_str(text).map_err(cannot)
}

/// Why `saved` is not for a start over `pin_dir`, adopting the data plane
/// `adopting`, with the configuration file reading `file_text` now; `None`
/// when it is.
fn why_not(
    saved: &StateFile,
    pin_dir: &Path,
    file_text: &str,
    adopting: &DataPlaneId,
) -> Option<String> {
    let was = &saved.data_plane;
    if saved.pin_dir != pin_dir {
        Some(format!("it belongs to {}", saved.pin_dir.display()))
    } else if was.boot_id != adopting.boot_id {
        Some(format!(
            "it was written before the host restarted (boot id {}, now {}): the pinned data plane is another one",
            was.boot_id, adopting.boot_id
        ))
    } else if was.conns_map_id != adopting.conns_map_id {
        Some(format!(
            "it was written for another data plane (CONNS map id {}, the pinned one is {}): the pins were made anew since",
            was.conns_map_id, adopting.conns_map_id
        ))
    } else if saved.file_text != file_text {
        Some("the configuration file changed since: the file wins".into())
    } else {
        None
    }
}

/// Writes the state file when what it would say changes.
pub struct StateWriter {
    path: PathBuf,
    data_plane: DataPlaneId,
    overrides: NodeOverrides,
    last: Option<String>,
}

impl StateWriter {
    /// For the state of the data plane `data_plane`, whose running
    /// configurations have `overrides` applied.
    pub fn new(path: PathBuf, data_plane: DataPlaneId, overrides: NodeOverrides) -> Self {
        Self {
            path,
            data_plane,
            overrides,
            last: None,
        }
    }

    /// Save `running` (derived from the file text `file_text`) and the
    /// drains, atomically (a temporary file renamed over the old one).
    pub fn save(
        &mut self,
        running: &Config,
        file_text: &str,
        drain_started: &BTreeMap<BackendKey, Instant>,
        node: &NodeState,
    ) -> std::io::Result<()> {
        let now_ms = boottime_ms();
        let mut drains = Vec::new();
        for (key, since) in drain_started {
            let Some(vip) = running
                .vips
                .iter()
                .find(|v| image::vip_key(v.address, v.port, v.protocol) == key.vip)
            else {
                continue;
            };
            drains.push(DrainRecord {
                vip: VipRef {
                    address: vip.address,
                    port: vip.port,
                    protocol: vip.protocol,
                },
                backend: key.addr,
                since_boottime_ms: now_ms.saturating_sub(since.elapsed().as_millis() as u64),
            });
        }
        let state = StateFile {
            version: VERSION,
            pin_dir: running.pin_dir.clone(),
            data_plane: self.data_plane.clone(),
            file_text: file_text.to_string(),
            overrides: self.overrides,
            running: running.clone(),
            drains,
            node: node.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(std::io::Error::other)?;
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomically(&self.path, text.as_bytes())?;
        self.last = Some(text);
        Ok(())
    }
}

/// The node's announcing state saved in `path` for `pin_dir`, if any (for
/// `lbd --teardown`, which removes lbd's routes from every table).
pub fn saved_node_state(path: &Path, pin_dir: &Path) -> Option<NodeState> {
    node_state_of(&std::fs::read_to_string(path).ok()?, pin_dir)
}

/// Remove the state file (with the pins, at teardown).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Milliseconds of CLOCK_BOOTTIME: monotonic, and the same clock for
/// every process on the host, so a restarted lbd measures from the same
/// origin.
fn boottime_ms() -> u64 {
    // SAFETY: all-zero is a valid timespec; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer; CLOCK_BOOTTIME exists on every kernel lbd
    // runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "pin_dir": "/sys/fs/bpf/lbd-test",
        "vips": [{
            "address": "198.51.100.10", "port": 53, "protocol": "udp",
            "backends": [{"address": "198.51.100.101"}, {"address": "198.51.100.102"}]
        }]
    }"#;

    fn plane() -> DataPlaneId {
        DataPlaneId {
            boot_id: "0d6e1cbb-5a87-4e0c-9c1f-3f5b2f3f0a11".into(),
            conns_map_id: 41,
        }
    }

    fn saved() -> StateFile {
        StateFile {
            version: VERSION,
            pin_dir: "/sys/fs/bpf/lbd-test".into(),
            data_plane: plane(),
            file_text: FILE.into(),
            overrides: NodeOverrides::default(),
            running: Config::from_json(FILE).unwrap(),
            drains: Vec::new(),
            node: NodeState::default(),
        }
    }

    /// Defect: the state was resumed over any pins in the same directory,
    /// so a state file on persistent storage brought edits from before a
    /// reboot back over a data plane made anew. It now names the boot and
    /// the `CONNS` map it was written for.
    #[test]
    fn a_state_is_resumed_only_over_the_data_plane_it_was_written_for() {
        let pin_dir = Path::new("/sys/fs/bpf/lbd-test");
        assert_eq!(why_not(&saved(), pin_dir, FILE, &plane()), None);
        let rebooted = DataPlaneId {
            boot_id: "7b1f0e2a-0c4d-4f4e-8f6a-2b9d1c3e4f50".into(),
            ..plane()
        };
        let why = why_not(&saved(), pin_dir, FILE, &rebooted).unwrap();
        assert!(why.contains("before the host restarted"), "{why}");
        let repinned = DataPlaneId {
            conns_map_id: 97,
            ..plane()
        };
        let why = why_not(&saved(), pin_dir, FILE, &repinned).unwrap();
        assert_eq!(
            why,
            "it was written for another data plane (CONNS map id 41, the pinned one is 97): the pins were made anew since"
        );
        let why = why_not(&saved(), Path::new("/sys/fs/bpf/other"), FILE, &plane()).unwrap();
        assert!(why.contains("belongs to /sys/fs/bpf/lbd-test"), "{why}");
        let why = why_not(&saved(), pin_dir, "{}", &plane()).unwrap();
        assert!(why.contains("the file wins"), "{why}");
    }

    /// Review: a drained node was announced again after an upgrade that
    /// changed the state file's version (the whole file was discarded).
    #[test]
    fn the_node_state_is_read_from_a_file_of_any_version() {
        let text = r#"{"version": 99, "pin_dir": "/sys/fs/bpf/lbd-test", "running": 7,
            "node": {"drained": true, "route_tables": [{"table": 300, "protocol": 201}]}}"#;
        assert!(parse(text).is_err());
        let node = node_state_of(text, Path::new("/sys/fs/bpf/lbd-test")).unwrap();
        assert!(node.drained);
        assert_eq!(node.route_tables.len(), 1);
        assert_eq!(node_state_of(text, Path::new("/sys/fs/bpf/other")), None);
    }

    #[test]
    fn a_file_of_another_version_is_not_misread() {
        let text = r#"{"version": 1, "pin_dir": "/sys/fs/bpf/lbd-test", "running": {}}"#;
        assert_eq!(parse(text).unwrap_err(), "version 1 is not 2");
        let text = serde_json::to_string(&saved()).unwrap();
        assert_eq!(parse(&text).unwrap(), saved());
    }

    /// Defect: the running configuration was saved with the command-line
    /// overrides applied, so a restart without `--tunnel-source-v4` kept the
    /// old address. Now the overrides are saved too, and one no longer
    /// given gives way to the file's value; the edits stay.
    #[test]
    fn an_override_no_longer_given_gives_way_to_the_file_and_edits_stay() {
        let path = std::env::temp_dir().join(format!("lbd-state-test-{}.json", std::process::id()));
        let given = NodeOverrides {
            tunnel_source_v4: Some("198.51.100.3".parse().unwrap()),
            tunnel_source_v6: None,
        };
        let mut running = Config::from_json_for(FILE, &given).unwrap();
        running.vips[0].backends[1].weight = 4;
        let mut writer = StateWriter::new(path.clone(), plane(), given);
        writer
            .save(&running, FILE, &BTreeMap::new(), &NodeState::default())
            .unwrap();

        let resume_with = |node: &NodeOverrides| {
            let file_config = Config::from_json_for(FILE, node).unwrap();
            resume(&path, file_config, FILE, node, Some(Ok(plane())))
        };
        let without = resume_with(&NodeOverrides::default());
        let with = resume_with(&given);
        let _ = std::fs::remove_file(&path);

        assert_eq!(without.discarded, None);
        assert_eq!(
            without.config.tunnel_source.ipv4,
            Some("198.51.100.2".parse().unwrap()),
            "the old override stayed"
        );
        assert_eq!(
            without.config.vips[0].backends[1].weight, 4,
            "the edit was lost"
        );
        assert_eq!(with.config, running, "the same override, the same state");
    }
}
