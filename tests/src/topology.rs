//! The end-to-end topology shared by the e2e tests and the demo: a client,
//! a load balancer and N backends, each in its own namespace, on one L2
//! segment (a bridge in a fifth namespace).
//!
//! ```text
//!   client 203.0.113.7 ─┐
//!   lb     198.51.100.2 ─┼─ br0 (ns "net")
//!   b1..bN 198.51.100.101.. ─┘   VIP 198.51.100.10 on each backend's lo,
//!                               lb_decap on each backend's eth0
//! ```
//!
//! The client routes the VIP to the LB; the LB tunnels to a backend
//! (XDP_TX back out of its one port); the backend's decap program strips
//! the tunnel and its kernel answers the client directly (DSR).
//! Everything is removed when the `Topology` is dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{XdpMode, xdp::XdpLinkId};
use lb_common::maps::PROG_DECAP;
use lb_userspace::{
    datapath::{Datapath, MapSizes},
    decap_sources::{DecapSources, IpNet},
    maps::Maps,
};

use crate::{
    backend_server::BackendServer,
    netns::{Netns, veth},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
pub const LB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);

pub struct BackendHost {
    pub name: String,
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub mac: String,
}

impl BackendHost {
    /// Start this backend's servers: HTTP on port 80 (IPv4 and IPv6) and
    /// the UDP echo bound to the VIP, so replies leave with it as source.
    pub fn serve(&self) -> BackendServer {
        BackendServer::start(
            &self.ns,
            &self.name,
            "[::]:80".parse().expect("address"),
            (VIP, 53).into(),
        )
    }
}

pub struct Topology {
    pub net: Netns,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<BackendHost>,
    /// Loads of the data plane used only for their decap program: one per
    /// backend (its tunnel addresses and counters), one as a pass-through
    /// on the bridge port facing the LB (a veth receiving XDP_TX frames
    /// needs an XDP program on its peer).
    decap: Vec<Decap>,
    pass: Datapath,
}

/// A backend's `lb_decap`: the program, its maps, and its attachment to
/// the backend's eth0 while it has one.
struct Decap {
    dp: Datapath,
    maps: Maps,
    link: Option<XdpLinkId>,
}

fn sysctl(ns: &Netns, settings: &[&str]) {
    for s in settings {
        ns.exec(&["sysctl", "-q", "-w", s]);
    }
}

impl Topology {
    pub fn new(backends: usize) -> Self {
        let net = Netns::new("net");
        net.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        net.exec(&["ip", "link", "set", "br0", "up"]);
        let join = |host: &Netns, port: &str| {
            veth(host, "eth0", &net, port);
            net.exec(&["ip", "link", "set", port, "master", "br0"]);
            // No router advertisements or DAD delays in the lab.
            host.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"]);
        };

        let client = Netns::new("client");
        join(&client, "p-client");
        // A veth leaves checksums to "hardware" that never computes them;
        // the XDP path forwards frames as they are, so the client must
        // finish its checksums itself, as a real NIC would on the wire.
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        client.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"]);
        client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{CLIENT6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        client.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "eth0"]);
        client.exec(&[
            "ip",
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &LB.to_string(),
            "dev",
            "eth0",
        ]);
        client.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:100::/64",
            "dev",
            "eth0",
        ]);
        client.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &LB6.to_string(),
            "dev",
            "eth0",
        ]);

        let lb = Netns::new("lb");
        join(&lb, "p-lb");
        sysctl(
            &lb,
            &[
                "net.ipv4.conf.all.forwarding=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        lb.exec(&["ip", "addr", "add", &format!("{LB}/24"), "dev", "eth0"]);
        lb.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{LB6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        lb.exec(&["ip", "route", "add", "203.0.113.0/24", "dev", "eth0"]);
        lb.exec(&["ip", "-6", "route", "add", "2001:db8:c::/64", "dev", "eth0"]);

        let sizes = MapSizes {
            max_vips: 4,
            max_backends: 16,
            ring_size: 251,
            conn_entries: 1024,
            probation_entries: 16,
            frag_entries: 16,
        };
        let mut decaps = Vec::new();
        let mut pass = Datapath::load(sizes).expect("load the pass-through program");
        net.enter(|| pass.attach(PROG_DECAP, "p-lb", XdpMode::Driver))
            .expect("pass-through on p-lb");

        let client_mac = client.mac_text("eth0");
        let mut hosts = Vec::new();
        for i in 0..backends {
            let name = format!("b{}", i + 1);
            let ns = Netns::new(&name);
            join(&ns, &format!("p-{name}"));
            let addr = Ipv4Addr::new(198, 51, 100, 101 + i as u8);
            let addr6 = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 1, 1 + i as u16);
            // The VIP lives on loopback; the backend must not answer ARP or
            // ND for it on the segment.
            sysctl(
                &ns,
                &[
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.eth0.rp_filter=0",
                ],
            );
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
            // Clients' MSS leaves room for the 20-byte tunnel header.
            ns.exec(&[
                "ip",
                "route",
                "add",
                "203.0.113.0/24",
                "dev",
                "eth0",
                "advmss",
                "1440",
            ]);
            ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:c::/64",
                "dev",
                "eth0",
                "advmss",
                "1420",
            ]);
            let mut decap = Datapath::load(sizes).expect("load the decap program");
            let mut decap_maps = Maps::take(&mut decap.ebpf, sizes.ring_size).expect("decap maps");
            decap_maps
                .add_decap_addr(IpAddr::V4(addr))
                .expect("decap address");
            decap_maps
                .add_decap_addr(IpAddr::V6(addr6))
                .expect("decap address");
            // Tunnels only from the LB's tunnel sources.
            decap_maps
                .set_decap_sources(&DecapSources::Only(vec![
                    IpNet::from(IpAddr::V4(LB)),
                    IpNet::from(IpAddr::V6(LB6)),
                ]))
                .expect("decap sources");
            let link = ns
                .enter(|| decap.attach(PROG_DECAP, "eth0", XdpMode::Driver))
                .expect("decap on a backend");
            decaps.push(Decap {
                dp: decap,
                maps: decap_maps,
                link: Some(link),
            });
            // In this lab the client shares the backends' segment (real
            // clients sit behind a router the backends resolve). Replies
            // to it stalled on neighbour discovery for IPv6 here; a static
            // entry keeps the lab about the load balancer, not ND.
            ns.exec(&[
                "ip",
                "-6",
                "neigh",
                "replace",
                &CLIENT6.to_string(),
                "lladdr",
                &client_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            let mac = ns.mac_text("eth0");
            // The LB knows its backends' MACs from the start: the FIB
            // lookup then never meets an unresolved neighbour.
            lb.exec(&[
                "ip",
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            lb.exec(&[
                "ip",
                "-6",
                "neigh",
                "replace",
                &addr6.to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            hosts.push(BackendHost {
                name,
                ns,
                addr,
                addr6,
                mac,
            });
        }
        Self {
            net,
            client,
            lb,
            backends: hosts,
            decap: decaps,
            pass,
        }
    }

    /// Tunnel packets backend `i` has received and decapsulated so far.
    pub fn tunnel_packets(&self, i: usize) -> u64 {
        self.decap[i]
            .maps
            .decap_count(lb_common::stats::DecapReason::Decapsulated)
            .expect("decap counter")
    }

    /// Backend `i`'s decap counter of `reason`.
    pub fn decap_count(&self, i: usize, reason: lb_common::stats::DecapReason) -> u64 {
        self.decap[i]
            .maps
            .decap_count(reason)
            .expect("decap counter")
    }

    /// Second chance on every backend, as `lb-decap attach --gue-port
    /// 6080 --peer ...` with the other backends as peers; and the bridge
    /// ports facing the backends get the pass-through program, since a
    /// backend now sends frames back out (XDP_TX) too.
    pub fn enable_second_chance(&mut self) {
        let all: Vec<(IpAddr, IpAddr)> = self
            .backends
            .iter()
            .map(|b| (IpAddr::V4(b.addr), IpAddr::V6(b.addr6)))
            .collect();
        for (i, decap) in self.decap.iter_mut().enumerate() {
            let peers: Vec<IpNet> = all
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, (a, a6))| [IpNet::from(*a), IpNet::from(*a6)])
                .collect();
            decap.maps.set_decap_peers(&peers).expect("peers");
            decap
                .maps
                .set_second_chance(&lb_common::maps::SecondChance {
                    gue_port: lb_common::gue::DEFAULT_GUE_PORT,
                    _pad: [0; 2],
                })
                .expect("gue port");
        }
        for b in &self.backends {
            let port = format!("p-{}", b.name);
            let pass = &mut self.pass;
            self.net
                .enter(|| pass.attach(PROG_DECAP, &port, XdpMode::Driver))
                .expect("pass-through on a backend's bridge port");
        }
    }

    /// Detach backend `i`'s `lb_decap` from its eth0, as when its
    /// interface is recreated: its service still answers on the backend
    /// address, but tunnelled packets no longer reach it.
    pub fn detach_decap(&mut self, i: usize) {
        let decap = &mut self.decap[i];
        let link = decap.link.take().expect("decap attached");
        decap
            .dp
            .decap()
            .expect("decap program")
            .detach(link)
            .expect("detach lb_decap");
    }

    /// lbd configuration for this topology: one VIP (IPv4, `port`,
    /// `protocol`) over every backend, IP-in-IP, FIB next hops.
    pub fn lbd_config(
        &self,
        port: u16,
        protocol: &str,
        check: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "interfaces": [{"name": "eth0"}],
            "tunnel_source": {"ipv4": LB.to_string(), "ipv6": LB6.to_string()},
            "next_hop": {"fib": true},
            "tables": {"ring_size": 4093, "conn_entries": 65536, "max_vips": 8, "max_backends": 64},
            "vips": [{
                "address": VIP.to_string(), "port": port, "protocol": protocol,
                "health_check": check,
                "backends": self.backends.iter().map(|b| serde_json::json!({"address": b.addr.to_string()})).collect::<Vec<_>>(),
            }],
        })
    }
}
