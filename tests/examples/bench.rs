//! `cargo xtask bench`: what the load balancer costs, next to baselines
//! measured in the same run (these machines are noisy; only ratios and
//! differences against a same-run baseline mean something).
//!
//! - Per-packet cost through BPF_PROG_TEST_RUN, one run per call so every
//!   run sees the original frame (with `repeat > 1` the kernel reruns the
//!   program on its own output), median over many calls, against a floor
//!   program (MAC swap + XDP_TX) timed the same way. The output of each
//!   timed path is checked.
//! - Maglev table build time, balance and disruption.
//! - Kernel memory of the maps at the default sizes.
//!
//! Writes target/bench/bench.md and target/bench/bench.json.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{
    flow::{PROTO_TCP, PROTO_UDP},
    maps::*,
};
use lb_tests::{harness::vip_key, packets::*};
use lb_userspace::{
    addr::to_map,
    datapath::{Datapath, MapSizes},
    maglev::{self, MaglevBackend},
    maps::Maps,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};

const CALLS: usize = 20_000;

/// Median and 10th percentile of the kernel-measured run time (ns) of
/// `frames`, cycled, one run per call; the verdict of every run must be
/// `want`.
fn time(prog: &Xdp, frames: &[Vec<u8>], want: u32) -> (f64, f64) {
    let mut samples = Vec::with_capacity(CALLS);
    let mut out = vec![0u8; 2048];
    for i in 0..CALLS {
        let frame = &frames[i % frames.len()];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("test run");
        assert_eq!(r.return_value, want, "verdict of case frame {i}");
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], samples[samples.len() / 10])
}

fn xdp<'a>(dp: &'a mut Datapath, name: &str) -> &'a mut Xdp {
    dp.ebpf
        .program_mut(name)
        .expect("program")
        .try_into()
        .expect("XDP program")
}

fn backend(id: u32, addr: &str) -> (u32, Backend, MaglevBackend) {
    let ip: IpAddr = addr.parse().unwrap();
    let (a, family) = to_map(ip);
    (
        id,
        Backend {
            addr: a,
            family,
            flags: BACKEND_F_ACTIVE,
            mac: [0; 6],
            vip_id: 0,
        },
        MaglevBackend {
            id,
            addr: ip,
            weight: 1,
        },
    )
}

fn per_packet(results: &mut Vec<(String, f64, f64)>) {
    let sizes = MapSizes::default();
    let mut dp = Datapath::load(sizes).expect("load");
    xdp(&mut dp, PROG_BENCH_FLOOR).load().expect("load floor");
    let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size).expect("maps");
    let (outer_v6, _) = to_map(OUTER_SRC_V6.parse().unwrap());
    maps.set_config(&LbConfig {
        ring_size: sizes.ring_size,
        flags: 0,
        outer_src_v6: outer_v6,
        outer_src_v4: v4(OUTER_SRC_V4),
        gateway_mac: GATEWAY_MAC,
        mtu: 1500,
        egress_ifindex: 0,
    })
    .unwrap();
    let vips = [
        (vip_key(VIP_V4, 80, PROTO_TCP), 0, &BACKEND_V4[..]),
        (vip_key(VIP_V4, 53, PROTO_UDP), 0, &BACKEND_V4[..]),
        (vip_key(VIP_V6, 443, PROTO_TCP), 0, &BACKEND_V6[..]),
        (
            vip_key(VIP_V4, 443, PROTO_TCP),
            VIP_F_AFFINITY,
            &BACKEND_V4[..],
        ),
    ];
    let mut id = 0;
    for (vip_id, (key, flags, addrs)) in vips.iter().enumerate() {
        let mut members = Vec::new();
        for a in addrs.iter() {
            id += 1;
            let (id, entry, m) = backend(id, a);
            maps.set_backend(
                id,
                &Backend {
                    vip_id: vip_id as u32,
                    ..entry
                },
            )
            .unwrap();
            members.push(m);
        }
        maps.set_vip(
            key,
            &VipMeta {
                vip_id: vip_id as u32,
                flags: *flags,
                active_ring: 0,
                _pad: 0,
            },
        )
        .unwrap();
        maps.publish_ring(key, &maglev::build(&members, sizes.ring_size))
            .unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let new_flows: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            let client = format!("203.0.113.{}", rng.random_range(1..255));
            to_lb(&tcp4(
                &client,
                1024 + (i % 60000) as u16,
                VIP_V4,
                80,
                Tcp::Ack,
                b"",
            ))
        })
        .collect();
    let cases: Vec<(&str, Vec<Vec<u8>>, u32)> = vec![
        ("IPv4 TCP new flow (connection-table insert)", new_flows, 3),
        (
            "IPv4 TCP established",
            vec![to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b""))],
            3,
        ),
        (
            "IPv6 TCP established",
            vec![to_lb(&tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Ack, b""))],
            3,
        ),
        (
            "IPv4 UDP",
            vec![to_lb(&udp4(CLIENT_V4, 5353, VIP_V4, 53, b"query"))],
            3,
        ),
        (
            "IPv4 TCP established, affinity VIP",
            vec![to_lb(&tcp4(CLIENT_V4, 40001, VIP_V4, 443, Tcp::Ack, b""))],
            3,
        ),
        (
            "non-VIP (XDP_PASS)",
            vec![to_lb(&tcp4(
                CLIENT_V4,
                40000,
                "198.51.100.99",
                80,
                Tcp::Ack,
                b"",
            ))],
            2,
        ),
    ];
    // Check the timed path's output once: a tunnel to a backend.
    {
        let prog = xdp(&mut dp, PROG_LB);
        let mut out = vec![0u8; 2048];
        let frame = &cases[1].1[0];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        assert_eq!(out.len(), frame.len() + 20, "encapsulated");
        assert_eq!(&out[14 + 20..], &frame[14..], "inner packet intact");
        assert!(
            BACKEND_V4.iter().any(|b| v4(b) == out[30..34]),
            "outer destination is a backend"
        );
    }
    let floor = time(xdp(&mut dp, PROG_BENCH_FLOOR), &cases[1].1, 3);
    results.push(("floor: MAC swap + XDP_TX".into(), floor.0, floor.1));
    for (name, frames, want) in &cases {
        let (median, p10) = time(xdp(&mut dp, PROG_LB), frames, *want);
        results.push((name.to_string(), median, p10));
    }
}

fn maglev_figures() -> Value {
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

/// Kernel memory (memlock) of each map at the default sizes, from fdinfo.
fn map_memory() -> BTreeMap<String, u64> {
    let dp = Datapath::load(MapSizes::default()).expect("load");
    let mut out = BTreeMap::new();
    for (name, map) in dp.ebpf.maps() {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = match map {
            aya::maps::Map::Array(m)
            | aya::maps::Map::PerCpuArray(m)
            | aya::maps::Map::HashMap(m)
            | aya::maps::Map::LruHashMap(m)
            | aya::maps::Map::DevMapHash(m) => m.fd().as_fd().as_raw_fd(),
            _ => continue,
        };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        if let Some(bytes) = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
        {
            out.insert(name.to_string(), bytes);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    println!("== lb bench ==");
    let mut per = Vec::new();
    per_packet(&mut per);
    let floor = per[0].1;
    let mut md = String::from(
        "## Per-packet cost (BPF_PROG_TEST_RUN, one run per call, median of 20,000)\n\n",
    );
    md.push_str("| Path | median ns | p10 ns | above floor ns |\n|---|---:|---:|---:|\n");
    for (name, median, p10) in &per {
        md.push_str(&format!(
            "| {name} | {median:.0} | {p10:.0} | {:.0} |\n",
            median - floor
        ));
    }
    let maglev = maglev_figures();
    md.push_str("\n## Maglev tables\n\n| M | backends | build ms | max/min slots | extra moved on removal | extra moved on join |\n|---:|---:|---:|---:|---:|---:|\n");
    for r in maglev.as_array().unwrap() {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.3} | {:.2}% | {:.2}% |\n",
            r["m"],
            r["n"],
            r["build_ms"].as_f64().unwrap(),
            r["max_over_min"].as_f64().unwrap(),
            r["extra_moved_on_remove_pct"].as_f64().unwrap(),
            r["extra_moved_on_join_pct"].as_f64().unwrap()
        ));
    }
    let memory = map_memory();
    let total: u64 = memory.values().sum();
    md.push_str("\n## Map memory at default sizes (kernel memlock)\n\n| Map | MiB |\n|---|---:|\n");
    for (name, bytes) in &memory {
        md.push_str(&format!(
            "| {name} | {:.2} |\n",
            *bytes as f64 / (1 << 20) as f64
        ));
    }
    md.push_str(&format!(
        "| total | {:.1} |\n",
        total as f64 / (1 << 20) as f64
    ));
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.md"), &md)?;
    let json = json!({
        "per_packet_ns": per.iter().map(|(n, m, p)| json!({"path": n, "median": m, "p10": p, "above_floor": m - floor})).collect::<Vec<_>>(),
        "maglev": maglev,
        "map_memory_bytes": memory,
    });
    std::fs::write(dir.join("bench.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("written to {}", dir.display());
    Ok(())
}
