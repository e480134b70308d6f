//! Frames an interface receives, read through a packet socket opened in
//! its namespace: what the data plane really sent out of a peer interface.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// A packet socket bound to one interface; closed on drop.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Capture what `dev` of `ns` receives from now on.
    pub fn open(ns: &Netns, dev: &str) -> Self {
        let ifindex = ns.ifindex(dev);
        let all = (libc::ETH_P_ALL as u16).to_be();
        ns.enter(|| {
            // SAFETY: plain socket(2); the fd is owned at once.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    all as i32,
                )
            };
            assert!(
                raw >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: all-zero is a valid sockaddr_ll; the fields set below
            // make it name the interface.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = all;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: a valid socket and a sockaddr_ll of the size given.
            let bound = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let wait = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: a valid socket and a timeval of the size given.
            let set = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &wait as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            assert_eq!(set, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            Self { fd }
        })
    }

    /// The first frame received that `wanted` accepts, waiting at most
    /// `timeout` (other frames, such as IPv6 neighbour discovery, are
    /// skipped).
    pub fn find(&self, timeout: Duration, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: a valid socket and a buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n > 0 && wanted(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}
