//! Second chance, the control plane's part: at every rebuild of a VIP's
//! ring, remember which backend owned each slot that changed hands, for the
//! VIP's window (`vips[].second_chance_s`, by default `drain_timeout_s`), in
//! the map the data plane reads (`PREV_OWNERS`; lb-ebpf `second_chance.rs`
//! and `second_hop.rs` do the rest).
//!
//! Each slot has its own expiry. A rebuild at time `t` from the live ring
//! `L` to the new ring `N`, with window `w`:
//!
//! - a slot that changes hands (`L[s] != N[s]`, `L[s]` a backend) gets
//!   `L[s]` as its previous owner, until `t + w`;
//! - a slot that keeps its owner keeps the previous owner it had, with the
//!   expiry it had (never extended: frequent rebuilds that leave a slot
//!   alone do not keep it "recent"), and none once that passed;
//! - a previous owner no longer configured for the VIP is dropped (ids
//!   are recycled), here and whenever backends are removed;
//! - no expiry lies past `t + w`: a window made shorter (or 0) cuts the
//!   ones set before, at the rebuild or, when only the window changed, at
//!   once (`cap`).
//!
//! One hop only: a slot that moved twice within its window remembers its
//! latest previous owner alone; connections older than that move lose
//! their second chance.
//!
//! The previous owners are a function of the ring history alone, so
//! load-balancer nodes that saw the same rebuilds, with the same windows,
//! hold the same ones (by address: ids are each node's own), with no state
//! shared between nodes. A node that missed rebuilds (it was down, or its
//! pins were made anew) has none for the moves it did not see.

use std::{collections::BTreeMap, time::Duration};

use lb_common::maps::{Backend, NO_BACKEND, PrevOwner, coarse_seconds};

use crate::maps::{Maps, MapsError};

/// The expiry (`coarse_seconds`) of a window of `window` opened at
/// `now_s`: never shorter than asked (the clock reads whole seconds). A
/// zero window has expired already.
pub fn until_s(now_s: u32, window: Duration) -> u32 {
    if window.is_zero() {
        return now_s;
    }
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    now_s.saturating_add(u32::try_from(secs + 1).unwrap_or(u32::MAX))
}

/// The previous owners after a rebuild from `live` to `new` at `now_s`,
/// where `before` holds what the slots had and `until_s` is the expiry a
/// slot that moves now gets; `serves(id)` says whether backend `id` is
/// still one of the VIP's.
pub fn previous_owners(
    live: &[u32],
    new: &[u32],
    before: &[PrevOwner],
    now_s: u32,
    until_s: u32,
    serves: impl Fn(u32) -> bool,
) -> Vec<PrevOwner> {
    live.iter()
        .zip(new)
        .zip(before)
        .map(|((&was, &now), &had)| {
            let prev = if was != now && was != NO_BACKEND {
                PrevOwner {
                    owner: was,
                    until_s,
                }
            } else {
                PrevOwner {
                    until_s: had.until_s.min(until_s),
                    ..had
                }
            };
            if prev.live_at(now_s) && prev.owner != now && serves(prev.owner) {
                prev
            } else {
                PrevOwner::NONE
            }
        })
        .collect()
}

/// `owners` with no expiry past `until_s`, and none at all for the ones
/// expired at `now_s`.
pub fn capped(owners: &[PrevOwner], now_s: u32, until_s: u32) -> Vec<PrevOwner> {
    owners
        .iter()
        .map(|&p| {
            let p = PrevOwner {
                until_s: p.until_s.min(until_s),
                ..p
            };
            if p.live_at(now_s) { p } else { PrevOwner::NONE }
        })
        .collect()
}

/// `owners` without the backends `serves` no longer accepts.
pub fn without_gone(owners: &[PrevOwner], serves: impl Fn(u32) -> bool) -> Vec<PrevOwner> {
    owners
        .iter()
        .map(|&p| {
            if p.owner == NO_BACKEND || serves(p.owner) {
                p
            } else {
                PrevOwner::NONE
            }
        })
        .collect()
}

/// Whether backend `id` of `backends` (an image's) serves VIP `vip_id`.
pub fn serves(backends: &BTreeMap<u32, Backend>, vip_id: u32, id: u32) -> bool {
    backends.get(&id).is_some_and(|b| b.vip_id == vip_id)
}

/// Write `owners` for VIP `vip_id` if they differ from `before`.
fn write_changed(
    maps: &mut Maps,
    vip_id: u32,
    before: &[PrevOwner],
    owners: &[PrevOwner],
) -> Result<(), MapsError> {
    if owners != before {
        maps.set_prev_owners(vip_id, owners)?;
    }
    Ok(())
}

/// Record the previous owners of VIP `vip_id`'s slots as its live ring
/// `live` is about to be replaced by `new` at `now_ns` (CLOCK_MONOTONIC),
/// for `window` (zero: no second hops for this VIP from now on). Written
/// before the new ring goes live, so that it never serves without them.
/// True when slots moved and got a previous owner.
pub fn record(
    maps: &mut Maps,
    vip_id: u32,
    live: &[u32],
    new: &[u32],
    window: Duration,
    backends: &BTreeMap<u32, Backend>,
    now_ns: u64,
) -> Result<bool, MapsError> {
    let now_s = coarse_seconds(now_ns);
    let before = maps.prev_owners(vip_id)?;
    let owners = previous_owners(live, new, &before, now_s, until_s(now_s, window), |id| {
        serves(backends, vip_id, id)
    });
    let moved = live
        .iter()
        .zip(new)
        .zip(&owners)
        .any(|((l, n), p)| l != n && p.owner == *l && p.live_at(now_s));
    write_changed(maps, vip_id, &before, &owners)?;
    Ok(moved)
}

/// VIP `vip_id`'s window is now `window`: no slot's expiry lies past
/// `now_ns` plus it (zero: every previous owner goes at once).
pub fn cap(maps: &mut Maps, vip_id: u32, window: Duration, now_ns: u64) -> Result<(), MapsError> {
    let now_s = coarse_seconds(now_ns);
    let before = maps.prev_owners(vip_id)?;
    let owners = capped(&before, now_s, until_s(now_s, window));
    write_changed(maps, vip_id, &before, &owners)
}

/// Clear VIP id `vip_id`'s previous owners, for a new VIP that takes the
/// id (a removed VIP's, maybe).
pub fn forget(maps: &mut Maps, vip_id: u32) -> Result<(), MapsError> {
    let before = maps.prev_owners(vip_id)?;
    let owners = vec![PrevOwner::NONE; before.len()];
    if before.iter().any(|p| p.owner != NO_BACKEND) {
        maps.set_prev_owners(vip_id, &owners)?;
    }
    Ok(())
}

/// Drop the backends no longer in `backends` from the previous owners of
/// every VIP in `vip_ids`: written before those backends are cleared, so
/// that no recycled id inherits their flows.
pub fn forget_removed(
    maps: &mut Maps,
    vip_ids: impl Iterator<Item = u32>,
    backends: &BTreeMap<u32, Backend>,
) -> Result<(), MapsError> {
    for vip_id in vip_ids {
        let before = maps.prev_owners(vip_id)?;
        let kept = without_gone(&before, |id| serves(backends, vip_id, id));
        write_changed(maps, vip_id, &before, &kept)?;
    }
    Ok(())
}

/// The data plane's clock, CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`
/// reads it too), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = NO_BACKEND;
    const NONE: PrevOwner = PrevOwner::NONE;

    fn p(owner: u32, until_s: u32) -> PrevOwner {
        PrevOwner { owner, until_s }
    }

    fn none(n: usize) -> Vec<PrevOwner> {
        vec![NONE; n]
    }

    #[test]
    fn a_moved_slot_remembers_its_owner_and_a_kept_one_keeps_what_it_had() {
        let live = [1, 1, 2, 2, N];
        let new = [1, 3, 2, 3, 3];
        // At 100 s with a 60 s window: only the moved slots (1 and 3; slot
        // 4 was empty), until 160.
        let owners = previous_owners(&live, &new, &none(5), 100, 160, |_| true);
        assert_eq!(owners, [NONE, p(1, 160), NONE, p(2, 160), NONE]);
        // At 130 s another rebuild moves slot 0 only: 1 and 3 keep theirs,
        // with the expiry they had, not the new one.
        let newer = [4, 3, 2, 3, 3];
        let owners = previous_owners(&new, &newer, &owners, 130, 190, |_| true);
        assert_eq!(owners, [p(1, 190), p(1, 160), NONE, p(2, 160), NONE]);
        // At 170 s a rebuild that moves nothing: 1 and 3 have expired.
        let owners = previous_owners(&newer, &newer, &owners, 170, 230, |_| true);
        assert_eq!(owners, [p(1, 190), NONE, NONE, NONE, NONE]);
    }

    /// The review's case: rebuilds every few seconds (health flaps) must
    /// not keep a slot that moved once "recent" for ever.
    #[test]
    fn frequent_rebuilds_that_leave_a_slot_alone_do_not_extend_its_expiry() {
        let ring_a = [1, 2];
        let ring_b = [1, 3];
        let mut owners = previous_owners(&[2, 2], &ring_a, &none(2), 0, 60, |_| true);
        assert_eq!(owners, [p(2, 60), NONE]);
        // Slot 1 flaps between 2 and 3 every 10 s; slot 0 never moves.
        let mut live = ring_a;
        for t in (10..200).step_by(10) {
            let next = if t % 20 == 10 { ring_b } else { ring_a };
            owners = previous_owners(&live, &next, &owners, t, t + 60, |_| true);
            live = next;
        }
        assert_eq!(owners[0], NONE);
        // Slot 0 moves once at 200 s; rebuilds go on without moving it.
        let moved = [4, live[1]];
        owners = previous_owners(&live, &moved, &owners, 200, 260, |_| true);
        live = moved;
        for t in (210..400).step_by(10) {
            owners = previous_owners(&live, &live, &owners, t, t + 60, |_| true);
            let want = if t < 260 { p(1, 260) } else { NONE };
            assert_eq!(owners[0], want, "at {t} s");
        }
    }

    #[test]
    fn a_shorter_window_cuts_the_expiries_set_before() {
        let owners = [p(1, 160), p(2, 120), NONE];
        // At 110 s the window becomes 20 s: nothing past 131.
        assert_eq!(
            capped(&owners, 110, until_s(110, Duration::from_secs(20))),
            [p(1, 131), p(2, 120), NONE]
        );
        // Window 0: all gone at once.
        assert_eq!(capped(&owners, 110, until_s(110, Duration::ZERO)), none(3));
        // A rebuild with the shorter window cuts the kept ones too.
        let kept = previous_owners(&[3, 3, 3], &[3, 3, 3], &owners, 110, 131, |_| true);
        assert_eq!(kept, [p(1, 131), p(2, 120), NONE]);
    }

    #[test]
    fn a_window_is_never_shorter_than_asked() {
        assert_eq!(until_s(100, Duration::from_secs(60)), 161);
        assert_eq!(until_s(100, Duration::from_millis(1500)), 103);
        assert_eq!(until_s(100, Duration::ZERO), 100);
        assert_eq!(until_s(u32::MAX - 1, Duration::from_secs(60)), u32::MAX);
    }

    #[test]
    fn a_slot_moved_back_or_a_backend_gone_has_no_previous_owner() {
        // 1 -> 3 -> 1: the previous owner of slot 0 is 3 now.
        let owners = previous_owners(&[3, 2], &[1, 2], &[p(1, 50), NONE], 10, 70, |_| true);
        assert_eq!(owners, [p(3, 70), NONE]);
        // Backend 1 removed: no hop to it, whatever the history.
        let owners = previous_owners(&[1, 2], &[3, 3], &none(2), 10, 70, |id| id != 1);
        assert_eq!(owners, [NONE, p(2, 70)]);
        assert_eq!(
            without_gone(&[p(1, 9), p(2, 9), NONE], |id| id != 2),
            [p(1, 9), NONE, NONE]
        );
    }
}
