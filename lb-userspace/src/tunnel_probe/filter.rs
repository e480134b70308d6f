//! Classic BPF socket filters for the probe's raw sockets, so the kernel
//! queues only the one reply a probe waits for, not a copy of all the
//! host's TCP traffic.
//!
//! An IPv4 raw socket's filter sees the packet from the IPv4 header on; an
//! IPv6 raw socket's sees it from the transport header on (the kernel has
//! pulled the IPv6 header by then), so the IPv6 filter cannot test the
//! source address and the probe checks it from `recvfrom` instead. The
//! probe also re-checks every field it relies on in userspace: a packet
//! queued before the filter was attached is not filtered.

use std::net::SocketAddr;

use libc::sock_filter;
use socket2::SockFilter;

use super::packet::{TCP_ACK, TCP_RST, TCP_SYN, TcpReply};

/// The replies that answer one TCP probe: a segment from the VIP and check
/// port to the probe's source port that acknowledges its SYN (`ack` =
/// ISN + 1) and is a SYN-ACK or a reset. Port and ISN are the probe's own
/// (`TcpProbeId`), so a reply to another probe never matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyMatch {
    /// Where the probe went: the reply's source.
    pub vip: SocketAddr,
    /// Where the probe came from: the reply's destination.
    pub probe: SocketAddr,
    pub ack: u32,
}

impl ReplyMatch {
    /// Whether `r` answers the probe: the check in userspace, of every
    /// field, after the filter (which cannot test an IPv6 source, and does
    /// not see what was queued before it was attached).
    pub fn accepts(&self, r: &TcpReply) -> bool {
        r.src == self.vip.ip()
            && r.sport == self.vip.port()
            && r.dport == self.probe.port()
            && r.ack == self.ack
            && (r.is_syn_ack() || r.is_rst())
    }
}

/// Bytes of an accepted packet to queue: all of it.
const ACCEPT: u32 = u32::MAX;

/// One instruction before the jumps are resolved: every test jumps to the
/// final "drop" when it fails, and falls through when it passes.
#[derive(Clone, Copy)]
enum Op {
    Load(u16, u32),
    /// Continue if the test holds, else drop.
    Require(u16, u32),
    /// Drop if the test holds, else continue.
    Refuse(u16, u32),
}

/// The filter of a TCP receive socket of probe `m` (of IPv4 or IPv6).
pub fn tcp_reply(m: &ReplyMatch) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX,
        BPF_MSH, BPF_W,
    };
    let code = |parts: u32| parts as u16;
    let ipv4 = m.vip.is_ipv4();
    let mut ops = Vec::new();
    // Where the TCP header starts: X = IPv4 header length, or 0 for IPv6
    // (X is zero when a program starts).
    let tcp_load = if ipv4 { BPF_IND } else { BPF_ABS };
    if ipv4 {
        // A later fragment has no TCP header at the offsets read below.
        ops.push(Op::Load(code(BPF_LD | BPF_H | BPF_ABS), 6));
        ops.push(Op::Refuse(code(BPF_JMP | BPF_JSET | BPF_K), 0x1fff));
        if let SocketAddr::V4(vip) = m.vip {
            ops.push(Op::Load(code(BPF_LD | BPF_W | BPF_ABS), 12));
            ops.push(Op::Require(
                code(BPF_JMP | BPF_JEQ | BPF_K),
                u32::from(*vip.ip()),
            ));
        }
        ops.push(Op::Load(code(BPF_LDX | BPF_B | BPF_MSH), 0));
    }
    let tests: [(u32, u32, u32, u32); 5] = [
        (BPF_H, 0, BPF_JEQ, m.vip.port() as u32),
        (BPF_H, 2, BPF_JEQ, m.probe.port() as u32),
        (BPF_W, 8, BPF_JEQ, m.ack),
        (BPF_B, 13, BPF_JSET, TCP_ACK as u32),
        (BPF_B, 13, BPF_JSET, (TCP_SYN | TCP_RST) as u32),
    ];
    for (size, offset, test, value) in tests {
        ops.push(Op::Load(code(BPF_LD | size | tcp_load), offset));
        ops.push(Op::Require(code(BPF_JMP | test | BPF_K), value));
    }
    resolve(&ops)
}

/// A filter that queues nothing: for the sending socket, which would
/// otherwise receive every IP-in-IP packet addressed to this host.
pub fn nothing() -> Vec<sock_filter> {
    vec![ret(0)]
}

/// A program in the form `Socket::attach_filter` takes.
pub fn for_socket(program: &[sock_filter]) -> Vec<SockFilter> {
    program
        .iter()
        .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
        .collect()
}

/// The program: `ops`, then "accept", then "drop".
fn resolve(ops: &[Op]) -> Vec<sock_filter> {
    let drop_at = ops.len() + 1;
    let mut program: Vec<sock_filter> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            // Jump offsets count the instructions skipped after this one.
            let to_drop = (drop_at - i - 1) as u8;
            let (code, jt, jf, k) = match *op {
                Op::Load(code, k) => (code, 0, 0, k),
                Op::Require(code, k) => (code, 0, to_drop, k),
                Op::Refuse(code, k) => (code, to_drop, 0, k),
            };
            sock_filter { code, jt, jf, k }
        })
        .collect();
    program.push(ret(ACCEPT));
    program.push(ret(0));
    program
}

fn ret(k: u32) -> sock_filter {
    sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

#[cfg(test)]
mod tests {
    //! The programs run by a small classic-BPF interpreter of the
    //! instructions they use, with the kernel's rules (a load past the end
    //! of the packet ends the program with 0, i.e. drop), on the packets a
    //! raw socket would see.

    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::tunnel_probe::packet::TCP_FIN;

    /// What the kernel keeps of `packet`: 0 is "drop".
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        use libc::{
            BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX,
            BPF_MSH, BPF_RET, BPF_W,
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |at: usize, size: usize| -> Option<u32> {
            let bytes = packet.get(at..at + size)?;
            Some(bytes.iter().fold(0u32, |v, b| (v << 8) | *b as u32))
        };
        loop {
            let i = program[pc];
            let code = i.code as u32;
            pc += 1;
            let size = |code: u32| match code & 0x18 {
                c if c == BPF_W => 4,
                c if c == BPF_H => 2,
                c if c == BPF_B => 1,
                _ => panic!("size of {code:#x}"),
            };
            if code == BPF_RET | BPF_K {
                return i.k;
            } else if code == BPF_LDX | BPF_B | BPF_MSH {
                match load(i.k as usize, 1) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                }
            } else if code & 0x07 == BPF_LD {
                let at = match code & 0xe0 {
                    m if m == BPF_ABS => i.k as usize,
                    m if m == BPF_IND => (x + i.k) as usize,
                    _ => panic!("mode of {code:#x}"),
                };
                match load(at, size(code)) {
                    Some(v) => a = v,
                    None => return 0,
                }
            } else if code == BPF_JMP | BPF_JEQ | BPF_K || code == BPF_JMP | BPF_JSET | BPF_K {
                let holds = if code & 0xf0 == BPF_JEQ {
                    a == i.k
                } else {
                    a & i.k != 0
                };
                pc += if holds { i.jt } else { i.jf } as usize;
            } else {
                panic!("instruction {code:#x} not expected");
            }
        }
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const WANT: ReplyMatch = ReplyMatch {
        vip: SocketAddr::V4(SocketAddrV4::new(VIP, 80)),
        probe: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000)),
        ack: 0x0102_0305,
    };

    /// A TCP header from the VIP's port to `dport`.
    fn tcp(sport: u16, dport: u16, ack: u32, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&9u32.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    /// An IPv4 packet from `src` carrying `segment`, with `options` words
    /// of IP options and `frag` as flags and offset.
    fn ipv4(src: Ipv4Addr, options: usize, frag: u16, segment: &[u8]) -> Vec<u8> {
        let ihl = 5 + options;
        let mut p = vec![0x40 | ihl as u8, 0, 0, 0, 0, 0];
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[64, 6, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[198, 51, 100, 2]);
        p.extend(std::iter::repeat_n(1u8, options * 4)); // NOPs
        p.extend_from_slice(segment);
        p
    }

    fn syn_ack() -> Vec<u8> {
        tcp(80, 40000, WANT.ack, TCP_SYN | TCP_ACK)
    }

    #[test]
    fn ipv4_filter_takes_the_syn_ack_or_reset_of_its_probe_only() {
        let program = tcp_reply(&WANT);
        let rst = tcp(80, 40000, WANT.ack, TCP_RST | TCP_ACK);
        for (what, packet) in [
            ("SYN-ACK", ipv4(VIP, 0, 0x4000, &syn_ack())),
            ("SYN-ACK after IP options", ipv4(VIP, 2, 0, &syn_ack())),
            ("RST", ipv4(VIP, 0, 0, &rst)),
        ] {
            assert_eq!(run(&program, &packet), ACCEPT, "{what}");
        }
        let other = Ipv4Addr::new(198, 51, 100, 11);
        for (what, packet) in [
            ("from another address", ipv4(other, 0, 0, &syn_ack())),
            (
                "from another port",
                ipv4(VIP, 0, 0, &tcp(81, 40000, WANT.ack, 0x12)),
            ),
            (
                "to another port",
                ipv4(VIP, 0, 0, &tcp(80, 40001, WANT.ack, 0x12)),
            ),
            (
                "acknowledging another SYN",
                ipv4(VIP, 0, 0, &tcp(80, 40000, 7, 0x12)),
            ),
            (
                "a bare ACK",
                ipv4(VIP, 0, 0, &tcp(80, 40000, WANT.ack, TCP_ACK)),
            ),
            (
                "a FIN-ACK",
                ipv4(VIP, 0, 0, &tcp(80, 40000, WANT.ack, TCP_FIN | TCP_ACK)),
            ),
            (
                "a SYN without ACK",
                ipv4(VIP, 0, 0, &tcp(80, 40000, WANT.ack, TCP_SYN)),
            ),
            ("a later fragment", ipv4(VIP, 0, 0x0001, &syn_ack())),
            ("truncated", ipv4(VIP, 0, 0, &syn_ack()[..12])),
        ] {
            assert_eq!(run(&program, &packet), 0, "{what}");
        }
    }

    #[test]
    fn ipv6_filter_reads_from_the_tcp_header() {
        let program = tcp_reply(&ReplyMatch {
            vip: "[2001:db8::10]:80".parse().unwrap(),
            probe: "[2001:db8::2]:40000".parse().unwrap(),
            ..WANT
        });
        assert_eq!(run(&program, &syn_ack()), ACCEPT);
        assert_eq!(run(&program, &tcp(80, 40001, WANT.ack, 0x12)), 0);
        assert_eq!(run(&program, &tcp(80, 40000, WANT.ack ^ 1, 0x12)), 0);
        assert_eq!(run(&program, &tcp(80, 40000, WANT.ack, TCP_ACK)), 0);
    }

    #[test]
    fn the_sending_socket_queues_nothing() {
        assert_eq!(run(&nothing(), &ipv4(VIP, 0, 0, &syn_ack())), 0);
    }

    /// The userspace check: a reply counts only if it answers this very
    /// probe (its port, its ISN), whatever the filter let through.
    #[test]
    fn a_reply_counts_only_if_it_answers_this_probe() {
        let reply = |src: &str, sport, dport, ack, flags| TcpReply {
            src: src.parse().unwrap(),
            sport,
            dport,
            ack,
            flags,
        };
        let vip = "198.51.100.10";
        for (what, r) in [
            (
                "SYN-ACK",
                reply(vip, 80, 40000, WANT.ack, TCP_SYN | TCP_ACK),
            ),
            ("RST", reply(vip, 80, 40000, WANT.ack, TCP_RST | TCP_ACK)),
        ] {
            assert!(WANT.accepts(&r), "{what}");
        }
        for (what, r) in [
            (
                "from another address",
                reply("198.51.100.11", 80, 40000, WANT.ack, 0x12),
            ),
            ("from another port", reply(vip, 81, 40000, WANT.ack, 0x12)),
            (
                "to an earlier probe's port",
                reply(vip, 80, 40001, WANT.ack, 0x12),
            ),
            (
                "acknowledging an earlier probe's ISN",
                reply(vip, 80, 40000, WANT.ack.wrapping_sub(1), 0x12),
            ),
            ("a bare ACK", reply(vip, 80, 40000, WANT.ack, TCP_ACK)),
            ("a SYN", reply(vip, 80, 40000, WANT.ack, TCP_SYN)),
        ] {
            assert!(!WANT.accepts(&r), "{what}");
        }
    }
}
