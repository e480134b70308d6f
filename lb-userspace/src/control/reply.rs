//! Every reply lbd sends, one type per kind: lbd builds them, lbctl and
//! `lbctl top` read them back into the same types, and `lbctl --json`
//! prints them. A field renamed here is renamed on both ends or fails to
//! compile. The JSON field names are the ones scripts and the docs use:
//! keep them (or raise `PROTOCOL_VERSION`, see the module doc of
//! `control`).
//!
//! Replies do not deny unknown fields, so that a field added within a
//! version (as an `Option`, or with `#[serde(default)]`, so that replies of
//! an lbd without it still read) needs no new version. For the same
//! reason no reply type is one of the configuration's (which deny unknown
//! fields): `config_dump` is read by lbctl as plain JSON, a hard limit as
//! [`HardLimitShow`], and every enum value as an [`Open`] one, which keeps
//! the name of a value a newer lbd added.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    VipRef,
    open::{Named, Open},
    version::PROTOCOL_VERSION,
};
use crate::{
    capture::CaptureEvent,
    config::{AdminState, BalancingMode, Config, Forwarding, HardLimit, LoadSource, Protocol},
};

/// One reply line: `{"v": 1, "ok": true, "data": ...}`, or `{"v": 1,
/// "ok": false, "error": "..."}` with one line a person can act on. lbd
/// writes `Reply<ReplyData>`; lbctl reads `Reply<serde_json::Value>` and
/// then the body it asked for, once `v` says it can.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply<D = ReplyData> {
    /// lbd's protocol version; missing from an lbd from before versions.
    #[serde(default)]
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn data(data: impl Into<ReplyData>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: true,
            data: Some(data.into()),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }

    /// This reply in version `v`: lbd answers a request in the request's
    /// version (see the module doc of `control`).
    pub fn in_version(mut self, v: u32) -> Self {
        self.v = v;
        self
    }
}

/// The body of a successful reply, one variant per kind. Written bare (no
/// tag): the request says which kind comes back.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ReplyData {
    /// `status`.
    Status(Box<Status>),
    /// `vip_list`.
    VipList(Vec<VipRow>),
    /// `vip_show`.
    VipShow(VipShow),
    /// `backend_list`.
    BackendList(Vec<BackendRow>),
    /// Every edit: `apply`, `vip_add`, `backend_drain`, ...
    Applied(Applied),
    /// `stats`.
    Stats(Stats),
    /// `flow`.
    Flow(FlowDecision),
    /// `conn_list`.
    ConnList(ConnList),
    /// `config_dump`: the running configuration, every default filled in.
    /// lbctl reads it as plain JSON (`serde_json::Value`): it only prints
    /// it, and a newer lbd's configuration may have options it lacks.
    Config(Box<Config>),
    /// `node_drain` and `node_resume`.
    NodeDrain(NodeDrainState),
    /// `capture`: one line per packet, then one end.
    Capture(CaptureEvent),
}

macro_rules! reply_data_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for ReplyData {
            fn from(body: $ty) -> Self {
                ReplyData::$variant(body.into())
            }
        }
    )*};
}

reply_data_from!(
    Status(Status),
    VipList(Vec<VipRow>),
    VipShow(VipShow),
    BackendList(Vec<BackendRow>),
    Applied(Applied),
    Stats(Stats),
    Flow(FlowDecision),
    ConnList(ConnList),
    Config(Config),
    NodeDrain(NodeDrainState),
    Capture(CaptureEvent),
);

/// `lbctl status`: the daemon, its attachments, tables and announcements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// lbd's release.
    pub version: String,
    pub uptime_s: u64,
    /// The configuration file.
    pub config: String,
    pub pin_dir: String,
    /// lbd found a data plane running on its pins and took it over.
    pub adopted_running_data_plane: bool,
    pub interfaces: Vec<InterfaceStatus>,
    /// Links pinned for interfaces not in `interfaces[]`.
    pub unconfigured_links: Vec<UnconfiguredLink>,
    pub vips: usize,
    pub backends: usize,
    pub backends_up: usize,
    pub ring_size: u32,
    /// Entries in the connection table; `None` when it could not be read.
    pub connection_entries: Option<u64>,
    pub connection_table_size: u32,
    pub occupancy: Occupancy,
    pub table_rebuilds: u64,
    /// The node is drained (`lbctl node drain`).
    pub drained: bool,
    /// `None` when `announce` is not configured and nothing is left over.
    pub announce: Option<AnnounceStatus>,
    /// The BGP speaker; `None` when `announce` is not configured.
    pub speaker: Option<SpeakerStatus>,
    /// VIP (`198.51.100.10:80/tcp`) → its live ring's digest, `None` when
    /// unreadable.
    pub ring_digests: BTreeMap<String, Option<String>>,
    /// The verdict counters that are not zero, by name.
    pub counters: BTreeMap<String, u64>,
}

/// One interface of `interfaces[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub state: Open<InterfaceState>,
    /// `None` while the interface is gone.
    pub ifindex: Option<u32>,
    /// Why attaching again failed, while it stays failed.
    pub error: Option<String>,
    /// `native` or `generic`.
    pub mode: String,
    /// lbd swapped its program into a link it found pinned.
    pub replaced_existing_program: bool,
    /// Times the program was attached again to the interface re-created.
    pub reattached: u64,
}

/// Whether the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    Attached,
    /// The interface exists but attaching to it failed (see `error`).
    Detached,
    /// The interface does not exist (deleted).
    Gone,
}

impl Named for InterfaceState {
    fn name(self) -> &'static str {
        match self {
            InterfaceState::Attached => "attached",
            InterfaceState::Detached => "detached",
            InterfaceState::Gone => "gone",
        }
    }
}

/// A link pinned for an interface not in `interfaces[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnconfiguredLink {
    pub name: String,
    /// `attached`, `dead` (its interface was deleted), `removed` or
    /// `unreadable`.
    pub state: String,
    pub ifindex: Option<u32>,
    pub program_id: Option<u32>,
    /// lbd swapped its program into it at start.
    pub updated_at_start: bool,
    pub error: Option<String>,
    /// What to tell the operator, and how to detach it.
    pub warning: String,
}

/// How full the flow tables are; `None`s when they could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Occupancy {
    pub connections: Option<TableOccupancy>,
    pub probation: Option<TableOccupancy>,
    /// False when a bounded walk stopped before a table's end.
    pub exact: Option<bool>,
    /// How the entries were counted.
    pub counted_by: Option<String>,
}

/// One flow table's fill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableOccupancy {
    pub entries: u64,
    pub capacity: u32,
    /// `entries / capacity`, 0 to 1.
    pub fill: f64,
}

/// The `announce` part of `lbctl status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// `None` when `announce` is not configured (and routes of an earlier
    /// one are left to remove).
    pub table: Option<u32>,
    pub protocol: Option<u8>,
    pub drained: bool,
    pub addresses: Vec<AnnouncedAddress>,
    /// Tables of an earlier `announce` whose routes are still to remove.
    pub leftover_tables: Vec<String>,
    /// What failed at the last refresh.
    pub error: Option<String>,
}

/// One VIP address and whether its route is there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnouncedAddress {
    pub address: IpAddr,
    pub announced: bool,
    /// `announced`, or why not.
    pub state: String,
}

/// The BGP speaker (BIRD) as lbd last found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeakerStatus {
    pub reachable: bool,
    /// BGP sessions established, when BIRD answered.
    pub established: Option<usize>,
    pub sessions: Vec<SpeakerSession>,
    /// One line for an operator.
    pub summary: String,
}

/// One BGP session of the speaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeakerSession {
    pub name: String,
    pub established: bool,
    /// BIRD's info column: `Established`, `Active`, ...
    pub info: String,
}

/// One row of `lbctl vip list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipRow {
    pub name: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Open<Protocol>,
    pub forwarding: Open<Forwarding>,
    pub affinity: bool,
    /// No per-flow state on the LB (`vips[].stateless`); absent from an
    /// lbd that had no such mode.
    #[serde(default)]
    pub stateless: bool,
    /// The data plane's id; `None` before it has one.
    pub id: Option<u32>,
    /// Backends configured.
    pub backends: usize,
    pub healthy: usize,
    /// Backends in the Maglev table.
    pub in_table: usize,
    /// The live ring's digest (`lbctl cluster check` compares them).
    pub ring_digest: Option<String>,
    /// `None` when `announce` is not configured.
    pub announced: Option<bool>,
}

impl VipRow {
    /// `198.51.100.10:80/tcp`, as `VipRef` spells a VIP (with the name a
    /// newer lbd gave a protocol this build does not know).
    pub fn vip(&self) -> String {
        let socket = std::net::SocketAddr::new(self.address, self.port);
        format!("{socket}/{}", self.protocol)
    }
}

/// A backend's health as lbctl shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    Up,
    Down,
    /// The VIP has no health check.
    Unchecked,
}

impl Named for BackendHealth {
    fn name(self) -> &'static str {
        match self {
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
            BackendHealth::Unchecked => "unchecked",
        }
    }
}

/// The reply to [`super::Request::VipShow`] (`lbctl vip show`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipShow {
    pub vip: VipRef,
    pub mode: Open<BalancingMode>,
    pub source: Open<LoadSource>,
    pub hard_limit: Option<HardLimitShow>,
    /// Every backend in service is over the hard limit, so it is waived.
    pub hard_limit_waived: bool,
    pub backends: Vec<BackendShow>,
}

/// `vips[].balancing.hard_limit` in a reply: [`HardLimit`]'s fields,
/// without denying the ones a newer lbd may add.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardLimitShow {
    pub metric: String,
    pub above: f64,
    /// Unset: 80% of `above`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_below: Option<f64>,
}

impl HardLimitShow {
    /// As [`HardLimit::resume_level`].
    pub fn resume_level(&self) -> f64 {
        HardLimit {
            metric: String::new(),
            above: self.above,
            resume_below: self.resume_below,
        }
        .resume_level()
    }
}

impl From<&HardLimit> for HardLimitShow {
    fn from(l: &HardLimit) -> Self {
        // Every field by name: one added to `HardLimit` must be added here.
        let HardLimit {
            metric,
            above,
            resume_below,
        } = l;
        Self {
            metric: metric.clone(),
            above: *above,
            resume_below: *resume_below,
        }
    }
}

/// One backend of a [`VipShow`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendShow {
    pub address: IpAddr,
    /// `vips[].backends[].weight`.
    pub weight: u32,
    pub state: Open<AdminState>,
    pub health: Open<BackendHealth>,
    /// The weight its share of new flows follows, in units of the
    /// configured weight; `None` while it takes no new flows.
    pub effective_weight: Option<f64>,
    /// Why the effective weight is what it is.
    pub why: Option<String>,
    /// Its active flows on this node.
    pub active_flows: Option<u64>,
    /// Its last load report (`source` `prometheus` or `header`).
    pub report: Option<ReportShow>,
    /// Over its hard limit: no new flows (unless the limit is waived).
    pub over_hard_limit: bool,
}

/// A backend's last load report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportShow {
    /// The load over the capacity.
    pub utilization: Option<f64>,
    pub load: Option<f64>,
    /// The value the hard limit applies to.
    pub limit_value: Option<f64>,
    /// Seconds since the last good report.
    pub age_s: Option<f64>,
    /// Too old to count: the controller treats the backend as unreported.
    pub stale: bool,
    /// Why the latest report was unusable, if it was.
    pub error: Option<String>,
}

/// One row of `lbctl backend list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    /// `198.51.100.10:80/tcp`.
    pub vip: String,
    pub address: IpAddr,
    /// The data plane's id; `None` before it has one.
    pub id: Option<u32>,
    pub weight: u32,
    pub state: Open<AdminState>,
    pub health: Open<BackendHealth>,
    /// In the VIP's Maglev table (takes new flows).
    pub in_table: bool,
    /// The last health check's result.
    pub last_check: Option<String>,
    pub check_latency_ms: Option<f64>,
    /// Seconds until a drain cuts its flows; `None` unless draining.
    pub drain_remaining_s: Option<u64>,
    /// As in [`BackendShow`].
    pub effective_weight: Option<f64>,
    pub weight_reason: Option<String>,
    pub active_flows: Option<u64>,
    pub inactive_flows: Option<u64>,
    pub new_flows_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
}

/// The reply to every edit (`apply`, `vip add`, `backend drain`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Always true: a refused edit is an error reply.
    pub applied: bool,
    pub rings_rebuilt: usize,
    pub elapsed_ms: f64,
}

/// `stats`: the counters now (lbctl computes rates from two).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// When they were read, in seconds since the Unix epoch.
    pub time_s: f64,
    pub vips: Vec<VipCounters>,
    pub backends: Vec<BackendCounters>,
    /// Every verdict counter, by name.
    pub counters: BTreeMap<String, u64>,
}

/// One VIP's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipCounters {
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub dropped: u64,
}

/// One backend's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub vip: String,
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// `flow`: where the data plane sends the flow's next packet, and why.
/// Every field is there in every reply (`null` where it does not apply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowDecision {
    /// The backend's address; `None` when the packet is dropped.
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// The flow's hash and table slot, when the table decided.
    pub hash: Option<u32>,
    pub slot: Option<u32>,
    /// The slot's previous owner a SYN takes along as a second hop.
    pub second_hop: Option<String>,
    /// Why the flow's table entry no longer pins it, if it has one.
    pub stale_entry: Option<String>,
    pub reason: String,
}

/// `conn list`: rows, and how much was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnList {
    pub rows: Vec<ConnRow>,
    /// Entries read.
    pub scanned: usize,
    /// A table had more entries than `scan`: flows may be missing.
    pub truncated: bool,
    /// More rows matched than `limit`.
    pub more: bool,
    /// Flows that matched, shown or not.
    pub matched: usize,
    /// Of those, the ones whose entry still pins them and that the client
    /// has not closed (a drained backend's flows still running).
    pub pinned: usize,
}

/// One flow of a [`ConnList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRow {
    /// `None` for a protocol number lbd does not balance.
    pub protocol: Option<Open<Protocol>>,
    /// `203.0.113.7:40000`.
    pub client: String,
    pub vip: String,
    /// The backend's address, or `backend id N` for an unknown one.
    pub backend: String,
    pub table: Open<ConnTable>,
    /// Seconds since the flow's last packet (refreshed at most once a
    /// second by the data plane).
    pub idle_s: u64,
    /// The flow was seen closing (a FIN or RST); its entry stays for its
    /// last packets.
    pub closed: bool,
    /// `None` while the entry pins the flow; else why the data plane would
    /// send the flow's next packet elsewhere.
    pub stale: Option<String>,
}

/// Which flow table an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnTable {
    Connection,
    /// Flows seen once.
    Probation,
}

impl Named for ConnTable {
    fn name(self) -> &'static str {
        match self {
            ConnTable::Connection => "connection",
            ConnTable::Probation => "probation",
        }
    }
}

/// `node drain` and `node resume`: the node's state once the routes are
/// written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDrainState {
    pub drained: bool,
    /// The state before this request.
    pub was_drained: bool,
    /// The VIP addresses announced now.
    pub announced: Vec<IpAddr>,
    /// Why some routes could not be written or removed.
    pub error: Option<String>,
    /// Why the drain state could not be saved in `state_file`.
    pub unsaved: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;
    use crate::{
        capture::{CaptureEnd, CapturedPacket},
        control::{Request, read_reply},
    };

    const VIP: &str = "198.51.100.10:80/tcp";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// `body` as lbd writes it, read back as lbctl reads the reply to
    /// `request`.
    fn round_trip<T>(request: Request, body: T)
    where
        T: Into<ReplyData> + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    {
        let line = serde_json::to_string(&Reply::data(body.clone())).unwrap();
        assert!(line.starts_with(r#"{"v":1,"ok":true,"data":"#), "{line}");
        let read: T = read_reply(&request, &line).unwrap().read;
        assert_eq!(read, body);
    }

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            uptime_s: 7,
            config: "/etc/lbd/lbd.json".into(),
            pin_dir: "/sys/fs/bpf/lbd".into(),
            adopted_running_data_plane: true,
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                state: InterfaceState::Gone.into(),
                ifindex: None,
                error: None,
                mode: "native".into(),
                replaced_existing_program: true,
                reattached: 2,
            }],
            unconfigured_links: vec![UnconfiguredLink {
                name: "eth1".into(),
                state: "dead".into(),
                ifindex: None,
                program_id: Some(41),
                updated_at_start: false,
                error: Some("gone".into()),
                warning: "eth1 is not in interfaces".into(),
            }],
            vips: 1,
            backends: 2,
            backends_up: 1,
            ring_size: 65537,
            connection_entries: Some(10),
            connection_table_size: 1 << 20,
            occupancy: Occupancy {
                connections: Some(TableOccupancy {
                    entries: 10,
                    capacity: 100,
                    fill: 0.1,
                }),
                probation: None,
                exact: Some(true),
                counted_by: Some("kernel element count".into()),
            },
            table_rebuilds: 3,
            drained: false,
            announce: Some(AnnounceStatus {
                table: Some(200),
                protocol: Some(201),
                drained: false,
                addresses: vec![AnnouncedAddress {
                    address: ip("198.51.100.10"),
                    announced: true,
                    state: "announced".into(),
                }],
                leftover_tables: vec!["table 100 protocol 201".into()],
                error: None,
            }),
            speaker: Some(SpeakerStatus {
                reachable: true,
                established: Some(1),
                sessions: vec![SpeakerSession {
                    name: "tor1".into(),
                    established: true,
                    info: "Established".into(),
                }],
                summary: "BIRD 2.15: 1 of 1 BGP sessions established".into(),
            }),
            ring_digests: [(VIP.to_string(), Some("abcd".to_string()))].into(),
            counters: [("pass_non_vip".to_string(), 5)].into(),
        }
    }

    fn backend_row() -> BackendRow {
        BackendRow {
            vip: VIP.into(),
            address: ip("198.51.100.101"),
            id: Some(0),
            weight: 2,
            state: AdminState::Drain.into(),
            health: BackendHealth::Up.into(),
            in_table: false,
            last_check: Some("connected".into()),
            check_latency_ms: Some(0.25),
            drain_remaining_s: Some(299),
            effective_weight: Some(1.5),
            weight_reason: Some("configured".into()),
            active_flows: Some(4),
            inactive_flows: Some(1),
            new_flows_per_s: Some(2.5),
            bytes_per_s: Some(1e6),
        }
    }

    fn conn_list_request() -> Request {
        Request::ConnList {
            vip: None,
            backend: None,
            client: None,
            probation: true,
            limit: 10,
            scan: 100,
        }
    }

    fn conn_row() -> ConnRow {
        ConnRow {
            protocol: Some(Protocol::Udp.into()),
            client: "203.0.113.7:5353".into(),
            vip: "198.51.100.10:53/udp".into(),
            backend: "198.51.100.101".into(),
            table: ConnTable::Probation.into(),
            idle_s: 3,
            closed: false,
            stale: None,
        }
    }

    #[test]
    fn every_reply_round_trips_through_json() {
        round_trip(Request::Status, status());
        round_trip(
            Request::VipList,
            vec![VipRow {
                name: Some("web".into()),
                address: ip("2001:db8::10"),
                port: 443,
                protocol: Protocol::Tcp.into(),
                forwarding: Forwarding::L2Dsr.into(),
                affinity: true,
                stateless: false,
                id: Some(1),
                backends: 2,
                healthy: 1,
                in_table: 1,
                ring_digest: None,
                announced: Some(false),
            }],
        );
        let vip = VipRef {
            address: ip("198.51.100.10"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        round_trip(
            Request::VipShow { vip },
            VipShow {
                vip,
                mode: BalancingMode::Load.into(),
                source: LoadSource::Header.into(),
                hard_limit: Some(HardLimitShow {
                    metric: "queue".into(),
                    above: 10.0,
                    resume_below: Some(5.0),
                }),
                hard_limit_waived: false,
                backends: vec![BackendShow {
                    address: ip("198.51.100.101"),
                    weight: 1,
                    state: AdminState::Active.into(),
                    health: BackendHealth::Unchecked.into(),
                    effective_weight: None,
                    why: Some("over its hard limit".into()),
                    active_flows: Some(3),
                    report: Some(ReportShow {
                        utilization: Some(0.5),
                        load: Some(5.0),
                        limit_value: None,
                        age_s: Some(1.25),
                        stale: false,
                        error: None,
                    }),
                    over_hard_limit: true,
                }],
            },
        );
        round_trip(Request::BackendList { vip: None }, vec![backend_row()]);
        round_trip(
            Request::VipDel { vip },
            Applied {
                applied: true,
                rings_rebuilt: 1,
                elapsed_ms: 0.5,
            },
        );
        round_trip(
            Request::Stats,
            Stats {
                time_s: 1.7e9,
                vips: vec![VipCounters {
                    vip: VIP.into(),
                    packets: 10,
                    bytes: 1000,
                    new_flows: 2,
                    dropped: 1,
                }],
                backends: vec![BackendCounters {
                    vip: VIP.into(),
                    address: ip("198.51.100.101"),
                    packets: 9,
                    bytes: 900,
                    new_flows: 2,
                }],
                counters: [("tx_ipip".to_string(), 9)].into(),
            },
        );
        round_trip(
            Request::Flow {
                src: ip("203.0.113.7"),
                sport: 40000,
                dst: ip("198.51.100.10"),
                dport: 80,
                protocol: Protocol::Tcp,
            },
            FlowDecision {
                backend: Some("198.51.100.101".into()),
                backend_id: Some(0),
                hash: Some(0xdead_beef),
                slot: Some(17),
                second_hop: None,
                stale_entry: Some("its connection entry was made for another VIP".into()),
                reason: "table slot 17 of 65537".into(),
            },
        );
        round_trip(
            conn_list_request(),
            ConnList {
                rows: vec![conn_row()],
                scanned: 20,
                truncated: false,
                more: true,
                matched: 11,
                pinned: 10,
            },
        );
        let config = Config::from_json(include_str!("../../../examples/lbd.json")).unwrap();
        round_trip(Request::ConfigDump, config);
        let drained = NodeDrainState {
            drained: true,
            was_drained: false,
            announced: vec![ip("198.51.100.10")],
            error: None,
            unsaved: Some("read-only file system".into()),
        };
        round_trip(Request::NodeDrain, drained);
        let spec = crate::capture::CaptureSpec {
            vip: None,
            count: 1,
            duration_s: 1,
            sample: 1,
        };
        round_trip(
            Request::Capture { spec },
            CaptureEvent::Packet(CapturedPacket {
                time_ns: 1,
                ifindex: 2,
                action: "XDP_TX".into(),
                reason: "tx_ipip".into(),
                frame_len: 60,
                data: "00ff".into(),
            }),
        );
        round_trip(
            Request::Capture { spec },
            CaptureEvent::End(CaptureEnd {
                packets: 1,
                ended_by: "count".into(),
                lost: 0,
            }),
        );
    }

    /// The field names scripts and the docs read (`lbctl --json`).
    #[test]
    fn replies_keep_their_json_field_names() {
        let json = serde_json::to_value(status()).unwrap();
        assert_eq!(json["adopted_running_data_plane"], true);
        assert_eq!(json["interfaces"][0]["state"], "gone");
        assert_eq!(json["interfaces"][0]["replaced_existing_program"], true);
        assert_eq!(json["occupancy"]["connections"]["fill"], 0.1);
        assert_eq!(json["ring_digests"][VIP], "abcd");
        let row = serde_json::to_value(backend_row()).unwrap();
        assert_eq!(row["health"], "up");
        assert_eq!(row["state"], "drain");
        assert_eq!(row["drain_remaining_s"], 299);
        let mut off = status();
        off.announce = None;
        off.speaker = None;
        let off = serde_json::to_value(off).unwrap();
        assert!(off["announce"].is_null() && off["speaker"].is_null());
    }

    /// A field added within a version: an older lbctl reads the reply
    /// without it, a newer lbctl reads an older lbd's reply that lacks an
    /// `Option` field.
    #[test]
    fn an_added_field_needs_no_new_version() {
        let mut row = serde_json::to_value(backend_row()).unwrap();
        row["added_later"] = serde_json::json!({"any": "thing"});
        let line = format!(r#"{{"v":1,"ok":true,"data":[{row}]}}"#);
        let read: Vec<BackendRow> = read_reply(&Request::BackendList { vip: None }, &line)
            .unwrap()
            .read;
        assert_eq!(read, vec![backend_row()]);

        let mut older = serde_json::to_value(backend_row()).unwrap();
        older.as_object_mut().unwrap().remove("bytes_per_s");
        let line = format!(r#"{{"v":1,"ok":true,"data":[{older}]}}"#);
        let read: Vec<BackendRow> = read_reply(&Request::BackendList { vip: None }, &line)
            .unwrap()
            .read;
        assert_eq!(read[0].bytes_per_s, None);
    }

    /// What a newer lbd may add within a version is read, not refused: a
    /// field of the configuration or of a hard limit (types that deny
    /// unknown fields where lbd reads them), a value of an enum.
    #[test]
    fn an_added_option_or_enum_value_needs_no_new_version() {
        let mut config = serde_json::to_value(
            Config::from_json(include_str!("../../../examples/lbd.json")).unwrap(),
        )
        .unwrap();
        config["tables"]["added_later"] = 1.into();
        config["added_later"] = serde_json::json!({"x": 1});
        let line = format!(r#"{{"v":1,"ok":true,"data":{config}}}"#);
        let dump = read_reply::<serde_json::Value>(&Request::ConfigDump, &line).unwrap();
        assert_eq!(dump.read, config);

        let vip = VipRef {
            address: ip("198.51.100.10"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let show = serde_json::json!({
            "vip": vip, "mode": "predictive", "source": "flows", "hard_limit_waived": false,
            "hard_limit": {"metric": "queue", "above": 10.0, "window_s": 5},
            "backends": [{
                "address": "198.51.100.101", "weight": 1, "state": "paused",
                "health": "degraded", "over_hard_limit": false,
            }],
        });
        let line = format!(r#"{{"v":1,"ok":true,"data":{show}}}"#);
        let read = read_reply::<VipShow>(&Request::VipShow { vip }, &line)
            .unwrap()
            .read;
        assert_eq!(read.mode, Open::Unknown("predictive".into()));
        assert_eq!(read.source, Open::Known(LoadSource::Flows));
        assert_eq!(read.hard_limit.map(|l| l.resume_level()), Some(8.0));
        let b = &read.backends[0];
        assert_eq!((b.state.name(), b.health.name()), ("paused", "degraded"));

        let mut row = serde_json::to_value(conn_row()).unwrap();
        row["protocol"] = "sctp".into();
        row["table"] = "overflow".into();
        let line = format!(
            r#"{{"v":1,"ok":true,"data":{{"rows":[{row}],"scanned":1,"truncated":false,"more":false,"matched":1,"pinned":1}}}}"#
        );
        let list = read_reply::<ConnList>(&conn_list_request(), &line)
            .unwrap()
            .read;
        let row = &list.rows[0];
        assert_eq!(
            (row.protocol.as_ref().map(Open::name), row.table.name()),
            (Some("sctp"), "overflow")
        );
        let status = serde_json::to_value(status()).unwrap();
        let mut status = status;
        status["interfaces"][0]["state"] = "suspended".into();
        let line = format!(r#"{{"v":1,"ok":true,"data":{status}}}"#);
        let read = read_reply::<Status>(&Request::Status, &line).unwrap().read;
        assert_eq!(read.interfaces[0].state.to_string(), "suspended");
    }
}
