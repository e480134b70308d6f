//! The data plane loaded with small maps, configured the way the golden
//! tests expect, and run on single packets through BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    FlowKey, Reason,
    flow::{flow_hash, maglev_slot},
    maps::*,
    stats::DecapReason,
};
use lb_userspace::{
    addr::to_map,
    config::TooBigAnswers,
    datapath::{Datapath, MapSizes},
    decap_sources::{DecapSources, parse_source},
    image::too_big_limit,
    maglev::{self, MaglevBackend},
    maps::Maps,
};

use crate::packets::{GATEWAY_MAC, OUTER_SRC_V4, OUTER_SRC_V6};

/// Ring size used by the tests: a small prime keeps loading fast.
pub const RING: u32 = 251;
pub const MTU: u16 = 1500;

/// The verdict and the bytes the program left in the frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub data: Vec<u8>,
}

/// Hex dump, 16 bytes a line with offsets, so a failed comparison shows
/// which header field differs.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.action {
            XDP_ABORTED => "XDP_ABORTED",
            XDP_DROP => "XDP_DROP",
            XDP_PASS => "XDP_PASS",
            XDP_TX => "XDP_TX",
            XDP_REDIRECT => "XDP_REDIRECT",
            _ => "?",
        };
        writeln!(f, "{name} ({}), {} bytes:", self.action, self.data.len())?;
        for (i, line) in self.data.chunks(16).enumerate() {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(f, "  {:04x}: {}", i * 16, hex.join(" "))?;
        }
        Ok(())
    }
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A backend to configure.
#[derive(Clone, Copy, Debug)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub weight: u32,
    pub flags: u8,
}

impl BackendSpec {
    pub fn new(id: u32, addr: &str) -> Self {
        Self {
            id,
            addr: addr.parse().expect("backend address"),
            mac: [0; 6],
            weight: 1,
            flags: BACKEND_F_ACTIVE,
        }
    }

    pub fn with_mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = mac;
        self
    }

    /// The backend's map entry as a backend of VIP id 0 (the first VIP a
    /// test adds); `entry_for` for another VIP.
    pub fn entry(&self) -> Backend {
        self.entry_for(0)
    }

    /// The backend's map entry as a backend of VIP id `vip_id`. The data
    /// plane follows a connection or fragment entry to a backend only if
    /// the backend serves the packet's VIP.
    pub fn entry_for(&self, vip_id: u32) -> Backend {
        let (addr, family) = to_map(self.addr);
        Backend {
            addr,
            family,
            flags: self.flags,
            mac: self.mac,
            vip_id,
        }
    }
}

/// A data plane for one test.
pub struct Lb {
    pub dp: Datapath,
    pub maps: Maps,
    next_vip_id: u32,
}

pub fn vip_key(addr: &str, port: u16, proto: u8) -> VipKey {
    let (addr, family) = to_map(addr.parse().expect("VIP address"));
    VipKey {
        addr,
        port,
        proto,
        family,
    }
}

impl Lb {
    /// Loaded, with the standard configuration written (gateway next hop,
    /// XDP_TX, MTU 1500, lbd's default rate limit of ICMP too-big
    /// answers), and no VIP.
    pub fn new() -> Self {
        Self::with_sizes(Self::standard_sizes())
    }

    /// The map sizes of `new`: small, so loading is fast.
    pub fn standard_sizes() -> MapSizes {
        MapSizes {
            max_vips: 8,
            max_backends: 64,
            ring_size: RING,
            conn_entries: 1024,
            probation_entries: 128,
            frag_entries: 64,
        }
    }

    /// As `new`, with other map sizes (the ring size must stay `RING`).
    pub fn with_sizes(sizes: MapSizes) -> Self {
        assert_eq!(
            sizes.ring_size, RING,
            "the harness builds rings of RING slots"
        );
        let mut dp = Datapath::load(sizes).expect("load the eBPF programs (are we root?)");
        let mut maps = Maps::take(&mut dp.ebpf, RING).expect("maps");
        maps.set_config(&Self::standard_config()).expect("config");
        maps.set_too_big_limit(&too_big_limit(&TooBigAnswers::default()))
            .expect("too-big limit");
        Self {
            dp,
            maps,
            next_vip_id: 0,
        }
    }

    pub fn standard_config() -> LbConfig {
        let mut outer_src_v4 = [0u8; 4];
        outer_src_v4.copy_from_slice(&to_map(OUTER_SRC_V4.parse().unwrap()).0[..4]);
        LbConfig {
            ring_size: RING,
            flags: CFG_LOOKUP_CACHES,
            outer_src_v6: to_map(OUTER_SRC_V6.parse().unwrap()).0,
            outer_src_v4,
            gateway_mac: GATEWAY_MAC,
            mtu: MTU,
            egress_ifindex: 0,
            egress_mac: [0; 6],
            _pad: [0; 2],
        }
    }

    /// Add a VIP served by `backends` (written to the backend map too).
    pub fn add_vip(&mut self, key: VipKey, flags: u32, backends: &[BackendSpec]) -> VipMeta {
        let meta = VipMeta {
            vip_id: self.next_vip_id,
            flags,
            active_ring: 0,
            _pad: 0,
        };
        self.next_vip_id += 1;
        if flags & VIP_F_PORTLESS != 0 {
            let config = self.maps.config().expect("config");
            self.maps
                .set_config(&LbConfig {
                    flags: config.flags | CFG_F_PORTLESS_VIPS,
                    ..config
                })
                .expect("config");
        }
        self.maps.set_vip(&key, &meta).expect("vip");
        self.set_backends(&key, backends);
        self.maps.vip(&key).unwrap().unwrap()
    }

    /// Write the backends (as backends of the VIP at `key`) and publish the
    /// VIP's ring built from them (backends flagged down or draining get no
    /// slots).
    pub fn set_backends(&mut self, key: &VipKey, backends: &[BackendSpec]) {
        let meta = self.maps.vip(key).expect("vip").expect("VIP added");
        let vip_id = meta.vip_id;
        for b in backends {
            self.maps
                .set_backend(b.id, &b.entry_for(vip_id))
                .expect("backend");
        }
        let members: Vec<MaglevBackend> = backends
            .iter()
            .filter(|b| b.flags & (BACKEND_F_DOWN | BACKEND_F_DRAINING) == 0)
            .map(|b| MaglevBackend {
                id: b.id,
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        let ring = maglev::build(&members, RING);
        self.maps
            .publish_ring(key, &ring, meta.flags)
            .expect("ring");
    }

    /// The backend the live ring gives `flow`, as userspace computes it.
    pub fn ring_backend(&self, key: &VipKey, flow: &FlowKey) -> u32 {
        let meta = self.maps.vip(key).unwrap().unwrap();
        let hash = flow_hash(flow, meta.flags & VIP_F_AFFINITY != 0);
        self.maps.ring_slot(&meta, maglev_slot(hash, RING)).unwrap()
    }

    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        run_frame(self.dp.lb().expect("lb program"), frame)
    }

    /// Run the LB program as if `frame` arrived on interface `ifindex` (of
    /// the calling thread's network namespace), so FIB lookups use it.
    pub fn run_on(&mut self, ifindex: u32, frame: &[u8]) -> Outcome {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let prog = self.dp.lb().expect("lb program");
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN with an ingress interface");
        out.truncate(result.data_size_out as usize);
        Outcome {
            action: result.return_value,
            data: out,
        }
    }

    /// Make the decap program accept tunnels addressed to `addrs` from the
    /// outer sources in `sources` (addresses or prefixes), as
    /// `lb-decap attach --address ... --allow-source ...` does.
    pub fn accept_tunnels(&mut self, addrs: &[&str], sources: &[&str]) {
        for a in addrs {
            self.maps
                .add_decap_addr(a.parse().expect("decap address"))
                .expect("decap address");
        }
        let nets = sources
            .iter()
            .map(|s| parse_source(s).expect("allowed source"))
            .collect();
        self.maps
            .set_decap_sources(&DecapSources::Only(nets))
            .expect("allowed sources");
    }

    pub fn run_decap(&mut self, frame: &[u8]) -> Outcome {
        run_frame(self.dp.decap().expect("decap program"), frame)
    }

    pub fn count(&self, reason: Reason) -> u64 {
        self.maps.reason_count(reason).expect("stats")
    }

    /// Every reason's counter, in `Reason::ALL` order.
    pub fn counts(&self) -> Vec<u64> {
        Reason::ALL.iter().map(|r| self.count(*r)).collect()
    }

    /// Run `frame`: the outcome, and the counters it moved with how much.
    pub fn run_counted(&mut self, frame: &[u8]) -> (Outcome, Vec<(Reason, u64)>) {
        let before = self.counts();
        let out = self.run(frame);
        (out, moved(&before, &self.counts()))
    }

    pub fn decap_count(&self, reason: DecapReason) -> u64 {
        self.maps.decap_count(reason).expect("stats")
    }
}

impl Default for Lb {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters that changed between two `Lb::counts` snapshots, with how
/// much: a test asserts exactly which reasons a packet got.
pub fn moved(before: &[u64], after: &[u64]) -> Vec<(Reason, u64)> {
    Reason::ALL
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect()
}

/// Run `prog` once on `frame` through BPF_PROG_TEST_RUN.
pub fn run_frame(prog: &mut aya::programs::Xdp, frame: &[u8]) -> Outcome {
    try_run_frame(prog, frame).expect("BPF_PROG_TEST_RUN")
}

/// As `run_frame`, but a frame the kernel refuses to run (shorter than an
/// Ethernet header) is an error instead of a panic.
pub fn try_run_frame(
    prog: &mut aya::programs::Xdp,
    frame: &[u8],
) -> Result<Outcome, aya::programs::ProgramError> {
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(Outcome {
        action: result.return_value,
        data: out,
    })
}
