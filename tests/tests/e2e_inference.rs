//! End to end, inference-like traffic: token streams from simulated
//! inference servers (`lb_tests::inference_sim`), one of them slow. The
//! simulator on its own first (queue, reports, switches), then a real lbd
//! in `balancing.mode: load` that moves new streams off the slow backend
//! while no stream breaks.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{
    inference_sim::{
        InferenceSim, Reporting, SimConfig, StreamLoad, StreamPlan, StreamResult, parse_load_header,
    },
    lbd::{Lbd, Paths},
    netns::Netns,
    topology::{Topology, VIP},
};
use serde_json::json;

const PORT: u16 = 8000;

/// The raw response to `GET path` from `to`, read in namespace `ns`:
/// status line, headers and body.
fn fetch(ns: &Netns, to: SocketAddr, path: &str) -> Result<String, String> {
    ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        Ok(text)
    })
}

/// The value of gauge `name` in a `/metrics` response.
fn gauge(response: &str, name: &str) -> f64 {
    response
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {response}"))
}

#[test]
fn e2e_inference_sim_queues_beyond_max_running_reports_its_load_and_streams_intact() {
    let topo = Topology::new(1);
    let backend = &topo.backends[0];
    let sim = InferenceSim::start(
        &backend.ns,
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        SimConfig {
            max_running: 2,
            base_token_ms: 50.0,
            ..SimConfig::new("b1")
        },
    );
    let direct = SocketAddr::new(IpAddr::V4(backend.addr), PORT);
    // Five streams of 40 tokens at once: two run, three wait.
    let load = StreamLoad::start(
        &topo.client,
        StreamPlan {
            to: direct,
            tokens: vec![40; 5],
            concurrency: 5,
            duration: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(30),
        },
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sim.counters().started < 5 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sim.counters());
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = fetch(&topo.client, direct, "/metrics").expect("metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert_eq!(gauge(&metrics, "vllm:num_requests_running"), 2.0);
    assert_eq!(gauge(&metrics, "vllm:num_requests_waiting"), 3.0);
    assert_eq!(gauge(&metrics, "vllm:gpu_cache_usage_perc"), 1.0);
    let health = fetch(&topo.client, direct, "/health").expect("health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let header = health
        .lines()
        .find_map(|l| l.strip_prefix("endpoint-load-metrics: "))
        .unwrap_or_else(|| panic!("no load header in {health}"));
    let load_report = parse_load_header(header).expect("the header parses");
    assert_eq!(load_report["utilization"], 1.0, "{header}");
    assert_eq!(load_report["named_metrics.waiting"], 3.0, "{header}");
    assert!(load_report["rps_fractional"] > 0.0, "{header}");

    // Reports switched off; generation goes on.
    sim.set_reporting(Reporting::NoLoad);
    let health = fetch(&topo.client, direct, "/health").expect("health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(!health.contains("endpoint-load-metrics"), "{health}");
    let metrics = fetch(&topo.client, direct, "/metrics").expect("metrics");
    assert!(metrics.starts_with("HTTP/1.1 503"), "{metrics}");
    sim.set_reporting(Reporting::Unavailable);
    let health = fetch(&topo.client, direct, "/health").expect("health");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    sim.set_reporting(Reporting::Hang);
    let hung = fetch(&topo.client, direct, "/metrics");
    assert!(hung.is_err(), "a hung report answered: {hung:?}");

    let results = load.finish();
    assert_eq!(results.len(), 5);
    for r in &results {
        assert!(r.intact(), "{r:?}");
        assert_eq!(r.backend.as_deref(), Some("b1"));
    }
    // The three that waited got their first token after a running one's
    // 40 tokens at least.
    let mut firsts: Vec<Duration> = results.iter().filter_map(|r| r.first_token).collect();
    firsts.sort();
    assert!(firsts[2] >= Duration::from_millis(40 * 50), "{firsts:?}");
    let counters = sim.counters();
    assert_eq!(
        (counters.started, counters.finished, counters.cut),
        (5, 5, 0)
    );
    let served = sim.streams();
    assert!(
        served.iter().all(|s| s.finished
            && s.bytes == lb_tests::inference_sim::expected_body("b1", s.stream, 40).len() as u64),
        "{served:?}"
    );
}

/// Streams by backend index (0-based) among those started at or after
/// `from`, and the broken ones.
fn tally(topo: &Topology, results: &[StreamResult], from: Duration) -> (Vec<usize>, usize) {
    let mut by = vec![0; topo.backends.len()];
    for r in results.iter().filter(|r| r.started >= from) {
        if let Some(i) = r
            .backend
            .as_deref()
            .and_then(|b| topo.backends.iter().position(|h| h.name == b))
        {
            by[i] += 1;
        }
    }
    (by, results.iter().filter(|r| !r.intact()).count())
}

#[test]
fn e2e_inference_slow_backend_loses_share_and_no_stream_breaks() {
    let topo = Topology::new(3);
    // b3 makes each token three times as slowly: its streams last three
    // times as long, so it holds more of the open streams.
    let _sims: Vec<InferenceSim> = topo
        .backends
        .iter()
        .map(|b| {
            InferenceSim::start(
                &b.ns,
                SocketAddr::from(([0, 0, 0, 0], PORT)),
                SimConfig {
                    slowness: if b.name == "b3" { 3.0 } else { 1.0 },
                    ..SimConfig::new(&b.name)
                },
            )
        })
        .collect();
    let mut config = topo.lbd_config(PORT, "tcp", json!({"type": "none"}));
    config["vips"][0]["balancing"] = json!({
        "mode": "load", "source": "flows", "interval_s": 1, "max_step": 0.3,
        "ring_budget": 0.2, "smoothing": 0.7, "slow_start_s": 0,
    });
    let lbd = Lbd::start_with(
        &topo.lb,
        Paths::new("inference"),
        config,
        &["--metrics", "127.0.0.1:9464"],
    );

    // A closed loop of 24 streams of about 30 tokens (20 ms each on a fast
    // backend, 60 ms on b3) for 22 s; shares are counted over streams
    // that start after the first 7 s, once the weights have had time to
    // move.
    let warm_up = Duration::from_secs(7);
    let results = StreamLoad::run(
        &topo.client,
        StreamPlan {
            to: SocketAddr::new(IpAddr::V4(VIP), PORT),
            tokens: lb_tests::inference_sim::token_mix(13, 5000, 30, 30, 0.0),
            concurrency: 24,
            duration: Duration::from_secs(22),
            stream_timeout: Duration::from_secs(20),
        },
    );
    let (by, broken) = tally(&topo, &results, warm_up);
    let total: usize = by.iter().sum();
    let summary = format!(
        "streams started after {warm_up:?} by backend (b1, b2, b3 slow): {by:?}, broken {broken} of {}",
        results.len()
    );
    println!("{summary}");
    let failures: Vec<&StreamResult> = results.iter().filter(|r| !r.intact()).take(5).collect();
    assert_eq!(broken, 0, "{summary}; first broken: {failures:?}");
    assert!(total >= 100, "{summary}");
    let share = |i: usize| by[i] as f64 / total as f64;
    assert!(
        share(2) < 0.25,
        "the slow backend kept {:.2} of new streams, its static share is 0.33; {summary}\nlbd log:\n{}",
        share(2),
        lbd.log()
    );
    for i in 0..2 {
        assert!(
            share(i) > 0.36,
            "fast backend b{} took only {:.2} of new streams; {summary}",
            i + 1,
            share(i)
        );
    }
    assert!(
        lbd.log().contains("effective weights changed"),
        "no rebuild logged:\n{}",
        lbd.log()
    );
    // The weight changes moved ring slots, and the metrics count them.
    let metrics = fetch(
        &topo.lb,
        SocketAddr::from(([127, 0, 0, 1], 9464)),
        "/metrics",
    )
    .expect("lbd's metrics");
    let moved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_ring_slots_moved_total{vip=\"198.51.100.10:8000/tcp\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        moved.is_some_and(|n| n > 0),
        "slots moved: {moved:?}\n{metrics}"
    );
}
