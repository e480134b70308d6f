//! The probe of a VIP through the tunnel: the part of a health check that
//! fails when a backend cannot take client packets although its service
//! answers on its own address (its `lb_decap` is missing or detached, its
//! decap address set or tunnel-source allowlist lacks this LB, the VIP is
//! not on its loopback, nothing listens on the VIP).
//!
//! lbd builds the inner packet itself (`packet`): a TCP SYN, or the check's
//! UDP payload, from the tunnel source of the VIP's family to the VIP and
//! check port. It sends it through a raw socket of protocol IPIP (IPv4
//! inside) or IPV6 (IPv6 inside), of the backend's family and bound to the
//! tunnel source of that family: the kernel adds the outer header, with the
//! same source and destination as the data plane's. The backend
//! decapsulates it and answers the VIP's SYN-ACK (or UDP reply) straight to
//! the tunnel source (DSR), which is not a VIP, so the `lb` program passes
//! it to the LB host's kernel. There lbd reads it from a raw TCP socket
//! whose filter (`filter`) lets through only this probe's reply, or from
//! the UDP socket the probe was sent from; then it resets the half-open
//! connection with a RST sent the same way as the SYN.
//!
//! Every probe has a source port of its own, reserved by a bound socket
//! for as long as the probe runs (so no connection of the host uses it
//! meanwhile), and, for TCP, a fresh random initial sequence number. A
//! reply counts only if it answers this probe: to its port and, for TCP,
//! acknowledging its ISN. So probes of many backends and VIPs run at once,
//! and neither a late reply to an earlier probe (a SYN-ACK the backend
//! retransmits after a lost RST, for half a minute, even after its decap
//! was detached) nor a reply forged after watching one probe passes a
//! later one. A UDP reply carries nothing of the probe but its port: with
//! an empty `expect`, any datagram from the VIP and port to that port
//! passes (docs/operations.md says to set `expect`).
//!
//! The LB host's own TCP stack also sees the SYN-ACK, finds no socket for
//! it and answers with a RST towards the VIP, routed as the host routes the
//! VIP: a RST that reaches a backend without that half-open connection is
//! ignored there. Needs CAP_NET_RAW.

pub mod filter;
pub mod packet;

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
};

use crate::config::{CheckKind, HealthCheck, TunnelSource, Vip};
use filter::ReplyMatch;
use packet::{Flow, TcpReply};

/// Room for an IPv4 header with options and a TCP header: all a reply
/// needs to be recognised (a longer datagram is truncated, harmlessly).
const TCP_RECV_BUF: usize = 256;
/// UDP receive buffer; only a prefix of the reply is compared.
const UDP_RECV_BUF: usize = 2048;

/// Where a tunnel probe goes, and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelPath {
    /// Outer destination: the backend's address.
    pub backend: IpAddr,
    /// Outer source: the tunnel source of the backend's family, the one the
    /// data plane puts in its outer headers.
    pub outer_src: IpAddr,
    /// Inner destination: the VIP and the check port.
    pub vip: SocketAddr,
    /// Inner source: the tunnel source of the VIP's family. The backend
    /// replies to it.
    pub inner_src: IpAddr,
}

impl TunnelPath {
    /// The path of `backend` of `vip`, if the VIP checks through the
    /// tunnel and the tunnel sources it needs are set (validation makes
    /// sure of that).
    pub fn of(sources: &TunnelSource, vip: &Vip, backend: IpAddr) -> Option<Self> {
        if !vip.checks_through_tunnel() {
            return None;
        }
        let source_for = |addr: IpAddr| match addr {
            IpAddr::V4(_) => sources.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => sources.ipv6.map(IpAddr::V6),
        };
        let port = vip.health_check.port.unwrap_or(vip.port);
        Some(Self {
            backend,
            outer_src: source_for(backend)?,
            vip: SocketAddr::new(vip.address, port),
            inner_src: source_for(vip.address)?,
        })
    }
}

/// Probes one backend through the tunnel, again and again. Every probe
/// opens its own sockets, so one that fails to open is retried at the next.
pub struct TunnelProber {
    path: TunnelPath,
}

impl TunnelProber {
    pub fn new(path: TunnelPath) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &TunnelPath {
        &self.path
    }

    /// One probe as `check` says: a SYN for `tcp` and `http` checks, the
    /// payload for `udp`. `Ok` with a short success reason, `Err` with a
    /// failure reason. Not bounded in time: the caller bounds it.
    pub async fn probe(&self, check: &HealthCheck) -> Result<String, String> {
        match check.kind {
            CheckKind::None => Ok("not checked".into()),
            CheckKind::Tcp | CheckKind::Http => self.probe_tcp().await,
            CheckKind::Udp => {
                let payload = check.payload.as_deref().unwrap_or_default().as_bytes();
                let expect = check.expect.as_deref().unwrap_or_default().as_bytes();
                self.probe_udp(payload, expect).await
            }
        }
    }

    async fn probe_tcp(&self) -> Result<String, String> {
        let src = self.path.inner_src;
        let probe = TcpProbeId::reserve(src).map_err(|e| reserve_reason(src, &e))?;
        let flow = flow_of(&self.path, probe.sport)?;
        let replies = ReplySocket::open(&probe.reply_match(flow.src(), flow.dst()))
            .map_err(|e| raw_socket_reason(&e))?;
        let tunnel = TunnelSocket::open(&self.path).map_err(|e| raw_socket_reason(&e))?;
        tunnel
            .send(&packet::tcp_syn(&flow, probe.isn))
            .await
            .map_err(|e| format!("sending the SYN failed: {e}"))?;
        let reply = replies
            .next()
            .await
            .map_err(|e| format!("receiving failed: {e}"))?;
        if !reply.is_syn_ack() {
            return Err(format!("refused: RST from {}", self.path.vip));
        }
        // The path works whether or not the RST goes out; without it the
        // backend drops the half-open connection after its retries.
        if let Err(e) = tunnel.send(&packet::tcp_rst(&flow, probe.isn)).await {
            tracing::debug!(backend = %self.path.backend, error = %e, "sending the probe's RST failed");
        }
        Ok("SYN-ACK".into())
    }

    async fn probe_udp(&self, payload: &[u8], expect: &[u8]) -> Result<String, String> {
        let path = self.path;
        // A port of its own, bound for this probe only: a late reply to an
        // earlier probe goes to a port nobody holds any more.
        let socket = UdpSocket::bind(SocketAddr::new(path.inner_src, 0))
            .await
            .map_err(|e| reserve_reason(path.inner_src, &e))?;
        let mut buf = vec![0u8; UDP_RECV_BUF.max(expect.len())];
        let sport = socket
            .local_addr()
            .map_err(|e| format!("source port: {e}"))?
            .port();
        let flow = flow_of(&path, sport)?;
        let tunnel = TunnelSocket::open(&path).map_err(|e| raw_socket_reason(&e))?;
        tunnel
            .send(&packet::udp(&flow, payload))
            .await
            .map_err(|e| format!("sending failed: {e}"))?;
        loop {
            let (n, from) = socket
                .recv_from(&mut buf)
                .await
                .map_err(|e| format!("receiving failed: {e}"))?;
            if from != path.vip {
                continue;
            }
            let reply = &buf[..n];
            return if reply.starts_with(expect) {
                Ok("UDP reply".into())
            } else {
                Err(format!(
                    "unexpected UDP reply {}",
                    crate::health::quote(reply)
                ))
            };
        }
    }
}

/// What ties replies to one TCP probe: a source port reserved for the
/// probe's duration (bound, never listening: the kernel hands it to nobody
/// else) and a random initial sequence number, both drawn for this probe.
pub struct TcpProbeId {
    _reservation: Socket,
    pub sport: u16,
    pub isn: u32,
}

impl TcpProbeId {
    /// Reserve a port on `src` and draw an ISN.
    pub fn reserve(src: IpAddr) -> io::Result<Self> {
        let socket = Socket::new(domain_of(src), Type::STREAM, Some(Protocol::TCP))?;
        socket.bind(&SocketAddr::new(src, 0).into())?;
        let sport = socket
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        Ok(Self {
            _reservation: socket,
            sport,
            isn: random_u32()?,
        })
    }

    /// The replies that answer this probe, sent from `src` (whose port is
    /// `sport`) to `vip`.
    pub fn reply_match(&self, src: SocketAddr, vip: SocketAddr) -> ReplyMatch {
        ReplyMatch {
            vip,
            probe: src,
            ack: self.isn.wrapping_add(1),
        }
    }
}

/// Random bits from the kernel (getrandom(2)): an ISN that nobody who saw
/// earlier probes can predict.
fn random_u32() -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::from_ne_bytes(bytes))
}

fn flow_of(path: &TunnelPath, sport: u16) -> Result<Flow, String> {
    Flow::new(SocketAddr::new(path.inner_src, sport), path.vip)
        .ok_or_else(|| format!("no tunnel source of the family of {}", path.vip.ip()))
}

fn domain_of(addr: IpAddr) -> Domain {
    match addr {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    }
}

fn raw_socket_reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        format!("cannot open a raw socket (lbd needs CAP_NET_RAW): {e}")
    } else {
        format!("raw socket: {e}")
    }
}

fn reserve_reason(src: IpAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrNotAvailable {
        format!("tunnel source {src} is not an address of this host")
    } else {
        format!("cannot reserve a source port on {src}: {e}")
    }
}

/// Sends inner packets through the tunnel to one backend.
struct TunnelSocket {
    fd: AsyncFd<Socket>,
    to: SockAddr,
}

impl TunnelSocket {
    fn open(path: &TunnelPath) -> io::Result<Self> {
        let carried = match path.vip {
            SocketAddr::V4(_) => libc::IPPROTO_IPIP,
            SocketAddr::V6(_) => libc::IPPROTO_IPV6,
        };
        let socket = Socket::new(
            domain_of(path.backend),
            Type::RAW,
            Some(Protocol::from(carried)),
        )?;
        socket.attach_filter(&filter::for_socket(&filter::nothing()))?;
        socket.bind(&SocketAddr::new(path.outer_src, 0).into())?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            fd: register(socket)?,
            // A raw socket's "port" is its protocol, or 0 for its own.
            to: SocketAddr::new(path.backend, 0).into(),
        })
    }

    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |s| s.send_to(packet, &self.to))
            .await
            .map(drop)
    }
}

/// Receives the one TCP reply a probe waits for: the SYN-ACK or reset
/// from the VIP that acknowledges its SYN. Opened before the SYN is sent.
pub struct ReplySocket {
    fd: AsyncFd<Socket>,
    want: ReplyMatch,
}

impl ReplySocket {
    /// For the replies `want` describes.
    pub fn open(want: &ReplyMatch) -> io::Result<Self> {
        let src = want.probe.ip();
        let socket = Socket::new(domain_of(src), Type::RAW, Some(Protocol::TCP))?;
        socket.attach_filter(&filter::for_socket(&filter::tcp_reply(want)))?;
        // Only segments addressed to the probe's source.
        socket.bind(&SocketAddr::new(src, 0).into())?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            fd: register(socket)?,
            want: *want,
        })
    }

    /// The next matching segment. Anything else (queued before the filter
    /// was attached) is skipped.
    pub async fn next(&self) -> io::Result<TcpReply> {
        let mut buf = [0u8; TCP_RECV_BUF];
        loop {
            let (n, from) = self
                .fd
                .async_io(Interest::READABLE, |s| recv_from(s, &mut buf))
                .await?;
            let reply = match from.as_socket() {
                _ if self.want.vip.is_ipv4() => packet::read_tcp_v4(&buf[..n]),
                Some(SocketAddr::V6(a)) => packet::read_tcp_v6(*a.ip(), &buf[..n]),
                _ => None,
            };
            if let Some(reply) = reply.filter(|r| self.want.accepts(r)) {
                return Ok(reply);
            }
        }
    }
}

/// Hand a non-blocking socket to tokio's reactor.
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor, and the `AsyncFd` owns the
    // `Socket`: the descriptor stays open and unchanged while registered.
    unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `recv_from`
    // only writes into the buffer, so its bytes stay initialised.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    socket.recv_from(uninit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::{TCP_ACK, TCP_SYN};

    /// Defect: a prober kept one port and one ISN for its whole life, so a
    /// SYN-ACK to an earlier probe (retransmitted by the backend, or forged
    /// after watching one probe) passed every later one. Each probe now has
    /// its own, and the reply to one is refused by the next.
    #[test]
    fn each_probe_has_its_own_port_and_isn_and_refuses_the_others_reply() {
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
        let answer = |p: &TcpProbeId| TcpReply {
            src: vip.ip(),
            sport: vip.port(),
            dport: p.sport,
            ack: p.isn.wrapping_add(1),
            flags: TCP_SYN | TCP_ACK,
        };
        let want = |p: &TcpProbeId| p.reply_match(SocketAddr::new(src, p.sport), vip);
        // One after the other, as a checker runs them.
        let first = TcpProbeId::reserve(src).unwrap();
        let first_answer = answer(&first);
        assert!(want(&first).accepts(&first_answer));
        drop(first);
        let second = TcpProbeId::reserve(src).unwrap();
        assert!(want(&second).accepts(&answer(&second)));
        assert!(
            !want(&second).accepts(&first_answer),
            "the first probe's SYN-ACK answers the second"
        );
        // At once (probes of other backends): the ports differ.
        let third = TcpProbeId::reserve(src).unwrap();
        assert_ne!(second.sport, third.sport);
        // The ISNs are drawn, not derived from the path.
        let isns: std::collections::BTreeSet<u32> = (0..8)
            .map(|_| TcpProbeId::reserve(src).unwrap().isn)
            .collect();
        assert!(isns.len() > 1, "{isns:?}");
    }
}
