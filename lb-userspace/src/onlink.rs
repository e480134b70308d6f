//! Whether the backends of `l2_dsr` VIPs are on a link of the LB.
//!
//! L2 DSR rewrites only the destination MAC; the packet keeps the VIP as its
//! destination. A backend behind a router cannot be reached that way: the
//! frame would go to the router, which routes the VIP back to the LB, and
//! round it goes. So lbd asks the kernel's routing table (`RTM_GETROUTE`
//! over netlink, the question `ip route get` asks) about each `l2_dsr`
//! backend without a `mac`: the route must be direct (no gateway) and leave
//! through one of `interfaces`. A `mac` is the operator's word that the
//! backend is on the link, and is taken as it is.
//!
//! Asked at start and for every new configuration, about the backends it
//! adds (a backend already running is not asked again, so a route that
//! changes later does not block unrelated edits). Routes change while lbd
//! runs, so the data plane checks every packet too (`drop_l2_dsr_off_link`).

use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{
    config::{Config, ConfigError, Forwarding, Problem, Vip},
    netdev,
};

/// What the kernel's routing table says about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Unicast route out of interface `ifindex`, through `gateway` if any.
    Unicast {
        ifindex: u32,
        gateway: Option<IpAddr>,
    },
    /// Any other kind: local (an address of this host), unreachable,
    /// blackhole, ...
    Other(RouteType),
    /// No route: the kernel's answer.
    Unreachable(String),
}

/// A netlink socket to ask the kernel for routes.
pub struct Routes {
    socket: Socket,
    sequence: u32,
}

impl Routes {
    pub fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// The route this host would send a packet to `addr` by.
    pub fn get(&mut self, addr: IpAddr) -> std::io::Result<Route> {
        let mut message = RouteMessage::default();
        let (family, prefix, dst) = match addr {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        message.header.address_family = family;
        message.header.destination_prefix_length = prefix;
        message.attributes.push(RouteAttribute::Destination(dst));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
        self.sequence += 1;
        request.header.flags = NLM_F_REQUEST;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let (reply, _) = self.socket.recv_from_full()?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                Ok(route_of(&route))
            }
            NetlinkPayload::Error(e) => Ok(Route::Unreachable(e.to_io().to_string())),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected netlink reply {:?}", other.message_type()),
            )),
        }
    }
}

fn route_of(route: &RouteMessage) -> Route {
    if route.header.kind != RouteType::Unicast {
        return Route::Other(route.header.kind);
    }
    let mut ifindex = 0;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(i) => ifindex = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            // An IPv4 route through an IPv6 router (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            _ => {}
        }
    }
    Route::Unicast { ifindex, gateway }
}

/// Why a route does not put `addr` on a link of `interfaces`, if it does not.
pub fn off_link(addr: IpAddr, route: &Route, interfaces: &BTreeSet<u32>) -> Option<String> {
    let dev = |ifindex: u32| netdev::name(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"));
    let why = match route {
        Route::Unicast {
            ifindex,
            gateway: Some(gateway),
        } => format!("the kernel routes it via {gateway} dev {}", dev(*ifindex)),
        Route::Unicast {
            ifindex,
            gateway: None,
        } if !interfaces.contains(ifindex) => format!(
            "the kernel routes it out of {}, which is not in interfaces",
            dev(*ifindex)
        ),
        Route::Unicast { .. } => return None,
        Route::Other(RouteType::Local) => "it is an address of this host".into(),
        Route::Other(kind) => format!("the kernel's route to it is of type {kind:?}"),
        Route::Unreachable(reason) => format!("the kernel has no route to it: {reason}"),
    };
    Some(format!(
        "{addr} is not on a link of this host's interfaces ({why}): an l2_dsr backend must be, or frames for it loop through the router; give its mac if it is on-link"
    ))
}

/// Each `l2_dsr` backend of `config` without a `mac`, not already running
/// that way in `running`, must be on a link of `config.interfaces`.
pub fn check(config: &Config, running: Option<&Config>) -> Result<(), ConfigError> {
    let asked: Vec<(String, IpAddr)> = config
        .vips
        .iter()
        .enumerate()
        .filter(|(_, vip)| needs_mac_or_link(config, vip))
        .flat_map(|(v, vip)| {
            vip.backends
                .iter()
                .enumerate()
                .filter(move |(_, b)| b.mac.is_none() && !runs_unchecked(running, vip, b.address))
                .map(move |(b, backend)| {
                    (format!("vips[{v}].backends[{b}].address"), backend.address)
                })
        })
        .collect();
    if asked.is_empty() {
        return Ok(());
    }
    let problem = |path: String, reason: String| Problem { path, reason };
    let host = |reason: String| ConfigError {
        problems: vec![problem(String::new(), reason)],
    };
    let mut interfaces = BTreeSet::new();
    for (i, iface) in config.interfaces.iter().enumerate() {
        let ifindex =
            netdev::ifindex(&iface.name).map_err(|e| host(format!("interfaces[{i}]: {e}")))?;
        interfaces.insert(ifindex);
    }
    let mut routes =
        Routes::open().map_err(|e| host(format!("opening a netlink socket for routes: {e}")))?;
    let mut problems = Vec::new();
    for (path, addr) in asked {
        let route = routes
            .get(addr)
            .map_err(|e| host(format!("asking the kernel for the route to {addr}: {e}")))?;
        if let Some(reason) = off_link(addr, &route, &interfaces) {
            problems.push(problem(path, reason));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// An `l2_dsr` VIP whose backends' next hop the FIB finds (with `fib` off,
/// validation requires every one to have a `mac`).
fn needs_mac_or_link(config: &Config, vip: &Vip) -> bool {
    vip.forwarding == Forwarding::L2Dsr && config.next_hop.fib
}

/// Whether `running` has `addr` as a backend of the same VIP, `l2_dsr`
/// without a `mac`: it was asked about when it came.
fn runs_unchecked(running: Option<&Config>, vip: &Vip, addr: IpAddr) -> bool {
    let Some(running) = running else {
        return false;
    };
    running.vips.iter().any(|r| {
        r.address == vip.address
            && r.port == vip.port
            && r.protocol == vip.protocol
            && needs_mac_or_link(running, r)
            && r.backends
                .iter()
                .any(|b| b.address == addr && b.mac.is_none())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 150);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);

    #[test]
    fn only_a_direct_route_out_of_an_lb_interface_is_on_link() {
        let ours = BTreeSet::from([2]);
        let direct = Route::Unicast {
            ifindex: 2,
            gateway: None,
        };
        assert_eq!(off_link(V4.into(), &direct, &ours), None);
        let cases = [
            (
                Route::Unicast {
                    ifindex: 2,
                    gateway: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
                },
                "the kernel routes it via 192.0.2.1 dev ",
            ),
            (
                Route::Unicast {
                    ifindex: 3,
                    gateway: None,
                },
                "which is not in interfaces",
            ),
            (
                Route::Other(RouteType::Local),
                "it is an address of this host",
            ),
            (
                Route::Other(RouteType::BlackHole),
                "the kernel's route to it is of type BlackHole",
            ),
            (
                Route::Unreachable("Network is unreachable (os error 101)".into()),
                "the kernel has no route to it: Network is unreachable",
            ),
        ];
        for (route, why) in cases {
            let message = off_link(V6.into(), &route, &ours).expect("off-link");
            assert!(
                message.starts_with("2001:db8:200::1 is not on a link of this host's interfaces (")
                    && message.contains(why),
                "{message}"
            );
        }
    }
}
