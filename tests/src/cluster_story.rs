//! The story the cluster tests, the cluster demo and the bench tell, step
//! by step: traffic through three LB nodes; a backend added (every node
//! rebuilds its ring); a few seconds later a node cut off (link down, lbd
//! and BIRD killed) or drained (`lbctl node drain`). What happened is
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

/// How a node leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Link down, lbd and BIRD killed: a node that dies.
    Cut,
    /// `lbctl node drain`: a node taken out for maintenance.
    Drain,
}

/// The node that leaves in `run`: the first of the router's next hops, so
/// that with hash-threshold ECMP flows of the survivors move too.
pub const LEAVING: usize = 0;

/// Long-lived conversations, and new connections per second.
pub const LONG_LIVED: u32 = 300;
pub const NEW_PER_SECOND: u32 = 50;

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    pub traffic: Report,
    /// `lbctl cluster check` on all nodes before the backend was added,
    /// and after; on the nodes not cut off at the end. Whether the
    /// rings were the same, and lbctl's output.
    pub rings_before: (bool, String),
    pub rings_after_add: (bool, String),
    pub rings_at_end: (bool, String),
    /// New connections greeted by the added backend.
    pub added_backend_new: u64,
    /// For each node that left: from its leaving to the router's route
    /// without it (`None`: the route kept it).
    pub router_converged: Vec<Option<Duration>>,
    /// `second_chance` summed over the nodes not cut off;
    /// `second_chance_forwarded`, `second_chance_local` and
    /// `second_chance_received` summed over the backends.
    pub second_chance_sent: u64,
    pub second_chance_forwarded: u64,
    pub second_chance_local: u64,
    pub second_chance_received: u64,
    /// `conn_hit` summed over the nodes not cut off: packets placed by a
    /// connection entry (none for a stateless VIP).
    pub conn_hits: u64,
}

impl Outcome {
    /// How long the router took to drop the (first) node that left.
    pub fn convergence(&self) -> Option<Duration> {
        self.router_converged.first().copied().flatten()
    }
}

fn same(check: &(bool, String)) -> &'static str {
    if check.0 {
        "the same on every node"
    } else {
        "DIFFER"
    }
}

/// A story under way: the traffic runs from `begin` to `end`.
pub struct Story<'a> {
    pub cluster: &'a mut Cluster,
    say: &'a mut dyn FnMut(&str),
    traffic: Traffic,
    rings_before: (bool, String),
    rings_after_add: (bool, String),
    /// Nodes cut or drained, in order, and how long the router took;
    /// those cut.
    left: Vec<usize>,
    cut: Vec<usize>,
    converged: Vec<Option<Duration>>,
}

impl<'a> Story<'a> {
    /// Check the rings, start the traffic, and let it run 2 s.
    pub fn begin(cluster: &'a mut Cluster, say: &'a mut dyn FnMut(&str)) -> Self {
        let all: Vec<usize> = (0..NODES).collect();
        let rings_before = cluster.ring_check(&all);
        say(&format!("rings before: {}", same(&rings_before)));
        let plan = Plan {
            to: cluster.vip(),
            long_lived: LONG_LIVED,
            new_per_second: NEW_PER_SECOND,
            every: Duration::from_millis(100),
        };
        say(&format!(
            "traffic: {LONG_LIVED} long-lived connections, each sending a checksummed message \
             every 100 ms and checking its echo, and {NEW_PER_SECOND} new connections per second"
        ));
        let traffic = Traffic::start(&cluster.client, plan);
        if !traffic.wait_open(&plan, Duration::from_secs(15)) {
            say("not every long-lived connection opened");
        }
        let mut story = Self {
            cluster,
            say,
            traffic,
            rings_before,
            rings_after_add: (false, String::new()),
            left: Vec::new(),
            cut: Vec::new(),
            converged: Vec::new(),
        };
        story.hold(Duration::from_secs(2));
        story
    }

    /// Keep the traffic going for `d`, telling its figures once a second.
    pub fn hold(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let live = &self.traffic.live;
        let mut last_echoes = live.echoes.load(Ordering::Relaxed);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(1).min(end - Instant::now()));
            let echoes = live.echoes.load(Ordering::Relaxed);
            (self.say)(&format!(
                "    open {:>3}  broken {:>3}  echoes {:>5}/s  longest stall {:>4} ms  \
                 new connections {:>5} ok {:>3} failed",
                live.open.load(Ordering::Relaxed),
                live.broken.load(Ordering::Relaxed),
                echoes - last_echoes,
                live.max_stall_us.load(Ordering::Relaxed) / 1000,
                live.new_ok.load(Ordering::Relaxed),
                live.new_failed.load(Ordering::Relaxed),
            ));
            last_echoes = echoes;
        }
    }

    /// Nodes neither cut nor drained: the router's next hops.
    pub fn running(&self) -> Vec<usize> {
        (0..NODES).filter(|n| !self.left.contains(n)).collect()
    }

    /// Nodes not cut: their lbd answers (a drained node's too).
    pub fn alive(&self) -> Vec<usize> {
        (0..NODES).filter(|n| !self.cut.contains(n)).collect()
    }

    /// Add the spare backend on every node, check the rings, run 3 s.
    pub fn add_backend(&mut self) {
        let spare = &self.cluster.backends[BACKENDS];
        (self.say)(&format!(
            "adding backend {} ({}) on every node: each rebuilds its ring",
            spare.name, spare.addr
        ));
        let alive = self.alive();
        self.cluster.add_backend(BACKENDS, &alive);
        self.rings_after_add = self.cluster.ring_check(&alive);
        (self.say)(&format!(
            "rings after the add: {}",
            same(&self.rings_after_add)
        ));
        self.hold(Duration::from_secs(3));
    }

    /// Node `n` leaves; wait for the router to drop it, then run 4 s.
    pub fn leave(&mut self, n: usize, ending: Ending) {
        let name = self.cluster.nodes[n].name.clone();
        let addr = self.cluster.nodes[n].addr;
        self.left.push(n);
        let want: Vec<Ipv4Addr> = self.running().into_iter().map(node_addr).collect();
        let at = match ending {
            Ending::Cut => {
                (self.say)(&format!(
                    "cutting {name} off: link down, lbd and BIRD killed"
                ));
                self.cut.push(n);
                self.cluster.cut(n)
            }
            Ending::Drain => {
                (self.say)(&format!("draining {name}: lbctl node drain"));
                let at = Instant::now();
                self.cluster.nodes[n].lbd.json(&["node", "drain"]);
                at
            }
        };
        let converged = self
            .cluster
            .wait_for_next_hops(&want, Duration::from_secs(10))
            .map(|_| at.elapsed());
        match converged {
            Some(d) => (self.say)(&format!(
                "the router's route to the VIP lost {name} ({addr}) after {} ms",
                d.as_millis()
            )),
            None => (self.say)(&format!("the router still routes to {name} ({addr})")),
        }
        self.converged.push(converged);
        self.hold(Duration::from_secs(4));
    }

    /// Stop the traffic and gather what happened.
    pub fn end(self) -> Outcome {
        (self.say)("stopping the traffic");
        let alive = self.alive();
        let report = self.traffic.stop();
        let cluster = self.cluster;
        let rings_at_end = cluster.ring_check(&alive);
        let spare_id = cluster.backends[BACKENDS].id;
        let sum = |name: &str| alive.iter().map(|&n| cluster.node_counter(n, name)).sum();
        let sent = sum("second_chance");
        let conn_hits = sum("conn_hit");
        let decap = cluster.backend_counters();
        let decap = |name: &str| decap.get(name).copied().unwrap_or(0);
        Outcome {
            rings_before: self.rings_before,
            rings_after_add: self.rings_after_add,
            rings_at_end,
            added_backend_new: report.new_by_backend.get(&spare_id).copied().unwrap_or(0),
            router_converged: self.converged,
            second_chance_sent: sent,
            second_chance_forwarded: decap("second_chance_forwarded"),
            second_chance_local: decap("second_chance_local"),
            second_chance_received: decap("second_chance_received"),
            conn_hits,
            traffic: report,
        }
    }
}

/// The whole story: traffic, a backend added, node `LEAVING` leaving by
/// `ending`, the end.
pub fn run(cluster: &mut Cluster, ending: Ending, say: &mut dyn FnMut(&str)) -> Outcome {
    let mut story = Story::begin(cluster, say);
    story.add_backend();
    story.leave(LEAVING, ending);
    story.end()
}
