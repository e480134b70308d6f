//! Telling systemd how lbd is doing (`Type=notify`, sd_notify(3)): ready
//! once the program is attached and the control socket listens, reloading
//! around a SIGHUP, stopping on exit, and the watchdog petted from the
//! daemon's own loop, so that a loop that stops turning gets lbd restarted
//! while the pinned program goes on forwarding. Without `NOTIFY_SOCKET`
//! (lbd not started by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// lbd serves: systemd starts what waits for it (`After=lbd.service`).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) begins; `ready` ends it.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// lbd exits; the program stays attached.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("exiting; the program stays attached and keeps forwarding"),
    ]);
}

/// How often to pet the watchdog: half its period (`WatchdogSec=`), so
/// that one late turn of the loop is not fatal; `None` without one.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|period| period / 2)
}

/// The daemon's loop is turning.
pub fn pet_watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}
