//! The configuration as it is written: the serde structs, enums and
//! their defaults. Every field is documented here, once; what serde
//! cannot check (ranges, uniqueness, consistency) is `validate`'s.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Without `conn_promotions.per_second`, the connection table's entries
/// can be replaced at most once in this many seconds.
pub const DEFAULT_CONN_TURNOVER_SECS: u32 = 10;

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

/// Lets a switch that is off stay out of dumps and requests, so an older
/// lbd, which refuses fields it does not know, still takes them.
fn is_false(b: &bool) -> bool {
    !*b
}

/// A path that may be unset: `null`, or `""`, which TOML must use.
fn empty_path_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = Option::<PathBuf>::deserialize(d)?;
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

fn default_bird_socket() -> Option<PathBuf> {
    Some(PathBuf::from("/run/bird/bird.ctl"))
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
    /// Keep no per-flow state on the LB: the ring alone places every
    /// packet, and a flow whose slot moved reaches its backend through the
    /// second hop for the slot's window. Needs `second_chance.enabled`,
    /// `ipip` forwarding and TCP. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateless: bool,
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
    /// Default 0.8. With relative utilization (`flows` without
    /// `flows_per_weight`) it sets a band instead: a backend keeps its
    /// weight while its flows per weight lie between the VIP's mean and
    /// the mean / target.
    #[serde(default = "default_target_utilization")]
    pub target_utilization: f64,
    /// Active flows per unit of configured weight at which a backend is
    /// fully used. Unset: utilization is relative, a backend's active
    /// flows per weight against the VIP's mean (at the mean it is at
    /// `target_utilization`), and its weight follows the band rule
    /// (`weight_controller`).
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    #[default]
    Ipip,
    L2Dsr,
}

impl Forwarding {
    /// As in configs and output.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Ipip => "ipip",
            Forwarding::L2Dsr => "l2_dsr",
        }
    }
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

impl AdminState {
    /// As in configs and output.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }
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
