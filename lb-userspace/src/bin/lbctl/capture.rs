//! `lbctl capture`: packets and their verdicts, streamed from lbd, printed
//! one per line or written to a pcapng file.

use std::process::ExitCode;

use lb_userspace::{
    capture::{CaptureEvent, CaptureSpec, CapturedPacket, PcapngFile, summary},
    control::{self, Body},
};

use crate::Cli;

type PcapFile = PcapngFile<std::io::BufWriter<std::fs::File>>;

/// `lbctl capture`: stream the packets lbd captures to stdout or a pcapng
/// file until lbd ends the capture or Ctrl-C.
pub async fn capture(
    cli: &Cli,
    spec: CaptureSpec,
    file: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    spec.check().map_err(|e| e.to_string())?;
    // The file is created when lbd has accepted the capture (its first
    // event), so a refused capture leaves an existing file as it was.
    let create = |path: &std::path::Path| -> Result<PcapFile, String> {
        let out = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PcapngFile::new(std::io::BufWriter::new(out))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut pcap: Option<PcapFile> = None;
    let mut packets = 0u64;
    let mut end = None;
    let on_event = |event: Body<CaptureEvent>| -> Result<(), String> {
        if let (Some(path), None) = (file, &pcap) {
            pcap = Some(create(path)?);
        }
        match event.read {
            CaptureEvent::Packet(p) => {
                packets += 1;
                match (file, &mut pcap) {
                    (Some(path), Some(w)) => w
                        .write(&p)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                    // The packet as lbd sent it.
                    _ if cli.json => println!("{}", event.sent["packet"]),
                    _ => println!("{}", capture_line(&p)),
                }
            }
            CaptureEvent::End(e) => end = Some(e),
        }
        Ok(())
    };
    tokio::select! {
        r = control::capture(&cli.socket, spec, on_event) => r.map_err(|e| e.to_string())?,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stopped before any packet: the file says so (empty), rather than
    // leave an older capture there to be taken for this one's.
    if let (Some(path), None) = (file, &pcap) {
        pcap = Some(create(path)?);
    }
    if let (Some(path), Some(w)) = (file, pcap) {
        use std::io::Write;
        w.into_inner()
            .flush()
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let how = match &end {
        Some(e) if e.lost > 0 => format!(
            "{} by {}; {} more packets matched but the ring buffer was full (capture_lost)",
            e.packets, e.ended_by, e.lost
        ),
        Some(e) => format!("{} by {}", e.packets, e.ended_by),
        None => format!("{packets}, interrupted"),
    };
    if !cli.json {
        eprintln!("lbctl: captured {how}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `21:04:05.123456  if 3  203.0.113.7:5353 > 198.51.100.10:53 udp  XDP_DROP drop_no_backend  47 bytes`
fn capture_line(p: &CapturedPacket) -> String {
    let secs = p.time_ns / 1_000_000_000;
    let micros = (p.time_ns % 1_000_000_000) / 1000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}  if {}  {}  {} {}  {} bytes",
        day / 3600,
        day / 60 % 60,
        day % 60,
        p.ifindex,
        summary(&p.bytes()),
        p.action,
        p.reason,
        p.frame_len,
    )
}
