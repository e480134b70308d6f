//! Second chance, the control plane's part: at every rebuild of a VIP's
//! ring, remember which backend owned each slot that changed hands, for the
//! VIP's window (`vips[].second_chance_s`, by default `drain_timeout_s`), in
//! the maps the data plane reads (`PREV_OWNERS`, `PREV_OWNERS_UNTIL`; lb-ebpf
//! `second_chance.rs` and `second_hop.rs` do the rest).
//!
//! The previous owners are a function of the ring history alone, so every
//! load-balancer node that sees the same rebuilds holds the same ones, by
//! address (ids are each node's own), with no state shared between nodes.
//! A rebuild at time `t` from the live ring `L` to the new ring `N`:
//!
//! - a slot that changes hands (`L[s] != N[s]`, `L[s]` a backend) gets
//!   `L[s]` as its previous owner;
//! - a slot that keeps its owner keeps the previous owner it had while the
//!   window is open (`t` before `PREV_OWNERS_UNTIL`), and has none after;
//! - a previous owner no longer configured for the VIP is dropped (ids
//!   are recycled), here and whenever backends are removed;
//! - the window then runs to `t` plus the VIP's window.
//!
//! So a slot that moved at an earlier rebuild keeps its previous owner
//! until the window of the latest one closes: never shorter than asked.
//! A rebuild that moves no slot (a restart's, say) changes nothing.

use std::{collections::BTreeMap, time::Duration};

use lb_common::maps::{Backend, NO_BACKEND};

use crate::maps::{Maps, MapsError};

/// The previous owners after a rebuild from `live` to `new`, where
/// `before` holds the previous owners of a window still open (`None`: it
/// closed, or never opened) and `serves(id)` says whether backend `id` is
/// still one of the VIP's. `None` when no slot changes hands: nothing to
/// write.
pub fn previous_owners(
    live: &[u32],
    new: &[u32],
    before: Option<&[u32]>,
    serves: impl Fn(u32) -> bool,
) -> Option<Vec<u32>> {
    if live
        .iter()
        .zip(new)
        .all(|(l, n)| l == n || *l == NO_BACKEND)
    {
        return None;
    }
    let owners = live
        .iter()
        .zip(new)
        .enumerate()
        .map(|(slot, (&was, &now))| {
            let prev = if was != now && was != NO_BACKEND {
                was
            } else {
                before.map_or(NO_BACKEND, |b| b[slot])
            };
            if prev != NO_BACKEND && prev != now && serves(prev) {
                prev
            } else {
                NO_BACKEND
            }
        })
        .collect();
    Some(owners)
}

/// `owners` without the backends `serves` no longer accepts; `None` when
/// none was dropped.
pub fn without_gone(owners: &[u32], serves: impl Fn(u32) -> bool) -> Option<Vec<u32>> {
    if owners.iter().all(|&id| id == NO_BACKEND || serves(id)) {
        return None;
    }
    Some(
        owners
            .iter()
            .map(|&id| if serves(id) { id } else { NO_BACKEND })
            .collect(),
    )
}

/// Whether backend `id` of `backends` (an image's) serves VIP `vip_id`.
pub fn serves(backends: &BTreeMap<u32, Backend>, vip_id: u32, id: u32) -> bool {
    backends.get(&id).is_some_and(|b| b.vip_id == vip_id)
}

/// Record the previous owners of VIP `vip_id`'s slots as its live ring
/// `live` is about to be replaced by `new` at `now` (CLOCK_MONOTONIC ns),
/// for `window` (zero: no second hops for this VIP from now on). Written
/// before the new ring goes live, so that it never serves without them.
/// True when the VIP's previous owners were written.
pub fn record(
    maps: &mut Maps,
    vip_id: u32,
    live: &[u32],
    new: &[u32],
    window: Duration,
    backends: &BTreeMap<u32, Backend>,
    now: u64,
) -> Result<bool, MapsError> {
    let until = maps.prev_owners_until(vip_id)?;
    if window.is_zero() {
        if until != 0 {
            maps.set_prev_owners_until(vip_id, 0)?;
        }
        return Ok(false);
    }
    let before = if until > now {
        Some(maps.prev_owners(vip_id)?)
    } else {
        None
    };
    let Some(owners) = previous_owners(live, new, before.as_deref(), |id| {
        serves(backends, vip_id, id)
    }) else {
        return Ok(false);
    };
    maps.set_prev_owners(vip_id, &owners)?;
    maps.set_prev_owners_until(vip_id, now.saturating_add(window.as_nanos() as u64))?;
    Ok(true)
}

/// Drop the backends no longer in `backends` from the previous owners of
/// every VIP in `vip_ids` whose window is open: written before those
/// backends are cleared, so that no recycled id inherits their flows.
pub fn forget_removed(
    maps: &mut Maps,
    vip_ids: impl Iterator<Item = u32>,
    backends: &BTreeMap<u32, Backend>,
    now: u64,
) -> Result<(), MapsError> {
    for vip_id in vip_ids {
        if maps.prev_owners_until(vip_id)? <= now {
            continue;
        }
        let owners = maps.prev_owners(vip_id)?;
        if let Some(kept) = without_gone(&owners, |id| serves(backends, vip_id, id)) {
            maps.set_prev_owners(vip_id, &kept)?;
        }
    }
    Ok(())
}

/// How many slots of VIP `vip_id` have a previous owner in effect at `now`,
/// and for how much longer.
pub fn in_effect(
    maps: &Maps,
    vip_id: u32,
    now: u64,
) -> Result<Option<(usize, Duration)>, MapsError> {
    let until = maps.prev_owners_until(vip_id)?;
    if until <= now {
        return Ok(None);
    }
    let slots = maps
        .prev_owners(vip_id)?
        .iter()
        .filter(|id| **id != NO_BACKEND)
        .count();
    Ok(Some((slots, Duration::from_nanos(until - now))))
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

    #[test]
    fn a_moved_slot_remembers_its_owner_and_a_kept_one_keeps_what_it_had() {
        let live = [1, 1, 2, 2, N];
        let new = [1, 3, 2, 3, 3];
        // A fresh window: only the moved slots (1 and 3; slot 4 was empty).
        let owners = previous_owners(&live, &new, None, |_| true).unwrap();
        assert_eq!(owners, [N, 1, N, 2, N]);
        // Within it, another rebuild moves slot 0 only: 1 and 3 keep theirs.
        let newer = [4, 3, 2, 3, 3];
        let owners = previous_owners(&new, &newer, Some(&owners), |_| true).unwrap();
        assert_eq!(owners, [1, 1, N, 2, N]);
        // After the window closed, the same rebuild remembers slot 0 only.
        assert_eq!(
            previous_owners(&new, &newer, None, |_| true).unwrap(),
            [1, N, N, N, N]
        );
    }

    #[test]
    fn nothing_moved_nothing_written() {
        assert_eq!(
            previous_owners(&[1, 2, N], &[1, 2, 3], None, |_| true),
            None
        );
    }

    #[test]
    fn a_slot_moved_back_or_a_backend_gone_has_no_previous_owner() {
        // 1 -> 3 -> 1: the previous owner of slot 0 is 3 now.
        let owners = previous_owners(&[3, 2], &[1, 2], Some(&[1, N]), |_| true).unwrap();
        assert_eq!(owners, [3, N]);
        // Backend 1 removed: no hop to it, whatever the history.
        let owners = previous_owners(&[1, 2], &[3, 3], None, |id| id != 1).unwrap();
        assert_eq!(owners, [N, 2]);
        assert_eq!(without_gone(&[1, 2, N], |id| id != 2), Some(vec![1, N, N]));
        assert_eq!(without_gone(&[1, N], |_| true), None);
    }
}
