//! Live load per backend, from the data plane: active and inactive flows
//! (ipvsadm's ActiveConn / InActConn), new flows and bytes per second.
//!
//! The data plane's per-CPU events (`BACKEND_FLOWS`: flows opened in the
//! connection table, flows seen closing) are cheap to read but drift: an
//! LRU eviction or an idle flow is no event, and a FIN seen on two CPUs at
//! once counts twice. So the counts come from an exact walk of the
//! connection table, bounded in entries and repeated every few seconds,
//! and between two walks the events since the first move them. Each walk
//! starts the counts over, so no error outlives it.
//!
//! A connection entry that still pins its flow (`entry_pins`) counts for
//! its backend (`classify`): as active while open and heard from within
//! its protocol's idle timeout, as inactive once closed (`CONN_CLOSED`)
//! for as long as a closed flow lingers, and not at all after that:
//! expired. lbd does not delete expired entries: a flow idle for longer
//! than its timeout that speaks again keeps its backend, as before, and
//! the LRU reclaims the room when the table needs it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::{
    flow::PROTO_TCP,
    maps::{Backend, ConnEntry, FlowEvents, FlowStats, entry_pins},
};
use serde::Serialize;

use crate::maps::{Maps, MapsError};

/// An open TCP flow silent this long is no longer counted (IPVS's
/// established timeout).
pub const TCP_IDLE: Duration = Duration::from_secs(900);
/// A UDP flow (no close to see) silent this long is no longer counted.
pub const UDP_IDLE: Duration = Duration::from_secs(300);
/// A closed TCP flow is counted inactive this long after its last packet
/// (IPVS's FIN_WAIT / TIME_WAIT).
pub const CLOSED_LINGER: Duration = Duration::from_secs(120);
/// Entries read at most per walk: the walk costs a syscall pair per entry
/// and the daemon's loop waits for it.
pub const WALK_LIMIT: usize = 200_000;
/// Walk at least this far apart...
const WALK_EVERY_MIN: Duration = Duration::from_secs(5);
/// ...and so that walking takes at most one fiftieth of lbd's time.
const WALK_DUTY: u32 = 50;

/// Flows of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    pub active: u64,
    pub inactive: u64,
}

/// How one connection entry counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Active,
    Inactive,
    /// Idle past its timeout, or no longer pinning its flow.
    Uncounted,
}

/// How `entry` (of a flow of protocol `proto`) counts at `now_ns`, its
/// backend's map entry being `backend`.
pub fn classify(entry: &ConnEntry, proto: u8, backend: Option<&Backend>, now_ns: u64) -> Class {
    if backend.is_none_or(|b| entry_pins(entry, entry.vip_id, b).is_err()) {
        return Class::Uncounted;
    }
    let idle = Duration::from_nanos(now_ns.saturating_sub(entry.last_seen()));
    match (entry.closed(), proto == PROTO_TCP) {
        (true, _) if idle < CLOSED_LINGER => Class::Inactive,
        (true, _) => Class::Uncounted,
        (false, true) if idle < TCP_IDLE => Class::Active,
        (false, false) if idle < UDP_IDLE => Class::Active,
        (false, _) => Class::Uncounted,
    }
}

/// The counts of `entries`, by backend id.
pub fn count(
    entries: &[(lb_common::FlowKey, ConnEntry)],
    backends: &BTreeMap<u32, Backend>,
    now_ns: u64,
) -> BTreeMap<u32, FlowCounts> {
    let mut out: BTreeMap<u32, FlowCounts> = BTreeMap::new();
    for (flow, entry) in entries {
        let class = classify(entry, flow.proto, backends.get(&entry.backend_id), now_ns);
        let counts = out.entry(entry.backend_id).or_default();
        match class {
            Class::Active => counts.active += 1,
            Class::Inactive => counts.inactive += 1,
            Class::Uncounted => {}
        }
    }
    out
}

/// The counts a walk found, moved by the events counted since it.
pub fn live(walked: FlowCounts, at_walk: FlowEvents, now: FlowEvents) -> FlowCounts {
    let opened = now.opened.saturating_sub(at_walk.opened);
    let closed = now.closed.saturating_sub(at_walk.closed);
    FlowCounts {
        active: (walked.active + opened).saturating_sub(closed),
        inactive: walked.inactive + closed,
    }
}

/// One backend's load, as `lbctl backend list` and the metrics show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Load {
    pub active_flows: u64,
    pub inactive_flows: u64,
    /// Over the last sample interval (about a second).
    pub new_flows_per_s: f64,
    pub bytes_per_s: f64,
}

/// What is kept per backend id between samples.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    walked: FlowCounts,
    events_at_walk: FlowEvents,
    stats: FlowStats,
    load: Load,
}

/// The last walk of the connection table.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WalkReport {
    pub entries: usize,
    /// The table had more entries than `WALK_LIMIT`: counts are low.
    pub truncated: bool,
    pub took_ms: f64,
}

/// The live load of every backend id lbd has given out.
#[derive(Debug, Default)]
pub struct BackendLoad {
    tallies: BTreeMap<u32, Tally>,
    last_sample: Option<Instant>,
    last_walk: Option<Instant>,
    next_walk: Option<Instant>,
    report: WalkReport,
}

impl BackendLoad {
    /// Once a tick: walk the table if it is time, then read the events
    /// and traffic counters of backend ids `ids`, and forget other ids.
    pub fn sample(&mut self, maps: &Maps, ids: &[u32], now: Instant) -> Result<(), MapsError> {
        self.tallies.retain(|id, _| ids.contains(id));
        if self.next_walk.is_none_or(|at| now >= at) {
            self.walk(maps, ids, now)?;
        }
        let dt = self
            .last_sample
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        self.last_sample = Some(now);
        for &id in ids {
            let (events, stats) = (maps.backend_flows(id)?, maps.backend_stats(id)?);
            let tally = self.tallies.entry(id).or_default();
            let counts = live(tally.walked, tally.events_at_walk, events);
            let rate = |now: u64, before: u64| match dt {
                Some(dt) if dt > 0.0 => now.saturating_sub(before) as f64 / dt,
                _ => 0.0,
            };
            tally.load = Load {
                active_flows: counts.active,
                inactive_flows: counts.inactive,
                new_flows_per_s: rate(stats.new_flows, tally.stats.new_flows),
                bytes_per_s: rate(stats.bytes, tally.stats.bytes),
            };
            tally.stats = stats;
        }
        Ok(())
    }

    /// Count the connection table afresh. The events are read first: a
    /// flow opened during the walk may be counted twice until the next.
    fn walk(&mut self, maps: &Maps, ids: &[u32], now: Instant) -> Result<(), MapsError> {
        for &id in ids {
            let events = maps.backend_flows(id)?;
            self.tallies.entry(id).or_default().events_at_walk = events;
        }
        let backends: BTreeMap<u32, Backend> = maps.backends()?.into_iter().collect();
        let entries = maps.conns(WALK_LIMIT + 1)?;
        let truncated = entries.len() > WALK_LIMIT;
        let entries = &entries[..entries.len().min(WALK_LIMIT)];
        let counts = count(entries, &backends, crate::conn_list::monotonic_coarse_ns());
        for &id in ids {
            let tally = self.tallies.entry(id).or_default();
            tally.walked = counts.get(&id).copied().unwrap_or_default();
        }
        let took = now.elapsed();
        self.report = WalkReport {
            entries: entries.len(),
            truncated,
            took_ms: took.as_secs_f64() * 1e3,
        };
        self.last_walk = Some(now);
        self.next_walk = Some(now + WALK_EVERY_MIN.max(took * WALK_DUTY));
        Ok(())
    }

    /// Walk at the next sample, whatever the schedule (a test, an operator
    /// who wants the exact count now).
    pub fn walk_soon(&mut self) {
        self.next_walk = None;
    }

    /// Backend id `id`'s load, if it was sampled.
    pub fn get(&self, id: u32) -> Option<Load> {
        self.tallies.get(&id).map(|t| t.load)
    }

    pub fn last_walk(&self) -> WalkReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{
        FlowKey,
        flow::PROTO_UDP,
        maps::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, CONN_CLOSED},
    };

    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 10_000 * S;

    fn backend(vip_id: u32) -> Backend {
        Backend {
            flags: BACKEND_F_ACTIVE,
            vip_id,
            ..Backend::default()
        }
    }

    fn entry(backend_id: u32, idle_s: u64, closed: bool) -> ConnEntry {
        ConnEntry {
            backend_id,
            vip_id: 0,
            last_seen_ns: (NOW - idle_s * S) | if closed { CONN_CLOSED } else { 0 },
        }
    }

    #[test]
    fn open_flows_are_active_until_their_protocols_idle_timeout() {
        let b = backend(0);
        let tcp = |idle| classify(&entry(1, idle, false), PROTO_TCP, Some(&b), NOW);
        let udp = |idle| classify(&entry(1, idle, false), PROTO_UDP, Some(&b), NOW);
        assert_eq!(tcp(0), Class::Active);
        assert_eq!(tcp(TCP_IDLE.as_secs() - 1), Class::Active);
        assert_eq!(tcp(TCP_IDLE.as_secs()), Class::Uncounted);
        assert_eq!(udp(UDP_IDLE.as_secs() - 1), Class::Active);
        assert_eq!(udp(UDP_IDLE.as_secs()), Class::Uncounted);
    }

    #[test]
    fn closed_flows_are_inactive_while_they_linger() {
        let b = backend(0);
        let closed = |idle| classify(&entry(1, idle, true), PROTO_TCP, Some(&b), NOW);
        assert_eq!(closed(0), Class::Inactive);
        assert_eq!(closed(CLOSED_LINGER.as_secs() - 1), Class::Inactive);
        assert_eq!(closed(CLOSED_LINGER.as_secs()), Class::Uncounted);
    }

    #[test]
    fn entries_that_no_longer_pin_are_not_counted() {
        let down = Backend {
            flags: BACKEND_F_ACTIVE | BACKEND_F_DOWN,
            ..backend(0)
        };
        let e = entry(1, 0, false);
        assert_eq!(classify(&e, PROTO_TCP, None, NOW), Class::Uncounted);
        assert_eq!(classify(&e, PROTO_TCP, Some(&down), NOW), Class::Uncounted);
        // The id now belongs to a backend of another VIP.
        assert_eq!(
            classify(&e, PROTO_TCP, Some(&backend(7)), NOW),
            Class::Uncounted
        );
    }

    #[test]
    fn count_sums_by_backend() {
        let flow = |proto| FlowKey {
            proto,
            ..FlowKey::default()
        };
        let entries = [
            (flow(PROTO_TCP), entry(1, 0, false)),
            (flow(PROTO_TCP), entry(1, 3, false)),
            (flow(PROTO_TCP), entry(1, 3, true)),
            (flow(PROTO_UDP), entry(2, 1, false)),
            (flow(PROTO_TCP), entry(3, 0, false)),
        ];
        let backends = BTreeMap::from([(1, backend(0)), (2, backend(0))]);
        let counts = count(&entries, &backends, NOW);
        assert_eq!(
            counts[&1],
            FlowCounts {
                active: 2,
                inactive: 1
            }
        );
        assert_eq!(
            counts[&2],
            FlowCounts {
                active: 1,
                inactive: 0
            }
        );
        assert_eq!(
            counts.get(&3).copied().unwrap_or_default(),
            FlowCounts::default()
        );
    }

    #[test]
    fn events_since_the_walk_move_the_counts_and_never_below_zero() {
        let walked = FlowCounts {
            active: 5,
            inactive: 2,
        };
        let at = FlowEvents {
            opened: 100,
            closed: 90,
        };
        let now = FlowEvents {
            opened: 103,
            closed: 91,
        };
        assert_eq!(
            live(walked, at, now),
            FlowCounts {
                active: 7,
                inactive: 3
            }
        );
        // Closes the walk had already counted (a FIN seen twice, say).
        let now = FlowEvents {
            opened: 100,
            closed: 99,
        };
        assert_eq!(
            live(walked, at, now),
            FlowCounts {
                active: 0,
                inactive: 11
            }
        );
        // Counters cleared under a recycled id.
        let now = FlowEvents::default();
        assert_eq!(live(walked, at, now), walked);
    }
}
