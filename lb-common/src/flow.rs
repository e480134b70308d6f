//! The 5-tuple key and the flow hash that picks a Maglev slot.
//!
//! Both sides must compute the same slot for a flow, so the hash is a fixed,
//! endian-independent function of the key's bytes (murmur3-style rounds).

/// Address family tags used in map keys. Our own values, not the OS's
/// `AF_*`, so the layout never depends on the platform.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the data plane understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// A flow as the load balancer sees it, client to VIP.
///
/// Addresses are in network byte order; an IPv4 address fills the first four
/// bytes and the rest stay zero. Ports are in host byte order.
///
/// 4-aligned (no size change) so the data plane can fill it a word at a
/// time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([
        addr[i * 4],
        addr[i * 4 + 1],
        addr[i * 4 + 2],
        addr[i * 4 + 3],
    ])
}

#[inline(always)]
fn round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser: every input bit reaches every output bit.
#[inline(always)]
pub(crate) fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash that places a flow on a VIP's Maglev ring.
///
/// With `affinity` only the client address counts, so every connection of a
/// client lands on the same backend.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, affinity: bool) -> u32 {
    let mut h = SEED ^ key.family as u32;
    h = round(h, word(&key.src, 0));
    h = round(h, word(&key.src, 1));
    h = round(h, word(&key.src, 2));
    h = round(h, word(&key.src, 3));
    if !affinity {
        h = round(h, word(&key.dst, 0));
        h = round(h, word(&key.dst, 1));
        h = round(h, word(&key.dst, 2));
        h = round(h, word(&key.dst, 3));
        h = round(h, ((key.sport as u32) << 16) | key.dport as u32);
        h = round(h, key.proto as u32);
    }
    finalize(h)
}

/// What a tunnel header carries of a flow so that routers and receivers
/// that hash on it keep the flow together and spread flows apart (the
/// outer IPv6 flow label, the GUE source port): the flow's addresses
/// (native-endian words, `maps::addr_words`), ports and protocol folded,
/// then MurmurHash3's finaliser. About a fifth of `flow_hash`'s work, and
/// nothing needs it to agree with the ring.
#[inline(always)]
pub fn tunnel_entropy(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    // The source port low, where the finaliser mixes it most.
    let ports = ((dport as u32) << 16) | sport as u32;
    finalize(
        fold_words(src)
            ^ fold_words(dst).rotate_left(4)
            ^ ports.wrapping_mul(0x9e37_79b1)
            ^ proto as u32,
    )
}

/// An address's native-endian words folded into one, each rotated
/// differently so that words trading places do not cancel.
#[inline(always)]
pub(crate) fn fold_words(a: &[u32; 4]) -> u32 {
    a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24)
}

/// `tunnel_entropy` of a flow key.
#[inline(always)]
pub fn tunnel_entropy_of(key: &FlowKey) -> u32 {
    use crate::maps::addr_words;
    tunnel_entropy(
        &addr_words(&key.src),
        &addr_words(&key.dst),
        key.sport,
        key.dport,
        key.proto,
    )
}

/// The ring slot a hash selects on a ring of `ring_size` slots (0 if empty).
#[inline(always)]
pub fn maglev_slot(hash: u32, ring_size: u32) -> u32 {
    hash.checked_rem(ring_size).unwrap_or(0)
}

/// Index into the flat ring array: each VIP owns two rings (double buffer),
/// `table` 0 or 1, of `ring_size` slots each.
#[inline(always)]
pub fn ring_index(vip_id: u32, table: u32, slot: u32, ring_size: u32) -> u32 {
    (vip_id * 2 + (table & 1)) * ring_size + slot
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn affinity_ignores_everything_but_the_client_address() {
        let mut a = FlowKey {
            family: FAMILY_V4,
            proto: PROTO_TCP,
            sport: 1000,
            dport: 80,
            ..Default::default()
        };
        a.src[..4].copy_from_slice(&[198, 51, 100, 7]);
        let mut b = a;
        b.sport = 2000;
        b.dport = 443;
        assert_eq!(flow_hash(&a, true), flow_hash(&b, true));
        assert_ne!(flow_hash(&a, false), flow_hash(&b, false));
    }

    /// Flows of one client to one service, differing in the source port
    /// only, get labels spread over the label's 20 bits (and its low 14
    /// bits, the GUE source port's), and the direction of a flow counts.
    #[test]
    fn tunnel_entropy_spreads_the_flows_of_one_client() {
        let mut key = FlowKey {
            family: FAMILY_V6,
            proto: PROTO_TCP,
            dport: 443,
            ..Default::default()
        };
        key.src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        key.dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        key.dst[15] = 0x10;
        let labels: std::collections::BTreeSet<u32> = (1024..5120u16)
            .map(|sport| tunnel_entropy_of(&FlowKey { sport, ..key }) & 0xfffff)
            .collect();
        assert!(
            labels.len() > 4080,
            "{} labels for 4,096 flows",
            labels.len()
        );
        let ports: std::collections::BTreeSet<u32> = (1024..2048u16)
            .map(|sport| tunnel_entropy_of(&FlowKey { sport, ..key }) & 0x3fff)
            .collect();
        assert!(
            ports.len() > 960,
            "{} source ports for 1,024 flows",
            ports.len()
        );
        let back = FlowKey {
            src: key.dst,
            dst: key.src,
            sport: key.dport,
            dport: 40000,
            ..key
        };
        let there = FlowKey {
            sport: 40000,
            ..key
        };
        assert_ne!(tunnel_entropy_of(&there), tunnel_entropy_of(&back));
        // A /24 of IPv4 clients, 4,096 source ports each, to one service:
        // 2^20 flows take about 1 - 1/e of the 2^20 labels, as random ones
        // would (source port and client in the same half of a word took
        // a tenth of that).
        let mut v4 = FlowKey {
            family: FAMILY_V4,
            proto: PROTO_TCP,
            dport: 443,
            ..Default::default()
        };
        v4.dst[..4].copy_from_slice(&[198, 51, 100, 10]);
        let mut seen = std::vec![false; 1 << 20];
        for client in 0..=255u8 {
            v4.src[..4].copy_from_slice(&[203, 0, 113, client]);
            for sport in 40000..44096u16 {
                seen[(tunnel_entropy_of(&FlowKey { sport, ..v4 }) & 0xfffff) as usize] = true;
            }
        }
        let labels = seen.iter().filter(|&&s| s).count();
        assert!(labels > 600_000, "{labels} labels for 2^20 flows");
    }

    #[test]
    fn slot_of_empty_ring_is_zero() {
        assert_eq!(maglev_slot(12345, 0), 0);
        assert_eq!(maglev_slot(65538, 65537), 1);
    }
}
