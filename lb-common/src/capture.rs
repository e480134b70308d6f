//! Packet capture with verdicts (`lbctl capture`): the switch lbd writes
//! and the record the `lb` program emits for each captured packet.
//!
//! Capture is off unless `CaptureConfig::on` is set, and then bounded in
//! the data plane itself: by a deadline (`until_ns`), a record budget and
//! 1-in-N sampling, so it stops even if no one is left to turn it off.
//! Neither map is pinned: a restarted lbd starts with capture off.

/// `Array<CaptureConfig>`, one entry.
pub const MAP_CAPTURE: &str = "CAPTURE";
/// `RingBuf` of `CaptureRecord`s.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";

/// Bytes of each frame a record carries at most.
pub const CAPTURE_SNAP_LEN: usize = 256;
/// Size of the ring buffer: about 3,600 records waiting for lbd.
pub const CAPTURE_RING_BYTES: u32 = 1 << 20;

/// `CaptureConfig::filter`: every packet.
pub const CAPTURE_ALL: u8 = 0;
/// `CaptureConfig::filter`: packets whose parsed flow is for one VIP
/// (destination address, port and protocol).
pub const CAPTURE_VIP: u8 = 1;

/// The single entry of `CAPTURE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Nonzero: capturing. The program clears it itself once `until_ns`
    /// has passed.
    pub on: u32,
    /// Record one matching packet in `sample` (0 and 1: every one).
    pub sample: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) after which capture is off.
    pub until_ns: u64,
    /// Records to emit, about: `emitted` counts up to it, but CPUs
    /// recording at the same moment may each count one record as theirs.
    pub budget: u64,
    pub emitted: u64,
    /// `CAPTURE_ALL` or `CAPTURE_VIP`.
    pub filter: u8,
    /// With `CAPTURE_VIP`: the VIP's protocol, address family and
    /// address (as in `FlowKey`), and port (host order, as `FlowKey`).
    pub proto: u8,
    pub family: u8,
    pub _pad: u8,
    pub port: u16,
    pub _pad2: [u8; 2],
    pub addr: [u8; 16],
}

/// One captured packet, as the program left it: for a packet sent on
/// (XDP_TX, XDP_REDIRECT), the frame as sent, after encapsulation or
/// rewrite; for one passed or dropped, the frame as received.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the verdict was made.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// The XDP action returned (`XDP_PASS` = 2, ...).
    pub action: u32,
    /// The verdict's `Reason` discriminant.
    pub reason: u32,
    /// Length of the whole frame.
    pub frame_len: u32,
    /// Bytes of it in `data`: at most `CAPTURE_SNAP_LEN`.
    pub captured_len: u32,
    pub _pad: u32,
    pub data: [u8; CAPTURE_SNAP_LEN],
}

const _: () = assert!(core::mem::size_of::<CaptureConfig>() == 56);
// The program bounds the copy with a mask.
const _: () = assert!(CAPTURE_SNAP_LEN.is_power_of_two());
const _: () = assert!(core::mem::size_of::<CaptureRecord>() == 32 + CAPTURE_SNAP_LEN);

// SAFETY: #[repr(C)] plain data with its padding spelled out as fields.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CaptureConfig {}
