//! The interfaces lbd attaches to and sends out of: attaching again to an
//! interface deleted and created anew, the redirect ports and MACs that
//! follow it, and how an attachment shows in logs and metrics.

use tracing::{error, info, warn};

use crate::{
    attachments::{self, Change},
    datapath::Attached,
    egress, errors,
    metrics::{InterfaceLabels, InterfaceName, Metrics},
    netdev,
};

use super::Daemon;

impl Daemon {
    /// Compare the attached interfaces with those that exist now (a link
    /// event arrived): attach again to an interface deleted and created
    /// anew, and give the data plane its new index (and the egress its new
    /// MAC). The first start made all this true; this keeps it true.
    pub fn reconcile_interfaces(&mut self) {
        for change in self.attachments.reconcile(&mut self.dp) {
            match change {
                Change::Gone { name, ifindex } => {
                    warn!(interface = %name, "interface gone: forwarding on it has stopped; lbd attaches again when it comes back");
                    show_attachment(&self.metrics, &name, None);
                    // The kernel dropped its redirect port with it; nothing
                    // written from now on may count on it (or its MAC).
                    self.outlets.ports.remove(&ifindex);
                    if let Err(e) = self.maps.remove_tx_port(ifindex) {
                        warn!(interface = %name, error = %e, "forgetting the gone interface's port failed");
                    }
                }
                Change::Reattached {
                    name,
                    ifindex,
                    attached,
                } => {
                    // The redirect port under the old index went with the
                    // interface; the program may redirect to the new one.
                    let opened = netdev::mac_address(&name)
                        .map_err(|e| errors::report(&e))
                        .and_then(|mac| {
                            self.maps
                                .add_tx_port(ifindex, mac)
                                .map_err(|e| e.to_string())?;
                            self.outlets.ports.insert(ifindex, mac);
                            Ok(())
                        });
                    if let Err(e) = opened {
                        error!(interface = %name, error = %e, "allowing redirects to the re-created interface failed");
                    }
                    info!(interface = %name, ifindex, replaced_dead_link = attached.replaced_dead_link, "interface re-created: program attached again");
                    log_attached(&name, &attached);
                    self.metrics
                        .reattached
                        .get_or_create(&InterfaceName {
                            interface: name.clone(),
                        })
                        .inc();
                    show_attachment(&self.metrics, &name, Some(&attached));
                }
                Change::Failed { name, error } => {
                    error!(interface = %name, error = %crate::errors::chain(&error), "attaching to the re-created interface failed; retried at the next link event");
                }
            }
        }
        self.refresh_outlets();
        // An interface gone may have been the last one attached, or the
        // first one back.
        self.refresh_announcements();
    }

    /// Interfaces deleted and created again have new indexes, and the
    /// egress interface a new MAC: resolve the running configuration's
    /// outlets again and write them if they changed (the egress in
    /// LB_CONFIG, TX ports opened before, stale ones closed after). An
    /// interface of `interfaces` still gone is left out; while the egress
    /// interface is gone the old values stay, and its packets are dropped
    /// and counted.
    fn refresh_outlets(&mut self) {
        let Ok((now, _gone)) = egress::resolve_present(&self.config) else {
            return;
        };
        if now == self.outlets {
            return;
        }
        let config = self.config.clone();
        match self.write(config, now) {
            Ok(_) => info!(
                "re-created interfaces: the data plane sends through their new indexes and MACs"
            ),
            Err(e) => {
                error!(error = %e, "updating the data plane for re-created interfaces failed")
            }
        }
    }
}

pub(super) fn log_attached(name: &str, a: &Attached) {
    if a.native_refused.is_some() {
        let reason = a.native_refused.as_deref().unwrap_or("unknown");
        warn!(interface = %name, reason, "native XDP refused: running in generic (skb) mode, which is much slower");
    }
    info!(interface = %name, native = a.native, replaced = a.replaced, replaced_dead_link = a.replaced_dead_link, "attached");
}

/// `lb_attached` for `name`: 1 under the mode it has, 0 while it is not
/// attached (`None`: the last mode's series stays, at 0).
pub(super) fn show_attachment(metrics: &Metrics, name: &str, attached: Option<&Attached>) {
    let labels = |mode: &str| InterfaceLabels {
        interface: name.to_string(),
        mode: mode.into(),
    };
    match attached {
        Some(a) => {
            let mode = attachments::mode_name(a);
            for other in ["native", "generic"].into_iter().filter(|m| *m != mode) {
                metrics.attached.remove(&labels(other));
            }
            metrics.attached.get_or_create(&labels(mode)).set(1);
        }
        None => {
            for mode in ["native", "generic"] {
                if let Some(g) = metrics.attached.get(&labels(mode)) {
                    g.set(0);
                }
            }
        }
    }
}
