//! The control plane against the clock and in memory, with the real lbd on
//! the lab network of the tests (client, LB, three backends):
//!
//! - failover: from a backend's server stopping to lbd marking it down
//!   (and so taking it out of the table), with HTTP checks every 200 ms,
//!   fall 2;
//! - restart: from starting lbd over pinned state (after a SIGKILL) to its
//!   answering on the control socket, the program forwarding throughout;
//! - resident memory of lbd serving 100 VIPs x 100 backends.

use std::time::{Duration, Instant};

use lb_tests::{
    backend_server::BackendServer,
    lbd::{Lbd, Paths},
    topology::{Topology, VIP},
};
use serde_json::{Value, json};

const ROUNDS: usize = 5;
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn health_of(lbd: &Lbd, i: usize) -> String {
    lbd.json(&["backend", "list"])[i]["health"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_health(lbd: &Lbd, i: usize, want: &str) -> Duration {
    let start = Instant::now();
    while health_of(lbd, i) != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "backend {i} never became {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// 100 TCP VIPs (one address, ports 1000-1099), each over 100 backends,
/// no health checks: the table and id state of a large deployment.
fn large_config(topo: &Topology) -> Value {
    let mut config = topo.lbd_config(80, "tcp", json!({"type": "none"}));
    config["tables"] = json!({"max_vips": 128, "max_backends": 16384});
    config["vips"] = (0..100)
        .map(|v| {
            json!({
                "address": VIP.to_string(), "port": 1000 + v, "protocol": "tcp",
                "backends": (1..=100).map(|b| json!({"address": format!("203.0.113.{b}")})).collect::<Vec<_>>(),
            })
        })
        .collect();
    config
}

pub fn run() -> Value {
    let topo = Topology::new(3);
    let mut servers: Vec<Option<BackendServer>> =
        topo.backends.iter().map(|b| Some(b.serve())).collect();
    let check = json!({"type": "http", "port": 80, "path": "/", "interval_ms": INTERVAL_MS,
                       "timeout_ms": 100, "rise": 2, "fall": FALL});
    let mut lbd = Lbd::start(
        &topo.lb,
        Paths::new("bench"),
        topo.lbd_config(80, "tcp", check),
    );
    for i in 0..servers.len() {
        wait_health(&lbd, i, "up");
    }

    let mut failover = Vec::new();
    for _ in 0..ROUNDS {
        servers[1] = None;
        failover.push(wait_health(&lbd, 1, "down").as_secs_f64() * 1e3);
        servers[1] = Some(topo.backends[1].serve());
        wait_health(&lbd, 1, "up");
    }

    let mut restart = Vec::new();
    for _ in 0..ROUNDS {
        lbd.kill();
        let start = Instant::now();
        lbd.restart();
        restart.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(lbd);

    let started = Instant::now();
    let big = Lbd::start(&topo.lb, Paths::new("bench-big"), large_config(&topo));
    let big_start_ms = started.elapsed().as_secs_f64() * 1e3;
    let vips = big.json(&["vip", "list"]).as_array().map_or(0, Vec::len);
    assert_eq!(vips, 100, "lbd serves the 100 VIPs");
    let rss_kib = vm_rss_kib(big.pid().expect("lbd pid"));

    json!({
        "failover_ms_median": median(failover.clone()),
        "failover_ms": failover,
        "failover_bound_ms": FALL * INTERVAL_MS,
        "restart_ms_median": median(restart.clone()),
        "restart_ms": restart,
        "large": {"vips": 100, "backends_per_vip": 100, "start_ms": big_start_ms, "rss_mib": rss_kib as f64 / 1024.0},
    })
}
