//! `cargo xtask demo`: the load balancer in front of three backends, on a
//! lab network of namespaces, with real HTTP traffic. It shows how flows
//! spread, what `lbctl status` says, how fast a dead backend is taken out,
//! a long streaming response that survives its backend being drained, and
//! load-aware balancing moving new token streams off a server that slows
//! down.
//! Everything it creates is removed at the end, also on failure.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::BackendServer,
    http_client::{Stream, get},
    inference_sim::{InferenceSim, SimConfig, StreamLoad, StreamPlan, StreamResult, token_mix},
    lbd::{Lbd, Paths},
    topology::{CLIENT, LB, Topology, VIP},
};
use serde_json::json;

const REQUESTS: usize = 3000;
const VIP_REF: &str = "198.51.100.10:80/tcp";

fn step(n: u32, text: &str) {
    println!("\n[{n}/7] {text}");
}

fn bar_chart(counts: &BTreeMap<String, usize>, total: usize) {
    for (name, n) in counts {
        let share = *n as f64 / total as f64;
        let percent = share * 100.0;
        println!(
            "    {name:<4} {n:>6}  {percent:>5.1}%  {}",
            "█".repeat((share * 60.0).round() as usize)
        );
    }
}

fn requests(topo: &Topology, n: usize) -> (BTreeMap<String, usize>, usize, Duration) {
    let started = Instant::now();
    topo.client.enter(|| {
        let mut counts = BTreeMap::new();
        let mut failed = 0;
        for _ in 0..n {
            match get(IpAddr::V4(VIP), 80, "/") {
                Ok(name) => *counts.entry(name).or_insert(0) += 1,
                Err(_) => failed += 1,
            }
        }
        (counts, failed, started.elapsed())
    })
}

fn main() -> anyhow::Result<()> {
    // Ctrl-C removes the lab too, not only a normal end or a failure.
    lb_tests::netns::clean_up_on_signal();
    println!("== lb demo: an XDP Maglev load balancer in front of three backends ==");
    step(
        1,
        "building the lab network (one namespace per host, all on one bridge)",
    );
    let topo = Topology::new(3);
    let mut servers: Vec<Option<BackendServer>> =
        topo.backends.iter().map(|b| Some(b.serve())).collect();
    println!("    client {CLIENT}  ->  VIP {VIP}:80  ->  LB {LB} (XDP on eth0)");
    for b in &topo.backends {
        println!(
            "    backend {} {} : HTTP server, lb_decap on eth0, VIP on loopback",
            b.name, b.addr
        );
    }

    step(
        2,
        "starting lbd: HTTP health checks every 200 ms, rise 2, fall 2",
    );
    let check = json!({"type": "http", "port": 80, "path": "/", "interval_ms": 200, "timeout_ms": 100, "rise": 2, "fall": 2});
    let started = Instant::now();
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("demo"),
        topo.lbd_config(80, "tcp", check),
    );
    while lbd
        .json(&["backend", "list"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["health"] == "up")
        .count()
        < 3
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "backends did not come up:\n{}",
            lbd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "    all three backends healthy after {} ms",
        started.elapsed().as_millis()
    );

    step(
        3,
        &format!(
            "sending {REQUESTS} HTTP requests, each on a new connection from a new client port"
        ),
    );
    let (counts, failed, took) = requests(&topo, REQUESTS);
    println!(
        "    {} answered, {failed} failed, in {:.1} s; answers per backend:",
        REQUESTS - failed,
        took.as_secs_f64()
    );
    bar_chart(&counts, REQUESTS);
    println!(
        "    (Maglev with equal weights: each backend owns a third of the table's 4093 slots)"
    );

    step(4, "lbctl status");
    let out = lbd.ctl(&["status"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }

    step(5, "failover: b2's server stops");
    servers[1] = None;
    let stopped = Instant::now();
    while lbd.json(&["backend", "list"])[1]["health"] != "down" {
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(10),
            "b2 never went down"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "    lbd marked b2 down {} ms after it stopped (fall 2 x interval 200 ms)",
        stopped.elapsed().as_millis()
    );
    let (counts, failed, _) = requests(&topo, 600);
    println!("    600 new requests: {failed} failed; answers per backend:");
    bar_chart(&counts, 600);

    step(
        6,
        "draining: a 5-second token stream (like an LLM answer) while its backend is drained",
    );
    let mut stream = topo
        .client
        .enter(|| Stream::open(IpAddr::V4(VIP), 80, "/stream?tokens=50&ms=100"))
        .map_err(anyhow::Error::msg)?;
    let first = stream
        .next_chunk()
        .map_err(anyhow::Error::msg)?
        .unwrap_or_default();
    let serving = first.trim().rsplit(' ').next().unwrap_or("").to_string();
    let addr = topo
        .backends
        .iter()
        .find(|b| b.name == serving)
        .map(|b| b.addr.to_string())
        .unwrap_or_default();
    println!(
        "    stream served by {serving}; first token: {:?}",
        first.trim()
    );
    std::thread::sleep(Duration::from_secs(1));
    lbd.json(&["backend", "drain", VIP_REF, &addr]);
    println!("    $ lbctl backend drain {VIP_REF} {addr}");
    let (counts, failed, _) = requests(&topo, 300);
    println!("    meanwhile, 300 new requests ({failed} failed) avoid {serving}: {counts:?}");
    let mut tokens = 1;
    let mut last = first;
    while let Some(chunk) = stream.next_chunk().map_err(anyhow::Error::msg)? {
        tokens += 1;
        last = chunk;
    }
    println!(
        "    the stream ran to its end: {tokens}/50 tokens, the last {:?}",
        last.trim()
    );

    drop(lbd);
    weights_follow_load(&topo)?;

    println!("\nteardown: stopping lbd, detaching the program, removing the namespaces");
    drop(servers);
    drop(topo);
    println!("done.");
    Ok(())
}

/// New streams by backend name among `results` started in `from..to`.
fn streams_between(
    results: &[StreamResult],
    from: Duration,
    to: Duration,
) -> (BTreeMap<String, usize>, usize) {
    let mut counts = BTreeMap::new();
    for r in results.iter().filter(|r| (from..to).contains(&r.started)) {
        if let Some(b) = &r.backend {
            *counts.entry(b.clone()).or_insert(0) += 1;
        }
    }
    let total = counts.values().sum();
    (counts, total)
}

/// Step 7: lbd again, with a VIP in `balancing.mode: load` in front of a
/// simulated inference server on each backend; streams flow, then b3
/// becomes three times slower and loses its share of new streams.
fn weights_follow_load(topo: &Topology) -> anyhow::Result<()> {
    const PORT: u16 = 8000;
    step(
        7,
        "load-aware balancing: token streams from three inference servers, then b3 gets 3x slower",
    );
    let sims: Vec<InferenceSim> = topo
        .backends
        .iter()
        .map(|b| InferenceSim::start(&b.ns, ([0, 0, 0, 0], PORT).into(), SimConfig::new(&b.name)))
        .collect();
    let mut config = topo.lbd_config(PORT, "tcp", json!({"type": "none"}));
    config["vips"][0]["balancing"] = json!({
        "mode": "load", "source": "flows", "interval_s": 1, "smoothing": 0.5,
        "max_step": 0.3, "ring_budget": 0.2, "slow_start_s": 0,
    });
    let lbd = Lbd::start(&topo.lb, Paths::new("demo-load"), config);
    let vip_ref = format!("{VIP}:{PORT}/tcp");
    println!(
        "    lbd restarted with VIP {vip_ref}, balancing.mode load: each second, weights follow the backends' open streams"
    );
    let load = StreamLoad::start(
        &topo.client,
        StreamPlan {
            to: (IpAddr::V4(VIP), PORT).into(),
            tokens: token_mix(7, 20_000, 30, 30, 0.0),
            concurrency: 24,
            duration: Duration::from_secs(25),
            stream_timeout: Duration::from_secs(30),
        },
    );
    let weights = || -> String {
        let rows = lbd.json(&["backend", "list"]);
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["vip"].as_str().is_none_or(|v| v == vip_ref))
            .map(|r| {
                let name = topo
                    .backends
                    .iter()
                    .find(|b| r["address"] == b.addr.to_string())
                    .map_or("?", |b| b.name.as_str());
                format!(
                    "{name} {:.2}",
                    r["effective_weight"].as_f64().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    std::thread::sleep(Duration::from_secs(6));
    println!(
        "    24 streams at a time, all servers equal; effective weights: {}",
        weights()
    );
    sims[2].set_slowness(3.0);
    let slowed = Duration::from_secs(5);
    println!(
        "    b3 now makes each token 3x more slowly; its streams last longer, it holds more of them:"
    );
    for t in 1..=7 {
        std::thread::sleep(Duration::from_secs(2));
        println!("      +{:>2} s  effective weights: {}", t * 2, weights());
    }
    let results = load.stop();
    let broken = results.iter().filter(|r| !r.intact()).count();
    let (before, n_before) = streams_between(&results, Duration::ZERO, slowed);
    println!("    new streams before b3 slowed (first 5 s):");
    bar_chart(&before, n_before.max(1));
    let (after, n_after) =
        streams_between(&results, slowed + Duration::from_secs(6), Duration::MAX);
    println!("    new streams from 6 s after b3 slowed:");
    bar_chart(&after, n_after.max(1));
    println!(
        "    {} streams in all, {broken} broken: streams already open stay on their server (the connection table pins them), only new ones move",
        results.len()
    );
    drop(lbd);
    drop(sims);
    Ok(())
}
