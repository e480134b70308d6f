//! Where frames leave the LB host. The program redirects only to interfaces
//! in `TX_PORTS` (each with its MAC in `TX_PORT_MACS`): those of
//! `interfaces`, and `next_hop.egress_interface` while `fib` is off, which
//! is also where frames towards a configured next-hop MAC leave
//! (`LbConfig`'s `egress_ifindex` and `egress_mac`).
//!
//! lbd resolves them from this host's interfaces at start and for every new
//! configuration (SIGHUP, `lbctl`), before anything is written, so a change
//! of `next_hop.fib` or of the egress interface takes effect at once. A port
//! is added before the configuration that may redirect to it is written, and
//! removed only after the one that no longer does.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::{
    config::Config,
    image::Egress,
    maps::{Maps, MapsError},
    netdev,
};

/// The interfaces a configuration sends frames out of, as this host's
/// network namespace numbers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outlets {
    /// Where frames to a configured next-hop MAC leave; zero: back out of
    /// the interface they came in on.
    pub egress: Egress,
    /// Every interface the program may redirect to: ifindex → MAC.
    pub ports: BTreeMap<u32, [u8; 6]>,
}

/// Look the interfaces of `config` up; an error names the field.
pub fn resolve(config: &Config) -> anyhow::Result<Outlets> {
    let mut ports = BTreeMap::new();
    for iface in &config.interfaces {
        let (ifindex, mac) =
            lookup(&iface.name).with_context(|| format!("interfaces: {}", iface.name))?;
        ports.insert(ifindex, mac);
    }
    let egress = match &config.next_hop.egress_interface {
        Some(name) if !config.next_hop.fib => {
            let (ifindex, mac) = lookup(name).context("next_hop.egress_interface")?;
            ports.insert(ifindex, mac);
            Egress { ifindex, mac }
        }
        _ => Egress::default(),
    };
    Ok(Outlets { egress, ports })
}

fn lookup(name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    Ok((netdev::ifindex(name)?, netdev::mac_address(name)?))
}

/// Allow redirects to every port of `outlets`: before the configuration
/// that may redirect to them is written.
pub fn open(maps: &mut Maps, outlets: &Outlets) -> Result<(), MapsError> {
    for (ifindex, mac) in &outlets.ports {
        maps.add_tx_port(*ifindex, *mac)?;
    }
    Ok(())
}

/// Stop redirects to any port `outlets` does not have (a former egress
/// interface, an interface an earlier lbd had): after the configuration
/// that no longer redirects there is written.
pub fn close_others(maps: &mut Maps, outlets: &Outlets) -> Result<(), MapsError> {
    for (ifindex, _) in maps.tx_ports()? {
        if !outlets.ports.contains_key(&ifindex) {
            maps.remove_tx_port(ifindex)?;
        }
    }
    Ok(())
}
