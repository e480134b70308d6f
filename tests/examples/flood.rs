//! `cargo run -p lb-tests --example flood` (root): how many established
//! flows keep their backend through spoofed floods of several shapes, the
//! table behind docs/architecture.md "Spoofed floods". `FLOOD_PROTO=udp`
//! floods UDP instead of TCP; `FLOOD_PER_FLOW=1,2,3` and
//! `FLOOD_GAPS=0,2048,...` (0: all idle) choose the rows, `FLOOD_PACKETS`
//! the flood's length (default ten times the connection table).

use lb_common::{
    flow::{PROTO_TCP, PROTO_UDP},
    maps::PromotionLimit,
};
use lb_tests::flood::*;

fn list(var: &str, default: &[u32]) -> Vec<u32> {
    std::env::var(var).map_or(default.to_vec(), |v| {
        v.split(',').map(|s| s.trim().parse().expect(var)).collect()
    })
}

fn main() {
    let proto = match std::env::var("FLOOD_PROTO").as_deref() {
        Ok("udp") => PROTO_UDP,
        _ => PROTO_TCP,
    };
    let packets = list("FLOOD_PACKETS", &[FLOOD_CONN_ENTRIES * 10])[0];
    println!(
        "{REAL_FLOWS} real flows, ring moved, connection table {FLOOD_CONN_ENTRIES}, \
         {packets} flood packets, proto {proto}"
    );
    println!(
        "| packets per spoofed flow | active flow speaks every | promoted | idle kept | active kept |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for per_flow in list("FLOOD_PER_FLOW", &[1, 2, 3, 4]) {
        for gap in list("FLOOD_GAPS", &[0, 16384, 8192, 4096, 2048, 1024]) {
            let (_, o) = flood(FloodShape {
                proto,
                packets,
                per_flow,
                active_gap: (gap > 0).then_some(gap),
                seed: 0x10ad_ba1a ^ 3 ^ proto as u64,
                limit: PromotionLimit::default(),
            });
            let every = if gap == 0 {
                "-".to_string()
            } else {
                format!("{gap} flood packets")
            };
            let active = if gap == 0 {
                "-".to_string()
            } else {
                format!("{}/{}", o.active_kept, o.active)
            };
            println!(
                "| {per_flow} | {every} | {} | {}/{} | {active} |",
                o.promoted, o.idle_kept, o.idle
            );
        }
    }
}
