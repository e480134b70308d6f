//! The control protocol between `lbctl` and `lbd`: one JSON request per
//! line on a Unix socket, one JSON reply per line.
//!
//! Replies are `{"ok": true, "data": ...}` or `{"ok": false, "error":
//! "..."}`; an error is one line a person can act on. A request larger than
//! `MAX_REQUEST_BYTES`, or not valid JSON, gets an error reply and the
//! connection is closed; the daemon carries on.

use std::{net::IpAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use crate::{
    capture::{CaptureEvent, CaptureSpec},
    config::{AdminState, BackendConfig, BalancingMode, HardLimit, LoadSource, Protocol, Vip},
    config_format::ConfigFormat,
};

/// Largest request accepted (a whole configuration fits comfortably).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// A client must send its request within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Which VIP a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipRef {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// `198.51.100.10:443/tcp`, `[2001:db8::10]:443/tcp`: the one spelling of
/// a VIP in lbctl, metrics and logs.
impl std::fmt::Display for VipRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let socket = std::net::SocketAddr::new(self.address, self.port);
        write!(f, "{socket}/{}", self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Daemon, attachment and table state.
    Status,
    VipList,
    /// One VIP's balancing: weights, why, load reports, hard limits.
    VipShow {
        vip: VipRef,
    },
    VipAdd {
        /// Boxed: a VIP is far larger than any other request.
        vip: Box<Vip>,
    },
    VipDel {
        vip: VipRef,
    },
    BackendList {
        vip: Option<VipRef>,
    },
    BackendAdd {
        vip: VipRef,
        backend: BackendConfig,
    },
    BackendDel {
        vip: VipRef,
        address: IpAddr,
    },
    BackendDrain {
        vip: VipRef,
        address: IpAddr,
    },
    BackendUndrain {
        vip: VipRef,
        address: IpAddr,
    },
    BackendWeight {
        vip: VipRef,
        address: IpAddr,
        weight: u32,
    },
    /// Counters per VIP and backend (the client computes rates).
    Stats,
    /// Which backend a flow goes to, and why.
    Flow {
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        protocol: Protocol,
    },
    /// The flows in the connection table (`lbctl conn list`).
    ConnList {
        vip: Option<VipRef>,
        backend: Option<IpAddr>,
        client: Option<ipnet::IpNet>,
        probation: bool,
        limit: usize,
        scan: usize,
    },
    /// Replace the whole configuration with `text`, a file written in
    /// `format`. Left out for JSON, so that an lbd from before TOML takes
    /// the request as it always did (and refuses a TOML one by name).
    Apply {
        text: String,
        #[serde(default, skip_serializing_if = "ConfigFormat::is_json")]
        format: ConfigFormat,
    },
    ConfigDump,
    /// Withdraw every VIP from the network (`announce`); forwarding goes on.
    NodeDrain,
    /// Announce the VIPs again after `NodeDrain`.
    NodeResume,
    /// Capture packets with their verdicts (`lbctl capture`): replied to
    /// with one line per `CaptureEvent`, packets then an end.
    Capture {
        spec: CaptureSpec,
    },
}

/// The reply to [`Request::VipShow`] (`lbctl vip show`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipShow {
    pub vip: VipRef,
    pub mode: BalancingMode,
    pub source: LoadSource,
    pub hard_limit: Option<HardLimit>,
    /// Every backend in service is over the hard limit, so it is waived.
    pub hard_limit_waived: bool,
    pub backends: Vec<BackendShow>,
}

/// One backend of a [`VipShow`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendShow {
    pub address: IpAddr,
    /// `vips[].backends[].weight`.
    pub weight: u32,
    pub state: AdminState,
    /// `up`, `down` or `unchecked`.
    pub health: String,
    /// The weight its share of new flows follows, in units of the
    /// configured weight; `None` while it takes no new flows.
    pub effective_weight: Option<f64>,
    /// Why the effective weight is what it is.
    pub why: Option<String>,
    /// Its active flows on this node.
    pub active_flows: Option<u64>,
    /// Its last load report (`source` `prometheus` or `header`).
    pub report: Option<ReportShow>,
    /// Over its hard limit: no new flows (unless the limit is waived).
    pub over_hard_limit: bool,
}

/// A backend's last load report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportShow {
    /// The load over the capacity.
    pub utilization: Option<f64>,
    pub load: Option<f64>,
    /// The value the hard limit applies to.
    pub limit_value: Option<f64>,
    /// Seconds since the last good report.
    pub age_s: Option<f64>,
    /// Too old to count: the controller treats the backend as unreported.
    pub stale: bool,
    /// Why the latest report was unusable, if it was.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn data(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

/// Why a request to lbd failed. A cause is part of the message and is not
/// also returned from `source()` (see `crate::errors`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lbd at {path}: {error} (is lbd running? are you root?)")]
    Connect { path: String, error: std::io::Error },
    #[error("talking to lbd: {0}")]
    Io(std::io::Error),
    #[error("lbd sent a reply that is not valid: {0}")]
    BadReply(serde_json::Error),
    #[error("lbd closed the connection without replying")]
    NoReply,
    #[error("{0}")]
    Refused(String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(e: serde_json::Error) -> Self {
        Self::BadReply(e)
    }
}

/// Send one request and wait for its reply (the `lbctl` side).
pub async fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect {
            path: socket.display().to_string(),
            error,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read);
    let mut reply = String::new();
    if reader.read_line(&mut reply).await? == 0 {
        return Err(ClientError::NoReply);
    }
    let reply: Reply = serde_json::from_str(&reply)?;
    if reply.ok {
        Ok(reply.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(
            reply
                .error
                .unwrap_or_else(|| "lbd refused the request".into()),
        ))
    }
}

/// Send a capture request and hand each event lbd streams back to
/// `on_event`, up to and including the end (the `lbctl capture` side).
pub async fn capture(
    socket: &Path,
    spec: CaptureSpec,
    mut on_event: impl FnMut(CaptureEvent) -> Result<(), String>,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect {
            path: socket.display().to_string(),
            error,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&Request::Capture { spec })?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(text) = lines.next_line().await? {
        let reply: Reply = serde_json::from_str(&text)?;
        if !reply.ok {
            return Err(ClientError::Refused(
                reply
                    .error
                    .unwrap_or_else(|| "lbd refused the capture".into()),
            ));
        }
        let event: CaptureEvent = serde_json::from_value(reply.data.unwrap_or_default())?;
        let end = matches!(event, CaptureEvent::End(_));
        on_event(event).map_err(ClientError::Refused)?;
        if end {
            return Ok(());
        }
    }
    Err(ClientError::NoReply)
}

/// Read one request line of at most `MAX_REQUEST_BYTES` (the daemon side).
/// `Err` carries the reply to send before closing.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, Reply> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_line_limited(reader, &mut buf)).await;
    match read {
        Err(_) => Err(Reply::error(format!(
            "no complete request within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(Reply::error(format!("reading request: {e}"))),
        Ok(Ok(false)) if buf.is_empty() => Ok(None),
        Ok(Ok(_)) if buf.len() > MAX_REQUEST_BYTES => Err(Reply::error(format!(
            "request larger than {MAX_REQUEST_BYTES} bytes"
        ))),
        Ok(Ok(_)) => serde_json::from_slice(&buf)
            .map(Some)
            .map_err(|e| Reply::error(format!("malformed request: {e}"))),
    }
}

/// Read up to a newline, keeping at most one byte more than the limit.
/// Returns whether a newline ended the line.
async fn read_line_limited<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_REQUEST_BYTES + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if done {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            return Ok(true);
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::BackendDrain {
            vip: VipRef {
                address: "198.51.100.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            address: "198.51.100.101".parse().unwrap(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"cmd":"backend_drain""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests_get_errors() {
        let mut r = BufReader::new(&b"{\"cmd\":\"nope\"}\n"[..]);
        let e = read_request(&mut r).await.unwrap_err();
        assert!(
            e.error
                .unwrap()
                .starts_with("malformed request: unknown variant `nope`")
        );

        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let mut r = BufReader::new(&big[..]);
        let e = read_request(&mut r).await.unwrap_err();
        assert!(e.error.unwrap().starts_with("request larger than"));

        let mut r = BufReader::new(&b"{\"cmd\":\"status\"}\n"[..]);
        assert_eq!(read_request(&mut r).await.unwrap(), Some(Request::Status));
        let mut r = BufReader::new(&b""[..]);
        assert_eq!(read_request(&mut r).await.unwrap(), None);
    }

    /// An apply of a JSON file is the request lbds before TOML took; a
    /// TOML one names its format, which such an lbd refuses by name
    /// rather than reading TOML as JSON.
    #[test]
    fn apply_names_its_format_unless_json() {
        let apply = |format| Request::Apply {
            text: "{}".into(),
            format,
        };
        let json = serde_json::to_string(&apply(ConfigFormat::Json)).unwrap();
        assert_eq!(json, r#"{"cmd":"apply","text":"{}"}"#);
        let toml = serde_json::to_string(&apply(ConfigFormat::Toml)).unwrap();
        assert_eq!(toml, r#"{"cmd":"apply","text":"{}","format":"toml"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(&toml).unwrap(),
            apply(ConfigFormat::Toml)
        );

        /// `Request::Apply` as it was before TOML.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
        enum Before {
            Apply {
                #[allow(dead_code)]
                text: String,
            },
        }
        assert!(serde_json::from_str::<Before>(&json).is_ok());
        let refused = serde_json::from_str::<Before>(&toml).unwrap_err();
        assert!(
            refused.to_string().starts_with("unknown field `format`"),
            "{refused}"
        );
    }
}
