//! lbctl: the operator's CLI for lbd, over its control socket.
//!
//! Human-readable tables by default, `--json` for scripts. Any failure
//! exits non-zero with a one-line reason on stderr (status 1; `node drain
//! --wait` exits 2 when its deadline passes with traffic still arriving).

use std::{
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use lb_userspace::{
    capture::{CaptureEvent, CaptureSpec, CapturedPacket, PcapngFile, summary},
    config::{
        AdminState, BackendConfig, BalancingMode, CheckKind, Config, Forwarding, HealthCheck, Mac,
        Protocol, Vip,
    },
    config_format::ConfigFormat,
    control::{self, Request, VipRef},
};
use serde_json::Value;

#[derive(Parser)]
#[command(version, about = "Control the lbd load balancer daemon")]
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
        /// A JSON (.json) or TOML (.toml) file, by its extension.
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
        /// status 2).
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

/// A VIP written `198.51.100.10:80/tcp` or `[2001:db8::10]:443/udp`.
#[derive(Clone, Copy, Debug)]
struct VipArg(VipRef);

impl FromStr for VipArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a VIP (expected ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.10:80/tcp)"
            )
        };
        let (sock, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let protocol = proto.parse::<ProtoArg>().map_err(|_| bad())?.0;
        let sock: std::net::SocketAddr = sock.parse().map_err(|_| bad())?;
        Ok(VipArg(VipRef {
            address: sock.ip(),
            port: sock.port(),
            protocol,
        }))
    }
}

#[derive(Clone, Copy, Debug)]
struct ProtoArg(Protocol);

impl FromStr for ProtoArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(ProtoArg(Protocol::Tcp)),
            "udp" => Ok(ProtoArg(Protocol::Udp)),
            _ => Err(format!("{s:?} is not a protocol (tcp or udp)")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ForwardingArg(Forwarding);

impl FromStr for ForwardingArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipip" => Ok(ForwardingArg(Forwarding::Ipip)),
            "l2_dsr" => Ok(ForwardingArg(Forwarding::L2Dsr)),
            _ => Err(format!("{s:?} is not a forwarding mode (ipip or l2_dsr)")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct CheckArg(CheckKind);

impl FromStr for CheckArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CheckArg(CheckKind::None)),
            "tcp" => Ok(CheckArg(CheckKind::Tcp)),
            "http" => Ok(CheckArg(CheckKind::Http)),
            "udp" => Ok(CheckArg(CheckKind::Udp)),
            _ => Err(format!(
                "{s:?} is not a check type (none, tcp, http or udp)"
            )),
        }
    }
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

async fn call(cli: &Cli, request: Request) -> Result<Value, String> {
    control::call(&cli.socket, &request)
        .await
        .map_err(|e| e.to_string())
}

async fn run(cli: &Cli) -> Result<ExitCode, String> {
    let (request, render): (Request, fn(&Value)) = match &cli.command {
        Cmd::Status => (Request::Status, print_status),
        Cmd::Vip {
            command: VipCmd::List,
        } => (Request::VipList, print_vips),
        Cmd::Vip {
            command: VipCmd::Show { vip },
        } => (Request::VipShow { vip: vip.0 }, print_vip_show),
        Cmd::Vip {
            command:
                VipCmd::Add {
                    vip,
                    name,
                    forwarding,
                    affinity,
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
                balancing: Default::default(),
                backends: Vec::new(),
            };
            (Request::VipAdd { vip: Box::new(v) }, print_done)
        }
        Cmd::Vip {
            command: VipCmd::Del { vip },
        } => (Request::VipDel { vip: vip.0 }, print_done),
        Cmd::Backend {
            command: BackendCmd::List { vip },
        } => (
            Request::BackendList {
                vip: vip.map(|v| v.0),
            },
            print_backends,
        ),
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
            (
                Request::BackendAdd {
                    vip: vip.0,
                    backend,
                },
                print_done,
            )
        }
        Cmd::Backend {
            command: BackendCmd::Del { vip, address },
        } => (
            Request::BackendDel {
                vip: vip.0,
                address: *address,
            },
            print_done,
        ),
        Cmd::Backend {
            command:
                BackendCmd::Drain {
                    vip,
                    address,
                    wait: true,
                    deadline,
                },
        } => return backend_drain_wait(cli, vip.0, *address, *deadline).await,
        Cmd::Backend {
            command: BackendCmd::Drain { vip, address, .. },
        } => (
            Request::BackendDrain {
                vip: vip.0,
                address: *address,
            },
            print_done,
        ),
        Cmd::Backend {
            command: BackendCmd::Undrain { vip, address },
        } => (
            Request::BackendUndrain {
                vip: vip.0,
                address: *address,
            },
            print_done,
        ),
        Cmd::Backend {
            command:
                BackendCmd::Weight {
                    vip,
                    address,
                    weight,
                },
        } => (
            Request::BackendWeight {
                vip: vip.0,
                address: *address,
                weight: *weight,
            },
            print_done,
        ),
        Cmd::Stats { interval } => return stats(cli, *interval).await.map(|()| ExitCode::SUCCESS),
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
            return capture(cli, spec, write.as_deref()).await;
        }
        Cmd::Cluster {
            command: ClusterCmd::Check { sources },
        } => {
            return cluster_check(cli, sources)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Cmd::Top { once } => {
            return lb_userspace::top::run(&cli.socket, *once)
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
            let wait = wait.then_some(Idle {
                deadline: *deadline,
                below: *idle_below,
                seconds: *idle_for,
            });
            return node_drain(cli, wait).await;
        }
        Cmd::Node {
            command: NodeCmd::Resume,
        } => return node_resume(cli).await,
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
        } => (
            Request::ConnList {
                vip: vip.map(|v| v.0),
                backend: *backend,
                client: *client,
                probation: *probation,
                limit: *limit,
                scan: *scan,
            },
            print_conns,
        ),
        Cmd::Flow {
            src,
            sport,
            dst,
            dport,
            protocol,
        } => (
            Request::Flow {
                src: *src,
                sport: *sport,
                dst: *dst,
                dport: *dport,
                protocol: protocol.0,
            },
            print_flow,
        ),
        Cmd::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            let format =
                ConfigFormat::of_path(file).map_err(|e| format!("{}: {e}", file.display()))?;
            (Request::Apply { text, format }, print_done)
        }
        Cmd::Config {
            command: ConfigCmd::Dump { format },
        } => match format {
            ConfigFormat::Json => (Request::ConfigDump, print_json),
            ConfigFormat::Toml => return config_dump_toml(cli).await,
        },
    };
    let reply = call(cli, request).await?;
    if cli.json {
        print_json(&reply)
    } else {
        render(&reply)
    }
    Ok(ExitCode::SUCCESS)
}

/// `config dump --format toml`: lbd's JSON read back into the
/// configuration's own types, so that TOML is written as lbd reads it.
async fn config_dump_toml(cli: &Cli) -> Result<ExitCode, String> {
    if cli.json {
        return Err("--json and --format toml ask for two different outputs".into());
    }
    let reply = call(cli, Request::ConfigDump).await?;
    let config: Config = serde_json::from_value(reply)
        .map_err(|e| format!("lbd's configuration is not one this lbctl knows: {e}"))?;
    let text = config
        .to_toml()
        .map_err(|e| format!("the running configuration {e}; use --format json"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn node_resume(cli: &Cli) -> Result<ExitCode, String> {
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

/// `lbctl capture`: stream the packets lbd captures to stdout or a pcapng
/// file until lbd ends the capture or Ctrl-C.
async fn capture(
    cli: &Cli,
    spec: CaptureSpec,
    file: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    spec.check().map_err(|e| e.to_string())?;
    let mut pcap = match file {
        Some(path) => {
            let out =
                std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let w = PcapngFile::new(std::io::BufWriter::new(out))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Some((path, w))
        }
        None => None,
    };
    let mut packets = 0u64;
    let mut end = None;
    let on_event = |event: CaptureEvent| -> Result<(), String> {
        match event {
            CaptureEvent::Packet(p) => {
                packets += 1;
                match &mut pcap {
                    Some((path, w)) => w
                        .write(&p)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                    None if cli.json => {
                        println!("{}", serde_json::to_string(&p).unwrap_or_default())
                    }
                    None => println!("{}", capture_line(&p)),
                }
            }
            CaptureEvent::End(e) => end = Some(e),
        }
        Ok(())
    };
    tokio::select! {
        r = control::capture(&cli.socket, spec, on_event) => r.map_err(|e| e.to_string())?,
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some((path, w)) = pcap {
        use std::io::Write;
        w.into_inner()
            .flush()
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let how = match &end {
        Some(e) if e.lost > 0 => format!(
            "{} by {}; {} more packets matched but the ring buffer was full (capture_lost)",
            e.packets, e.ended_by, e.lost
        ),
        Some(e) => format!("{} by {}", e.packets, e.ended_by),
        None => format!("{packets}, interrupted"),
    };
    if !cli.json {
        eprintln!("lbctl: captured {how}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `21:04:05.123456  if 3  203.0.113.7:5353 > 198.51.100.10:53 udp  XDP_DROP drop_no_backend  47 bytes`
fn capture_line(p: &CapturedPacket) -> String {
    let secs = p.time_ns / 1_000_000_000;
    let micros = (p.time_ns % 1_000_000_000) / 1000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}  if {}  {}  {} {}  {} bytes",
        day / 3600,
        day / 60 % 60,
        day % 60,
        p.ifindex,
        summary(&p.bytes()),
        p.action,
        p.reason,
        p.frame_len,
    )
}

/// Drain a backend, then print its flows still pinned to it once a second
/// until none is left (exit status 0) or `deadline` seconds pass (exit
/// status 2; default: the drain time lbd reports left, plus 2 s).
async fn backend_drain_wait(
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
struct Idle {
    /// Seconds to wait at most.
    deadline: u64,
    /// Packets per second below which traffic counts as stopped...
    below: u64,
    /// ...for this many seconds in a row.
    seconds: u64,
}

/// Exit status of `node drain --wait` when the deadline passed first.
const EXIT_DEADLINE: u8 = 2;

/// Drain, then with `wait`, sample the node's VIP traffic every second
/// (packets forwarded and dropped for every VIP, from lbd's counters)
/// until it stays below `wait.below` for `wait.seconds` samples.
async fn node_drain(cli: &Cli, wait: Option<Idle>) -> Result<ExitCode, String> {
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
fn vip_packets(stats: &Value) -> u64 {
    stats["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["packets"].as_u64().unwrap_or(0) + v["dropped"].as_u64().unwrap_or(0))
        .sum()
}

fn print_drained(v: &Value) {
    let state = if v["was_drained"] == true {
        "node already drained"
    } else {
        "node drained"
    };
    println!(
        "{state}: every VIP withdrawn; it goes on forwarding what still arrives, and stays drained until `lbctl node resume`"
    );
}

fn print_resumed(v: &Value) {
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

/// Two samples `interval` seconds apart; rates from their difference.
async fn stats(cli: &Cli, interval: f64) -> Result<(), String> {
    if !(0.1..=60.0).contains(&interval) {
        return Err(format!("--interval {interval} is out of range 0.1..=60"));
    }
    let a = call(cli, Request::Stats).await?;
    tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    let b = call(cli, Request::Stats).await?;
    let dt = (b["time_s"].as_f64().unwrap_or(0.0) - a["time_s"].as_f64().unwrap_or(0.0)).max(1e-3);
    let rate = |x: &Value, y: &Value, field: &str| {
        (y[field]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(x[field].as_u64().unwrap_or(0))) as f64
            / dt
    };
    let mut vips = Vec::new();
    for (x, y) in a["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(b["vips"].as_array().into_iter().flatten())
    {
        vips.push(serde_json::json!({
            "vip": y["vip"], "packets_per_s": rate(x, y, "packets"), "bits_per_s": 8.0 * rate(x, y, "bytes"),
            "new_flows_per_s": rate(x, y, "new_flows"), "dropped_per_s": rate(x, y, "dropped"), "packets": y["packets"],
        }));
    }
    let mut backends = Vec::new();
    for (x, y) in a["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(b["backends"].as_array().into_iter().flatten())
    {
        backends.push(serde_json::json!({
            "vip": y["vip"], "backend": y["address"], "packets_per_s": rate(x, y, "packets"),
            "bits_per_s": 8.0 * rate(x, y, "bytes"), "new_flows_per_s": rate(x, y, "new_flows"), "packets": y["packets"],
        }));
    }
    let out = serde_json::json!({ "interval_s": dt, "vips": vips, "backends": backends, "counters": b["counters"] });
    if cli.json {
        print_json(&out);
        return Ok(());
    }
    table(
        &["VIP", "PKT/S", "BIT/S", "NEW/S", "DROP/S", "PACKETS"],
        vips.iter().map(|v| {
            vec![
                s(&v["vip"]),
                num(&v["packets_per_s"]),
                num(&v["bits_per_s"]),
                num(&v["new_flows_per_s"]),
                num(&v["dropped_per_s"]),
                s(&v["packets"]),
            ]
        }),
    );
    println!();
    table(
        &["VIP", "BACKEND", "PKT/S", "BIT/S", "NEW/S", "PACKETS"],
        backends.iter().map(|v| {
            vec![
                s(&v["vip"]),
                s(&v["backend"]),
                num(&v["packets_per_s"]),
                num(&v["bits_per_s"]),
                num(&v["new_flows_per_s"]),
                s(&v["packets"]),
            ]
        }),
    );
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> String {
    let x = v.as_f64().unwrap_or(0.0);
    match x {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

async fn cluster_check(cli: &Cli, sources: &[PathBuf]) -> Result<(), String> {
    use lb_userspace::cluster::{self, Comparison};
    let mut read = Vec::new();
    for source in sources {
        read.push((source.display().to_string(), cluster::read(source).await?));
    }
    let cmp = Comparison::new(read);
    if cli.json {
        print_json(&cmp.to_json());
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

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_done(v: &Value) {
    let ms = v["elapsed_ms"].as_f64().unwrap_or(0.0);
    println!(
        "applied ({} table(s) rebuilt, {ms:.1} ms)",
        v["rings_rebuilt"]
    );
}

fn print_status(v: &Value) {
    println!(
        "lbd {}  up {} s  config {}",
        s(&v["version"]),
        v["uptime_s"],
        s(&v["config"])
    );
    for i in v["interfaces"].as_array().into_iter().flatten() {
        let name = s(&i["name"]);
        let reattached = match i["reattached"].as_u64() {
            None | Some(0) => String::new(),
            Some(n) => format!(", re-attached {n} time(s) after the interface was re-created"),
        };
        match i["state"].as_str() {
            Some("gone") => println!(
                "interface {name}: GONE (deleted; forwarding on it stopped, lbd attaches again when it returns){reattached}"
            ),
            Some("detached") => println!(
                "interface {name}: NOT ATTACHED ({}){reattached}",
                s(&i["error"])
            ),
            _ => println!("interface {name}: XDP {} mode{reattached}", s(&i["mode"])),
        }
    }
    for l in v["unconfigured_links"].as_array().into_iter().flatten() {
        println!("warning: {}", s(&l["warning"]));
    }
    println!(
        "vips {}  backends {} ({} healthy)  maglev table {} slots  table rebuilds {}",
        v["vips"], v["backends"], v["backends_up"], v["ring_size"], v["table_rebuilds"]
    );
    for (vip, digest) in v["ring_digests"].as_object().into_iter().flatten() {
        println!("ring {vip}: digest {}", s(digest));
    }
    print_announce(&v["announce"]);
    print_speaker(&v["speaker"]);
    let o = &v["occupancy"];
    let fill = |t: &Value| {
        format!(
            "{}/{} ({:.1}%)",
            t["entries"],
            t["capacity"],
            t["fill"].as_f64().unwrap_or(0.0) * 100.0
        )
    };
    println!(
        "connections {}  probation {}{}",
        fill(&o["connections"]),
        fill(&o["probation"]),
        if o["exact"] == false {
            "  (counted up to a limit)"
        } else {
            ""
        }
    );
    if let Some(c) = v["counters"].as_object() {
        println!("counters:");
        for (k, n) in c {
            println!("  {k:<22} {n}");
        }
    }
}

fn print_announce(a: &Value) {
    if a.is_null() {
        return;
    }
    if a["table"].is_null() {
        println!("announce: not configured");
    } else {
        println!(
            "announce: routes in table {} with protocol {}",
            a["table"], a["protocol"]
        );
    }
    for table in a["leftover_tables"].as_array().into_iter().flatten() {
        println!(
            "  routes still to remove from an earlier announce: {}",
            s(table)
        );
    }
    for row in a["addresses"].as_array().into_iter().flatten() {
        println!("  {}: {}", s(&row["address"]), s(&row["state"]));
    }
    if a["drained"] == true {
        println!("node: DRAINED (every VIP withdrawn; `lbctl node resume` announces again)");
    }
    if let Some(e) = a["error"].as_str() {
        println!("announce error: {e}");
    }
}

/// Whether BIRD is there to tell the router (only while announcing).
fn print_speaker(speaker: &Value) {
    if let Some(summary) = speaker["summary"].as_str() {
        println!("speaker: {summary}");
    }
}

fn print_vips(v: &Value) {
    table(
        &[
            "VIP",
            "NAME",
            "FORWARDING",
            "AFFINITY",
            "BACKENDS",
            "HEALTHY",
            "IN TABLE",
            "RING",
            "ANNOUNCED",
        ],
        v.as_array().into_iter().flatten().map(|r| {
            let addr = s(&r["address"]);
            let vip = format!(
                "{}:{}/{}",
                lb_userspace::cluster::bracketed(&addr),
                r["port"],
                s(&r["protocol"])
            );
            vec![
                vip,
                s(&r["name"]),
                s(&r["forwarding"]),
                s(&r["affinity"]),
                s(&r["backends"]),
                s(&r["healthy"]),
                s(&r["in_table"]),
                s(&r["ring_digest"]),
                match r["announced"].as_bool() {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]
        }),
    );
}

/// `lbctl vip show`: a line on the VIP's balancing, a row per backend.
fn print_vip_show(v: &Value) {
    let show: control::VipShow = match serde_json::from_value(v.clone()) {
        Ok(show) => show,
        Err(e) => {
            eprintln!("lbctl: unexpected reply from lbd: {e}");
            return;
        }
    };
    let mode = match show.mode {
        BalancingMode::Static => "static (configured weights)".to_string(),
        BalancingMode::Load => format!("load, source {}", show.source.name()),
    };
    println!("{}  balancing {mode}", show.vip);
    if let Some(l) = &show.hard_limit {
        let waived = if show.hard_limit_waived {
            ": WAIVED, every backend is over it"
        } else {
            ""
        };
        println!(
            "hard limit: {} above {}, resumes under {}{waived}",
            l.metric,
            l.above,
            l.resume_level()
        );
    }
    let opt = |x: Option<f64>, digits: usize| x.map_or("-".into(), |x| format!("{x:.digits$}"));
    table(
        &[
            "BACKEND",
            "WEIGHT",
            "EFFECTIVE",
            "HEALTH",
            "ACTIVE",
            "UTILIZATION",
            "LOAD",
            "LIMIT VALUE",
            "REPORT AGE",
            "HARD LIMIT",
            "WHY",
        ],
        show.backends.iter().map(|b| {
            let r = b.report.as_ref();
            let age = match r {
                None => "-".to_string(),
                Some(r) => {
                    let age = r.age_s.map_or("never".into(), |a| format!("{a:.1} s"));
                    let mut cell = if r.stale {
                        format!("{age} (stale)")
                    } else {
                        age
                    };
                    if let Some(e) = &r.error {
                        cell = format!("{cell}; last: {e}");
                    }
                    cell
                }
            };
            let limit = match (&show.hard_limit, b.over_hard_limit) {
                (None, _) => "-",
                (Some(_), true) if show.hard_limit_waived => "over (waived)",
                (Some(_), true) => "OVER",
                (Some(_), false) => "under",
            };
            vec![
                b.address.to_string(),
                b.weight.to_string(),
                opt(b.effective_weight, 2),
                b.health.clone(),
                b.active_flows.map_or("-".into(), |a| a.to_string()),
                opt(r.and_then(|r| r.utilization), 2),
                opt(r.and_then(|r| r.load), 2),
                opt(r.and_then(|r| r.limit_value), 1),
                age,
                limit.into(),
                b.why.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    );
}

fn print_backends(v: &Value) {
    table(
        &[
            "VIP",
            "BACKEND",
            "WEIGHT",
            "EFFECTIVE",
            "STATE",
            "HEALTH",
            "IN TABLE",
            "ACTIVE",
            "INACTIVE",
            "NEW/S",
            "LAST CHECK",
            "DRAIN LEFT",
        ],
        v.as_array().into_iter().flatten().map(|r| {
            let drain = r["drain_remaining_s"]
                .as_u64()
                .map(|x| format!("{x} s"))
                .unwrap_or_else(|| "-".into());
            vec![
                s(&r["vip"]),
                s(&r["address"]),
                s(&r["weight"]),
                r["effective_weight"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                s(&r["state"]),
                s(&r["health"]),
                s(&r["in_table"]),
                s(&r["active_flows"]),
                s(&r["inactive_flows"]),
                r["new_flows_per_s"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |x| format!("{x:.1}")),
                s(&r["last_check"]),
                drain,
            ]
        }),
    );
}

fn print_conns(v: &Value) {
    table(
        &[
            "PROTO", "CLIENT", "VIP", "BACKEND", "TABLE", "IDLE", "PINNED",
        ],
        v["rows"].as_array().into_iter().flatten().map(|r| {
            vec![
                s(&r["protocol"]),
                s(&r["client"]),
                s(&r["vip"]),
                s(&r["backend"]),
                if r["closed"] == true {
                    format!("{}, closed", s(&r["table"]))
                } else {
                    s(&r["table"])
                },
                format!("{} s", s(&r["idle_s"])),
                r["stale"]
                    .as_str()
                    .map_or("yes".to_string(), |why| format!("no: {why}")),
            ]
        }),
    );
    let shown = v["rows"].as_array().map_or(0, Vec::len);
    println!("{shown} flows shown, {} entries read", s(&v["scanned"]));
    if v["more"] == true {
        println!("more flows match: raise --limit");
    }
    if v["truncated"] == true {
        println!("the table holds more entries than --scan: flows may be missing");
    }
}

fn print_flow(v: &Value) {
    println!("backend {}: {}", s(&v["backend"]), s(&v["reason"]));
}
