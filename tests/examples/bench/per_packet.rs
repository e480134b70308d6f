//! Per-packet cost through BPF_PROG_TEST_RUN, one run per call so every
//! run sees the original frame (with `repeat > 1` the kernel reruns the
//! program on its own output), median over many calls, against a floor
//! program (MAC swap + XDP_TX) timed the same way. The output of each timed
//! path is checked. The same paths with bigger tables (more VIPs, more
//! backends) are in `table_size`, those of stateless VIPs in `stateless`.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{
    Reason,
    bench::PROG_BENCH_FLOOR,
    flow::{PROTO_TCP, PROTO_UDP},
    maps::*,
};
use lb_tests::{
    harness::{run_frame, vip_key},
    packets::*,
};

use crate::forwarding::xdp;
use lb_userspace::{
    addr::to_map,
    capture::{CaptureMaps, CaptureSpec, MAX_COUNT},
    datapath::{Datapath, MapSizes},
    maglev::{self, MaglevBackend},
    maps::Maps,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

pub const CALLS: usize = 20_000;

/// What comes before each timed run of a frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Nothing,
    /// The same frame once, untimed: the timed run is its flow's second
    /// packet.
    SameFrame,
}

/// Median and 10th percentile of the kernel-measured run time (ns) of
/// `frames`, cycled, one run per call; the verdict of every run must be
/// `want`.
pub fn time(prog: &Xdp, frames: &[Vec<u8>], want: u32, before: Before) -> (f64, f64) {
    let mut samples = Vec::with_capacity(CALLS);
    let mut out = vec![0u8; 2048];
    for i in 0..CALLS {
        let frame = &frames[i % frames.len()];
        let mut run = || {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })
                .expect("test run");
            assert_eq!(r.return_value, want, "verdict of case frame {i}");
            r.duration.as_nanos() as f64
        };
        if before == Before::SameFrame {
            run();
        }
        samples.push(run());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], samples[samples.len() / 10])
}

/// The timed path's output, checked once: `frame` goes out in an IPv4
/// tunnel to one of `backends`, the inner packet intact.
pub fn assert_tunnelled(prog: &mut Xdp, frame: &[u8], backends: &[[u8; 4]]) {
    let out = run_frame(prog, frame).data;
    assert_eq!(out.len(), frame.len() + 20, "encapsulated");
    assert_eq!(&out[14 + 20..], &frame[14..], "inner packet intact");
    assert!(
        backends.iter().any(|b| b[..] == out[30..34]),
        "outer destination is a backend"
    );
}

pub fn backend(id: u32, addr: &str) -> (u32, Backend, MaglevBackend) {
    let ip: IpAddr = addr.parse().unwrap();
    let (a, family) = to_map(ip);
    (
        id,
        Backend {
            addr: a,
            family,
            flags: BACKEND_F_ACTIVE,
            mac: [0; 6],
            vip_id: 0,
        },
        MaglevBackend {
            id,
            addr: ip,
            weight: 1,
        },
    )
}

/// The configuration, with no rate limit in the way of the timing.
pub fn configure(maps: &mut Maps, sizes: MapSizes) {
    let (outer_v6, _) = to_map(OUTER_SRC_V6.parse().unwrap());
    maps.set_config(&LbConfig {
        ring_size: sizes.ring_size,
        flags: CFG_LOOKUP_CACHES,
        outer_src_v6: outer_v6,
        outer_src_v4: v4(OUTER_SRC_V4),
        gateway_mac: GATEWAY_MAC,
        mtu: 1500,
        egress_ifindex: 0,
        egress_mac: [0; 6],
        _pad: [0; 2],
    })
    .unwrap();
    // The interface the frames arrive on (loopback, in a test run), with
    // the MAC they are sent to, as lbd writes every attached interface.
    maps.add_tx_port(1, LB_MAC).unwrap();
    // Every too-big packet answered: no rate limit in the way of the timing.
    maps.set_too_big_limit(&TooBigLimit {
        interval_ns: 1,
        burst_ns: 1_000_000,
    })
    .unwrap();
    // Promotions limited as lbd always has them, with credit to spare: the
    // promotion row pays for consulting the limit, never for a deferral.
    maps.set_promotion_limit(&PromotionLimit {
        interval_ns: 1,
        burst_ns: 1_000_000,
    })
    .unwrap();
}

/// VIP `vip_id` at `key` with `flags`, over backends at `addrs` (given
/// ids after `*last_id`, which moves on past them), its ring published;
/// the backend ids in the order of `addrs`.
pub fn add_vip(
    maps: &mut Maps,
    sizes: MapSizes,
    vip_id: u32,
    key: &VipKey,
    flags: u32,
    addrs: &[&str],
    last_id: &mut u32,
) -> Vec<u32> {
    let mut members = Vec::new();
    for a in addrs {
        *last_id += 1;
        let (id, entry, m) = backend(*last_id, a);
        maps.set_backend(id, &Backend { vip_id, ..entry }).unwrap();
        members.push(m);
    }
    maps.set_vip(
        key,
        &VipMeta {
            vip_id,
            flags,
            active_ring: 0,
            _pad: 0,
        },
    )
    .unwrap();
    maps.publish_ring(key, &maglev::build(&members, sizes.ring_size), flags)
        .unwrap();
    members.iter().map(|m| m.id).collect()
}

pub fn run(results: &mut Vec<(String, f64, f64)>) {
    let sizes = MapSizes::default();
    let mut dp = Datapath::load(sizes).expect("load");
    xdp(&mut dp, PROG_BENCH_FLOOR).load().expect("load floor");
    let mut maps = Maps::take(&mut dp.ebpf, sizes.ring_size).expect("maps");
    configure(&mut maps, sizes);
    let vips = [
        (vip_key(VIP_V4, 80, PROTO_TCP), 0, &BACKEND_V4[..]),
        (vip_key(VIP_V4, 53, PROTO_UDP), 0, &BACKEND_V4[..]),
        (vip_key(VIP_V6, 443, PROTO_TCP), 0, &BACKEND_V6[..]),
        (
            vip_key(VIP_V4, 443, PROTO_TCP),
            VIP_F_AFFINITY,
            &BACKEND_V4[..],
        ),
    ];
    let mut id = 0;
    for (vip_id, (key, flags, addrs)) in vips.iter().enumerate() {
        add_vip(&mut maps, sizes, vip_id as u32, key, *flags, addrs, &mut id);
    }
    // Distinct flows from random clients: the first ACK of a flow is put on
    // probation (an insert), its second moves it into the connection table
    // (an insert and a delete); a SYN only picks from the ring (it is never
    // entered), so it is the new-flow path without any insert.
    let fresh = |seed: u64, flags: Tcp| fresh_flows(seed, 80, flags);
    let new_flows = fresh(1, Tcp::Ack);
    // 1481 bytes + the 20-byte tunnel header exceed the MTU of 1500.
    let too_big = to_lb(&tcp4(CLIENT_V4, 40002, VIP_V4, 80, Tcp::Ack, &[0x55; 1441]));
    let syns = fresh(2, Tcp::Syn);
    let second_packets = fresh(3, Tcp::Ack);
    let cases: Vec<(&str, Vec<Vec<u8>>, u32, Before)> = vec![
        (
            "IPv4 TCP new flow, first ACK (probation insert)",
            new_flows,
            3,
            Before::Nothing,
        ),
        (
            "IPv4 TCP new flow, second packet (promotion)",
            second_packets,
            3,
            Before::SameFrame,
        ),
        (
            "IPv4 TCP SYN, new flow (ring pick, no insert)",
            syns,
            3,
            Before::Nothing,
        ),
        (
            "IPv4 TCP established",
            vec![to_lb(&tcp4(CLIENT_V4, 40000, VIP_V4, 80, Tcp::Ack, b""))],
            3,
            Before::Nothing,
        ),
        (
            "IPv6 TCP established",
            vec![to_lb(&tcp6(CLIENT_V6, 40000, VIP_V6, 443, Tcp::Ack, b""))],
            3,
            Before::Nothing,
        ),
        (
            "IPv4 UDP",
            vec![to_lb(&udp4(CLIENT_V4, 5353, VIP_V4, 53, b"query"))],
            3,
            Before::Nothing,
        ),
        (
            "IPv4 TCP established, affinity VIP",
            vec![to_lb(&tcp4(CLIENT_V4, 40001, VIP_V4, 443, Tcp::Ack, b""))],
            3,
            Before::Nothing,
        ),
        (
            "IPv4 TCP too big: ICMP fragmentation-needed answer",
            vec![too_big.clone()],
            3,
            Before::Nothing,
        ),
        (
            "non-VIP (XDP_PASS)",
            vec![to_lb(&tcp4(
                CLIENT_V4,
                40000,
                "198.51.100.99",
                80,
                Tcp::Ack,
                b"",
            ))],
            2,
            Before::Nothing,
        ),
    ];
    // Check the timed path's output once: a tunnel to a backend.
    let backends = BACKEND_V4.map(v4);
    assert_tunnelled(xdp(&mut dp, PROG_LB), &cases[2].1[0], &backends);
    // And the too-big path's: the whole answer, checked in the golden tests.
    let answer = run_frame(xdp(&mut dp, PROG_LB), &too_big).data;
    assert_eq!(answer, too_big_answer(&too_big, None, 1480), "ICMP answer");
    let floor = time(
        xdp(&mut dp, PROG_BENCH_FLOOR),
        &cases[2].1,
        3,
        Before::Nothing,
    );
    results.push(("floor: MAC swap + XDP_TX".into(), floor.0, floor.1));
    for (name, frames, want, before) in &cases {
        let (median, p10) = time(xdp(&mut dp, PROG_LB), frames, *want, *before);
        results.push((name.to_string(), median, p10));
    }
    capture_rows(&mut dp, &maps, &cases, results);
    // Last, so the rows above run as they did before stateless VIPs.
    crate::stateless::per_packet_rows(
        &mut dp,
        &mut maps,
        sizes,
        vips.len() as u32,
        &mut id,
        results,
    );
    // Their memory back before the table-size rows load theirs.
    drop((dp, maps));
    crate::table_size::run(results);
}

/// `lbctl capture` recording every packet, its records drained by a
/// thread as lbd would: the cost of a capture while it runs (off, the
/// rows above pay one lookup and a branch).
fn capture_rows(
    dp: &mut Datapath,
    maps: &Maps,
    cases: &[(&str, Vec<Vec<u8>>, u32, Before)],
    results: &mut Vec<(String, f64, f64)>,
) {
    let mut capture = CaptureMaps::take(&mut dp.ebpf).expect("capture maps");
    let every = CaptureSpec {
        vip: None,
        count: MAX_COUNT,
        duration_s: 600,
        sample: 1,
    };
    capture.start(&every).expect("capture on");
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, drained) = (stop.clone(), drained.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = capture.drain(0).len() as u64;
                drained.fetch_add(n, Ordering::Relaxed);
                if n == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
            capture.off().expect("capture off");
        })
    };
    let lost_before = maps.reason_count(Reason::CaptureLost).unwrap();
    for (name, frames, want, before) in cases {
        if !CAPTURED_ROWS.contains(name) {
            continue;
        }
        let (median, p10) = time(xdp(dp, PROG_LB), frames, *want, *before);
        results.push((format!("{name}, capture on (every packet)"), median, p10));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("capture reader");
    let lost = maps.reason_count(Reason::CaptureLost).unwrap() - lost_before;
    println!(
        "capture rows: {} records read, {lost} lost to a full ring buffer",
        drained.load(Ordering::Relaxed)
    );
}

/// The rows timed again with capture on.
const CAPTURED_ROWS: &[&str] = &["IPv4 TCP established", "non-VIP (XDP_PASS)"];

/// `CALLS` frames of distinct TCP flows from random clients (seeded) to
/// `VIP_V4`:`port`, with `flags`: each call's packet is its flow's first.
pub fn fresh_flows(seed: u64, port: u16, flags: Tcp) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..CALLS)
        .map(|i| {
            let client = format!("203.0.113.{}", rng.random_range(1..255));
            to_lb(&tcp4(
                &client,
                1024 + (i % 60000) as u16,
                VIP_V4,
                port,
                flags,
                b"",
            ))
        })
        .collect()
}
