//! The kernel and userspace compute the same backend for a flow: thousands
//! of random flows go through the real program, and the backend each one
//! reached (the outer destination) must be the one userspace derives from
//! its own copy of the Maglev table with lb-common's hash and slot choice.

use std::net::IpAddr;

use lb_common::{
    flow::{PROTO_TCP, PROTO_UDP, flow_hash, maglev_slot},
    maps::VIP_F_AFFINITY,
};
use lb_tests::{harness::*, packets::*};
use lb_userspace::maglev::{self, MaglevBackend};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const FLOWS_PER_VIP: usize = 2000;

struct Case {
    vip: &'static str,
    port: u16,
    proto: u8,
    flags: u32,
}

/// The backend address of an encapsulated output frame (outer destination).
fn outer_destination(frame: &[u8]) -> IpAddr {
    let ip = &frame[14..];
    if ip[0] >> 4 == 4 {
        IpAddr::from([ip[16], ip[17], ip[18], ip[19]])
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip[24..40]);
        IpAddr::from(a)
    }
}

#[test]
fn golden_flow_hash_and_slot_agree_with_userspace_on_random_flows() {
    let mut lb = Lb::new();
    let cases = [
        Case {
            vip: VIP_V4,
            port: 443,
            proto: PROTO_TCP,
            flags: 0,
        },
        Case {
            vip: VIP_V6,
            port: 443,
            proto: PROTO_UDP,
            flags: 0,
        },
        Case {
            vip: "198.51.100.11",
            port: 80,
            proto: PROTO_TCP,
            flags: VIP_F_AFFINITY,
        },
    ];
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    for (v, case) in cases.iter().enumerate() {
        let backends: Vec<BackendSpec> = (0..5u32)
            .map(|i| {
                let id = v as u32 * 10 + i + 1;
                let addr = if i % 2 == 0 {
                    format!("198.51.100.{}", 100 + id)
                } else {
                    format!("2001:db8:200::{id:x}")
                };
                BackendSpec::new(id, &addr)
            })
            .collect();
        let key = vip_key(case.vip, case.port, case.proto);
        lb.add_vip(key, case.flags, &backends);
        // Userspace's own copy of the table, built the same way.
        let members: Vec<MaglevBackend> = backends
            .iter()
            .map(|b| MaglevBackend {
                id: b.id,
                addr: b.addr,
                weight: 1,
            })
            .collect();
        let ring = maglev::build(&members, RING);
        let mut reached = std::collections::BTreeSet::new();
        for _ in 0..FLOWS_PER_VIP {
            let sport = rng.random_range(1024..=65535);
            let inner = match (case.vip.contains(':'), case.proto) {
                (false, PROTO_TCP) => {
                    let client = format!("203.0.113.{}", rng.random_range(1..=254));
                    tcp4(&client, sport, case.vip, case.port, Tcp::Syn, b"")
                }
                (true, _) => {
                    let client = format!(
                        "2001:db8:c::{:x}:{:x}",
                        rng.random::<u16>(),
                        rng.random::<u16>()
                    );
                    udp6(&client, sport, case.vip, case.port, b"q")
                }
                _ => unreachable!(),
            };
            let flow = flow_of(&inner);
            let hash = flow_hash(&flow, case.flags & VIP_F_AFFINITY != 0);
            let want_id = ring[maglev_slot(hash, RING) as usize];
            let want = backends
                .iter()
                .find(|b| b.id == want_id)
                .expect("ring holds our ids")
                .addr;
            let out = lb.run(&to_lb(&inner));
            assert_eq!(out.action, XDP_TX, "flow {flow:?}");
            assert_eq!(
                outer_destination(&out.data),
                want,
                "flow {flow:?} (VIP {})",
                case.vip
            );
            reached.insert(want_id);
        }
        assert_eq!(
            reached.len(),
            backends.len(),
            "random flows reach every backend of VIP {}",
            case.vip
        );
    }
}
