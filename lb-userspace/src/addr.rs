//! Conversions between `IpAddr` and the 16-byte address + family tag used
//! in map keys.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::flow::{FAMILY_V4, FAMILY_V6};

/// The map form of an address: IPv4 fills the first four bytes.
pub fn to_map(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (bytes, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// The address a map entry holds, if its family tag is known.
pub fn from_map(bytes: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for a in ["198.51.100.7", "2001:db8::1"] {
            let addr: IpAddr = a.parse().unwrap();
            let (bytes, family) = to_map(addr);
            assert_eq!(from_map(&bytes, family), Some(addr));
        }
        assert_eq!(from_map(&[0; 16], 0), None);
    }
}
