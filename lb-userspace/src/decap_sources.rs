//! Which outer sources a backend's `lb_decap` accepts tunnels from: the load
//! balancers' tunnel sources, as addresses or CIDR prefixes of either
//! family, or, as an explicit opt-out, any source; and its second-chance
//! peers, the other backends, one address each. Parsing, and the key form
//! of `DECAP_SOURCES` and `DECAP_PEERS` entries, live here; `maps` writes
//! them.

use std::net::IpAddr;

pub use ipnet::IpNet;
use lb_common::maps::{DECAP_SOURCE_FAMILY_BITS, DecapSource};

use crate::addr;

/// The outer sources tunnels are accepted from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecapSources {
    /// Only tunnels whose outer source lies in one of these prefixes (none:
    /// every tunnel is dropped).
    Only(Vec<IpNet>),
    /// Any outer source: the operator opted out of the check.
    Any,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} is not an IP address or prefix (ADDRESS or ADDRESS/LENGTH)")]
    NotAPrefix(String),
    #[error("{text:?} has address bits set past its /{len}: did you mean {network}?")]
    HostBits {
        text: String,
        len: u8,
        network: IpNet,
    },
    #[error(
        "{0:?} is a prefix: a peer is one backend's address (repeat --peer for each), \
         so that no other host of the prefix may send GUE here or be sent second hops"
    )]
    PeerPrefix(String),
}

/// An allowed source as an operator writes it: an address (a /32 or /128)
/// or a prefix. A prefix with bits set past its length is refused rather
/// than guessed at: `198.51.100.7/24` may be a typo for either
/// `198.51.100.7` or `198.51.100.0/24`.
pub fn parse_source(text: &str) -> Result<IpNet, SourceError> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| SourceError::NotAPrefix(text.to_string()))?;
    if net.trunc() != net {
        return Err(SourceError::HostBits {
            text: text.to_string(),
            len: net.prefix_len(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// A second-chance peer as an operator writes it: one backend's address
/// (or the same as a /32 or /128). A peer may send GUE with no hop left
/// and is where second hops go: a prefix would trust every host in it.
pub fn parse_peer(text: &str) -> Result<IpNet, SourceError> {
    let net = parse_source(text)?;
    if net.prefix_len() != net.max_prefix_len() {
        return Err(SourceError::PeerPrefix(text.to_string()));
    }
    Ok(net)
}

/// The `DECAP_SOURCES` key of `net`: its length in key bits, and its data.
pub fn to_key(net: &IpNet) -> (u32, DecapSource) {
    let (addr, family) = addr::to_map(net.network());
    (
        DECAP_SOURCE_FAMILY_BITS + u32::from(net.prefix_len()),
        DecapSource { family, addr },
    )
}

/// The prefix a `DECAP_SOURCES` key holds, if it is well formed.
pub fn from_key(key_bits: u32, data: &DecapSource) -> Option<IpNet> {
    let addr = addr::from_map(&data.addr, data.family)?;
    let len = u8::try_from(key_bits.checked_sub(DECAP_SOURCE_FAMILY_BITS)?).ok()?;
    IpNet::new(addr, len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_prefixes_and_prefixes_are_kept() {
        for (text, want) in [
            ("198.51.100.2", "198.51.100.2/32"),
            ("2001:db8::2", "2001:db8::2/128"),
            ("198.51.100.0/24", "198.51.100.0/24"),
            ("2001:db8:100::/48", "2001:db8:100::/48"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(parse_source(text), Ok(want.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn a_prefix_with_host_bits_or_junk_is_refused_with_a_reason() {
        let err = parse_source("198.51.100.7/24").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"198.51.100.7/24\" has address bits set past its /24: did you mean 198.51.100.0/24?"
        );
        for bad in [
            "",
            "eth0",
            "198.51.100.0/33",
            "2001:db8::/129",
            "198.51.100",
        ] {
            assert_eq!(
                parse_source(bad),
                Err(SourceError::NotAPrefix(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_peer_is_one_address_and_a_prefix_is_refused() {
        for (text, want) in [
            ("198.51.100.3", "198.51.100.3/32"),
            ("198.51.100.3/32", "198.51.100.3/32"),
            ("2001:db8::3", "2001:db8::3/128"),
        ] {
            assert_eq!(parse_peer(text), Ok(want.parse().unwrap()), "{text}");
        }
        for prefix in ["198.51.100.0/24", "2001:db8::/64", "0.0.0.0/0"] {
            assert_eq!(
                parse_peer(prefix),
                Err(SourceError::PeerPrefix(prefix.to_string()))
            );
        }
        assert_eq!(
            parse_peer("198.51.100.0/24").unwrap_err().to_string(),
            "\"198.51.100.0/24\" is a prefix: a peer is one backend's address (repeat --peer \
             for each), so that no other host of the prefix may send GUE here or be sent \
             second hops"
        );
        assert!(matches!(
            parse_peer("backend2"),
            Err(SourceError::NotAPrefix(_))
        ));
    }

    #[test]
    fn keys_round_trip_and_count_the_family_byte() {
        for text in [
            "198.51.100.0/24",
            "198.51.100.2/32",
            "2001:db8::/32",
            "::/0",
        ] {
            let net: IpNet = text.parse().unwrap();
            let (bits, data) = to_key(&net);
            assert_eq!(bits, 8 + u32::from(net.prefix_len()));
            assert_eq!(from_key(bits, &data), Some(net), "{text}");
        }
        let (_, v4) = to_key(&"198.51.100.0/24".parse().unwrap());
        assert_eq!(from_key(4, &v4), None, "shorter than the family byte");
        assert_eq!(from_key(8 + 33, &v4), None, "longer than an IPv4 address");
    }
}
