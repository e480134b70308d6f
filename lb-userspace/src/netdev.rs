//! Network interfaces as this process's network namespace sees them (not
//! through /sys/class/net, which shows the namespace sysfs was mounted in).

use anyhow::{Context, bail};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface {name:?} does not exist");
    }
    Ok(index)
}

/// Whether interface `name` exists in this network namespace.
pub fn exists(name: &str) -> bool {
    ifindex(name).is_ok()
}

/// The name of the interface with index `ifindex`, if there is one.
pub fn name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let found = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The MAC address of interface `name` in this network namespace.
pub fn mac_address(name: &str) -> anyhow::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid socket and an ifreq naming the interface.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the MAC address of {name}"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// Whether interface `name` runs its XDP program in generic (skb) mode,
/// as the kernel reports it over netlink (`RTM_GETLINK`, `IFLA_XDP`).
pub fn xdp_is_generic(name: &str) -> anyhow::Result<bool> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex(name)?;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(message));
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    socket.bind_auto().context("netlink bind")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("netlink connect")?;
    socket.send(&buf, 0).context("RTM_GETLINK")?;
    let (reply, _) = socket.recv_from_full().context("RTM_GETLINK reply")?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .with_context(|| format!("reading the kernel's reply about {name}"))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Ok(attributes_say_generic(&link.attributes))
        }
        NetlinkPayload::Error(e) => Err(e.to_io()).with_context(|| format!("RTM_GETLINK {name}")),
        other => bail!("unexpected netlink reply {:?}", other.message_type()),
    }
}

/// Generic mode: the skb attachment alone, or several attachments of
/// which none is the driver's or the hardware's.
fn attributes_say_generic(attributes: &[LinkAttribute]) -> bool {
    let Some(xdp) = attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    }) else {
        return false;
    };
    let has = |want: fn(&LinkXdp) -> bool| xdp.iter().any(want);
    has(|x| matches!(x, LinkXdp::Attached(XdpAttached::SocketBuffer)))
        || (has(|x| matches!(x, LinkXdp::Attached(XdpAttached::Multiple)))
            && !has(|x| matches!(x, LinkXdp::DrvProgId(id) | LinkXdp::HwProgId(id) if *id != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skb_attachment_is_generic_and_the_driver_one_is_not() {
        let xdp = |x: Vec<LinkXdp>| vec![LinkAttribute::Xdp(x)];
        assert!(attributes_say_generic(&xdp(vec![
            LinkXdp::Attached(XdpAttached::SocketBuffer),
            LinkXdp::ProgId(7),
        ])));
        assert!(!attributes_say_generic(&xdp(vec![
            LinkXdp::Attached(XdpAttached::Driver),
            LinkXdp::ProgId(7),
        ])));
        assert!(!attributes_say_generic(&xdp(vec![LinkXdp::Attached(
            XdpAttached::None
        )])));
        assert!(!attributes_say_generic(&[]));
        assert!(attributes_say_generic(&xdp(vec![
            LinkXdp::Attached(XdpAttached::Multiple),
            LinkXdp::SkbProgId(7),
        ])));
        assert!(!attributes_say_generic(&xdp(vec![
            LinkXdp::Attached(XdpAttached::Multiple),
            LinkXdp::SkbProgId(7),
            LinkXdp::DrvProgId(8),
        ])));
    }

    #[test]
    fn loopback_without_a_program_is_not_generic() {
        assert!(!xdp_is_generic("lo").unwrap());
        assert!(xdp_is_generic("no-such-if0").is_err());
    }
}
