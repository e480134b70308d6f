//! lb-decap: the backend side of IP-in-IP direct server return.
//!
//! Attaches the `lb_decap` XDP program to a backend's NIC and tells it which
//! of the host's addresses accept our tunnels, and from which outer sources
//! (the load balancers' tunnel sources). Link and maps are pinned, so the
//! program keeps working after this command exits and across reboots of
//! the tool (not of the host: run it from the backend's boot, e.g. a
//! systemd oneshot). Running `attach` again adds addresses, replaces the
//! allowed sources, and swaps in this binary's program atomically (an
//! upgrade), or, when the interface was deleted and created again since,
//! attaches anew in place of the dead link; it does the same for every
//! other interface attached from the pin directory, since they all share
//! its maps (`pinned_links`). Commands that change the pins run one at a
//! time: a second waits for the first (a lock on the pin directory).

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lb_common::{
    maps::{
        MAP_DECAP_SOURCES, MAP_DECAP_STATS, MAX_DECAP_PEERS, MAX_DECAP_SOURCES, PROG_DECAP,
        SecondChance,
    },
    stats::DecapReason,
};
use lb_userspace::{
    datapath::{Datapath, MapSizes, link_pin_path},
    decap_sources::{DecapSources, IpNet, parse_peer, parse_source},
    layout::PinOwner,
    maps::Maps,
    netdev,
    pin_lock::PinDirLock,
    pinned_links::{self, LinkState, OtherLink},
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
    /// addressed to the given backend addresses from the allowed sources;
    /// every other interface attached from the pin directory gets this
    /// program too.
    Attach {
        /// The NIC the tunnels arrive on.
        #[arg(long, short)]
        interface: String,
        /// A backend address as the load balancer knows it
        /// (`vips[].backends[].address`); repeat for IPv4 and IPv6.
        #[arg(long = "address", short, required = true, value_name = "ADDRESS")]
        addresses: Vec<IpAddr>,
        /// An outer source tunnels may come from: a load balancer's tunnel
        /// source (lbd's `tunnel_source`), as an address or a CIDR prefix;
        /// repeat for each, both families. Replaces the set a previous
        /// attach allowed. Tunnels from other sources are dropped.
        #[arg(long = "allow-source", short = 's', value_name = "PREFIX", value_parser = source)]
        allow_sources: Vec<IpNet>,
        /// Accept tunnels from any outer source instead (not recommended:
        /// anyone who can send IP protocol 4 or 41 to this host can then
        /// deliver packets from any address past its firewall).
        #[arg(long, conflicts_with = "allow_sources")]
        allow_any_source: bool,
        /// Also take second-chance packets: GUE to this UDP port (lbd's
        /// `second_chance.gue_port`, usually 6080) from the allowed
        /// sources and the peers. Without it, UDP is never a tunnel.
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: Option<u16>,
        /// Another backend of the same VIPs, by its address (not a
        /// prefix): a second-chance packet whose flow has no socket here is
        /// sent on to its hop only if the hop is a peer, and GUE with no hop
        /// left is accepted from a peer (GUE with a hop only from the
        /// allowed sources). Repeat for each; replaces the set a previous
        /// attach gave.
        #[arg(long = "peer", value_name = "ADDRESS", value_parser = peer, requires = "gue_port")]
        peers: Vec<IpNet>,
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
    /// Interfaces with the state and program of their links, addresses,
    /// allowed sources, warnings and counters.
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
    probation_entries: 16,
    frag_entries: 256,
};

fn main() -> ExitCode {
    if let Some(status) = lb_userspace::cli_docs::handle::<Args>("lb-decap") {
        return status;
    }
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
            allow_sources,
            allow_any_source,
            gue_port,
            peers,
            generic,
        } => {
            let sources = allowed(allow_sources, allow_any_source)?;
            if peers.len() > MAX_DECAP_PEERS as usize {
                bail!("{} peers given: at most {MAX_DECAP_PEERS} fit", peers.len());
            }
            let second_chance = SecondChanceSide {
                gue_port: gue_port.unwrap_or(0),
                peers,
            };
            attach(
                &args.pin_dir,
                &interface,
                &addresses,
                &sources,
                &second_chance,
                !generic,
            )
        }
        Cmd::Detach { interface } => detach(&args.pin_dir, &interface),
        Cmd::Forget { addresses } => {
            let _lock = lock(&args.pin_dir)?;
            let (_dp, mut maps) = open(&args.pin_dir)?;
            for a in addresses {
                maps.remove_decap_addr(a)?;
            }
            Ok(())
        }
        Cmd::Status { json } => status(&args.pin_dir, json),
    }
}

/// How long a command waits for another one changing the same pins.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Hold the pin directory against other lb-decap runs while changing it.
fn lock(pin_dir: &std::path::Path) -> anyhow::Result<PinDirLock> {
    lb_userspace::bpffs::prepare(pin_dir)?;
    PinDirLock::acquire_within(pin_dir, LOCK_PATIENCE).map_err(|e| {
        if e.is_held() {
            anyhow::anyhow!(
                "{e}, still after {} s: let it finish, or stop it",
                LOCK_PATIENCE.as_secs()
            )
        } else {
            anyhow::Error::new(e)
        }
    })
}

fn source(text: &str) -> Result<IpNet, String> {
    parse_source(text).map_err(|e| e.to_string())
}

fn peer(text: &str) -> Result<IpNet, String> {
    parse_peer(text).map_err(|e| e.to_string())
}

/// The allowed sources of an attach. Secure by default: with none given,
/// refuse rather than accept tunnels from anywhere.
fn allowed(sources: Vec<IpNet>, any: bool) -> anyhow::Result<DecapSources> {
    if any {
        return Ok(DecapSources::Any);
    }
    if sources.is_empty() {
        bail!(
            "no allowed tunnel sources: pass --allow-source PREFIX for each load balancer's \
             tunnel source (lbd's tunnel_source, IPv4 and IPv6), or --allow-any-source to accept \
             tunnels from any source"
        );
    }
    // Checked here as well as by the map writer, so that nothing is
    // loaded or pinned for a call that cannot succeed.
    if sources.len() > MAX_DECAP_SOURCES as usize {
        bail!(
            "{} allowed sources given: at most {MAX_DECAP_SOURCES} fit (use prefixes that cover several load balancers)",
            sources.len()
        );
    }
    Ok(DecapSources::Only(sources))
}

/// Load with the maps pinned under `pin_dir`, growing counter maps and
/// creating the maps an older release did not pin: for `attach`.
fn load(pin_dir: &std::path::Path) -> anyhow::Result<(Datapath, Maps)> {
    lb_userspace::bpffs::prepare(pin_dir)?;
    let mut dp = Datapath::load_pinned(SIZES, pin_dir, PinOwner::LB_DECAP)
        .with_context(|| format!("loading the data plane pinned at {}", pin_dir.display()))?;
    for m in &dp.migrations {
        eprintln!("lb-decap: migrated a pinned map to this version's layout: {m}");
    }
    let maps = Maps::take(&mut dp.ebpf, SIZES.ring_size)?;
    Ok((dp, maps))
}

/// The maps pinned under `pin_dir` as they are, pinning nothing: for the
/// commands that leave the running program alone.
fn open(pin_dir: &std::path::Path) -> anyhow::Result<(Datapath, Maps)> {
    lb_userspace::bpffs::prepare(pin_dir)?;
    let mut dp = Datapath::open_pinned(SIZES, pin_dir, PinOwner::LB_DECAP)
        .with_context(|| format!("opening the data plane pinned at {}", pin_dir.display()))?;
    let maps = Maps::take(&mut dp.ebpf, SIZES.ring_size)?;
    Ok((dp, maps))
}

/// What an attach says about second chance: the GUE port (0: off) and
/// the peers second hops may go to.
struct SecondChanceSide {
    gue_port: u16,
    peers: Vec<IpNet>,
}

fn attach(
    pin_dir: &std::path::Path,
    interface: &str,
    addresses: &[IpAddr],
    sources: &DecapSources,
    second_chance: &SecondChanceSide,
    native: bool,
) -> anyhow::Result<()> {
    if netdev::ifindex(interface).is_err() {
        bail!("no interface {interface} in this network namespace");
    }
    let _lock = lock(pin_dir)?;
    let (mut dp, mut maps) = load(pin_dir)?;
    // Addresses and sources first: a new attachment must neither pass
    // tunnels up undecoded nor, for a moment, accept any source.
    for a in addresses {
        maps.add_decap_addr(*a)
            .with_context(|| format!("adding address {a}"))?;
    }
    maps.set_decap_sources(sources)
        .context("writing the allowed sources")?;
    // Peers before the port: GUE is never taken with a stale peer set.
    maps.set_decap_peers(&second_chance.peers)
        .context("writing the peers")?;
    maps.set_second_chance(&SecondChance {
        gue_port: second_chance.gue_port,
        _pad: [0; 2],
    })
    .context("writing the GUE port")?;
    let attached = dp
        .attach_program_pinned(PROG_DECAP, interface, pin_dir, native)
        .with_context(|| format!("attaching to {interface}"))?;
    if let Some(reason) = &attached.native_refused {
        eprintln!("lb-decap: warning: native XDP refused on {interface} ({reason}): generic mode");
    }
    if attached.replaced_dead_link {
        eprintln!(
            "lb-decap: {interface} was deleted and created again since the last attach: \
             its dead link is replaced by a new attachment"
        );
    }
    println!(
        "lb_decap {} on {interface} ({} mode), accepting tunnels for {} from {}",
        if attached.replaced {
            "updated"
        } else {
            "attached"
        },
        mode(attached.native),
        comma_list(&maps.decap_addrs()?),
        sources_text(&maps.decap_sources()?),
    );
    if second_chance.gue_port != 0 {
        println!(
            "second chance: GUE on UDP port {}, second hops sent on to {}",
            second_chance.gue_port,
            peers_text(&second_chance.peers)
        );
    }
    // The other interfaces share the maps just written: each must run the
    // program built for them, not an older release's.
    let others =
        pinned_links::update_others(&mut dp, PROG_DECAP, pin_dir, &[interface], Some(native));
    let mut failed = Vec::new();
    for other in others {
        match other {
            OtherLink::Updated { interface, native } => {
                println!(
                    "lb_decap updated on {interface} too ({} mode)",
                    mode(native)
                );
            }
            OtherLink::Reattached {
                interface,
                attached,
            } => {
                eprintln!(
                    "lb-decap: {interface} was deleted and created again since it was attached: \
                     its dead link is replaced by a new attachment"
                );
                println!(
                    "lb_decap attached on {interface} too ({} mode)",
                    mode(attached.native)
                );
            }
            OtherLink::Dead { interface } => eprintln!(
                "lb-decap: warning: the link pinned for {interface} is attached to nothing (no \
                 interface {interface} now): run attach again once it is back, or detach -i \
                 {interface}"
            ),
            OtherLink::Foreign { interface, running } => eprintln!(
                "lb-decap: warning: the link pinned for {interface} runs {running}, not lb_decap, and is left alone: give lb-decap a pin directory of its own (--pin-dir)"
            ),
            OtherLink::Failed { interface, error } => {
                failed.push(format!(
                    "{interface}: {} (it runs the program it ran before)",
                    lb_userspace::errors::chain(&error)
                ));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "updating the other interfaces attached from {} failed: {}",
            pin_dir.display(),
            failed.join("; ")
        );
    }
    Ok(())
}

fn mode(native: bool) -> &'static str {
    if native { "native" } else { "generic" }
}

fn sources_text(sources: &DecapSources) -> String {
    match sources {
        DecapSources::Any => "any source".to_string(),
        DecapSources::Only(nets) if nets.is_empty() => {
            "no source (every tunnel is dropped)".to_string()
        }
        DecapSources::Only(nets) => comma_list(nets),
    }
}

fn peers_text(peers: &[IpNet]) -> String {
    if peers.is_empty() {
        "no peer (dropped when no socket here has them)".to_string()
    } else {
        comma_list(peers)
    }
}

fn detach(pin_dir: &std::path::Path, interface: &str) -> anyhow::Result<()> {
    let link = link_pin_path(pin_dir, interface);
    let _lock = if link.exists() {
        Some(lock(pin_dir)?)
    } else {
        None
    };
    if !link.exists() {
        bail!(
            "lb_decap is not attached to {interface} (no {})",
            link.display()
        );
    }
    // The pin holds the only reference to the link: removing it detaches.
    std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    if pinned_links::pinned_interfaces(pin_dir).is_empty() {
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    println!("lb_decap detached from {interface}");
    Ok(())
}

/// What `status` says about one interface's pinned link.
struct LinkReport {
    interface: String,
    /// `Err`: the pin could not be read.
    state: Result<LinkState, String>,
    /// Its program reads the pinned allowlist (`DECAP_SOURCES`): an older
    /// release's program checks no source.
    checks_sources: bool,
    /// Its program counts into the pinned `DECAP_STATS`: an older
    /// release's keeps counting into the map a newer attach replaced.
    counted: bool,
    /// It runs the program the other interfaces run (see `reference`).
    same_program: bool,
}

impl LinkReport {
    fn live(&self) -> bool {
        self.state.as_ref().is_ok_and(|s| s.ifindex.is_some())
    }

    fn program_id(&self) -> Option<u32> {
        self.state.as_ref().ok().map(|s| s.program_id)
    }

    /// What is wrong with this link, if anything.
    fn warnings(&self, legacy: bool) -> Vec<String> {
        let name = &self.interface;
        let state = match &self.state {
            Err(e) => return vec![format!("the link pinned for {name} cannot be read: {e}")],
            Ok(state) => state,
        };
        if state.ifindex.is_none() {
            return vec![format!(
                "the link pinned for {name} is attached to nothing (the interface was \
                 deleted): run attach -i {name} once it is back, or detach -i {name}"
            )];
        }
        let mut out = Vec::new();
        if !self.same_program {
            out.push(format!(
                "{name} runs program {}, not the one the other interfaces run: run attach \
                 again to swap this lb-decap's program into every interface",
                state.program_id
            ));
        }
        if !self.checks_sources && !legacy {
            out.push(format!(
                "{name} runs an older lb-decap's program, which checks no tunnel source: it \
                 strips tunnels from anyone until attach runs again"
            ));
        }
        if !self.counted {
            out.push(format!(
                "{name} counts into a map no longer pinned: its packets are missing from the \
                 counters below until attach runs again"
            ));
        }
        out
    }
}

/// Every link pinned under `pin_dir`, with what its program uses. The
/// program the others should run is the newest one on the pinned
/// allowlist and counters (program ids grow), else the newest one.
fn link_reports(pin_dir: &std::path::Path) -> Vec<LinkReport> {
    let map_id = |name| {
        pinned_links::pinned_map_id(&pin_dir.join(name))
            .ok()
            .flatten()
    };
    let (sources, stats) = (map_id(MAP_DECAP_SOURCES), map_id(MAP_DECAP_STATS));
    let mut reports: Vec<LinkReport> = pinned_links::pinned_interfaces(pin_dir)
        .into_iter()
        .filter_map(|interface| {
            let state = match pinned_links::link_state(pin_dir, &interface) {
                Ok(None) => return None,
                Ok(Some(state)) => Ok(state),
                Err(e) => Err(e.to_string()),
            };
            let maps = state
                .as_ref()
                .ok()
                .and_then(|s| pinned_links::program_map_ids(s.program_id).ok().flatten())
                .unwrap_or_default();
            let uses = |id: Option<u32>| id.is_some_and(|id| maps.contains(&id));
            Some(LinkReport {
                interface,
                checks_sources: uses(sources),
                counted: uses(stats),
                state,
                same_program: true,
            })
        })
        .collect();
    let live = || reports.iter().filter(|r| r.live());
    let reference = live()
        .filter(|r| r.checks_sources && r.counted)
        .filter_map(LinkReport::program_id)
        .max()
        .or_else(|| live().filter_map(LinkReport::program_id).max());
    for r in &mut reports {
        r.same_program = !r.live() || r.program_id() == reference;
    }
    reports
}

fn status(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        bail!(
            "nothing pinned at {}: lb-decap attach first",
            pin_dir.display()
        );
    }
    // Attached by a release before the allowlist: its program checks no
    // source, whatever this build's maps would say.
    let legacy = !pin_dir.join(MAP_DECAP_SOURCES).exists();
    let (_dp, maps) = open(pin_dir)?;
    let addresses = maps.decap_addrs()?;
    let sources = if legacy {
        DecapSources::Any
    } else {
        maps.decap_sources()?
    };
    let gue_port = maps.second_chance()?.gue_port;
    let peers = maps.decap_peers()?;
    let links = link_reports(pin_dir);
    let interfaces: Vec<&str> = links.iter().map(|l| l.interface.as_str()).collect();
    // Interfaces whose program strips tunnels from any source, whatever
    // the allowlist says.
    let unchecked: Vec<&str> = links
        .iter()
        .filter(|l| l.live() && !l.checks_sources)
        .map(|l| l.interface.as_str())
        .collect();
    let warnings: Vec<String> = links.iter().flat_map(|l| l.warnings(legacy)).collect();
    // A counter map of an older release lacks the newer rows until the
    // next attach grows it.
    let rows = maps.decap_counter_rows()?;
    let mut counters = Vec::new();
    for r in DecapReason::ALL {
        let value = if (*r as u32) < rows {
            Some(maps.decap_count(*r)?)
        } else {
            None
        };
        counters.push((r.name(), value));
    }
    if json {
        let counters: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(n, v)| (n.to_string(), (*v).into()))
            .collect();
        let allowed: Vec<String> = match &sources {
            DecapSources::Only(nets) => nets.iter().map(ToString::to_string).collect(),
            DecapSources::Any => Vec::new(),
        };
        let link_rows: Vec<serde_json::Value> = links
            .iter()
            .map(|l| {
                let state = l.state.as_ref().ok();
                serde_json::json!({
                    "interface": l.interface,
                    "state": state.map_or("unreadable", LinkState::state),
                    "ifindex": state.and_then(|s| s.ifindex),
                    "program_id": state.map(|s| s.program_id),
                    "same_program": l.same_program,
                    "checks_sources": l.checks_sources,
                    "counted": l.counted,
                    "error": l.state.as_ref().err(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "interfaces": interfaces,
                "links": link_rows,
                "addresses": addresses,
                "allow_any_source": sources == DecapSources::Any || !unchecked.is_empty(),
                "allowed_sources": allowed,
                "gue_port": (gue_port != 0).then_some(gue_port),
                "peers": peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "warnings": warnings,
                "counters": counters,
            })
        );
    } else {
        println!("interfaces: {}", interfaces.join(", "));
        for l in &links {
            match &l.state {
                Ok(s) => println!(
                    "  {:<12} {}{}, program {}",
                    l.interface,
                    s.state(),
                    s.ifindex
                        .map(|i| format!(" (ifindex {i})"))
                        .unwrap_or_default(),
                    s.program_id
                ),
                Err(e) => println!("  {:<12} unreadable: {e}", l.interface),
            }
        }
        println!("addresses:  {}", comma_list(&addresses));
        let note = if legacy {
            " (attached by an older lb-decap: run attach with --allow-source to set an allowlist)"
                .to_string()
        } else if !unchecked.is_empty() {
            format!(
                " (NOT checked on {}: an older lb-decap's program runs there)",
                unchecked.join(", ")
            )
        } else {
            String::new()
        };
        println!("sources:    {}{note}", sources_text(&sources));
        if gue_port == 0 {
            println!("second chance: off (no --gue-port)");
        } else {
            println!(
                "second chance: GUE on UDP port {gue_port}, peers: {}",
                peers_text(&peers)
            );
        }
        for w in &warnings {
            println!("warning: {w}");
        }
        for (name, value) in counters {
            match value {
                Some(v) => println!("{name:<24} {v}"),
                None => println!("{name:<24} - (not counted until the next attach)"),
            }
        }
    }
    Ok(())
}

fn comma_list<T: ToString>(addresses: &[T]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
