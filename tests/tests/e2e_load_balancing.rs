//! End to end, load-aware balancing (`vips[].balancing.mode: load`, source
//! `flows`): a real lbd moves new flows away from a backend that holds
//! many long flows, and the long flows, pinned by the connection table,
//! run on untouched while the weights move.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    conversations::{EchoServer, Plan, Traffic},
    lbd::{Lbd, Paths},
    topology::{Topology, VIP},
};
use serde_json::{Value, json};

const PORT: u16 = 9000;
const VIP_REF: &str = "198.51.100.10:9000/tcp";

/// Backend `address`'s row of `lbctl backend list`.
fn row(lbd: &Lbd, address: &str) -> Value {
    let rows = lbd.json(&["backend", "list"]);
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["address"] == address)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {address} in {rows}"))
}

fn effective(lbd: &Lbd, address: &str) -> Option<f64> {
    row(lbd, address)["effective_weight"].as_f64()
}

#[test]
fn e2e_load_mode_moves_new_flows_off_a_loaded_backend_and_breaks_no_stream() {
    let topo = Topology::new(2);
    let _servers: Vec<EchoServer> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| EchoServer::start(&b.ns, PORT, i as u8 + 1))
        .collect();
    let (a, b) = (
        topo.backends[0].addr.to_string(),
        topo.backends[1].addr.to_string(),
    );
    // Only `a` at first: it takes every long flow. Quick steps, so the
    // test need not wait long for the weights to settle.
    let mut config = topo.lbd_config(PORT, "tcp", json!({"type": "none"}));
    config["vips"][0]["backends"] = json!([{"address": a}]);
    config["vips"][0]["balancing"] = json!({
        "mode": "load", "interval_s": 1, "max_step": 0.5, "ring_budget": 0.6,
        "smoothing": 1.0, "slow_start_s": 2,
    });
    let lbd = Lbd::start(&topo.lb, Paths::new("load-balancing"), config);
    let to = SocketAddr::new(IpAddr::V4(VIP), PORT);
    let long = Plan {
        to,
        long_lived: 16,
        new_per_second: 0,
        every: Duration::from_millis(100),
    };
    let streams = Traffic::start(&topo.client, long);
    assert!(
        streams.wait_open(&long, Duration::from_secs(10)),
        "the long flows did not open"
    );

    // `b` joins: it starts slow, then takes most new flows, as `a` holds
    // all 16 active flows and `b` none.
    lbd.json(&["backend", "add", VIP_REF, &b]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (wa, wb) = (effective(&lbd, &a), effective(&lbd, &b));
        if wa.is_some_and(|w| w <= 0.2) && wb == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "weights did not settle: a {wa:?}, b {wb:?}\nlbd log:\n{}",
            lbd.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let why = row(&lbd, &a)["weight_reason"].to_string();
    assert!(why.contains("load: utilization"), "{why}");
    assert!(
        lbd.log().contains("effective weights changed"),
        "no rebuild logged:\n{}",
        lbd.log()
    );

    // New flows now: far fewer to `a` than its static half.
    let short = Plan {
        to,
        long_lived: 0,
        new_per_second: 25,
        every: Duration::from_millis(100),
    };
    let fresh = Traffic::start(&topo.client, short);
    std::thread::sleep(Duration::from_secs(4));
    let fresh = fresh.stop();
    assert!(fresh.new_failures.is_empty(), "{}", fresh.summary());
    let to_a = fresh.new_by_backend.get(&1).copied().unwrap_or(0);
    let total: u64 = fresh.new_by_backend.values().sum();
    assert!(total >= 50, "{}", fresh.summary());
    let share = to_a as f64 / total as f64;
    println!(
        "new flows by backend (greeting byte: count): {:?}",
        fresh.new_by_backend
    );
    assert!(
        share < 0.3,
        "a took {to_a} of {total} new flows ({share:.2}), its static share is 0.5"
    );

    // Every long flow stayed on `a`, every echo intact, byte for byte.
    let report = streams.stop();
    assert!(report.broken().is_empty(), "{}", report.summary());
    assert!(
        report.conversations.iter().all(|c| c.backend == 1),
        "a long flow moved: {:?}",
        report.conversations
    );
}
