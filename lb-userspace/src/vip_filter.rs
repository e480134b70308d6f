//! The data plane's VIP filter (`VIP_FILTER`): a bit per VIP address, so
//! that a packet for no VIP is passed after one array read instead of a
//! hash lookup (`lb_common::maps::vip_filter_bit`).
//!
//! The program trusts a clear bit, so a VIP's bit is set before the VIP is
//! written and cleared only after the last VIP on an address sharing it is
//! gone. `Maps` does both, and lbd, the only writer, rebuilds the filter
//! from the VIP map before it sets `CFG_F_LOOKUP_CACHES`.

use lb_common::maps::{VIP_FILTER_WORDS, VipKey, vip_filter_bit};

/// Where a VIP address's bit lives: (word index, mask).
pub fn position(key: &VipKey) -> (u32, u64) {
    let bit = vip_filter_bit(&key.addr, key.family);
    (bit / 64, 1u64 << (bit % 64))
}

/// The filter that holds exactly the addresses of `keys`.
pub fn exact<'a>(keys: impl IntoIterator<Item = &'a VipKey>) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for key in keys {
        let (word, mask) = position(key);
        words[word as usize] |= mask;
    }
    words
}

/// Whether another of `keys` still needs the bit `gone` had.
pub fn still_needed<'a>(gone: &VipKey, keys: impl IntoIterator<Item = &'a VipKey>) -> bool {
    let bit = position(gone);
    keys.into_iter().any(|k| position(k) == bit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lb_common::flow::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

    /// A VIP key with `addr` in its first bytes.
    pub(crate) fn key(addr: &[u8], family: u8, port: u16, proto: u8) -> VipKey {
        let mut a = [0u8; 16];
        a[..addr.len()].copy_from_slice(addr);
        VipKey {
            addr: a,
            port,
            proto,
            family,
        }
    }

    #[test]
    fn ports_and_protocols_of_one_address_share_its_bit() {
        let web = key(&[198, 51, 100, 10], FAMILY_V4, 80, PROTO_TCP);
        let dns = key(&[198, 51, 100, 10], FAMILY_V4, 53, PROTO_UDP);
        assert_eq!(position(&web), position(&dns));
        assert!(still_needed(&web, [&dns]));
    }

    #[test]
    fn two_addresses_can_share_a_bit_and_removing_one_keeps_it() {
        // The IPv6 fold XORs the address's words: these two fold alike.
        let one = key(
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            FAMILY_V6,
            443,
            PROTO_TCP,
        );
        let other = key(
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
            FAMILY_V6,
            443,
            PROTO_TCP,
        );
        assert_ne!(one.addr, other.addr);
        assert_eq!(position(&one), position(&other));
        assert!(still_needed(&one, [&other]));
        assert!(!still_needed(&one, std::iter::empty::<&VipKey>()));
    }

    #[test]
    fn the_exact_filter_holds_every_address_and_nothing_else() {
        let keys: Vec<VipKey> = (0..=255u8)
            .map(|i| key(&[203, 0, 113, i], FAMILY_V4, 443, PROTO_TCP))
            .chain((0..=255u8).map(|i| {
                key(
                    &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, i],
                    FAMILY_V6,
                    443,
                    PROTO_TCP,
                )
            }))
            .collect();
        let words = exact(&keys);
        for k in &keys {
            let (w, m) = position(k);
            assert_ne!(words[w as usize] & m, 0);
        }
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set <= keys.len() as u32);
        // A good spread: 512 addresses in 65,536 bits collide rarely.
        assert!(set >= keys.len() as u32 - 8, "{set} bits for 512 addresses");
    }

    #[test]
    fn addresses_next_to_each_other_spread_over_words() {
        let words: std::collections::BTreeSet<u32> = (0..=63u8)
            .map(|i| position(&key(&[198, 51, 100, i], FAMILY_V4, 80, PROTO_TCP)).0)
            .collect();
        assert!(words.len() > 48, "64 neighbours in {} words", words.len());
    }
}
