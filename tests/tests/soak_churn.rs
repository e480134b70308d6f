//! Soak under churn (bounded: `SOAK_SECS`, default 25 s): while clients
//! stream from and send requests to the VIP, two of four backends are
//! removed, re-added, drained, undrained, reweighted and flapped several
//! times a second. Then:
//! - no tunnel packet reaches a backend while it is removed;
//! - long streams from the two untouched backends finish byte for byte;
//! - lbd's resident memory stays flat.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::BackendServer,
    http_client::{Stream, get},
    lbd::{Lbd, Paths},
    topology::{Topology, VIP},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::json;

const VIP_REF: &str = "198.51.100.10:80/tcp";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn start(topo: &Topology, i: usize) -> BackendServer {
    topo.backends[i].serve()
}

#[test]
fn soak_backend_churn_loses_no_stable_stream_and_sends_nothing_to_removed_backends() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let topo = Topology::new(4);
    let mut servers: Vec<Option<BackendServer>> = (0..4).map(|i| Some(start(&topo, i))).collect();
    let check = json!({"type": "http", "port": 80, "interval_ms": 100, "timeout_ms": 50, "rise": 1, "fall": 1});
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("soak"),
        topo.lbd_config(80, "tcp", check),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lbd
        .json(&["backend", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["health"] == "up")
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "backends not healthy");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Streams lasting the whole soak, kept only if served by b1 or b2.
    let tokens = secs * 10 + 20;
    let mut stable = Vec::new();
    for _ in 0..40 {
        if stable.len() == 4 {
            break;
        }
        let path = format!("/stream?tokens={tokens}&ms=100");
        let mut s = topo
            .client
            .enter(|| Stream::open(IpAddr::V4(VIP), 80, &path))
            .expect("open stream");
        let first = s.next_chunk().unwrap().unwrap();
        let name = first.trim().rsplit(' ').next().unwrap().to_string();
        if name == "b1" || name == "b2" {
            stable.push((name, s, first));
        }
    }
    assert_eq!(stable.len(), 4, "could not place streams on b1 and b2");
    let pid = lbd.pid().unwrap();
    let rss_before = rss_kib(pid);

    // Churn b3 and b4.
    let mut rng = SmallRng::seed_from_u64(0x50a6);
    let mut removed = [false; 2];
    let mut removed_at_packets = [0u64; 2];
    let mut actions = 0;
    let mut violations = Vec::new();
    let churn_until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < churn_until {
        // Requests keep new flows coming onto whatever is in the table.
        topo.client.enter(|| {
            for _ in 0..5 {
                let _ = get(IpAddr::V4(VIP), 80, "/");
            }
        });
        for (k, i) in [2usize, 3].into_iter().enumerate() {
            if removed[k] && topo.tunnel_packets(i) != removed_at_packets[k] {
                violations.push(format!(
                    "{} got packets while removed",
                    topo.backends[i].name
                ));
            }
        }
        let k = rng.random_range(0..2);
        let i = k + 2;
        let addr = topo.backends[i].addr.to_string();
        if removed[k] {
            lbd.json(&["backend", "add", VIP_REF, &addr]);
            removed[k] = false;
        } else {
            match rng.random_range(0..5) {
                0 => {
                    lbd.json(&["backend", "del", VIP_REF, &addr]);
                    // Frames the program sent before the reply may still be
                    // on the wire; what arrives after this is a violation.
                    std::thread::sleep(Duration::from_millis(20));
                    removed[k] = true;
                    removed_at_packets[k] = topo.tunnel_packets(i);
                }
                1 => {
                    lbd.json(&["backend", "drain", VIP_REF, &addr]);
                }
                2 => {
                    lbd.json(&["backend", "undrain", VIP_REF, &addr]);
                }
                3 => {
                    let w = rng.random_range(1..=5u32).to_string();
                    lbd.json(&["backend", "weight", VIP_REF, &addr, &w]);
                }
                _ => {
                    // Flap: the server goes away or comes back.
                    servers[i] = match servers[i].take() {
                        Some(_) => None,
                        None => Some(start(&topo, i)),
                    };
                }
            }
        }
        actions += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(violations.is_empty(), "{violations:?}");
    // The churned backends did carry traffic in between.
    assert!(topo.tunnel_packets(2) > 0 && topo.tunnel_packets(3) > 0);
    assert!(
        actions as u64 >= secs * 3,
        "only {actions} changes in {secs} s"
    );

    let rss_after = rss_kib(pid);
    println!("{actions} changes; lbd RSS {rss_before} KiB -> {rss_after} KiB");
    // Flat: a few MiB of allocator noise at most.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "lbd RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    for (name, mut s, first) in stable {
        let mut text = first;
        while let Some(chunk) = s
            .next_chunk()
            .unwrap_or_else(|e| panic!("stream from {name} broke: {e}"))
        {
            text.push_str(&chunk);
        }
        let expected: String = (0..tokens)
            .map(|t| format!("token {t} from {name}\n"))
            .collect();
        assert_eq!(text, expected, "stream from {name}");
    }
}
