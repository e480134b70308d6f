//! What lbd knows that neither the configuration file says nor the pinned
//! maps hold: the running configuration with the edits made through
//! `lbctl`, and when each drain began. It is written to `state_file` after
//! every change and read back at start, so a restarted lbd (a crash, an
//! upgrade) goes on where the last one stopped: edits are not lost and a
//! drain's deadline does not start over.
//!
//! The state belongs to one data plane: it is used only when lbd adopts
//! pinned maps in the pin directory it names, and only while the
//! configuration file still says what it said when the running
//! configuration was derived from it. An operator who edits the file while
//! lbd is down gets the file; a SIGHUP reload replaces the edits too. Drain
//! start times are kept on CLOCK_BOOTTIME, which a restart does not reset.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, NodeOverrides},
    control::VipRef,
    ids::BackendKey,
    image,
};

/// Bumped when the file's shape changes; a file of another version is
/// ignored (with a warning), never misread.
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    pin_dir: PathBuf,
    /// The configuration file's text the running configuration came from.
    file_text: String,
    running: Config,
    drains: Vec<DrainRecord>,
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
}

/// What to start from: the saved state when it belongs to this data plane
/// (`adopted` maps in the same pin directory) and the file is unchanged,
/// else `file_config` with no drain history.
pub fn resume(
    path: &Path,
    file_config: Config,
    file_text: &str,
    node: &NodeOverrides,
    adopted: bool,
) -> Resumed {
    let fresh = |config, discarded| Resumed {
        config,
        drain_started: BTreeMap::new(),
        discarded,
    };
    if !adopted {
        return fresh(file_config, None);
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh(file_config, None),
        Err(e) => return fresh(file_config, Some(format!("cannot be read: {e}"))),
    };
    let saved: StateFile = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return fresh(file_config, Some(format!("cannot be parsed: {e}"))),
    };
    let why_not = if saved.version != VERSION {
        Some(format!("version {} is not {VERSION}", saved.version))
    } else if saved.pin_dir != file_config.pin_dir {
        Some(format!("it belongs to {}", saved.pin_dir.display()))
    } else if saved.file_text != file_text {
        Some("the configuration file changed since: the file wins".into())
    } else {
        None
    };
    if let Some(why) = why_not {
        return fresh(file_config, Some(why));
    }
    let mut running = saved.running;
    node.apply(&mut running);
    if let Err(e) = running.validate() {
        return fresh(file_config, Some(format!("no longer valid: {e}")));
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
    }
}

/// Writes the state file when what it would say changes.
pub struct StateWriter {
    path: PathBuf,
    last: Option<String>,
}

impl StateWriter {
    pub fn new(path: PathBuf) -> Self {
        Self { path, last: None }
    }

    /// Save `running` (derived from the file text `file_text`) and the
    /// drains, atomically (a temporary file renamed over the old one).
    pub fn save(
        &mut self,
        running: &Config,
        file_text: &str,
        drain_started: &BTreeMap<BackendKey, Instant>,
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
            file_text: file_text.to_string(),
            running: running.clone(),
            drains,
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
