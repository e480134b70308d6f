//! `lbctl stats`: the data plane's counters, with rates from two samples.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_userspace::control::{BackendCounters, Request, Stats, VipCounters};
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

/// Rates from `a` to `b`, each row of `b` against the same VIP's (or
/// backend's) row of `a`: a VIP added or removed between the samples moves
/// the others' places in the lists. A row new in `b`, or a counter that
/// went down (reset between the samples), counts as no traffic.
fn rates(a: &Stats, b: Stats) -> Rates {
    let dt = (b.time_s - a.time_s).max(1e-3);
    let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    let vips_before: BTreeMap<&str, &VipCounters> =
        a.vips.iter().map(|v| (v.vip.as_str(), v)).collect();
    let backends_before: BTreeMap<(&str, IpAddr), &BackendCounters> = a
        .backends
        .iter()
        .map(|v| ((v.vip.as_str(), v.address), v))
        .collect();
    let vips = b
        .vips
        .into_iter()
        .map(|y| {
            (
                vips_before
                    .get(y.vip.as_str())
                    .copied()
                    .unwrap_or(&y)
                    .clone(),
                y,
            )
        })
        .map(|(x, y)| VipRates {
            packets_per_s: rate(x.packets, y.packets),
            bits_per_s: 8.0 * rate(x.bytes, y.bytes),
            new_flows_per_s: rate(x.new_flows, y.new_flows),
            dropped_per_s: rate(x.dropped, y.dropped),
            packets: y.packets,
            vip: y.vip,
        })
        .collect();
    let backends = b
        .backends
        .into_iter()
        .map(|y| {
            let key = (y.vip.as_str(), y.address);
            (backends_before.get(&key).copied().unwrap_or(&y).clone(), y)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, packets: u64) -> VipCounters {
        VipCounters {
            vip: name.to_string(),
            packets,
            bytes: packets * 100,
            new_flows: 0,
            dropped: 0,
        }
    }

    fn backend(vip: &str, address: &str, packets: u64) -> BackendCounters {
        BackendCounters {
            vip: vip.to_string(),
            address: address.parse().unwrap(),
            packets,
            bytes: packets * 100,
            new_flows: 0,
        }
    }

    fn sample(time_s: f64, vips: Vec<VipCounters>, backends: Vec<BackendCounters>) -> Stats {
        Stats {
            time_s,
            vips,
            backends,
            counters: BTreeMap::new(),
        }
    }

    #[test]
    fn rates_follow_each_vip_and_backend_when_another_appears_between_samples() {
        let web = "198.51.100.10:80/tcp";
        let dns = "198.51.100.10:53/udp";
        let a = sample(
            10.0,
            vec![vip(web, 1000)],
            vec![backend(web, "198.51.100.101", 1000)],
        );
        // The new VIP comes first in lbd's order.
        let b = sample(
            12.0,
            vec![vip(dns, 50_000), vip(web, 1200)],
            vec![
                backend(dns, "198.51.100.102", 50_000),
                backend(web, "198.51.100.101", 1200),
            ],
        );
        let r = rates(&a, b);
        let by_vip: BTreeMap<&str, f64> = r
            .vips
            .iter()
            .map(|v| (v.vip.as_str(), v.packets_per_s))
            .collect();
        assert_eq!(by_vip[web], 100.0);
        assert_eq!(by_vip[dns], 0.0, "new since the first sample: no rate yet");
        let web_backend = r.backends.iter().find(|b| b.vip == web).unwrap();
        assert_eq!(web_backend.packets_per_s, 100.0);
    }
}
