//! lb-decap: the backend side of IP-in-IP direct server return.
//!
//! Attaches the `lb_decap` XDP program to a backend's NIC and tells it which
//! of the host's addresses accept our tunnels. Link and maps are pinned, so
//! the program keeps working after this command exits and across reboots
//! of the tool (not of the host: run it from the backend's boot, e.g. a
//! systemd oneshot). Running `attach` again updates the addresses and
//! swaps in this binary's program atomically (an upgrade).

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lb_common::{maps::PROG_DECAP, stats::DecapReason};
use lb_userspace::{
    datapath::{Adopt, Datapath, MapSizes, link_pin_path},
    layout::PinOwner,
    maps::Maps,
    netdev,
};

#[derive(Parser)]
#[command(
    version,
    about = "Terminate the load balancer's IP-in-IP tunnels on a backend (XDP)"
)]
struct Args {
    /// Where the link and maps are pinned (bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/lb-decap", global = true)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to an interface (or update an attachment) and accept tunnels
    /// addressed to the given backend addresses.
    Attach {
        /// The NIC the tunnels arrive on.
        #[arg(long, short)]
        interface: String,
        /// A backend address as the load balancer knows it
        /// (`vips[].backends[].address`); repeat for IPv4 and IPv6.
        #[arg(long = "address", short, required = true, value_name = "ADDRESS")]
        addresses: Vec<IpAddr>,
        /// Generic (skb) mode instead of native; native falls back to it
        /// by itself when the driver refuses.
        #[arg(long)]
        generic: bool,
    },
    /// Detach from an interface; the last detach removes everything pinned.
    Detach {
        /// The NIC to detach from.
        #[arg(long, short)]
        interface: String,
    },
    /// Stop accepting tunnels for an address.
    Forget {
        /// The address; repeat for more.
        #[arg(long = "address", short, required = true, value_name = "ADDRESS")]
        addresses: Vec<IpAddr>,
    },
    /// Addresses, attached interfaces and counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Only the decap maps matter on a backend: keep the rest tiny.
const SIZES: MapSizes = MapSizes {
    max_vips: 1,
    max_backends: 1,
    ring_size: 2,
    // LRU maps want at least one entry per CPU.
    conn_entries: 256,
    frag_entries: 256,
};

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-decap: {}", lb_userspace::errors::report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Attach {
            interface,
            addresses,
            generic,
        } => attach(&args.pin_dir, &interface, &addresses, !generic),
        Cmd::Detach { interface } => detach(&args.pin_dir, &interface),
        Cmd::Forget { addresses } => {
            let (_dp, mut maps) = open(&args.pin_dir, Adopt::Inspect)?;
            for a in addresses {
                maps.remove_decap_addr(a)?;
            }
            Ok(())
        }
        Cmd::Status { json } => status(&args.pin_dir, json),
    }
}

/// The pinned maps, adopted with `adopt`: `Replace` only where the program
/// loaded here is then attached.
fn open(pin_dir: &std::path::Path, adopt: Adopt) -> anyhow::Result<(Datapath, Maps)> {
    lb_userspace::bpffs::prepare(pin_dir)?;
    let mut dp = Datapath::load_pinned(SIZES, pin_dir, PinOwner::LB_DECAP, adopt)
        .with_context(|| format!("loading the data plane pinned at {}", pin_dir.display()))?;
    for m in &dp.migrations {
        eprintln!("lb-decap: migrated a pinned map to this version's layout: {m}");
    }
    let maps = Maps::take(&mut dp.ebpf, SIZES.ring_size)?;
    Ok((dp, maps))
}

fn attach(
    pin_dir: &std::path::Path,
    interface: &str,
    addresses: &[IpAddr],
    native: bool,
) -> anyhow::Result<()> {
    if netdev::ifindex(interface).is_err() {
        bail!("no interface {interface} in this network namespace");
    }
    let (mut dp, mut maps) = open(pin_dir, Adopt::Replace)?;
    // Addresses first: a new attachment must not pass tunnels up undecoded.
    for a in addresses {
        maps.add_decap_addr(*a)
            .with_context(|| format!("adding address {a}"))?;
    }
    let attached = dp
        .attach_program_pinned(PROG_DECAP, interface, pin_dir, native)
        .with_context(|| format!("attaching to {interface}"))?;
    if let Some(reason) = &attached.native_refused {
        eprintln!("lb-decap: warning: native XDP refused on {interface} ({reason}): generic mode");
    }
    println!(
        "lb_decap {} on {interface} ({} mode), accepting tunnels for {}",
        if attached.replaced {
            "updated"
        } else {
            "attached"
        },
        if attached.native { "native" } else { "generic" },
        comma_list(&maps.decap_addrs()?)
    );
    Ok(())
}

fn links(pin_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("link_")
                .map(str::to_string)
        })
        .collect()
}

fn detach(pin_dir: &std::path::Path, interface: &str) -> anyhow::Result<()> {
    let link = link_pin_path(pin_dir, interface);
    if !link.exists() {
        bail!(
            "lb_decap is not attached to {interface} (no {})",
            link.display()
        );
    }
    // The pin holds the only reference to the link: removing it detaches.
    std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    if links(pin_dir).is_empty() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    println!("lb_decap detached from {interface}");
    Ok(())
}

fn status(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        bail!(
            "nothing pinned at {}: lb-decap attach first",
            pin_dir.display()
        );
    }
    let (_dp, maps) = open(pin_dir, Adopt::Inspect)?;
    let addresses = maps.decap_addrs()?;
    let interfaces = links(pin_dir);
    let mut counters = Vec::new();
    for r in DecapReason::ALL {
        counters.push((r.name(), maps.decap_count(*r)?));
    }
    if json {
        let counters: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(n, v)| (n.to_string(), (*v).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"interfaces": interfaces, "addresses": addresses, "counters": counters})
        );
    } else {
        println!("interfaces: {}", interfaces.join(", "));
        println!("addresses:  {}", comma_list(&addresses));
        for (name, value) in counters {
            println!("{name:<22} {value}");
        }
    }
    Ok(())
}

fn comma_list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
