//! CPU per forwarded packet against an nftables load balancer. Live frames
//! cannot feed the kernel stack, so `trafgen` (netsniff-ng) sends the same
//! frames for every contender, on the lab of `forwarding`:
//!
//! - generator only: `bench_sink` drops everything on lb0;
//! - a plain devmap redirect on lb0 to lb1: what any XDP forwarder on this
//!   path pays (a veth fed by the stack hands XDP an skb, copied into a
//!   page first);
//! - the balancer on lb0, tunnelling out of lb1 to the sink on be0;
//! - nftables: no XDP on lb0; a `dnat to jhash ... map` rule picks one of
//!   the same three backends and the kernel routes the packet out of lb1.
//!
//! CPU time is the whole machine's busy time (/proc/stat) during the send;
//! per forwarded packet it is that over the packets counted at the sink,
//! minus the generator-only figure measured the same way in the same run.

use std::{io::Write, process::Command};

use lb_common::{bench::*, maps::PROG_LB};
use lb_tests::{netns::Netns, packets::*};
use lb_userspace::datapath::Datapath;
use serde_json::{Value, json};

use crate::forwarding::{BpfStats, Lab, VIP_PORT, prog_stats, sink_count};

const PACKETS: u64 = 2_000_000;
/// Source addresses x source ports the frames cycle through: the address's
/// last byte and the port's low byte both step by one per frame, with
/// periods 254 and 16, so 2032 flows.
const FLOWS: u64 = 254 * 16 / 2;

/// A trafgen configuration for UDP frames to the VIP, source address
/// 203.0.113.1-254 and source port 1024-1039 (checksums computed per frame).
fn trafgen_config(lab: &Lab) -> String {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:#04x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let vip = v4(VIP_V4);
    format!(
        "{{\n  {}, {},\n  0x08, 0x00,\n  \
         0x45, 0x00, const16(46), const16(0), const16(0), 64, 17, csumip(14, 33),\n  \
         203, 0, 113, dinc(1, 254),\n  {}, {}, {}, {},\n  \
         0x04, dinc(0, 15), const16({VIP_PORT}), const16(26), const16(0),\n  \
         fill(0x00, 18)\n}}\n",
        mac(lab.lb0_mac),
        mac(lab.gen0_mac),
        vip[0],
        vip[1],
        vip[2],
        vip[3]
    )
}

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    (total - idle, total)
}

struct Sample {
    sink_packets: u64,
    busy_ns: f64,
    secs: f64,
}

/// Send `PACKETS` frames from the generator namespace; what the sink
/// `slot` counted, and the CPU time it took.
fn send(lab: &Lab, config_path: &str, dp: &Datapath, slot: u32) -> Sample {
    let before = sink_count(dp, slot);
    let ticks = clock_ticks();
    let (busy0, _) = cpu_jiffies();
    let start = std::time::Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.generator.name, "trafgen"])
        .args(["--dev", "gen0", "--conf", config_path, "--cpus", "1"])
        .args(["--num", &PACKETS.to_string()])
        .output()
        .expect("run trafgen");
    assert!(
        out.status.success(),
        "trafgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    let secs = start.elapsed().as_secs_f64() - 0.1;
    let (busy1, _) = cpu_jiffies();
    Sample {
        sink_packets: sink_count(dp, slot) - before,
        busy_ns: (busy1 - busy0) as f64 * 1e9 / ticks,
        secs,
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn nft_setup(lb: &Netns, lab: &Lab) {
    let be0 = lab
        .be0_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    lb.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    lb.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"]);
    lb.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.lb0.rp_filter=0"]);
    lb.exec(&["ip", "addr", "add", "203.0.113.254/24", "dev", "lb0"]);
    lb.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "lb1"]);
    for b in BACKEND_V4 {
        lb.exec(&[
            "ip",
            "neigh",
            "replace",
            b,
            "lladdr",
            &be0,
            "dev",
            "lb1",
            "nud",
            "permanent",
        ]);
    }
    let rules = format!(
        "table ip lbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr {VIP_V4} udp dport {VIP_PORT} dnat to jhash ip saddr . udp sport mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }}\n  }}\n}}\n",
        BACKEND_V4[0], BACKEND_V4[1], BACKEND_V4[2]
    );
    let path = std::env::temp_dir().join(format!("lbt-nft-{}.nft", std::process::id()));
    std::fs::write(&path, rules).expect("nft rules");
    lb.exec(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

pub fn run() -> Value {
    let lab = Lab::new();
    let (mut dp, _maps) = lab.load(&[PROG_BENCH_SINK, PROG_BENCH_REDIRECT]);
    let config_path = std::env::temp_dir().join(format!("lbt-trafgen-{}.cfg", std::process::id()));
    std::fs::File::create(&config_path)
        .and_then(|mut f| f.write_all(trafgen_config(&lab).as_bytes()))
        .expect("trafgen config");
    let config = config_path.to_str().unwrap().to_string();

    let generator = lab.with_on_lb0(&mut dp, PROG_BENCH_SINK, |dp| {
        send(&lab, &config, dp, SINK_FRAMES)
    });
    let redirect = lab.with_on_lb0(&mut dp, PROG_BENCH_REDIRECT, |dp| {
        send(&lab, &config, dp, SINK_FRAMES)
    });
    let (balancer, (run_ns0, runs0, run_ns1, runs1)) = lab.with_on_lb0(&mut dp, PROG_LB, |dp| {
        let balancer = send(&lab, &config, dp, SINK_TUNNELLED);
        // Once more with run-time statistics on (they slow every program
        // down, so not during the timed send): the program's own share.
        let _stats = BpfStats::enable();
        let (run_ns0, runs0) = prog_stats(dp, PROG_LB);
        send(&lab, &config, dp, SINK_TUNNELLED);
        let (run_ns1, runs1) = prog_stats(dp, PROG_LB);
        (balancer, (run_ns0, runs0, run_ns1, runs1))
    });

    nft_setup(&lab.lb, &lab);
    let nft = send(&lab, &config, &dp, SINK_FRAMES);
    let _ = std::fs::remove_file(&config_path);

    for (name, s) in [
        ("generator", &generator),
        ("plain redirect", &redirect),
        ("balancer", &balancer),
        ("nftables", &nft),
    ] {
        assert!(
            s.sink_packets > PACKETS * 9 / 10,
            "{name}: {} of {PACKETS} packets reached the sink",
            s.sink_packets
        );
    }
    let per_packet = |s: &Sample| s.busy_ns / s.sink_packets as f64;
    let base = per_packet(&generator);
    let lb_ns = per_packet(&balancer) - base;
    let nft_ns = per_packet(&nft) - base;
    let redirect_ns = per_packet(&redirect) - base;
    json!({
        "packets": PACKETS,
        "flows": FLOWS,
        "generator_ns_per_packet": base,
        "lb_cpu_ns_per_packet": lb_ns,
        "nft_cpu_ns_per_packet": nft_ns,
        "lb_over_nft": lb_ns / nft_ns,
        "plain_redirect_cpu_ns_per_packet": redirect_ns,
        "lb_program_ns": (run_ns1 - run_ns0) as f64 / (runs1 - runs0).max(1) as f64,
        "generator_mpps": generator.sink_packets as f64 / generator.secs / 1e6,
        "plain_redirect_mpps": redirect.sink_packets as f64 / redirect.secs / 1e6,
        "lb_mpps": balancer.sink_packets as f64 / balancer.secs / 1e6,
        "nft_mpps": nft.sink_packets as f64 / nft.secs / 1e6,
    })
}
