//! Several LB nodes behind a router (docs/cluster.md), end to end: BIRD
//! announcing lbd's VIPs to a router that spreads connections over three
//! nodes by ECMP, under hundreds of long-lived connections and a stream of
//! new ones. A backend is added (every node rebuilds its ring), then a
//! node leaves: cut off, or drained. No connection may notice, also when
//! the VIP is stateless on the nodes.
//!
//! The two tests run one after the other (a lock): each times stalls, and
//! two clusters at once on a small machine would time each other.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    cluster::{Cluster, Options},
    cluster_story::{self, Ending, Outcome},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(ending: Ending) -> Outcome {
    run_with(
        ending,
        Options {
            second_chance: true,
            stateless: false,
        },
    )
}

fn run_with(ending: Ending, options: Options) -> Outcome {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut cluster = Cluster::start(options);
    eprintln!("cluster up after {:?}", started.elapsed());
    let outcome = cluster_story::run(&mut cluster, ending, &mut |line| {
        eprintln!("{:>5.1} s  {line}", started.elapsed().as_secs_f64())
    });
    eprintln!("{}", outcome.traffic.summary());
    eprintln!(
        "second chance: {} sent by the nodes, {} kept and {} sent on by the backends, {} received",
        outcome.second_chance_sent,
        outcome.second_chance_local,
        outcome.second_chance_forwarded,
        outcome.second_chance_received
    );
    let story_done = Instant::now();
    drop(cluster);
    eprintln!("cluster removed in {:?}", story_done.elapsed());
    outcome
}

/// What both endings promise: rings equal on every node before and after
/// the add and among the nodes left; the added backend took new
/// connections; no long-lived connection broken; new connections succeed.
fn assert_common(o: &Outcome) {
    assert!(o.rings_before.0, "rings before:\n{}", o.rings_before.1);
    assert!(
        o.rings_after_add.0,
        "rings after the add:\n{}",
        o.rings_after_add.1
    );
    assert!(o.rings_at_end.0, "rings at the end:\n{}", o.rings_at_end.1);
    assert!(
        o.added_backend_new > 0,
        "no new connection reached the added backend: {:?}",
        o.traffic.new_by_backend
    );
    let broken: Vec<String> = o
        .traffic
        .broken()
        .iter()
        .map(|c| {
            format!(
                "#{} on be{}: {}",
                c.number,
                c.backend,
                c.broken.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} long-lived connections broke:\n{}",
        broken.len(),
        o.traffic.conversations.len(),
        broken.join("\n")
    );
    assert!(
        o.traffic.new_success_ratio() >= 0.999,
        "new connections: {} ok, failed: {:?}",
        o.traffic.new_ok,
        o.traffic.new_failures
    );
}

/// A node dies (link down, lbd and BIRD killed) a few seconds after a
/// backend was added: the router drops it within 1 s (BFD), its flows and
/// those ECMP moves between the survivors reach nodes that never saw
/// them, and the flows whose ring slot changed with the add keep their
/// backend through the second hop (`second_chance_forwarded`). No
/// long-lived connection resets or waits more than 1 s for an echo.
#[test]
fn cluster_a_node_cut_off_after_a_backend_was_added_breaks_no_connection() {
    assert_cut_lost_nothing(&run(Ending::Cut));
}

/// What a cut promises: the router drops the node within 1 s (BFD), no
/// connection breaks or waits more than 1 s for an echo, and the flows
/// whose slot the add moved took the second hop.
fn assert_cut_lost_nothing(o: &Outcome) {
    let converged = o.convergence().expect("the router never dropped the node");
    assert!(
        converged <= Duration::from_secs(1),
        "the router dropped the node after {converged:?}"
    );
    assert_common(o);
    assert!(
        o.traffic.max_stall() <= Duration::from_secs(1),
        "a connection waited {:?} for an echo",
        o.traffic.max_stall()
    );
    assert!(
        o.second_chance_sent > 0 && o.second_chance_forwarded > 0 && o.second_chance_received > 0,
        "the second hop was not used: {o:?}"
    );
}

/// The same with `lbctl node drain` instead of a cut: the node withdraws
/// its VIPs and goes on forwarding what still reaches it, so no packet is
/// lost: no reset, and no echo waits more than 200 ms.
#[test]
fn cluster_a_node_drained_after_a_backend_was_added_breaks_no_connection() {
    let o = run(Ending::Drain);
    assert!(
        o.convergence().is_some(),
        "the router never dropped the node"
    );
    assert_common(&o);
    assert!(
        o.traffic.max_stall() <= Duration::from_millis(200),
        "a connection waited {:?} for an echo",
        o.traffic.max_stall()
    );
}

/// The cut again with the VIP stateless on every node: no node looks a
/// flow up or enters one, so every flow on a slot the add moved takes the
/// second hop on whichever node it reaches, and the cut moves flows
/// between nodes with nothing to lose: the cut's promises hold, and no
/// node's connection table places a packet.
#[test]
fn cluster_a_stateless_vip_loses_no_connection_when_a_node_is_cut_off_after_a_backend_was_added() {
    let o = run_with(
        Ending::Cut,
        Options {
            second_chance: true,
            stateless: true,
        },
    );
    assert_cut_lost_nothing(&o);
    assert_eq!(o.conn_hits, 0, "a stateless node used its connection table");
}
