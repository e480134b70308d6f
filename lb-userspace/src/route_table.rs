//! lbd's routes in a kernel routing table, over rtnetlink: the kernel side
//! of announcing VIPs (`announce` decides which).
//!
//! Each announced VIP address has one blackhole host route (/32, /128) in
//! `announce.table`, carrying `announce.protocol` as its route protocol.
//! The protocol number is how lbd knows its own: it lists, adds and
//! removes only routes of that number in that table, and leaves every
//! other route there alone. Blackhole, because the table is only a list
//! for the BGP speaker to read and export (its next hop is the speaker's
//! own address, not the route's): no `ip rule` looks the table up
//! (`rules_looking_up` checks), so the routes never change how this host
//! routes, and if a rule were added later, a blackhole would drop this
//! host's own packets to a VIP rather than send them anywhere.
//!
//! Every call opens its own netlink socket and lists the table again, so
//! a sync is idempotent and converges from whatever the kernel holds: a
//! restart adopts the routes an earlier lbd left, and a route someone
//! removed is added back at the next sync.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
        },
        rule::{RuleAction, RuleAttribute},
    },
};

use crate::config::Announce;

/// A whole sync (lists and writes) gets this long; then it fails, and the
/// daemon goes on and tries again at its next tick.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Why lbd's routes could not be listed or written.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("listing the {family} routes of table {table}: {error}")]
    List {
        family: &'static str,
        table: u32,
        errno: Option<i32>,
        error: String,
    },
    #[error("listing the {family} ip rules: {error}")]
    Rules { family: &'static str, error: String },
    #[error("netlink did not answer within {} s", SYNC_TIMEOUT.as_secs())]
    Timeout,
}

/// What a sync found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The VIP addresses whose route is in the table now.
    pub present: BTreeSet<IpAddr>,
    pub added: Vec<IpAddr>,
    /// VIP routes removed.
    pub withdrawn: Vec<IpAddr>,
    /// Other routes of lbd's protocol removed (not the shape lbd writes),
    /// as `ADDRESS/LEN`.
    pub removed_other: Vec<String>,
    /// Writes that failed, one line each; the others were made.
    pub failed: Vec<String>,
}

/// One route of lbd's protocol found in the table.
struct Found {
    destination: Option<IpAddr>,
    prefix_len: u8,
    kind: RouteType,
    message: RouteMessage,
}

impl Found {
    /// Exactly the route lbd writes for `destination`.
    fn is_vip_route(&self) -> Option<IpAddr> {
        let host = match self.destination? {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (self.kind == RouteType::BlackHole && self.prefix_len == host).then_some(self.destination?)
    }

    fn describe(&self) -> String {
        match self.destination {
            Some(d) => format!("{d}/{}", self.prefix_len),
            None => format!("default/{}", self.prefix_len),
        }
    }
}

/// Make the routes of `announce.protocol` in `announce.table` exactly one
/// blackhole host route per address of `wanted`. Routes of other protocol
/// numbers are never touched; one that takes the place of a VIP's route
/// is reported in `failed`, and that VIP is not announced.
pub async fn sync(announce: Announce, wanted: &BTreeSet<IpAddr>) -> Result<SyncReport, RouteError> {
    tokio::time::timeout(SYNC_TIMEOUT, sync_now(announce, wanted))
        .await
        .map_err(|_| RouteError::Timeout)?
}

/// Remove every route of `announce.protocol` from `announce.table`.
pub async fn remove_all(announce: Announce) -> Result<SyncReport, RouteError> {
    sync(announce, &BTreeSet::new()).await
}

async fn sync_now(announce: Announce, wanted: &BTreeSet<IpAddr>) -> Result<SyncReport, RouteError> {
    let netlink = Netlink::open()?;
    let mut report = SyncReport::default();
    for family in [IpVersion::V4, IpVersion::V6] {
        let is_family = |a: &IpAddr| a.is_ipv4() == (family == IpVersion::V4);
        let found = match list(&netlink.handle, announce, family.clone()).await {
            Ok(found) => found,
            // A host without IPv6 has no IPv6 routes to list, or to remove.
            Err(RouteError::List {
                errno: Some(libc::EAFNOSUPPORT),
                ..
            }) if !wanted.iter().any(is_family) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut present = BTreeSet::new();
        for route in found {
            match route.is_vip_route() {
                Some(address) if wanted.contains(&address) => {
                    present.insert(address);
                }
                vip_route => {
                    let what = route.describe();
                    match netlink.handle.route().del(deletion(&route)).execute().await {
                        Ok(()) => match vip_route {
                            Some(address) => report.withdrawn.push(address),
                            None => report.removed_other.push(what),
                        },
                        Err(e) => report.failed.push(format!(
                            "removing {what} from table {}: {}",
                            announce.table,
                            reason(&e)
                        )),
                    }
                }
            }
        }
        for address in wanted.iter().filter(|a| is_family(a)) {
            if present.contains(address) {
                continue;
            }
            match netlink.handle.route().add(vip_route(announce, *address)).execute().await {
                Ok(()) => {
                    present.insert(*address);
                    report.added.push(*address);
                }
                Err(e) if errno(&e) == Some(libc::EEXIST) => report.failed.push(format!(
                    "{address}: table {} already has a route to it of another protocol number, left alone: the VIP is not announced",
                    announce.table
                )),
                Err(e) => report.failed.push(format!(
                    "adding {address} to table {}: {}",
                    announce.table,
                    reason(&e)
                )),
            }
        }
        report.present.extend(present);
    }
    Ok(report)
}

/// The `ip rule`s that look up kernel table `table`, described: lbd's
/// routes must be in a table none does. Fails only if the rules cannot
/// be listed.
pub async fn rules_looking_up(table: u32) -> Result<Vec<String>, RouteError> {
    tokio::time::timeout(SYNC_TIMEOUT, rules_now(table))
        .await
        .map_err(|_| RouteError::Timeout)?
}

async fn rules_now(table: u32) -> Result<Vec<String>, RouteError> {
    let netlink = Netlink::open()?;
    let mut using = Vec::new();
    for (family, name) in [(IpVersion::V4, "IPv4"), (IpVersion::V6, "IPv6")] {
        let rules = netlink.handle.rule().get(family).execute();
        let rules: Vec<_> = match rules.try_collect().await {
            Ok(rules) => rules,
            Err(e) if name == "IPv6" && errno(&e) == Some(libc::EAFNOSUPPORT) => continue,
            Err(e) => {
                return Err(RouteError::Rules {
                    family: name,
                    error: reason(&e),
                });
            }
        };
        for rule in rules {
            let looked_up = rule
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(rule.header.table.into());
            if rule.header.action == RuleAction::ToTable && looked_up == table {
                let priority = rule.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                using.push(match priority {
                    Some(p) => format!("ip rule {p} ({name})"),
                    None => format!("an {name} ip rule"),
                });
            }
        }
    }
    Ok(using)
}

/// A netlink socket for one call; its task ends with it.
struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// With strict checking where the kernel has it (4.20+), so that the
    /// kernel sends only the routes of the table asked for; the routes
    /// are filtered here too, for older kernels.
    fn open() -> Result<Self, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .or_else(|_| rtnetlink::new_connection())
            .map_err(RouteError::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Self { handle, task })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes of `family` with lbd's protocol in lbd's table.
async fn list(
    handle: &Handle,
    announce: Announce,
    family: IpVersion,
) -> Result<Vec<Found>, RouteError> {
    let name = if family == IpVersion::V4 {
        "IPv4"
    } else {
        "IPv6"
    };
    let mut request = RouteMessage::default();
    request.header.address_family = if family == IpVersion::V4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    request.header.protocol = RouteProtocol::from(announce.protocol);
    set_table(&mut request, announce.table);
    let mut routes = handle.route().get(request).execute();
    let mut found = Vec::new();
    while let Some(route) = routes.next().await {
        let route = match route {
            Ok(route) => route,
            // Asked for by number, a table that holds no route yet does
            // not exist: nothing of ours is in it.
            Err(e) if errno(&e) == Some(libc::ENOENT) => break,
            Err(e) => {
                return Err(RouteError::List {
                    family: name,
                    table: announce.table,
                    errno: errno(&e),
                    error: reason(&e),
                });
            }
        };
        if table_of(&route) != announce.table
            || u8::from(route.header.protocol) != announce.protocol
        {
            continue;
        }
        let destination = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        found.push(Found {
            destination,
            prefix_len: route.header.destination_prefix_length,
            kind: route.header.kind,
            message: route,
        });
    }
    Ok(found)
}

/// The route that announces `address`.
fn vip_route(announce: Announce, address: IpAddr) -> RouteMessage {
    let protocol = RouteProtocol::from(announce.protocol);
    let mut route = match address {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .protocol(protocol)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .protocol(protocol)
            .kind(RouteType::BlackHole)
            .build(),
    };
    set_table(&mut route, announce.table);
    route
}

/// The request that removes `route` and nothing else: its header (table,
/// protocol, type and scope must all match) and what identifies it.
fn deletion(route: &Found) -> RouteMessage {
    let mut request = RouteMessage::default();
    request.header = route.message.header.clone();
    request.attributes = route
        .message
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Source(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Priority(_)
            )
        })
        .cloned()
        .collect();
    request
}

/// Name table `table` as the kernel reads it: in the header up to 255,
/// and always in `RTA_TABLE`, which wins.
fn set_table(route: &mut RouteMessage, table: u32) {
    route.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    route
        .attributes
        .retain(|a| !matches!(a, RouteAttribute::Table(_)));
    route.attributes.push(RouteAttribute::Table(table));
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(route.header.table.into())
}

/// The errno of a netlink error reply.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// A netlink error as an operator reads it.
fn reason(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.code.is_some() => {
            let io = m.to_io();
            if io.raw_os_error() == Some(libc::EPERM) {
                format!("{io} (lbd needs CAP_NET_ADMIN)")
            } else {
                io.to_string()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vip_route_is_a_blackhole_host_route_of_our_table_and_protocol() {
        let announce = Announce {
            table: 1000,
            protocol: 201,
        };
        let route = vip_route(announce, "198.51.100.10".parse().unwrap());
        assert_eq!(route.header.address_family, AddressFamily::Inet);
        assert_eq!(route.header.destination_prefix_length, 32);
        assert_eq!(route.header.kind, RouteType::BlackHole);
        assert_eq!(u8::from(route.header.protocol), 201);
        // Beyond 255 the header says "unspecified" and RTA_TABLE names it.
        assert_eq!(route.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(table_of(&route), 1000);
        let v6 = vip_route(
            Announce {
                table: 200,
                protocol: 201,
            },
            "2001:db8::10".parse().unwrap(),
        );
        assert_eq!(v6.header.destination_prefix_length, 128);
        assert_eq!(v6.header.table, 200);
        assert_eq!(table_of(&v6), 200);
    }

    #[test]
    fn only_a_blackhole_host_route_counts_as_a_vip_route() {
        let found = |prefix_len, kind| Found {
            destination: Some("198.51.100.10".parse().unwrap()),
            prefix_len,
            kind,
            message: RouteMessage::default(),
        };
        assert!(found(32, RouteType::BlackHole).is_vip_route().is_some());
        assert!(found(24, RouteType::BlackHole).is_vip_route().is_none());
        assert!(found(32, RouteType::Unicast).is_vip_route().is_none());
        assert_eq!(found(24, RouteType::Unicast).describe(), "198.51.100.10/24");
    }
}
