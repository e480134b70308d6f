//! Inference-like streams over three simulated servers, one three times
//! slower (`lb_tests::inference_fleet`), balanced by static Maglev and by
//! `balancing.mode: load` (source `flows`), in alternating runs: time to
//! first token and completion time (p50, p99), broken streams, and in
//! load mode the share of the ring moved per minute.
//!
//! Each run starts a fresh lbd, drives a closed loop of streams (token
//! counts from a fixed seed, a tenth of them long) and counts only the
//! streams that start after a warm-up, so load mode is measured once its
//! weights have moved. The machine flips between fast and slow states,
//! so each mode's figure is the median over the rounds, with the range.

use std::time::Duration;

use lb_tests::{
    inference_fleet::Fleet,
    inference_sim::{SimConfig, StreamLoad, StreamPlan, StreamResult, token_mix},
};
use serde_json::{Value, json};

const SLOWNESS: [f64; 3] = [1.0, 1.0, 3.0];
const CONCURRENCY: usize = 24;
const WARM_UP: Duration = Duration::from_secs(8);
const MEASURED: Duration = Duration::from_secs(20);
const RING_SIZE: f64 = 4093.0;

/// The weight controller's parameters for the load runs: a step a
/// second, at most a tenth of the ring moved per step. Keys of the JSON
/// object in `BENCH_INFERENCE_BALANCING` replace these (for experiments).
fn load_balancing() -> Value {
    let mut b = json!({
        "mode": "load", "source": "flows", "interval_s": 1, "smoothing": 0.5,
        "max_step": 0.3, "ring_budget": 0.1, "slow_start_s": 0,
    });
    if let Some(Value::Object(over)) = std::env::var("BENCH_INFERENCE_BALANCING")
        .ok()
        .and_then(|v| serde_json::from_str(&v).ok())
    {
        for (k, v) in over {
            b[k] = v;
        }
    }
    b
}

fn sim() -> SimConfig {
    SimConfig {
        base_token_ms: 10.0,
        per_stream_penalty: 0.1,
        max_running: 16,
        ..SimConfig::new("sim")
    }
}

/// The `q` quantile (0..1) of `v`, sorted in place; 0 if empty.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// One run of `mode` ("static" or "load").
fn one(fleet: &Fleet, mode: &str, round: usize) -> Value {
    let balancing = if mode == "load" {
        load_balancing()
    } else {
        json!({"mode": "static"})
    };
    let lbd = fleet.start_lbd(&format!("bench-inference-{mode}"), balancing);
    let results: Vec<StreamResult> = StreamLoad::run(
        &fleet.topo.client,
        StreamPlan {
            to: fleet.vip(),
            tokens: token_mix(0x5eed + round as u64, 100_000, 20, 200, 0.1),
            concurrency: CONCURRENCY,
            duration: WARM_UP + MEASURED,
            stream_timeout: Duration::from_secs(120),
        },
    );
    let ran_for = WARM_UP + MEASURED;
    let moved = fleet.slots_moved().unwrap_or(0);
    let weights = fleet.effective_weights();
    drop(lbd);
    let measured: Vec<&StreamResult> = results.iter().filter(|r| r.started >= WARM_UP).collect();
    let mut ttft: Vec<f64> = measured.iter().filter_map(|r| ms(r.first_token)).collect();
    let mut done: Vec<f64> = measured.iter().filter_map(|r| ms(r.completed)).collect();
    let by = fleet.streams_by_backend(&results, WARM_UP);
    let total: usize = by.iter().sum();
    let broken = results.iter().filter(|r| !r.intact()).count();
    let v = json!({
        "mode": mode,
        "round": round,
        "streams": measured.len(),
        "broken": broken,
        "ttft_p50_ms": quantile(&mut ttft, 0.5),
        "ttft_p99_ms": quantile(&mut ttft, 0.99),
        "completion_p50_ms": quantile(&mut done, 0.5),
        "completion_p99_ms": quantile(&mut done, 0.99),
        "slow_share": by[2] as f64 / total.max(1) as f64,
        "streams_by_backend": by,
        "effective_weights_at_end": weights,
        "ring_moved_per_minute": moved as f64 / RING_SIZE / (ran_for.as_secs_f64() / 60.0),
    });
    println!("  {v}");
    v
}

fn median(runs: &[&Value], key: &str) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (quantile(&mut v, 0.5), min, max)
}

/// `rounds` rounds of a static and a load run, their order alternating.
pub fn run(rounds: usize) -> Value {
    println!(
        "inference: {} servers (slowness {SLOWNESS:?}), {CONCURRENCY} streams at a time, {rounds} rounds",
        SLOWNESS.len()
    );
    let fleet = Fleet::start(&SLOWNESS, &sim());
    let mut runs = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            ["static", "load"]
        } else {
            ["load", "static"]
        };
        for mode in order {
            runs.push(one(&fleet, mode, round));
        }
    }
    let of = |mode: &str| -> Vec<&Value> { runs.iter().filter(|r| r["mode"] == mode).collect() };
    let (st, ld) = (of("static"), of("load"));
    let mut summary = serde_json::Map::new();
    for key in [
        "ttft_p50_ms",
        "ttft_p99_ms",
        "completion_p50_ms",
        "completion_p99_ms",
        "slow_share",
    ] {
        let (s, smin, smax) = median(&st, key);
        let (l, lmin, lmax) = median(&ld, key);
        summary.insert(
            key.into(),
            json!({
                "static": s, "static_min": smin, "static_max": smax,
                "load": l, "load_min": lmin, "load_max": lmax,
                "load_over_static": if s > 0.0 { l / s } else { 0.0 },
            }),
        );
    }
    let (moved, moved_min, moved_max) = median(&ld, "ring_moved_per_minute");
    json!({
        "rounds": rounds,
        "slowness": SLOWNESS,
        "concurrency": CONCURRENCY,
        "warm_up_s": WARM_UP.as_secs(),
        "measured_s": MEASURED.as_secs(),
        "sim": {"base_token_ms": sim().base_token_ms, "per_stream_penalty": sim().per_stream_penalty, "max_running": sim().max_running},
        "token_mix": "20 tokens (±50%), a tenth 200 (±50%), fixed seed per round",
        "load_balancing": load_balancing(),
        "summary": summary,
        "broken_static": st.iter().filter_map(|r| r["broken"].as_u64()).sum::<u64>(),
        "broken_load": ld.iter().filter_map(|r| r["broken"].as_u64()).sum::<u64>(),
        "ring_moved_per_minute": {"median": moved, "min": moved_min, "max": moved_max},
        "runs": runs,
    })
}
