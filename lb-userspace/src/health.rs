//! Health checks of backends: one probe per check kind, the rise/fall state
//! machine, and a checker task per (VIP, backend) pair that reports every
//! probe to the daemon.
//!
//! The pieces are split so that each can be tested alone: [`probe`] does one
//! bounded exchange and says what happened, [`HealthState`] turns a stream
//! of results into up/down decisions without any I/O or clock, and
//! [`spawn_checker`] only schedules the two and reports.
//!
//! A VIP that checks through the tunnel (`health_check.through_tunnel`)
//! runs two probes at once, each under the timeout: the direct one, which
//! tests the application (an HTTP status, say), and the probe of the VIP
//! through the tunnel ([`crate::tunnel_probe`]), which tests the path
//! client packets take. The result is a success only if both are, and its
//! reason names the part that failed.
//!
//! Starting state: with checks enabled, a backend starts up only if the
//! daemon says so (`initially_up`). lbd passes `true` for backends adopted
//! from a data plane that survived a restart, so that restarting lbd never
//! blackholes traffic that was flowing, and `false` for newly added ones,
//! which must pass `rise` checks before they receive any traffic. A backend
//! without checks is always up.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use crate::{
    config::{CheckKind, HealthCheck},
    tunnel_probe::{TunnelPath, TunnelProber},
};

/// Longest HTTP status line we read: a real one is a few dozen bytes, and a
/// server that sends more without a line end is not speaking HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Longest response head (status line and header fields) read when a
/// load report is wanted from it (`vips[].balancing.source: header`).
const MAX_HEAD: usize = 8192;

/// UDP receive buffer. Only a prefix of the reply is compared, so a longer
/// datagram being truncated does not matter; the buffer only has to hold
/// `expect`.
const UDP_RECV_BUF: usize = 2048;

/// How much of an unexpected reply to quote in a reason: enough to
/// recognise it in `lbctl` output, short enough to keep reasons one-liners.
const QUOTE_LEN: usize = 40;

/// Identifies the software in backend access logs, so operators can filter
/// health checks out.
const USER_AGENT: &str = "lbd-health-check";

/// Where a check goes: the backend's address and the check port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
}

impl Target {
    pub fn socket_addr(self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

impl From<SocketAddr> for Target {
    fn from(sock: SocketAddr) -> Self {
        Self {
            addr: sock.ip(),
            port: sock.port(),
        }
    }
}

impl fmt::Display for Target {
    /// `192.0.2.1:80`, `[2001:db8::1]:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.socket_addr().fmt(f)
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub success: bool,
    /// Short and human-readable, shown by `lbctl` and in logs: "connected",
    /// "HTTP 503", "connect refused", "timeout after 500 ms", "no UDP reply
    /// after 500 ms".
    pub reason: String,
    /// From the start of the probe to its verdict (success, failure or
    /// timeout); the daemon exports it as a metric.
    pub latency: Duration,
    /// Why the probe through the tunnel failed, when there was one and it
    /// failed (the same text is in `reason`).
    pub tunnel_failure: Option<String>,
    /// The value of the load-report header of a successful HTTP probe,
    /// when one was asked for and the response had it.
    pub report: Option<String>,
}

impl ProbeResult {
    /// The result of a check of kind `none`: nothing was sent, so nothing
    /// can fail and no time passed.
    fn unchecked() -> Self {
        Self {
            success: true,
            reason: "not checked".into(),
            latency: Duration::ZERO,
            tunnel_failure: None,
            report: None,
        }
    }
}

/// A change of a backend's health state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    Up,
    Down,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transition::Up => "up",
            Transition::Down => "down",
        })
    }
}

/// Rise/fall counting with HAProxy's meaning: an up backend goes down after
/// `fall` failures in a row, a down one comes up after `rise` successes in a
/// row, and a result of one kind resets the count of the other, so a flapping
/// backend never changes state.
///
/// Pure and synchronous, so that the rules can be tested exhaustively
/// without sockets or clocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    successes: u32,
    failures: u32,
}

impl HealthState {
    /// `rise` and `fall` of 0 are taken as 1: configuration validation
    /// rejects 0, and "change state after no results" has no meaning.
    /// `initially_up`: see the module documentation for who passes what.
    pub fn new(rise: u32, fall: u32, initially_up: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up: initially_up,
            successes: 0,
            failures: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Successes in a row up to now (0 after a failure).
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// Failures in a row up to now (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Count one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        if success {
            self.record_success()
        } else {
            self.record_failure()
        }
    }

    fn record_success(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        if self.up || self.successes < self.rise {
            return None;
        }
        self.up = true;
        Some(Transition::Up)
    }

    fn record_failure(&mut self) -> Option<Transition> {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if !self.up || self.failures < self.fall {
            return None;
        }
        self.up = false;
        Some(Transition::Down)
    }
}

/// A probe's verdict before timing is added: `Ok(reason)` is a success,
/// `Err(reason)` a failure.
type Verdict = Result<String, String>;

/// Probe `target` once as `check` says. The whole exchange (connect, send,
/// receive) is bounded by `check.timeout_ms`, so a probe never takes longer
/// than that however the backend misbehaves. Never panics and never returns
/// an error: every problem is a failed probe with a reason.
pub async fn probe(check: &HealthCheck, target: Target) -> ProbeResult {
    probe_reporting(check, target, None).await
}

/// [`probe`], also reading the value of header `report_header` from an
/// HTTP check's response (bounded by [`MAX_HEAD`]).
pub async fn probe_reporting(
    check: &HealthCheck,
    target: Target,
    report_header: Option<&str>,
) -> ProbeResult {
    if check.kind == CheckKind::None {
        return ProbeResult::unchecked();
    }
    let started = Instant::now();
    let (verdict, report) = bounded(check, target, report_header).await;
    let latency = started.elapsed();
    let success = verdict.is_ok();
    ProbeResult {
        success,
        reason: verdict.unwrap_or_else(|e| e),
        latency,
        tunnel_failure: None,
        report,
    }
}

/// Probe `target` directly and, at the same time, the VIP through the
/// tunnel with `tunnel`; both bounded by `check.timeout_ms`. A success
/// only if both succeed. The reason gives both parts on success
/// (`HTTP 200; through the tunnel: SYN-ACK`) and the failed ones on
/// failure (`through the tunnel: no SYN-ACK within 500 ms`).
pub async fn probe_through_tunnel(
    check: &HealthCheck,
    target: Target,
    tunnel: &mut TunnelProber,
    report_header: Option<&str>,
) -> ProbeResult {
    if check.kind == CheckKind::None {
        return ProbeResult::unchecked();
    }
    let started = Instant::now();
    let ((direct, report), through) = tokio::join!(
        bounded(check, target, report_header),
        bounded_tunnel(check, tunnel)
    );
    ProbeResult {
        report,
        ..combine(direct, through, started.elapsed())
    }
}

/// One result of the two parts of a probe: see [`probe_through_tunnel`].
fn combine(direct: Verdict, through: Verdict, latency: Duration) -> ProbeResult {
    let through = through.map_err(|e| format!("through the tunnel: {e}"));
    let reason = match (&direct, &through) {
        (Ok(d), Ok(t)) => format!("{d}; through the tunnel: {t}"),
        (Err(d), Ok(_)) => d.clone(),
        (Ok(_), Err(t)) => t.clone(),
        (Err(d), Err(t)) => format!("{d}; {t}"),
    };
    ProbeResult {
        success: direct.is_ok() && through.is_ok(),
        reason,
        latency,
        tunnel_failure: through.err(),
        report: None,
    }
}

/// The tunnel probe under the check's timeout.
async fn bounded_tunnel(check: &HealthCheck, tunnel: &mut TunnelProber) -> Verdict {
    let limit = Duration::from_millis(check.timeout_ms);
    match tokio::time::timeout(limit, tunnel.probe(check)).await {
        Ok(verdict) => verdict,
        Err(_) if check.kind == CheckKind::Udp => {
            Err(format!("no UDP reply within {} ms", check.timeout_ms))
        }
        Err(_) => Err(format!("no SYN-ACK within {} ms", check.timeout_ms)),
    }
}

/// Run the probe of `check.kind` under the check's timeout; with it, the
/// value of header `report_header` of an HTTP response, if asked for.
async fn bounded(
    check: &HealthCheck,
    target: Target,
    report_header: Option<&str>,
) -> (Verdict, Option<String>) {
    let limit = Duration::from_millis(check.timeout_ms);
    let exchange = async {
        match check.kind {
            CheckKind::None => Ok((ProbeResult::unchecked().reason, None)),
            CheckKind::Tcp => probe_tcp(target).await.map(|r| (r, None)),
            CheckKind::Http => probe_http(check, target, report_header).await,
            CheckKind::Udp => probe_udp(check, target).await.map(|r| (r, None)),
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok((reason, report))) => (Ok(reason), report),
        Ok(Err(reason)) => (Err(reason), None),
        // UDP has no connection: the only thing that can take time is the
        // wait for the reply, so say so.
        Err(_) if check.kind == CheckKind::Udp => (
            Err(format!("no UDP reply after {} ms", check.timeout_ms)),
            None,
        ),
        Err(_) => (Err(format!("timeout after {} ms", check.timeout_ms)), None),
    }
}

/// TCP: the backend is up if it accepts a connection.
async fn probe_tcp(target: Target) -> Verdict {
    connect(target).await.map(|_| "connected".to_string())
}

async fn connect(target: Target) -> Result<TcpStream, String> {
    TcpStream::connect(target.socket_addr())
        .await
        .map_err(|e| connect_reason(&e))
}

fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => format!("connect failed: {e}"),
    }
}

/// Reason for an error on an established exchange; `what` says which step.
fn io_reason(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => format!("{what}: connection reset"),
        io::ErrorKind::BrokenPipe => format!("{what}: connection closed"),
        _ => format!("{what}: {e}"),
    }
}

/// HTTP: a plain HTTP/1.1 GET; a 2xx or 3xx status is up. Only the status
/// line is read, unless a load report is wanted from header
/// `report_header`: then the head too, up to [`MAX_HEAD`] bytes. The body
/// says nothing more about health, and not reading it keeps the probe
/// cheap for both sides.
async fn probe_http(
    check: &HealthCheck,
    target: Target,
    report_header: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let request = http_request(check, target.addr)?;
    let mut stream = connect(target).await?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason("send failed", &e))?;
    let (line, report) = match report_header {
        None => (read_status_line(&mut stream).await?, None),
        Some(name) => read_head_field(&mut stream, name).await?,
    };
    let code = parse_status_line(&line)?;
    if (200..400).contains(&code) {
        Ok((format!("HTTP {code}"), report))
    } else {
        Err(format!("HTTP {code}"))
    }
}

/// Read the response head, up to [`MAX_HEAD`] bytes: its status line and
/// the value of field `name`, if the head came whole and has it.
async fn read_head_field(
    stream: &mut (impl AsyncRead + Unpin),
    name: &str,
) -> Result<(String, Option<String>), String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while crate::http_response::head_end(&head).is_none() && head.len() < MAX_HEAD {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_reason("read failed", &e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let Some(line_end) = head.iter().position(|&b| b == b'\n') else {
        return Err(if head.len() >= MAX_STATUS_LINE {
            format!("bad HTTP status line {}", quote(&head))
        } else {
            closed_early(&head)
        });
    };
    let line = String::from_utf8_lossy(&head[..line_end])
        .trim_end_matches('\r')
        .to_string();
    let field = crate::http_response::head_end(&head)
        .and_then(|end| crate::http_response::parse_head(&head[..end]).ok())
        .and_then(|h| h.field(name).map(str::to_string));
    Ok((line, field))
}

/// The request bytes. `Connection: close` tells the server not to keep the
/// connection open for another request that will never come.
fn http_request(check: &HealthCheck, addr: IpAddr) -> Result<String, String> {
    let path = check.path.as_deref().unwrap_or("/");
    let host = check.host.clone().unwrap_or_else(|| host_of(addr));
    // Configuration text goes into the request verbatim: refuse anything
    // that would end the request line or a header early.
    if !crate::config::is_request_token(path) {
        return Err(format!("invalid HTTP path {path:?}"));
    }
    if !crate::config::is_request_token(&host) {
        return Err(format!("invalid HTTP host {host:?}"));
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
    ))
}

/// The default Host header: the address, bracketed for IPv6 as in a URL.
fn host_of(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Read up to the end of the first line (without its CR LF). Reads can end
/// anywhere, so bytes are gathered until a line end arrives.
async fn read_status_line(stream: &mut (impl AsyncRead + Unpin)) -> Result<String, String> {
    let mut line = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            break;
        }
        if line.len() >= MAX_STATUS_LINE {
            return Err(format!("bad HTTP status line {}", quote(&line)));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_reason("read failed", &e))?;
        if n == 0 {
            return Err(closed_early(&line));
        }
        line.extend_from_slice(&chunk[..n]);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn closed_early(partial: &[u8]) -> String {
    if partial.is_empty() {
        "connection closed without a response".into()
    } else {
        format!("connection closed in status line {}", quote(partial))
    }
}

/// The status code of `HTTP/1.1 200 OK`: a version starting `HTTP/`, then a
/// three-digit code, then an optional reason phrase.
pub(crate) fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let well_formed =
        version.starts_with("HTTP/") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    let bad = || format!("bad HTTP status line {}", quote(line.as_bytes()));
    if !well_formed {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

/// The start of some received bytes, quoted and escaped for a reason.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let head: String = text.chars().take(QUOTE_LEN).collect();
    format!("{head:?}")
}

/// UDP: send `payload`, and the backend is up if a reply comes back (that
/// starts with `expect`, if set). The socket is connected so that only the
/// backend's replies are received and an ICMP port unreachable ends the
/// probe at once instead of waiting for the timeout.
async fn probe_udp(check: &HealthCheck, target: Target) -> Verdict {
    let socket = UdpSocket::bind(wildcard_of(target.addr))
        .await
        .map_err(|e| format!("bind failed: {e}"))?;
    socket
        .connect(target.socket_addr())
        .await
        .map_err(|e| connect_reason(&e))?;
    let payload = check.payload.as_deref().unwrap_or_default();
    socket
        .send(payload.as_bytes())
        .await
        .map_err(|e| udp_reason("send failed", &e))?;
    let expect = check.expect.as_deref().unwrap_or_default().as_bytes();
    let mut buf = vec![0u8; UDP_RECV_BUF.max(expect.len())];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| udp_reason("receive failed", &e))?;
    let reply = &buf[..n];
    if reply.starts_with(expect) {
        Ok("UDP reply".into())
    } else {
        Err(format!("unexpected UDP reply {}", quote(reply)))
    }
}

/// The unspecified address and an ephemeral port, of `addr`'s family.
fn wildcard_of(addr: IpAddr) -> SocketAddr {
    match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// On a connected UDP socket, an ICMP port unreachable from the backend
/// surfaces as "connection refused".
fn udp_reason(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "port unreachable".into(),
        _ => io_reason(what, e),
    }
}

/// What a checker reports after every probe: the daemon uses `result` for
/// metrics and `lbctl` output, and `up` (or `transition`) for forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent<K> {
    pub key: K,
    pub result: ProbeResult,
    /// The state change this probe caused, if any.
    pub transition: Option<Transition>,
    /// The state after this probe.
    pub up: bool,
}

/// Check `target` every `check.interval_ms` and send a [`HealthEvent`] to
/// `tx` after every probe, until the receiver is dropped (the daemon drops
/// it, or aborts the handle, when the backend goes away).
///
/// The first probe runs at once, so a new backend's state is known within
/// one timeout. Ticks that are missed because a probe ran long are delayed,
/// not bunched: a slow backend is never probed in a burst.
///
/// With a `tunnel` path every probe also goes through the tunnel
/// ([`probe_through_tunnel`]).
///
/// For kind `none` one event is sent (up, with a transition to up if the
/// backend was not `initially_up`) and the task ends: there is nothing to
/// watch.
pub fn spawn_checker<K>(
    check: HealthCheck,
    target: Target,
    tunnel: Option<TunnelPath>,
    report_header: Option<String>,
    key: K,
    initially_up: bool,
    tx: mpsc::Sender<HealthEvent<K>>,
) -> JoinHandle<()>
where
    K: Clone + Send + fmt::Display + 'static,
{
    tokio::spawn(async move {
        if check.kind == CheckKind::None {
            report_unchecked(key, initially_up, &tx).await;
        } else {
            let prober = tunnel.map(TunnelProber::new);
            let checker = Checker {
                check,
                target,
                report_header,
            };
            run_checker(checker, prober, key, initially_up, tx).await;
        }
    })
}

async fn report_unchecked<K>(key: K, initially_up: bool, tx: &mpsc::Sender<HealthEvent<K>>) {
    let event = HealthEvent {
        key,
        result: ProbeResult::unchecked(),
        transition: (!initially_up).then_some(Transition::Up),
        up: true,
    };
    // A dropped receiver means nobody wants this backend's state any more.
    let _ = tx.send(event).await;
}

/// What a checker task probes.
struct Checker {
    check: HealthCheck,
    target: Target,
    /// The header of an HTTP response that carries a load report.
    report_header: Option<String>,
}

async fn run_checker<K: Clone + fmt::Display>(
    checker: Checker,
    mut tunnel: Option<TunnelProber>,
    key: K,
    initially_up: bool,
    tx: mpsc::Sender<HealthEvent<K>>,
) {
    let Checker {
        check,
        target,
        report_header,
    } = checker;
    let report_header = report_header.as_deref();
    let mut state = HealthState::new(check.rise, check.fall, initially_up);
    // A zero period would panic; validation rejects it, this keeps it so.
    let period = Duration::from_millis(check.interval_ms.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tunnel_failing = false;
    loop {
        let next = async {
            ticker.tick().await;
            match tunnel.as_mut() {
                Some(prober) => probe_through_tunnel(&check, target, prober, report_header).await,
                None => probe_reporting(&check, target, report_header).await,
            }
        };
        // Stop as soon as the receiver goes, not only at the next send.
        let result = tokio::select! {
            () = tx.closed() => return,
            result = next => result,
        };
        let transition = state.record(result.success);
        if let Some(prober) = &tunnel {
            log_tunnel(prober.path(), &key, &result, &mut tunnel_failing);
        }
        log_probe(target, &key, &result, transition, &state);
        let event = HealthEvent {
            key: key.clone(),
            result,
            transition,
            up: state.is_up(),
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// A tunnel probe that starts failing is a warning, with its reason,
/// whatever the direct probe says (a backend that serves on its own
/// address but not through the tunnel loses every client packet); one
/// that passes again is logged at info level. Not every failure: there is
/// one per interval.
fn log_tunnel<K: fmt::Display>(
    path: &TunnelPath,
    key: &K,
    result: &ProbeResult,
    failing: &mut bool,
) {
    match (&result.tunnel_failure, *failing) {
        (Some(reason), false) => warn!(
            backend = %path.backend,
            vip = %path.vip,
            tunnel_source = %path.outer_src,
            check = %key,
            reason = %reason,
            "health check: probe through the tunnel failed"
        ),
        (None, true) => info!(
            backend = %path.backend,
            vip = %path.vip,
            check = %key,
            "health check: probe through the tunnel passes again"
        ),
        _ => {}
    }
    *failing = result.tunnel_failure.is_some();
}

/// Transitions at info level (they change forwarding); single results at
/// debug level (there is one per backend per interval).
fn log_probe<K: fmt::Display>(
    target: Target,
    key: &K,
    result: &ProbeResult,
    transition: Option<Transition>,
    state: &HealthState,
) {
    let consecutive = if result.success {
        state.consecutive_successes()
    } else {
        state.consecutive_failures()
    };
    match transition {
        Some(t) => info!(
            backend = %target.addr,
            port = target.port,
            check = %key,
            state = %t,
            reason = %result.reason,
            consecutive,
            latency = ?result.latency,
            "health check: backend {t}"
        ),
        None => debug!(
            backend = %target.addr,
            port = target.port,
            check = %key,
            success = result.success,
            reason = %result.reason,
            consecutive,
            latency = ?result.latency,
            "health check"
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Every probe test talks to a server the test opens itself on loopback;
    //! every wait is bounded by `PATIENCE` so a bug fails instead of hanging.

    use tokio::{net::TcpListener, time::timeout};

    use super::*;

    const LOOP4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LOOP6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    const PATIENCE: Duration = Duration::from_secs(2);

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            interval_ms: 50,
            timeout_ms: 100,
            rise: 2,
            fall: 3,
            ..HealthCheck::default()
        }
    }

    fn at(addr: IpAddr, port: u16) -> Target {
        Target { addr, port }
    }

    /// Loopback addresses to test on: IPv6 only where the host has it
    /// (some containers run without).
    fn loopbacks() -> Vec<IpAddr> {
        let v6 = std::net::TcpListener::bind((LOOP6, 0)).is_ok();
        if !v6 {
            eprintln!("no IPv6 loopback: testing IPv4 only");
        }
        [Some(LOOP4), v6.then_some(LOOP6)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port(addr: IpAddr) -> u16 {
        let listener = TcpListener::bind((addr, 0)).await.unwrap();
        listener.local_addr().unwrap().port()
    }

    // --- state machine ---

    fn feed(state: &mut HealthState, results: &[bool]) -> Vec<Option<Transition>> {
        results.iter().map(|&r| state.record(r)).collect()
    }

    #[test]
    fn initial_state_is_what_the_daemon_says() {
        assert!(HealthState::new(2, 3, true).is_up());
        assert!(!HealthState::new(2, 3, false).is_up());
    }

    #[test]
    fn up_backend_goes_down_after_fall_failures() {
        let mut s = HealthState::new(2, 3, true);
        assert_eq!(feed(&mut s, &[false, false]), [None, None]);
        assert!(s.is_up());
        assert_eq!(s.consecutive_failures(), 2);
        assert_eq!(s.record(false), Some(Transition::Down));
        assert!(!s.is_up());
        assert_eq!(feed(&mut s, &[false, false]), [None, None], "already down");
        assert_eq!(s.consecutive_failures(), 5);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut s = HealthState::new(2, 3, true);
        let results = [false, false, true, false, false];
        assert_eq!(feed(&mut s, &results), [None; 5]);
        assert!(s.is_up());
        assert_eq!(
            (s.consecutive_successes(), s.consecutive_failures()),
            (0, 2)
        );
        assert_eq!(s.record(false), Some(Transition::Down));
    }

    #[test]
    fn down_backend_comes_up_after_rise_successes() {
        let mut s = HealthState::new(2, 3, false);
        assert_eq!(s.record(true), None);
        assert_eq!(s.consecutive_successes(), 1);
        assert_eq!(s.record(true), Some(Transition::Up));
        assert!(s.is_up());
        assert_eq!(s.record(true), None, "already up");
    }

    #[test]
    fn a_failure_resets_the_success_count() {
        let mut s = HealthState::new(3, 3, false);
        let results = [true, true, false, true, true];
        assert_eq!(feed(&mut s, &results), [None; 5]);
        assert!(!s.is_up());
        assert_eq!(s.record(true), Some(Transition::Up));
    }

    #[test]
    fn full_cycle_down_and_up_again() {
        let mut s = HealthState::new(2, 2, true);
        let results = [true, false, false, true, false, true, true, false];
        let expected = [
            None,
            None,
            Some(Transition::Down),
            None,
            None,
            None,
            Some(Transition::Up),
            None,
        ];
        assert_eq!(feed(&mut s, &results), expected);
    }

    #[test]
    fn thresholds_of_one_act_on_every_result() {
        let mut s = HealthState::new(1, 1, true);
        let results = [false, true, false];
        let expected = [
            Some(Transition::Down),
            Some(Transition::Up),
            Some(Transition::Down),
        ];
        assert_eq!(feed(&mut s, &results), expected);
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut s = HealthState::new(0, 0, true);
        assert_eq!(s.record(false), Some(Transition::Down));
        assert_eq!(s.record(true), Some(Transition::Up));
    }

    // --- kind none ---

    #[tokio::test]
    async fn unchecked_backend_is_up_without_io() {
        // TEST-NET-1, port 0: any real I/O would fail.
        let nowhere = at(IpAddr::from([192, 0, 2, 1]), 0);
        let r = probe(&check(CheckKind::None), nowhere).await;
        assert_eq!(r, ProbeResult::unchecked());
    }

    // --- the two parts of a probe through the tunnel ---

    #[test]
    fn a_probe_through_the_tunnel_passes_only_if_both_parts_do() {
        let ok = |s: &str| Ok(s.to_string());
        let err = |s: &str| Err(s.to_string());
        let syn_ack = || ok("SYN-ACK");
        let no_reply = || err("no SYN-ACK within 500 ms");
        let cases = [
            (
                ok("HTTP 200"),
                syn_ack(),
                true,
                "HTTP 200; through the tunnel: SYN-ACK",
            ),
            (err("HTTP 503"), syn_ack(), false, "HTTP 503"),
            (
                ok("HTTP 200"),
                no_reply(),
                false,
                "through the tunnel: no SYN-ACK within 500 ms",
            ),
            (
                err("connect refused"),
                no_reply(),
                false,
                "connect refused; through the tunnel: no SYN-ACK within 500 ms",
            ),
        ];
        for (direct, through, success, reason) in cases {
            let tunnel_failed = through.is_err();
            let r = combine(direct, through, Duration::from_millis(3));
            assert_eq!((r.success, r.reason.as_str()), (success, reason));
            assert_eq!(r.latency, Duration::from_millis(3));
            assert_eq!(
                r.tunnel_failure.as_deref(),
                tunnel_failed.then_some("through the tunnel: no SYN-ACK within 500 ms")
            );
        }
    }

    // --- TCP ---

    #[tokio::test]
    async fn tcp_is_up_when_a_listener_accepts() {
        for addr in loopbacks() {
            let listener = TcpListener::bind((addr, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let r = probe(&check(CheckKind::Tcp), at(addr, port)).await;
            assert_eq!(
                (r.success, r.reason.as_str()),
                (true, "connected"),
                "{addr}"
            );
        }
    }

    #[tokio::test]
    async fn tcp_is_down_when_refused() {
        for addr in loopbacks() {
            let port = closed_port(addr).await;
            let r = probe(&check(CheckKind::Tcp), at(addr, port)).await;
            assert_eq!(
                (r.success, r.reason.as_str()),
                (false, "connect refused"),
                "{addr}"
            );
        }
    }

    // --- HTTP ---

    /// A one-shot HTTP server: accepts one connection, reads the request
    /// head, writes `response` and closes. Yields the request it got.
    async fn http_server(addr: IpAddr, response: &'static [u8]) -> (u16, JoinHandle<String>) {
        let listener = TcpListener::bind((addr, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let request = read_head(&mut conn).await;
            conn.write_all(response).await.unwrap();
            request
        });
        (port, server)
    }

    async fn read_head(conn: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut chunk = [0u8; 512];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            let n = conn.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(head).unwrap()
    }

    async fn http_probe(check: &HealthCheck, response: &'static [u8]) -> (ProbeResult, String) {
        let (port, server) = http_server(LOOP4, response).await;
        let r = probe(check, at(LOOP4, port)).await;
        let request = timeout(PATIENCE, server).await.unwrap().unwrap();
        (r, request)
    }

    #[tokio::test]
    async fn http_sends_the_configured_path_and_host() {
        let mut c = check(CheckKind::Http);
        c.path = Some("/healthz?full=1".into());
        c.host = Some("api.example".into());
        let (r, request) = http_probe(&c, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!((r.success, r.reason.as_str()), (true, "HTTP 200"));
        assert_eq!(
            request,
            "GET /healthz?full=1 HTTP/1.1\r\nHost: api.example\r\n\
             User-Agent: lbd-health-check\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn http_defaults_to_slash_and_the_address_as_host() {
        for addr in loopbacks() {
            let (port, server) = http_server(addr, b"HTTP/1.0 204 No Content\r\n\r\n").await;
            let r = probe(&check(CheckKind::Http), at(addr, port)).await;
            assert!(r.success, "{addr}: {}", r.reason);
            let request = timeout(PATIENCE, server).await.unwrap().unwrap();
            let host = match addr {
                IpAddr::V4(_) => "127.0.0.1",
                IpAddr::V6(_) => "[::1]",
            };
            let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
            assert!(request.starts_with(&head), "{request:?}");
            assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
        }
    }

    #[tokio::test]
    async fn http_2xx_and_3xx_are_up_others_down() {
        let cases: [(&[u8], bool, &str); 5] = [
            (b"HTTP/1.1 200 OK\r\n\r\n", true, "HTTP 200"),
            (
                b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n",
                true,
                "HTTP 302",
            ),
            (b"HTTP/1.1 404 Not Found\r\n\r\n", false, "HTTP 404"),
            (
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                false,
                "HTTP 503",
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, "HTTP 100"),
        ];
        for (response, success, reason) in cases {
            let (r, _) = http_probe(&check(CheckKind::Http), response).await;
            assert_eq!((r.success, r.reason.as_str()), (success, reason));
        }
    }

    #[tokio::test]
    async fn http_reads_the_report_header_only_when_asked() {
        let response: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nEndpoint-Load-Metrics: TEXT utilization=0.5\r\n\r\n";
        let (port, _server) = http_server(LOOP4, response).await;
        let c = check(CheckKind::Http);
        let r = probe_reporting(&c, at(LOOP4, port), Some("endpoint-load-metrics")).await;
        assert!(r.success, "{}", r.reason);
        assert_eq!(r.report.as_deref(), Some("TEXT utilization=0.5"));
        let (port, _server) = http_server(LOOP4, response).await;
        assert_eq!(probe(&c, at(LOOP4, port)).await.report, None);
        // A head that never ends within the bound: up, without a report.
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b"X-Pad: 0123456789\r\n", 600).flatten());
        let long: &'static [u8] = long.leak();
        let (port, _server) = http_server(LOOP4, long).await;
        let r = probe_reporting(&c, at(LOOP4, port), Some("endpoint-load-metrics")).await;
        assert!(r.success, "{}", r.reason);
        assert_eq!(r.report, None);
        // A failing status carries no report.
        let (port, _server) = http_server(
            LOOP4,
            b"HTTP/1.1 503 Busy\r\nendpoint-load-metrics: utilization=1\r\n\r\n",
        )
        .await;
        let r = probe_reporting(&c, at(LOOP4, port), Some("endpoint-load-metrics")).await;
        assert_eq!((r.success, r.report), (false, None));
    }

    #[tokio::test]
    async fn http_garbage_is_down() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"SSH-2.0-OpenSSH_9.6\r\n",
                r#"bad HTTP status line "SSH-2.0-OpenSSH_9.6""#,
            ),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                r#"bad HTTP status line "HTTP/1.1 2000 OK""#,
            ),
            (b"", "connection closed without a response"),
            (
                b"HTTP/1.1 20",
                r#"connection closed in status line "HTTP/1.1 20""#,
            ),
        ];
        for (response, reason) in cases {
            let (r, _) = http_probe(&check(CheckKind::Http), response).await;
            assert_eq!((r.success, r.reason.as_str()), (false, reason));
        }
    }

    #[tokio::test]
    async fn http_status_line_may_arrive_in_pieces() {
        let listener = TcpListener::bind((LOOP4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.set_nodelay(true).unwrap();
            read_head(&mut conn).await;
            for piece in [&b"HTTP/1.1 2"[..], b"00 O", b"K\r\n\r\n"] {
                conn.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let r = probe(&check(CheckKind::Http), at(LOOP4, port)).await;
        assert_eq!((r.success, r.reason.as_str()), (true, "HTTP 200"));
    }

    #[tokio::test]
    async fn http_silent_server_times_out() {
        let listener = TcpListener::bind((LOOP4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and reads, never answers; held until the test ends.
        let _server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            read_head(&mut conn).await;
            std::future::pending::<()>().await;
        });
        let r = probe(&check(CheckKind::Http), at(LOOP4, port)).await;
        assert_eq!(
            (r.success, r.reason.as_str()),
            (false, "timeout after 100 ms")
        );
        assert!(r.latency >= Duration::from_millis(100), "{:?}", r.latency);
        assert!(r.latency < Duration::from_millis(500), "{:?}", r.latency);
    }

    #[tokio::test]
    async fn http_refused_is_down() {
        let port = closed_port(LOOP4).await;
        let r = probe(&check(CheckKind::Http), at(LOOP4, port)).await;
        assert_eq!((r.success, r.reason.as_str()), (false, "connect refused"));
    }

    #[tokio::test]
    async fn http_refuses_to_send_a_broken_request() {
        let port = closed_port(LOOP4).await;
        let mut c = check(CheckKind::Http);
        c.path = Some("/x HTTP/1.1\r\nX-Evil: 1".into());
        let r = probe(&c, at(LOOP4, port)).await;
        assert!(!r.success);
        assert!(r.reason.starts_with("invalid HTTP path"), "{}", r.reason);
    }

    // --- UDP ---

    /// A UDP server answering every datagram with `reply(datagram)`. Yields
    /// its port and a channel of the datagrams it received.
    async fn udp_server(
        addr: IpAddr,
        reply: fn(&[u8]) -> Vec<u8>,
    ) -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
        let socket = UdpSocket::bind((addr, 0)).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                let _ = seen_tx.send(buf[..n].to_vec());
                socket.send_to(&reply(&buf[..n]), from).await.unwrap();
            }
        });
        (port, seen)
    }

    fn udp_check(payload: &str, expect: Option<&str>) -> HealthCheck {
        HealthCheck {
            payload: Some(payload.into()),
            expect: expect.map(Into::into),
            ..check(CheckKind::Udp)
        }
    }

    #[tokio::test]
    async fn udp_echo_is_up() {
        for addr in loopbacks() {
            let (port, mut seen) = udp_server(addr, <[u8]>::to_vec).await;
            let r = probe(&udp_check("ping", None), at(addr, port)).await;
            assert_eq!(
                (r.success, r.reason.as_str()),
                (true, "UDP reply"),
                "{addr}"
            );
            assert_eq!(seen.recv().await.unwrap(), b"ping");
        }
    }

    #[tokio::test]
    async fn udp_reply_must_start_with_expect() {
        let (port, _seen) = udp_server(LOOP4, |_| b"PONG v2".to_vec()).await;
        let ok = probe(&udp_check("PING", Some("PONG")), at(LOOP4, port)).await;
        assert_eq!((ok.success, ok.reason.as_str()), (true, "UDP reply"));
        let bad = probe(&udp_check("PING", Some("PONG v3")), at(LOOP4, port)).await;
        assert_eq!(
            (bad.success, bad.reason.as_str()),
            (false, r#"unexpected UDP reply "PONG v2""#)
        );
    }

    #[tokio::test]
    async fn udp_without_reply_is_down() {
        // Bound, so no port unreachable comes back, but never read.
        let silent = UdpSocket::bind((LOOP4, 0)).await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let r = probe(&udp_check("ping", None), at(LOOP4, port)).await;
        assert_eq!(
            (r.success, r.reason.as_str()),
            (false, "no UDP reply after 100 ms")
        );
    }

    #[tokio::test]
    async fn udp_port_unreachable_is_down_at_once() {
        let port = {
            let socket = UdpSocket::bind((LOOP4, 0)).await.unwrap();
            socket.local_addr().unwrap().port()
        };
        let r = probe(&udp_check("ping", None), at(LOOP4, port)).await;
        assert_eq!((r.success, r.reason.as_str()), (false, "port unreachable"));
        assert!(r.latency < Duration::from_millis(100), "{:?}", r.latency);
    }

    // --- checker task ---

    async fn next_event<K>(rx: &mut mpsc::Receiver<HealthEvent<K>>) -> HealthEvent<K> {
        timeout(PATIENCE, rx.recv())
            .await
            .expect("no health event in time")
            .expect("checker ended")
    }

    /// Wait for `transition`; returns how many results of its kind came
    /// in a row, ending with the one that caused it.
    async fn streak_until<K: fmt::Debug>(
        rx: &mut mpsc::Receiver<HealthEvent<K>>,
        transition: Transition,
    ) -> u32 {
        let wanted = transition == Transition::Up;
        let mut streak = 0;
        loop {
            let ev = next_event(rx).await;
            streak = if ev.result.success == wanted {
                streak + 1
            } else {
                0
            };
            if let Some(t) = ev.transition {
                assert_eq!(t, transition, "{ev:?}");
                assert_eq!(ev.up, wanted);
                return streak;
            }
        }
    }

    #[tokio::test]
    async fn checker_reports_down_then_up_again() {
        let c = HealthCheck {
            timeout_ms: 50,
            ..check(CheckKind::Tcp)
        };
        let (interval, rise, fall) = (Duration::from_millis(50), c.rise, c.fall);
        let slack = Duration::from_millis(250);
        let listener = TcpListener::bind((LOOP4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = mpsc::channel(16);
        let task = spawn_checker(c, at(LOOP4, port), None, None, "web-1", true, tx);

        let first = next_event(&mut rx).await;
        assert_eq!(first.key, "web-1");
        assert!(first.result.success && first.up && first.transition.is_none());

        drop(listener);
        let gone = Instant::now();
        assert_eq!(streak_until(&mut rx, Transition::Down).await, fall);
        assert!(
            gone.elapsed() < interval * fall + slack,
            "{:?}",
            gone.elapsed()
        );

        // tokio sets SO_REUSEADDR, so the same port can be bound again.
        let _back = TcpListener::bind((LOOP4, port)).await.unwrap();
        let back = Instant::now();
        assert_eq!(streak_until(&mut rx, Transition::Up).await, rise);
        assert!(
            back.elapsed() < interval * rise + slack,
            "{:?}",
            back.elapsed()
        );

        drop(rx);
        timeout(PATIENCE, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn new_backend_must_pass_rise_checks() {
        let listener = TcpListener::bind((LOOP4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = mpsc::channel(16);
        let _task = spawn_checker(
            check(CheckKind::Tcp),
            at(LOOP4, port),
            None,
            None,
            7u32,
            false,
            tx,
        );
        let first = next_event(&mut rx).await;
        assert!(first.result.success && !first.up && first.transition.is_none());
        let second = next_event(&mut rx).await;
        assert_eq!((second.transition, second.up), (Some(Transition::Up), true));
    }

    #[tokio::test]
    async fn unchecked_backend_gets_one_event_and_the_task_ends() {
        let (tx, mut rx) = mpsc::channel(4);
        let nowhere = at(IpAddr::from([192, 0, 2, 1]), 0);
        let task = spawn_checker(check(CheckKind::None), nowhere, None, None, "b", false, tx);
        let ev = next_event(&mut rx).await;
        assert_eq!((ev.transition, ev.up), (Some(Transition::Up), true));
        assert!(ev.result.success);
        timeout(PATIENCE, task).await.unwrap().unwrap();
        assert!(rx.recv().await.is_none(), "only one event");
    }

    #[tokio::test]
    async fn checker_stops_when_the_receiver_is_dropped() {
        let listener = TcpListener::bind((LOOP4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = HealthCheck {
            interval_ms: 60_000,
            ..check(CheckKind::Tcp)
        };
        let (tx, mut rx) = mpsc::channel(4);
        let task = spawn_checker(c, at(LOOP4, port), None, None, "b", true, tx);
        next_event(&mut rx).await;
        // The next probe is a minute away: the task must not wait for it.
        drop(rx);
        timeout(Duration::from_millis(500), task)
            .await
            .expect("checker still running")
            .unwrap();
    }
}
