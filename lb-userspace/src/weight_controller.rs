//! The weight controller of a `load`-mode VIP (`vips[].balancing`): each
//! interval it turns the backends' load into effective weights, the
//! weights the VIP's Maglev ring is built from. Only new flows follow
//! them; established ones stay pinned by the connection table.
//!
//! For each backend in service, in this order:
//!
//! 1. **Utilization** `u`: with `source: flows`, its active flows over
//!    its capacity (`flows_per_weight` × configured weight), or, without
//!    a capacity, relative: `target_utilization` × its flows per weight
//!    over the VIP's mean (a backend at the mean is at the target). With
//!    a reported load (`source: prometheus` or `header`), the load over
//!    the capacity (`load_report`).
//! 2. **Factor**, in `min_weight..=1`. With an absolute utilization (a
//!    capacity or a report), the headroom `(1 - u) / (1 - target)`: 1 at
//!    or under the target, falling to `min_weight` as `u` nears 1. With a
//!    relative one, least-connections in spirit: a backend over `u` 1
//!    (its flows per weight over the mean / `target`) has its factor
//!    multiplied by `1 / u` each interval, one under the target (under
//!    the mean) by `target / u` (at most doubled), and one in between
//!    keeps it. So the factor goes on falling until the backend's flows
//!    per weight are back within the band, in proportion to its excess,
//!    and equal backends whose counts wobble within the band keep equal
//!    weights. (A factor set from the utilization alone leaves the
//!    loaded backend loaded and swings it between full and floor.) A
//!    backend in slow start counts at its ramped share in the mean, so
//!    its few flows do not make the others look loaded; and the factors
//!    are scaled so the largest is 1 (only their ratios shape the ring),
//!    so none is left low with nothing to pull it up.
//! 3. **Smoothing**: a moving average (EWMA, `smoothing` the weight of
//!    the newest factor).
//! 4. **Slow start**: a new or returning backend's share rises from
//!    nothing to full over `slow_start_s`.
//! 5. **Step bound**: the effective weight moves at most `max_step` of
//!    the configured weight per interval.
//! 6. **Staleness**: a backend without a load report for `stale_after`
//!    intervals falls back to its configured weight (through the step
//!    bound too).
//!
//! Then, for the VIP as a whole, the **ring budget**: if the new weights
//! would hand more than `ring_budget` of the ring's slots to other
//! backends, the changes are scaled down (halved up to three times) until
//! they fit, and held back if they never do. Every moved slot is a slot
//! whose new flows change backend, and a previous owner that second
//! chance must remember; the budget bounds both.
//!
//! Last, the **hard limit** (`hard_limit`): a backend whose reported
//! value goes above `above` gets weight 0 at once (out of the ring, its
//! established flows going on, like a drain), whatever the budget, until
//! the value falls under `resume_below` or its reports go stale; then it
//! climbs back by the step bound. If every backend in service is over
//! it, the limit is waived for the VIP (they keep their weights by load)
//! rather than leave new flows nowhere to go.
//!
//! Effective weights are in hundredths of a configured weight (`SCALE`);
//! Maglev's shares depend only on the ratios of the weights, so a VIP
//! whose weights are all scaled alike keeps its ring.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::Balancing,
    maglev::{self, MaglevBackend},
};

/// Effective weights are in units of a configured weight over this.
pub const SCALE: u32 = 100;
/// Changes of less than this share of the configured weight are not
/// made (unless they reach the configured weight): they would rebuild
/// the ring for nothing.
const DEAD_BAND: f64 = 0.02;
/// Times the budget halves a change before it holds it back.
const BUDGET_TRIES: u32 = 3;
/// Most a relative factor grows per interval: a backend that emptied
/// climbs back in a few intervals rather than at once.
const MAX_RISE: f64 = 2.0;

/// A backend in service (up, active) this interval.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub addr: IpAddr,
    /// Backend id, for the ring.
    pub id: u32,
    /// `vips[].backends[].weight`.
    pub configured: u32,
    /// Its load, if a fresh report has it.
    pub load: Option<Load>,
    /// The value its hard limit applies to, from the same report.
    pub limit: Option<f64>,
}

/// A backend's load as its source gives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Its active flows in this node's connection table.
    Flows(u64),
    /// Its reported load over its capacity (`load_report::Reading`).
    Utilization(f64),
}

/// What the controller keeps of one backend between intervals.
#[derive(Clone, Debug)]
struct Track {
    /// The smoothed headroom factor.
    smoothed: f64,
    /// The effective weight in use, in `SCALE` units.
    effective: u32,
    /// In service since.
    since: Instant,
    /// Intervals in a row without a report.
    stale_for: u32,
    /// Over its hard limit: no new flows (unless waived).
    over_limit: bool,
    why: String,
}

/// A backend's effective weight and why it is what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    /// In `SCALE` units.
    pub effective: u32,
    pub why: String,
    /// Over its hard limit (its weight 0 unless the limit is waived).
    pub over_limit: bool,
}

/// The controller of one VIP.
#[derive(Debug, Default)]
pub struct Controller {
    tracks: BTreeMap<IpAddr, Track>,
    last_step: Option<Instant>,
    /// Every backend in service is over the hard limit: it is waived.
    waived: bool,
    /// Hard-limit entries and exits since the last `take_limit_events`.
    limit_events: Vec<LimitEvent>,
}

/// A change of a backend's (or the VIP's) hard-limit state, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitEvent {
    /// Into the limit (or a waiver): fewer backends take new flows.
    pub entered: bool,
    pub text: String,
}

/// What one interval changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// (backend, old effective, new effective), `SCALE` units.
    pub moved: Vec<(IpAddr, u32, u32)>,
    /// Share of the ring the change hands to other backends.
    pub ring_moved: f64,
    /// Why the weights moved, one clause per backend moved.
    pub reason: String,
}

impl Controller {
    /// Whether an interval has passed since the last step.
    pub fn due(&self, p: &Balancing, now: Instant) -> bool {
        // Half a second early at most: the daemon ticks once a second.
        let interval = Duration::from_secs(p.interval_s).saturating_sub(Duration::from_millis(500));
        self.last_step
            .is_none_or(|t| now.saturating_duration_since(t) >= interval)
    }

    /// The effective weight of `addr`, if it is in service.
    pub fn weight(&self, addr: &IpAddr) -> Option<Weight> {
        self.tracks.get(addr).map(|t| Weight {
            effective: t.effective,
            why: t.why.clone(),
            over_limit: t.over_limit,
        })
    }

    /// Whether the hard limit is waived: every backend is over it.
    pub fn limit_waived(&self) -> bool {
        self.waived
    }

    /// The hard-limit entries and exits (and waivers) since the last
    /// call, for the log.
    pub fn take_limit_events(&mut self) -> Vec<LimitEvent> {
        std::mem::take(&mut self.limit_events)
    }

    /// One interval over `members`, the backends in service now.
    /// `ring_moved(old, new)` says what share of the ring's slots change
    /// hands between the rings of two weight sets (id, weight).
    pub fn step(
        &mut self,
        p: &Balancing,
        members: &[Member],
        now: Instant,
        ring_moved: impl Fn(&[(u32, u32)], &[(u32, u32)]) -> f64,
    ) -> Option<Change> {
        self.last_step = Some(now);
        // Backends out of service are forgotten: back, they start slow.
        self.tracks
            .retain(|addr, _| members.iter().any(|m| m.addr == *addr));
        // The weights the live ring was built from: with no history (the
        // controller just started), the configured ones; a backend new to
        // a running controller has next to no share yet.
        let first = self.tracks.is_empty();
        let current: Vec<(u32, u32)> = members
            .iter()
            .map(|m| match self.tracks.get(&m.addr) {
                Some(t) => (m.id, t.effective),
                None if first => (m.id, m.configured * SCALE),
                None => (m.id, 0),
            })
            .collect();
        // Each member's intended share of the load: its configured weight,
        // times its slow-start ramp while it ramps. A newcomer counted at its
        // full weight would pull the mean down and cut everyone else.
        let intended: Vec<f64> = members
            .iter()
            .map(|m| {
                // A member new this interval starts its slow start now.
                let since = self.tracks.get(&m.addr).map_or(now, |t| t.since);
                f64::from(m.configured.max(1)) * self.ramp(p, since, now)
            })
            .collect();
        let utilization = utilizations(p, members, &intended);
        let mut proposed = Vec::with_capacity(members.len());
        for (m, u) in members.iter().zip(&utilization) {
            let (effective, why) = self.propose(p, m, *u, now);
            self.track_limit(p, m);
            proposed.push((m.id, effective, why));
        }
        self.normalize_relative(p, members);
        // The budget: scale the changes down until they fit.
        let mut fraction = 1.0;
        let mut weights: Vec<(u32, u32)> = proposed.iter().map(|(id, w, _)| (*id, *w)).collect();
        let mut moved = ring_moved(&current, &weights);
        let mut tries = 0;
        while moved > p.ring_budget && tries < BUDGET_TRIES {
            fraction /= 2.0;
            tries += 1;
            weights = current
                .iter()
                .zip(&proposed)
                .map(|((id, old), (_, new, _))| (*id, between(*old, *new, fraction)))
                .collect();
            moved = ring_moved(&current, &weights);
        }
        let held = moved > p.ring_budget;
        if held {
            weights = current.iter().map(|(id, w)| (*id, (*w).max(1))).collect();
        }
        let limited = self.apply_limits(p, members, &mut weights);
        moved = ring_moved(&current, &weights);
        let mut change = Change {
            moved: Vec::new(),
            ring_moved: moved,
            reason: String::new(),
        };
        let mut clauses = Vec::new();
        for ((m, (_, new)), (_, _, why)) in members.iter().zip(&weights).zip(proposed) {
            let track = self.tracks.get_mut(&m.addr).expect("tracked by propose");
            let mut why = why;
            if limited.contains(&m.addr) {
                why = limit_why(p, m.limit);
            } else if self.waived && track.over_limit {
                why = format!("{why}; over the hard limit like every backend: limit waived");
            }
            if held {
                why = format!(
                    "{why}; held back: the change would move more than {:.1}% of the ring",
                    p.ring_budget * 100.0
                );
            } else if fraction < 1.0 {
                why = format!(
                    "{why}; {:.0}% of the change, to move at most {:.1}% of the ring",
                    fraction * 100.0,
                    p.ring_budget * 100.0
                );
            }
            if *new != track.effective {
                change.moved.push((m.addr, track.effective, *new));
                clauses.push(format!("{} {} -> {}: {why}", m.addr, track.effective, new));
            }
            track.effective = *new;
            track.why = why;
        }
        if change.moved.is_empty() {
            return None;
        }
        change.reason = clauses.join("; ");
        Some(change)
    }

    /// Set the weight of each backend over the hard limit to 0, unless
    /// all are (then the limit is waived); the backends set to 0.
    fn apply_limits(
        &mut self,
        p: &Balancing,
        members: &[Member],
        weights: &mut [(u32, u32)],
    ) -> Vec<IpAddr> {
        if p.hard_limit.is_none() {
            return Vec::new();
        }
        let over: Vec<IpAddr> = members
            .iter()
            .map(|m| m.addr)
            .filter(|a| self.tracks.get(a).is_some_and(|t| t.over_limit))
            .collect();
        let waived = !members.is_empty() && over.len() == members.len();
        if waived != self.waived {
            self.limit_events.push(LimitEvent {
                entered: waived,
                text: if waived {
                    "every backend is over the hard limit: limit waived, new flows go by load"
                        .into()
                } else {
                    "not every backend is over the hard limit any more: limit applies again".into()
                },
            });
        }
        self.waived = waived;
        if waived {
            return Vec::new();
        }
        for (m, (_, w)) in members.iter().zip(weights.iter_mut()) {
            if over.contains(&m.addr) {
                *w = 0;
            }
        }
        over
    }

    /// Move `m`'s hard-limit state by its report: in above `above`, out
    /// under `resume_below`, or once its reports are stale.
    fn track_limit(&mut self, p: &Balancing, m: &Member) {
        let Some(limit) = &p.hard_limit else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&m.addr) else {
            return;
        };
        let was = track.over_limit;
        track.over_limit = match m.limit {
            Some(v) if !was => v > limit.above,
            Some(v) => v >= limit.resume_level(),
            None => was && track.stale_for < p.stale_after,
        };
        let text = match (was, track.over_limit, m.limit) {
            (false, true, Some(v)) => format!(
                "{}: {} {v} above the hard limit {}: no new flows",
                m.addr, limit.metric, limit.above
            ),
            (true, false, Some(v)) => format!(
                "{}: {} {v} under {}: takes new flows again",
                m.addr,
                limit.metric,
                limit.resume_level()
            ),
            (true, false, None) => format!(
                "{}: no report for {} intervals: hard limit lifted",
                m.addr, track.stale_for
            ),
            _ => return,
        };
        self.limit_events.push(LimitEvent {
            entered: track.over_limit,
            text,
        });
    }

    /// The slow-start ramp of a member in service since `since`: 1 past
    /// its slow start (or without one).
    fn ramp(&self, p: &Balancing, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since);
        if p.slow_start_s > 0 && elapsed < Duration::from_secs(p.slow_start_s) {
            slow_start_ramp(p, elapsed)
        } else {
            1.0
        }
    }

    /// Scale the relative factors so that the largest is 1: only their
    /// ratios shape the ring, and a factor left low with nothing pulling
    /// it up (a lone backend, equal backends after a cut) would make a
    /// returning peer's share out of all proportion.
    fn normalize_relative(&mut self, p: &Balancing, members: &[Member]) {
        let relative: Vec<IpAddr> = members
            .iter()
            .filter(|m| is_relative(p, m))
            .map(|m| m.addr)
            .collect();
        let top = relative
            .iter()
            .filter_map(|a| self.tracks.get(a))
            .map(|t| t.smoothed)
            .fold(0.0, f64::max);
        if top <= 0.0 || top >= 1.0 {
            return;
        }
        for a in &relative {
            if let Some(t) = self.tracks.get_mut(a) {
                t.smoothed = (t.smoothed / top).clamp(p.min_weight, 1.0);
            }
        }
    }

    /// The weight `m` would take this interval, before the budget, and why;
    /// updates its track (smoothing, staleness) but not its effective weight.
    fn propose(
        &mut self,
        p: &Balancing,
        m: &Member,
        u: Option<f64>,
        now: Instant,
    ) -> (u32, String) {
        let full = m.configured * SCALE;
        let fresh = !self.tracks.contains_key(&m.addr);
        let track = self.tracks.entry(m.addr).or_insert(Track {
            smoothed: 1.0,
            effective: 0,
            since: now,
            stale_for: 0,
            over_limit: false,
            why: String::new(),
        });
        let mut why = match u {
            Some(u) => {
                track.stale_for = 0;
                let f = if is_relative(p, m) {
                    relative_factor(p, u, track.smoothed)
                } else {
                    headroom(p, u)
                };
                track.smoothed = p.smoothing * f + (1.0 - p.smoothing) * track.smoothed;
                format!(
                    "load: utilization {u:.2} (target {:.2}), weight {:.0}%",
                    p.target_utilization,
                    track.smoothed * 100.0
                )
            }
            None => {
                track.stale_for += 1;
                if track.stale_for >= p.stale_after {
                    track.smoothed = 1.0;
                    format!(
                        "no load report for {} intervals: back to the configured weight",
                        track.stale_for
                    )
                } else {
                    format!("no load report for {} intervals: held", track.stale_for)
                }
            }
        };
        let mut share = track.smoothed;
        let elapsed = now.saturating_duration_since(track.since);
        if p.slow_start_s > 0 && elapsed < Duration::from_secs(p.slow_start_s) {
            let ramp = slow_start_ramp(p, elapsed);
            share *= ramp;
            why = format!(
                "slow start, {:.0}% of the way ({} s of {} s); {why}",
                ramp * 100.0,
                elapsed.as_secs(),
                p.slow_start_s
            );
        }
        let target = ((f64::from(full) * share).round() as u32).clamp(1, full);
        if fresh {
            // Nothing to step from: a new backend enters at its slow-start
            // share (or in full, without slow start).
            return (target, why);
        }
        let prev = track.effective;
        let step = ((f64::from(full) * p.max_step).round() as u32).max(1);
        let bounded = target.clamp(prev.saturating_sub(step), prev.saturating_add(step));
        if bounded != target {
            why = format!(
                "{why}; step bound {:.0}% of the configured weight",
                p.max_step * 100.0
            );
        }
        let band = (f64::from(full) * DEAD_BAND).round() as u32;
        if bounded.abs_diff(prev) < band.max(1) && bounded != full {
            return (prev, why);
        }
        (bounded, why)
    }
}

/// How far into its slow start a backend in service for `elapsed` is: at
/// least one interval's worth, so that it starts with some share.
fn slow_start_ramp(p: &Balancing, elapsed: Duration) -> f64 {
    let whole = p.slow_start_s as f64;
    let at = elapsed.as_secs_f64().max(p.interval_s as f64);
    (at / whole).min(1.0)
}

/// The headroom factor of utilization `u`: 1 at or under the target,
/// `min_weight` at full use or over.
pub fn headroom(p: &Balancing, u: f64) -> f64 {
    ((1.0 - u) / (1.0 - p.target_utilization)).clamp(p.min_weight, 1.0)
}

/// Whether `m`'s utilization is relative to the VIP's mean: active flows
/// without a capacity (`flows_per_weight`).
fn is_relative(p: &Balancing, m: &Member) -> bool {
    p.flows_per_weight.is_none() && matches!(m.load, Some(Load::Flows(_)))
}

/// The next factor of a backend at relative utilization `u` whose factor
/// is `factor`: down by `1 / u` over 1, up by `target / u` (at most
/// `MAX_RISE`) under the target, held in between, in `min_weight..=1`.
/// The factor integrates, as least-connections does: it moves until the
/// backend's flows per weight are within the band, wherever that leaves
/// its weight.
pub fn relative_factor(p: &Balancing, u: f64, factor: f64) -> f64 {
    let by = if u > 1.0 {
        1.0 / u
    } else if u < p.target_utilization {
        (p.target_utilization / u).min(MAX_RISE)
    } else {
        1.0
    };
    (factor * by).clamp(p.min_weight, 1.0)
}

/// Why a backend has weight 0: its hard limit (`value` its last one).
fn limit_why(p: &Balancing, value: Option<f64>) -> String {
    let Some(limit) = &p.hard_limit else {
        return String::new();
    };
    let value = value.map_or("held (no fresh report)".into(), |v| v.to_string());
    format!(
        "hard limit: {} {value} (above {}): no new flows until under {}",
        limit.metric,
        limit.above,
        limit.resume_level()
    )
}

/// Each member's utilization, `None` for those without a report.
/// `intended`: each member's intended share in configured-weight units
/// (its configured weight, scaled down while it ramps up in slow start),
/// against which relative utilization measures its flows.
pub fn utilizations(p: &Balancing, members: &[Member], intended: &[f64]) -> Vec<Option<f64>> {
    let flows_of = |m: &Member| match m.load {
        Some(Load::Flows(a)) => Some(a),
        _ => None,
    };
    let (flows, weight) = members
        .iter()
        .zip(intended)
        .filter_map(|(m, w)| flows_of(m).map(|a| (a, *w)))
        .fold((0u64, 0.0), |(f, w), (a, i)| (f + a, w + i));
    members
        .iter()
        .zip(intended)
        .map(|(m, share)| {
            if let Some(Load::Utilization(u)) = m.load {
                return Some(u);
            }
            let active = flows_of(m)? as f64;
            let configured = f64::from(m.configured.max(1));
            Some(match p.flows_per_weight {
                Some(capacity) => active / (configured * capacity as f64),
                None if flows == 0 => 0.0,
                None => {
                    let mean = flows as f64 / weight.max(f64::MIN_POSITIVE);
                    p.target_utilization * (active / share.max(f64::MIN_POSITIVE)) / mean
                }
            })
        })
        .collect()
}

/// The share of the ring's slots (of `ring_size`) that change backend
/// between the Maglev rings of weights `old` and `new` (backend id,
/// weight) over `members`. Two ring builds; nothing when equal.
pub fn moved_share(
    members: &[Member],
    old: &[(u32, u32)],
    new: &[(u32, u32)],
    ring_size: u32,
) -> f64 {
    if old == new {
        return 0.0;
    }
    let ring = |weights: &[(u32, u32)]| {
        let backends: Vec<MaglevBackend> = members
            .iter()
            .zip(weights)
            .map(|(m, (id, weight))| MaglevBackend {
                id: *id,
                addr: m.addr,
                weight: *weight,
            })
            .collect();
        maglev::build(&backends, ring_size)
    };
    let (a, b) = (ring(old), ring(new));
    let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    moved as f64 / f64::from(ring_size.max(1))
}

/// `fraction` of the way from `old` to `new`, at least 1.
fn between(old: u32, new: u32, fraction: f64) -> u32 {
    let w = f64::from(old) + (f64::from(new) - f64::from(old)) * fraction;
    (w.round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Balancing {
        Balancing {
            mode: crate::config::BalancingMode::Load,
            slow_start_s: 0,
            max_step: 1.0,
            smoothing: 1.0,
            ring_budget: 1.0,
            ..Balancing::default()
        }
    }

    /// `params` with a capacity: 20 flows per weight is full use.
    fn absolute() -> Balancing {
        Balancing {
            flows_per_weight: Some(20),
            ..params()
        }
    }

    fn member(last: u8, active: Option<u64>) -> Member {
        Member {
            addr: IpAddr::from([198, 51, 100, last]),
            id: u32::from(last),
            configured: 1,
            load: active.map(Load::Flows),
            limit: None,
        }
    }

    fn no_ring(_: &[(u32, u32)], _: &[(u32, u32)]) -> f64 {
        0.0
    }

    #[test]
    fn moved_share_counts_the_slots_that_change_backend() {
        let members = [member(1, None), member(2, None)];
        let equal = [(1, 100), (2, 100)];
        assert_eq!(moved_share(&members, &equal, &equal, 251), 0.0);
        // Proportional weights build the same ring.
        assert_eq!(moved_share(&members, &equal, &[(1, 7), (2, 7)], 251), 0.0);
        // From half each to a tenth: about 40% of the slots move.
        let moved = moved_share(&members, &equal, &[(1, 10), (2, 90)], 251);
        assert!((0.35..0.45).contains(&moved), "{moved}");
    }

    fn effective(c: &Controller, m: &Member) -> u32 {
        c.weight(&m.addr).expect("in service").effective
    }

    #[test]
    fn a_backend_over_the_mean_loses_weight_and_one_under_keeps_it() {
        let p = params();
        let (a, b) = (member(1, Some(30)), member(2, Some(10)));
        let mut c = Controller::default();
        let t = Instant::now();
        c.step(&p, &[a, b], t, no_ring);
        // a: 1.5 x the mean, u = 1.2: 1 / 1.2 of its weight; b: u = 0.4,
        // full.
        assert_eq!(effective(&c, &a), 83);
        assert_eq!(effective(&c, &b), 100);
        // Still over: down again, by the same ratio, to the floor.
        let mut seen = Vec::new();
        for i in 1..=12 {
            c.step(&p, &[a, b], t + Duration::from_secs(2 * i), no_ring);
            seen.push(effective(&c, &a));
        }
        assert_eq!(seen[..3], [69, 58, 48]);
        // The floor (10), give or take the dead band.
        assert_eq!(seen[11], 11);
        // Equal load: both at the target, full weight.
        let (a, b) = (member(1, Some(10)), member(2, Some(10)));
        let mut c = Controller::default();
        c.step(&p, &[a, b], t, no_ring);
        assert_eq!((effective(&c, &a), effective(&c, &b)), (100, 100));
    }

    /// A fixed pseudo-random sequence in `0..1` (an LCG), so that noisy
    /// tests are repeatable.
    fn noise(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn equal_backends_with_noisy_flow_counts_keep_equal_weights() {
        // The defaults (smoothing, step, target), no slow start.
        let p = Balancing {
            mode: crate::config::BalancingMode::Load,
            slow_start_s: 0,
            ring_budget: 1.0,
            ..Balancing::default()
        };
        let t = Instant::now();
        let mut c = Controller::default();
        let mut seed = 7;
        for i in 0..200 {
            // 100 flows each, give or take up to 20%.
            let members: Vec<Member> = (1..=3)
                .map(|last| {
                    let flows = 100.0 * (0.8 + 0.4 * noise(&mut seed));
                    member(last, Some(flows.round() as u64))
                })
                .collect();
            c.step(&p, &members, t + Duration::from_secs(2 * i), no_ring);
            let weights: Vec<u32> = members.iter().map(|m| effective(&c, m)).collect();
            assert_eq!(weights, [100, 100, 100], "interval {i}: {members:?}");
        }
    }

    #[test]
    fn the_factor_falls_in_proportion_to_the_excess_over_the_mean() {
        let p = params();
        let t = Instant::now();
        // Twice the mean: u = 0.8 x 2 = 1.6; three times: 2.4.
        let twice = [member(1, Some(20)), member(2, Some(0))];
        let thrice = [member(1, Some(30)), member(2, Some(0)), member(3, Some(0))];
        let mut factors = Vec::new();
        for members in [&twice[..], &thrice[..]] {
            let mut c = Controller::default();
            c.step(&p, members, t, no_ring);
            factors.push(effective(&c, &members[0]));
            assert!(members[1..].iter().all(|m| effective(&c, m) == 100));
        }
        // 1 / 1.6 and 1 / 2.4 of the weight: in the ratio 3 : 2.
        assert_eq!(factors, [63, 42]);
    }

    /// A toy plant: each interval a backend's active flows decay by
    /// `1 / lifetime` (its flows' mean lifetime, in intervals) and it gets
    /// its weight's share of `arrivals` new ones.
    fn plant(flows: &mut [f64], weights: &[u32], lifetimes: &[f64], arrivals: f64) {
        let total: u32 = weights.iter().sum();
        for ((f, w), life) in flows.iter_mut().zip(weights).zip(lifetimes) {
            *f += arrivals * f64::from(*w) / f64::from(total.max(1)) - *f / life;
        }
    }

    #[test]
    fn a_slow_backend_settles_without_oscillating() {
        // b3's flows last three times as long: at equal weights it holds
        // three times the flows of each other backend.
        let p = Balancing {
            mode: crate::config::BalancingMode::Load,
            slow_start_s: 0,
            interval_s: 1,
            smoothing: 0.5,
            max_step: 0.3,
            ring_budget: 1.0,
            ..Balancing::default()
        };
        let lifetimes = [2.0, 2.0, 6.0];
        let mut flows: [f64; 3] = [20.0, 20.0, 60.0];
        let t = Instant::now();
        let mut c = Controller::default();
        let mut history = Vec::new();
        let mut seed = 11;
        for i in 0..60 {
            // Counted give or take 10%, as a connection table sees them.
            let members: Vec<Member> = (0..3)
                .map(|k| {
                    let counted = flows[k] * (0.9 + 0.2 * noise(&mut seed));
                    member(k as u8 + 1, Some(counted.round() as u64))
                })
                .collect();
            c.step(&p, &members, t + Duration::from_secs(i), no_ring);
            let weights: Vec<u32> = members.iter().map(|m| effective(&c, m)).collect();
            plant(&mut flows, &weights, &lifetimes, 20.0);
            history.push((weights, flows));
        }
        let last = &history[40..];
        let slow: Vec<u32> = last.iter().map(|(w, _)| w[2]).collect();
        let (lo, hi) = (slow.iter().min().unwrap(), slow.iter().max().unwrap());
        assert!(hi - lo <= 10, "b3's weight still swings: {history:?}");
        assert!(last.iter().all(|(w, _)| w[0] == 100 && w[1] == 100));
        // Settled where b3's flows per weight are within the band: at
        // most the mean over the target (u 1).
        let (_, flows) = history[59];
        let mean = flows.iter().sum::<f64>() / 3.0;
        assert!(
            flows[2] / mean <= 1.0 / p.target_utilization + 0.05,
            "{history:?}"
        );
        assert!(*hi < 60, "b3 kept most of its weight: {history:?}");
    }

    #[test]
    fn with_a_capacity_utilization_is_absolute() {
        let p = Balancing {
            flows_per_weight: Some(100),
            ..params()
        };
        let u = utilizations(&p, &[member(1, Some(90)), member(2, Some(50))], &[1.0, 1.0]);
        assert_eq!(u, vec![Some(0.9), Some(0.5)]);
        // (1 - 0.9) / (1 - 0.8) = 0.5.
        assert!((headroom(&p, 0.9) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_weight_moves_at_most_one_step_per_interval() {
        let p = Balancing {
            max_step: 0.2,
            ..absolute()
        };
        let mut c = Controller::default();
        let t = Instant::now();
        let (a, b) = (member(1, Some(10)), member(2, Some(10)));
        c.step(&p, &[a, b], t, no_ring);
        assert_eq!(effective(&c, &a), 100);
        // a now far over its capacity: its target is the floor, 10.
        let a = member(1, Some(100));
        let mut seen = Vec::new();
        for i in 1..=5 {
            c.step(&p, &[a, b], t + Duration::from_secs(2 * i), no_ring);
            let w = c.weight(&a.addr).expect("in service");
            assert_eq!(w.why.contains("step bound"), w.effective > 10, "{}", w.why);
            seen.push(w.effective);
        }
        assert_eq!(seen, vec![80, 60, 40, 20, 10]);
    }

    #[test]
    fn smoothing_averages_the_factor_over_intervals() {
        let p = Balancing {
            smoothing: 0.5,
            ..absolute()
        };
        let mut c = Controller::default();
        let t = Instant::now();
        let (a, b) = (member(1, Some(100)), member(2, Some(0)));
        c.step(&p, &[a, b], t, no_ring);
        // Factor 0.1 (the floor) averaged with the starting 1: 0.55.
        assert_eq!(effective(&c, &a), 55);
        c.step(&p, &[a, b], t + Duration::from_secs(2), no_ring);
        // 0.5 x 0.1 + 0.5 x 0.55 = 0.325.
        assert!((32..=33).contains(&effective(&c, &a)));
    }

    #[test]
    fn the_ring_budget_scales_a_change_down_or_holds_it_back() {
        let p = Balancing {
            ring_budget: 0.1,
            ..absolute()
        };
        let t = Instant::now();
        let (a, b) = (member(1, Some(10)), member(2, Some(10)));
        // A stand-in ring: the share moved is the change of a's weight
        // share.
        let ring = |old: &[(u32, u32)], new: &[(u32, u32)]| {
            let share = |w: &[(u32, u32)]| f64::from(w[0].1) / f64::from(w[0].1 + w[1].1);
            (share(old) - share(new)).abs()
        };
        let mut c = Controller::default();
        c.step(&p, &[a, b], t, ring);
        let a = member(1, Some(100));
        let change = c
            .step(&p, &[a, b], t + Duration::from_secs(2), ring)
            .expect("a change");
        // All the way (100 -> 10) moves 41% of the ring, half of it 14%;
        // a quarter (100 -> 78) moves 6%.
        assert_eq!(change.moved, vec![(a.addr, 100, 78)]);
        assert!(change.ring_moved <= p.ring_budget);
        assert!(
            change.reason.contains("25% of the change"),
            "{}",
            change.reason
        );
        // A budget nothing fits: held back.
        let p = Balancing {
            ring_budget: 0.0001,
            ..p
        };
        assert_eq!(c.step(&p, &[a, b], t + Duration::from_secs(4), ring), None);
        assert_eq!(effective(&c, &a), 78);
        assert!(c.weight(&a.addr).unwrap().why.contains("held back"));
    }

    #[test]
    fn a_new_or_returning_backend_starts_slow() {
        let p = Balancing {
            slow_start_s: 10,
            interval_s: 2,
            ..params()
        };
        let t = Instant::now();
        let (a, b) = (member(1, Some(0)), member(2, Some(0)));
        let mut c = Controller::default();
        c.step(&p, &[a], t, no_ring);
        c.step(&p, &[a], t + Duration::from_secs(20), no_ring);
        assert_eq!(effective(&c, &a), 100);
        // b joins: one interval's worth (2 s of 10), then up with time.
        let mut seen = Vec::new();
        for s in [20, 24, 28, 32] {
            c.step(&p, &[a, b], t + Duration::from_secs(s), no_ring);
            seen.push(effective(&c, &b));
        }
        assert_eq!(seen, vec![20, 40, 80, 100]);
        assert_eq!(effective(&c, &a), 100, "a is past its slow start");
        // b leaves (down, drained) and comes back: slow again.
        c.step(&p, &[a], t + Duration::from_secs(34), no_ring);
        assert_eq!(c.weight(&b.addr), None);
        c.step(&p, &[a, b], t + Duration::from_secs(36), no_ring);
        assert_eq!(effective(&c, &b), 20);
        assert!(c.weight(&b.addr).unwrap().why.starts_with("slow start"));
    }

    /// A newcomer in slow start is measured against its ramped share: its
    /// few flows do not make the others look loaded and cut them while it
    /// ramps (relative mode).
    #[test]
    fn a_backend_in_slow_start_does_not_cut_the_others() {
        let p = Balancing {
            slow_start_s: 30,
            interval_s: 2,
            ..params()
        };
        let t = Instant::now();
        let mut c = Controller::default();
        let a = member(1, Some(100));
        c.step(&p, &[a], t, no_ring);
        c.step(&p, &[a], t + Duration::from_secs(40), no_ring);
        assert_eq!(effective(&c, &a), 100);
        // b joins and takes about its ramped share of the flows.
        for s in (42u32..=72).step_by(2) {
            let ramp = (f64::from(s - 40) / 30.0).min(1.0);
            let b = member(2, Some((100.0 * ramp).round() as u64));
            c.step(&p, &[a, b], t + Duration::from_secs(u64::from(s)), no_ring);
            assert!(
                effective(&c, &a) >= 90,
                "at {s} s: a at {}",
                effective(&c, &a)
            );
        }
    }

    /// Relative factors are scaled so the largest is 1: a backend cut while
    /// it was busy, left alone (its peer gone), is back at its full weight.
    #[test]
    fn a_lone_backend_is_not_left_at_a_low_factor() {
        let p = params();
        let t = Instant::now();
        let mut c = Controller::default();
        let (a, b) = (member(1, Some(90)), member(2, Some(10)));
        for i in 0..5 {
            c.step(&p, &[a, b], t + Duration::from_secs(2 * i), no_ring);
        }
        assert!(
            effective(&c, &a) < 50,
            "a cut while busy: {}",
            effective(&c, &a)
        );
        for i in 5..15 {
            c.step(
                &p,
                &[member(1, Some(40))],
                t + Duration::from_secs(2 * i),
                no_ring,
            );
        }
        assert_eq!(effective(&c, &a), 100);
    }

    #[test]
    fn stale_reports_hold_the_weight_then_fall_back_to_the_configured_one() {
        let p = Balancing {
            stale_after: 3,
            ..absolute()
        };
        let t = Instant::now();
        let (a, b) = (member(1, Some(100)), member(2, Some(0)));
        let mut c = Controller::default();
        c.step(&p, &[a, b], t, no_ring);
        assert_eq!(effective(&c, &a), 10);
        let (a, b) = (member(1, None), member(2, None));
        let mut seen = Vec::new();
        for i in 1..=3 {
            c.step(&p, &[a, b], t + Duration::from_secs(2 * i), no_ring);
            seen.push(effective(&c, &a));
        }
        assert_eq!(seen, vec![10, 10, 100]);
        assert!(
            c.weight(&a.addr)
                .unwrap()
                .why
                .contains("back to the configured")
        );
    }

    #[test]
    fn changes_within_the_dead_band_rebuild_nothing() {
        let p = Balancing {
            flows_per_weight: Some(1000),
            ..params()
        };
        let t = Instant::now();
        let mut c = Controller::default();
        let b = member(2, Some(0));
        c.step(&p, &[member(1, Some(950)), b], t, no_ring);
        // u 0.95: (1 - 0.95) / 0.2 = 0.25.
        assert_eq!(effective(&c, &member(1, None)), 25);
        // u 0.949: 25.5, within the band.
        let again = c.step(
            &p,
            &[member(1, Some(949)), b],
            t + Duration::from_secs(2),
            no_ring,
        );
        assert_eq!(again, None);
        // u 0.94: 30, beyond it.
        let change = c.step(
            &p,
            &[member(1, Some(940)), b],
            t + Duration::from_secs(4),
            no_ring,
        );
        assert_eq!(change.map(|c| c.moved.len()), Some(1));
    }

    fn reporting(last: u8, u: Option<f64>, limit: Option<f64>) -> Member {
        Member {
            load: u.map(Load::Utilization),
            limit,
            ..member(last, None)
        }
    }

    fn limited(above: f64) -> Balancing {
        Balancing {
            hard_limit: Some(crate::config::HardLimit {
                metric: "vllm:num_requests_waiting".into(),
                above,
                resume_below: None,
            }),
            ..params()
        }
    }

    #[test]
    fn a_reported_utilization_is_taken_as_it_is() {
        let p = params();
        let members = [
            reporting(1, Some(0.9), None),
            reporting(2, Some(0.3), None),
            reporting(3, None, None),
        ];
        assert_eq!(
            utilizations(&p, &members, &[1.0, 1.0, 1.0]),
            vec![Some(0.9), Some(0.3), None]
        );
        let mut c = Controller::default();
        c.step(&p, &members[..2], Instant::now(), no_ring);
        // (1 - 0.9) / (1 - 0.8) = 0.5 of the weight; 0.3 is under the target.
        assert_eq!(effective(&c, &members[0]), 50);
        assert_eq!(effective(&c, &members[1]), 100);
    }

    #[test]
    fn over_the_hard_limit_a_backend_leaves_the_ring_until_under_the_resume_level() {
        let p = limited(10.0);
        let t = Instant::now();
        let mut c = Controller::default();
        let b = reporting(2, Some(0.5), Some(0.0));
        let mut seen = Vec::new();
        // At the limit is not over it; 8 is not under the resume level
        // (80% of 10); 7.9 is.
        for (i, waiting) in [10.0, 11.0, 9.0, 8.0, 7.9].into_iter().enumerate() {
            let a = reporting(1, Some(0.5), Some(waiting));
            c.step(&p, &[a, b], t + Duration::from_secs(2 * i as u64), no_ring);
            let w = c.weight(&a.addr).unwrap();
            seen.push((w.effective, w.over_limit));
            if w.over_limit {
                assert!(
                    w.why.starts_with("hard limit: vllm:num_requests_waiting"),
                    "{}",
                    w.why
                );
            }
        }
        // Back from 0 by the step bound (max_step 1 here: all at once).
        assert_eq!(
            seen,
            [(100, false), (0, true), (0, true), (0, true), (100, false)]
        );
        let events = c.take_limit_events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].entered, "{events:?}");
        assert!(events[0].text.contains("11 above the hard limit 10"));
        assert!(!events[1].entered, "{events:?}");
        assert!(events[1].text.contains("7.9 under 8"), "{events:?}");
        assert!(c.take_limit_events().is_empty());
    }

    #[test]
    fn a_change_into_the_hard_limit_is_not_held_back_by_the_budget() {
        let p = Balancing {
            ring_budget: 0.0001,
            ..limited(10.0)
        };
        let t = Instant::now();
        let mut c = Controller::default();
        let b = reporting(2, Some(0.5), Some(0.0));
        c.step(&p, &[reporting(1, Some(0.5), Some(0.0)), b], t, no_ring);
        let a = reporting(1, Some(0.5), Some(50.0));
        let ring = |old: &[(u32, u32)], new: &[(u32, u32)]| if old == new { 0.0 } else { 0.5 };
        let change = c.step(&p, &[a, b], t + Duration::from_secs(2), ring);
        assert_eq!(change.map(|c| c.moved), Some(vec![(a.addr, 100, 0)]));
    }

    #[test]
    fn with_every_backend_over_the_hard_limit_the_limit_is_waived() {
        let p = limited(10.0);
        let t = Instant::now();
        let mut c = Controller::default();
        let (a, b) = (
            reporting(1, Some(0.5), Some(20.0)),
            reporting(2, Some(0.5), Some(0.0)),
        );
        c.step(&p, &[a, b], t, no_ring);
        assert_eq!((effective(&c, &a), effective(&c, &b)), (0, 100));
        assert!(!c.limit_waived());
        let b = reporting(2, Some(0.5), Some(30.0));
        c.step(&p, &[a, b], t + Duration::from_secs(2), no_ring);
        assert!(c.limit_waived());
        assert!(c.weight(&a.addr).unwrap().over_limit);
        assert!(effective(&c, &a) > 0 && effective(&c, &b) > 0);
        assert!(
            c.weight(&b.addr).unwrap().why.contains("limit waived"),
            "{}",
            c.weight(&b.addr).unwrap().why
        );
        let events = c.take_limit_events();
        assert!(
            events
                .iter()
                .any(|e| e.entered && e.text.contains("limit waived")),
            "{events:?}"
        );
        // One comes under again: the limit applies to the other.
        let b = reporting(2, Some(0.5), Some(1.0));
        c.step(&p, &[a, b], t + Duration::from_secs(4), no_ring);
        assert!(!c.limit_waived());
        assert_eq!((effective(&c, &a), effective(&c, &b)), (0, 100));
    }

    #[test]
    fn reports_stopping_lift_the_hard_limit_and_restore_the_configured_weight() {
        let p = Balancing {
            stale_after: 2,
            ..limited(10.0)
        };
        let t = Instant::now();
        let mut c = Controller::default();
        let b = reporting(2, Some(0.2), Some(0.0));
        let a = reporting(1, Some(0.99), Some(20.0));
        c.step(&p, &[a, b], t, no_ring);
        assert_eq!(effective(&c, &a), 0);
        let silent = reporting(1, None, None);
        let mut seen = Vec::new();
        for i in 1..=2 {
            c.step(&p, &[silent, b], t + Duration::from_secs(2 * i), no_ring);
            let w = c.weight(&a.addr).unwrap();
            seen.push((w.effective, w.over_limit));
        }
        // Held over the limit for one interval, then stale: configured.
        assert_eq!(seen, [(0, true), (100, false)]);
        let events = c.take_limit_events();
        assert!(
            events
                .iter()
                .any(|e| !e.entered && e.text.contains("no report for 2 intervals")),
            "{events:?}"
        );
    }

    #[test]
    fn due_once_per_interval() {
        let p = params();
        let t = Instant::now();
        let mut c = Controller::default();
        assert!(c.due(&p, t));
        c.step(&p, &[member(1, Some(0))], t, no_ring);
        assert!(!c.due(&p, t + Duration::from_secs(1)));
        assert!(c.due(&p, t + Duration::from_secs(2)));
    }
}
