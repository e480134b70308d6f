//! Stable ids for VIPs and backends: the indexes of the data plane's
//! arrays, and what connection entries point at.
//!
//! An id must mean the same service or backend for as long as any
//! connection entry may hold it, across reloads and lbd restarts. So ids
//! are never renumbered; a freed id goes to the back of a queue and is
//! reused as late as possible; and after a restart the allocation is read
//! back from the pinned maps (see `Ids::adopt`).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::IpAddr,
};

use lb_common::maps::VipKey;

use crate::{addr::from_map, config::Protocol, control::VipRef};

/// A backend is one address serving one VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub vip: VipKeyOrd,
    pub addr: IpAddr,
}

/// `VipKey` with an ordering, for deterministic maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKeyOrd {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// As `VipRef` spells a VIP; a key no configuration makes (an unknown
/// family or protocol) shows its raw fields.
impl fmt::Display for VipKeyOrd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (
            from_map(&self.addr, self.family),
            Protocol::from_number(self.proto),
        ) {
            (Some(address), Some(protocol)) => VipRef {
                address,
                port: self.port,
                protocol,
            }
            .fmt(f),
            _ => write!(
                f,
                "{:?} family {} port {} proto {}",
                self.addr, self.family, self.port, self.proto
            ),
        }
    }
}

/// `198.51.100.101 of 198.51.100.10:443/tcp`.
impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.addr, self.vip)
    }
}

impl From<VipKey> for VipKeyOrd {
    fn from(k: VipKey) -> Self {
        Self {
            addr: k.addr,
            port: k.port,
            proto: k.proto,
            family: k.family,
        }
    }
}

impl From<VipKeyOrd> for VipKey {
    fn from(k: VipKeyOrd) -> Self {
        Self {
            addr: k.addr,
            port: k.port,
            proto: k.proto,
            family: k.family,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("no free VIP id: all {0} are in use (raise tables.max_vips)")]
    VipsExhausted(u32),
    #[error("no free backend id: all {0} are in use (raise tables.max_backends)")]
    BackendsExhausted(u32),
}

/// One id space: ids below `limit`, freed ids reused oldest first.
#[derive(Clone, Debug)]
struct Pool {
    limit: u32,
    /// Lowest id never handed out.
    next_fresh: u32,
    freed: VecDeque<u32>,
}

impl Pool {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            next_fresh: 0,
            freed: VecDeque::new(),
        }
    }

    /// Fresh ids first, so a freed id waits as long as possible.
    fn take(&mut self) -> Option<u32> {
        if self.next_fresh < self.limit {
            self.next_fresh += 1;
            return Some(self.next_fresh - 1);
        }
        self.freed.pop_front()
    }

    fn give_back(&mut self, id: u32) {
        self.freed.push_back(id);
    }

    /// Rebuild after adoption: `used` ids are taken, the gaps below the
    /// highest are free.
    fn with_used(limit: u32, used: impl Iterator<Item = u32>) -> Self {
        let mut used: Vec<u32> = used.collect();
        used.sort_unstable();
        let next_fresh = used.last().map_or(0, |m| m + 1);
        let freed = (0..next_fresh)
            .filter(|id| used.binary_search(id).is_err())
            .collect();
        Self {
            limit,
            next_fresh,
            freed,
        }
    }
}

/// The id allocation of every VIP and backend lbd knows.
#[derive(Clone, Debug)]
pub struct Ids {
    vips: BTreeMap<VipKeyOrd, u32>,
    backends: BTreeMap<BackendKey, u32>,
    vip_pool: Pool,
    backend_pool: Pool,
}

impl Ids {
    pub fn new(max_vips: u32, max_backends: u32) -> Self {
        Self {
            vips: BTreeMap::new(),
            backends: BTreeMap::new(),
            vip_pool: Pool::new(max_vips),
            backend_pool: Pool::new(max_backends),
        }
    }

    /// The allocation found in a running data plane.
    pub fn adopt(
        max_vips: u32,
        max_backends: u32,
        vips: impl IntoIterator<Item = (VipKeyOrd, u32)>,
        backends: impl IntoIterator<Item = (BackendKey, u32)>,
    ) -> Self {
        let vips: BTreeMap<_, _> = vips.into_iter().collect();
        let backends: BTreeMap<_, _> = backends.into_iter().collect();
        Self {
            vip_pool: Pool::with_used(max_vips, vips.values().copied()),
            backend_pool: Pool::with_used(max_backends, backends.values().copied()),
            vips,
            backends,
        }
    }

    pub fn vip(&self, key: &VipKeyOrd) -> Option<u32> {
        self.vips.get(key).copied()
    }

    pub fn backend(&self, key: &BackendKey) -> Option<u32> {
        self.backends.get(key).copied()
    }

    pub fn vip_or_new(&mut self, key: VipKeyOrd) -> Result<u32, IdError> {
        if let Some(id) = self.vips.get(&key) {
            return Ok(*id);
        }
        let id = self
            .vip_pool
            .take()
            .ok_or(IdError::VipsExhausted(self.vip_pool.limit))?;
        self.vips.insert(key, id);
        Ok(id)
    }

    pub fn backend_or_new(&mut self, key: BackendKey) -> Result<u32, IdError> {
        if let Some(id) = self.backends.get(&key) {
            return Ok(*id);
        }
        let id = self
            .backend_pool
            .take()
            .ok_or(IdError::BackendsExhausted(self.backend_pool.limit))?;
        self.backends.insert(key, id);
        Ok(id)
    }

    pub fn release_vip(&mut self, key: &VipKeyOrd) {
        if let Some(id) = self.vips.remove(key) {
            self.vip_pool.give_back(id);
        }
    }

    pub fn release_backend(&mut self, key: &BackendKey) {
        if let Some(id) = self.backends.remove(key) {
            self.backend_pool.give_back(id);
        }
    }

    /// The ids in use here that were not in use in `before`: (VIP ids,
    /// backend ids). An id can have served something else earlier, so the
    /// caller zeroes what the data plane counted under it before it is
    /// handed to the data plane again.
    pub fn allocated_since(&self, before: &Ids) -> (Vec<u32>, Vec<u32>) {
        fn new_ids<K>(now: &BTreeMap<K, u32>, before: &BTreeMap<K, u32>) -> Vec<u32> {
            let old: std::collections::BTreeSet<u32> = before.values().copied().collect();
            let mut ids: Vec<u32> = now
                .values()
                .copied()
                .filter(|id| !old.contains(id))
                .collect();
            ids.sort_unstable();
            ids
        }
        (
            new_ids(&self.vips, &before.vips),
            new_ids(&self.backends, &before.backends),
        )
    }

    pub fn vips(&self) -> impl Iterator<Item = (&VipKeyOrd, &u32)> {
        self.vips.iter()
    }

    pub fn backends(&self) -> impl Iterator<Item = (&BackendKey, &u32)> {
        self.backends.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_and_backends_are_shown_as_lbctl_names_them() {
        let backend = BackendKey {
            vip: vip(443),
            addr: "198.51.100.101".parse().unwrap(),
        };
        assert_eq!(
            backend.to_string(),
            "198.51.100.101 of 198.51.100.10:443/tcp"
        );
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&[0x20, 0x01]);
        addr[2..4].copy_from_slice(&[0x0d, 0xb8]);
        addr[15] = 0x10;
        let v6 = VipKeyOrd {
            addr,
            port: 53,
            proto: 17,
            family: lb_common::flow::FAMILY_V6,
        };
        assert_eq!(v6.to_string(), "[2001:db8::10]:53/udp");
    }

    fn vip(port: u16) -> VipKeyOrd {
        VipKeyOrd {
            addr: [198, 51, 100, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
            proto: 6,
            family: 4,
        }
    }

    fn backend(port: u16, last: u8) -> BackendKey {
        BackendKey {
            vip: vip(port),
            addr: IpAddr::from([198, 51, 100, last]),
        }
    }

    #[test]
    fn ids_are_stable_and_reused_last() {
        let mut ids = Ids::new(4, 3);
        let a = ids.backend_or_new(backend(80, 1)).unwrap();
        let b = ids.backend_or_new(backend(80, 2)).unwrap();
        assert_eq!(ids.backend_or_new(backend(80, 1)).unwrap(), a);
        ids.release_backend(&backend(80, 1));
        // A fresh id comes before the freed one.
        let c = ids.backend_or_new(backend(80, 3)).unwrap();
        assert!(c != a && c != b);
        assert_eq!(ids.backend_or_new(backend(80, 4)).unwrap(), a);
        assert_eq!(
            ids.backend_or_new(backend(80, 5)),
            Err(IdError::BackendsExhausted(3))
        );
    }

    #[test]
    fn allocated_since_names_fresh_and_reused_ids() {
        let mut ids = Ids::new(2, 2);
        assert_eq!(ids.vip_or_new(vip(80)), Ok(0));
        assert_eq!(ids.backend_or_new(backend(80, 1)), Ok(0));
        assert_eq!(ids.backend_or_new(backend(80, 2)), Ok(1));
        let before = ids.clone();
        assert_eq!(ids.allocated_since(&before), (vec![], vec![]));
        // Backend 1 leaves; its id is the only one left for backend 3.
        ids.release_backend(&backend(80, 1));
        assert_eq!(ids.backend_or_new(backend(80, 3)), Ok(0));
        assert_eq!(ids.vip_or_new(vip(81)), Ok(1));
        assert_eq!(ids.allocated_since(&before), (vec![1], vec![]));
        let released = {
            let mut r = before.clone();
            r.release_backend(&backend(80, 1));
            r
        };
        assert_eq!(ids.allocated_since(&released), (vec![1], vec![0]));
        assert_eq!(
            ids.allocated_since(&Ids::new(2, 2)),
            (vec![0, 1], vec![0, 1])
        );
    }

    #[test]
    fn adopted_allocation_keeps_ids_and_frees_gaps() {
        let mut ids = Ids::adopt(
            4,
            8,
            [(vip(80), 2)],
            [(backend(80, 1), 5), (backend(80, 2), 1)],
        );
        assert_eq!(ids.vip(&vip(80)), Some(2));
        assert_eq!(ids.backend(&backend(80, 1)), Some(5));
        // 6 and 7 are fresh; then the gaps 0, 2, 3, 4.
        let got: Vec<u32> = (10..16)
            .map(|i| ids.backend_or_new(backend(80, i)).unwrap())
            .collect();
        assert_eq!(got, [6, 7, 0, 2, 3, 4]);
    }
}
