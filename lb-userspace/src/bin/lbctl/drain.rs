//! Drains that answer: `backend drain --wait` and `node drain --wait`
//! follow what is left until it is gone or a deadline passes;
//! `node resume` undoes a node drain.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use std::net::IpAddr;

use lb_userspace::control::{
    Applied, BackendRow, Body, ConnList, NodeDrainState, Request, Stats, VipRef, VipRow,
};
use serde::Serialize;

use crate::{Cli, call, call_for_body, print::*};

/// A line of `backend drain --wait --json`, once a second.
#[derive(Serialize)]
struct PinnedProgress {
    elapsed_s: u64,
    pinned_flows: usize,
}

/// A line of `backend drain --wait --json` for a stateless VIP, once a
/// second: the LB keeps no flows to count, only the drain's time left (0
/// once it is over; `null` when the backend stopped draining, the last
/// line then).
#[derive(Serialize)]
struct DrainTimeProgress {
    elapsed_s: u64,
    drain_remaining_s: Option<u64>,
}

/// A line of `node drain --wait --json`: a sample once a second, then
/// one that says whether traffic stopped.
#[derive(Serialize)]
#[serde(untagged)]
enum TrafficProgress {
    /// `packets_per_s` is `null` when counters went down between samples.
    Sample {
        elapsed_s: u64,
        packets_per_s: Option<f64>,
    },
    /// `stopped` true: below the threshold long enough.
    Stopped { stopped: bool, elapsed_s: u64 },
    /// `stopped` false: the deadline passed first.
    StillArriving {
        stopped: bool,
        elapsed_s: u64,
        packets_per_s: Option<f64>,
    },
}

/// One JSON document on one line.
fn line<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

pub async fn node_resume(cli: &Cli) -> Result<ExitCode, String> {
    let Body { read: reply, sent } =
        call_for_body::<NodeDrainState>(cli, Request::NodeResume).await?;
    if cli.json {
        print_json(&sent)
    } else {
        print_resumed(&reply)
    }
    if let Some(error) = &reply.error {
        return Err(format!(
            "the node is resumed, but its routes are not all written: {error}; lbd retries every second (see lbctl status)"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Drain a backend, then print its flows still pinned to it once a second
/// until none is left (exit status 0) or `deadline` seconds pass (exit
/// status 2; default: the drain time lbd reports left, plus 2 s).
pub async fn backend_drain_wait(
    cli: &Cli,
    vip: VipRef,
    address: IpAddr,
    deadline: Option<u64>,
) -> Result<ExitCode, String> {
    let reply = call_for_body::<Applied>(cli, Request::BackendDrain { vip, address }).await?;
    if cli.json {
        line(&reply.sent);
    } else {
        println!("{address} of {vip} drained: no new flows");
    }
    let deadline = match deadline {
        Some(s) => s,
        None => drain_remaining(cli, vip, address)
            .await?
            .map_or(60, |s| s + 2),
    };
    let vips: Vec<VipRow> = call(cli, Request::VipList).await?;
    if vips
        .iter()
        .any(|v| v.stateless && v.vip() == vip.to_string())
    {
        return wait_for_drain_time(cli, vip, address, deadline).await;
    }
    // Counted by lbd over the connection and probation tables, by the
    // data plane's own rule: a flow the drain timeout cut is not pinned.
    let count = Request::ConnList {
        vip: Some(vip),
        backend: Some(address),
        client: None,
        probation: true,
        limit: 0,
        scan: usize::MAX,
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let list: ConnList = call(cli, count.clone()).await?;
        let pinned = list.pinned;
        let elapsed = started.elapsed().as_secs();
        if cli.json {
            line(&PinnedProgress {
                elapsed_s: elapsed,
                pinned_flows: pinned,
            });
        } else {
            println!("  {elapsed:>5} s  {pinned:>8} flows pinned");
        }
        if pinned == 0 {
            // Entries left behind no longer pin their flows: the drain
            // timeout cut them.
            let cut = list.matched;
            if !cli.json && cut > 0 {
                println!("no flow left on {address}: the drain timeout cut the last {cut}");
            } else if !cli.json {
                println!("no flow left on {address}: it can be removed");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if elapsed >= deadline {
            if !cli.json {
                println!(
                    "deadline passed after {elapsed} s: {pinned} flows still pinned to {address}"
                );
            }
            return Ok(ExitCode::from(EXIT_DEADLINE));
        }
    }
}

/// The drain time `address` of `vip` has left, per lbd (0 once it is
/// over; `None` when it is not draining).
async fn drain_remaining(cli: &Cli, vip: VipRef, address: IpAddr) -> Result<Option<u64>, String> {
    let rows: Vec<BackendRow> = call(cli, Request::BackendList { vip: Some(vip) }).await?;
    Ok(rows
        .iter()
        .find(|r| r.address == address)
        .and_then(|r| r.drain_remaining_s))
}

/// `backend drain --wait` for a stateless VIP: no table on the LB holds
/// its flows, which reach the drained backend as second hops until the
/// drain timeout marks it down. So the wait follows the drain's time
/// left: exit status 0 once the timeout cut what was left, 2 if the
/// deadline passes first, 1 if the backend stops draining (undrained or
/// removed). The backend's own connection count is the
/// only count of what is left.
async fn wait_for_drain_time(
    cli: &Cli,
    vip: VipRef,
    address: IpAddr,
    deadline: u64,
) -> Result<ExitCode, String> {
    if !cli.json {
        println!(
            "{vip} is stateless: the LB keeps no flows to count, and {address}'s reach it as second hops until the drain timeout; waiting for it (the backend's own connections tell what is left)"
        );
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let left = drain_remaining(cli, vip, address).await?;
        let elapsed = started.elapsed().as_secs();
        if cli.json {
            line(&DrainTimeProgress {
                elapsed_s: elapsed,
                drain_remaining_s: left,
            });
        } else if let Some(left) = left {
            println!("  {elapsed:>5} s  {left:>8} s of drain left");
        }
        let Some(left) = left else {
            if !cli.json {
                println!("{address} is no longer draining (undrained or removed meanwhile)");
            }
            return Ok(ExitCode::FAILURE);
        };
        if left == 0 {
            if !cli.json {
                println!(
                    "the drain time is over: lbd marks {address} down, which cuts what was left; it can be removed"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if elapsed >= deadline {
            if !cli.json {
                println!("deadline passed after {elapsed} s: {address} is still draining");
            }
            return Ok(ExitCode::from(EXIT_DEADLINE));
        }
    }
}

/// When `node drain --wait` says the node's traffic has stopped.
pub struct Idle {
    /// Seconds to wait at most.
    pub deadline: u64,
    /// Packets per second below which traffic counts as stopped...
    pub below: u64,
    /// ...for this many seconds in a row.
    pub seconds: u64,
}

/// Exit status of `node drain --wait` when the deadline passed first.
pub const EXIT_DEADLINE: u8 = 2;

/// Drain, then with `wait`, sample the node's VIP traffic every second
/// (packets forwarded and dropped for every VIP, from lbd's counters)
/// until it stays below `wait.below` for `wait.seconds` samples.
pub async fn node_drain(cli: &Cli, wait: Option<Idle>) -> Result<ExitCode, String> {
    if let Some(w) = &wait {
        if !(1..=86_400).contains(&w.deadline) {
            return Err(format!(
                "--deadline {} is out of range 1..=86400",
                w.deadline
            ));
        }
        if !(1..=3_600).contains(&w.seconds) {
            return Err(format!("--idle-for {} is out of range 1..=3600", w.seconds));
        }
        if w.below == 0 {
            return Err("--idle-below 0 can never be met: give 1 or more packets/s".into());
        }
        if w.seconds > w.deadline {
            return Err(format!(
                "--idle-for {} is longer than --deadline {}: the traffic could never be seen stopped in time",
                w.seconds, w.deadline
            ));
        }
    }
    let Body { read: reply, sent } =
        call_for_body::<NodeDrainState>(cli, Request::NodeDrain).await?;
    if cli.json {
        // One JSON document per line when samples follow.
        if wait.is_some() {
            line(&sent)
        } else {
            print_json(&sent)
        }
    } else {
        print_drained(&reply);
    }
    if let Some(error) = &reply.unsaved {
        eprintln!(
            "warning: lbd could not save the drain in its state_file ({error}): a restart of lbd would announce the VIPs again"
        );
    }
    if let Some(error) = &reply.error {
        return Err(format!(
            "the node is drained, but its routes are not all withdrawn: {error}; lbd retries every second (see lbctl status)"
        ));
    }
    let Some(idle) = wait else {
        return Ok(ExitCode::SUCCESS);
    };
    if !cli.json {
        println!(
            "waiting for the node's VIP traffic to stay below {} packets/s for {} s (at most {} s):",
            idle.below, idle.seconds, idle.deadline
        );
    }
    // Rates and quiet time over this process's monotonic clock, read when
    // each reply arrives: requests go one at a time, and a late tick is
    // not made up for, so samples are never closer than a second even if
    // lbd was slow to answer.
    let started = Instant::now();
    let mut last = (
        vip_packets(&call::<Stats>(cli, Request::Stats).await?),
        Instant::now(),
    );
    let mut quiet = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let idle_for = Duration::from_secs(idle.seconds);
    let deadline = Duration::from_secs(idle.deadline);
    loop {
        tick.tick().await;
        let now = (
            vip_packets(&call::<Stats>(cli, Request::Stats).await?),
            Instant::now(),
        );
        let elapsed = started.elapsed().as_secs();
        let dt = now.1.duration_since(last.1);
        // Counters that went down were reset (a VIP removed and added):
        // that sample says nothing.
        let pps = now
            .0
            .checked_sub(last.0)
            .map(|n| n as f64 / dt.as_secs_f64().max(1e-3));
        last = now;
        let shown = pps.map_or("-".to_string(), num);
        if cli.json {
            line(&TrafficProgress::Sample {
                elapsed_s: elapsed,
                packets_per_s: pps,
            });
        } else {
            println!("  {elapsed:>5} s  {shown:>8} packets/s");
        }
        match pps {
            Some(p) if p < idle.below as f64 => quiet += dt,
            Some(_) => quiet = Duration::ZERO,
            None => {}
        }
        if quiet >= idle_for {
            if cli.json {
                line(&TrafficProgress::Stopped {
                    stopped: true,
                    elapsed_s: elapsed,
                });
            } else {
                println!(
                    "traffic stopped: below {} packets/s for {} s, after {elapsed} s",
                    idle.below, idle.seconds
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() >= deadline {
            if cli.json {
                line(&TrafficProgress::StillArriving {
                    stopped: false,
                    elapsed_s: elapsed,
                    packets_per_s: pps,
                });
            } else {
                println!(
                    "deadline passed after {elapsed} s: traffic still arrives ({shown} packets/s)"
                );
            }
            return Ok(ExitCode::from(EXIT_DEADLINE));
        }
    }
}

/// All packets that reached a VIP (forwarded or dropped).
pub fn vip_packets(stats: &Stats) -> u64 {
    stats.vips.iter().map(|v| v.packets + v.dropped).sum()
}

pub fn print_drained(v: &NodeDrainState) {
    let state = if v.was_drained {
        "node already drained"
    } else {
        "node drained"
    };
    println!(
        "{state}: every VIP withdrawn; it goes on forwarding what still arrives, and stays drained until `lbctl node resume`"
    );
}

pub fn print_resumed(v: &NodeDrainState) {
    let announced: Vec<String> = v.announced.iter().map(IpAddr::to_string).collect();
    let list = if announced.is_empty() {
        "none yet (no VIP address has a backend in service)".to_string()
    } else {
        announced.join(", ")
    };
    println!("node resumed: VIP addresses announced: {list}");
}
