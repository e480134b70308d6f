//! The values lbctl parses from its arguments: VIPs, protocols,
//! forwarding modes and check kinds, each with the error a user sees.

use std::str::FromStr;

use lb_userspace::{
    config::{CheckKind, Forwarding, Protocol},
    control::VipRef,
};

/// A VIP written `198.51.100.10:80/tcp` or `[2001:db8::10]:443/udp`.
#[derive(Clone, Copy, Debug)]
pub struct VipArg(pub VipRef);

impl FromStr for VipArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a VIP (expected ADDRESS:PORT/PROTOCOL, e.g. 198.51.100.10:80/tcp)"
            )
        };
        let (sock, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let protocol = proto.parse::<ProtoArg>().map_err(|_| bad())?.0;
        let sock: std::net::SocketAddr = sock.parse().map_err(|_| bad())?;
        Ok(VipArg(VipRef {
            address: sock.ip(),
            port: sock.port(),
            protocol,
        }))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ProtoArg(pub Protocol);

impl FromStr for ProtoArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(ProtoArg(Protocol::Tcp)),
            "udp" => Ok(ProtoArg(Protocol::Udp)),
            _ => Err(format!("{s:?} is not a protocol (tcp or udp)")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ForwardingArg(pub Forwarding);

impl FromStr for ForwardingArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipip" => Ok(ForwardingArg(Forwarding::Ipip)),
            "l2_dsr" => Ok(ForwardingArg(Forwarding::L2Dsr)),
            _ => Err(format!("{s:?} is not a forwarding mode (ipip or l2_dsr)")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CheckArg(pub CheckKind);

impl FromStr for CheckArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CheckArg(CheckKind::None)),
            "tcp" => Ok(CheckArg(CheckKind::Tcp)),
            "http" => Ok(CheckArg(CheckKind::Http)),
            "udp" => Ok(CheckArg(CheckKind::Udp)),
            _ => Err(format!(
                "{s:?} is not a check type (none, tcp, http or udp)"
            )),
        }
    }
}
