//! Maglev table build time, balance and disruption.

use std::{net::IpAddr, time::Instant};

use lb_userspace::maglev::{self, MaglevBackend};
use serde_json::{Value, json};

pub fn figures() -> Value {
    let mut rows = Vec::new();
    for m in [65537u32, 655373] {
        for n in [10u32, 100, 1000] {
            let backends: Vec<MaglevBackend> = (0..n)
                .map(|i| MaglevBackend {
                    id: i,
                    addr: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                    weight: 1,
                })
                .collect();
            let mut times = Vec::new();
            let mut ring = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                ring = maglev::build(&backends, m);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let counts = maglev::slot_counts(&ring);
            let (min, max) = (
                counts.values().min().copied().unwrap_or(0),
                counts.values().max().copied().unwrap_or(0),
            );
            let gone = n / 2;
            let rest: Vec<MaglevBackend> =
                backends.iter().copied().filter(|b| b.id != gone).collect();
            let after = maglev::build(&rest, m);
            let moved_remove = ring
                .iter()
                .zip(&after)
                .filter(|(a, b)| **a != gone && a != b)
                .count();
            let joined: Vec<MaglevBackend> = backends
                .iter()
                .copied()
                .chain([MaglevBackend {
                    id: n,
                    addr: IpAddr::from([10, 255, 255, 254]),
                    weight: 1,
                }])
                .collect();
            let with_new = maglev::build(&joined, m);
            let moved_join = ring
                .iter()
                .zip(&with_new)
                .filter(|(a, b)| a != b && **b != n)
                .count();
            rows.push(json!({
                "m": m, "n": n, "build_ms": times[2], "max_over_min": max as f64 / min.max(1) as f64,
                "extra_moved_on_remove_pct": 100.0 * moved_remove as f64 / m as f64,
                "extra_moved_on_join_pct": 100.0 * moved_join as f64 / m as f64,
            }));
        }
    }
    Value::Array(rows)
}
