//! The IPv4 header checks, in one place: the balancer's parser, the
//! packet quoted in an ICMP error, and the decap program's outer and inner
//! headers all ask the same questions of an `Ipv4Hdr`.

use network_types::ip::Ipv4Hdr;

/// The header's length in bytes, if it is an IPv4 header at all:
/// version 4 and an IHL of at least five 32-bit words.
#[inline(always)]
pub fn header_len(ip: &Ipv4Hdr) -> Option<usize> {
    let len = ((ip.vihl & 0x0f) as usize) * 4;
    (ip.vihl >> 4 == 4 && len >= Ipv4Hdr::LEN).then_some(len)
}

/// (header length, total length) of the packet whose IPv4 header `ip`
/// starts at `off`, if it is an IPv4 header and the packet it claims
/// (`tot_len`, at least its header) ends by `end`.
#[inline(always)]
pub fn whole(ip: &Ipv4Hdr, off: usize, end: usize) -> Option<(usize, usize)> {
    let len = header_len(ip)?;
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    (total >= len && off + total <= end).then_some((len, total))
}
