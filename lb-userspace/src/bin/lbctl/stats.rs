//! `lbctl stats`: the data plane's counters, with rates from two samples.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_userspace::control::{Request, Stats};
use serde::Serialize;

use crate::{Cli, call, print::*};

/// What `lbctl --json stats` prints.
#[derive(Debug, Serialize)]
struct Rates {
    interval_s: f64,
    vips: Vec<VipRates>,
    backends: Vec<BackendRates>,
    /// Every verdict counter at the second sample.
    counters: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct VipRates {
    vip: String,
    packets_per_s: f64,
    bits_per_s: f64,
    new_flows_per_s: f64,
    dropped_per_s: f64,
    /// The count at the second sample.
    packets: u64,
}

#[derive(Debug, Serialize)]
struct BackendRates {
    vip: String,
    backend: IpAddr,
    packets_per_s: f64,
    bits_per_s: f64,
    new_flows_per_s: f64,
    packets: u64,
}

/// Two samples `interval` seconds apart; rates from their difference.
pub async fn stats(cli: &Cli, interval: f64) -> Result<(), String> {
    if !(0.1..=60.0).contains(&interval) {
        return Err(format!("--interval {interval} is out of range 0.1..=60"));
    }
    let a: Stats = call(cli, Request::Stats).await?;
    tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    let b: Stats = call(cli, Request::Stats).await?;
    let out = rates(&a, b);
    if cli.json {
        print_json(&out);
        return Ok(());
    }
    table(
        &["VIP", "PKT/S", "BIT/S", "NEW/S", "DROP/S", "PACKETS"],
        out.vips.iter().map(|v| {
            vec![
                v.vip.clone(),
                num(v.packets_per_s),
                num(v.bits_per_s),
                num(v.new_flows_per_s),
                num(v.dropped_per_s),
                v.packets.to_string(),
            ]
        }),
    );
    println!();
    table(
        &["VIP", "BACKEND", "PKT/S", "BIT/S", "NEW/S", "PACKETS"],
        out.backends.iter().map(|v| {
            vec![
                v.vip.clone(),
                v.backend.to_string(),
                num(v.packets_per_s),
                num(v.bits_per_s),
                num(v.new_flows_per_s),
                v.packets.to_string(),
            ]
        }),
    );
    Ok(())
}

/// Rates from `a` to `b`, row by row in lbd's order (a counter that went
/// down, reset between the samples, counts as no traffic).
fn rates(a: &Stats, b: Stats) -> Rates {
    let dt = (b.time_s - a.time_s).max(1e-3);
    let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    let vips = a
        .vips
        .iter()
        .zip(b.vips)
        .map(|(x, y)| VipRates {
            packets_per_s: rate(x.packets, y.packets),
            bits_per_s: 8.0 * rate(x.bytes, y.bytes),
            new_flows_per_s: rate(x.new_flows, y.new_flows),
            dropped_per_s: rate(x.dropped, y.dropped),
            packets: y.packets,
            vip: y.vip,
        })
        .collect();
    let backends = a
        .backends
        .iter()
        .zip(b.backends)
        .map(|(x, y)| BackendRates {
            packets_per_s: rate(x.packets, y.packets),
            bits_per_s: 8.0 * rate(x.bytes, y.bytes),
            new_flows_per_s: rate(x.new_flows, y.new_flows),
            packets: y.packets,
            vip: y.vip,
            backend: y.address,
        })
        .collect();
    Rates {
        interval_s: dt,
        vips,
        backends,
        counters: b.counters,
    }
}
