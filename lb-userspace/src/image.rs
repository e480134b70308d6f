//! The data plane's desired contents, computed from the configuration, the
//! id allocation and each backend's health and drain state. `sync` writes
//! the difference between two images to the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    flow::{PROTO_TCP, PROTO_UDP},
    maps::*,
};

use crate::{
    addr::to_map,
    config::{AdminState, Config, Forwarding, Protocol, TooBigAnswers},
    ids::{BackendKey, IdError, Ids, VipKeyOrd},
    maglev::MaglevBackend,
};

/// What the daemon knows about a backend beyond its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// Passing its health checks (always true without checks).
    pub healthy: bool,
    /// Draining for longer than the VIP's drain timeout: cut off.
    pub drain_expired: bool,
    /// The weight its VIP's ring is built with, if not the configured
    /// one: the weight controller's (`weight_controller`, in its units).
    pub weight: Option<u32>,
}

impl Default for BackendStatus {
    fn default() -> Self {
        Self {
            healthy: true,
            drain_expired: false,
            weight: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipImage {
    pub id: u32,
    pub flags: u32,
    /// The backends that get new flows, with their weights: the Maglev
    /// table is built from these (sorted, so equal sets compare equal).
    pub members: Vec<MaglevBackend>,
    /// How long a slot's previous owner gets a second hop after a
    /// rebuild moves the slot; zero: never (`second_chance`).
    pub second_chance_window: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub config: LbConfig,
    pub too_big_limit: TooBigLimit,
    /// Promotions into the connection table per second, all CPUs together
    /// (`promotion_limit` splits them among the CPUs).
    pub promotions_per_second: u32,
    /// The GUE port of second-chance packets; 0 with second chance off.
    pub second_chance: SecondChance,
    pub vips: BTreeMap<VipKeyOrd, VipImage>,
    pub backends: BTreeMap<u32, Backend>,
}

pub fn vip_key(address: IpAddr, port: u16, protocol: Protocol) -> VipKeyOrd {
    let (addr, family) = to_map(address);
    let proto = match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    VipKeyOrd {
        addr,
        port,
        proto,
        family,
    }
}

/// Where packets leave when the next hop is configured, not looked up
/// (`next_hop.egress_interface` with `fib` off, resolved by `egress`);
/// zero: back out of the interface they came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    pub ifindex: u32,
    /// That interface's MAC, the source of the frames sent out of it.
    pub mac: [u8; 6],
}

/// The global configuration entry.
pub fn lb_config(config: &Config, egress: Egress) -> LbConfig {
    let mut outer_src_v4 = [0u8; 4];
    if let Some(a) = config.tunnel_source.ipv4 {
        outer_src_v4 = a.octets();
    }
    LbConfig {
        ring_size: config.tables.ring_size,
        flags: if config.next_hop.fib {
            CFG_F_NEXTHOP_FIB
        } else {
            0
        } | if config.vips.iter().any(|v| v.port == 0) {
            CFG_F_PORTLESS_VIPS
        } else {
            0
        } | CFG_LOOKUP_CACHES,
        outer_src_v6: config
            .tunnel_source
            .ipv6
            .map(|a| a.octets())
            .unwrap_or_default(),
        outer_src_v4,
        gateway_mac: config.next_hop.gateway_mac.map(|m| m.0).unwrap_or_default(),
        mtu: config.mtu,
        egress_ifindex: egress.ifindex,
        egress_mac: egress.mac,
        _pad: [0; 2],
    }
}

/// The rate limit of ICMP too-big answers, as the data plane's token
/// bucket counts it: credit in nanoseconds.
pub fn too_big_limit(answers: &TooBigAnswers) -> TooBigLimit {
    if answers.per_second == 0 {
        return TooBigLimit::default();
    }
    let interval_ns = 1_000_000_000 / answers.per_second as u64;
    TooBigLimit {
        interval_ns,
        burst_ns: interval_ns * answers.burst as u64,
    }
}

/// The promotion limit of `per_second` promotions on all `cpus` CPUs
/// together, as each CPU's token bucket counts it: an equal share each (at
/// least one a second), and a CPU may save up one second of its share.
pub fn promotion_limit(per_second: u32, cpus: u32) -> PromotionLimit {
    let share = (per_second / cpus.max(1)).max(1) as u64;
    PromotionLimit {
        interval_ns: NS_PER_SEC / share,
        burst_ns: NS_PER_SEC,
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// Compute the image of `config`, allocating ids for new VIPs and backends.
pub fn build(
    config: &Config,
    ids: &mut Ids,
    status: impl Fn(&BackendKey) -> BackendStatus,
    egress: Egress,
) -> Result<Image, IdError> {
    let mut vips = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for vip in &config.vips {
        let key = vip_key(vip.address, vip.port, vip.protocol);
        let vip_id = ids.vip_or_new(key)?;
        let mut flags = 0;
        if vip.affinity {
            flags |= VIP_F_AFFINITY;
        }
        if vip.port == 0 {
            flags |= VIP_F_PORTLESS;
        }
        if vip.forwarding == Forwarding::L2Dsr {
            flags |= VIP_F_L2_DSR;
        }
        if vip.stateless {
            flags |= VIP_F_STATELESS;
        }
        let mut members = Vec::new();
        for b in &vip.backends {
            let bkey = BackendKey {
                vip: key,
                addr: b.address,
            };
            let id = ids.backend_or_new(bkey)?;
            let st = status(&bkey);
            let mut bflags = BACKEND_F_ACTIVE;
            let down = !st.healthy
                || b.state == AdminState::Disabled
                || (b.state == AdminState::Drain && st.drain_expired);
            if down {
                bflags |= BACKEND_F_DOWN;
            }
            if b.state == AdminState::Drain {
                bflags |= BACKEND_F_DRAINING;
            }
            let (addr, family) = to_map(b.address);
            backends.insert(
                id,
                Backend {
                    addr,
                    family,
                    flags: bflags,
                    mac: b.mac.map(|m| m.0).unwrap_or_default(),
                    vip_id,
                },
            );
            if !down && b.state == AdminState::Active {
                members.push(MaglevBackend {
                    id,
                    addr: b.address,
                    weight: st.weight.unwrap_or(b.weight),
                });
            }
        }
        members.sort_by_key(|m| (m.addr, m.id));
        // Effective weights of 0 (hard limits) never leave a VIP with
        // backends in service but an empty ring: then all take their
        // configured weights.
        if members.iter().all(|m| m.weight == 0) {
            for m in &mut members {
                m.weight = vip
                    .backends
                    .iter()
                    .find(|b| b.address == m.addr)
                    .map_or(1, |b| b.weight);
            }
        }
        let second_chance_window = if config.second_chance.enabled {
            vip.second_chance_window()
        } else {
            std::time::Duration::ZERO
        };
        vips.insert(
            key,
            VipImage {
                id: vip_id,
                flags,
                members,
                second_chance_window,
            },
        );
    }
    Ok(Image {
        config: lb_config(config, egress),
        too_big_limit: too_big_limit(&config.too_big_answers),
        promotions_per_second: config.promotions_per_second(),
        second_chance: SecondChance {
            gue_port: if config.second_chance.enabled {
                config.second_chance.gue_port
            } else {
                0
            },
            _pad: [0; 2],
        },
        vips,
        backends,
    })
}

/// Ids in `ids` that `image` no longer uses.
pub fn unused(ids: &Ids, image: &Image) -> (Vec<VipKeyOrd>, Vec<BackendKey>) {
    let used_backends: BTreeSet<u32> = image.backends.keys().copied().collect();
    let vips = ids
        .vips()
        .filter(|(k, _)| !image.vips.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    let backends = ids
        .backends()
        .filter(|(_, id)| !used_backends.contains(id))
        .map(|(k, _)| *k)
        .collect();
    (vips, backends)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "interfaces": [{"name": "eth0"}],
        "tunnel_source": {"ipv4": "198.51.100.2"},
        "vips": [{
            "address": "198.51.100.10", "port": 0, "protocol": "udp", "affinity": true,
            "backends": [
                {"address": "198.51.100.101", "weight": 3},
                {"address": "198.51.100.102", "state": "drain"},
                {"address": "198.51.100.103", "state": "disabled"},
                {"address": "198.51.100.104"}
            ]
        }]
    }"#;

    #[test]
    fn flags_and_members_follow_state_and_health() {
        let config = Config::from_json(CONFIG).unwrap();
        let mut ids = Ids::new(4, 16);
        let sick: IpAddr = "198.51.100.104".parse().unwrap();
        let image = build(
            &config,
            &mut ids,
            |k| BackendStatus {
                healthy: k.addr != sick,
                drain_expired: false,
                weight: None,
            },
            Egress::default(),
        )
        .unwrap();
        let vip = image.vips.values().next().unwrap();
        assert_eq!(vip.flags, VIP_F_AFFINITY | VIP_F_PORTLESS);
        let members: Vec<String> = vip
            .members
            .iter()
            .map(|m| format!("{}x{}", m.addr, m.weight))
            .collect();
        assert_eq!(members, ["198.51.100.101x3"]);
        let flags: Vec<u8> = image.backends.values().map(|b| b.flags).collect();
        assert_eq!(
            flags,
            [
                BACKEND_F_ACTIVE,
                BACKEND_F_ACTIVE | BACKEND_F_DRAINING,
                BACKEND_F_ACTIVE | BACKEND_F_DOWN,
                BACKEND_F_ACTIVE | BACKEND_F_DOWN,
            ]
        );
        assert_eq!(image.config.outer_src_v4, [198, 51, 100, 2]);
        // The one VIP is port-less, so the program must look port 0 up.
        assert_eq!(
            image.config.flags,
            CFG_F_NEXTHOP_FIB | CFG_F_PORTLESS_VIPS | CFG_LOOKUP_CACHES
        );
    }

    /// Weight 0 (a hard limit) takes a backend out of the ring but not
    /// out of service; all at 0, the configured weights hold the ring.
    #[test]
    fn zero_weights_leave_the_ring_unless_all_are_zero() {
        let config = Config::from_json(CONFIG).unwrap();
        let mut ids = Ids::new(4, 16);
        let first: IpAddr = "198.51.100.101".parse().unwrap();
        let members = |ids: &mut Ids, zero: &dyn Fn(IpAddr) -> bool| {
            let image = build(
                &config,
                ids,
                |k| BackendStatus {
                    weight: Some(if zero(k.addr) { 0 } else { 500 }),
                    ..BackendStatus::default()
                },
                Egress::default(),
            )
            .unwrap();
            let vip = image.vips.values().next().unwrap().clone();
            let ring = crate::maglev::build(&vip.members, 13);
            let weights: Vec<String> = vip
                .members
                .iter()
                .map(|m| format!("{}x{}", m.addr, m.weight))
                .collect();
            (weights, ring.iter().any(|id| *id == vip.members[0].id))
        };
        let (weights, first_in_ring) = members(&mut ids, &|a| a == first);
        assert_eq!(weights, ["198.51.100.101x0", "198.51.100.104x500"]);
        assert!(!first_in_ring);
        let (weights, first_in_ring) = members(&mut ids, &|_| true);
        assert_eq!(weights, ["198.51.100.101x3", "198.51.100.104x1"]);
        assert!(first_in_ring);
    }

    #[test]
    fn too_big_limit_is_credit_in_nanoseconds() {
        let mut answers = Config::from_json(CONFIG).unwrap().too_big_answers;
        assert_eq!(
            too_big_limit(&answers),
            TooBigLimit {
                interval_ns: 10_000_000,
                burst_ns: 100_000_000,
            }
        );
        answers.per_second = 0;
        assert_eq!(too_big_limit(&answers), TooBigLimit::default());
    }

    #[test]
    fn promotion_limit_is_an_equal_share_per_cpu() {
        // 100,000 a second on 4 CPUs: 25,000 each, one every 40 us.
        assert_eq!(
            promotion_limit(100_000, 4),
            PromotionLimit {
                interval_ns: 40_000,
                burst_ns: 1_000_000_000,
            }
        );
        // Fewer than one a CPU: each CPU still promotes one a second.
        assert_eq!(promotion_limit(3, 8).interval_ns, 1_000_000_000);
        assert_ne!(promotion_limit(1, 0).interval_ns, 0, "never unlimited");
    }

    #[test]
    fn expired_drain_cuts_the_backend_off() {
        let config = Config::from_json(CONFIG).unwrap();
        let mut ids = Ids::new(4, 16);
        let image = build(
            &config,
            &mut ids,
            |_| BackendStatus {
                healthy: true,
                drain_expired: true,
                weight: None,
            },
            Egress::default(),
        )
        .unwrap();
        assert_eq!(
            image.backends[&1].flags,
            BACKEND_F_ACTIVE | BACKEND_F_DRAINING | BACKEND_F_DOWN
        );
    }

    #[test]
    fn removed_backends_free_their_ids() {
        let mut config = Config::from_json(CONFIG).unwrap();
        let mut ids = Ids::new(4, 16);
        build(
            &config,
            &mut ids,
            |_| BackendStatus::default(),
            Egress::default(),
        )
        .unwrap();
        config.vips[0].backends.truncate(1);
        let image = build(
            &config,
            &mut ids,
            |_| BackendStatus::default(),
            Egress::default(),
        )
        .unwrap();
        let (vips, backends) = unused(&ids, &image);
        assert!(vips.is_empty());
        assert_eq!(backends.len(), 3);
    }
}
