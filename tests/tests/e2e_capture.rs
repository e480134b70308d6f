//! `lbctl capture` against a real lbd: traffic through the topology of
//! `lb_tests::topology` while a capture runs, then the pcapng file holds
//! each packet with the verdict and reason it got.

use std::{
    net::UdpSocket,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    backend_server::BackendServer,
    lbd::{Lbd, Paths, binary},
    packets::frame,
    topology::{CLIENT, LB, Topology, VIP},
};
use pcap_file::pcapng::{
    Block, PcapNgReader,
    blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
};
use serde_json::json;

/// A running `lbctl capture`, killed on drop.
struct Capture(Option<Child>);

impl Capture {
    /// Wait for it to end by itself.
    fn finish(mut self) -> std::process::Output {
        let child = self.0.take().expect("running");
        child.wait_with_output().expect("lbctl capture")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_capture(lbd: &Lbd, args: &[&str]) -> Capture {
    let child = Command::new(binary("lbctl"))
        .arg("--socket")
        .arg(&lbd.paths.socket)
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lbctl capture");
    Capture(Some(child))
}

/// Wait until lbd has logged that `capture` started.
fn wait_for_capture_start(lbd: &Lbd, capture: &mut Capture) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lbd.log().contains("capture started") {
        let child = capture.0.as_mut().expect("running");
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("lbctl capture exited ({status}): {stderr}\n{}", lbd.log());
        }
        assert!(
            Instant::now() < deadline,
            "capture did not start:\n{}",
            lbd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The UDP payload of the innermost IPv4 packet of an Ethernet frame (the
/// inner one of an IP-in-IP tunnel), if the frame holds all of it.
fn udp_payload(f: &[u8]) -> Option<&[u8]> {
    let mut l3 = 14;
    if f.get(l3 + 9) == Some(&4) {
        l3 += 20;
    }
    (f.get(l3 + 9) == Some(&17)).then_some(())?;
    f.get(l3 + 28..)
}

fn comment(b: &EnhancedPacketBlock) -> String {
    b.options
        .iter()
        .find_map(|o| match o {
            EnhancedPacketOption::Comment(c) => Some(c.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

fn read_pcapng(path: &Path) -> Vec<EnhancedPacketBlock<'static>> {
    let file = std::fs::File::open(path).expect("capture file");
    let mut reader = PcapNgReader::new(file).expect("a pcapng file");
    let mut packets = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.expect("a pcapng block") {
            packets.push(p.into_owned());
        }
    }
    packets
}

#[test]
fn e2e_capture_records_packets_with_their_verdicts() {
    let topo = Topology::new(2);
    let _servers: Vec<BackendServer> = topo.backends.iter().map(|b| b.serve()).collect();
    let mut config = topo.lbd_config(53, "udp", json!({"type": "none"}));
    // Port 54 of the VIP has no backend: its packets are dropped.
    config["vips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"address": VIP.to_string(), "port": 54, "protocol": "udp", "backends": []}));
    let lbd = Lbd::start(&topo.lb, Paths::new("capture"), config);
    let file = lbd.paths.dir.join("capture.pcapng");
    let mut capture = start_capture(
        &lbd,
        &[
            "--duration",
            "6",
            "--count",
            "1000",
            "-w",
            file.to_str().unwrap(),
        ],
    );
    wait_for_capture_start(&lbd, &mut capture);

    // One capture at a time: a second one is refused, saying why.
    let second = lb_tests::lbd::run_lbctl(
        &binary("lbctl"),
        &lbd.paths.socket,
        &["capture", "--count", "1", "--duration", "1"],
    );
    assert!(!second.status.success());
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(why.contains("another capture is running"), "{why}");

    topo.client.enter(|| {
        let s = UdpSocket::bind((CLIENT, 0)).unwrap();
        for i in 0..4 {
            s.send_to(format!("cap-fwd-{i}").as_bytes(), (VIP, 53))
                .unwrap();
        }
        for i in 0..3 {
            s.send_to(format!("cap-nob-{i}").as_bytes(), (VIP, 54))
                .unwrap();
        }
        for i in 0..2 {
            s.send_to(format!("cap-nonvip-{i}").as_bytes(), (VIP, 55))
                .unwrap();
        }
    });
    // A UDP header cut short inside a well-formed IPv4 packet (the bridge
    // on the way drops a bad IPv4 header): 24 bytes, 4 of them UDP.
    let mut ip = vec![0x45, 0, 0, 24, 0, 1, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&CLIENT.octets());
    ip.extend_from_slice(&VIP.octets());
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0, 53]);
    let malformed = frame(
        topo.lb.mac("eth0"),
        topo.client.mac("eth0"),
        None,
        0x0800,
        &ip,
    );
    topo.client
        .send_frames("eth0", std::slice::from_ref(&malformed));

    let out = capture.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", lbd.log());
    assert!(stderr.contains("by duration"), "{stderr}");

    let packets = read_pcapng(&file);
    let mut seen: Vec<(String, String)> = Vec::new();
    for p in &packets {
        assert_eq!(p.original_len as usize, p.data.len(), "whole small frames");
        let note = comment(p);
        if p.data[..] == malformed[..] {
            seen.push(("malformed".into(), note));
            continue;
        }
        let Some(payload) = udp_payload(&p.data) else {
            continue;
        };
        let text = String::from_utf8_lossy(payload).to_string();
        let Some(tag) = text.strip_prefix("cap-") else {
            continue;
        };
        if tag.starts_with("fwd") {
            // As sent: tunnelled from the LB to a backend.
            assert_eq!(p.data[14 + 9], 4, "IP-in-IP: {tag}");
            assert_eq!(p.data[26..30], LB.octets(), "outer source: {tag}");
            let to: [u8; 4] = p.data[30..34].try_into().unwrap();
            assert!(
                topo.backends.iter().any(|b| b.addr.octets() == to),
                "outer destination {to:?} is a backend"
            );
        } else {
            // As received: from the client to the VIP, on the LB's MAC.
            assert_eq!(p.data[..6], topo.lb.mac("eth0"), "{tag}");
            assert_eq!(p.data[30..34], VIP.octets(), "{tag}");
        }
        seen.push((tag.to_string(), note));
    }
    seen.sort();
    let want = |tag: &str, note: &str| (tag.to_string(), note.to_string());
    let ifindex = topo.lb.ifindex("eth0");
    let tx = format!("verdict=XDP_TX reason=tx ifindex={ifindex}");
    let dropped = format!("verdict=XDP_DROP reason=drop_no_backend ifindex={ifindex}");
    let passed = format!("verdict=XDP_PASS reason=pass_non_vip ifindex={ifindex}");
    let bad = format!("verdict=XDP_PASS reason=pass_bad_l4_header ifindex={ifindex}");
    assert_eq!(
        seen,
        [
            want("fwd-0", &tx),
            want("fwd-1", &tx),
            want("fwd-2", &tx),
            want("fwd-3", &tx),
            want("malformed", &bad),
            want("nob-0", &dropped),
            want("nob-1", &dropped),
            want("nob-2", &dropped),
            want("nonvip-0", &passed),
            want("nonvip-1", &passed),
        ],
        "lbd log:\n{}",
        lbd.log()
    );

    // tcpdump reads the file too.
    let read = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump (cargo xtask setup installs it)");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let lines = String::from_utf8_lossy(&read.stdout).lines().count();
    assert_eq!(lines, packets.len(), "tcpdump lists every packet");
}

/// lbctl killed mid-capture: lbd ends the capture at once, and the next
/// one may start.
#[test]
fn e2e_capture_ends_when_lbctl_is_killed() {
    let topo = Topology::new(1);
    let lbd = Lbd::start(
        &topo.lb,
        Paths::new("capkill"),
        topo.lbd_config(53, "udp", json!({"type": "none"})),
    );
    let mut capture = start_capture(&lbd, &["--duration", "600"]);
    wait_for_capture_start(&lbd, &mut capture);
    drop(capture);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lbd.log().contains("capture ended: lbctl went away") {
        assert!(
            Instant::now() < deadline,
            "capture still on:\n{}",
            lbd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let next = lb_tests::lbd::run_lbctl(
        &binary("lbctl"),
        &lbd.paths.socket,
        &["capture", "--count", "1", "--duration", "1"],
    );
    let why = String::from_utf8_lossy(&next.stderr);
    assert!(next.status.success(), "{why}\n{}", lbd.log());
    assert!(
        why.contains("by duration") || why.contains("by count"),
        "{why}"
    );
}
