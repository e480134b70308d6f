//! Announcing the VIPs: the routes a BGP speaker exports, kept in line
//! with what is in service, `lbctl node drain`/`resume`, and the speaker
//! lbd watches.

use std::path::PathBuf;

use tracing::{info, warn};

use crate::{announce, config::Config, control::NodeDrainState};

use super::Daemon;

impl Daemon {
    /// Bring the routes that announce VIPs in line with what should be
    /// announced now (`announce::plan`), and show the result in metrics.
    /// Called after every write, every interface change and once a second:
    /// a failure is retried at the next call.
    pub(super) fn refresh_announcements(&mut self) {
        let attached = self.attachments.iter().any(|a| a.ifindex.is_some());
        let plan = announce::plan(
            &self.config,
            &self.applied,
            attached,
            self.announcer.drained(),
        );
        let before = self.announcer.node_state();
        if !self.announcer.refresh(self.config.announce, plan) {
            self.metrics.announce_failures.inc();
        }
        self.metrics.set_announced(
            &self.config,
            |address| self.announcer.is_announced(address),
            self.announcer.drained(),
        );
        if self.announcer.node_state() != before {
            self.save_state();
        }
    }

    /// `lbctl node drain` (`drained`) and `node resume`: withdraw every VIP
    /// or announce again. The node goes on forwarding what arrives. The
    /// reply comes once the routes are written, and says if that failed.
    pub(super) fn set_drained(&mut self, drained: bool) -> Result<NodeDrainState, String> {
        if drained && self.config.announce.is_none() {
            return Err("announce is not configured: this node announces no VIP, so draining would withdraw nothing (see docs/cluster.md)".into());
        }
        let was = self.announcer.drained();
        self.announcer.set_drained(drained);
        self.refresh_announcements();
        let unsaved = self.save_state();
        if was != drained {
            if drained {
                warn!(
                    "node drained: every VIP withdrawn; forwarding goes on for what still arrives"
                );
            } else {
                info!("node resumed: VIPs announced again");
            }
        }
        Ok(NodeDrainState {
            drained,
            was_drained: was,
            announced: self.announcer.announced().copied().collect(),
            error: self.announcer.error().map(str::to_string),
            unsaved,
        })
    }
}

/// The BIRD socket to watch: only while VIPs are announced.
pub(super) fn watched_speaker(config: &Config) -> Option<PathBuf> {
    config
        .announce
        .and_then(|_| config.speaker.bird_socket.clone())
}
