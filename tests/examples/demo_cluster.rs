//! `cargo xtask demo cluster`: the load balancer on three nodes behind a
//! router, as docs/cluster.md describes (BIRD announcing each node's VIPs
//! over BGP with BFD, ECMP on the router), with hundreds of long-lived
//! connections and a stream of new ones. A backend is added, a node is
//! cut off, another drained, and no connection notices. Printed as it
//! happens; everything it creates is removed at the end, also on failure.

use std::time::Instant;

use lb_tests::{
    cluster::{BACKENDS, CLIENT, Cluster, Options, VIP_REF},
    cluster_story::{Ending, Story},
};

fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
}

fn indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn main() -> anyhow::Result<()> {
    // Ctrl-C removes the lab too, not only a normal end or a failure.
    lb_tests::netns::clean_up_on_signal();
    println!("== lb demo: three load-balancer nodes behind a router, BGP + ECMP ==");
    step(
        1,
        "building the lab: a client, a router, three LB nodes, six backends (one namespace each)",
    );
    let started = Instant::now();
    let mut cluster = Cluster::start(Options {
        second_chance: true,
        ..Default::default()
    });
    println!(
        "    ready after {:.1} s: lbd and BIRD on every node, BGP + BFD sessions to the router",
        started.elapsed().as_secs_f64()
    );
    println!("    client {CLIENT}  ->  router  ->  {VIP_REF} on lb1, lb2, lb3");
    for b in &cluster.backends[..BACKENDS] {
        println!(
            "    backend {} {}: echo server, lb_decap (IP-in-IP and GUE), VIP on loopback",
            b.name, b.addr
        );
    }
    let spare = &cluster.backends[BACKENDS];
    println!(
        "    backend {} {}: the same, not yet in the configuration",
        spare.name, spare.addr
    );

    step(2, "the router's route to the VIP: one next hop per LB node");
    println!("    $ ip route show 198.51.100.10      # on the router");
    indented(
        &cluster
            .router
            .exec(&["ip", "route", "show", "198.51.100.10"]),
    );
    println!("    $ birdc show protocols             # on the router");
    indented(&cluster.router_bird.birdc(&["show", "protocols"]));

    let t0 = Instant::now();
    let mut say = |line: &str| println!("    {:>5.1} s  {line}", t0.elapsed().as_secs_f64());
    step(
        3,
        "traffic through all three nodes (the router hashes ports: each connection sticks to one node)",
    );
    let mut story = Story::begin(&mut cluster, &mut say);

    step(
        4,
        "a backend joins: every node rebuilds its ring, and they stay the same",
    );
    story.add_backend();

    step(
        5,
        "lb1 dies; flows it carried reach nodes that never saw them, and some after the ring changed",
    );
    story.leave(0, Ending::Cut);

    step(6, "lb2 is drained for maintenance: its flows move to lb3");
    story.leave(1, Ending::Drain);
    let outcome = story.end();

    println!("\nwhat the connections saw:");
    let t = &outcome.traffic;
    println!(
        "    {} long-lived connections: {} broken, {} echoes, longest wait for an echo {} ms",
        t.conversations.len(),
        t.broken().len(),
        t.conversations.iter().map(|c| c.echoes).sum::<u64>(),
        t.max_stall().as_millis()
    );
    println!(
        "    new connections: {} ok, {} failed; {} of them reached the added backend",
        t.new_ok,
        t.new_failures.len(),
        outcome.added_backend_new
    );
    for (i, d) in outcome.router_converged.iter().enumerate() {
        let what = if i == 0 {
            "cut off (BFD)"
        } else {
            "drained (BGP withdraw)"
        };
        match d {
            Some(d) => println!(
                "    router dropped the node {what} after {} ms",
                d.as_millis()
            ),
            None => println!("    router never dropped the node {what}"),
        }
    }
    println!(
        "    second chance: {} packets sent with a second hop by the nodes; on the backends {} kept \
         (socket there), {} sent on to the previous owner",
        outcome.second_chance_sent, outcome.second_chance_local, outcome.second_chance_forwarded
    );
    println!(
        "\n    $ lbctl cluster check LB2-SOCKET LB3-SOCKET   (lb1 is gone; lb2 drained, still configured)"
    );
    indented(&outcome.rings_at_end.1);

    println!("\nteardown: stopping lbd and BIRD, detaching the programs, removing the namespaces");
    drop(cluster);
    println!("done.");
    anyhow::ensure!(
        outcome.traffic.broken().is_empty(),
        "{} long-lived connections broke",
        outcome.traffic.broken().len()
    );
    Ok(())
}
