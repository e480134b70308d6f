//! Three LB nodes behind a BGP router (tests/src/cluster.rs), the story of
//! the `cluster_` tests: 300 long-lived connections and 50 new ones per
//! second, a backend added, then a node cut off. Run with second chance
//! off and on: without it, flows that reach another node after the ring
//! changed go to the slot's new owner, which resets them; with it, none
//! break. Also the router's convergence and the longest stall.

use lb_tests::{
    cluster::{Cluster, Options},
    cluster_story::{self, Ending, LONG_LIVED},
};
use serde_json::{Value, json};

fn one(second_chance: bool) -> Value {
    println!(
        "cluster: node cut off after a backend was added, second chance {}",
        if second_chance { "on" } else { "off" }
    );
    let mut cluster = Cluster::start(Options {
        second_chance,
        ..Default::default()
    });
    let o = cluster_story::run(&mut cluster, Ending::Cut, &mut |line| println!("  {line}"));
    let t = &o.traffic;
    json!({
        "second_chance": second_chance,
        "long_lived": LONG_LIVED,
        "broken": t.broken().len(),
        "max_stall_ms": t.max_stall().as_secs_f64() * 1000.0,
        "new_ok": t.new_ok,
        "new_failed": t.new_failures.len(),
        "router_converged_ms": o.convergence().map(|d| d.as_secs_f64() * 1000.0),
        "second_chance_forwarded": o.second_chance_forwarded,
    })
}

/// Both runs: second chance off, then on.
pub fn run() -> Value {
    json!([one(false), one(true)])
}
