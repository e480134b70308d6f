//! `cargo xtask demo` (data-plane stage): load the load balancer, attach it
//! in native XDP mode to a veth in a fresh namespace, configure a VIP with
//! three backends, push a few thousand new TCP flows from random clients
//! through the real program (BPF_PROG_TEST_RUN), and show how they spread
//! and what every counter says. Everything is removed at the end.

use std::{net::IpAddr, time::Instant};

use aya::programs::XdpMode;
use lb_common::{
    Reason,
    flow::PROTO_TCP,
    maps::{BACKEND_F_ACTIVE, Backend, LbConfig, PROG_LB, VipKey, VipMeta},
};
use lb_tests::{
    harness::{XDP_TX, run_frame},
    netns::{Netns, veth},
    packets::*,
};
use lb_userspace::{
    addr::to_map,
    datapath::{Datapath, MapSizes},
    maglev::{self, MaglevBackend},
    maps::Maps,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const FLOWS: usize = 3000;

fn main() -> anyhow::Result<()> {
    println!("== XDP load balancer: data-plane demo ==\n");
    let ns = Netns::new("demo");
    veth(&ns, "lb0", &ns, "peer0");
    let sizes = MapSizes::default();
    let mut dp = Datapath::load(sizes)?;
    ns.enter(|| dp.attach(PROG_LB, "lb0", XdpMode::Driver))?;
    println!(
        "loaded programs `lb` and `lb_decap`; `lb` attached to lb0 in netns {} in native (driver) mode",
        ns.name
    );
    println!("{}", ns.exec(&["ip", "link", "show", "lb0"]).trim());

    let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size)?;
    let (outer_v6, _) = to_map(OUTER_SRC_V6.parse()?);
    maps.set_config(&LbConfig {
        ring_size: sizes.ring_size,
        flags: 0,
        outer_src_v6: outer_v6,
        outer_src_v4: v4(OUTER_SRC_V4),
        gateway_mac: GATEWAY_MAC,
        mtu: 1500,
        egress_ifindex: 0,
    })?;
    let (vip_addr, family) = to_map(VIP_V4.parse()?);
    let key = VipKey {
        addr: vip_addr,
        port: 80,
        proto: PROTO_TCP,
        family,
    };
    maps.set_vip(
        &key,
        &VipMeta {
            vip_id: 0,
            flags: 0,
            active_ring: 0,
            _pad: 0,
        },
    )?;
    let mut members = Vec::new();
    for (i, b) in BACKEND_V4.iter().enumerate() {
        let addr: IpAddr = b.parse()?;
        let (bytes, family) = to_map(addr);
        let id = i as u32 + 1;
        maps.set_backend(
            id,
            &Backend {
                addr: bytes,
                family,
                flags: BACKEND_F_ACTIVE,
                mac: [0; 6],
                vip_id: 0,
            },
        )?;
        members.push(MaglevBackend {
            id,
            addr,
            weight: 1,
        });
    }
    let started = Instant::now();
    let ring = maglev::build(&members, sizes.ring_size);
    let built = started.elapsed();
    let started = Instant::now();
    maps.publish_ring(&key, &ring)?;
    println!(
        "\nVIP {VIP_V4}:80/tcp -> {} backends, Maglev table of M={} slots built in {:.1} ms, written in {:.1} ms",
        members.len(),
        sizes.ring_size,
        built.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    for (id, slots) in maglev::slot_counts(&ring) {
        println!(
            "  backend {id} ({}) owns {slots} slots",
            BACKEND_V4[id as usize - 1]
        );
    }

    println!("\nsending {FLOWS} TCP SYNs from random clients through the program ...");
    let mut rng = SmallRng::seed_from_u64(7);
    let prog = dp.lb()?;
    for _ in 0..FLOWS {
        let client = format!("203.0.113.{}", rng.random_range(1..255));
        let syn = tcp4(
            &client,
            rng.random_range(1024..65535),
            VIP_V4,
            80,
            Tcp::Syn,
            b"",
        );
        let out = run_frame(prog, &to_lb(&syn));
        anyhow::ensure!(out.action == XDP_TX, "unexpected verdict {}", out.action);
    }
    println!("\nnew flows per backend (from the per-backend counters):");
    for m in &members {
        let s = maps.backend_stats(m.id)?;
        let bar = "#".repeat((s.new_flows as usize * 60) / FLOWS);
        println!("  {:<16} {:>5}  {bar}", m.addr, s.new_flows);
    }
    println!("\nglobal counters (non-zero):");
    for r in Reason::ALL {
        let n = maps.reason_count(*r)?;
        if n > 0 {
            println!("  {:<22} {:>6}  {}", r.name(), n, r.help());
        }
    }
    println!("\nremoving netns {} (and the program with it)", ns.name);
    Ok(())
}
