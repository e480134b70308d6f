//! A simulated inference server (vLLM-like) for the load-aware balancing
//! tests, bench and demo, and the client that drives streams at it.
//!
//! The server runs in a backend's namespace on its own thread (a
//! current-thread tokio runtime, so its socket is opened there) until
//! dropped. It speaks just enough HTTP/1.1, one request per connection:
//!
//! - `GET /generate?tokens=N[&stream=K]` (or `POST`, the body is read and
//!   ignored): `200`, header `x-backend: NAME`, then N token lines
//!   ([`token_line`]) and an end line ([`end_line`]), streamed as they are
//!   made, with `Connection: close` and no length: the end line tells a
//!   complete stream from a cut one. Token `i` follows token `i - 1`
//!   after `base_token_ms × slowness × (1 + per_stream_penalty ×
//!   (running - 1))` ms, `running` being the streams producing tokens at
//!   that moment. At most `max_running` streams run; the others wait
//!   (counted as waiting) before their first token, in arrival order.
//! - `GET /metrics`: Prometheus text ([`metrics_text`]): the gauges
//!   `vllm:num_requests_running`, `vllm:num_requests_waiting`,
//!   `vllm:gpu_cache_usage_perc` (running over `max_running`).
//! - `GET /health`: `200`, with the load in an ORCA-like header
//!   ([`load_header`]): `endpoint-load-metrics: TEXT utilization=U,
//!   rps_fractional=R, named_metrics.waiting=W`.
//!
//! [`Reporting`] switches the two report endpoints off while `/generate`
//! keeps working. The client, [`StreamLoad`], runs a bounded number of
//! streams with bounded concurrency from the client's namespace and
//! checks each byte for byte.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{sleep, timeout},
};

use crate::netns::Netns;

/// The most tokens one request may ask for.
pub const MAX_TOKENS: u32 = 100_000;
/// The longest request head the server reads.
const MAX_HEAD: usize = 8192;
/// How long a report endpoint in [`Reporting::Hang`] holds a connection.
const HANG_FOR: Duration = Duration::from_secs(60);
/// The window over which `rps_fractional` counts requests.
const RPS_WINDOW: Duration = Duration::from_secs(5);
/// Streams the server remembers (bytes sent each), the oldest forgotten.
const MAX_RECORDS: usize = 100_000;

/// One server's behaviour.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Named in the `x-backend` header and in every token line.
    pub name: String,
    /// Time per token of a lone stream at slowness 1.
    pub base_token_ms: f64,
    /// How much slower than the base this server is (3.0: three times).
    pub slowness: f64,
    /// Extra time per token for each other running stream, as a share of
    /// the lone stream's (0.1: ten other streams double it).
    pub per_stream_penalty: f64,
    /// Streams producing tokens at once; more wait in a queue.
    pub max_running: usize,
}

impl SimConfig {
    /// Defaults for a fleet member: 20 ms per token, slowness 1, 10% per
    /// other stream, 16 streams at once.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            base_token_ms: 20.0,
            slowness: 1.0,
            per_stream_penalty: 0.1,
            max_running: 16,
        }
    }
}

/// What `/metrics` and `/health` do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporting {
    /// Both answer with the load.
    On,
    /// `/metrics` answers `503`; `/health` answers `200` without the load
    /// header: the server is healthy but reports no load.
    NoLoad,
    /// Both answer `503`.
    Unavailable,
    /// Both read the request and never answer (the connection is held,
    /// up to a minute or until the server stops): a report that times
    /// out.
    Hang,
}

/// The load a server reports, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSnapshot {
    pub running: usize,
    pub waiting: usize,
    pub max_running: usize,
    /// Generate requests per second, over the last few seconds.
    pub rps: f64,
}

impl LoadSnapshot {
    /// Running streams over `max_running`, 0 to 1.
    pub fn utilization(&self) -> f64 {
        if self.max_running == 0 {
            return 0.0;
        }
        (self.running as f64 / self.max_running as f64).min(1.0)
    }
}

/// The value of the `endpoint-load-metrics` header for `load`.
pub fn load_header(load: &LoadSnapshot) -> String {
    format!(
        "TEXT utilization={:.3}, rps_fractional={:.3}, named_metrics.waiting={}",
        load.utilization(),
        load.rps,
        load.waiting
    )
}

/// The `key=value` pairs of an `endpoint-load-metrics` value in the text
/// form (comma-separated, an optional `TEXT ` prefix); `None` if a pair
/// is malformed or a value is not a number.
pub fn parse_load_header(value: &str) -> Option<BTreeMap<String, f64>> {
    let value = value.trim();
    let pairs = value.strip_prefix("TEXT ").unwrap_or(value);
    let mut out = BTreeMap::new();
    for pair in pairs.split(',') {
        let (key, v) = pair.trim().split_once('=')?;
        if key.is_empty() {
            return None;
        }
        out.insert(key.to_string(), v.trim().parse().ok()?);
    }
    Some(out)
}

/// The `/metrics` body for `load`, in the Prometheus text format.
pub fn metrics_text(load: &LoadSnapshot) -> String {
    let gauge = |name: &str, help: &str, value: String| {
        format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
    };
    [
        gauge(
            "vllm:num_requests_running",
            "Requests producing tokens.",
            load.running.to_string(),
        ),
        gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for their first token.",
            load.waiting.to_string(),
        ),
        gauge(
            "vllm:gpu_cache_usage_perc",
            "Share of the running slots in use, 0 to 1.",
            format!("{:.3}", load.utilization()),
        ),
    ]
    .concat()
}

/// Token `seq` of stream `stream` from server `name`: one line, the same
/// bytes every time, so a client can check a stream byte for byte.
pub fn token_line(name: &str, stream: u64, seq: u32) -> String {
    format!("token {seq:06} stream {stream} from {name}\n")
}

/// The line that ends a complete stream of `tokens` tokens.
pub fn end_line(name: &str, stream: u64, tokens: u32) -> String {
    format!("end {tokens} stream {stream} from {name}\n")
}

/// Everything stream `stream` of `tokens` tokens from `name` sends after
/// its headers.
pub fn expected_body(name: &str, stream: u64, tokens: u32) -> String {
    let mut body: String = (0..tokens).map(|i| token_line(name, stream, i)).collect();
    body.push_str(&end_line(name, stream, tokens));
    body
}

/// The per-token delay, in ms, with `running` streams producing tokens.
pub fn token_delay_ms(
    base_token_ms: f64,
    slowness: f64,
    per_stream_penalty: f64,
    running: usize,
) -> f64 {
    base_token_ms * slowness * (1.0 + per_stream_penalty * running.saturating_sub(1) as f64)
}

/// A request the server understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Generate { tokens: u32, stream: u64 },
    Metrics,
    Health,
}

/// The request of a head (request line and headers, up to the blank
/// line), and the body length it announces; an error says what is wrong.
pub fn parse_request(head: &str) -> Result<(Request, usize), String> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported version {version:?}"));
    }
    let mut body = 0usize;
    for h in lines {
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            body = v
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length {v:?}"))?;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let request = match (method, path) {
        ("GET" | "POST", "/generate") => {
            let tokens = match param("tokens") {
                None => 16,
                Some(t) => t
                    .parse::<u32>()
                    .ok()
                    .filter(|t| *t <= MAX_TOKENS)
                    .ok_or(format!("tokens={t:?}: want 0 to {MAX_TOKENS}"))?,
            };
            let stream = match param("stream") {
                None => 0,
                Some(s) => s
                    .parse()
                    .map_err(|_| format!("stream={s:?}: not a number"))?,
            };
            Request::Generate { tokens, stream }
        }
        ("GET", "/metrics") => Request::Metrics,
        ("GET", "/health") => Request::Health,
        _ => return Err(format!("no such resource: {method} {path}")),
    };
    Ok((request, body))
}

/// Figures a server has counted since it started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Generate requests accepted.
    pub started: u64,
    /// Streams that sent their end line.
    pub finished: u64,
    /// Streams whose client went away before the end.
    pub cut: u64,
    pub running: usize,
    pub waiting: usize,
}

/// One stream as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedStream {
    /// The client's `stream` parameter.
    pub stream: u64,
    pub tokens: u32,
    /// Body bytes written so far.
    pub bytes: u64,
    pub finished: bool,
}

/// State shared by a server's tasks and its handle.
struct Shared {
    config: SimConfig,
    slowness_bits: AtomicU64,
    reporting: Mutex<Reporting>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    started: AtomicU64,
    finished: AtomicU64,
    cut: AtomicU64,
    arrivals: Mutex<VecDeque<Instant>>,
    records: Mutex<VecDeque<ServedStream>>,
    slots: Semaphore,
}

impl Shared {
    fn slowness(&self) -> f64 {
        f64::from_bits(self.slowness_bits.load(Ordering::Relaxed))
    }

    fn load(&self) -> LoadSnapshot {
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().expect("arrivals");
        while arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) > RPS_WINDOW)
        {
            arrivals.pop_front();
        }
        LoadSnapshot {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            max_running: self.config.max_running,
            rps: arrivals.len() as f64 / RPS_WINDOW.as_secs_f64(),
        }
    }

    /// Record a byte count for the stream at `index` of the records, if
    /// it has not been forgotten.
    fn note(&self, index: u64, bytes: u64, finished: bool) {
        let mut records = self.records.lock().expect("records");
        let base = self.started.load(Ordering::Relaxed) - records.len() as u64;
        if let Some(r) = index
            .checked_sub(base)
            .and_then(|i| records.get_mut(i as usize))
        {
            r.bytes = bytes;
            r.finished = finished;
        }
    }
}

/// A running simulated inference server; stopped on drop (its streams are
/// cut).
pub struct InferenceSim {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl InferenceSim {
    /// Serve on `listen` (e.g. `0.0.0.0:8000`, which includes the VIP on
    /// a backend's loopback) inside `ns`.
    pub fn start(ns: &Netns, listen: SocketAddr, config: SimConfig) -> Self {
        assert!(config.max_running > 0, "max_running must be at least 1");
        let shared = Arc::new(Shared {
            slowness_bits: AtomicU64::new(config.slowness.to_bits()),
            slots: Semaphore::new(config.max_running),
            config,
            reporting: Mutex::new(Reporting::On),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            arrivals: Mutex::new(VecDeque::new()),
            records: Mutex::new(VecDeque::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name, state) = (stop.clone(), ns.name.clone(), shared.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The runtime's end closes the connections still open.
        let thread = crate::netns::spawn_runtime(name, move || async move {
            let listener = match TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while !flag.load(Ordering::Relaxed) {
                let Ok(Ok((stream, _))) =
                    timeout(Duration::from_millis(50), listener.accept()).await
                else {
                    continue;
                };
                tokio::spawn(serve(stream, state.clone(), flag.clone()));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the inference server starting")
            .expect("the inference server listening");
        Self {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Make every token from now on `slowness` times the base time.
    pub fn set_slowness(&self, slowness: f64) {
        self.shared
            .slowness_bits
            .store(slowness.to_bits(), Ordering::Relaxed);
    }

    pub fn slowness(&self) -> f64 {
        self.shared.slowness()
    }

    /// What `/metrics` and `/health` do from now on.
    pub fn set_reporting(&self, reporting: Reporting) {
        *self.shared.reporting.lock().expect("reporting") = reporting;
    }

    /// The load `/metrics` and `/health` would report now.
    pub fn load(&self) -> LoadSnapshot {
        self.shared.load()
    }

    pub fn counters(&self) -> Counters {
        Counters {
            started: self.shared.started.load(Ordering::Relaxed),
            finished: self.shared.finished.load(Ordering::Relaxed),
            cut: self.shared.cut.load(Ordering::Relaxed),
            running: self.shared.running.load(Ordering::Relaxed),
            waiting: self.shared.waiting.load(Ordering::Relaxed),
        }
    }

    /// The streams served, oldest first (the last 100 000).
    pub fn streams(&self) -> Vec<ServedStream> {
        self.shared
            .records
            .lock()
            .expect("records")
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for InferenceSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read a request head (and discard its body), bounded in size and time.
async fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| "request: timed out".to_string())?
            .map_err(|e| format!("request: {e}"))?;
        if n == 0 {
            return Err("closed before the request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too long".into());
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "request head not UTF-8")?;
    let (request, body) = parse_request(head)?;
    let mut left = body.saturating_sub(buf.len() - end - 4);
    while left > 0 {
        let n = timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| "request body: timed out".to_string())?
            .map_err(|e| format!("request body: {e}"))?;
        if n == 0 {
            return Err("closed in the request body".into());
        }
        left = left.saturating_sub(n);
    }
    Ok(request)
}

fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let _ = stream.set_nodelay(true);
    let request = match read_request(&mut stream).await {
        Ok(r) => r,
        Err(e) => {
            let _ = stream
                .write_all(response("400 Bad Request", "", &format!("{e}\n")).as_bytes())
                .await;
            return;
        }
    };
    let reporting = *shared.reporting.lock().expect("reporting");
    let reply = match (request, reporting) {
        (Request::Generate { tokens, stream: id }, _) => {
            generate(stream, &shared, tokens, id).await;
            return;
        }
        (_, Reporting::Hang) => {
            let until = Instant::now() + HANG_FOR;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        (_, Reporting::Unavailable) | (Request::Metrics, Reporting::NoLoad) => {
            response("503 Service Unavailable", "", "not reporting\n")
        }
        (Request::Health, Reporting::NoLoad) => response("200 OK", "", "ok\n"),
        (Request::Health, Reporting::On) => response(
            "200 OK",
            &format!("endpoint-load-metrics: {}\r\n", load_header(&shared.load())),
            "ok\n",
        ),
        (Request::Metrics, Reporting::On) => response("200 OK", "", &metrics_text(&shared.load())),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
}

/// Counts a stream in a gauge (running, waiting) until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn generate(mut out: TcpStream, shared: &Shared, tokens: u32, id: u64) {
    let name = &shared.config.name;
    let index = shared.started.fetch_add(1, Ordering::Relaxed);
    shared
        .arrivals
        .lock()
        .expect("arrivals")
        .push_back(Instant::now());
    {
        let mut records = shared.records.lock().expect("records");
        if records.len() == MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(ServedStream {
            stream: id,
            tokens,
            bytes: 0,
            finished: false,
        });
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-backend: {name}\r\nConnection: close\r\n\r\n"
    );
    if out.write_all(head.as_bytes()).await.is_err() {
        shared.cut.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.waiting.fetch_add(1, Ordering::Relaxed);
    let permit = {
        let _waiting = Counted(&shared.waiting);
        shared
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
    };
    shared.running.fetch_add(1, Ordering::Relaxed);
    let _running = Counted(&shared.running);
    let mut bytes = 0u64;
    for seq in 0..=tokens {
        let running = shared.running.load(Ordering::Relaxed);
        let ms = token_delay_ms(
            shared.config.base_token_ms,
            shared.slowness(),
            shared.config.per_stream_penalty,
            running,
        );
        sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        let line = if seq < tokens {
            token_line(name, id, seq)
        } else {
            end_line(name, id, tokens)
        };
        if out.write_all(line.as_bytes()).await.is_err() {
            shared.cut.fetch_add(1, Ordering::Relaxed);
            shared.note(index, bytes, false);
            return;
        }
        bytes += line.len() as u64;
        if seq % 16 == 0 {
            shared.note(index, bytes, false);
        }
    }
    // Counted before the close, so a client that saw the end of the
    // stream finds it counted.
    shared.finished.fetch_add(1, Ordering::Relaxed);
    shared.note(index, bytes, true);
    drop(permit);
    let _ = out.shutdown().await;
}

/// What [`StreamLoad`] runs.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    pub to: SocketAddr,
    /// Tokens of each stream, in order; the plan runs `tokens.len()`
    /// streams.
    pub tokens: Vec<u32>,
    /// Streams open at once (each worker opens the next when its stream
    /// ends).
    pub concurrency: usize,
    /// No stream starts after this much time; streams in flight then
    /// finish (each bounded by `stream_timeout`).
    pub duration: Duration,
    /// A stream not complete within this is broken.
    pub stream_timeout: Duration,
}

/// One stream as the client saw it.
#[derive(Clone, Debug)]
pub struct StreamResult {
    /// Its number: the index of its token count in the plan.
    pub stream: u64,
    pub tokens: u32,
    /// The `x-backend` header of the response.
    pub backend: Option<String>,
    /// When it started, from the start of the load.
    pub started: Duration,
    /// From the start of the stream to its first token line.
    pub first_token: Option<Duration>,
    /// From the start of the stream to its end line.
    pub completed: Option<Duration>,
    pub bytes: usize,
    /// Why it broke, if it did: an error, a timeout, or a body that is not
    /// exactly [`expected_body`].
    pub broken: Option<String>,
}

impl StreamResult {
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Streams by backend name (broken streams without a backend under "").
pub fn share_by_backend(results: &[StreamResult]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in results {
        *out.entry(r.backend.clone().unwrap_or_default())
            .or_default() += 1;
    }
    out
}

/// Token counts for `count` streams from a fixed seed: mostly `short`
/// (±50%), a `long_share` of them `long` (±50%), so a few requests hold a
/// backend for long.
pub fn token_mix(seed: u64, count: usize, short: u32, long: u32, long_share: f64) -> Vec<u32> {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mean = if rng.random_bool(long_share) {
                long
            } else {
                short
            };
            let spread = mean / 2;
            rng.random_range(mean - spread..=mean + spread).max(1)
        })
        .collect()
}

/// Streams running from the client's namespace until the plan is done or
/// the load is stopped (or dropped).
pub struct StreamLoad {
    /// Streams ended so far (complete or broken).
    pub done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<StreamResult>>>,
}

impl StreamLoad {
    pub fn start(client: &Netns, plan: StreamPlan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (s, d, ns) = (stop.clone(), done.clone(), client.name.clone());
        let thread = crate::netns::spawn_runtime(ns, move || run_streams(plan, s, d));
        Self {
            done,
            stop,
            thread: Some(thread),
        }
    }

    /// Run `plan` to its end; each stream's result, in stream order.
    pub fn run(client: &Netns, plan: StreamPlan) -> Vec<StreamResult> {
        Self::start(client, plan).finish()
    }

    /// Wait for the streams started to end; no new ones start.
    pub fn stop(mut self) -> Vec<StreamResult> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Wait for the plan to run to its end.
    pub fn finish(mut self) -> Vec<StreamResult> {
        self.join()
    }

    fn join(&mut self) -> Vec<StreamResult> {
        let mut results = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("the stream load thread");
        results.sort_by_key(|r| r.stream);
        results
    }
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_streams(
    plan: StreamPlan,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<StreamResult> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (plan, next, stop, done) = (plan.clone(), next.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < plan.duration {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(tokens) = plan.tokens.get(i).copied() else {
                        break;
                    };
                    results.push(one_stream(&plan, i as u64, tokens, t0).await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.expect("a stream worker"));
    }
    results
}

async fn one_stream(plan: &StreamPlan, stream: u64, tokens: u32, t0: Instant) -> StreamResult {
    let start = Instant::now();
    let mut result = StreamResult {
        stream,
        tokens,
        backend: None,
        started: start - t0,
        first_token: None,
        completed: None,
        bytes: 0,
        broken: None,
    };
    let outcome = timeout(
        plan.stream_timeout,
        read_stream(plan.to, stream, tokens, start, &mut result),
    )
    .await;
    result.broken = match outcome {
        Err(_) => Some(format!(
            "not complete within {:?} ({} bytes)",
            plan.stream_timeout, result.bytes
        )),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => None,
    };
    result
}

/// Request stream `stream` and read it to its end, filling `result` as
/// it goes; an error if the stream is not exactly what was asked.
async fn read_stream(
    to: SocketAddr,
    stream: u64,
    tokens: u32,
    start: Instant,
    result: &mut StreamResult,
) -> Result<(), String> {
    let mut s = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let request = format!(
        "GET /generate?tokens={tokens}&stream={stream} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        to.ip()
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut body_at = None;
    loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read after {} bytes: {e}", buf.len()))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if body_at.is_none()
            && let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("status: {}", head.lines().next().unwrap_or("")));
            }
            result.backend = head.split("\r\n").find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case("x-backend")
                    .then(|| v.trim().to_string())
            });
            body_at = Some(i + 4);
        }
        if let Some(at) = body_at {
            result.bytes = buf.len() - at;
            // The first token is in once its whole line is.
            if result.first_token.is_none() && buf[at..].contains(&b'\n') {
                result.first_token = Some(start.elapsed());
            }
        }
    }
    let at = body_at.ok_or("closed before the end of the headers")?;
    let name = result.backend.clone().ok_or("no x-backend header")?;
    let want = expected_body(&name, stream, tokens);
    let body = &buf[at..];
    if body != want.as_bytes() {
        let same = body
            .iter()
            .zip(want.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        return Err(format!(
            "body differs from byte {same} ({} bytes, want {})",
            body.len(),
            want.len()
        ));
    }
    result.completed = Some(start.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_header_is_the_orca_text_form_and_parses_back() {
        let load = LoadSnapshot {
            running: 3,
            waiting: 2,
            max_running: 4,
            rps: 1.5,
        };
        let text = load_header(&load);
        assert_eq!(
            text,
            "TEXT utilization=0.750, rps_fractional=1.500, named_metrics.waiting=2"
        );
        let parsed = parse_load_header(&text).expect("parses");
        assert_eq!(parsed["utilization"], 0.75);
        assert_eq!(parsed["rps_fractional"], 1.5);
        assert_eq!(parsed["named_metrics.waiting"], 2.0);
        assert_eq!(
            parse_load_header("utilization=0.5"),
            Some(BTreeMap::from([("utilization".to_string(), 0.5)]))
        );
        assert_eq!(parse_load_header("TEXT utilization"), None);
        assert_eq!(parse_load_header("TEXT utilization=high"), None);
    }

    #[test]
    fn metrics_text_has_the_three_vllm_gauges() {
        let text = metrics_text(&LoadSnapshot {
            running: 8,
            waiting: 5,
            max_running: 16,
            rps: 0.0,
        });
        let values: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .collect();
        assert_eq!(
            values,
            BTreeMap::from([
                ("vllm:num_requests_running", "8"),
                ("vllm:num_requests_waiting", "5"),
                ("vllm:gpu_cache_usage_perc", "0.500"),
            ])
        );
        assert!(text.contains("# TYPE vllm:num_requests_waiting gauge\n"));
    }

    #[test]
    fn token_delay_grows_with_running_streams_and_slowness() {
        assert_eq!(token_delay_ms(20.0, 1.0, 0.1, 0), 20.0);
        assert_eq!(token_delay_ms(20.0, 1.0, 0.1, 1), 20.0);
        assert!((token_delay_ms(20.0, 1.0, 0.1, 11) - 40.0).abs() < 1e-9);
        assert!((token_delay_ms(20.0, 3.0, 0.1, 11) - 120.0).abs() < 1e-9);
    }

    #[test]
    fn parse_request_reads_generate_metrics_and_health() {
        let head = "GET /generate?tokens=12&stream=7 HTTP/1.1\r\nHost: x";
        assert_eq!(
            parse_request(head),
            Ok((
                Request::Generate {
                    tokens: 12,
                    stream: 7
                },
                0
            ))
        );
        assert_eq!(
            parse_request("POST /generate HTTP/1.1\r\nContent-Length: 9"),
            Ok((
                Request::Generate {
                    tokens: 16,
                    stream: 0
                },
                9
            ))
        );
        assert_eq!(
            parse_request("GET /metrics HTTP/1.0"),
            Ok((Request::Metrics, 0))
        );
        assert_eq!(
            parse_request("GET /health HTTP/1.1"),
            Ok((Request::Health, 0))
        );
        assert!(
            parse_request("GET /generate?tokens=100001 HTTP/1.1")
                .unwrap_err()
                .contains("tokens")
        );
        assert!(parse_request("GET /nothing HTTP/1.1").is_err());
        assert!(parse_request("GET").is_err());
    }

    #[test]
    fn expected_body_is_numbered_token_lines_then_the_end_line() {
        assert_eq!(
            expected_body("b1", 4, 2),
            "token 000000 stream 4 from b1\ntoken 000001 stream 4 from b1\nend 2 stream 4 from b1\n"
        );
    }

    #[test]
    fn token_mix_is_fixed_by_its_seed_and_has_long_requests() {
        let a = token_mix(7, 200, 20, 200, 0.1);
        assert_eq!(a, token_mix(7, 200, 20, 200, 0.1));
        assert!(a.iter().all(|t| (10..=300).contains(t)));
        let long = a.iter().filter(|t| **t > 30).count();
        assert!((5..=50).contains(&long), "{long} long of 200");
    }
}
