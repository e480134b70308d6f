//! Every XDP link pinned in a pin directory (`link_IFACE`), whoever asked
//! for it, and the program each one runs.
//!
//! All interfaces attached from one pin directory share its maps, so they
//! must run one program: the one built for those maps. A program an older
//! release left on one of them counts into a map that is no longer pinned
//! once a newer release grew it, and may lack checks the maps now imply
//! (the decap allowlist). So a run that swaps its program into the links
//! it was asked about (`lb-decap attach -i`, lbd's `interfaces`) swaps it
//! into every other live link of the directory as well, and the status
//! commands show each link's program.

use std::path::Path;

use crate::{
    datapath::{Attached, Datapath, DatapathError, link_pin_path},
    netdev, xdp_link,
};

/// File names of pinned links start with this; the interface name follows.
const LINK_PREFIX: &str = "link_";

/// Interfaces with a link pinned under `pin_dir`, sorted by name.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(LINK_PREFIX)
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// What one pinned link is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub interface: String,
    /// The ifindex it is attached to; `None` once its interface was
    /// deleted (the link is dead: attached to nothing).
    pub ifindex: Option<u32>,
    /// The program it runs (a dead link still holds its last one).
    pub program_id: u32,
}

impl LinkState {
    /// `attached`, or `dead` (attached to nothing), as status shows it.
    pub fn state(&self) -> &'static str {
        if self.ifindex.is_some() {
            "attached"
        } else {
            "dead"
        }
    }
}

/// The state of `iface`'s link pinned under `pin_dir`; `None` when there
/// is none.
pub fn link_state(pin_dir: &Path, iface: &str) -> std::io::Result<Option<LinkState>> {
    let found = xdp_link::state(&link_pin_path(pin_dir, iface))?;
    Ok(found.map(|s| LinkState {
        interface: iface.to_string(),
        ifindex: (s.ifindex != 0).then_some(s.ifindex),
        program_id: s.program_id,
    }))
}

/// What swapping the program into another interface's link did.
#[derive(Debug)]
pub enum OtherLink {
    /// The link was live: it now runs the program (in place, atomically).
    Updated { interface: String, native: bool },
    /// The link was dead and the interface exists again: attached anew in
    /// place of the dead link.
    Reattached {
        interface: String,
        attached: Attached,
    },
    /// The link is dead and was left as it is: no interface of that name
    /// exists, or the caller does not attach anew.
    Dead { interface: String },
    /// The link runs another kind of program (`lb` where `lb_decap` is
    /// swapped in, or the reverse: one pin directory shared by lbd and
    /// lb-decap): left alone, since either in the other's place cuts the
    /// interface off.
    Foreign { interface: String, running: String },
    /// Reading or updating the link failed; it runs what it ran before.
    Failed {
        interface: String,
        error: DatapathError,
    },
}

impl OtherLink {
    pub fn interface(&self) -> &str {
        match self {
            Self::Updated { interface, .. }
            | Self::Reattached { interface, .. }
            | Self::Dead { interface }
            | Self::Foreign { interface, .. }
            | Self::Failed { interface, .. } => interface,
        }
    }
}

/// Swap program `program` of `dp` into the link of every interface pinned
/// under `pin_dir` but those in `done` (the ones the caller attached just
/// now). A dead link whose interface exists again is attached anew when
/// `reattach` says in which mode (`Some(prefer_native)`), and left dead
/// with `None`.
pub fn update_others(
    dp: &mut Datapath,
    program: &'static str,
    pin_dir: &Path,
    done: &[&str],
    reattach: Option<bool>,
) -> Vec<OtherLink> {
    let mut out = Vec::new();
    for interface in pinned_interfaces(pin_dir) {
        if done.contains(&interface.as_str()) {
            continue;
        }
        let outcome = match link_state(pin_dir, &interface) {
            // Removed since the directory was read.
            Ok(None) => continue,
            Ok(Some(LinkState {
                ifindex: Some(_),
                program_id,
                ..
            })) => match program_name(program_id) {
                Some(running) if running != program => OtherLink::Foreign { interface, running },
                _ => match dp.swap_into_link(program, &interface, pin_dir) {
                    Ok(native) => OtherLink::Updated { interface, native },
                    Err(error) => OtherLink::Failed { interface, error },
                },
            },
            Ok(Some(_)) => match reattach {
                Some(prefer_native) if netdev::ifindex(&interface).is_ok() => {
                    match dp.attach_program_pinned(program, &interface, pin_dir, prefer_native) {
                        Ok(attached) => OtherLink::Reattached {
                            interface,
                            attached,
                        },
                        Err(error) => OtherLink::Failed { interface, error },
                    }
                }
                _ => OtherLink::Dead { interface },
            },
            Err(e) => OtherLink::Failed {
                error: DatapathError::PinnedLink {
                    path: link_pin_path(pin_dir, &interface),
                    reason: e.to_string(),
                },
                interface,
            },
        };
        out.push(outcome);
    }
    out
}

/// The name of loaded program `id` (`lb`, `lb_decap`); `None` when it
/// cannot be told.
fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|info| info.id() == id)
        .and_then(|info| info.name_as_str().map(str::to_string))
}

/// The ids of the maps program `id` uses; `None` when no such program is
/// loaded.
pub fn program_map_ids(id: u32) -> Result<Option<Vec<u32>>, aya::programs::ProgramError> {
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok(Some(info.map_ids()?.unwrap_or_default()));
        }
    }
    Ok(None)
}

/// The id of the map pinned at `path`; `None` when nothing is pinned there.
pub fn pinned_map_id(path: &Path) -> Result<Option<u32>, aya::maps::MapError> {
    if !path.exists() {
        return Ok(None);
    }
    aya::maps::MapInfo::from_pin(path).map(|m| Some(m.id()))
}
