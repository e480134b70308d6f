//! The wire format of a second-chance packet: the client's IP packet in GUE
//! (Generic UDP Encapsulation, draft-ietf-intarea-gue, variant 0) over UDP,
//! with the remaining hops in the GUE header's private data. The load
//! balancer sends it to a flow's ring owner with the slot's previous owner
//! as the one hop; the backend's decapsulation program either delivers it
//! or sends it on to that hop with the list shortened. Both programs and
//! the tests build and read it from these definitions.
//!
//! ```text
//!  outer IPv4 (20) or IPv6 (40), protocol 17, from the sender's address
//!  UDP (8)    source port: flow entropy; destination: the GUE port (6080)
//!             length: UDP + GUE + inner; checksum 0 (RFC 6935 for IPv6)
//!  GUE (4)    version 0, C 0, Hlen (4-byte words after these 4 bytes),
//!             Proto/ctype 4 (IPv4 inside) or 41 (IPv6 inside), flags 0
//!  hops (4)   type 0x4c42 ("LB"), hops left, 0
//!  hop 0      4 or 16 bytes, the outer header's family ... (hops left of them)
//!  inner IP packet, unchanged
//! ```
//!
//! Flags stay zero: the private data directly follows the base header.

/// UDP destination port of second-chance packets unless configured.
pub const DEFAULT_GUE_PORT: u16 = 6080;
pub const UDP_HDR_LEN: usize = 8;
/// The GUE base header: version, C, Hlen, Proto/ctype, flags.
pub const GUE_HDR_LEN: usize = 4;
/// The head of the private data: type, hops left, a zero byte.
pub const HOPS_HDR_LEN: usize = 4;
/// The private data's type: a hop list in this format.
pub const HOPS_TYPE: u16 = 0x4c42;
/// Hops a packet may carry (and a decapsulation program accepts): the
/// previous owner of the flow's ring slot.
pub const MAX_HOPS: u8 = 1;

/// Bytes of address per hop in an outer header of `family`.
#[inline(always)]
pub const fn hop_len(family: u8) -> usize {
    if family == crate::flow::FAMILY_V4 {
        4
    } else {
        16
    }
}

/// Bytes of fixed outer IP header of `family`.
#[inline(always)]
pub const fn ip_hdr_len(family: u8) -> usize {
    if family == crate::flow::FAMILY_V4 {
        20
    } else {
        40
    }
}

/// Bytes from the UDP header to the inner packet, with `hops` hops of
/// `family`.
#[inline(always)]
pub const fn udp_to_inner(family: u8, hops: usize) -> usize {
    UDP_HDR_LEN + GUE_HDR_LEN + HOPS_HDR_LEN + hops * hop_len(family)
}

/// Bytes the load balancer puts in front of the client's packet (after
/// the link header): an outer header of `family`, UDP, GUE and one hop.
/// IPv4: 40 (IP-in-IP: 20); IPv6: 72 (IP-in-IP: 40).
#[inline(always)]
pub const fn overhead(family: u8) -> usize {
    ip_hdr_len(family) + udp_to_inner(family, MAX_HOPS as usize)
}

/// The GUE header's first byte for a header with `hops` hops of `family`:
/// version 0, C 0, and Hlen in 4-byte words after the base header.
#[inline(always)]
pub const fn first_byte(family: u8, hops: usize) -> u8 {
    ((HOPS_HDR_LEN + hops * hop_len(family)) / 4) as u8
}

/// The UDP source port for a flow of `entropy` (`flow::tunnel_entropy`):
/// spread over the dynamic range 49152-65535, the same for every packet
/// of the flow, so receivers and routers that hash on ports keep the flow
/// together.
#[inline(always)]
pub const fn source_port(entropy: u32) -> u16 {
    0xc000 | (entropy & 0x3fff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FAMILY_V4, FAMILY_V6};

    #[test]
    fn sizes_of_a_one_hop_header() {
        assert_eq!(overhead(FAMILY_V4), 40);
        assert_eq!(overhead(FAMILY_V6), 72);
        assert_eq!(first_byte(FAMILY_V4, 1), 2);
        assert_eq!(first_byte(FAMILY_V6, 1), 5);
        assert_eq!(first_byte(FAMILY_V6, 0), 1);
        assert!(source_port(0) >= 49152 && source_port(u32::MAX) >= 49152);
    }
}
