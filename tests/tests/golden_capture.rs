//! Golden packets for `lbctl capture` in the data plane: off, nothing is
//! recorded and every verdict is what it was; on, each packet's record
//! carries its verdict, reason and the frame as the program left it; the
//! program itself ends a capture at its deadline or budget.

use lb_common::{Reason, capture::CaptureConfig, flow::*};
use lb_tests::{harness::*, packets::*};
use lb_userspace::{
    capture::{CaptureMaps, CaptureSpec, CapturedPacket, monotonic_ns},
    config::Protocol,
    control::VipRef,
};

/// A VIP on UDP port 53 with one backend, port 54 of the same address
/// with none, and the capture maps.
fn setup() -> (Lb, CaptureMaps) {
    let mut lb = Lb::new();
    lb.add_vip(
        vip_key(VIP_V4, 53, PROTO_UDP),
        0,
        &[BackendSpec::new(1, BACKEND_V4[0])],
    );
    lb.add_vip(vip_key(VIP_V4, 54, PROTO_UDP), 0, &[]);
    let capture = CaptureMaps::take(&mut lb.dp.ebpf).expect("capture maps");
    (lb, capture)
}

/// The frames of the tests, with the verdict each gets.
struct Frames {
    forwarded: Vec<u8>,
    inner: Vec<u8>,
    no_backend: Vec<u8>,
    non_vip: Vec<u8>,
    /// Cut short inside its UDP header, so shorter than its IP header's
    /// total length: `pass_bad_ip_header`.
    malformed: Vec<u8>,
}

fn frames() -> Frames {
    let inner = udp4(CLIENT_V4, 5353, VIP_V4, 53, b"query");
    let short = udp4(CLIENT_V4, 5353, VIP_V4, 53, b"");
    let mut malformed = to_lb(&short);
    malformed.truncate(14 + 20 + 4);
    Frames {
        forwarded: to_lb(&inner),
        inner,
        no_backend: to_lb(&udp4(CLIENT_V4, 5353, VIP_V4, 54, b"query")),
        non_vip: to_lb(&udp4(CLIENT_V4, 5353, "198.51.100.99", 53, b"query")),
        malformed,
    }
}

fn all(count: u64) -> CaptureSpec {
    CaptureSpec {
        vip: None,
        count,
        duration_s: 60,
        sample: 1,
    }
}

/// Run every frame: its outcome and the counters it moved.
fn run_all(lb: &mut Lb, frames: &[&Vec<u8>]) -> Vec<(Outcome, Vec<(Reason, u64)>)> {
    frames.iter().map(|f| lb.run_counted(f)).collect()
}

#[test]
fn golden_capture_off_records_nothing_and_on_changes_no_verdict() {
    let f = frames();
    let sent = [&f.forwarded, &f.no_backend, &f.non_vip, &f.malformed];
    let (mut lb, mut capture) = setup();
    assert_eq!(
        capture.config().unwrap(),
        CaptureConfig::default(),
        "off at load"
    );
    let off = run_all(&mut lb, &sent);
    assert!(capture.drain(0).is_empty(), "capture off recorded packets");

    // The same packets through a fresh data plane (new flows again).
    let (mut lb, mut capture) = setup();
    capture.start(&all(100)).unwrap();
    let on = run_all(&mut lb, &sent);
    assert_eq!(on, off, "capture changed a verdict, a frame or a counter");
    assert_eq!(capture.drain(0).len(), sent.len());
    assert_eq!(lb.count(Reason::CaptureLost), 0);
}

#[test]
fn golden_capture_records_verdict_reason_and_frame_as_sent() {
    let (mut lb, mut capture) = setup();
    let f = frames();
    capture.start(&all(100)).unwrap();
    let t0 = monotonic_ns();
    let outcomes: Vec<Outcome> = [&f.forwarded, &f.no_backend, &f.non_vip, &f.malformed]
        .iter()
        .map(|frame| lb.run(frame))
        .collect();
    let records = capture.drain(0);
    let seen: Vec<(&str, &str, u32)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.reason.as_str(), r.frame_len))
        .collect();
    let tunnelled_frame = tunnelled(&f.inner, BACKEND_V4[0]);
    assert_eq!(
        seen,
        [
            ("XDP_TX", "tx", tunnelled_frame.len() as u32),
            ("XDP_DROP", "drop_no_backend", f.no_backend.len() as u32),
            ("XDP_PASS", "pass_non_vip", f.non_vip.len() as u32),
            ("XDP_PASS", "pass_bad_ip_header", f.malformed.len() as u32),
        ]
    );
    // Sent on: the frame as sent, tunnel and all. Dropped or passed: as
    // received (which is also as left).
    assert_eq!(records[0].bytes(), tunnelled_frame);
    assert_eq!(records[0].bytes(), outcomes[0].data);
    assert_eq!(records[1].bytes(), f.no_backend);
    assert_eq!(records[2].bytes(), f.non_vip);
    assert_eq!(records[3].bytes(), f.malformed);
    let t1 = monotonic_ns();
    assert!(records.iter().all(|r| (t0..=t1).contains(&r.time_ns)));
}

#[test]
fn golden_capture_vip_filter_sampling_and_snap_length() {
    let (mut lb, mut capture) = setup();
    let f = frames();
    let vip = VipRef {
        address: VIP_V4.parse().unwrap(),
        port: 54,
        protocol: Protocol::Udp,
    };
    capture
        .start(&CaptureSpec {
            vip: Some(vip),
            ..all(100)
        })
        .unwrap();
    // Right after the VIP's packet, one with no flow of its own (a VLAN
    // tag cut short, `pass_short_frame`): it must not match by the flow
    // the previous packet left in the scratch.
    let cut_tag = frame(LB_MAC, ROUTER_MAC, None, 0x8100, &[0, 1]);
    for frame in [
        &f.forwarded,
        &f.no_backend,
        &cut_tag,
        &f.non_vip,
        &f.malformed,
    ] {
        lb.run(frame);
    }
    let reasons = |records: Vec<CapturedPacket>| -> Vec<String> {
        records.into_iter().map(|r| r.reason).collect()
    };
    assert_eq!(reasons(capture.drain(0)), ["drop_no_backend"]);

    // One in three, counted per CPU (the test runs stay on one).
    capture
        .start(&CaptureSpec {
            sample: 3,
            ..all(100)
        })
        .unwrap();
    for _ in 0..9 {
        lb.run(&f.non_vip);
    }
    assert_eq!(capture.drain(0).len(), 3);

    // A frame longer than the snap length: its first 256 bytes.
    capture.start(&all(100)).unwrap();
    let big = to_lb(&udp4(CLIENT_V4, 5353, "198.51.100.99", 53, &[0xab; 600]));
    lb.run(&big);
    let r = &capture.drain(0)[0];
    assert_eq!(r.frame_len as usize, big.len());
    assert_eq!(r.bytes(), big[..256]);
}

#[test]
fn golden_capture_deadline_and_budget_switch_capture_off_in_the_data_plane() {
    let (mut lb, mut capture) = setup();
    let f = frames();
    // A capture whose userspace is gone: only the program can end it.
    let cfg = all(100).config(monotonic_ns() + 300_000_000);
    capture.set_config(&cfg).unwrap();
    lb.run(&f.non_vip);
    assert_eq!(capture.drain(0).len(), 1, "recorded before the deadline");
    std::thread::sleep(std::time::Duration::from_millis(400));
    lb.run(&f.non_vip);
    assert!(capture.drain(0).is_empty(), "recorded after the deadline");
    assert_eq!(
        capture.config().unwrap().on,
        0,
        "the program switched it off"
    );

    capture.set_config(&all(2).config(u64::MAX)).unwrap();
    for _ in 0..5 {
        lb.run(&f.non_vip);
    }
    assert_eq!(capture.drain(0).len(), 2, "budget of two records");
    assert_eq!(
        capture.config().unwrap().on,
        0,
        "the program switched it off"
    );
}
