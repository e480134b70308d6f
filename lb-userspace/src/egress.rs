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
//!
//! An interface of `interfaces` can vanish while lbd runs (the kernel then
//! drops its port itself). Nothing written afterwards may depend on it: a
//! new configuration leaves it out until it returns (`resolve_present`),
//! and a write opens only the ports that differ from those open already,
//! so a health change never asks the kernel for a port it cannot have.

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

/// Look the interfaces of `config` up, every one of which must exist (at
/// start); an error names the field.
pub fn resolve(config: &Config) -> anyhow::Result<Outlets> {
    resolve_with(config, false).map(|(outlets, _)| outlets)
}

/// Look the interfaces of `config` up for a configuration applied while lbd
/// runs: an interface of `interfaces` that is gone right now is left out
/// and named in the list returned (lbd watches it and opens its port when
/// it returns). `next_hop.egress_interface` must exist: a configuration
/// that sends out of an interface there is not is refused.
pub fn resolve_present(config: &Config) -> anyhow::Result<(Outlets, Vec<String>)> {
    resolve_with(config, true)
}

fn resolve_with(config: &Config, skip_gone: bool) -> anyhow::Result<(Outlets, Vec<String>)> {
    let mut ports = BTreeMap::new();
    let mut gone = Vec::new();
    for iface in &config.interfaces {
        if skip_gone && !netdev::exists(&iface.name) {
            gone.push(iface.name.clone());
            continue;
        }
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
    Ok((Outlets { egress, ports }, gone))
}

fn lookup(name: &str) -> anyhow::Result<(u32, [u8; 6])> {
    Ok((netdev::ifindex(name)?, netdev::mac_address(name)?))
}

/// Allow redirects to every port of `outlets` that `open_now` (the outlets
/// written before; `None` at start) does not have with the same MAC: before
/// the configuration that may redirect to them is written. A port open
/// already is not written again, so a write never depends on an interface
/// that vanished since (the kernel refuses a port for it).
pub fn open(
    maps: &mut Maps,
    outlets: &Outlets,
    open_now: Option<&Outlets>,
) -> Result<(), MapsError> {
    for (ifindex, mac) in &outlets.ports {
        if open_now.and_then(|o| o.ports.get(ifindex)) != Some(mac) {
            maps.add_tx_port(*ifindex, *mac)?;
        }
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
