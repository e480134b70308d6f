//! Forwarding rate on veth, fed by live frames: a generator program run
//! through BPF_PROG_TEST_RUN in live-frames mode on every CPU puts frames
//! of many flows into the LB namespace's veth, where the balancer (or, as
//! the baseline, a plain devmap redirect) sends them out of a second veth
//! to a sink that counts what arrives.
//!
//! ```text
//!  [gen ns] gen0 ──veth──▶ lb0 [lb ns: lb or bench_redirect] lb1 ──veth──▶ be0 [sink ns: bench_sink]
//! ```
//!
//! Both veths have one queue per CPU, so each CPU generates, balances and
//! sinks its own frames in one pass (softirq on the generating CPU).
//!
//! A second measurement (`large`) cycles through as many flows as the
//! generator can tell apart (16,515,072), with tables sized to hold them
//! all, warmed until the flows are in the connection table. A third
//! (`stateless`) sends TCP ACKs to a stateless VIP with as many flows as
//! the first and as the second: no table holds them.

use std::{
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Reason,
    bench::*,
    flow::{PROTO_TCP, PROTO_UDP},
    maps::*,
};
use lb_tests::{
    harness::vip_key,
    netns::{Netns, enter_named, ip},
    packets::*,
};
use lb_userspace::{
    addr::to_map,
    datapath::{Datapath, MapSizes},
    maglev::{self, MaglevBackend},
    maps::Maps,
};
use serde_json::{Value, json};

/// The UDP port of the benchmark VIP.
pub const VIP_PORT: u16 = 8080;
/// Distinct flows each generating CPU cycles through (256 sources x 512
/// ports). A flow's first frame puts it on probation, its second (a
/// cycle later) promotes it into the connection table; the rounds are
/// timed once 99% of the flows were promoted (`warm_up`).
pub const FLOWS_PER_CPU: u32 = 256 * 512;
/// Source ports the generator gives flows (1024-65535), shared out between
/// the CPUs; with 256 source addresses, what bounds its distinct flows
/// (`lb_common::bench::BenchGen`).
const GEN_PORTS: u32 = 64_512;
/// The large measurement's tables: room for every flow, on probation (a
/// flow's second frame comes a whole cycle after its first) and then in
/// the connection table. Each table of 2^24 entries takes about 2 GiB.
const LARGE_TABLE_ENTRIES: u32 = 1 << 24;
/// Free memory the large measurement needs before it loads its tables.
const LARGE_MIN_AVAILABLE_GIB: f64 = 8.0;
/// At most this long to bring the large measurement's flows into the
/// connection table.
const LARGE_WARM_UP: Duration = Duration::from_secs(240);
const RUN: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

/// Three namespaces joined by two veth pairs with one queue per CPU.
pub struct Lab {
    pub generator: Netns,
    pub lb: Netns,
    pub sink: Netns,
    pub lb1_ifindex: u32,
    pub be0_mac: [u8; 6],
    pub lb0_mac: [u8; 6],
    pub gen0_mac: [u8; 6],
}

impl Lab {
    pub fn new() -> Self {
        let generator = Netns::new("bgen");
        let lb = Netns::new("blb");
        let sink = Netns::new("bsink");
        let queues = cpus().to_string();
        for (a, a_dev, b, b_dev) in [(&generator, "gen0", &lb, "lb0"), (&lb, "lb1", &sink, "be0")] {
            ip(&[
                "link",
                "add",
                a_dev,
                "netns",
                &a.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                b_dev,
                "netns",
                &b.name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
            ]);
            a.exec(&["ip", "link", "set", a_dev, "up"]);
            b.exec(&["ip", "link", "set", b_dev, "up"]);
        }
        Self {
            lb1_ifindex: lb.ifindex("lb1"),
            be0_mac: sink.mac("be0"),
            lb0_mac: lb.mac("lb0"),
            gen0_mac: generator.mac("gen0"),
            generator,
            lb,
            sink,
        }
    }
}

impl Lab {
    /// The data plane with `bench_programs` loaded too, its maps set up by
    /// `configure_lb`, and the sink counting on be0.
    pub fn load(&self, bench_programs: &[&str]) -> (Datapath, Maps) {
        let (dp, maps, _) = self.load_sized(MapSizes::default(), bench_programs);
        (dp, maps)
    }

    /// As `load`, with the maps sized `sizes`; also the kernel memory of
    /// the connection and probation tables.
    pub fn load_sized(&self, sizes: MapSizes, bench_programs: &[&str]) -> (Datapath, Maps, u64) {
        let mut dp = Datapath::load(sizes).expect("load");
        for name in bench_programs {
            xdp(&mut dp, name).load().expect("load bench program");
        }
        let tables_bytes = [MAP_CONNS, MAP_PROBATION]
            .iter()
            .map(|name| crate::memory::memlock(dp.ebpf.map(name).expect("table")).unwrap_or(0))
            .sum();
        let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size).expect("maps");
        configure_lb(&mut maps, self, sizes.ring_size);
        self.sink
            .enter(|| xdp(&mut dp, PROG_BENCH_SINK).attach("be0", XdpMode::Driver))
            .expect("attach sink");
        (dp, maps, tables_bytes)
    }

    /// Run `f` with `program` attached to lb0 (native mode), then detach it.
    pub fn with_on_lb0<T>(
        &self,
        dp: &mut Datapath,
        program: &str,
        f: impl FnOnce(&mut Datapath) -> T,
    ) -> T {
        let link: XdpLinkId = self
            .lb
            .enter(|| xdp(dp, program).attach("lb0", XdpMode::Driver))
            .expect("attach on lb0");
        let result = f(dp);
        self.lb
            .enter(|| xdp(dp, program).detach(link))
            .expect("detach from lb0");
        result
    }
}

pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn xdp<'a>(dp: &'a mut Datapath, name: &str) -> &'a mut Xdp {
    dp.ebpf
        .program_mut(name)
        .expect("program")
        .try_into()
        .expect("XDP program")
}

/// The balancer's maps set up for the lab: one UDP VIP with three IPv4
/// backends, tunnelled out of lb1 to the sink's MAC.
pub fn configure_lb(maps: &mut Maps, lab: &Lab, ring_size: u32) {
    let (outer_v6, _) = to_map(OUTER_SRC_V6.parse().unwrap());
    // A devmap resolves the ifindex in the writer's namespace.
    lab.lb
        .enter(|| maps.add_tx_port(lab.lb1_ifindex, lab.lb.mac("lb1")))
        .expect("tx port");
    maps.set_config(&LbConfig {
        ring_size,
        flags: 0,
        outer_src_v6: outer_v6,
        outer_src_v4: v4(OUTER_SRC_V4),
        gateway_mac: lab.be0_mac,
        mtu: 1500,
        egress_ifindex: lab.lb1_ifindex,
        egress_mac: [0; 6],
        _pad: [0; 2],
    })
    .expect("config");
    let key = vip_key(VIP_V4, VIP_PORT, PROTO_UDP);
    let mut members = Vec::new();
    for (i, addr) in BACKEND_V4.iter().enumerate() {
        let id = i as u32 + 1;
        let ip = addr.parse().unwrap();
        let (a, family) = to_map(ip);
        maps.set_backend(
            id,
            &Backend {
                addr: a,
                family,
                flags: BACKEND_F_ACTIVE,
                mac: [0; 6],
                vip_id: 0,
            },
        )
        .expect("backend");
        members.push(MaglevBackend {
            id,
            addr: ip,
            weight: 1,
        });
    }
    maps.set_vip(
        &key,
        &VipMeta {
            vip_id: 0,
            flags: 0,
            active_ring: 0,
            _pad: 0,
        },
    )
    .expect("vip");
    maps.publish_ring(&key, &maglev::build(&members, ring_size), 0)
        .expect("ring");
}

/// Kernel-measured run time (ns) and run count of program `name`, from
/// its fdinfo; counted only while `kernel.bpf_stats_enabled` is 1.
pub fn prog_stats(dp: &Datapath, name: &str) -> (u64, u64) {
    use std::os::fd::{AsFd, AsRawFd};
    let prog: &Xdp = dp
        .ebpf
        .program(name)
        .expect("program")
        .try_into()
        .expect("XDP program");
    let fd = prog.fd().expect("loaded").as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("run_time_ns:"), field("run_cnt:"))
}

/// Turns the kernel's per-program run-time statistics on while alive.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Self {
        let old = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(Self::PATH, "1");
        Self(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// Total of a per-CPU sink counter.
pub fn sink_count(dp: &Datapath, slot: u32) -> u64 {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(dp.ebpf.map(MAP_BENCH_SINK).unwrap()).expect("sink map");
    map.get(&slot, 0).expect("sink slot").iter().sum()
}

/// The generator's frame for the stateful rows: UDP to the VIP (the
/// generator rewrites its source address and port per flow).
fn udp_frame() -> Vec<u8> {
    to_lb(&udp4(CLIENT_V4, 1024, VIP_V4, VIP_PORT, &[0u8; 18]))
}

/// Generate live frames (`frame`, one flow after another) on every CPU
/// for `run`; returns frames sent.
fn generate(dp: &Datapath, generator_ns: &str, frame: &[u8], run: Duration) -> u64 {
    let prog: &Xdp = dp
        .ebpf
        .program(PROG_BENCH_GEN)
        .expect("generator")
        .try_into()
        .expect("XDP program");
    let deadline = Instant::now() + run;
    thread::scope(|s| {
        let handles: Vec<_> = (0..cpus())
            .map(|cpu| {
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    enter_named(generator_ns, || {
                        let mut sent = 0u64;
                        while Instant::now() < deadline {
                            let repeat = 200_000;
                            prog.test_run(TestRunOptions {
                                data_in: Some(frame),
                                repeat,
                                attrs: TestRunAttrs::new().xdp_live_frames(64),
                                ..TestRunOptions::default()
                            })
                            .expect("live frames");
                            sent += u64::from(repeat);
                        }
                        sent
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Frames counted at the sink per second, in millions.
    mpps: f64,
    /// Share of the generated frames that reached the sink.
    delivered: f64,
    /// Share of the frames at the sink that were tunnelled.
    tunnelled: f64,
    /// The kernel's own measure of the lb0 program's run time per frame
    /// (0 unless BPF run-time statistics were on, which slows every
    /// program down, so rates are measured with them off).
    program_ns: f64,
}

/// One timed run of `frame`'s flows with `program` on lb0 (with
/// `bench_sink` there, the sink on lb0 counts: the generator-only figure).
fn measure(dp: &mut Datapath, lab: &Lab, frame: &[u8], program: &str) -> Run {
    lab.with_on_lb0(dp, program, |dp| measure_attached(dp, lab, frame, program))
}

fn measure_attached(dp: &Datapath, lab: &Lab, frame: &[u8], program: &str) -> Run {
    let (frames0, tunnelled0) = (sink_count(dp, SINK_FRAMES), sink_count(dp, SINK_TUNNELLED));
    let (run_ns0, runs0) = prog_stats(dp, program);
    let start = Instant::now();
    let sent = generate(dp, &lab.generator.name, frame, RUN);
    let secs = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(50));
    let frames = sink_count(dp, SINK_FRAMES) - frames0;
    let tunnelled = sink_count(dp, SINK_TUNNELLED) - tunnelled0;
    let (run_ns1, runs1) = prog_stats(dp, program);
    Run {
        mpps: frames as f64 / secs / 1e6,
        delivered: frames as f64 / sent.max(1) as f64,
        tunnelled: tunnelled as f64 / frames.max(1) as f64,
        program_ns: (run_ns1 - run_ns0) as f64 / (runs1 - runs0).max(1) as f64,
    }
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Frames the balancer found in the connection table, as a share of those
/// it looked up there, from its event counters: before and after.
struct HitCounter(u64, u64);

impl HitCounter {
    fn read(maps: &Maps) -> Self {
        Self(
            maps.reason_count(Reason::ConnHit).expect("counter"),
            maps.reason_count(Reason::ConnMiss).expect("counter"),
        )
    }

    /// Connection-table lookups since.
    fn lookups_since(&self, maps: &Maps) -> u64 {
        let now = Self::read(maps);
        now.0 - self.0 + now.1 - self.1
    }

    fn share_since(&self, maps: &Maps) -> f64 {
        let now = Self::read(maps);
        let (hits, misses) = (now.0 - self.0, now.1 - self.1);
        hits as f64 / (hits + misses).max(1) as f64
    }
}

/// Write the generator's settings: `flows` per CPU.
fn set_flows(dp: &mut Datapath, lab: &Lab, flows: u32) {
    let mut gen_cfg: Array<_, BenchGen> =
        Array::try_from(dp.ebpf.map_mut(MAP_BENCH_GEN).unwrap()).expect("gen map");
    gen_cfg
        .set(
            0,
            BenchGen {
                ifindex: lab.generator.ifindex("gen0"),
                flows,
                cpus: cpus() as u32,
                dst_mac: lab.lb0_mac,
                src_mac: lab.gen0_mac,
            },
            0,
        )
        .expect("gen config");
}

pub fn run() -> Value {
    let lab = Lab::new();
    // The generator sends a flow's second frame a whole cycle (every other
    // flow) after its first, which real clients never do: probation is
    // sized to hold the cycle, as in `large`, so that the flows get into
    // the connection table and the rounds time established flows.
    let sizes = MapSizes {
        probation_entries: MapSizes::default().conn_entries,
        ..MapSizes::default()
    };
    let (mut dp, maps, _) = lab.load_sized(
        sizes,
        &[PROG_BENCH_GEN, PROG_BENCH_REDIRECT, PROG_BENCH_SINK],
    );
    // BENCH_FLOWS overrides the flows per CPU, to see the cache's share.
    let flows = std::env::var("BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLOWS_PER_CPU);
    set_flows(&mut dp, &lab, flows);
    let udp = udp_frame();
    let (promoted, warm_up_took) = warm_up(&mut dp, &maps, &lab, flows as u64 * cpus() as u64);

    let mut generator_only = Vec::new();
    let mut redirect = Vec::new();
    let mut lb = Vec::new();
    let hits = HitCounter::read(&maps);
    for _ in 0..ROUNDS {
        generator_only.push(measure(&mut dp, &lab, &udp, PROG_BENCH_SINK));
        redirect.push(measure(&mut dp, &lab, &udp, PROG_BENCH_REDIRECT));
        lb.push(measure(&mut dp, &lab, &udp, PROG_LB));
    }
    let conn_hit_share = hits.share_since(&maps);
    for (r, l) in redirect.iter().zip(&lb) {
        assert!(r.mpps > 0.0 && l.mpps > 0.0, "frames reached the sink");
        assert!(
            l.tunnelled > 0.999,
            "the balancer tunnelled what it forwarded: {l:?}"
        );
    }
    let (redirect_ns, lb_ns) = {
        let _stats = BpfStats::enable();
        (
            measure(&mut dp, &lab, &udp, PROG_BENCH_REDIRECT).program_ns,
            measure(&mut dp, &lab, &udp, PROG_LB).program_ns,
        )
    };
    let (g, r, l) = (
        median(&generator_only, |x| x.mpps),
        median(&redirect, |x| x.mpps),
        median(&lb, |x| x.mpps),
    );
    let fill = maps.fill(1 << 22).expect("table fill");
    // The large measurement's tables need this one's memory back.
    drop((dp, maps));
    json!({
        "cpus": cpus(),
        "flows": flows as usize * cpus(),
        "flows_promoted_in_warm_up": promoted,
        "warm_up_s": warm_up_took.as_secs_f64(),
        "flows_in_connection_table": fill.conns.entries,
        "flows_on_probation": fill.probation.entries,
        "conn_hit_share": conn_hit_share,
        "generator_into_drop_mpps": g,
        "plain_redirect_mpps": r,
        "lb_mpps": l,
        "lb_over_redirect": l / r,
        "plain_redirect_program_ns": redirect_ns,
        "lb_program_ns": lb_ns,
        "delivered_share_redirect": median(&redirect, |x| x.delivered),
        "delivered_share_lb": median(&lb, |x| x.delivered),
        "large": large(&lab),
        "stateless": stateless(&lab, flows),
    })
}

/// Kernel's MemAvailable, GiB.
fn available_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1 << 20) as f64)
}

/// The balancer against the plain redirect with every flow the generator
/// can make, all of them in the connection table: what a table far bigger
/// than the CPU's caches costs per frame.
/// Send the flows through the balancer until 99% of `flows` were promoted
/// into the connection table (or `LARGE_WARM_UP` passed), so that the
/// timed rounds measure established flows: each flow's first frame puts it
/// on probation, its second promotes it; frames lost on the way only delay
/// that by a cycle. The flows promoted, and how long it took.
fn warm_up(dp: &mut Datapath, maps: &Maps, lab: &Lab, flows: u64) -> (u64, Duration) {
    let promoted = || maps.reason_count(Reason::ConnPromoted).expect("counter");
    let took = lab.with_on_lb0(dp, PROG_LB, |dp| {
        let start = Instant::now();
        while promoted() < flows * 99 / 100 && start.elapsed() < LARGE_WARM_UP {
            generate(dp, &lab.generator.name, &udp_frame(), RUN);
        }
        start.elapsed()
    });
    (promoted(), took)
}

fn large(lab: &Lab) -> Value {
    let available = available_gib();
    if available < LARGE_MIN_AVAILABLE_GIB {
        println!("forwarding: large tables skipped, {available:.1} GiB available");
        return json!({"skipped": format!(
            "{available:.1} GiB of memory available, {LARGE_MIN_AVAILABLE_GIB} needed"
        )});
    }
    let started = Instant::now();
    let sizes = MapSizes {
        conn_entries: LARGE_TABLE_ENTRIES,
        probation_entries: LARGE_TABLE_ENTRIES,
        ..MapSizes::default()
    };
    let (mut dp, maps, tables_bytes) = lab.load_sized(
        sizes,
        &[PROG_BENCH_GEN, PROG_BENCH_REDIRECT, PROG_BENCH_SINK],
    );
    let flows_per_cpu = 256 * (GEN_PORTS / cpus() as u32);
    let flows = u64::from(flows_per_cpu) * cpus() as u64;
    assert!(flows <= u64::from(LARGE_TABLE_ENTRIES));
    set_flows(&mut dp, lab, flows_per_cpu);
    let udp = udp_frame();
    let (promoted, warm_up) = warm_up(&mut dp, &maps, lab, flows);
    println!(
        "forwarding: {flows} flows, {promoted} promoted in {warm_up:.0?}, tables {:.2} GiB",
        tables_bytes as f64 / (1u64 << 30) as f64
    );
    let mut redirect = Vec::new();
    let mut lb = Vec::new();
    let hits = HitCounter::read(&maps);
    for _ in 0..ROUNDS {
        redirect.push(measure(&mut dp, lab, &udp, PROG_BENCH_REDIRECT));
        lb.push(measure(&mut dp, lab, &udp, PROG_LB));
    }
    let conn_hit_share = hits.share_since(&maps);
    let (redirect_ns, lb_ns) = {
        let _stats = BpfStats::enable();
        (
            measure(&mut dp, lab, &udp, PROG_BENCH_REDIRECT).program_ns,
            measure(&mut dp, lab, &udp, PROG_LB).program_ns,
        )
    };
    let fill = maps.fill(1 << 22).expect("table fill");
    let (r, l) = (median(&redirect, |x| x.mpps), median(&lb, |x| x.mpps));
    json!({
        "flows": flows,
        "connection_table_entries": LARGE_TABLE_ENTRIES,
        "tables_kernel_bytes": tables_bytes,
        "flows_promoted_in_warm_up": promoted,
        "warm_up_s": warm_up.as_secs_f64(),
        "flows_in_connection_table": fill.conns.entries,
        "flows_in_connection_table_exact": fill.exact,
        "conn_hit_share": conn_hit_share,
        "plain_redirect_mpps": r,
        "lb_mpps": l,
        "lb_over_redirect": l / r,
        "plain_redirect_program_ns": redirect_ns,
        "lb_program_ns": lb_ns,
        "delivered_share_lb": median(&lb, |x| x.delivered),
        "seconds": started.elapsed().as_secs_f64(),
    })
}

/// The generator's frame for the stateless rows: a TCP ACK (not a SYN, so
/// each packet also reads its slot's previous owner) to the stateless VIP,
/// as long as `udp_frame`.
fn tcp_ack_frame() -> Vec<u8> {
    to_lb(&tcp4(
        CLIENT_V4,
        1024,
        VIP_V4,
        VIP_PORT,
        Tcp::Ack,
        &[0u8; 6],
    ))
}

/// A stateless TCP VIP at `VIP_V4:VIP_PORT` (vip 1, beside `configure_lb`'s
/// UDP one) over the same backend addresses, second chance on, every slot
/// settled.
fn add_stateless_vip(maps: &mut Maps, ring_size: u32) {
    let key = vip_key(VIP_V4, VIP_PORT, PROTO_TCP);
    let mut last_id = BACKEND_V4.len() as u32;
    let sizes = MapSizes {
        ring_size,
        ..MapSizes::default()
    };
    crate::per_packet::add_vip(
        maps,
        sizes,
        1,
        &key,
        VIP_F_STATELESS,
        &BACKEND_V4,
        &mut last_id,
    );
    crate::stateless::second_chance_on(maps);
}

/// The balancer with a stateless VIP against the plain redirect, with
/// `flows_per_cpu` flows per CPU and with every flow the generator can
/// tell apart: the ring alone places each packet, so there is no table to
/// size for the flows or to warm, and the maps keep their default sizes.
fn stateless(lab: &Lab, flows_per_cpu: u32) -> Value {
    let started = Instant::now();
    let (mut dp, mut maps) = lab.load(&[PROG_BENCH_GEN, PROG_BENCH_REDIRECT, PROG_BENCH_SINK]);
    add_stateless_vip(&mut maps, MapSizes::default().ring_size);
    let tcp = tcp_ack_frame();
    assert_eq!(tcp.len(), udp_frame().len(), "frames of one size");
    let mut rows = Vec::new();
    for flows_per_cpu in [flows_per_cpu, 256 * (GEN_PORTS / cpus() as u32)] {
        set_flows(&mut dp, lab, flows_per_cpu);
        let lookups = HitCounter::read(&maps);
        let mut redirect = Vec::new();
        let mut lb = Vec::new();
        for _ in 0..ROUNDS {
            redirect.push(measure(&mut dp, lab, &tcp, PROG_BENCH_REDIRECT));
            lb.push(measure(&mut dp, lab, &tcp, PROG_LB));
        }
        for l in &lb {
            assert!(l.mpps > 0.0, "frames reached the sink");
            assert!(
                l.tunnelled > 0.999,
                "the balancer tunnelled what it forwarded: {l:?}"
            );
        }
        let (redirect_ns, lb_ns) = {
            let _stats = BpfStats::enable();
            (
                measure(&mut dp, lab, &tcp, PROG_BENCH_REDIRECT).program_ns,
                measure(&mut dp, lab, &tcp, PROG_LB).program_ns,
            )
        };
        assert_eq!(
            lookups.lookups_since(&maps),
            0,
            "a stateless VIP looks in no connection table"
        );
        let (r, l) = (median(&redirect, |x| x.mpps), median(&lb, |x| x.mpps));
        rows.push(json!({
            "flows": u64::from(flows_per_cpu) * cpus() as u64,
            "plain_redirect_mpps": r,
            "lb_mpps": l,
            "lb_over_redirect": l / r,
            "plain_redirect_program_ns": redirect_ns,
            "lb_program_ns": lb_ns,
            "delivered_share_lb": median(&lb, |x| x.delivered),
        }));
    }
    let fill = maps.fill(1 << 22).expect("table fill");
    json!({
        "rows": rows,
        "table_entries": fill.conns.entries + fill.probation.entries,
        "seconds": started.elapsed().as_secs_f64(),
    })
}
