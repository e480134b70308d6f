//! lbctl: the operator's CLI for lbd, over its control socket.
//!
//! Human-readable tables by default, `--json` for scripts. Any failure
//! exits non-zero with a one-line reason on stderr (status 1; `node drain
//! --wait` exits 2 when its deadline passes with traffic still arriving).

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{
    capture::CaptureSpec,
    config::{AdminState, BackendConfig, HealthCheck, Mac, Vip},
    config_format::ConfigFormat,
    control::{self, Request},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

mod args;
mod capture;
mod drain;
mod print;
mod stats;
mod top;

use args::{CheckArg, ForwardingArg, ProtoArg, VipArg};
use print::*;

#[derive(Parser)]
#[command(version = lb_userspace::control::VERSION_TEXT, about = "Control the lbd load balancer daemon")]
struct Cli {
    /// lbd's control socket.
    #[arg(long, global = true, default_value = "/run/lbd/lbd.sock")]
    socket: PathBuf,
    /// Print the daemon's JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon, attachment and table state.
    Status,
    /// Virtual services.
    Vip {
        #[command(subcommand)]
        command: VipCmd,
    },
    /// Backends of virtual services.
    Backend {
        #[command(subcommand)]
        command: BackendCmd,
    },
    /// Packet and flow rates per VIP and backend, over `--interval` seconds.
    Stats {
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Live view of every VIP and backend, refreshed every second.
    Top {
        /// Print one screen (rates over one second) and exit.
        #[arg(long)]
        once: bool,
    },
    /// The flows the data plane holds, like `ipvsadm -Lc`.
    Conn {
        #[command(subcommand)]
        command: ConnCmd,
    },
    /// Which backend a flow goes to, and why.
    Flow {
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        protocol: ProtoArg,
    },
    /// Replace the running configuration with a file (validated first).
    Apply {
        /// A configuration file: TOML if named *.toml, else JSON.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The running configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Several load-balancer nodes behind one ECMP route.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// This node in a cluster: withdraw its VIPs from the network, or
    /// announce them again.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// Capture packets with the verdict and reason each got.
    ///
    /// "Why doesn't it forward?" in one command: each packet the load
    /// balancer sees, with its verdict and the counter it was counted
    /// under in `lbctl stats`. Prints one line per packet, or writes a
    /// pcapng file with the verdict in each packet's comment. Forwarded
    /// packets are captured as sent (tunnelled), the others as received,
    /// their first 256 bytes. Ends at --count packets, after --duration,
    /// or on Ctrl-C; lbd and the data plane end it even if lbctl is killed.
    Capture {
        /// Only packets for this VIP (`198.51.100.10:80/tcp`; port 0: any
        /// port of the address). Packets whose headers could not be read
        /// (the `pass_bad_*`, `pass_short_frame`, `pass_not_ip` reasons)
        /// have no VIP: capture without --vip to see them.
        #[arg(long)]
        vip: Option<VipArg>,
        /// Stop after this many packets.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this many seconds (at most 3600).
        #[arg(long, value_name = "S", default_value_t = 30)]
        duration: u64,
        /// Record one matching packet in N (per CPU).
        #[arg(long, value_name = "N", default_value_t = 1)]
        sample: u32,
        /// Write a pcapng file (readable by tcpdump -r, tshark) instead
        /// of printing.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every VIP (the node goes on forwarding what still
    /// arrives); stays drained, also over lbd restarts, until `node resume`.
    Drain {
        /// Then print the node's VIP traffic every second until it stops
        /// (exit status 0) or the deadline passes (exit status 2).
        #[arg(long)]
        wait: bool,
        /// With --wait: seconds to wait at most.
        #[arg(long, value_name = "S", default_value_t = 60, requires = "wait")]
        deadline: u64,
        /// With --wait: traffic has stopped when it stays below this many
        /// packets per second...
        #[arg(long, value_name = "PPS", default_value_t = 1, requires = "wait")]
        idle_below: u64,
        /// ...for this many seconds in a row.
        #[arg(long, value_name = "S", default_value_t = 3, requires = "wait")]
        idle_for: u64,
    },
    /// Announce the VIPs again after a drain.
    Resume,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Compare the VIPs' live ring digests of several nodes: each SOURCE
    /// is a node's control socket, or a file with what `lbctl --json vip
    /// list` printed on a node. Fails when a VIP's rings differ.
    Check {
        #[arg(required = true, num_args = 2.., value_name = "SOURCE")]
        sources: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the running configuration, every default filled in: a valid
    /// configuration file.
    Dump {
        /// Written as JSON, or as TOML (for a file to add comments to).
        #[arg(long, value_enum, default_value_t = ConfigFormat::Json)]
        format: ConfigFormat,
    },
}

#[derive(Subcommand)]
enum VipCmd {
    List,
    /// One VIP's balancing: each backend's configured and effective
    /// weight and why, its last load report, its hard-limit state.
    Show {
        vip: VipArg,
    },
    /// Add a VIP, e.g. `lbctl vip add 198.51.100.10:80/tcp --check http`.
    Add {
        vip: VipArg,
        #[arg(long)]
        name: Option<String>,
        /// ipip or l2_dsr.
        #[arg(long, default_value = "ipip")]
        forwarding: ForwardingArg,
        /// All connections of a client go to one backend.
        #[arg(long)]
        affinity: bool,
        /// Keep no per-flow state on the LB (tcp, ipip, second chance on).
        #[arg(long)]
        stateless: bool,
        /// none, tcp, http or udp.
        #[arg(long, default_value = "none")]
        check: CheckArg,
        #[arg(long)]
        check_port: Option<u16>,
        #[arg(long)]
        check_path: Option<String>,
        #[arg(long)]
        check_payload: Option<String>,
        #[arg(long, default_value_t = 1000)]
        check_interval_ms: u64,
        #[arg(long, default_value_t = 500)]
        check_timeout_ms: u64,
        #[arg(long, default_value_t = 2)]
        rise: u32,
        #[arg(long, default_value_t = 3)]
        fall: u32,
        #[arg(long, default_value_t = 300)]
        drain_timeout_s: u64,
        /// Seconds a moved ring slot's previous owner gets a second hop
        /// (default: the drain timeout).
        #[arg(long)]
        second_chance_s: Option<u64>,
    },
    Del {
        vip: VipArg,
    },
}

#[derive(Subcommand)]
enum ConnCmd {
    /// Flows in the connection table (in the table's order), with filters.
    List {
        /// Only this VIP's flows (`198.51.100.10:80/tcp`).
        #[arg(long)]
        vip: Option<VipArg>,
        /// Only flows pinned to this backend address.
        #[arg(long)]
        backend: Option<IpAddr>,
        /// Only clients in this prefix (`203.0.113.0/24`, or one address).
        #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
        client: Option<ipnet::IpNet>,
        /// Also flows seen once (the probation table).
        #[arg(long)]
        probation: bool,
        /// Show at most this many flows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Read at most this many entries of each table (lbd waits while
        /// it reads, about a microsecond each).
        #[arg(long, default_value_t = 1_000_000)]
        scan: usize,
    },
}

/// A prefix, or one address as a host prefix.
fn parse_prefix(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a prefix (203.0.113.0/24) or an address"))
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Backends of every VIP, or of one.
    List {
        vip: Option<VipArg>,
    },
    Add {
        vip: VipArg,
        address: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        mac: Option<Mac>,
        /// Add it draining (no new flows).
        #[arg(long)]
        drain: bool,
    },
    Del {
        vip: VipArg,
        address: IpAddr,
    },
    /// No new flows; established flows go on until they end or the drain timeout.
    Drain {
        vip: VipArg,
        address: IpAddr,
        /// Then print the backend's flows still pinned to it every second
        /// until none is left (exit status 0) or the deadline passes (exit
        /// status 2); for a stateless VIP, the drain time left until it is
        /// over (0), the deadline passes (2) or the backend stops draining (1).
        #[arg(long)]
        wait: bool,
        /// With --wait: seconds to wait at most (default: the drain time
        /// left, after which lbd cuts the flows anyway, plus 2 s).
        #[arg(long, value_name = "S", requires = "wait")]
        deadline: Option<u64>,
    },
    Undrain {
        vip: VipArg,
        address: IpAddr,
    },
    Weight {
        vip: VipArg,
        address: IpAddr,
        weight: u32,
    },
}

fn main() -> ExitCode {
    if let Some(status) = lb_userspace::cli_docs::handle::<Cli>("lbctl") {
        return status;
    }
    let cli = Cli::parse();
    // Multi-threaded: `top` waits for keys with block_in_place.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call<T: DeserializeOwned>(cli: &Cli, request: Request) -> Result<T, String> {
    control::call(&cli.socket, &request)
        .await
        .map_err(|e| e.to_string())
}

/// `call`, with the body as lbd sent it (what `--json` prints).
async fn call_for_body<T: DeserializeOwned>(
    cli: &Cli,
    request: Request,
) -> Result<control::Body<T>, String> {
    control::call_for_body(&cli.socket, &request)
        .await
        .map_err(|e| e.to_string())
}

/// Ask lbd, then print its reply: with `--json` as lbd sent it (read as
/// `T` first, so that a reply this lbctl cannot read fails alike), else
/// `render`ed.
async fn show<T: DeserializeOwned>(
    cli: &Cli,
    request: Request,
    render: fn(&T),
) -> Result<ExitCode, String> {
    let control::Body { read, sent } = call_for_body::<T>(cli, request).await?;
    if cli.json {
        drop(read);
        print_json(&sent)
    } else {
        drop(sent);
        render(&read)
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: &Cli) -> Result<ExitCode, String> {
    match &cli.command {
        Cmd::Status => show(cli, Request::Status, print_status).await,
        Cmd::Vip {
            command: VipCmd::List,
        } => show(cli, Request::VipList, |rows: &Vec<_>| print_vips(rows)).await,
        Cmd::Vip {
            command: VipCmd::Show { vip },
        } => show(cli, Request::VipShow { vip: vip.0 }, print_vip_show).await,
        Cmd::Vip {
            command:
                VipCmd::Add {
                    vip,
                    name,
                    forwarding,
                    affinity,
                    stateless,
                    check,
                    check_port,
                    check_path,
                    check_payload,
                    check_interval_ms,
                    check_timeout_ms,
                    rise,
                    fall,
                    drain_timeout_s,
                    second_chance_s,
                },
        } => {
            let v = Vip {
                name: name.clone(),
                address: vip.0.address,
                port: vip.0.port,
                protocol: vip.0.protocol,
                forwarding: forwarding.0,
                affinity: *affinity,
                health_check: HealthCheck {
                    kind: check.0,
                    port: *check_port,
                    path: check_path.clone(),
                    payload: check_payload.clone(),
                    interval_ms: *check_interval_ms,
                    timeout_ms: *check_timeout_ms,
                    rise: *rise,
                    fall: *fall,
                    ..HealthCheck::default()
                },
                drain_timeout_s: *drain_timeout_s,
                second_chance_s: *second_chance_s,
                stateless: *stateless,
                balancing: Default::default(),
                backends: Vec::new(),
            };
            show(cli, Request::VipAdd { vip: Box::new(v) }, print_done).await
        }
        Cmd::Vip {
            command: VipCmd::Del { vip },
        } => show(cli, Request::VipDel { vip: vip.0 }, print_done).await,
        Cmd::Backend {
            command: BackendCmd::List { vip },
        } => {
            show(
                cli,
                Request::BackendList {
                    vip: vip.map(|v| v.0),
                },
                |rows: &Vec<_>| print_backends(rows),
            )
            .await
        }
        Cmd::Backend {
            command:
                BackendCmd::Add {
                    vip,
                    address,
                    weight,
                    mac,
                    drain,
                },
        } => {
            let backend = BackendConfig {
                address: *address,
                weight: *weight,
                state: if *drain {
                    AdminState::Drain
                } else {
                    AdminState::Active
                },
                mac: *mac,
            };
            show(
                cli,
                Request::BackendAdd {
                    vip: vip.0,
                    backend,
                },
                print_done,
            )
            .await
        }
        Cmd::Backend {
            command: BackendCmd::Del { vip, address },
        } => {
            show(
                cli,
                Request::BackendDel {
                    vip: vip.0,
                    address: *address,
                },
                print_done,
            )
            .await
        }
        Cmd::Backend {
            command:
                BackendCmd::Drain {
                    vip,
                    address,
                    wait: true,
                    deadline,
                },
        } => return drain::backend_drain_wait(cli, vip.0, *address, *deadline).await,
        Cmd::Backend {
            command: BackendCmd::Drain { vip, address, .. },
        } => {
            show(
                cli,
                Request::BackendDrain {
                    vip: vip.0,
                    address: *address,
                },
                print_done,
            )
            .await
        }
        Cmd::Backend {
            command: BackendCmd::Undrain { vip, address },
        } => {
            show(
                cli,
                Request::BackendUndrain {
                    vip: vip.0,
                    address: *address,
                },
                print_done,
            )
            .await
        }
        Cmd::Backend {
            command:
                BackendCmd::Weight {
                    vip,
                    address,
                    weight,
                },
        } => {
            show(
                cli,
                Request::BackendWeight {
                    vip: vip.0,
                    address: *address,
                    weight: *weight,
                },
                print_done,
            )
            .await
        }
        Cmd::Stats { interval } => {
            return stats::stats(cli, *interval)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Cmd::Capture {
            vip,
            count,
            duration,
            sample,
            write,
        } => {
            let spec = CaptureSpec {
                vip: vip.map(|v| v.0),
                count: *count,
                duration_s: *duration,
                sample: *sample,
            };
            return capture::capture(cli, spec, write.as_deref()).await;
        }
        Cmd::Cluster {
            command: ClusterCmd::Check { sources },
        } => {
            return cluster_check(cli, sources)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Cmd::Top { once } => {
            return top::run(&cli.socket, *once)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Cmd::Node {
            command:
                NodeCmd::Drain {
                    wait,
                    deadline,
                    idle_below,
                    idle_for,
                },
        } => {
            let wait = wait.then_some(drain::Idle {
                deadline: *deadline,
                below: *idle_below,
                seconds: *idle_for,
            });
            return drain::node_drain(cli, wait).await;
        }
        Cmd::Node {
            command: NodeCmd::Resume,
        } => return drain::node_resume(cli).await,
        Cmd::Conn {
            command:
                ConnCmd::List {
                    vip,
                    backend,
                    client,
                    probation,
                    limit,
                    scan,
                },
        } => {
            show(
                cli,
                Request::ConnList {
                    vip: vip.map(|v| v.0),
                    backend: *backend,
                    client: *client,
                    probation: *probation,
                    limit: *limit,
                    scan: *scan,
                },
                print_conns,
            )
            .await
        }
        Cmd::Flow {
            src,
            sport,
            dst,
            dport,
            protocol,
        } => {
            show(
                cli,
                Request::Flow {
                    src: *src,
                    sport: *sport,
                    dst: *dst,
                    dport: *dport,
                    protocol: protocol.0,
                },
                print_flow,
            )
            .await
        }
        Cmd::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            let format =
                ConfigFormat::of_path(file).map_err(|e| format!("{}: {e}", file.display()))?;
            show(cli, Request::Apply { text, format }, print_done).await
        }
        Cmd::Config {
            command: ConfigCmd::Dump { format },
        } => match format {
            ConfigFormat::Json => show(cli, Request::ConfigDump, print_json::<Value>).await,
            ConfigFormat::Toml => return config_dump_toml(cli).await,
        },
    }
}

/// `config dump --format toml`: lbd's JSON as it sent it, written as TOML
/// (read as plain JSON, so that a newer lbd's options are kept).
async fn config_dump_toml(cli: &Cli) -> Result<ExitCode, String> {
    if cli.json {
        return Err("--json and --format toml ask for two different outputs".into());
    }
    let config: Value = call(cli, Request::ConfigDump).await?;
    let text = lb_userspace::config_format::json_to_toml(&config)
        .map_err(|e| format!("the running configuration {e}; use --format json"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn cluster_check(cli: &Cli, sources: &[PathBuf]) -> Result<(), String> {
    use lb_userspace::cluster::{self, Comparison};
    let mut read = Vec::new();
    for source in sources {
        read.push((source.display().to_string(), cluster::read(source).await?));
    }
    let cmp = Comparison::new(read);
    if cli.json {
        print_json(&cmp.report());
    } else {
        let mut header = vec!["VIP".to_string()];
        header.extend(cmp.sources.iter().cloned());
        header.push("RINGS".into());
        let rows: Vec<Vec<String>> = cmp
            .vips
            .iter()
            .map(|(vip, row)| {
                let mut cells = vec![vip.clone()];
                cells.extend(row.iter().map(|d| d.clone().unwrap_or_else(|| "-".into())));
                let same = !cmp.differing().contains(&vip.as_str());
                cells.push(if same { "same" } else { "DIFFER" }.into());
                cells
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&header, rows.into_iter());
    }
    let differing = cmp.differing();
    if differing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} VIP(s) have different rings on these nodes (flows would reach different backends depending on the node): {}",
            differing.len(),
            differing.join(", ")
        ))
    }
}
