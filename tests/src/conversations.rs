//! TCP traffic that shows whether flows survive changes to a cluster:
//! long-lived conversations, each exchanging a checksummed message every
//! 100 ms and checking the echo byte for byte, and a steady stream of new
//! short connections. Both run on one thread inside the client's
//! namespace (a current-thread tokio runtime, so every socket is opened
//! there), and report what each connection saw: resets, closes, corrupt
//! echoes, and the longest wait for an echo (its stall).
//!
//! The backends run [`EchoServer`]: it greets each connection with one
//! byte naming the backend, then echoes what it reads.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{MissedTickBehavior, interval, sleep, timeout},
};

use crate::{backend_server::digest, netns::Netns};

/// Bytes in one message: connection number, sequence number, payload,
/// and the FNV-1a digest of what precedes it.
pub const MESSAGE_LEN: usize = 64;
/// A connection attempt or an echo that takes longer than this has failed
/// (a flow sent to a backend without its socket is reset well before).
const GIVE_UP: Duration = Duration::from_secs(5);

/// Message `seq` of connection `conn`: its bytes depend on both, so an
/// echo from another connection or of another message does not match.
pub fn message(conn: u32, seq: u32) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..4].copy_from_slice(&conn.to_be_bytes());
    m[4..8].copy_from_slice(&seq.to_be_bytes());
    let mut x = (u64::from(conn) << 32 | u64::from(seq)) ^ 0x9e37_79b9_7f4a_7c15;
    for b in &mut m[8..MESSAGE_LEN - 8] {
        // xorshift64: payload that differs in every byte.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = digest(&m[..MESSAGE_LEN - 8]);
    m[MESSAGE_LEN - 8..].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Whether `m`'s last eight bytes are the digest of the rest.
pub fn intact(m: &[u8; MESSAGE_LEN]) -> bool {
    m[MESSAGE_LEN - 8..] == digest(&m[..MESSAGE_LEN - 8]).to_be_bytes()
}

/// A TCP echo server in a backend's namespace, on its own thread until
/// dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listen on `port` (every address of `ns`, the VIP on its loopback
    /// among them); greet each connection with `id`, then echo.
    pub fn start(ns: &Netns, port: u16, id: u8) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), ns.name.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The runtime's end closes the connections still open.
        let thread = crate::netns::spawn_runtime(name, move || async move {
            let listener = TcpListener::bind(("0.0.0.0", port))
                .await
                .expect("bind the echo server");
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                let Ok(Ok((stream, _))) =
                    timeout(Duration::from_millis(50), listener.accept()).await
                else {
                    continue;
                };
                tokio::spawn(echo(stream, id));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the echo server listening");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

async fn echo(mut stream: TcpStream, id: u8) {
    let _ = stream.set_nodelay(true);
    if stream.write_all(&[id]).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub to: SocketAddr,
    /// Long-lived conversations, opened at the start.
    pub long_lived: u32,
    /// New short connections per second, for as long as the traffic runs.
    pub new_per_second: u32,
    /// Time between two messages of a conversation.
    pub every: Duration,
}

/// Figures that move while the traffic runs, for progress lines.
#[derive(Debug, Default)]
pub struct Live {
    /// Conversations that got their greeting.
    pub open: AtomicU64,
    /// Conversations that ended early (reset, closed, corrupt, no echo).
    pub broken: AtomicU64,
    /// Echoes received intact, over all conversations.
    pub echoes: AtomicU64,
    /// New connections that exchanged their message, and that failed.
    pub new_ok: AtomicU64,
    pub new_failed: AtomicU64,
    /// The longest wait for an echo so far, in microseconds.
    pub max_stall_us: AtomicU64,
}

/// One long-lived conversation, at the end.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub number: u32,
    /// The backend's greeting byte (0 if none came).
    pub backend: u8,
    pub echoes: u64,
    /// The longest time from sending a message to having its echo.
    pub max_stall: Duration,
    /// Why it ended early, if it did.
    pub broken: Option<String>,
}

/// Everything the traffic saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub conversations: Vec<Conversation>,
    pub new_ok: u64,
    /// Each failed new connection's error.
    pub new_failures: Vec<String>,
    /// New connections that succeeded, by the backend that greeted them.
    pub new_by_backend: BTreeMap<u8, u64>,
}

impl Report {
    pub fn broken(&self) -> Vec<&Conversation> {
        self.conversations
            .iter()
            .filter(|c| c.broken.is_some())
            .collect()
    }

    pub fn max_stall(&self) -> Duration {
        self.conversations
            .iter()
            .map(|c| c.max_stall)
            .max()
            .unwrap_or_default()
    }

    /// The share of new connections that succeeded (1 when none ran).
    pub fn new_success_ratio(&self) -> f64 {
        let total = self.new_ok + self.new_failures.len() as u64;
        if total == 0 {
            1.0
        } else {
            self.new_ok as f64 / total as f64
        }
    }

    /// One line: the figures a reader checks first.
    pub fn summary(&self) -> String {
        format!(
            "{} conversations, {} broken, longest stall {} ms; new connections {} ok, {} failed",
            self.conversations.len(),
            self.broken().len(),
            self.max_stall().as_millis(),
            self.new_ok,
            self.new_failures.len()
        )
    }
}

/// Traffic running in the client's namespace until `stop`.
pub struct Traffic {
    pub live: Arc<Live>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Report>>,
}

impl Traffic {
    pub fn start(client: &Netns, plan: Plan) -> Self {
        let live = Arc::new(Live::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, ns) = (live.clone(), stop.clone(), client.name.clone());
        let thread = crate::netns::spawn_runtime(ns, move || run(plan, l, s));
        Self {
            live,
            stop,
            thread: Some(thread),
        }
    }

    /// Wait until every conversation got its greeting, or `within` passed.
    pub fn wait_open(&self, plan: &Plan, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.live.open.load(Ordering::Relaxed) < u64::from(plan.long_lived) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stop sending, let what is in flight finish, and report.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the traffic thread")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(plan: Plan, live: Arc<Live>, stop: Arc<AtomicBool>) -> Report {
    let mut conversations = Vec::new();
    // Opened over a second, so that their messages are spread in time.
    let stagger = Duration::from_secs(1) / plan.long_lived.max(1);
    for number in 0..plan.long_lived {
        conversations.push(tokio::spawn(converse(
            plan,
            number,
            live.clone(),
            stop.clone(),
        )));
        sleep(stagger).await;
    }
    let mut short = Vec::new();
    let mut tick = interval(Duration::from_secs(1) / plan.new_per_second.max(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut number = plan.long_lived;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if plan.new_per_second > 0 {
            short.push(tokio::spawn(one_exchange(plan.to, number, live.clone())));
            number += 1;
        }
    }
    let mut report = Report::default();
    for c in conversations {
        report
            .conversations
            .push(c.await.expect("a conversation task"));
    }
    for s in short {
        match s.await.expect("a connection task") {
            Ok(backend) => {
                report.new_ok += 1;
                *report.new_by_backend.entry(backend).or_default() += 1;
            }
            Err(e) => report.new_failures.push(e),
        }
    }
    report
}

/// Connect and read the greeting: the backend's byte.
async fn open(to: SocketAddr) -> Result<(TcpStream, u8), String> {
    let mut stream = timeout(GIVE_UP, TcpStream::connect(to))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut id = [0u8; 1];
    timeout(GIVE_UP, stream.read_exact(&mut id))
        .await
        .map_err(|_| "greeting: timed out".to_string())?
        .map_err(|e| format!("greeting: {e}"))?;
    Ok((stream, id[0]))
}

/// Send message `seq` and read its echo; the time that took.
async fn exchange(stream: &mut TcpStream, conn: u32, seq: u32) -> Result<Duration, String> {
    let sent = message(conn, seq);
    let started = Instant::now();
    stream
        .write_all(&sent)
        .await
        .map_err(|e| format!("message {seq}: send: {e}"))?;
    let mut back = [0u8; MESSAGE_LEN];
    match timeout(GIVE_UP, stream.read_exact(&mut back)).await {
        Err(_) => return Err(format!("message {seq}: no echo within {GIVE_UP:?}")),
        Ok(Err(e)) => return Err(format!("message {seq}: echo: {e}")),
        Ok(Ok(_)) => {}
    }
    if back != sent || !intact(&back) {
        return Err(format!(
            "message {seq}: the echo differs from what was sent"
        ));
    }
    Ok(started.elapsed())
}

async fn converse(plan: Plan, number: u32, live: Arc<Live>, stop: Arc<AtomicBool>) -> Conversation {
    let mut c = Conversation {
        number,
        backend: 0,
        echoes: 0,
        max_stall: Duration::ZERO,
        broken: None,
    };
    let mut stream = match open(plan.to).await {
        Ok((stream, backend)) => {
            c.backend = backend;
            stream
        }
        Err(e) => {
            live.broken.fetch_add(1, Ordering::Relaxed);
            c.broken = Some(e);
            return c;
        }
    };
    live.open.fetch_add(1, Ordering::Relaxed);
    let mut tick = interval(plan.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match exchange(&mut stream, number, seq).await {
            Ok(took) => {
                c.echoes += 1;
                c.max_stall = c.max_stall.max(took);
                live.echoes.fetch_add(1, Ordering::Relaxed);
                live.max_stall_us
                    .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                live.broken.fetch_add(1, Ordering::Relaxed);
                c.broken = Some(e);
                return c;
            }
        }
        seq += 1;
    }
    c
}

/// One short connection: greeting, one message, its echo, close.
async fn one_exchange(to: SocketAddr, number: u32, live: Arc<Live>) -> Result<u8, String> {
    let result = async {
        let (mut stream, backend) = open(to).await?;
        exchange(&mut stream, number, 0).await?;
        Ok(backend)
    }
    .await;
    match result {
        Ok(_) => live.new_ok.fetch_add(1, Ordering::Relaxed),
        Err(_) => live.new_failed.fetch_add(1, Ordering::Relaxed),
    };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_differ_and_carry_their_digest() {
        let (a, b) = (message(1, 2), message(2, 1));
        assert_ne!(a, b);
        assert!(intact(&a) && intact(&b));
        let mut bad = a;
        bad[20] ^= 1;
        assert!(!intact(&bad));
    }
}
