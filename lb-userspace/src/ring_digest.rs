//! A VIP's live Maglev ring as the backends it names, and a 64-bit digest
//! of it, so that load-balancer nodes behind one ECMP route can be shown to
//! send every flow to the same backend.
//!
//! A ring slot holds a backend id, and ids are this node's own allocation
//! (the order in which it met its backends, and which ids it recycled), so
//! two nodes with the same backends can hold different bytes in `RINGS`.
//! What must agree is the backend each slot names: the ring is a function of
//! the VIP's (address, weight) set and M only (`maglev::build`). The digest
//! is taken over the slots translated to backend addresses, read back from
//! the data plane's map, so it proves what the program serves.

use std::net::IpAddr;

use lb_common::maps::NO_BACKEND;

/// A ring translated to addresses: `None` for an empty slot (or an id this
/// node does not know, which no slot should hold).
pub fn addresses(ring: &[u32], address_of: impl Fn(u32) -> Option<IpAddr>) -> Vec<Option<IpAddr>> {
    ring.iter()
        .map(|&id| {
            if id == NO_BACKEND {
                None
            } else {
                address_of(id)
            }
        })
        .collect()
}

/// 64-bit FNV-1a over M and each slot's backend address (a family tag and
/// 16 bytes; an empty slot is a zero tag), so equal digests mean equal
/// rings on any node whatever its ids.
pub fn digest(slots: &[Option<IpAddr>]) -> u64 {
    let mut h = Fnv::new();
    h.write(&(slots.len() as u64).to_le_bytes());
    for slot in slots {
        let (tag, bytes) = match slot {
            None => (0u8, [0u8; 16]),
            Some(IpAddr::V4(a)) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4, b)
            }
            Some(IpAddr::V6(a)) => (6, a.octets()),
        };
        h.write(&[tag]);
        h.write(&bytes);
    }
    h.0
}

/// How a digest is shown (`lbctl`, metrics): 16 hex digits.
pub fn hex(digest: u64) -> String {
    format!("{digest:016x}")
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_names_backends_by_address_not_by_id() {
        let a: IpAddr = "198.51.100.101".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        // Node 1 gave a id 0 and b id 1; node 2 the other way round.
        let one = addresses(&[0, 1, NO_BACKEND, 0], |id| [Some(a), Some(b)][id as usize]);
        let two = addresses(&[1, 0, NO_BACKEND, 1], |id| [Some(b), Some(a)][id as usize]);
        assert_eq!(one, two);
        assert_eq!(digest(&one), digest(&two));
        let swapped = addresses(&[1, 0, NO_BACKEND, 1], |id| [Some(a), Some(b)][id as usize]);
        assert_ne!(digest(&one), digest(&swapped));
        assert_ne!(digest(&one[..3]), digest(&one), "M is part of it");
    }
}
