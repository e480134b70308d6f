//! Drains that answer: `backend drain --wait` and `node drain --wait`
//! follow what is left until it is gone or a deadline passes;
//! `node resume` undoes a node drain.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use std::net::IpAddr;

use lb_userspace::control::{Request, VipRef};
use serde_json::Value;

use crate::{Cli, call, print::*};

pub async fn node_resume(cli: &Cli) -> Result<ExitCode, String> {
    let reply = call(cli, Request::NodeResume).await?;
    if cli.json {
        print_json(&reply)
    } else {
        print_resumed(&reply)
    }
    if let Some(error) = reply["error"].as_str() {
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
    let reply = call(cli, Request::BackendDrain { vip, address }).await?;
    if cli.json {
        println!("{}", serde_json::to_string(&reply).unwrap_or_default());
    } else {
        println!("{address} of {vip} drained: no new flows");
    }
    let deadline = match deadline {
        Some(s) => s,
        None => {
            let rows = call(cli, Request::BackendList { vip: Some(vip) }).await?;
            rows.as_array()
                .into_iter()
                .flatten()
                .find(|r| r["address"] == address.to_string())
                .and_then(|r| r["drain_remaining_s"].as_u64())
                .map_or(60, |s| s + 2)
        }
    };
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
        let list = call(cli, count.clone()).await?;
        let pinned = list["pinned"].as_u64().unwrap_or(0);
        let elapsed = started.elapsed().as_secs();
        if cli.json {
            println!(
                "{}",
                serde_json::json!({ "elapsed_s": elapsed, "pinned_flows": pinned })
            );
        } else {
            println!("  {elapsed:>5} s  {pinned:>8} flows pinned");
        }
        if pinned == 0 {
            // Entries left behind no longer pin their flows: the drain
            // timeout cut them.
            let cut = list["matched"].as_u64().unwrap_or(0);
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
    let reply = call(cli, Request::NodeDrain).await?;
    let line = |v: &Value| println!("{}", serde_json::to_string(v).unwrap_or_default());
    if cli.json {
        // One JSON document per line when samples follow.
        if wait.is_some() {
            line(&reply)
        } else {
            print_json(&reply)
        }
    } else {
        print_drained(&reply);
    }
    if let Some(error) = reply["unsaved"].as_str() {
        eprintln!(
            "warning: lbd could not save the drain in its state_file ({error}): a restart of lbd would announce the VIPs again"
        );
    }
    if let Some(error) = reply["error"].as_str() {
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
        vip_packets(&call(cli, Request::Stats).await?),
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
            vip_packets(&call(cli, Request::Stats).await?),
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
        let shown = pps.map_or("-".to_string(), |p| num(&p.into()));
        if cli.json {
            line(&serde_json::json!({ "elapsed_s": elapsed, "packets_per_s": pps }));
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
                line(&serde_json::json!({ "stopped": true, "elapsed_s": elapsed }));
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
                line(
                    &serde_json::json!({ "stopped": false, "elapsed_s": elapsed, "packets_per_s": pps }),
                );
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
pub fn vip_packets(stats: &Value) -> u64 {
    stats["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["packets"].as_u64().unwrap_or(0) + v["dropped"].as_u64().unwrap_or(0))
        .sum()
}

pub fn print_drained(v: &Value) {
    let state = if v["was_drained"] == true {
        "node already drained"
    } else {
        "node drained"
    };
    println!(
        "{state}: every VIP withdrawn; it goes on forwarding what still arrives, and stays drained until `lbctl node resume`"
    );
}

pub fn print_resumed(v: &Value) {
    let announced: Vec<String> = v["announced"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    let list = if announced.is_empty() {
        "none yet (no VIP address has a backend in service)".to_string()
    } else {
        announced.join(", ")
    };
    println!("node resumed: VIP addresses announced: {list}");
}
