//! End to end, load reported by the backends (`vips[].balancing.source`
//! `prometheus` and `header`), against simulated inference servers
//! (`lb_tests::inference_sim`): a real lbd scrapes their `/metrics` (or
//! reads their `/health` header), moves new streams off the busy one,
//! falls back to the configured weights when reports stop, and keeps new
//! flows off a backend over its hard limit while its streams finish.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    inference_sim::{InferenceSim, Reporting, SimConfig, StreamLoad, StreamPlan, StreamResult},
    lbd::{Lbd, Paths},
    topology::{Topology, VIP},
};
use serde_json::{Value, json};

const PORT: u16 = 8000;
const VIP_ARG: &str = "198.51.100.10:8000/tcp";

/// One simulator per backend of `topo`, `config` deciding each.
fn sims(topo: &Topology, config: impl Fn(&str) -> SimConfig) -> Vec<InferenceSim> {
    topo.backends
        .iter()
        .map(|b| {
            InferenceSim::start(
                &b.ns,
                SocketAddr::from(([0, 0, 0, 0], PORT)),
                config(&b.name),
            )
        })
        .collect()
}

/// Where the lbds of these tests serve metrics, in the LB's namespace.
const METRICS: &str = "127.0.0.1:9464";

/// An lbd balancing the VIP by `balancing`, with health check `check`,
/// returned once every backend is in service (up, or unchecked): the
/// tests' streams start at once, and a stream sent before the first checks
/// passed is not what they test.
fn lbd(topo: &Topology, tag: &str, check: Value, balancing: Value) -> Lbd {
    let mut config = topo.lbd_config(PORT, "tcp", check);
    config["vips"][0]["balancing"] = balancing;
    let lbd = Lbd::start_with(&topo.lb, Paths::new(tag), config, &["--metrics", METRICS]);
    wait_for_show(&lbd, "every backend up", Duration::from_secs(10), |s| {
        s["backends"].as_array().is_some_and(|rows| {
            rows.len() == topo.backends.len()
                && rows
                    .iter()
                    .all(|r| r["health"] == "up" || r["health"] == "unchecked")
        })
    });
    lbd
}

/// The value of lbd's series `name` for backend `backend`, if it has one.
fn metric(topo: &Topology, name: &str, backend: &str) -> Option<f64> {
    let page = topo.lb.enter(|| {
        let mut s = TcpStream::connect_timeout(&METRICS.parse().unwrap(), Duration::from_secs(2))
            .expect("lbd's metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        let _ = s.read_to_string(&mut page);
        page
    });
    let series = format!("{name}{{vip=\"{VIP_ARG}\",backend=\"{backend}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
}

/// `lbctl vip show --json`'s row of backend `i` of `topo`.
fn shown(lbd: &Lbd, topo: &Topology, i: usize) -> Value {
    let show = lbd.json(&["vip", "show", VIP_ARG]);
    let address = topo.backends[i].addr.to_string();
    show["backends"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == address.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no row for {address} in {show}"))
}

/// Poll `lbctl vip show` until `done` holds of it, or fail after `within`
/// with the last answer and lbd's log.
fn wait_for_show(lbd: &Lbd, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    wait_for_show_or_say(lbd, what, within, done, String::new)
}

/// `wait_for_show`, failing with `context()` too (what the test's own
/// traffic did meanwhile, say).
fn wait_for_show_or_say(
    lbd: &Lbd,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
    context: impl Fn() -> String,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let show = lbd.json(&["vip", "show", VIP_ARG]);
        if done(&show) {
            return show;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}; {}\nlast vip show: {show:#}\nlbd log:\n{}",
            context(),
            lbd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The row of backend `address` in a `vip show` answer.
fn row<'a>(show: &'a Value, address: &str) -> &'a Value {
    show["backends"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == address))
        .unwrap_or_else(|| panic!("no row for {address} in {show}"))
}

/// Streams by backend index (0-based) among those started at or after
/// `from`.
fn tally(topo: &Topology, results: &[StreamResult], from: Duration) -> Vec<usize> {
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
    by
}

fn assert_intact(results: &[StreamResult], lbd: &Lbd) {
    let broken: Vec<&StreamResult> = results.iter().filter(|r| !r.intact()).take(5).collect();
    assert!(
        broken.is_empty(),
        "broken streams (first 5): {broken:?}\nlbd log:\n{}",
        lbd.log()
    );
}

/// vLLM's queue gauges, a backend of weight 1 full at `capacity`.
fn vllm_balancing(capacity: f64) -> Value {
    json!({
        "mode": "load", "source": "prometheus", "interval_s": 1,
        "max_step": 0.5, "ring_budget": 0.3, "smoothing": 0.7, "slow_start_s": 0,
        "stale_after": 2,
        "prometheus": {
            "metrics": {"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 1},
            "capacity": capacity, "timeout_ms": 300
        }
    })
}

#[test]
fn e2e_prometheus_load_moves_new_streams_off_the_busy_backend() {
    let topo = Topology::new(3);
    // b3 makes each token six times as slowly: it holds more streams
    // open, which its /metrics reports.
    let sims = sims(&topo, |name| SimConfig {
        slowness: if name == "b3" { 6.0 } else { 1.0 },
        ..SimConfig::new(name)
    });
    // Capacity 12 requests: by configured weights (a third of the 24
    // streams each) b3 would hold 18 of them open (utilization 1.5), b1
    // and b2 three each (0.25); held near the target (about 10 open),
    // its share of new streams is near 0.1.
    let lbd = lbd(
        &topo,
        "lrprom",
        json!({"type": "none"}),
        vllm_balancing(12.0),
    );
    let warm_up = Duration::from_secs(7);
    let results = StreamLoad::run(
        &topo.client,
        StreamPlan {
            to: SocketAddr::new(IpAddr::V4(VIP), PORT),
            tokens: lb_tests::inference_sim::token_mix(17, 5000, 30, 30, 0.0),
            concurrency: 24,
            duration: Duration::from_secs(20),
            stream_timeout: Duration::from_secs(20),
        },
    );
    assert_intact(&results, &lbd);
    let by = tally(&topo, &results, warm_up);
    let total: usize = by.iter().sum();
    let summary = format!("streams after {warm_up:?} by backend (b1, b2, b3 busy): {by:?}");
    println!("{summary}");
    assert!(total >= 100, "{summary}");
    let share = |i: usize| by[i] as f64 / total as f64;
    assert!(
        share(2) < 0.25,
        "the busy backend kept {:.2} of new streams, its static share is 0.33; {summary}\nlbd log:\n{}",
        share(2),
        lbd.log()
    );
    // What lbd read: every backend reported, fresh.
    for i in 0..3 {
        let r = shown(&lbd, &topo, i);
        assert_eq!(r["report"]["stale"], false, "{r}");
        assert!(r["report"]["utilization"].is_f64(), "{r}");
        let b = topo.backends[i].addr.to_string();
        assert_eq!(metric(&topo, "lb_backend_report_stale", &b), Some(0.0));
        assert!(metric(&topo, "lb_backend_reported_utilization", &b).is_some());
    }
    let out = lbd.ctl(&["vip", "show", VIP_ARG]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let log = lbd.log();
    assert!(log.contains("effective weights changed"), "{log}");
    assert!(
        log.contains("load: utilization"),
        "no reported utilization in the reasons:\n{log}"
    );
    drop(sims);
}

#[test]
fn e2e_reports_stopping_fall_back_to_configured_weights() {
    let topo = Topology::new(2);
    let sims = sims(&topo, |name| SimConfig {
        slowness: if name == "b2" { 4.0 } else { 1.0 },
        ..SimConfig::new(name)
    });
    let lbd = lbd(
        &topo,
        "lrstale",
        json!({"type": "none"}),
        vllm_balancing(4.0),
    );
    let load = StreamLoad::start(
        &topo.client,
        StreamPlan {
            to: SocketAddr::new(IpAddr::V4(VIP), PORT),
            tokens: lb_tests::inference_sim::token_mix(5, 5000, 30, 30, 0.0),
            concurrency: 16,
            duration: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(20),
        },
    );
    let b2 = topo.backends[1].addr.to_string();
    wait_for_show(
        &lbd,
        "b2 below its configured weight",
        Duration::from_secs(15),
        |s| {
            row(s, &b2)["effective_weight"]
                .as_f64()
                .is_some_and(|w| w < 0.9)
        },
    );
    // Both stop reporting, each its own way: a 503 and a hung scrape.
    sims[0].set_reporting(Reporting::Unavailable);
    sims[1].set_reporting(Reporting::Hang);
    let stopped = Instant::now();
    // stale_after (2) intervals of 1 s past the report's freshness
    // (1 s + 300 ms + 1 s), and a step of 0.5 a second: 8 s is ample.
    let show = wait_for_show(
        &lbd,
        "configured weights again",
        Duration::from_secs(8),
        |s| {
            s["backends"].as_array().unwrap().iter().all(|r| {
                r["effective_weight"].as_f64() == Some(1.0) && r["report"]["stale"] == true
            })
        },
    );
    println!(
        "back to configured weights {:?} after the reports stopped",
        stopped.elapsed()
    );
    let why = row(&show, &b2)["why"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("back to the configured weight"), "{why}");
    let error = row(&show, &b2)["report"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("timed out"), "{error}");
    let error = row(&show, &topo.backends[0].addr.to_string())["report"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(error, "HTTP 503");
    let results = load.stop();
    assert_intact(&results, &lbd);
}

#[test]
fn e2e_backend_over_hard_limit_gets_no_new_flows_and_its_streams_finish() {
    let topo = Topology::new(2);
    // b2 runs one stream at a time: the others queue, and its
    // vllm:num_requests_waiting goes over the limit.
    let sims = sims(&topo, |name| SimConfig {
        max_running: if name == "b2" { 1 } else { 32 },
        base_token_ms: 50.0,
        ..SimConfig::new(name)
    });
    let mut balancing = vllm_balancing(32.0);
    balancing["hard_limit"] = json!({
        "metric": "vllm:num_requests_waiting", "above": 1, "resume_below": 0.5
    });
    let lbd = lbd(&topo, "lrlimit", json!({"type": "none"}), balancing);
    let vip = SocketAddr::new(IpAddr::V4(VIP), PORT);
    // 16 streams of 20 tokens at once; about half queue on b2 (1 s each).
    let first = StreamLoad::start(
        &topo.client,
        StreamPlan {
            to: vip,
            tokens: vec![20; 16],
            concurrency: 16,
            duration: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(40),
        },
    );
    let b2 = topo.backends[1].addr.to_string();
    let show = wait_for_show_or_say(
        &lbd,
        "b2 over its hard limit",
        Duration::from_secs(10),
        |s| row(s, &b2)["over_hard_limit"] == true,
        || {
            format!(
                "streams ended at the client: {}; at the servers: {:?}",
                first.done.load(std::sync::atomic::Ordering::Relaxed),
                sims.iter().map(|s| s.counters()).collect::<Vec<_>>()
            )
        },
    );
    assert_eq!(show["hard_limit_waived"], false, "{show}");
    assert!(
        row(&show, &b2)["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("hard limit: vllm:num_requests_waiting")),
        "{show}"
    );
    assert_eq!(metric(&topo, "lb_backend_over_hard_limit", &b2), Some(1.0));
    let b2_started = sims[1].counters().started;
    // New streams while b2 is over the limit: all to b1.
    let second = StreamLoad::run(
        &topo.client,
        StreamPlan {
            to: vip,
            tokens: vec![2; 20],
            concurrency: 4,
            duration: Duration::from_secs(10),
            stream_timeout: Duration::from_secs(10),
        },
    );
    assert_intact(&second, &lbd);
    let still_over = row(&lbd.json(&["vip", "show", VIP_ARG]), &b2)["over_hard_limit"] == true;
    assert!(
        still_over,
        "b2's queue emptied during the second load: the test is moot"
    );
    assert_eq!(
        tally(&topo, &second, Duration::ZERO),
        vec![20, 0],
        "new streams reached b2 over its hard limit"
    );
    assert_eq!(sims[1].counters().started, b2_started);
    // b2's streams, established before the limit, all finish intact.
    let first = first.finish();
    assert_intact(&first, &lbd);
    let on_b2 = tally(&topo, &first, Duration::ZERO)[1];
    assert!(on_b2 >= 3, "only {on_b2} of the first streams went to b2");
    let counters = sims[1].counters();
    assert_eq!((counters.finished, counters.cut), (counters.started, 0));
    // Its queue empty, it takes new flows again.
    wait_for_show(
        &lbd,
        "b2 under its hard limit again",
        Duration::from_secs(10),
        |s| {
            row(s, &b2)["over_hard_limit"] == false
                && row(s, &b2)["effective_weight"]
                    .as_f64()
                    .is_some_and(|w| w > 0.0)
        },
    );
    assert_eq!(metric(&topo, "lb_backend_over_hard_limit", &b2), Some(0.0));
    let log = lbd.log();
    assert!(
        log.contains("above the hard limit 1: no new flows"),
        "{log}"
    );
    assert!(log.contains("takes new flows again"), "{log}");
}

#[test]
fn e2e_header_reports_from_the_health_check_move_new_streams() {
    let topo = Topology::new(2);
    let sims = sims(&topo, |name| SimConfig {
        slowness: if name == "b2" { 4.0 } else { 1.0 },
        max_running: 8,
        ..SimConfig::new(name)
    });
    let check = json!({
        "type": "http", "path": "/health", "interval_ms": 300, "timeout_ms": 200,
        "rise": 1, "through_tunnel": false
    });
    let lbd = lbd(
        &topo,
        "lrheader",
        check,
        json!({
            "mode": "load", "source": "header", "interval_s": 1,
            "max_step": 0.5, "ring_budget": 0.3, "smoothing": 0.7, "slow_start_s": 0,
        }),
    );
    let b2 = topo.backends[1].addr.to_string();
    let load = StreamLoad::start(
        &topo.client,
        StreamPlan {
            to: SocketAddr::new(IpAddr::V4(VIP), PORT),
            tokens: lb_tests::inference_sim::token_mix(9, 5000, 30, 30, 0.0),
            concurrency: 12,
            duration: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(20),
        },
    );
    let show = wait_for_show(
        &lbd,
        "b2 below its configured weight",
        Duration::from_secs(15),
        |s| {
            row(s, &b2)["effective_weight"]
                .as_f64()
                .is_some_and(|w| w < 0.9)
        },
    );
    // The weight came from the header's reports. (The report read with it
    // may already be lower: b2 sheds its streams once its weight falls.)
    let r = &row(&show, &b2)["report"];
    assert_eq!(r["stale"], false, "{show}");
    assert!(r["utilization"].is_f64(), "{show}");
    // A rebuild's reason names each backend moved: "ADDR OLD -> NEW: why".
    let lowered = |line: &str| {
        let Some((_, after)) = line.split_once(&format!("{b2} ")) else {
            return false;
        };
        let new = after
            .split_once("-> ")
            .and_then(|(_, n)| n.split(':').next());
        new.and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n < 90)
            && after.contains("load: utilization")
    };
    let log = lbd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("effective weights changed") && lowered(l)),
        "no rebuild lowering b2 by its reported utilization:\n{log}"
    );
    let results = load.stop();
    assert_intact(&results, &lbd);
    drop(sims);
}
