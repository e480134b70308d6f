//! `lbctl capture`: switching the data plane's packet capture on and off
//! (`lb_common::capture`) and reading its records.
//!
//! lbd owns the two capture maps; one capture runs at a time. The program
//! enforces the capture's deadline and budget itself, and a `Session`
//! switches capture off when dropped, so capture ends with its request
//! whether it ran its course, lbctl went away or lbd stopped; a restarted
//! lbd loads fresh (unpinned) capture maps, off.

use std::{net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, RingBuf},
};
use lb_common::{
    Reason,
    capture::{
        CAPTURE_ALL, CAPTURE_SNAP_LEN, CAPTURE_VIP, CaptureConfig, CaptureRecord, MAP_CAPTURE,
        MAP_CAPTURE_RING,
    },
};
use serde::{Deserialize, Serialize};

use crate::{control::VipRef, image::vip_key};

/// The longest capture a request may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most packets a request may ask for.
pub const MAX_COUNT: u64 = 1_000_000;

/// What to capture, as `lbctl capture` asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// Only packets for this VIP (destination address, port, protocol); a
    /// port of 0 takes every port of the address. None: every packet.
    pub vip: Option<VipRef>,
    /// Stop after this many packets.
    pub count: u64,
    /// Stop after this many seconds.
    pub duration_s: u64,
    /// Record one matching packet in this many (per CPU).
    pub sample: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture --count {0}: must be 1 to {MAX_COUNT}")]
    Count(u64),
    #[error("capture --duration {0}: must be 1 to {max} seconds", max = MAX_DURATION.as_secs())]
    Duration(u64),
    #[error("capture --sample {0}: must be at least 1")]
    Sample(u32),
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
}

impl CaptureSpec {
    /// Refuse what is out of bounds, saying which flag.
    pub fn check(&self) -> Result<(), CaptureError> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(CaptureError::Count(self.count));
        }
        if self.duration_s == 0 || self.duration_s > MAX_DURATION.as_secs() {
            return Err(CaptureError::Duration(self.duration_s));
        }
        if self.sample == 0 {
            return Err(CaptureError::Sample(self.sample));
        }
        Ok(())
    }

    /// The data plane's configuration for this capture, ending at
    /// `until_ns` on the program's clock (`monotonic_ns`).
    pub fn config(&self, until_ns: u64) -> CaptureConfig {
        let mut cfg = CaptureConfig {
            on: 1,
            sample: self.sample,
            until_ns,
            budget: self.count,
            filter: CAPTURE_ALL,
            ..CaptureConfig::default()
        };
        if let Some(vip) = &self.vip {
            let key = vip_key(vip.address, vip.port, vip.protocol);
            cfg.filter = CAPTURE_VIP;
            cfg.addr = key.addr;
            cfg.family = key.family;
            cfg.port = key.port;
            cfg.proto = key.proto;
        }
        cfg
    }
}

/// One captured packet, as lbd sends it to lbctl.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedPacket {
    /// When the verdict was made, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub ifindex: u32,
    /// `XDP_TX`, `XDP_PASS`, ...
    pub action: String,
    /// The verdict's counter name, as in `lbctl stats`.
    pub reason: String,
    /// The whole frame's length.
    pub frame_len: u32,
    /// Its first bytes (up to `CAPTURE_SNAP_LEN`), in hex.
    pub data: String,
}

impl CapturedPacket {
    /// From a ring-buffer record; `None` for one too short to be one.
    /// `clock_offset_ns` turns the program's monotonic time into Unix time.
    pub fn from_record(bytes: &[u8], clock_offset_ns: u64) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<CaptureRecord>() {
            return None;
        }
        // SAFETY: enough bytes for a CaptureRecord, plain data of any bit
        // pattern, read unaligned.
        let r: CaptureRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let captured = (r.captured_len as usize).min(CAPTURE_SNAP_LEN);
        Some(Self {
            time_ns: r.ts_ns.wrapping_add(clock_offset_ns),
            ifindex: r.ifindex,
            action: action_name(r.action).into(),
            reason: Reason::ALL
                .get(r.reason as usize)
                .map_or("unknown", |r| r.name())
                .into(),
            frame_len: r.frame_len,
            data: hex(&r.data[..captured]),
        })
    }

    /// The captured bytes.
    pub fn bytes(&self) -> Vec<u8> {
        (0..self.data.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.data[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
}

/// How a capture ended, lbd's last line to lbctl.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureEnd {
    pub packets: u64,
    /// `count` or `duration`: which bound ended it.
    pub ended_by: String,
    /// Records the ring buffer had no room for during the capture
    /// (`capture_lost`).
    pub lost: u64,
}

/// What lbd streams for a capture: packets, then one end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureEvent {
    Packet(CapturedPacket),
    End(CaptureEnd),
}

/// The XDP action's name.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_UNKNOWN",
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The program's clock (`bpf_ktime_get_ns`): CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// What to add to a `monotonic_ns` time to make it Unix time.
pub fn clock_offset_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).wrapping_sub(monotonic_ns())
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The capture maps of a loaded data plane.
pub struct CaptureMaps {
    config: Array<MapData, CaptureConfig>,
    pub ring: RingBuf<MapData>,
}

impl CaptureMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, CaptureError> {
        let config = ebpf
            .take_map(MAP_CAPTURE)
            .ok_or(CaptureError::Missing(MAP_CAPTURE))?;
        let ring = ebpf
            .take_map(MAP_CAPTURE_RING)
            .ok_or(CaptureError::Missing(MAP_CAPTURE_RING))?;
        Ok(Self {
            config: Array::try_from(config).map_err(map_err(MAP_CAPTURE))?,
            ring: RingBuf::try_from(ring).map_err(map_err(MAP_CAPTURE_RING))?,
        })
    }

    /// The data plane's capture configuration as it is now.
    pub fn config(&self) -> Result<CaptureConfig, CaptureError> {
        self.config.get(&0, 0).map_err(map_err(MAP_CAPTURE))
    }

    /// Write the data plane's capture configuration.
    pub fn set_config(&mut self, cfg: &CaptureConfig) -> Result<(), CaptureError> {
        self.config.set(0, cfg, 0).map_err(map_err(MAP_CAPTURE))
    }

    /// Switch capture off.
    pub fn off(&mut self) -> Result<(), CaptureError> {
        self.set_config(&CaptureConfig::default())
    }

    /// Every record waiting in the ring buffer, as packets.
    pub fn drain(&mut self, clock_offset_ns: u64) -> Vec<CapturedPacket> {
        self.drain_at_most(clock_offset_ns, usize::MAX)
    }

    /// At most `n` of the records waiting, as packets: under a fast
    /// stream of packets the ring may never be empty, and one read must
    /// not hold a worker or memory without bound.
    pub fn drain_at_most(&mut self, clock_offset_ns: u64, n: usize) -> Vec<CapturedPacket> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(item) = self.ring.next() else { break };
            out.extend(CapturedPacket::from_record(&item, clock_offset_ns));
        }
        out
    }

    /// Switch capture on for `spec` (records left from an earlier capture
    /// dropped first), until `duration_s` from now at the latest.
    pub fn start(&mut self, spec: &CaptureSpec) -> Result<(), CaptureError> {
        spec.check()?;
        self.off()?;
        self.drain(0);
        let until = monotonic_ns() + spec.duration_s * 1_000_000_000;
        self.set_config(&spec.config(until))
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> CaptureError {
    move |error| CaptureError::Map { name, error }
}

/// A captured frame's addresses, ports and protocol, as `lbctl capture`
/// prints them: `203.0.113.7:5353 > 198.51.100.10:53 udp`; for a tunnel,
/// the outer header then the inner one.
pub fn summary(frame: &[u8]) -> String {
    let at = |i: usize| frame.get(i).copied().unwrap_or(0);
    let mut ethertype = u16::from_be_bytes([at(12), at(13)]);
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([at(16), at(17)]);
        l3 = 18;
    }
    match ethertype {
        0x0800 | 0x86dd => ip_summary(frame, l3, 2),
        other => format!("ethertype 0x{other:04x}"),
    }
}

/// The IP packet at `l3`, and up to `depth - 1` packets tunnelled in it.
fn ip_summary(frame: &[u8], l3: usize, depth: u32) -> String {
    let bytes = |from: usize, len: usize| frame.get(from..from + len);
    let (src, dst, proto, l4) = match frame.get(l3).map(|b| b >> 4) {
        Some(4) => match (bytes(l3 + 12, 4), bytes(l3 + 16, 4)) {
            (Some(s), Some(d)) => {
                let s: [u8; 4] = s.try_into().unwrap_or_default();
                let d: [u8; 4] = d.try_into().unwrap_or_default();
                let ihl = usize::from(frame[l3] & 0xf) * 4;
                (
                    IpAddr::from(s),
                    IpAddr::from(d),
                    frame.get(l3 + 9),
                    l3 + ihl,
                )
            }
            _ => return "IPv4, cut short".into(),
        },
        Some(6) => match (bytes(l3 + 8, 16), bytes(l3 + 24, 16)) {
            (Some(s), Some(d)) => {
                let s: [u8; 16] = s.try_into().unwrap_or_default();
                let d: [u8; 16] = d.try_into().unwrap_or_default();
                (IpAddr::from(s), IpAddr::from(d), frame.get(l3 + 6), l3 + 40)
            }
            _ => return "IPv6, cut short".into(),
        },
        _ => return "IP, bad version".into(),
    };
    let proto = proto.copied().unwrap_or(0);
    let port = |at: usize| bytes(at, 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match (proto, port(l4), port(l4 + 2)) {
        (4 | 41, _, _) if depth > 1 => {
            format!(
                "{src} > {dst} ip-in-ip: {}",
                ip_summary(frame, l4, depth - 1)
            )
        }
        (6 | 17, Some(sp), Some(dp)) => {
            let name = crate::config::Protocol::from_number(proto).map_or("", |p| p.name());
            let s = std::net::SocketAddr::new(src, sp);
            let d = std::net::SocketAddr::new(dst, dp);
            format!("{s} > {d} {name}")
        }
        (1, _, _) => format!("{src} > {dst} icmp"),
        (58, _, _) => format!("{src} > {dst} icmpv6"),
        _ => format!("{src} > {dst} proto {proto}"),
    }
}

/// A pcapng file of captured packets (`lbctl capture -w`): one Ethernet
/// interface, an Enhanced Packet Block per packet with its whole length
/// and a comment naming its verdict and reason.
pub struct PcapngFile<W: std::io::Write> {
    writer: pcap_file::pcapng::PcapNgWriter<W>,
}

impl<W: std::io::Write> PcapngFile<W> {
    pub fn new(out: W) -> Result<Self, pcap_file::PcapError> {
        use pcap_file::pcapng::blocks::interface_description::{
            InterfaceDescriptionBlock, InterfaceDescriptionOption,
        };
        let mut writer = pcap_file::pcapng::PcapNgWriter::new(out)?;
        writer.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: pcap_file::DataLink::ETHERNET,
            snaplen: CAPTURE_SNAP_LEN as u32,
            // pcap-file writes nanoseconds; the default is microseconds.
            options: vec![
                InterfaceDescriptionOption::IfName("lb".into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        Ok(Self { writer })
    }

    pub fn write(&mut self, p: &CapturedPacket) -> Result<(), pcap_file::PcapError> {
        use pcap_file::pcapng::blocks::enhanced_packet::{
            EnhancedPacketBlock, EnhancedPacketOption,
        };
        let data = p.bytes();
        self.writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(p.time_ns),
            original_len: p.frame_len,
            data: data.into(),
            options: vec![EnhancedPacketOption::Comment(comment(p).into())],
        })?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.writer.into_inner()
    }
}

/// `verdict=XDP_TX reason=tx ifindex=3`: a packet's comment in a pcapng
/// file.
pub fn comment(p: &CapturedPacket) -> String {
    format!(
        "verdict={} reason={} ifindex={}",
        p.action, p.reason, p.ifindex
    )
}

/// lbd's capture: the maps, held by one request at a time.
pub struct Capturer {
    maps: tokio::sync::Mutex<tokio::io::unix::AsyncFd<CaptureMaps>>,
    /// Where `GLOBAL_STATS` is pinned, to count the records lost.
    pin_dir: std::path::PathBuf,
}

impl std::os::fd::AsRawFd for CaptureMaps {
    /// The ring buffer's: readable when records wait.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Switches capture off however a request ends (also when its task is
/// dropped mid-way).
struct Session<'a>(&'a mut tokio::io::unix::AsyncFd<CaptureMaps>);

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.get_mut().off() {
            tracing::error!(error = %e, "switching capture off");
        }
    }
}

impl Capturer {
    /// Must be called from within the tokio runtime.
    pub fn new(maps: CaptureMaps, pin_dir: std::path::PathBuf) -> std::io::Result<Self> {
        // SAFETY: `CaptureMaps` owns the ring buffer's descriptor, which
        // stays open as long as the AsyncFd holds the maps.
        let maps =
            unsafe { tokio::io::unix::AsyncFd::register(maps) }.map_err(|e| e.into_parts().1)?;
        Ok(Self {
            maps: tokio::sync::Mutex::new(maps),
            pin_dir,
        })
    }

    /// Records taken from the ring per wakeup at most.
    const BATCH: u64 = 1024;

    /// Run the capture `spec` asks for, sending each packet to `events`
    /// until the count or the duration is reached, or `gone` completes
    /// (the client went away: no end is sent then). Errors are a reason
    /// the capture could not run.
    pub async fn run(
        &self,
        spec: &CaptureSpec,
        gone: impl std::future::Future<Output = ()>,
        events: tokio::sync::mpsc::Sender<CaptureEvent>,
    ) -> Result<Option<CaptureEnd>, String> {
        spec.check().map_err(|e| e.to_string())?;
        let mut maps = self.maps.try_lock().map_err(|_| {
            "another capture is running (one at a time): wait for it to end".to_string()
        })?;
        let lost_before = self.lost();
        let offset = clock_offset_ns();
        maps.get_mut().start(spec).map_err(|e| e.to_string())?;
        let session = Session(&mut maps);
        let vip = spec
            .vip
            .map_or_else(|| "all".to_string(), |v| v.to_string());
        tracing::info!(%vip, count = spec.count, duration_s = spec.duration_s, sample = spec.sample, "capture started");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(spec.duration_s);
        let mut packets = 0u64;
        tokio::pin!(gone);
        // Records taken from the ring but not yet sent when the deadline
        // came: sent after the loop, ahead of those still in the ring.
        let mut pending = Vec::new();
        let ended_by = 'capture: loop {
            tokio::select! {
                ready = session.0.readable_mut() => {
                    let mut ready = ready.map_err(|e| format!("waiting for capture records: {e}"))?;
                    let want = (spec.count - packets).min(Self::BATCH) as usize;
                    let batch = ready.get_inner_mut().drain_at_most(offset, want);
                    // Records left behind keep the ring readable: only an
                    // emptied ring waits for the kernel's next wakeup.
                    if batch.len() < want {
                        ready.clear_ready();
                    }
                    let mut batch = batch.into_iter();
                    while let Some(p) = batch.next() {
                        // A client that stops reading holds neither the
                        // capture (one at a time) nor lbd past the deadline.
                        match send_before(&events, CaptureEvent::Packet(p), &mut gone, deadline).await {
                            Offer::Taken => packets += 1,
                            Offer::Late(CaptureEvent::Packet(p)) => {
                                pending.push(p);
                                pending.extend(batch);
                                break 'capture "duration";
                            }
                            Offer::Late(_) | Offer::Gone => return Ok(None),
                        }
                    }
                    if packets >= spec.count {
                        break "count";
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break "duration",
                _ = &mut gone => return Ok(None),
            }
        };
        // Records made before the end, still waiting.
        session.0.get_mut().off().map_err(|e| e.to_string())?;
        pending.extend(session.0.get_mut().drain(offset));
        drop(session);
        // The client has this long to take the last records and the end;
        // one that does not read lets the capture go all the same.
        let grace = tokio::time::Instant::now() + END_GRACE;
        let left = (spec.count - packets) as usize;
        for p in pending.into_iter().take(left) {
            match send_before(&events, CaptureEvent::Packet(p), &mut gone, grace).await {
                Offer::Taken => packets += 1,
                Offer::Late(_) | Offer::Gone => return Ok(None),
            }
        }
        let end = CaptureEnd {
            packets,
            ended_by: ended_by.into(),
            lost: self.lost().saturating_sub(lost_before),
        };
        match send_before(&events, CaptureEvent::End(end.clone()), &mut gone, grace).await {
            Offer::Taken => Ok(Some(end)),
            Offer::Late(_) | Offer::Gone => Ok(None),
        }
    }

    /// `capture_lost` now, summed over CPUs (0 if it cannot be read).
    fn lost(&self) -> u64 {
        let path = self.pin_dir.join(lb_common::maps::MAP_GLOBAL_STATS);
        let read = || -> Option<u64> {
            let data = MapData::from_pin(&path).ok()?;
            let stats =
                aya::maps::PerCpuArray::<MapData, u64>::try_from(aya::maps::Map::PerCpuArray(data))
                    .ok()?;
            let values = stats.get(&(Reason::CaptureLost as u32), 0).ok()?;
            Some(values.iter().sum())
        };
        read().unwrap_or(0)
    }
}

/// How long after a capture's end its client may take to read the last
/// records and the end before lbd lets the capture go without them.
const END_GRACE: Duration = Duration::from_secs(2);

/// What became of an event offered to the client.
enum Offer {
    Taken,
    /// Not taken by the time given: the event, unsent.
    Late(CaptureEvent),
    /// The client went away (or its channel closed).
    Gone,
}

/// Send `event` once the client's channel has room, unless `gone`
/// completes or `until` passes first.
async fn send_before(
    events: &tokio::sync::mpsc::Sender<CaptureEvent>,
    event: CaptureEvent,
    gone: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    until: tokio::time::Instant,
) -> Offer {
    tokio::select! {
        permit = events.reserve() => match permit {
            Ok(permit) => {
                permit.send(event);
                Offer::Taken
            }
            Err(_) => Offer::Gone,
        },
        _ = gone.as_mut() => Offer::Gone,
        _ = tokio::time::sleep_until(until) => Offer::Late(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(packets: u64) -> CaptureEvent {
        CaptureEvent::End(CaptureEnd {
            packets,
            ended_by: "count".into(),
            lost: 0,
        })
    }

    /// A client that stops reading cannot hold the capture: the event it
    /// did not take comes back at the time given; a closed channel or a
    /// client gone ends the sending at once.
    #[tokio::test]
    async fn a_client_that_does_not_read_lets_the_capture_go() {
        let (events, mut client) = tokio::sync::mpsc::channel(1);
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            send_before(&events, end(1), &mut never, until).await,
            Offer::Taken
        ));
        // The channel is full and nobody reads it.
        match send_before(&events, end(2), &mut never, until).await {
            Offer::Late(CaptureEvent::End(e)) => assert_eq!(e.packets, 2),
            _ => panic!("a full channel must give the event back at the deadline"),
        }
        assert!(matches!(client.recv().await, Some(CaptureEvent::End(e)) if e.packets == 1));
        let gone = std::future::ready(());
        tokio::pin!(gone);
        let later = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(matches!(
            send_before(&events, end(3), &mut gone, later).await,
            Offer::Taken | Offer::Gone
        ));
        drop(client);
        let mut never = std::pin::pin!(std::future::pending::<()>());
        assert!(matches!(
            send_before(&events, end(4), &mut never, later).await,
            Offer::Gone
        ));
    }

    fn record(action: u32, reason: Reason, frame: &[u8]) -> Vec<u8> {
        let mut r = CaptureRecord {
            ts_ns: 5,
            ifindex: 2,
            action,
            reason: reason as u32,
            frame_len: frame.len() as u32,
            captured_len: frame.len().min(CAPTURE_SNAP_LEN) as u32,
            _pad: 0,
            data: [0; CAPTURE_SNAP_LEN],
        };
        let n = frame.len().min(CAPTURE_SNAP_LEN);
        r.data[..n].copy_from_slice(&frame[..n]);
        // SAFETY: plain data, read as the bytes the ring buffer holds.
        unsafe {
            std::slice::from_raw_parts(
                (&r as *const CaptureRecord).cast::<u8>(),
                std::mem::size_of::<CaptureRecord>(),
            )
        }
        .to_vec()
    }

    /// Ethernet + IPv4 `src` > `dst` with protocol `proto`, then `rest`.
    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(rest);
        f
    }

    #[test]
    fn a_record_reads_back_with_its_names_and_bytes() {
        let frame = ipv4([203, 0, 113, 7], [198, 51, 100, 10], 17, &[0, 1, 0, 53]);
        let p = CapturedPacket::from_record(&record(1, Reason::DropNoBackend, &frame), 10).unwrap();
        assert_eq!(p.time_ns, 15);
        assert_eq!(
            (p.action.as_str(), p.reason.as_str()),
            ("XDP_DROP", "drop_no_backend")
        );
        assert_eq!(p.bytes(), frame);
        assert_eq!(
            comment(&p),
            "verdict=XDP_DROP reason=drop_no_backend ifindex=2"
        );
        assert!(
            CapturedPacket::from_record(&[0; 8], 0).is_none(),
            "short record"
        );
    }

    #[test]
    fn summary_shows_a_tunnel_and_the_packet_inside() {
        let inner = ipv4(
            [203, 0, 113, 7],
            [198, 51, 100, 10],
            17,
            &[0x9c, 0x40, 0, 53],
        );
        let outer = ipv4([198, 51, 100, 2], [198, 51, 100, 101], 4, &inner[14..]);
        assert_eq!(
            summary(&outer),
            "198.51.100.2 > 198.51.100.101 ip-in-ip: 203.0.113.7:40000 > 198.51.100.10:53 udp"
        );
        assert_eq!(summary(&inner[..30]), "IPv4, cut short");
        assert_eq!(summary(&[0u8; 14]), "ethertype 0x0000");
    }

    #[test]
    fn bounds_are_refused_naming_the_flag() {
        let ok = CaptureSpec {
            vip: None,
            count: 10,
            duration_s: 10,
            sample: 1,
        };
        assert!(ok.check().is_ok());
        let e = CaptureSpec { count: 0, ..ok }.check().unwrap_err();
        assert_eq!(e.to_string(), "capture --count 0: must be 1 to 1000000");
        let e = CaptureSpec {
            duration_s: 3601,
            ..ok
        }
        .check()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "capture --duration 3601: must be 1 to 3600 seconds"
        );
        let e = CaptureSpec { sample: 0, ..ok }.check().unwrap_err();
        assert_eq!(e.to_string(), "capture --sample 0: must be at least 1");
    }
}
