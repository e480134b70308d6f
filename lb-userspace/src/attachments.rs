//! The interfaces lbd attaches `lb` to, followed through their life.
//!
//! An interface can be deleted and created again under the same name
//! (a VM's NIC re-plugged, a veth or VLAN re-made by the network stack).
//! The kernel then detaches the XDP link from the old interface; the new
//! one has another ifindex and no program, so forwarding stops. lbd
//! compares what it attached with what exists whenever a link event
//! arrives (`link_events`) and attaches again to an interface that came
//! back, in the mode configured. Everything else keyed by the old ifindex
//! (the redirect ports, the configured egress) is the daemon's to update
//! with what `reconcile` reports.
//!
//! An interface removed from `interfaces[]` keeps its pinned link, and
//! with it a program on the shared maps: at start lbd swaps its program
//! into such a link too (`pinned_links`), so that no older program runs
//! on maps it no longer matches, and reports the link as unconfigured.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{
    config::{AttachMode, Config},
    control::{InterfaceState, InterfaceStatus, UnconfiguredLink},
    datapath::{Attached, Datapath, DatapathError, link_pin_path},
    netdev,
    pinned_links::{self, OtherLink},
    xdp_link,
};

/// One interface of `interfaces[]` and its attachment.
#[derive(Debug)]
pub struct Attachment {
    pub name: String,
    /// Native mode configured (generic is the fallback when refused).
    pub prefer_native: bool,
    pub attached: Attached,
    /// The ifindex the program is attached to; `None` while the interface
    /// is gone.
    pub ifindex: Option<u32>,
    /// Times the program was attached again to the interface re-created.
    pub reattached: u64,
    /// Why the last attempt to attach again failed, while it stays failed.
    pub error: Option<String>,
}

impl Attachment {
    /// `attached`; `gone` while the interface does not exist; `detached`
    /// when it exists but attaching to it failed (see `error`).
    pub fn state(&self) -> InterfaceState {
        match (self.ifindex, &self.error) {
            (Some(_), _) => InterfaceState::Attached,
            (None, Some(_)) => InterfaceState::Detached,
            (None, None) => InterfaceState::Gone,
        }
    }
}

/// What `reconcile` found and did for one interface.
#[derive(Debug)]
pub enum Change {
    /// The interface no longer exists; forwarding on it has stopped.
    /// `ifindex` is the index it had.
    Gone { name: String, ifindex: u32 },
    /// The interface exists again (with `ifindex`) and carries the program.
    Reattached {
        name: String,
        ifindex: u32,
        attached: Attached,
    },
    /// It exists, but attaching failed; retried at every link event.
    Failed { name: String, error: DatapathError },
}

/// The interfaces lbd attached to, in configuration order.
pub struct Attachments {
    pin_dir: PathBuf,
    list: Vec<Attachment>,
    /// Links pinned for interfaces not in `interfaces[]`, as found at start.
    unconfigured: Vec<OtherLink>,
}

impl Attachments {
    /// Attach to every interface of `config` (at start), and swap the
    /// program into the live links of interfaces no longer configured.
    pub fn attach_all(dp: &mut Datapath, config: &Config) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        for iface in &config.interfaces {
            let prefer_native = iface.mode == AttachMode::Native;
            let attached = dp
                .attach_pinned(&iface.name, &config.pin_dir, prefer_native)
                .with_context(|| format!("attaching to {}", iface.name))?;
            list.push(Attachment {
                name: iface.name.clone(),
                prefer_native,
                attached,
                ifindex: netdev::ifindex(&iface.name).ok(),
                reattached: 0,
                error: None,
            });
        }
        let configured: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
        let unconfigured = pinned_links::update_others(
            dp,
            lb_common::maps::PROG_LB,
            &config.pin_dir,
            &configured,
            None,
        );
        Ok(Self {
            pin_dir: config.pin_dir.clone(),
            list,
            unconfigured,
        })
    }

    /// Links pinned for interfaces not in `interfaces[]`, and what start
    /// did with each.
    pub fn unconfigured(&self) -> &[OtherLink] {
        &self.unconfigured
    }

    /// The `unconfigured_links` rows of `lbctl status`: each link's state
    /// now, and how to detach it.
    pub fn unconfigured_status(&self) -> Vec<UnconfiguredLink> {
        self.unconfigured
            .iter()
            .map(|o| {
                let name = o.interface();
                let now = pinned_links::link_state(&self.pin_dir, name);
                let state = match &now {
                    Ok(Some(s)) => s.state(),
                    Ok(None) => "removed",
                    Err(_) => "unreadable",
                };
                let link = now.as_ref().ok().and_then(Option::as_ref);
                UnconfiguredLink {
                    name: name.to_string(),
                    state: state.into(),
                    ifindex: link.and_then(|s| s.ifindex),
                    program_id: link.map(|s| s.program_id),
                    updated_at_start: matches!(o, OtherLink::Updated { .. }),
                    error: match o {
                        OtherLink::Failed { error, .. } => Some(crate::errors::chain(error)),
                        _ => None,
                    },
                    warning: unconfigured_warning(&self.pin_dir, o),
                }
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attachment> {
        self.list.iter()
    }

    /// Bring every attachment in line with the interfaces that exist now:
    /// note the ones gone, attach again to the ones back under a new index
    /// (or whose pinned link was removed). Unchanged interfaces cost two
    /// syscalls each and report nothing.
    pub fn reconcile(&mut self, dp: &mut Datapath) -> Vec<Change> {
        let mut changes = Vec::new();
        for a in &mut self.list {
            let Ok(now) = netdev::ifindex(&a.name) else {
                a.error = None;
                if let Some(ifindex) = a.ifindex.take() {
                    changes.push(Change::Gone {
                        name: a.name.clone(),
                        ifindex,
                    });
                }
                continue;
            };
            if pinned_to(&self.pin_dir, &a.name) == Some(now) {
                a.ifindex = Some(now);
                a.error = None;
                continue;
            }
            match dp.attach_pinned(&a.name, &self.pin_dir, a.prefer_native) {
                Ok(attached) => {
                    a.attached = attached.clone();
                    a.ifindex = Some(now);
                    a.error = None;
                    a.reattached += 1;
                    changes.push(Change::Reattached {
                        name: a.name.clone(),
                        ifindex: now,
                        attached,
                    });
                }
                Err(error) => {
                    // Reported once per distinct reason, not at every event.
                    let reason = crate::errors::chain(&error);
                    a.ifindex = None;
                    if a.error.as_ref() != Some(&reason) {
                        a.error = Some(reason);
                        changes.push(Change::Failed {
                            name: a.name.clone(),
                            error,
                        });
                    }
                }
            }
        }
        changes
    }

    /// The `interfaces` rows of `lbctl status`.
    pub fn status(&self) -> Vec<InterfaceStatus> {
        self.list
            .iter()
            .map(|a| InterfaceStatus {
                name: a.name.clone(),
                state: a.state().into(),
                ifindex: a.ifindex,
                error: a.error.clone(),
                mode: mode_name(&a.attached).into(),
                replaced_existing_program: a.attached.replaced,
                reattached: a.reattached,
            })
            .collect()
    }
}

/// What to tell the operator about a link pinned for an interface not in
/// `interfaces[]`.
pub fn unconfigured_warning(pin_dir: &Path, link: &OtherLink) -> String {
    let name = link.interface();
    let path = link_pin_path(pin_dir, name);
    match link {
        OtherLink::Updated { .. } | OtherLink::Reattached { .. } => format!(
            "{name} is not in interfaces but still attached (it runs this lbd's program on the \
             shared maps); remove {} to detach",
            path.display()
        ),
        OtherLink::Dead { .. } => format!(
            "{name} is not in interfaces; its pinned link is attached to nothing; remove {}",
            path.display()
        ),
        OtherLink::Foreign { running, .. } => format!(
            "{name} is not in interfaces; its pinned link runs {running}, not this lbd's program, and is left alone: give lbd and lb-decap pin directories of their own; remove {} to detach it",
            path.display()
        ),
        OtherLink::Failed { .. } => format!(
            "{name} is not in interfaces but still attached, and its program could not be \
             updated (an older program may run on the shared maps); remove {} to detach",
            path.display()
        ),
    }
}

/// `native` or `generic`, as status and metrics name the mode.
pub fn mode_name(a: &Attached) -> &'static str {
    if a.native { "native" } else { "generic" }
}

/// The ifindex `iface`'s pinned link is attached to (0: to nothing), or
/// `None` when nothing is pinned or the pin cannot be read.
fn pinned_to(pin_dir: &Path, iface: &str) -> Option<u32> {
    xdp_link::attached_ifindex(&link_pin_path(pin_dir, iface))
        .ok()
        .flatten()
}
