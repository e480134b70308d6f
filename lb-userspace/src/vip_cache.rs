//! The data plane's VIP cache (`VIP_CACHE`): `VIPS` as a direct-mapped
//! array the program reads in place of the hash lookup
//! (`lb_common::maps::CachedVip`).
//!
//! The program trusts the cache's answers, "no VIP" included, so `Maps`
//! keeps it exact: a VIP is written to `VIPS` before its slot shows it,
//! and its slot stops showing it before it leaves `VIPS`. lbd, the only
//! writer, rebuilds the cache from `VIPS` before it sets
//! `CFG_LOOKUP_CACHES`.
//!
//! A slot changes through `steps`, map updates that each alter only what a
//! packet reading the slot meanwhile cannot see half-done: the state alone
//! (one byte), or key and VIP entry while the state says they are not
//! read. A slot showing a VIP whose entry must change (another VIP, or the
//! same one with a new ring or flags) is first marked shared, which sends
//! packets to `VIPS`, where the change is already whole.

use lb_common::maps::{
    CachedVip, VIP_CACHE_EMPTY, VIP_CACHE_ONE, VIP_CACHE_SHARED, VIP_CACHE_SLOTS, VipKey, VipMeta,
    addr_words, vip_cache_slot,
};

/// The slot VIP `key` falls in.
pub fn slot(key: &VipKey) -> u32 {
    vip_cache_slot(&addr_words(&key.addr), key.port, key.proto, key.family)
}

/// What a slot holds for the VIPs that fall in it: nothing, the one, or
/// "shared".
pub fn content<'a>(mut here: impl Iterator<Item = (&'a VipKey, &'a VipMeta)>) -> CachedVip {
    match (here.next(), here.next()) {
        (None, _) => CachedVip::default(),
        (Some((key, meta)), None) => CachedVip::holding(key, meta),
        (Some(_), Some(_)) => CachedVip {
            state: VIP_CACHE_SHARED,
            ..CachedVip::default()
        },
    }
}

/// The cache that answers for exactly `vips`, a value per slot.
pub fn exact(vips: &[(VipKey, VipMeta)]) -> Vec<CachedVip> {
    let mut by_slot: Vec<Vec<(&VipKey, &VipMeta)>> = vec![Vec::new(); VIP_CACHE_SLOTS as usize];
    for (key, meta) in vips {
        by_slot[slot(key) as usize].push((key, meta));
    }
    by_slot
        .into_iter()
        .map(|here| content(here.into_iter()))
        .collect()
}

/// The slot's content once VIP `key` with `meta` is written, from `held`.
pub fn with_vip(held: &CachedVip, key: &VipKey, meta: &VipMeta) -> CachedVip {
    match held.state {
        VIP_CACHE_EMPTY => CachedVip::holding(key, meta),
        VIP_CACHE_ONE if held.is_for(key) => CachedVip::holding(key, meta),
        _ => CachedVip {
            state: VIP_CACHE_SHARED,
            ..*held
        },
    }
}

/// Whether two slots answer every packet alike: the same state, and for a
/// slot holding a VIP, the same VIP.
fn answers_alike(a: &CachedVip, b: &CachedVip) -> bool {
    a.state == b.state && (a.state != VIP_CACHE_ONE || a == b)
}

/// The updates that take a slot from `held` to `want`, in order: a packet
/// reading the slot between (or during) them gets `held`'s answer or
/// `want`'s, and `VIPS` answers for a shared slot. None if they already
/// answer alike.
pub fn steps(held: &CachedVip, want: &CachedVip) -> Vec<CachedVip> {
    if answers_alike(held, want) {
        return Vec::new();
    }
    let mut steps = Vec::new();
    let mut now = *held;
    // Stop showing the entry held before anything else of the slot
    // changes: shared (`VIPS` answers, exactly) unless the slot empties.
    if now.state == VIP_CACHE_ONE {
        now.state = if want.state == VIP_CACHE_EMPTY {
            VIP_CACHE_EMPTY
        } else {
            VIP_CACHE_SHARED
        };
        steps.push(now);
    }
    // Key and VIP entry, while the state keeps them from being read; then
    // the state that shows them.
    if want.state == VIP_CACHE_ONE {
        steps.push(CachedVip {
            state: now.state,
            ..*want
        });
        steps.push(*want);
    } else if now.state != want.state {
        steps.push(CachedVip {
            state: want.state,
            ..now
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip_filter::tests::key;
    use lb_common::flow::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

    fn meta(vip_id: u32, active_ring: u32) -> VipMeta {
        VipMeta {
            vip_id,
            flags: 0,
            active_ring,
            _pad: 0,
        }
    }

    /// Two keys that fall in one slot, found by search.
    fn sharing_pair() -> (VipKey, VipKey) {
        let first = key(&[203, 0, 113, 1], FAMILY_V4, 443, PROTO_TCP);
        let port = (1..=u16::MAX)
            .find(|&p| {
                slot(&key(&[203, 0, 113, 1], FAMILY_V4, p, PROTO_TCP)) == slot(&first) && p != 443
            })
            .expect("4,096 slots: some port shares");
        (first, key(&[203, 0, 113, 1], FAMILY_V4, port, PROTO_TCP))
    }

    /// What a packet for `key` is told by `slot`: `Some(entry)`, `None`
    /// for no VIP, or `Err(())` for "ask VIPS".
    fn answer(slot: &CachedVip, key: &VipKey) -> Result<Option<VipMeta>, ()> {
        match slot.state {
            VIP_CACHE_EMPTY => Ok(None),
            VIP_CACHE_ONE if slot.is_for(key) => Ok(Some(slot.meta)),
            VIP_CACHE_ONE => Ok(None),
            _ => Err(()),
        }
    }

    #[test]
    fn vips_of_one_address_and_of_neighbouring_addresses_spread_over_slots() {
        let ports: std::collections::BTreeSet<u32> = [80, 443, 53, 8080, 8443, 22, 25, 3000]
            .iter()
            .map(|&p| slot(&key(&[198, 51, 100, 10], FAMILY_V4, p, PROTO_TCP)))
            .collect();
        assert_eq!(ports.len(), 8);
        let neighbours: std::collections::BTreeSet<u32> = (0..=255u8)
            .map(|i| slot(&key(&[198, 51, 100, i], FAMILY_V4, 443, PROTO_TCP)))
            .collect();
        // 256 keys in 4,096 slots: about 8 pairs expected to share.
        assert!(neighbours.len() > 230, "{} slots", neighbours.len());
        let tcp = key(&[198, 51, 100, 10], FAMILY_V4, 53, PROTO_TCP);
        let udp = key(&[198, 51, 100, 10], FAMILY_V4, 53, PROTO_UDP);
        assert_ne!(slot(&tcp), slot(&udp));
        // The IPv6 words are rotated apart: words trading places differ.
        let a = key(
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            FAMILY_V6,
            443,
            PROTO_TCP,
        );
        let b = key(
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
            FAMILY_V6,
            443,
            PROTO_TCP,
        );
        assert_ne!(slot(&a), slot(&b));
    }

    #[test]
    fn the_exact_cache_holds_each_vip_alone_in_its_slot_or_marks_the_slot_shared() {
        let (one, other) = sharing_pair();
        let alone = key(&[198, 51, 100, 10], FAMILY_V4, 80, PROTO_TCP);
        let vips = [(one, meta(1, 0)), (other, meta(2, 1)), (alone, meta(3, 1))];
        let cache = exact(&vips);
        assert_eq!(cache.len(), VIP_CACHE_SLOTS as usize);
        assert_eq!(
            cache[slot(&alone) as usize],
            CachedVip::holding(&alone, &meta(3, 1))
        );
        assert_eq!(cache[slot(&one) as usize].state, VIP_CACHE_SHARED);
        let used = cache.iter().filter(|c| c.state != VIP_CACHE_EMPTY).count();
        assert_eq!(used, 2);
    }

    #[test]
    fn adding_to_a_slot_holding_another_vip_makes_it_shared_and_a_new_ring_is_shown_after_a_shared_moment()
     {
        let (one, other) = sharing_pair();
        let held = CachedVip::holding(&one, &meta(1, 0));
        assert_eq!(with_vip(&held, &other, &meta(2, 0)).state, VIP_CACHE_SHARED);
        let flipped = with_vip(&held, &one, &meta(1, 1));
        assert_eq!(flipped, CachedVip::holding(&one, &meta(1, 1)));
        let shared = CachedVip {
            state: VIP_CACHE_SHARED,
            ..held
        };
        let written = CachedVip {
            state: VIP_CACHE_SHARED,
            ..flipped
        };
        assert_eq!(steps(&held, &flipped), vec![shared, written, flipped]);
        let two = with_vip(&held, &other, &meta(2, 0));
        assert_eq!(with_vip(&two, &one, &meta(1, 1)).state, VIP_CACHE_SHARED);
    }

    /// Every step of every change answers each key as the slot before it
    /// or the slot after it does, or sends it to `VIPS` (which `Maps`
    /// changes first on the way in and last on the way out, so it holds
    /// one or the other): a packet reading mid-change is never told of a
    /// VIP entry that is in neither, or that a VIP `VIPS` has is none. And
    /// every step alters only the state, or only what the state keeps from
    /// being read, so that a copy seen half-done answers as one of the two.
    #[test]
    fn each_step_answers_as_the_slot_before_or_after_or_asks_vips() {
        let (a, b) = sharing_pair();
        let stateless = VipMeta {
            flags: lb_common::maps::VIP_F_STATELESS,
            ..meta(1, 1)
        };
        let contents = [
            CachedVip::default(),
            CachedVip::holding(&a, &meta(1, 0)),
            CachedVip::holding(&a, &meta(1, 1)),
            CachedVip::holding(&a, &stateless),
            CachedVip::holding(&a, &meta(7, 0)),
            CachedVip::holding(&b, &meta(2, 0)),
            CachedVip {
                state: VIP_CACHE_SHARED,
                ..CachedVip::default()
            },
        ];
        for held in &contents {
            for want in &contents {
                let steps = steps(held, want);
                let last = steps.last().unwrap_or(held);
                for k in [&a, &b] {
                    assert_eq!(
                        answer(last, k),
                        answer(want, k),
                        "{held:?} -> {want:?} ends at {last:?}"
                    );
                }
                let mut before = *held;
                for step in &steps {
                    for k in [&a, &b] {
                        let seen = answer(step, k);
                        assert!(
                            seen == answer(held, k) || seen == answer(want, k) || seen == Err(()),
                            "{held:?} -> {want:?}: step {step:?} answers {seen:?} for {k:?}"
                        );
                    }
                    let state_only = CachedVip {
                        state: before.state,
                        ..*step
                    } == before;
                    let unread_only = step.state == before.state && before.state != VIP_CACHE_ONE;
                    assert!(
                        state_only || unread_only,
                        "{before:?} -> {step:?} changes what a packet reads along with the state"
                    );
                    before = *step;
                }
            }
        }
    }
}
