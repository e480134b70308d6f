//! `cargo xtask bench`: what the load balancer costs, next to baselines
//! measured in the same run (these machines are noisy; only ratios and
//! differences against a same-run baseline mean something).
//!
//! - `per_packet`: cost per packet through BPF_PROG_TEST_RUN above a floor,
//!   also for stateless VIPs (`stateless`) and with 1 or 64 VIPs of 3 or
//!   100 backends (`table_size`).
//! - `maglev`: table build time, balance and disruption.
//! - `forwarding`: rate through the balancer on veth, fed by live frames,
//!   against a plain devmap redirect on the same path; again with 16.5 M
//!   flows in the connection table; and for a stateless VIP with as many
//!   flows and with 16.5 M (no table).
//! - `nftables`: CPU per forwarded packet against an nftables DNAT load
//!   balancer, both fed by trafgen.
//! - `control`: failover and restart times, lbd's memory at 100 x 100.
//! - `memory`: kernel memory of the maps at the default sizes, and per
//!   connection-table entry, probation entry and VIP (a stateless VIP's
//!   flows have no entry).
//! - `programs`: the programs' instructions after verification, JIT size,
//!   and the instructions the verifier processed.
//! - `cluster`: connections broken when an LB node is cut off after a
//!   backend was added, with second chance off and on.
//! - `inference`: token streams over simulated inference servers, one
//!   three times slower, with static Maglev and with load-aware balancing:
//!   time to first token, completion time, broken streams, ring moved
//!   (`BENCH_INFERENCE_ROUNDS`, default 3).
//!
//! Writes target/bench/bench.md and target/bench/bench.json (or into
//! `BENCH_OUT_DIR`: `cargo xtask bench --against` keeps the last full
//! run's files that way). `BENCH_ONLY=forwarding,maglev` runs only the
//! sections named.

mod cluster;
mod control;
mod forwarding;
mod inference;
mod maglev;
mod memory;
mod nftables;
mod per_packet;
mod programs;
mod stateless;
mod table_size;

use serde_json::{Map, Value, json};

/// Whether section `name` runs (all do unless `BENCH_ONLY` names some).
fn wanted(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

fn main() -> anyhow::Result<()> {
    println!("== lb bench ==");
    lb_tests::netns::clean_up_on_signal();
    let mut md = String::new();
    let mut out = Map::new();
    out.insert("machine".into(), machine());
    if wanted("per_packet") {
        let mut per = Vec::new();
        per_packet::run(&mut per);
        let floor = per[0].1;
        md.push_str(
            "## Per-packet cost (BPF_PROG_TEST_RUN, one run per call, median of 20,000)\n\n",
        );
        md.push_str("| Path | median ns | p10 ns | above floor ns |\n|---|---:|---:|---:|\n");
        for (name, median, p10) in &per {
            md.push_str(&format!(
                "| {name} | {median:.0} | {p10:.0} | {:.0} |\n",
                median - floor
            ));
        }
        out.insert(
            "per_packet_ns".into(),
            per.iter()
                .map(
                    |(n, m, p)| json!({"path": n, "median": m, "p10": p, "above_floor": m - floor}),
                )
                .collect(),
        );
    }
    if wanted("forwarding") {
        let f = forwarding::run();
        let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "\n## Forwarding on veth, live frames, {} flows, {} CPUs (median of 3 runs)\n\n\
             | Path | Mpps at the sink | ratio |\n|---|---:|---:|\n\
             | generator into XDP_DROP on lb0 | {:.2} | |\n\
             | plain devmap redirect lb0 -> lb1 | {:.2} | 1.00 |\n\
             | load balancer (IP-in-IP) lb0 -> lb1 | {:.2} | {:.2} |\n\n\
             Program run time per frame (kernel BPF stats): plain redirect {:.0} ns, load balancer {:.0} ns.\n\
             Connection-table hits: {:.1}% of the balancer's lookups ({} flows in the table, {} on probation at the end).\n",
            f["flows"],
            f["cpus"],
            n(&f["generator_into_drop_mpps"]),
            n(&f["plain_redirect_mpps"]),
            n(&f["lb_mpps"]),
            n(&f["lb_over_redirect"]),
            n(&f["plain_redirect_program_ns"]),
            n(&f["lb_program_ns"]),
            n(&f["conn_hit_share"]) * 100.0,
            f["flows_in_connection_table"],
            f["flows_on_probation"],
        ));
        let large = &f["large"];
        if let Some(why) = large["skipped"].as_str() {
            md.push_str(&format!("\nLarge tables skipped: {why}.\n"));
        } else {
            md.push_str(&format!(
                "\n### The same with {} flows in a {}-entry connection table (median of 3 runs)\n\n\
                 Every flow the generator can tell apart (256 source addresses x 64,512 source ports); \
                 the tables take {:.2} GiB of kernel memory; {} flows promoted in a {:.0}-s warm-up, \
                 {} in the table.\n\n\
                 | Path | Mpps at the sink | ratio |\n|---|---:|---:|\n\
                 | plain devmap redirect lb0 -> lb1 | {:.2} | 1.00 |\n\
                 | load balancer (IP-in-IP) lb0 -> lb1 | {:.2} | {:.2} |\n\n\
                 Program run time per frame (kernel BPF stats): plain redirect {:.0} ns, load balancer {:.0} ns.\n\
                 Connection-table hits: {:.1}% of the balancer's lookups.\n",
                large["flows"],
                large["connection_table_entries"],
                n(&large["tables_kernel_bytes"]) / (1u64 << 30) as f64,
                large["flows_promoted_in_warm_up"],
                n(&large["warm_up_s"]),
                large["flows_in_connection_table"],
                n(&large["plain_redirect_mpps"]),
                n(&large["lb_mpps"]),
                n(&large["lb_over_redirect"]),
                n(&large["plain_redirect_program_ns"]),
                n(&large["lb_program_ns"]),
                n(&large["conn_hit_share"]) * 100.0,
            ));
        }
        let stateless = &f["stateless"];
        md.push_str(
            "\n### A stateless VIP: TCP ACKs placed by the ring alone (median of 3 runs)\n\n\
             | Flows | plain redirect Mpps | load balancer Mpps | ratio | program ns: redirect / balancer |\n\
             |---:|---:|---:|---:|---:|\n",
        );
        for row in stateless["rows"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} |\n",
                row["flows"],
                n(&row["plain_redirect_mpps"]),
                n(&row["lb_mpps"]),
                n(&row["lb_over_redirect"]),
                n(&row["plain_redirect_program_ns"]),
                n(&row["lb_program_ns"]),
            ));
        }
        md.push_str(&format!(
            "\nNo connection-table lookup in these runs; {} table entries at the end, \
             default map sizes, no warm-up.\n",
            stateless["table_entries"]
        ));
        out.insert("forwarding".into(), f);
    }
    if wanted("nftables") {
        let n = nftables::run();
        md.push_str(&format!(
            "\n## CPU per forwarded packet against nftables (trafgen, {} packets, {} flows)\n\n\
             Whole-machine busy time over packets counted at the sink, minus the\n\
             generator-only cost ({:.0} ns per packet) from the same run.\n\n\
             | Path | CPU ns per packet | Mpps | ratio |\n|---|---:|---:|---:|\n\
             | nftables DNAT, jhash map | {:.0} | {:.2} | 1.00 |\n\
             | load balancer (XDP, IP-in-IP) | {:.0} | {:.2} | {:.2} |\n\
             | plain XDP devmap redirect (reference) | {:.0} | {:.2} | {:.2} |\n\n\
             Of the balancer's figure, its program ran {:.0} ns per packet (kernel BPF stats).\n",
            n["packets"],
            n["flows"],
            n["generator_ns_per_packet"].as_f64().unwrap(),
            n["nft_cpu_ns_per_packet"].as_f64().unwrap(),
            n["nft_mpps"].as_f64().unwrap(),
            n["lb_cpu_ns_per_packet"].as_f64().unwrap(),
            n["lb_mpps"].as_f64().unwrap(),
            n["lb_over_nft"].as_f64().unwrap(),
            n["plain_redirect_cpu_ns_per_packet"].as_f64().unwrap(),
            n["plain_redirect_mpps"].as_f64().unwrap(),
            n["plain_redirect_cpu_ns_per_packet"].as_f64().unwrap()
                / n["nft_cpu_ns_per_packet"].as_f64().unwrap(),
            n["lb_program_ns"].as_f64().unwrap(),
        ));
        out.insert("nftables".into(), n);
    }
    if wanted("maglev") {
        let maglev = maglev::figures();
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
        out.insert("maglev".into(), maglev);
    }
    if wanted("control") {
        let c = control::run();
        md.push_str(&format!(
            "\n## Control plane (real lbd, lab network, median of 5)\n\n\
             | Measure | value |\n|---|---:|\n\
             | backend death to marked down (HTTP checks, fall 2 x 200 ms) | {:.0} ms |\n\
             | lbd restart after SIGKILL, adopting pinned state, to answering | {:.0} ms |\n\
             | lbd start with 100 VIPs x 100 backends (M = 65537) | {:.0} ms |\n\
             | lbd resident memory with 100 VIPs x 100 backends | {:.1} MiB |\n",
            c["failover_ms_median"].as_f64().unwrap(),
            c["restart_ms_median"].as_f64().unwrap(),
            c["large"]["start_ms"].as_f64().unwrap(),
            c["large"]["rss_mib"].as_f64().unwrap(),
        ));
        out.insert("control".into(), c);
    }
    if wanted("cluster") {
        let c = cluster::run();
        md.push_str(&format!(
            "\n## Three LB nodes, one cut off after a backend was added ({} long-lived connections, 50 new per second)\n\n\
             | Second chance | long-lived broken | longest stall ms | new failed / ok | router converged ms |\n\
             |---|---:|---:|---:|---:|\n",
            c[0]["long_lived"]
        ));
        for r in c.as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {} | {:.0} | {} / {} | {} |\n",
                if r["second_chance"] == true {
                    "on"
                } else {
                    "off"
                },
                r["broken"],
                r["max_stall_ms"].as_f64().unwrap_or(0.0),
                r["new_failed"],
                r["new_ok"],
                r["router_converged_ms"]
                    .as_f64()
                    .map_or("never".to_string(), |ms| format!("{ms:.0}")),
            ));
        }
        out.insert("cluster".into(), c);
    }
    if wanted("inference") {
        let rounds = std::env::var("BENCH_INFERENCE_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        let i = inference::run(rounds);
        let s = &i["summary"];
        md.push_str(&format!(
            "\n## Inference streams, one of three servers 3x slower ({} streams at a time, median of {} rounds, range in brackets)\n\n\
             | Measure | static Maglev | load mode (flows) | load / static |\n|---|---:|---:|---:|\n",
            i["concurrency"], i["rounds"]
        ));
        for (key, label, unit) in [
            ("ttft_p50_ms", "time to first token p50", " ms"),
            ("ttft_p99_ms", "time to first token p99", " ms"),
            ("completion_p50_ms", "stream completion p50", " ms"),
            ("completion_p99_ms", "stream completion p99", " ms"),
            ("slow_share", "slow server's share of new streams", ""),
        ] {
            let r = &s[key];
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            let digits = if unit.is_empty() { 2 } else { 0 };
            md.push_str(&format!(
                "| {label} | {:.digits$}{unit} [{:.digits$}-{:.digits$}] | {:.digits$}{unit} [{:.digits$}-{:.digits$}] | {:.2} |\n",
                f("static"),
                f("static_min"),
                f("static_max"),
                f("load"),
                f("load_min"),
                f("load_max"),
                f("load_over_static"),
            ));
        }
        let moved = &i["ring_moved_per_minute"];
        md.push_str(&format!(
            "| broken streams | {} | {} | |\n\n\
             Load mode moved {:.1}% of the ring per minute (median, range {:.1}-{:.1}%), counted by `lb_ring_slots_moved_total` over each run.\n",
            i["broken_static"],
            i["broken_load"],
            moved["median"].as_f64().unwrap_or(0.0) * 100.0,
            moved["min"].as_f64().unwrap_or(0.0) * 100.0,
            moved["max"].as_f64().unwrap_or(0.0) * 100.0,
        ));
        out.insert("inference".into(), i);
    }
    if wanted("memory") {
        let memory = memory::map_memory();
        let total: u64 = memory.values().map(|m| m.bytes).sum();
        let mib = |bytes: f64| bytes / (1 << 20) as f64;
        md.push_str(
            "\n## Map memory at default sizes (kernel memlock)\n\n| Map | MiB |\n|---|---:|\n",
        );
        for (name, m) in &memory {
            md.push_str(&format!("| {name} | {:.2} |\n", mib(m.bytes as f64)));
        }
        md.push_str(&format!("| total | {:.1} |\n", mib(total as f64)));
        let per = memory::per_entry(&memory);
        let entry = |key: &str, label: &str, map: &str| {
            let e = &per[key];
            format!(
                "| {label} | {:.0} | {map}: {:.1} MiB / {} entries |\n",
                e["bytes"].as_f64().unwrap(),
                mib(e["map_bytes"].as_f64().unwrap()),
                e["entries"]
            )
        };
        let vip = &per["vip"];
        md.push_str(&format!(
            "\nPer entry, from the same accounting:\n\n| Per | bytes | from |\n|---|---:|---|\n{}{}\
             | flow of a stateless VIP | {} | no entry in either table |\n\
             | VIP | {:.0} | {}, each over {} VIPs |\n",
            entry(
                "connection_entry",
                "connection-table entry",
                lb_common::maps::MAP_CONNS
            ),
            entry(
                "probation_entry",
                "probation entry",
                lb_common::maps::MAP_PROBATION
            ),
            per["stateless_flow"]["bytes"],
            vip["bytes"].as_f64().unwrap(),
            vip["parts"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, b)| format!("{name} {:.0}", b.as_f64().unwrap()))
                .collect::<Vec<_>>()
                .join(" + "),
            vip["vips"],
        ));
        out.insert(
            "map_memory_bytes".into(),
            memory
                .iter()
                .map(|(name, m)| (name.clone(), json!(m.bytes)))
                .collect(),
        );
        out.insert("map_memory_per_entry".into(), per);
    }
    if wanted("programs") {
        let programs = programs::run();
        md.push_str(
            "\n## Programs as loaded\n\n\
             | Program | instructions (xlated) | JIT bytes | instructions the verifier processed |\n\
             |---|---:|---:|---:|\n",
        );
        for p in programs.as_array().unwrap() {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                p["program"].as_str().unwrap(),
                p["xlated_insns"],
                p["jited_bytes"],
                p["verified_insns"],
            ));
        }
        out.insert("programs".into(), programs);
    }
    md.insert_str(
        0,
        &format!(
            "Machine: {}\n\n",
            out["machine"]["summary"].as_str().unwrap_or("")
        ),
    );
    println!("{md}");
    let dir = std::env::var_os("BENCH_OUT_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.md"), &md)?;
    std::fs::write(
        dir.join("bench.json"),
        serde_json::to_vec_pretty(&Value::Object(out))?,
    )?;
    println!("written to {}", dir.display());
    Ok(())
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = forwarding::cpus();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1 << 20) as f64);
    json!({
        "cpu": cpu, "cpus": cpus, "kernel": kernel, "memory_gib": mem_gib,
        "summary": format!("{cpu}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {kernel}"),
    })
}
