//! The story the cluster test, the cluster demo and the bench tell, step
//! by step: traffic through three LB nodes; a backend added (every node
//! rebuilds its ring); a few seconds later one node cut off (link down,
//! lbd and BIRD killed) or drained (`lbctl node drain`). What happened is
//! returned for the caller to assert, print or tabulate, and each step is
//! told to `say` as it happens.

use std::{
    net::Ipv4Addr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::{
    cluster::{BACKENDS, Cluster, NODES, node_addr},
    conversations::{Plan, Report, Traffic},
};

/// How the node leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Link down, lbd and BIRD killed: a node that dies.
    Cut,
    /// `lbctl node drain`: a node taken out for maintenance.
    Drain,
}

/// The node that leaves: the first of the router's next hops, so that
/// with hash-threshold ECMP flows of the survivors move too.
pub const LEAVING: usize = 0;

/// Long-lived conversations, and new connections per second.
pub const LONG_LIVED: u32 = 300;
pub const NEW_PER_SECOND: u32 = 50;

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    pub traffic: Report,
    /// `lbctl cluster check` on all nodes before the backend was added,
    /// and after; on the nodes left at the end. Whether the rings were
    /// the same, and lbctl's output.
    pub rings_before: (bool, String),
    pub rings_after_add: (bool, String),
    pub rings_at_end: (bool, String),
    /// New connections greeted by the added backend.
    pub added_backend_new: u64,
    /// From the node leaving to the router's route without it.
    pub router_converged: Option<Duration>,
    /// `second_chance` on the nodes left, `second_chance_forwarded`,
    /// `second_chance_local` and `second_chance_received` summed over the
    /// backends.
    pub second_chance_sent: u64,
    pub second_chance_forwarded: u64,
    pub second_chance_local: u64,
    pub second_chance_received: u64,
}

/// Keep the traffic going for `d`, telling its figures once a second.
fn hold(traffic: &Traffic, d: Duration, say: &mut dyn FnMut(&str)) {
    let end = Instant::now() + d;
    let mut last_echoes = traffic.live.echoes.load(Ordering::Relaxed);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1).min(end - Instant::now()));
        let l = &traffic.live;
        let echoes = l.echoes.load(Ordering::Relaxed);
        say(&format!(
            "      open {:>3}  broken {:>3}  echoes {:>5}/s  longest stall {:>4} ms  new connections {:>5} ok {:>3} failed",
            l.open.load(Ordering::Relaxed),
            l.broken.load(Ordering::Relaxed),
            echoes - last_echoes,
            l.max_stall_us.load(Ordering::Relaxed) / 1000,
            l.new_ok.load(Ordering::Relaxed),
            l.new_failed.load(Ordering::Relaxed),
        ));
        last_echoes = echoes;
    }
}

/// Run the story on `cluster` (as `Cluster::start` left it).
pub fn run(cluster: &mut Cluster, ending: Ending, say: &mut dyn FnMut(&str)) -> Outcome {
    let all: Vec<usize> = (0..NODES).collect();
    let left: Vec<usize> = all.iter().copied().filter(|&n| n != LEAVING).collect();
    let rings_before = cluster.ring_check(&all);
    say(&format!(
        "rings before: {}",
        if rings_before.0 {
            "the same on all nodes"
        } else {
            "DIFFER"
        }
    ));

    let plan = Plan {
        to: cluster.vip(),
        long_lived: LONG_LIVED,
        new_per_second: NEW_PER_SECOND,
        every: Duration::from_millis(100),
    };
    say(&format!(
        "traffic: {LONG_LIVED} long-lived connections, a checksummed message every 100 ms each, \
         and {NEW_PER_SECOND} new connections per second"
    ));
    let traffic = Traffic::start(&cluster.client, plan);
    if !traffic.wait_open(&plan, Duration::from_secs(15)) {
        say("not every long-lived connection opened");
    }
    hold(&traffic, Duration::from_secs(2), say);

    let spare = BACKENDS;
    let spare_id = cluster.backends[spare].id;
    say(&format!(
        "adding backend {} ({}) on every node: each rebuilds its ring",
        cluster.backends[spare].name, cluster.backends[spare].addr
    ));
    cluster.add_backend(spare, &all);
    let rings_after_add = cluster.ring_check(&all);
    say(&format!(
        "rings after the add: {}",
        if rings_after_add.0 {
            "the same on all nodes"
        } else {
            "DIFFER"
        }
    ));
    hold(&traffic, Duration::from_secs(3), say);

    let leaving = cluster.nodes[LEAVING].addr;
    let want: Vec<Ipv4Addr> = left.iter().map(|&n| node_addr(n)).collect();
    let router_converged = match ending {
        Ending::Cut => {
            say(&format!(
                "cutting {} off: link down, lbd and BIRD killed",
                cluster.nodes[LEAVING].name
            ));
            let at = cluster.cut(LEAVING);
            cluster
                .wait_for_next_hops(&want, Duration::from_secs(10))
                .map(|_| at.elapsed())
        }
        Ending::Drain => {
            say(&format!(
                "draining {}: lbctl node drain",
                cluster.nodes[LEAVING].name
            ));
            let at = Instant::now();
            cluster.nodes[LEAVING].lbd.json(&["node", "drain"]);
            cluster
                .wait_for_next_hops(&want, Duration::from_secs(10))
                .map(|_| at.elapsed())
        }
    };
    match router_converged {
        Some(d) => say(&format!(
            "the router's route to the VIP lost {leaving} after {} ms",
            d.as_millis()
        )),
        None => say(&format!("the router still routes to {leaving}")),
    }
    hold(&traffic, Duration::from_secs(4), say);
    say("stopping the traffic");
    let report = traffic.stop();
    let rings_at_end = cluster.ring_check(&left);
    let added_backend_new = report.new_by_backend.get(&spare_id).copied().unwrap_or(0);
    let sent = left
        .iter()
        .map(|&n| cluster.node_counter(n, "second_chance"))
        .sum();
    let decap = cluster.backend_counters();
    let decap = |name: &str| decap.get(name).copied().unwrap_or(0);
    Outcome {
        rings_before,
        rings_after_add,
        rings_at_end,
        added_backend_new,
        router_converged,
        second_chance_sent: sent,
        second_chance_forwarded: decap("second_chance_forwarded"),
        second_chance_local: decap("second_chance_local"),
        second_chance_received: decap("second_chance_received"),
        traffic: report,
    }
}
