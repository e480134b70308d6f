//! lbd: the load balancer daemon. See `lb_userspace::daemon`.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use lb_userspace::{
    config::{Config, NodeOverrides},
    daemon::{self, ControlMsg, Daemon},
    errors, link_events, metrics, service_manager,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
};
use tracing::{error, info};

#[derive(Parser)]
#[command(version = lb_userspace::control::VERSION_TEXT, about = "XDP Maglev load balancer daemon")]
struct Args {
    /// Configuration file: TOML if named *.toml, else JSON; see docs for
    /// every field.
    #[arg(long, short)]
    config: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log as text for people or as JSON lines for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The same as --log-format json (kept for existing units).
    #[arg(long, hide = true)]
    log_json: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Detach the program and remove everything pinned, then exit
    /// (forwarding stops; established connections are lost).
    #[arg(long)]
    teardown: bool,
    /// This host's IPv4 tunnel source, over the file's
    /// tunnel_source.ipv4 (one config file for many hosts).
    #[arg(long, value_name = "ADDR")]
    tunnel_source_v4: Option<std::net::Ipv4Addr>,
    /// This host's IPv6 tunnel source, over the file's tunnel_source.ipv6.
    #[arg(long, value_name = "ADDR")]
    tunnel_source_v6: Option<std::net::Ipv6Addr>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Args {
    fn node(&self) -> NodeOverrides {
        NodeOverrides {
            tunnel_source_v4: self.tunnel_source_v4,
            tunnel_source_v6: self.tunnel_source_v6,
        }
    }
}

fn main() -> std::process::ExitCode {
    if let Some(status) = lb_userspace::cli_docs::handle::<Args>("lbd") {
        return status;
    }
    let args = Args::parse();
    // Logs go to standard error, like the failure message below: standard
    // output carries only what was asked for (`--check`'s "ok").
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log_json = args.log_json || args.log_format == LogFormat::Json;
    if log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Said once: as a plain line, or as a log line where logs are
            // JSON (so that a log collector parses every line).
            let message = errors::report(&e);
            if log_json {
                error!(error = %message, "lbd failed");
            } else {
                eprintln!("lbd: {message}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load_for(&args.config, &args.node())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    if args.teardown {
        return daemon::teardown(&config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, config))
}

async fn serve(args: Args, config: Config) -> anyhow::Result<()> {
    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let (report_tx, mut report_rx) = mpsc::channel(1024);
    let mut daemon = Daemon::start(
        config,
        args.config.clone(),
        args.node(),
        health_tx,
        report_tx,
    )
    .context("starting")?;
    // Interfaces deleted and created again: watched from here on, and
    // compared once now for any change since the attach above.
    let links_changed = Arc::new(Notify::new());
    link_events::watch(links_changed.clone()).context("subscribing to link events")?;
    daemon.reconcile_interfaces();
    let (socket, group) = daemon.control_socket();
    let listener = daemon::bind_control(&socket, group.as_deref())?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(64);
    let capturer = Arc::new(daemon.capturer()?);
    tokio::spawn(daemon::serve_control(listener, ctl_tx, Some(capturer)));
    if let Some(addr) = args.metrics {
        let m = daemon.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
        info!(%addr, "metrics endpoint up");
    }
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Petted from this loop: the watchdog fires when the loop stops turning.
    let watchdog_period = service_manager::watchdog_period();
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    info!(socket = %socket.display(), ?watchdog_period, "lbd ready");
    service_manager::ready(&daemon.summary());
    loop {
        tokio::select! {
            Some((req, reply)) = ctl_rx.recv() => {
                let _ = reply.send(daemon.handle(req));
            }
            Some(ev) = health_rx.recv() => daemon.on_health(ev),
            Some(ev) = report_rx.recv() => daemon.on_report(ev),
            _ = links_changed.notified() => daemon.reconcile_interfaces(),
            _ = hup.recv() => {
                service_manager::reloading();
                daemon.reload();
                service_manager::ready(&daemon.summary());
            }
            _ = watchdog.tick(), if watchdog_period.is_some() => service_manager::pet_watchdog(),
            _ = tick.tick() => daemon.on_tick(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    service_manager::stopping();
    daemon.on_exit();
    let _ = std::fs::remove_file(&socket);
    info!("lbd exiting; the program stays attached and keeps forwarding");
    Ok(())
}
