//! Health checks: probes (TCP connect, HTTP GET, UDP request/reply), the
//! rise/fall state machine with HAProxy's meaning, and a checker task per
//! backend that reports every result to the daemon.
//!
//! A backend goes down after `fall` failures in a row while up, and up
//! after `rise` successes in a row while down. A backend new to lbd starts
//! down when checks are enabled (it must prove itself before it gets
//! traffic); one adopted from a running data plane starts in the state the
//! data plane had, so restarting lbd never blackholes traffic.

use std::{
    fmt::Debug,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tracing::info;

use crate::config::{CheckKind, HealthCheck};

/// Where a check goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub success: bool,
    /// Short and human-readable: "connected", "HTTP 503", "timeout after 500 ms".
    pub reason: String,
    pub latency: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Consecutive-result counting with `rise` and `fall` thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    successes: u32,
    failures: u32,
}

impl HealthState {
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

    /// Record one result; returns the transition it caused, if any.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }

    /// Results of the current kind in a row.
    pub fn streak(&self) -> u32 {
        self.successes.max(self.failures)
    }
}

/// One probe of `target` as `check` says, bounded by its timeout.
pub async fn probe(check: &HealthCheck, target: Target) -> ProbeResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(check.timeout_ms);
    let outcome = match check.kind {
        CheckKind::None => Ok("not checked".to_string()),
        kind => match tokio::time::timeout(timeout, run(kind, check, target)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timeout after {} ms", check.timeout_ms)),
        },
    };
    let latency = started.elapsed();
    match outcome {
        Ok(reason) => ProbeResult {
            success: true,
            reason,
            latency,
        },
        Err(reason) => ProbeResult {
            success: false,
            reason,
            latency,
        },
    }
}

async fn run(kind: CheckKind, check: &HealthCheck, target: Target) -> Result<String, String> {
    let sock = SocketAddr::new(target.addr, target.port);
    match kind {
        CheckKind::None => Ok("not checked".into()),
        CheckKind::Tcp => TcpStream::connect(sock)
            .await
            .map(|_| "connected".into())
            .map_err(io_reason),
        CheckKind::Http => http(check, target).await,
        CheckKind::Udp => udp(check, sock).await,
    }
}

fn io_reason(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

async fn http(check: &HealthCheck, target: Target) -> Result<String, String> {
    let mut stream = TcpStream::connect((target.addr, target.port))
        .await
        .map_err(io_reason)?;
    let host = match &check.host {
        Some(h) => h.clone(),
        None if target.addr.is_ipv6() => format!("[{}]", target.addr),
        None => target.addr.to_string(),
    };
    let path = check.path.as_deref().unwrap_or("/");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_reason)?;
    // The status line is all we need; read until its end or 1 KiB.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = stream.read(&mut chunk).await.map_err(io_reason)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let code = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ => {
            return Err(format!(
                "not an HTTP response: {:?}",
                line.chars().take(40).collect::<String>()
            ));
        }
    };
    if (200..400).contains(&code) {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code}"))
    }
}

async fn udp(check: &HealthCheck, target: SocketAddr) -> Result<String, String> {
    let local: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io_reason)?;
    socket.connect(target).await.map_err(io_reason)?;
    let payload = check.payload.as_deref().unwrap_or("");
    socket.send(payload.as_bytes()).await.map_err(io_reason)?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).await.map_err(|e| match e.kind() {
        // An ICMP port unreachable comes back as a refused receive.
        std::io::ErrorKind::ConnectionRefused => "port unreachable".to_string(),
        _ => io_reason(e),
    })?;
    match &check.expect {
        Some(prefix) if !buf[..n].starts_with(prefix.as_bytes()) => {
            Err("unexpected UDP reply".into())
        }
        _ => Ok(format!("UDP reply of {n} bytes")),
    }
}

/// What a checker reports after every probe.
#[derive(Clone, Debug)]
pub struct HealthEvent<K> {
    pub key: K,
    pub result: ProbeResult,
    pub transition: Option<Transition>,
    /// State after this probe.
    pub up: bool,
}

/// Probe `target` every `check.interval_ms` until the receiver goes away.
/// Without checks, one event (up) is sent and the task ends.
pub fn spawn_checker<K: Clone + Debug + Send + 'static>(
    check: HealthCheck,
    target: Target,
    key: K,
    initially_up: bool,
    tx: mpsc::Sender<HealthEvent<K>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if check.kind == CheckKind::None {
            let result = ProbeResult {
                success: true,
                reason: "not checked".into(),
                latency: Duration::ZERO,
            };
            let _ = tx
                .send(HealthEvent {
                    key,
                    result,
                    transition: None,
                    up: true,
                })
                .await;
            return;
        }
        let mut state = HealthState::new(check.rise, check.fall, initially_up);
        let mut ticker = tokio::time::interval(Duration::from_millis(check.interval_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = probe(&check, target).await;
            let transition = state.record(result.success);
            if let Some(t) = transition {
                info!(
                    backend = %target.addr,
                    port = target.port,
                    reason = %result.reason,
                    streak = state.streak(),
                    "health check: backend {}",
                    if t == Transition::Up { "up" } else { "down" }
                );
            }
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
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener as StdListener;

    use tokio::net::TcpListener;

    use super::*;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            timeout_ms: 200,
            interval_ms: 50,
            rise: 2,
            fall: 3,
            ..HealthCheck::default()
        }
    }

    fn local(port: u16) -> Target {
        Target {
            addr: IpAddr::from([127, 0, 0, 1]),
            port,
        }
    }

    fn free_port() -> u16 {
        StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn state_machine_follows_rise_and_fall() {
        let mut s = HealthState::new(2, 3, true);
        assert_eq!([false, false].map(|r| s.record(r)), [None, None]);
        assert_eq!(s.record(true), None, "a success resets the failure count");
        assert_eq!(
            [false, false, false].map(|r| s.record(r)),
            [None, None, Some(Transition::Down)]
        );
        assert!(!s.is_up());
        assert_eq!(
            [true, false, true, true].map(|r| s.record(r)),
            [None, None, None, Some(Transition::Up)]
        );
        let mut new = HealthState::new(2, 3, false);
        assert_eq!(new.record(true), None);
        assert_eq!(new.record(true), Some(Transition::Up));
    }

    #[tokio::test]
    async fn tcp_check_sees_listener_and_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(probe(&check(CheckKind::Tcp), local(port)).await.success);
        let closed = free_port();
        let r = probe(&check(CheckKind::Tcp), local(closed)).await;
        assert_eq!(
            (r.success, r.reason.as_str()),
            (false, "connection refused")
        );
    }

    async fn http_server(response: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, task)
    }

    #[tokio::test]
    async fn http_check_sends_path_and_host_and_reads_the_status() {
        let (port, server) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let mut c = check(CheckKind::Http);
        c.path = Some("/healthz".into());
        c.host = Some("api.example".into());
        let r = probe(&c, local(port)).await;
        assert_eq!((r.success, r.reason.as_str()), (true, "HTTP 200"));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\nHost: api.example\r\n"),
            "{request}"
        );

        for (response, up, reason) in [
            ("HTTP/1.1 302 Found\r\n\r\n", true, "HTTP 302"),
            (
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
                false,
                "HTTP 503",
            ),
            (
                "SSH-2.0-OpenSSH\r\n",
                false,
                "not an HTTP response: \"SSH-2.0-OpenSSH\"",
            ),
        ] {
            let (port, _server) = http_server(response).await;
            let r = probe(&check(CheckKind::Http), local(port)).await;
            assert_eq!((r.success, r.reason.as_str()), (up, reason));
        }
    }

    #[tokio::test]
    async fn http_check_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(s);
        });
        let r = probe(&check(CheckKind::Http), local(port)).await;
        assert_eq!(
            (r.success, r.reason.as_str()),
            (false, "timeout after 200 ms")
        );
    }

    #[tokio::test]
    async fn udp_check_needs_a_matching_reply() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let reply = if &buf[..n] == b"ping" {
                    &b"pong"[..]
                } else {
                    &b"what"[..]
                };
                server.send_to(reply, from).await.unwrap();
            }
        });
        let mut c = check(CheckKind::Udp);
        c.payload = Some("ping".into());
        c.expect = Some("pong".into());
        assert!(probe(&c, local(port)).await.success);
        c.payload = Some("hello".into());
        assert_eq!(probe(&c, local(port)).await.reason, "unexpected UDP reply");
        let silent = free_port();
        assert!(!probe(&c, local(silent)).await.success);
    }

    #[tokio::test]
    async fn checker_reports_down_then_up() {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = mpsc::channel(64);
        let _task = spawn_checker(check(CheckKind::Tcp), local(port), "b1", true, tx);
        assert!(rx.recv().await.unwrap().up);
        drop(listener);
        let went_down = Instant::now();
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.transition == Some(Transition::Down) {
                break;
            }
        }
        // fall (3) x interval (50 ms), with slack.
        assert!(
            went_down.elapsed() < Duration::from_millis(600),
            "{:?}",
            went_down.elapsed()
        );
        let _back = StdListener::bind(("127.0.0.1", port)).unwrap();
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.transition == Some(Transition::Up) {
                assert!(ev.up);
                break;
            }
        }
    }
}
