//! Weighted Maglev tables (Eisenbud et al., NSDI 2016).
//!
//! Each backend walks its own permutation of the M slots (from an offset and
//! a skip derived from its address) and claims the next free slot on its
//! turn. Weights set how often a backend gets a turn: on every round each
//! backend earns its weight in credit and takes a turn per `max_weight`
//! credit. Equal weights give the paper's round robin, where every backend
//! owns floor(M/N) or ceil(M/N) slots. The table depends only on the set of
//! (address, weight) pairs, not on the order they are given in.

use std::net::IpAddr;

use lb_common::maps::NO_BACKEND;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Id written into the ring (index into the backend map).
    pub id: u32,
    /// What the permutation is derived from: stable across restarts.
    pub addr: IpAddr,
    /// Relative share of the slots; 0 takes no slot (drained).
    pub weight: u32,
}

/// 64-bit FNV-1a followed by a murmur finaliser: stable, seedable, good
/// enough spread for permutation parameters.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Build a ring of `m` slots (`m` prime). Slots hold backend ids, or
/// `NO_BACKEND` everywhere when no backend has a weight.
pub fn build(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    let mut ring = vec![NO_BACKEND; m as usize];
    let mut members: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if members.is_empty() || m == 0 {
        return ring;
    }
    // Order by address so that the result does not depend on input order.
    members.sort_by_key(|b| (b.addr, b.id));
    let m64 = m as u64;
    let (mut offset, skip): (Vec<u64>, Vec<u64>) = members
        .iter()
        .map(|b| {
            let key = addr_bytes(&b.addr);
            let offset = hash(&key, 0x4d61_676c_6576_3031) % m64;
            let skip = if m > 1 {
                hash(&key, 0x536b_6970_3032_3033) % (m64 - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .unzip();
    let max_weight = members.iter().map(|b| b.weight as u64).max().unwrap_or(1);
    let mut credit = vec![0u64; members.len()];
    let mut filled = 0u32;
    while filled < m {
        for (i, b) in members.iter().enumerate() {
            credit[i] += b.weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            // Next slot of this backend's permutation that is still free.
            let mut slot = offset[i];
            while ring[slot as usize] != NO_BACKEND {
                slot = (slot + skip[i]) % m64;
            }
            ring[slot as usize] = b.id;
            offset[i] = (slot + skip[i]) % m64;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    ring
}

/// How many slots each backend id owns.
pub fn slot_counts(ring: &[u32]) -> std::collections::BTreeMap<u32, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for id in ring.iter().filter(|id| **id != NO_BACKEND) {
        *counts.entry(*id).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: i,
                addr: IpAddr::from([198, 51, 100, (i + 1) as u8]),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn equal_weights_share_slots_evenly() {
        let m = 65537;
        for n in [1, 2, 3, 7, 10, 100] {
            let counts = slot_counts(&build(&backends(n), m));
            assert_eq!(counts.len(), n as usize);
            let (lo, hi) = ((m / n) as usize, m.div_ceil(n) as usize);
            for (id, c) in counts {
                assert!(c == lo || c == hi, "n={n} backend {id} owns {c} slots");
            }
        }
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let mut b = backends(5);
        let a = build(&b, 251);
        b.reverse();
        assert_eq!(a, build(&b, 251));
    }

    #[test]
    fn weights_are_honoured_proportionally() {
        let m = 65537;
        let mut b = backends(3);
        for (i, w) in [1, 2, 3].into_iter().enumerate() {
            b[i].weight = w;
        }
        let counts = slot_counts(&build(&b, m));
        let total_weight = 6.0;
        for (i, w) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            let share = counts[&(i as u32)] as f64 / m as f64;
            let want = w / total_weight;
            assert!(
                (share - want).abs() < 0.005,
                "backend {i}: share {share:.4}, want {want:.4}"
            );
        }
    }

    /// Removing one of N backends must move its own slots, and few others.
    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let m = 65537;
        for n in [5u32, 10, 50, 100] {
            let all = backends(n);
            let before = build(&all, m);
            let removed = n / 2;
            let rest: Vec<MaglevBackend> =
                all.iter().copied().filter(|b| b.id != removed).collect();
            let after = build(&rest, m);
            let extra = before
                .iter()
                .zip(&after)
                .filter(|(old, new)| **old != removed && old != new)
                .count();
            let extra_share = extra as f64 / m as f64;
            // The NSDI paper reports a few percent at most; we hold 2% of M.
            println!(
                "n={n}: {extra} extra slots moved ({:.3}% of M)",
                extra_share * 100.0
            );
            assert!(
                extra_share < 0.02,
                "n={n}: {extra} slots ({extra_share:.4} of M) moved needlessly"
            );
        }
    }

    #[test]
    fn no_weight_means_no_backend() {
        assert!(build(&[], 13).iter().all(|id| *id == NO_BACKEND));
        let mut b = backends(2);
        b[0].weight = 0;
        assert!(build(&b, 13).iter().all(|id| *id == 1));
    }
}
