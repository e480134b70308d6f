//! lbd's configuration: its shape, defaults, and validation. The file is
//! JSON or TOML (`config_format`), read into these same types.
//!
//! Every field is documented here. The operators' reference,
//! docs/configuration.md, is written by hand, not generated from these
//! definitions; tests/tests/docs.rs keeps it in step with them (every field
//! path, every default, the examples and every validation message). A
//! rejected file gets an error naming the field path and the reason
//! (`vips[2].backends[0].weight: 0 is out of range 1..=1000`), and nothing
//! of it is applied.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config_format::{self, ConfigFormat};

/// Largest backend weight; weights are relative, so this bounds the ratio.
pub const MAX_WEIGHT: u32 = 1000;

/// The whole configuration of one lbd.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the load balancer program attaches to (at least one).
    pub interfaces: Vec<Interface>,
    /// Outer source addresses of IP-in-IP tunnels, per family. Required for
    /// each family of backend that a tunnel-mode VIP has.
    #[serde(default)]
    pub tunnel_source: TunnelSource,
    /// How the next hop towards backends is found.
    #[serde(default)]
    pub next_hop: NextHop,
    /// Largest IP packet (bytes) the path to the backends carries. A client
    /// packet that would exceed it once encapsulated is answered with an
    /// ICMP too-big (`answer_too_big`) so the client sends smaller ones, or
    /// dropped (`drop_too_big`). Default 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// How often packets too big for `mtu` are answered with ICMP too-big.
    #[serde(default)]
    pub too_big_answers: TooBigAnswers,
    /// How fast flows may enter the connection table.
    #[serde(default)]
    pub conn_promotions: ConnPromotions,
    /// Second chance: TCP flows that reach this node without a connection
    /// entry keep their backend across ring changes (GUE second hop).
    #[serde(default)]
    pub second_chance: SecondChance,
    /// Sizes of the data plane's tables.
    #[serde(default)]
    pub tables: Tables,
    /// Where maps and the XDP link are pinned, so forwarding survives lbd
    /// restarts. Default `/sys/fs/bpf/lbd`.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Where lbd keeps what a restart must not lose and the pins do not
    /// hold: edits made with `lbctl` and when each drain began. Default
    /// `/run/lbd/state.json` (gone at reboot, like the pins).
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// The local control socket `lbctl` talks to.
    #[serde(default)]
    pub control: Control,
    /// Announce the VIPs to the network: lbd keeps one route per VIP
    /// address it announces in a kernel routing table of its own, which a
    /// BGP speaker (BIRD, deploy/bird/) exports. Unset: nothing is
    /// announced, the VIPs are routed to this host by other means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    /// The BGP speaker that exports the announced routes, which lbd asks
    /// whether it is running and peering (shown in `lbctl status`).
    /// Left out of dumps and saved state when it is the default, so that
    /// they stay readable by an lbd from before it.
    #[serde(default, skip_serializing_if = "Speaker::is_default")]
    pub speaker: Speaker,
    /// The virtual services.
    #[serde(default)]
    pub vips: Vec<Vip>,
}

/// An interface to attach the load balancer to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// `native` (driver mode, the fast path; default) or `generic` (skb
    /// mode: works on any device, much slower). lbd falls back from native
    /// to generic with a warning if the driver refuses native mode.
    #[serde(default)]
    pub mode: AttachMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    #[default]
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSource {
    /// Source of IPv4 outer headers; an address of this host.
    pub ipv4: Option<Ipv4Addr>,
    /// Source of IPv6 outer headers; an address of this host.
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NextHop {
    /// Ask the kernel's routing table and neighbour cache (`bpf_fib_lookup`)
    /// for each backend's next hop. Default true. Needs IP forwarding on.
    #[serde(default = "yes")]
    pub fib: bool,
    /// Next-hop MAC used when `fib` is off, or when the kernel has not
    /// resolved the neighbour yet.
    #[serde(default)]
    pub gateway_mac: Option<Mac>,
    /// Without `fib`: send out of this interface (XDP_REDIRECT) instead of
    /// the one the packet came in on (XDP_TX).
    #[serde(default)]
    pub egress_interface: Option<String>,
}

impl Default for NextHop {
    fn default() -> Self {
        Self {
            fib: true,
            gateway_mac: None,
            egress_interface: None,
        }
    }
}

/// The rate limit of promotions from the probation table into the
/// connection table: a token bucket on each CPU, each with an equal share.
/// It bounds how fast any traffic, a flood of spoofed flows that send two
/// packets each included, can push established flows out of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnPromotions {
    /// Flows moved into the connection table per second, all CPUs
    /// together. A flow over the limit stays in the probation table, still
    /// pinned to its backend, and is promoted by a later packet. Unset: a
    /// tenth of `tables.conn_entries`, so that the table's entries are
    /// replaced at most once in ten seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
}

/// Second chance. A TCP packet of a flow in neither of this node's tables
/// (the node lost them, or another node had the flow until an ECMP change)
/// whose ring slot changed within the VIP's window goes to the slot's
/// owner in GUE, with the slot's previous owner as a second hop; the
/// owner's `lb_decap` keeps it if it has a socket for the flow and sends
/// it on otherwise. Needs every backend to run an `lb_decap` that accepts
/// GUE on `gue_port` with the other backends as peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecondChance {
    /// Send packets with a second hop. Default false: a backend whose
    /// `lb_decap` does not take GUE would reset the flows it gets.
    #[serde(default)]
    pub enabled: bool,
    /// UDP destination port of the GUE packets; the backends'
    /// `lb-decap attach --gue-port`. Default 6080.
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
}

impl Default for SecondChance {
    fn default() -> Self {
        Self {
            enabled: false,
            gue_port: default_gue_port(),
        }
    }
}

/// The rate limit of ICMP too-big answers: a token bucket on each CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TooBigAnswers {
    /// Answers per second on each CPU; 0 answers none (too-big packets are
    /// only dropped). Default 100.
    #[serde(default = "default_too_big_per_second")]
    pub per_second: u32,
    /// Answers a CPU may send back to back after a quiet spell. Default 10.
    #[serde(default = "default_too_big_burst")]
    pub burst: u32,
}

impl Default for TooBigAnswers {
    fn default() -> Self {
        Self {
            per_second: default_too_big_per_second(),
            burst: default_too_big_burst(),
        }
    }
}

/// The IPv6 minimum link MTU (RFC 8200 section 5).
const IPV6_MIN_MTU: u32 = 1280;

/// Most promotions per second that can be configured.
pub const MAX_PROMOTIONS_PER_SECOND: u32 = 100_000_000;
/// Without `conn_promotions.per_second`, the connection table's entries
/// can be replaced at most once in this many seconds.
pub const DEFAULT_CONN_TURNOVER_SECS: u32 = 10;

/// Most ICMP too-big answers per second per CPU that can be configured.
pub const MAX_TOO_BIG_PER_SECOND: u32 = 1_000_000;
/// Largest burst of ICMP too-big answers that can be configured.
pub const MAX_TOO_BIG_BURST: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    /// Maglev table size M per VIP: a prime, at least 100 x the largest
    /// backend count for even spread. Default 65537.
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// Connection-table entries (LRU). Default 1048576.
    #[serde(default = "default_conn_entries")]
    pub conn_entries: u32,
    /// Probation-table entries (LRU): flows seen once wait there for their
    /// second packet before they may enter the connection table. Unset:
    /// an eighth of `conn_entries` (see `probation_entries()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_entries: Option<u32>,
    /// Most VIPs. Default 64.
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    /// Most backends over all VIPs. Default 4096.
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            ring_size: default_ring_size(),
            conn_entries: default_conn_entries(),
            probation_entries: None,
            max_vips: default_max_vips(),
            max_backends: default_max_backends(),
        }
    }
}

impl Config {
    /// Promotions into the connection table per second, all CPUs together:
    /// as configured, else `tables.conn_entries` over
    /// `DEFAULT_CONN_TURNOVER_SECS` (at least one).
    pub fn promotions_per_second(&self) -> u32 {
        self.conn_promotions
            .per_second
            .unwrap_or((self.tables.conn_entries / DEFAULT_CONN_TURNOVER_SECS).max(1))
    }
}

impl Tables {
    /// The probation table's size: as configured, else an eighth of the
    /// connection table's. Big enough that a real flow's second packet
    /// (the request after the handshake's ACK) finds its entry while a
    /// flood of one-packet flows passes through; small beside `CONNS`.
    pub fn probation_entries(&self) -> u32 {
        self.probation_entries
            .unwrap_or(lb_common::maps::probation_entries_for(self.conn_entries))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Path of the Unix control socket. Default `/run/lbd/lbd.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); without it the socket
    /// is root's only (mode 0600).
    #[serde(default)]
    pub group: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            group: None,
        }
    }
}

/// Where lbd writes the routes that announce VIPs (`announce_routes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// The kernel routing table of lbd's routes: one that no `ip rule`
    /// looks up, so that they never change how this host routes (checked
    /// when lbd starts and when the table changes). At most 252 for FRR's
    /// `ip import-table`. Default 200.
    #[serde(default = "default_announce_table")]
    pub table: u32,
    /// The route protocol number of lbd's routes: lbd lists, adds and
    /// removes only routes of this number in `table`, and BIRD's import
    /// filter selects them by it (`krt_source`). Default 201.
    #[serde(default = "default_announce_protocol")]
    pub protocol: u8,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            table: default_announce_table(),
            protocol: default_announce_protocol(),
        }
    }
}

impl fmt::Display for Announce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {} protocol {}", self.table, self.protocol)
    }
}

/// The BGP speaker lbd watches while it announces VIPs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speaker {
    /// BIRD's control socket, asked once a second for BGP sessions while
    /// `announce` is set. `null` or `""` (TOML has no null): not watched
    /// (FRR, GoBGP). Default `/run/bird/bird.ctl`, where Debian's bird2
    /// puts it.
    #[serde(
        default = "default_bird_socket",
        deserialize_with = "empty_path_is_none"
    )]
    pub bird_socket: Option<PathBuf>,
}

impl Default for Speaker {
    fn default() -> Self {
        Self {
            bird_socket: default_bird_socket(),
        }
    }
}

impl Speaker {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A path that may be unset: `null`, or `""`, which TOML must use.
fn empty_path_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = Option::<PathBuf>::deserialize(d)?;
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

fn default_bird_socket() -> Option<PathBuf> {
    Some(PathBuf::from("/run/bird/bird.ctl"))
}

/// Why lbd's routes cannot go in kernel table `table`, if they cannot:
/// the tables every host routes by.
fn reserved_table(table: u32) -> Option<&'static str> {
    match table {
        0 => Some("is no table (the kernel reads 0 as unspecified)"),
        253 => Some("is the kernel's default table, which the host routes by"),
        254 => Some("is the kernel's main table, which the host routes by"),
        255 => Some("is the kernel's local table, which the host routes by"),
        _ => None,
    }
}

/// Why lbd's routes cannot carry route protocol `protocol`, if they
/// cannot: the kernel's own numbers, and those of routing programs that
/// take the routes of their number for their own (and remove them).
fn reserved_protocol(protocol: u8) -> Option<&'static str> {
    match protocol {
        0..=4 => Some("is the kernel's own (unspec, redirect, kernel, boot, static)"),
        12 => Some("is BIRD's: BIRD takes routes of that number for its own and removes them"),
        8..=11 | 13..=16 | 18 | 42 | 99 => {
            Some("is another routing program's (see /etc/iproute2/rt_protos)")
        }
        186..=198 => Some("is FRR's: its zebra takes routes of that number for its own"),
        _ => None,
    }
}

/// A virtual service.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// Optional label, shown by `lbctl vip list` and `lbctl config dump`.
    /// Metrics do not use it: they name a VIP by address, port and protocol.
    #[serde(default)]
    pub name: Option<String>,
    /// The service address clients connect to.
    pub address: IpAddr,
    /// The service port; 0 serves every port of the address (port-less).
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// `ipip` (IP-in-IP tunnel to the backend, which runs the decap
    /// program; default) or `l2_dsr` (backend on the same link, only the
    /// destination MAC changes).
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Send all connections of a client address to the same backend.
    #[serde(default)]
    pub affinity: bool,
    /// How backends are checked; default: not at all.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Seconds a draining backend keeps its established flows before it is
    /// cut off. Default 300.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_s: u64,
    /// Seconds a ring slot's previous owner gets a second hop after a
    /// rebuild moved the slot (`second_chance`); 0: never for this VIP.
    /// Unset: `drain_timeout_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_chance_s: Option<u64>,
    /// How new flows are shared among the backends: by configured weight
    /// (`static`, default) or by weights a controller adjusts to their load.
    #[serde(default)]
    pub balancing: Balancing,
    /// The backends.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

impl Vip {
    /// How long a ring slot's previous owner gets a second hop, with
    /// second chance on: as set, else `drain_timeout_s`; zero for `l2_dsr`,
    /// which has no tunnel to carry a hop.
    pub fn second_chance_window(&self) -> std::time::Duration {
        if self.forwarding == Forwarding::L2Dsr {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs(self.second_chance_s.unwrap_or(self.drain_timeout_s))
    }

    /// Whether backends must also pass the probe through the tunnel
    /// (`health_check.through_tunnel`): as set, else on for every `ipip`
    /// VIP that has a check. `l2_dsr` has no tunnel, so never there.
    pub fn checks_through_tunnel(&self) -> bool {
        let applies =
            self.forwarding == Forwarding::Ipip && self.health_check.kind != CheckKind::None;
        applies && self.health_check.through_tunnel.unwrap_or(true)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The one spelling of each protocol in configs, output and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The protocol of IP protocol number `number`, if lb balances it.
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a VIP shares new flows among its backends (`vips[].balancing`).
/// In `load` mode a controller in lbd scales each backend's configured
/// weight by its headroom, smoothed and bounded so that the ring moves
/// slowly (`weight_controller`). Established flows never move: only the
/// share of new flows changes.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Balancing {
    /// `static` (default) or `load`.
    #[serde(default)]
    pub mode: BalancingMode,
    /// Where a backend's load comes from in `load` mode: `flows` (default),
    /// its active flows in this node's connection table; `prometheus`,
    /// gauges scraped from the backend (`prometheus`); `header`, a header
    /// of the HTTP health check's response (`header`).
    #[serde(default)]
    pub source: LoadSource,
    /// The utilization the controller keeps backends under, 0.1 to 0.95.
    /// Default 0.8.
    #[serde(default = "default_target_utilization")]
    pub target_utilization: f64,
    /// Active flows per unit of configured weight at which a backend is
    /// fully used. Unset: utilization is relative, a backend's active
    /// flows per weight against the VIP's mean (at the mean it is at
    /// `target_utilization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_per_weight: Option<u64>,
    /// Seconds between two adjustments, 1 to 60. Default 2.
    #[serde(default = "default_balancing_interval")]
    pub interval_s: u64,
    /// Weight of the newest measurement in the moving average (EWMA),
    /// above 0 up to 1. Default 0.5.
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Most an effective weight changes per adjustment, as a share of the
    /// configured weight, above 0 up to 1. Default 0.2.
    #[serde(default = "default_max_step")]
    pub max_step: f64,
    /// The least effective weight, as a share of the configured weight,
    /// 0.01 to 1. Default 0.1.
    #[serde(default = "default_min_weight")]
    pub min_weight: f64,
    /// Most of the ring that may change hands per adjustment, above 0 up
    /// to 1. Default 0.05.
    #[serde(default = "default_ring_budget")]
    pub ring_budget: f64,
    /// Seconds over which a new or returning backend's weight rises from
    /// nothing to its full share, 0 to 3600. Default 30.
    #[serde(default = "default_slow_start")]
    pub slow_start_s: u64,
    /// Adjustments without a load report after which a backend falls back
    /// to its configured weight, 1 to 100. Default 3.
    #[serde(default = "default_stale_after")]
    pub stale_after: u32,
    /// `source: prometheus`: what to scrape and how to turn it into load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusLoad>,
    /// `source: header`: which header of the HTTP health check's response
    /// carries the report. Unset: the defaults of [`HeaderLoad`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderLoad>,
    /// A reported value over which a backend takes no new flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<HardLimit>,
}

/// Load scraped from each backend's Prometheus endpoint
/// (`vips[].balancing.prometheus`), once per interval. A backend's load is
/// the sum of each selected gauge times its coefficient; its utilization
/// is that load over `capacity`, the load at which a backend is full
/// whatever its weight (the weight sets its share, the report how busy it
/// is).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusLoad {
    /// Port to scrape. Default the health check's port, else the VIP's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to scrape. Default `/metrics`.
    #[serde(default = "default_metrics_path")]
    pub path: String,
    /// Gauge selector (`name`, or `name{label="value",...}`, summed over
    /// the series that match) to its coefficient in the load.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The load at which a backend is fully used; 1 for a gauge that is a
    /// utilization already (0 to 1). Default 1.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
    /// Milliseconds a scrape may take, at least 10 and under the interval.
    /// Default 500.
    #[serde(default = "default_scrape_timeout")]
    pub timeout_ms: u64,
}

/// Load read from a header of the HTTP health check's response
/// (`vips[].balancing.header`), ORCA's text form:
/// `TEXT utilization=0.5, rps_fractional=10, named_metrics.waiting=3`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderLoad {
    /// The header. Default `endpoint-load-metrics`.
    #[serde(default = "default_report_header")]
    pub name: String,
    /// The key whose value is the load. Default `utilization`.
    #[serde(default = "default_report_key")]
    pub key: String,
    /// The load at which a backend is fully used. Default 1.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
}

impl Default for HeaderLoad {
    fn default() -> Self {
        Self {
            name: default_report_header(),
            key: default_report_key(),
            capacity: default_capacity(),
        }
    }
}

/// A reported value over which a backend takes no new flows
/// (`vips[].balancing.hard_limit`): out of the ring, its established flows
/// going on, until the value falls under `resume_below`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HardLimit {
    /// A gauge selector (source `prometheus`) or a key of the report
    /// (source `header`).
    pub metric: String,
    /// The backend is over the limit while the value is above this.
    pub above: f64,
    /// Over the limit, it takes new flows again once the value is under
    /// this, at most `above`. Unset: 80% of `above`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_below: Option<f64>,
}

impl HardLimit {
    /// The value under which a backend over the limit comes back.
    pub fn resume_level(&self) -> f64 {
        self.resume_below.unwrap_or(self.above * 0.8)
    }
}

impl Balancing {
    /// The header of the HTTP check's response to read reports from, for
    /// a `load`-mode VIP with `source: header`.
    pub fn report_header(&self) -> Option<String> {
        (self.mode == BalancingMode::Load && self.source == LoadSource::Header)
            .then(|| self.header.clone().unwrap_or_default().name)
    }
}

impl Default for Balancing {
    fn default() -> Self {
        Self {
            mode: BalancingMode::default(),
            source: LoadSource::default(),
            target_utilization: default_target_utilization(),
            flows_per_weight: None,
            interval_s: default_balancing_interval(),
            smoothing: default_smoothing(),
            max_step: default_max_step(),
            min_weight: default_min_weight(),
            ring_budget: default_ring_budget(),
            slow_start_s: default_slow_start(),
            stale_after: default_stale_after(),
            prometheus: None,
            header: None,
            hard_limit: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancingMode {
    #[default]
    Static,
    Load,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadSource {
    /// Active flows in this node's connection table.
    #[default]
    Flows,
    /// Gauges scraped from each backend (`prometheus`).
    Prometheus,
    /// A header of the HTTP health check's response (`header`).
    Header,
}

impl LoadSource {
    pub fn name(self) -> &'static str {
        match self {
            LoadSource::Flows => "flows",
            LoadSource::Prometheus => "prometheus",
            LoadSource::Header => "header",
        }
    }
}

fn default_target_utilization() -> f64 {
    0.8
}
fn default_balancing_interval() -> u64 {
    2
}
fn default_smoothing() -> f64 {
    0.5
}
fn default_max_step() -> f64 {
    0.2
}
fn default_min_weight() -> f64 {
    0.1
}
fn default_ring_budget() -> f64 {
    0.05
}
fn default_slow_start() -> u64 {
    30
}
fn default_stale_after() -> u32 {
    3
}
fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_capacity() -> f64 {
    1.0
}
fn default_scrape_timeout() -> u64 {
    500
}
fn default_report_header() -> String {
    "endpoint-load-metrics".into()
}
fn default_report_key() -> String {
    "utilization".into()
}

/// The problems of `vips[].balancing` of `vip`, reported at `at`.
fn check_balancing(vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    let b = &vip.balancing;
    check_balancing_ranges(b, at, bad);
    check_load_source(vip, at, bad);
    if let Some(p) = &b.prometheus {
        check_prometheus(p, vip, &format!("{at}.prometheus"), bad);
    }
    if let Some(h) = &b.header {
        check_header(h, &format!("{at}.header"), bad);
    }
    if let Some(limit) = &b.hard_limit {
        check_hard_limit(limit, b, &format!("{at}.hard_limit"), bad);
    }
}

/// Which load source `vip` uses, and that the blocks it sets fit it.
fn check_load_source(vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    let b = &vip.balancing;
    let source = b.source.name();
    if b.mode == BalancingMode::Static {
        if b.source != LoadSource::Flows {
            bad(
                format!("{at}.source"),
                format!(
                    "{source} applies to mode load only: mode static balances by the configured weights"
                ),
            );
        }
        if b.hard_limit.is_some() {
            bad(
                format!("{at}.hard_limit"),
                "applies to mode load only: mode static balances by the configured weights".into(),
            );
        }
    }
    let misplaced = [
        (
            "prometheus",
            b.prometheus.is_some() && b.source != LoadSource::Prometheus,
        ),
        (
            "header",
            b.header.is_some() && b.source != LoadSource::Header,
        ),
        (
            "flows_per_weight",
            b.flows_per_weight.is_some() && b.source != LoadSource::Flows,
        ),
    ];
    for (field, _) in misplaced.into_iter().filter(|(_, wrong)| *wrong) {
        bad(
            format!("{at}.{field}"),
            format!("does not apply to source {source}"),
        );
    }
    match b.source {
        LoadSource::Prometheus if b.prometheus.is_none() => bad(
            format!("{at}.prometheus"),
            "source prometheus needs the gauges to scrape: give prometheus.metrics".into(),
        ),
        LoadSource::Header if vip.health_check.kind != CheckKind::Http => bad(
            format!("{at}.source"),
            format!(
                "header is read from the HTTP health check's response: needs health_check.type http, not {}",
                format!("{:?}", vip.health_check.kind).to_lowercase()
            ),
        ),
        LoadSource::Flows if b.hard_limit.is_some() => bad(
            format!("{at}.hard_limit"),
            "needs a value the backends report: source prometheus or header".into(),
        ),
        _ => {}
    }
}

/// `vips[].balancing.prometheus` of `vip`.
fn check_prometheus(p: &PrometheusLoad, vip: &Vip, at: &str, bad: &mut impl FnMut(String, String)) {
    if p.metrics.is_empty() {
        bad(
            format!("{at}.metrics"),
            "give at least one gauge to scrape".into(),
        );
    }
    for (selector, coefficient) in &p.metrics {
        let field = format!("{at}.metrics[{selector:?}]");
        if let Err(e) = crate::prometheus_text::Selector::parse(selector) {
            bad(field.clone(), e);
        }
        if !coefficient.is_finite() {
            bad(field, format!("{coefficient} is not a finite number"));
        }
    }
    check_capacity(p.capacity, at, bad);
    let most = vip.balancing.interval_s.saturating_mul(1000);
    if p.timeout_ms < 10 || p.timeout_ms > most {
        bad(
            format!("{at}.timeout_ms"),
            format!(
                "{} must be at least 10 and at most the interval ({most})",
                p.timeout_ms
            ),
        );
    }
    if !p.path.starts_with('/') || !is_request_token(&p.path) {
        bad(
            format!("{at}.path"),
            format!(
                "{:?} must start with / and contain no whitespace or control character",
                p.path
            ),
        );
    }
    match p.port {
        Some(0) => bad(
            format!("{at}.port"),
            "0 cannot be scraped: give the port the backends serve metrics on".into(),
        ),
        None if vip.health_check.port.is_none() && vip.port == 0 => bad(
            format!("{at}.port"),
            "required for a port-less VIP (port 0) without a health_check.port".into(),
        ),
        _ => {}
    }
}

/// `vips[].balancing.header`.
fn check_header(h: &HeaderLoad, at: &str, bad: &mut impl FnMut(String, String)) {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    if !token(&h.name) {
        bad(
            format!("{at}.name"),
            format!("{:?} is not an HTTP header name", h.name),
        );
    }
    if !crate::load_header::is_key(&h.key) {
        bad(
            format!("{at}.key"),
            format!(
                "{:?} is not a report key (like utilization or named_metrics.waiting)",
                h.key
            ),
        );
    }
    check_capacity(h.capacity, at, bad);
}

fn check_capacity(capacity: f64, at: &str, bad: &mut impl FnMut(String, String)) {
    if !(capacity.is_finite() && capacity > 0.0) {
        bad(
            format!("{at}.capacity"),
            format!("{capacity} must be a number above 0"),
        );
    }
}

/// `vips[].balancing.hard_limit` of a VIP balanced by `b`.
fn check_hard_limit(
    limit: &HardLimit,
    b: &Balancing,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    let metric = match b.source {
        LoadSource::Prometheus => crate::prometheus_text::Selector::parse(&limit.metric).err(),
        LoadSource::Header => (!crate::load_header::is_key(&limit.metric)).then(|| {
            format!(
                "{:?} is not a report key (like named_metrics.waiting)",
                limit.metric
            )
        }),
        LoadSource::Flows => None,
    };
    if let Some(why) = metric {
        bad(format!("{at}.metric"), why);
    }
    if !limit.above.is_finite() {
        bad(
            format!("{at}.above"),
            format!("{} is not a finite number", limit.above),
        );
    }
    if let Some(r) = limit.resume_below
        && !(r.is_finite() && r <= limit.above)
    {
        bad(
            format!("{at}.resume_below"),
            format!("{r} must be a number at most above ({})", limit.above),
        );
    }
}

/// The ranges of `vips[].balancing`'s numbers.
fn check_balancing_ranges(b: &Balancing, at: &str, bad: &mut impl FnMut(String, String)) {
    let share = |name: &str, x: f64, low: f64, low_open: bool, high: f64| {
        let below = if low_open { x <= low } else { x < low };
        (below || x > high || x.is_nan()).then(|| {
            let why = if low_open {
                format!("{x} must be above {low} and at most {high}")
            } else {
                format!("{x} is out of range {low}..={high}")
            };
            (format!("{at}.{name}"), why)
        })
    };
    let integer = |name: &str, x: u64, low: u64, high: u64| {
        (x < low || x > high).then(|| {
            (
                format!("{at}.{name}"),
                format!("{x} is out of range {low}..={high}"),
            )
        })
    };
    let problems = [
        share("target_utilization", b.target_utilization, 0.1, false, 0.95),
        share("smoothing", b.smoothing, 0.0, true, 1.0),
        share("max_step", b.max_step, 0.0, true, 1.0),
        share("min_weight", b.min_weight, 0.01, false, 1.0),
        share("ring_budget", b.ring_budget, 0.0, true, 1.0),
        integer("interval_s", b.interval_s, 1, 60),
        integer("slow_start_s", b.slow_start_s, 0, 3600),
        integer("stale_after", u64::from(b.stale_after), 1, 100),
        b.flows_per_weight
            .and_then(|f| integer("flows_per_weight", f, 1, u64::MAX)),
    ];
    for (field, why) in problems.into_iter().flatten() {
        bad(field, why);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    #[default]
    Ipip,
    L2Dsr,
}

/// A backend of a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend's address (tunnel destination, health-check target).
    pub address: IpAddr,
    /// Relative share of new flows, 1..=1000. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `active` (default), `drain` (no new flows; established ones go on
    /// until they end or the VIP's drain timeout) or `disabled` (no flows).
    #[serde(default)]
    pub state: AdminState,
    /// The backend's MAC when it is on the LB's link: overrides the next
    /// hop (required for `l2_dsr` when the kernel cannot resolve it).
    #[serde(default)]
    pub mac: Option<Mac>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    #[default]
    Active,
    Drain,
    Disabled,
}

/// Health checking of a VIP's backends. `rise` and `fall` have HAProxy's
/// meaning: a backend goes up after `rise` consecutive successes and down
/// after `fall` consecutive failures.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `none` (default: backends count as up), `tcp` (connect), `http`
    /// (GET, 2xx/3xx is up) or `udp` (send `payload`, expect a reply).
    #[serde(rename = "type", default)]
    pub kind: CheckKind,
    /// Port to check; default the VIP's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP: request path. Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP: Host header. Default the backend address.
    #[serde(default)]
    pub host: Option<String>,
    /// UDP: datagram to send.
    #[serde(default)]
    pub payload: Option<String>,
    /// UDP: the reply must start with this; default any reply (then any
    /// datagram from the VIP to a tunnel probe's port passes it).
    #[serde(default)]
    pub expect: Option<String>,
    /// Milliseconds between checks. Default 1000.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Milliseconds before a check counts as failed. Default 500.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Successes in a row to come up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row to go down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Also probe the VIP through the tunnel, the way client packets reach
    /// the backend, so a backend whose decapsulation is broken goes down.
    /// Unset: on for `ipip` VIPs with a check (see
    /// [`Vip::checks_through_tunnel`]); not allowed for `l2_dsr`.
    #[serde(default)]
    pub through_tunnel: Option<bool>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::None,
            port: None,
            path: None,
            host: None,
            payload: None,
            expect: None,
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            through_tunnel: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    None,
    Tcp,
    Http,
    Udp,
}

/// A MAC address written `02:00:5e:00:53:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            format!("{s:?} is not a MAC address (expected six hex bytes like 02:00:5e:00:53:01)")
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn yes() -> bool {
    true
}
fn default_mtu() -> u16 {
    1500
}
fn default_too_big_per_second() -> u32 {
    100
}
fn default_too_big_burst() -> u32 {
    10
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lbd")
}
fn default_state_file() -> PathBuf {
    PathBuf::from("/run/lbd/state.json")
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/lbd/lbd.sock")
}
fn default_announce_table() -> u32 {
    200
}
fn default_announce_protocol() -> u8 {
    201
}
fn default_ring_size() -> u32 {
    lb_common::maps::DEFAULT_RING_SIZE
}
fn default_conn_entries() -> u32 {
    lb_common::maps::DEFAULT_CONN_ENTRIES
}
fn default_max_vips() -> u32 {
    lb_common::maps::DEFAULT_MAX_VIPS
}
fn default_max_backends() -> u32 {
    lb_common::maps::DEFAULT_MAX_BACKENDS
}
fn default_gue_port() -> u16 {
    lb_common::gue::DEFAULT_GUE_PORT
}
fn default_drain_timeout() -> u64 {
    300
}
fn default_weight() -> u32 {
    1
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    500
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// One problem in a configuration: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `vips[2].backends[0].address`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// A configuration was rejected; nothing of it was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(Problem::to_string).collect();
        write!(f, "{}", lines.join("; "))
    }
}

impl ConfigError {
    pub(crate) fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// Per-host settings given on lbd's command line, which win over the file:
/// one configuration (a Kubernetes ConfigMap, say) serves many hosts, but
/// each host tunnels from its own address. Saved with the runtime state,
/// so a restart without one takes the file's value back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOverrides {
    pub tunnel_source_v4: Option<Ipv4Addr>,
    pub tunnel_source_v6: Option<Ipv6Addr>,
}

impl NodeOverrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(a) = self.tunnel_source_v4 {
            config.tunnel_source.ipv4 = Some(a);
        }
        if let Some(a) = self.tunnel_source_v6 {
            config.tunnel_source.ipv6 = Some(a);
        }
    }

    /// Set every field these overrides set in `config` back to its value
    /// in `from` (a configuration without them, or with others).
    pub fn restore(&self, config: &mut Config, from: &Config) {
        if self.tunnel_source_v4.is_some() {
            config.tunnel_source.ipv4 = from.tunnel_source.ipv4;
        }
        if self.tunnel_source_v6.is_some() {
            config.tunnel_source.ipv6 = from.tunnel_source.ipv6;
        }
    }
}

impl Config {
    /// Parse and validate JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_for(text, &NodeOverrides::default())
    }

    /// Parse JSON text, apply this host's overrides, then validate.
    pub fn from_json_for(text: &str, node: &NodeOverrides) -> Result<Self, ConfigError> {
        Self::from_text_for(text, ConfigFormat::Json, node)
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_text_for(text, ConfigFormat::Toml, &NodeOverrides::default())
    }

    /// Parse text written in `format`, apply this host's overrides, then
    /// validate: the one way in for a configuration, whatever its format.
    pub fn from_text_for(
        text: &str,
        format: ConfigFormat,
        node: &NodeOverrides,
    ) -> Result<Self, ConfigError> {
        let mut config = format.parse(text)?;
        node.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a TOML file (`config_format::to_toml`).
    pub fn to_toml(&self) -> Result<String, String> {
        config_format::to_toml(self)
    }

    /// Read, parse and validate a file. The messages do not repeat the
    /// file's name: the caller says which file it was.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::load_for(path, &NodeOverrides::default())
    }

    /// `load` with this host's overrides applied before validation. The
    /// file's extension says whether it is JSON or TOML (checked once the
    /// file is read: a missing file is the first thing to hear about).
    pub fn load_for(path: &std::path::Path, node: &NodeOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("the file cannot be read: {e}")))?;
        Self::from_text_for(&text, ConfigFormat::of_path(path)?, node)
    }

    /// Everything serde cannot check: ranges, uniqueness, consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |path: String, reason: String| problems.push(Problem { path, reason });

        if self.interfaces.is_empty() {
            bad(
                "interfaces".into(),
                "at least one interface is needed".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ']) {
                bad(
                    format!("interfaces[{i}].name"),
                    format!("{:?} is not an interface name", iface.name),
                );
            }
            if !names.insert(&iface.name) {
                bad(
                    format!("interfaces[{i}].name"),
                    format!("{:?} is listed twice", iface.name),
                );
            }
        }
        if !self.next_hop.fib && self.next_hop.gateway_mac.is_none() {
            bad(
                "next_hop.gateway_mac".into(),
                "required when next_hop.fib is false".into(),
            );
        }
        if !(576..=9216).contains(&self.mtu) {
            bad(
                "mtu".into(),
                format!("{} is out of range 576..=9216", self.mtu),
            );
        }
        let answers = &self.too_big_answers;
        if answers.per_second > MAX_TOO_BIG_PER_SECOND {
            bad(
                "too_big_answers.per_second".into(),
                format!(
                    "{} is out of range 0..={MAX_TOO_BIG_PER_SECOND}",
                    answers.per_second
                ),
            );
        }
        if !(1..=MAX_TOO_BIG_BURST).contains(&answers.burst) {
            bad(
                "too_big_answers.burst".into(),
                format!("{} is out of range 1..={MAX_TOO_BIG_BURST}", answers.burst),
            );
        }
        if self.second_chance.gue_port == 0 {
            bad(
                "second_chance.gue_port".into(),
                "0 cannot be a destination port".into(),
            );
        }
        if let Some(rate) = self.conn_promotions.per_second
            && !(1..=MAX_PROMOTIONS_PER_SECOND).contains(&rate)
        {
            bad(
                "conn_promotions.per_second".into(),
                format!("{rate} is out of range 1..={MAX_PROMOTIONS_PER_SECOND}"),
            );
        }
        let t = &self.tables;
        if t.ring_size < 7 || !is_prime(t.ring_size) {
            bad(
                "tables.ring_size".into(),
                format!("{} is not a prime of at least 7", t.ring_size),
            );
        }
        if (t.max_vips as u64) * 2 * (t.ring_size as u64) > u32::MAX as u64 {
            bad(
                "tables.ring_size".into(),
                format!(
                    "{} x 2 x {} VIPs exceeds the ring map's size limit",
                    t.ring_size, t.max_vips
                ),
            );
        }
        for (field, value) in [
            ("conn_entries", t.conn_entries),
            ("probation_entries", t.probation_entries()),
            ("max_vips", t.max_vips),
            ("max_backends", t.max_backends),
        ] {
            if value == 0 {
                bad(format!("tables.{field}"), "must be at least 1".into());
            }
        }
        if t.conn_entries > 0 && t.probation_entries() > t.conn_entries {
            bad(
                "tables.probation_entries".into(),
                format!(
                    "{} exceeds tables.conn_entries = {}: the probation table is a small waiting room in front of the connection table",
                    t.probation_entries(),
                    t.conn_entries
                ),
            );
        }
        if let Some(announce) = &self.announce {
            if let Some(why) = reserved_table(announce.table) {
                bad(
                    "announce.table".into(),
                    format!(
                        "{} {why}: give lbd a table of its own, which no ip rule looks up",
                        announce.table
                    ),
                );
            }
            if let Some(why) = reserved_protocol(announce.protocol) {
                bad(
                    "announce.protocol".into(),
                    format!(
                        "{} {why}: give lbd a number no other program writes routes with",
                        announce.protocol
                    ),
                );
            }
        }
        if self.vips.len() > t.max_vips as usize {
            bad(
                "vips".into(),
                format!(
                    "{} VIPs exceed tables.max_vips = {}",
                    self.vips.len(),
                    t.max_vips
                ),
            );
        }
        let mut vip_keys = HashSet::new();
        let mut backend_count = 0usize;
        for (v, vip) in self.vips.iter().enumerate() {
            let at = format!("vips[{v}]");
            if !usable(&vip.address) {
                bad(
                    format!("{at}.address"),
                    format!("{} cannot be a service address", vip.address),
                );
            }
            if !vip_keys.insert((vip.address, vip.port, vip.protocol)) {
                bad(
                    at.clone(),
                    format!(
                        "duplicate VIP {}:{}/{:?}",
                        vip.address, vip.port, vip.protocol
                    )
                    .to_lowercase(),
                );
            }
            if vip.drain_timeout_s > 86_400 {
                bad(
                    format!("{at}.drain_timeout_s"),
                    format!("{} is more than a day", vip.drain_timeout_s),
                );
            }
            match vip.second_chance_s {
                Some(s) if s > 86_400 => bad(
                    format!("{at}.second_chance_s"),
                    format!("{s} is more than a day"),
                ),
                Some(_) if vip.forwarding == Forwarding::L2Dsr => bad(
                    format!("{at}.second_chance_s"),
                    "does not apply to l2_dsr forwarding: there is no tunnel to carry a second hop"
                        .into(),
                ),
                _ => {}
            }
            check_balancing(vip, &format!("{at}.balancing"), &mut bad);
            check_health(
                &vip.health_check,
                vip.port,
                &format!("{at}.health_check"),
                &mut bad,
            );
            check_through_tunnel(vip, &self.tunnel_source, &at, &mut bad);
            let mut addrs = HashSet::new();
            for (b, backend) in vip.backends.iter().enumerate() {
                let bat = format!("{at}.backends[{b}]");
                backend_count += 1;
                if !usable(&backend.address) {
                    bad(
                        format!("{bat}.address"),
                        format!("{} cannot be a backend address", backend.address),
                    );
                }
                if !addrs.insert(backend.address) {
                    bad(
                        format!("{bat}.address"),
                        format!("{} is listed twice in this VIP", backend.address),
                    );
                }
                if !(1..=MAX_WEIGHT).contains(&backend.weight) {
                    bad(
                        format!("{bat}.weight"),
                        format!("{} is out of range 1..={MAX_WEIGHT}", backend.weight),
                    );
                }
                // The gateway is a router, and L2 DSR keeps the VIP as the
                // destination: the router would send the frame back here.
                if vip.forwarding == Forwarding::L2Dsr
                    && !self.next_hop.fib
                    && backend.mac.is_none()
                {
                    bad(
                        format!("{bat}.mac"),
                        "required for an l2_dsr VIP when next_hop.fib is false: next_hop.gateway_mac is a router, which would send the frame back to the VIP".into(),
                    );
                }
                if vip.forwarding == Forwarding::Ipip {
                    match backend.address {
                        IpAddr::V4(_) if self.tunnel_source.ipv4.is_none() => bad(
                            format!("{bat}.address"),
                            "an IPv4 tunnel needs tunnel_source.ipv4".into(),
                        ),
                        IpAddr::V6(_) if self.tunnel_source.ipv6.is_none() => bad(
                            format!("{bat}.address"),
                            "an IPv6 tunnel needs tunnel_source.ipv6".into(),
                        ),
                        _ => {}
                    }
                }
            }
            // IPv6 guarantees every path 1280 bytes, and clients discard an
            // ICMPv6 too-big that reports less: a tunnel with less room
            // would black-hole full-size IPv6 packets however they shrink.
            // A second hop travels in GUE, whose header is larger.
            let gue = self.second_chance.enabled && !vip.second_chance_window().is_zero();
            let overhead = vip
                .backends
                .iter()
                .map(|b| {
                    let family = if b.address.is_ipv4() {
                        lb_common::flow::FAMILY_V4
                    } else {
                        lb_common::flow::FAMILY_V6
                    };
                    if gue {
                        lb_common::gue::overhead(family) as u32
                    } else {
                        lb_common::gue::ip_hdr_len(family) as u32
                    }
                })
                .max();
            if let (IpAddr::V6(_), Forwarding::Ipip, Some(overhead)) =
                (vip.address, vip.forwarding, overhead)
                && (self.mtu as u32) < IPV6_MIN_MTU + overhead
            {
                let header = if gue {
                    "GUE second-hop header"
                } else {
                    "header"
                };
                bad(
                    "mtu".into(),
                    format!(
                        "{} is too small for the IPv6 VIP {at}: IPv6 needs {IPV6_MIN_MTU} bytes inside the tunnel, with its {overhead}-byte {header} at least {}",
                        self.mtu,
                        IPV6_MIN_MTU + overhead
                    ),
                );
            }
            if vip.backends.len() as u64 * 10 > t.ring_size as u64 {
                bad(
                    format!("{at}.backends"),
                    format!(
                        "{} backends are too many for tables.ring_size {}",
                        vip.backends.len(),
                        t.ring_size
                    ),
                );
            }
        }
        if backend_count > t.max_backends as usize {
            bad(
                "vips".into(),
                format!(
                    "{backend_count} backends in all exceed tables.max_backends = {}",
                    t.max_backends
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The health check of a VIP whose port is `vip_port`.
///
/// Every field is checked whatever the check's `type`, `none` included: a
/// field the chosen type does not use is an error, and so are out-of-range
/// values. With `none` this rejects a `path`, `port`, ... that would
/// otherwise be silently ignored, which is what an operator wants to hear:
/// `none` is the default type, so such a field nearly always means a
/// forgotten or misspelt `type`, and the VIP would run without checks. It
/// also keeps a configuration valid when its `type` is switched later.
fn check_health(h: &HealthCheck, vip_port: u16, at: &str, bad: &mut impl FnMut(String, String)) {
    if !(100..=3_600_000).contains(&h.interval_ms) {
        bad(
            format!("{at}.interval_ms"),
            format!("{} is out of range 100..=3600000", h.interval_ms),
        );
    }
    if h.timeout_ms < 10 || h.timeout_ms > h.interval_ms {
        bad(
            format!("{at}.timeout_ms"),
            format!(
                "{} must be at least 10 and at most interval_ms ({})",
                h.timeout_ms, h.interval_ms
            ),
        );
    }
    for (field, value) in [("rise", h.rise), ("fall", h.fall)] {
        if !(1..=100).contains(&value) {
            bad(
                format!("{at}.{field}"),
                format!("{value} is out of range 1..=100"),
            );
        }
    }
    let probes = h.kind != CheckKind::None;
    let misplaced = [
        ("port", h.port.is_some() && !probes),
        ("through_tunnel", h.through_tunnel.is_some() && !probes),
        ("path", h.path.is_some() && h.kind != CheckKind::Http),
        ("host", h.host.is_some() && h.kind != CheckKind::Http),
        ("payload", h.payload.is_some() && h.kind != CheckKind::Udp),
        ("expect", h.expect.is_some() && h.kind != CheckKind::Udp),
    ];
    for (field, _) in misplaced.into_iter().filter(|(_, wrong)| *wrong) {
        bad(
            format!("{at}.{field}"),
            format!("does not apply to a {:?} check", h.kind).to_lowercase(),
        );
    }
    // Port 0 cannot be connected to: every probe would fail.
    match h.port {
        Some(0) if probes => bad(
            format!("{at}.port"),
            "0 cannot be probed: give the port the backends serve".into(),
        ),
        None if probes && vip_port == 0 => bad(
            format!("{at}.port"),
            "required for a port-less VIP (port 0): the check would probe port 0".into(),
        ),
        _ => {}
    }
    // Both go into the request verbatim; the checker refuses to send a
    // request line or header that such characters would break.
    if let Some(path) = &h.path {
        if !path.starts_with('/') {
            bad(format!("{at}.path"), format!("{path:?} must start with /"));
        }
        if !path.is_empty() && !is_request_token(path) {
            bad(
                format!("{at}.path"),
                format!("{path:?} contains whitespace or a control character"),
            );
        }
    }
    if let Some(host) = &h.host {
        if host.is_empty() {
            bad(format!("{at}.host"), "must not be empty".into());
        } else if !is_request_token(host) {
            bad(
                format!("{at}.host"),
                format!("{host:?} contains whitespace or a control character"),
            );
        }
    }
    if h.kind == CheckKind::Udp && h.payload.as_deref().unwrap_or("").is_empty() {
        bad(
            format!("{at}.payload"),
            "a udp check needs a payload to send".into(),
        );
    }
}

/// `health_check.through_tunnel` of `vip` (at `at`): only where there is
/// a tunnel, and with a source for the probe's inner packet. That packet
/// is of the VIP's family and comes from the tunnel source of that family,
/// so a VIP of the other family than its backends needs both sources.
fn check_through_tunnel(
    vip: &Vip,
    sources: &TunnelSource,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    let field = format!("{at}.health_check.through_tunnel");
    if vip.forwarding == Forwarding::L2Dsr && vip.health_check.through_tunnel.is_some() {
        bad(
            field,
            "does not apply to l2_dsr forwarding: there is no tunnel to probe through".into(),
        );
        return;
    }
    if !vip.checks_through_tunnel() {
        return;
    }
    let missing = match vip.address {
        IpAddr::V4(_) if sources.ipv4.is_none() => Some(("IPv4", "tunnel_source.ipv4")),
        IpAddr::V6(_) if sources.ipv6.is_none() => Some(("IPv6", "tunnel_source.ipv6")),
        _ => None,
    };
    // Only backends are probed; one of the VIP's family already asks for
    // that source by its own rule.
    let other_family_only = !vip.backends.is_empty()
        && vip
            .backends
            .iter()
            .all(|b| b.address.is_ipv4() != vip.address.is_ipv4());
    if let Some((family, source)) = missing.filter(|_| other_family_only) {
        bad(
            field,
            format!(
                "the probe of an {family} VIP through the tunnel is sent from {source}: set it, or set through_tunnel to false"
            ),
        );
    }
}

/// Text that can go into an HTTP request line or header as it is: not
/// empty, no whitespace, no control character. The HTTP checker sends a
/// `path` or `host` only if it passes this.
pub fn is_request_token(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// An address that can be a service or backend: not unspecified, loopback,
/// multicast or broadcast.
fn usable(addr: &IpAddr) -> bool {
    let special = match addr {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || special)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2", "ipv6": "2001:db8::2"},
        "vips": [{
            "address": "198.51.100.10", "port": 80, "protocol": "tcp",
            "health_check": {"type": "http", "path": "/healthz", "interval_ms": 500, "timeout_ms": 200},
            "backends": [
                {"address": "198.51.100.101", "weight": 2},
                {"address": "2001:db8::101", "state": "drain", "mac": "02:00:5e:00:53:01"}
            ]
        }]
    }"#;

    fn problem(text: &str) -> String {
        Config::from_json(text)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_json(GOOD).unwrap();
        assert_eq!(c.interfaces[0].mode, AttachMode::Native);
        assert_eq!(c.tables.ring_size, 65537);
        assert!(c.next_hop.fib);
        assert_eq!(c.vips[0].backends[1].state, AdminState::Drain);
        assert_eq!(
            c.vips[0].backends[1].mac,
            Some(Mac([2, 0, 0x5e, 0, 0x53, 1]))
        );
        assert_eq!(c.vips[0].health_check.rise, 2);
        // Serialising and parsing again gives the same configuration.
        let again = Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_address_names_its_path() {
        let text = GOOD.replace("198.51.100.101", "10.0.0.300");
        assert_eq!(
            problem(&text),
            "vips[0].backends[0].address: invalid IP address syntax"
        );
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = GOOD.replace("\"weight\": 2", "\"wieght\": 2");
        let msg = problem(&text);
        assert!(
            msg.starts_with("vips[0].backends[0].wieght: unknown field `wieght`, expected one of"),
            "{msg}"
        );
    }

    #[test]
    fn weight_out_of_range() {
        let text = GOOD.replace("\"weight\": 2", "\"weight\": 0");
        assert_eq!(
            problem(&text),
            "vips[0].backends[0].weight: 0 is out of range 1..=1000"
        );
    }

    #[test]
    fn duplicate_vip() {
        let c = Config::from_json(GOOD).unwrap();
        let mut twice = c.clone();
        twice.vips.push(c.vips[0].clone());
        let msg = twice.validate().unwrap_err().to_string();
        assert_eq!(msg, "vips[1]: duplicate vip 198.51.100.10:80/tcp");
    }

    #[test]
    fn tunnel_needs_a_source_of_the_backend_family() {
        let text = GOOD.replace(r#", "ipv6": "2001:db8::2""#, "");
        assert_eq!(
            problem(&text),
            "vips[0].backends[1].address: an IPv6 tunnel needs tunnel_source.ipv6"
        );
    }

    #[test]
    fn ipv6_vip_needs_1280_bytes_inside_its_tunnel() {
        let v6 = GOOD.replace("198.51.100.10\"", "2001:db8::10\"");
        let with_mtu = |text: &str, mtu: u16| {
            let mut c: Config = serde_json::from_str(text).unwrap();
            c.mtu = mtu;
            c.validate()
        };
        // An IPv6 backend: 1280 + 40.
        assert!(with_mtu(&v6, 1320).is_ok());
        assert_eq!(
            with_mtu(&v6, 1319).unwrap_err().to_string(),
            "mtu: 1319 is too small for the IPv6 VIP vips[0]: IPv6 needs 1280 bytes inside the tunnel, with its 40-byte header at least 1320"
        );
        // IPv4 backends only: 1280 + 20.
        let v4_backends = v6.replace("2001:db8::101", "198.51.100.102");
        assert!(with_mtu(&v4_backends, 1300).is_ok());
        assert!(with_mtu(&v4_backends, 1299).is_err());
        // An IPv4 VIP, or L2 DSR (no tunnel), may use any mtu in range.
        assert!(with_mtu(GOOD, 576).is_ok());
        let l2 = v6.replace("\"port\": 80,", "\"port\": 80, \"forwarding\": \"l2_dsr\",");
        assert!(with_mtu(&l2, 576).is_ok());
    }

    #[test]
    fn too_big_answers_default_and_range() {
        let c = Config::from_json(GOOD).unwrap();
        assert_eq!(
            c.too_big_answers,
            TooBigAnswers {
                per_second: 100,
                burst: 10
            }
        );
        let off = GOOD.replace(
            "\"vips\":",
            "\"too_big_answers\": {\"per_second\": 0}, \"vips\":",
        );
        assert_eq!(
            Config::from_json(&off).unwrap().too_big_answers.per_second,
            0
        );
        let no_burst = GOOD.replace(
            "\"vips\":",
            "\"too_big_answers\": {\"burst\": 0}, \"vips\":",
        );
        assert_eq!(
            problem(&no_burst),
            "too_big_answers.burst: 0 is out of range 1..=10000"
        );
    }

    #[test]
    fn conn_promotions_default_to_a_tenth_of_the_table_per_second() {
        let c = Config::from_json(GOOD).unwrap();
        assert_eq!(c.conn_promotions.per_second, None);
        assert_eq!(
            c.promotions_per_second(),
            lb_common::maps::DEFAULT_CONN_ENTRIES / 10
        );
        let set = GOOD.replace(
            "\"vips\":",
            "\"conn_promotions\": {\"per_second\": 5000}, \"vips\":",
        );
        assert_eq!(
            Config::from_json(&set).unwrap().promotions_per_second(),
            5000
        );
        let zero = GOOD.replace(
            "\"vips\":",
            "\"conn_promotions\": {\"per_second\": 0}, \"vips\":",
        );
        assert_eq!(
            problem(&zero),
            "conn_promotions.per_second: 0 is out of range 1..=100000000"
        );
    }

    #[test]
    fn syntax_error_gives_line_and_column() {
        let msg = problem("{\n \"interfaces\": [,]\n}");
        assert!(msg.contains("invalid JSON at line 2"), "{msg}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = GOOD
            .replace("\"weight\": 2", "\"weight\": 5000")
            .replace("\"timeout_ms\": 200", "\"timeout_ms\": 900")
            .replace("\"ring_size\": 65537", "");
        let err = Config::from_json(&text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "vips[0].health_check.timeout_ms",
                "vips[0].backends[0].weight"
            ]
        );
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = Config::from_json(include_str!("../../examples/lbd.json")).unwrap();
        assert_eq!(c.vips.len(), 2);
    }

    #[test]
    fn mac_syntax() {
        assert!("02:00:5e:00:53:01".parse::<Mac>().is_ok());
        for bad in [
            "02:00:5e:00:53",
            "02:00:5e:00:53:0g",
            "0200.5e00.5301",
            "2:0:5e:0:53:1",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    /// `GOOD` with the first VIP's port and health check replaced.
    fn with_check(port: u16, check: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["vips"][0]["port"] = port.into();
        v["vips"][0]["health_check"] = check;
        v.to_string()
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::from_json(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(Problem::to_string).collect(),
        }
    }

    #[test]
    fn portless_vip_check_needs_its_own_port() {
        use serde_json::json;
        for kind in ["tcp", "http", "udp"] {
            let mut check = json!({"type": kind});
            if kind == "udp" {
                check["payload"] = "ping".into();
            }
            assert_eq!(
                problems(&with_check(0, check.clone())),
                [
                    "vips[0].health_check.port: required for a port-less VIP (port 0): the check would probe port 0"
                ],
                "{kind}"
            );
            check["port"] = 8080.into();
            assert_eq!(problems(&with_check(0, check.clone())), [""; 0], "{kind}");
            // Port 0 given explicitly is no better, port-less VIP or not.
            check["port"] = 0.into();
            for vip_port in [0, 80] {
                assert_eq!(
                    problems(&with_check(vip_port, check.clone())),
                    [
                        "vips[0].health_check.port: 0 cannot be probed: give the port the backends serve"
                    ],
                    "{kind}"
                );
            }
        }
        // Without checks a port-less VIP needs no check port.
        assert_eq!(problems(&with_check(0, json!({"type": "none"}))), [""; 0]);
    }

    #[test]
    fn http_path_and_host_must_fit_in_a_request() {
        use serde_json::json;
        for path in ["/a b", "/x HTTP/1.1\r\nX-Evil: 1", "/tab\t", "/nul\u{0}"] {
            assert_eq!(
                problems(&with_check(80, json!({"type": "http", "path": path}))),
                [format!(
                    "vips[0].health_check.path: {path:?} contains whitespace or a control character"
                )],
            );
        }
        for host in ["web example", "web.example\r\nX-Evil: 1", "\u{7f}"] {
            assert_eq!(
                problems(&with_check(80, json!({"type": "http", "host": host}))),
                [format!(
                    "vips[0].health_check.host: {host:?} contains whitespace or a control character"
                )],
            );
        }
        assert_eq!(
            problems(&with_check(80, json!({"type": "http", "host": ""}))),
            ["vips[0].health_check.host: must not be empty"],
        );
        // A path that breaks both rules gets both reasons.
        assert_eq!(
            problems(&with_check(80, json!({"type": "http", "path": "a b"}))).len(),
            2
        );
        let fine =
            json!({"type": "http", "path": "/healthz?full=1&x=%20", "host": "[2001:db8::1]:8080"});
        assert_eq!(problems(&with_check(80, fine)), [""; 0]);
    }

    #[test]
    fn a_none_check_is_validated_like_any_other() {
        use serde_json::json;
        let cases = [
            (
                json!({"type": "none", "interval_ms": 50, "timeout_ms": 20}),
                "vips[0].health_check.interval_ms: 50 is out of range 100..=3600000",
            ),
            (
                json!({"type": "none", "timeout_ms": 5000}),
                "vips[0].health_check.timeout_ms: 5000 must be at least 10 and at most interval_ms (1000)",
            ),
            (
                json!({"type": "none", "fall": 0}),
                "vips[0].health_check.fall: 0 is out of range 1..=100",
            ),
            (
                json!({"type": "none", "path": "/healthz"}),
                "vips[0].health_check.path: does not apply to a none check",
            ),
            // `none` is the default type: a forgotten `type` is caught too.
            (
                json!({"host": "web.example"}),
                "vips[0].health_check.host: does not apply to a none check",
            ),
            (
                json!({"type": "none", "payload": "ping"}),
                "vips[0].health_check.payload: does not apply to a none check",
            ),
            (
                json!({"type": "none", "expect": "pong"}),
                "vips[0].health_check.expect: does not apply to a none check",
            ),
            (
                json!({"type": "none", "port": 8080}),
                "vips[0].health_check.port: does not apply to a none check",
            ),
        ];
        for (check, message) in cases {
            assert_eq!(
                problems(&with_check(80, check.clone())),
                [message],
                "{check}"
            );
        }
        assert_eq!(problems(&with_check(80, json!({"type": "none"}))), [""; 0]);
        assert_eq!(problems(&with_check(80, json!({}))), [""; 0]);
    }

    #[test]
    fn l2_dsr_without_fib_needs_every_backend_mac() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["vips"][0]["forwarding"] = "l2_dsr".into();
        v["next_hop"] = serde_json::json!({"fib": false, "gateway_mac": "02:00:5e:00:53:fe"});
        assert_eq!(
            problems(&v.to_string()),
            [
                "vips[0].backends[0].mac: required for an l2_dsr VIP when next_hop.fib is false: next_hop.gateway_mac is a router, which would send the frame back to the VIP"
            ]
        );
        // With the FIB, lbd asks the kernel's routes instead (onlink.rs).
        v["next_hop"]["fib"] = true.into();
        assert_eq!(problems(&v.to_string()), [""; 0]);
    }

    #[test]
    fn through_tunnel_is_on_by_default_for_ipip_vips_with_a_check() {
        use serde_json::json;
        let cases = [
            ("ipip", json!({"type": "http"}), true),
            (
                "ipip",
                json!({"type": "http", "through_tunnel": false}),
                false,
            ),
            (
                "ipip",
                json!({"type": "http", "through_tunnel": true}),
                true,
            ),
            ("ipip", json!({"type": "none"}), false),
            ("l2_dsr", json!({"type": "http"}), false),
        ];
        for (forwarding, check, on) in cases {
            let mut v: serde_json::Value = serde_json::from_str(&with_check(80, check)).unwrap();
            v["vips"][0]["forwarding"] = forwarding.into();
            let c = Config::from_json(&v.to_string()).unwrap();
            assert_eq!(c.vips[0].checks_through_tunnel(), on, "{v}");
        }
    }

    #[test]
    fn through_tunnel_is_refused_where_there_is_nothing_to_probe_through() {
        use serde_json::json;
        let mut v: serde_json::Value = serde_json::from_str(&with_check(
            80,
            json!({"type": "http", "through_tunnel": true}),
        ))
        .unwrap();
        v["vips"][0]["forwarding"] = "l2_dsr".into();
        assert_eq!(
            problems(&v.to_string()),
            [
                "vips[0].health_check.through_tunnel: does not apply to l2_dsr forwarding: there is no tunnel to probe through"
            ]
        );
        assert_eq!(
            problems(&with_check(
                80,
                json!({"type": "none", "through_tunnel": false})
            )),
            ["vips[0].health_check.through_tunnel: does not apply to a none check"]
        );
    }

    #[test]
    fn through_tunnel_of_a_vip_with_backends_of_the_other_family_needs_its_source() {
        use serde_json::json;
        // An IPv6 VIP whose only backend is IPv4: the probe's inner packet
        // is IPv6, from tunnel_source.ipv6.
        let mut v: serde_json::Value =
            serde_json::from_str(&with_check(80, json!({"type": "tcp"}))).unwrap();
        v["tunnel_source"] = json!({"ipv4": "198.51.100.2"});
        v["vips"][0]["address"] = "2001:db8::10".into();
        v["vips"][0]["backends"] = json!([{"address": "198.51.100.101"}]);
        assert_eq!(
            problems(&v.to_string()),
            [
                "vips[0].health_check.through_tunnel: the probe of an IPv6 VIP through the tunnel is sent from tunnel_source.ipv6: set it, or set through_tunnel to false"
            ]
        );
        v["vips"][0]["health_check"]["through_tunnel"] = false.into();
        assert_eq!(problems(&v.to_string()), [""; 0]);
    }

    #[test]
    fn announce_is_off_unless_given_and_refuses_the_hosts_tables_and_others_protocols() {
        assert_eq!(Config::from_json(GOOD).unwrap().announce, None);
        let with = |announce: &str| {
            GOOD.replace("\"vips\":", &format!("\"announce\": {announce}, \"vips\":"))
        };
        assert_eq!(
            Config::from_json(&with("{}")).unwrap().announce,
            Some(Announce {
                table: 200,
                protocol: 201
            })
        );
        assert_eq!(
            problems(&with(r#"{"table": 254, "protocol": 12}"#)),
            [
                "announce.table: 254 is the kernel's main table, which the host routes by: give lbd a table of its own, which no ip rule looks up",
                "announce.protocol: 12 is BIRD's: BIRD takes routes of that number for its own and removes them: give lbd a number no other program writes routes with",
            ]
        );
        for table in [0, 253, 255] {
            assert_eq!(
                problems(&with(&format!("{{\"table\": {table}}}"))).len(),
                1,
                "{table}"
            );
        }
        for protocol in [0, 2, 4, 11, 42, 186, 198] {
            assert_eq!(
                problems(&with(&format!("{{\"protocol\": {protocol}}}"))).len(),
                1,
                "{protocol}"
            );
        }
        for (table, protocol) in [(1, 5), (252, 199), (1000, 250), (u32::MAX, 255)] {
            let text = with(&format!("{{\"table\": {table}, \"protocol\": {protocol}}}"));
            assert_eq!(problems(&text), [""; 0], "{table} {protocol}");
        }
        assert!(
            problems(&with(r#"{"protocol": 256}"#))[0]
                .starts_with("announce.protocol: invalid value"),
            "a protocol number is one byte"
        );
    }

    #[test]
    fn ring_size_must_be_prime() {
        let mut c = Config::from_json(GOOD).unwrap();
        c.tables.ring_size = 65536;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "tables.ring_size: 65536 is not a prime of at least 7"
        );
    }
}

#[cfg(test)]
mod load_report_tests {
    //! `vips[].balancing` with a reported load (`prometheus`, `header`)
    //! and hard limits.

    use serde_json::{Value, json};

    use super::*;

    /// A VIP on port 80 with an HTTP check and `balancing`.
    fn with_balancing(balancing: Value) -> Vec<String> {
        let v = json!({
            "interfaces": [{"name": "eth0"}],
            "tunnel_source": {"ipv4": "198.51.100.2"},
            "vips": [{
                "address": "198.51.100.10", "port": 80, "protocol": "tcp",
                "health_check": {"type": "http", "path": "/health"},
                "balancing": balancing,
                "backends": [{"address": "198.51.100.101"}]
            }]
        });
        match Config::from_json(&v.to_string()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(Problem::to_string).collect(),
        }
    }

    fn vllm() -> Value {
        json!({
            "mode": "load", "source": "prometheus",
            "prometheus": {
                "metrics": {"vllm:num_requests_running": 1, "vllm:num_requests_waiting": 1},
                "capacity": 32
            },
            "hard_limit": {"metric": "vllm:num_requests_waiting", "above": 16}
        })
    }

    #[test]
    fn a_vllm_prometheus_source_with_a_hard_limit_is_accepted_with_defaults() {
        assert_eq!(with_balancing(vllm()), [""; 0]);
        let mut b: Balancing = serde_json::from_value(vllm()).unwrap();
        let p = b.prometheus.take().unwrap();
        assert_eq!(
            (p.path.as_str(), p.timeout_ms, p.port),
            ("/metrics", 500, None)
        );
        assert_eq!(b.hard_limit.unwrap().resume_level(), 16.0 * 0.8);
        let header = json!({"mode": "load", "source": "header"});
        assert_eq!(with_balancing(header.clone()), [""; 0]);
        let b: Balancing = serde_json::from_value(header).unwrap();
        assert_eq!(b.report_header().as_deref(), Some("endpoint-load-metrics"));
    }

    #[test]
    fn source_blocks_must_fit_the_source_and_mode() {
        let mut b = vllm();
        b["source"] = "flows".into();
        assert_eq!(
            with_balancing(b),
            [
                "vips[0].balancing.prometheus: does not apply to source flows",
                "vips[0].balancing.hard_limit: needs a value the backends report: source prometheus or header",
            ]
        );
        let mut b = vllm();
        b["mode"] = "static".into();
        assert_eq!(
            with_balancing(b),
            [
                "vips[0].balancing.source: prometheus applies to mode load only: mode static balances by the configured weights",
                "vips[0].balancing.hard_limit: applies to mode load only: mode static balances by the configured weights",
            ]
        );
        assert_eq!(
            with_balancing(json!({"mode": "load", "source": "prometheus"})),
            [
                "vips[0].balancing.prometheus: source prometheus needs the gauges to scrape: give prometheus.metrics"
            ]
        );
        assert_eq!(
            with_balancing(json!({"mode": "load", "source": "header", "flows_per_weight": 10})),
            ["vips[0].balancing.flows_per_weight: does not apply to source header"]
        );
    }

    #[test]
    fn the_header_source_needs_an_http_check() {
        let v = json!({
            "interfaces": [{"name": "eth0"}],
            "tunnel_source": {"ipv4": "198.51.100.2"},
            "vips": [{
                "address": "198.51.100.10", "port": 80, "protocol": "tcp",
                "health_check": {"type": "tcp"},
                "balancing": {"mode": "load", "source": "header"},
                "backends": [{"address": "198.51.100.101"}]
            }]
        });
        let e = Config::from_json(&v.to_string()).unwrap_err();
        assert_eq!(
            e.problems[0].to_string(),
            "vips[0].balancing.source: header is read from the HTTP health check's response: needs health_check.type http, not tcp"
        );
    }

    #[test]
    fn bad_prometheus_header_and_limit_fields_name_their_path() {
        let mut b = vllm();
        b["prometheus"]["metrics"] = json!({"vllm:x{a=b}": 1});
        b["prometheus"]["capacity"] = 0.into();
        b["prometheus"]["timeout_ms"] = 5000.into();
        b["prometheus"]["path"] = "metrics".into();
        b["prometheus"]["port"] = 0.into();
        b["hard_limit"]["resume_below"] = 20.into();
        assert_eq!(
            with_balancing(b),
            [
                r#"vips[0].balancing.prometheus.metrics["vllm:x{a=b}"]: "vllm:x{a=b}" is not a metric selector (like name or name{label="value"}): " was expected"#,
                "vips[0].balancing.prometheus.capacity: 0 must be a number above 0",
                "vips[0].balancing.prometheus.timeout_ms: 5000 must be at least 10 and at most the interval (2000)",
                r#"vips[0].balancing.prometheus.path: "metrics" must start with / and contain no whitespace or control character"#,
                "vips[0].balancing.prometheus.port: 0 cannot be scraped: give the port the backends serve metrics on",
                "vips[0].balancing.hard_limit.resume_below: 20 must be a number at most above (16)",
            ]
        );
        let b = json!({
            "mode": "load", "source": "header",
            "header": {"name": "bad header", "key": "a=b"},
            "hard_limit": {"metric": "", "above": 1}
        });
        assert_eq!(
            with_balancing(b),
            [
                r#"vips[0].balancing.header.name: "bad header" is not an HTTP header name"#,
                r#"vips[0].balancing.header.key: "a=b" is not a report key (like utilization or named_metrics.waiting)"#,
                r#"vips[0].balancing.hard_limit.metric: "" is not a report key (like named_metrics.waiting)"#,
            ]
        );
        let e = Config::from_json(
            &json!({
                "interfaces": [{"name": "eth0"}],
                "vips": [{"address": "198.51.100.10", "port": 80, "protocol": "tcp",
                  "balancing": {"mode": "load", "source": "prometheus",
                     "prometheus": {"metrics": {"m": 1}, "scrape": true}}}]
            })
            .to_string(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("vips[0].balancing.prometheus.scrape: unknown field `scrape`"),
            "{e}"
        );
    }
}
