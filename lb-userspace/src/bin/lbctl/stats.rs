//! `lbctl stats`: the data plane's counters, with rates from two samples.

use std::time::Duration;

use lb_userspace::control::Request;
use serde_json::Value;

use crate::{Cli, call, print::*};

/// Two samples `interval` seconds apart; rates from their difference.
pub async fn stats(cli: &Cli, interval: f64) -> Result<(), String> {
    if !(0.1..=60.0).contains(&interval) {
        return Err(format!("--interval {interval} is out of range 0.1..=60"));
    }
    let a = call(cli, Request::Stats).await?;
    tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    let b = call(cli, Request::Stats).await?;
    let dt = (b["time_s"].as_f64().unwrap_or(0.0) - a["time_s"].as_f64().unwrap_or(0.0)).max(1e-3);
    let rate = |x: &Value, y: &Value, field: &str| {
        (y[field]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(x[field].as_u64().unwrap_or(0))) as f64
            / dt
    };
    let mut vips = Vec::new();
    for (x, y) in a["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(b["vips"].as_array().into_iter().flatten())
    {
        vips.push(serde_json::json!({
            "vip": y["vip"], "packets_per_s": rate(x, y, "packets"), "bits_per_s": 8.0 * rate(x, y, "bytes"),
            "new_flows_per_s": rate(x, y, "new_flows"), "dropped_per_s": rate(x, y, "dropped"), "packets": y["packets"],
        }));
    }
    let mut backends = Vec::new();
    for (x, y) in a["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(b["backends"].as_array().into_iter().flatten())
    {
        backends.push(serde_json::json!({
            "vip": y["vip"], "backend": y["address"], "packets_per_s": rate(x, y, "packets"),
            "bits_per_s": 8.0 * rate(x, y, "bytes"), "new_flows_per_s": rate(x, y, "new_flows"), "packets": y["packets"],
        }));
    }
    let out = serde_json::json!({ "interval_s": dt, "vips": vips, "backends": backends, "counters": b["counters"] });
    if cli.json {
        print_json(&out);
        return Ok(());
    }
    table(
        &["VIP", "PKT/S", "BIT/S", "NEW/S", "DROP/S", "PACKETS"],
        vips.iter().map(|v| {
            vec![
                s(&v["vip"]),
                num(&v["packets_per_s"]),
                num(&v["bits_per_s"]),
                num(&v["new_flows_per_s"]),
                num(&v["dropped_per_s"]),
                s(&v["packets"]),
            ]
        }),
    );
    println!();
    table(
        &["VIP", "BACKEND", "PKT/S", "BIT/S", "NEW/S", "PACKETS"],
        backends.iter().map(|v| {
            vec![
                s(&v["vip"]),
                s(&v["backend"]),
                num(&v["packets_per_s"]),
                num(&v["bits_per_s"]),
                num(&v["new_flows_per_s"]),
                s(&v["packets"]),
            ]
        }),
    );
    Ok(())
}
