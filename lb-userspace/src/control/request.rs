//! The requests lbctl sends, and lbd's reading of them: one JSON line,
//! `{"v": 1, "cmd": "...", ...}`. A request larger than
//! `MAX_REQUEST_BYTES`, not valid JSON, or of a version lbd does not
//! answer gets an error reply and the connection is closed; the daemon
//! carries on.

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::{
    Reply,
    version::{self, PROTOCOL_VERSION, UNVERSIONED, VersionError},
};
use crate::{
    capture::CaptureSpec,
    config::{BackendConfig, Protocol, Vip},
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

/// What lbctl asks. Requests deny unknown fields: a request lbd does not
/// fully understand is refused rather than half done.
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
    /// `format` (left out for JSON, the format before TOML).
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

impl Request {
    /// The request's `cmd`, as it is sent (`vip_show`).
    pub fn cmd(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("cmd")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }
}

/// The request as lbctl sends it: its fields and `cmd`, with this build's
/// version as `v`.
pub fn encode(request: &Request) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::to_value(request)?;
    if let Value::Object(fields) = &mut value {
        fields.insert("v".into(), PROTOCOL_VERSION.into());
    }
    serde_json::to_vec(&value)
}

/// A request as lbd read it, with the version to answer it in.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The request's version (`UNVERSIONED` when it had none).
    pub version: u32,
    pub request: Request,
}

/// Why lbd refuses a request line.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0}")]
    Version(#[from] VersionError),
}

/// A request line as lbd reads it: its version (`UNVERSIONED` when it has
/// none), checked to be one lbd answers, then the request.
fn decode(line: &[u8]) -> Result<Received, Refused> {
    let malformed = |e: &dyn std::fmt::Display| Refused::Malformed(e.to_string());
    let mut value: Value = serde_json::from_slice(line).map_err(|e| malformed(&e))?;
    let v = match value.as_object_mut().and_then(|fields| fields.remove("v")) {
        None => UNVERSIONED,
        Some(v) => v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| malformed(&format!("v: {v} is not a version number")))?,
    };
    version::check_request(v)?;
    // Versions 0 and 1 ask the same: nothing to translate yet.
    let request = serde_json::from_value::<Request>(value.clone()).map_err(|e| malformed(&e))?;
    refuse_fields_of_a_request_without_any(&request, &value).map_err(|e| malformed(&e))?;
    Ok(Received {
        version: v,
        request,
    })
}

/// serde ignores `deny_unknown_fields` for the requests without fields
/// (`status`, `stats`, ...: serde-rs/serde#2123): lbd refuses a field of
/// those itself, as it does of the others.
fn refuse_fields_of_a_request_without_any(request: &Request, sent: &Value) -> Result<(), String> {
    let takes_fields = match serde_json::to_value(request) {
        Ok(Value::Object(fields)) => fields.len() > 1,
        _ => true,
    };
    let extra = sent
        .as_object()
        .and_then(|fields| fields.keys().find(|k| *k != "cmd"));
    match extra {
        Some(field) if !takes_fields => Err(format!(
            "unknown field `{field}`: `{}` takes no fields",
            request.cmd()
        )),
        _ => Ok(()),
    }
}

/// Read one request line of at most `MAX_REQUEST_BYTES` (the daemon side).
/// `Err` carries the reply to send before closing.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Received>, Reply> {
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
        Ok(Ok(_)) => decode(&buf)
            .map(Some)
            .map_err(|e| Reply::error(e.to_string())),
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
    use tokio::io::BufReader;

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
        let read = read_request(&mut r).await.unwrap().unwrap();
        assert_eq!(read.request, Request::Status);
        let mut r = BufReader::new(&b""[..]);
        assert_eq!(read_request(&mut r).await.unwrap(), None);
    }

    async fn read(line: &str) -> Result<Received, Reply> {
        let line = format!("{line}\n");
        read_request(&mut BufReader::new(line.as_bytes()))
            .await
            .map(|r| r.expect("a request"))
    }

    /// lbctl's requests carry its version; lbd reads them, and those of an
    /// lbctl from before versions, which carry none.
    #[tokio::test]
    async fn versioned_and_unversioned_requests_are_answered() {
        let request = Request::VipShow {
            vip: VipRef {
                address: "2001:db8::10".parse().unwrap(),
                port: 443,
                protocol: Protocol::Tcp,
            },
        };
        let sent = String::from_utf8(encode(&request).unwrap()).unwrap();
        let fields: Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(fields["v"], PROTOCOL_VERSION);
        assert_eq!(fields["cmd"], "vip_show");
        let received = read(&sent).await.unwrap();
        assert_eq!(
            (received.version, &received.request),
            (PROTOCOL_VERSION, &request)
        );
        let unversioned = serde_json::to_string(&request).unwrap();
        assert!(!unversioned.contains("\"v\""), "{unversioned}");
        let received = read(&unversioned).await.unwrap();
        assert_eq!(
            (received.version, &received.request),
            (UNVERSIONED, &request)
        );
        // Answered in the request's version, which an lbctl from before
        // versions ignores.
        assert_eq!(
            Reply::error("x").in_version(received.version).v,
            UNVERSIONED
        );
        assert_eq!(request.cmd(), "vip_show");
    }

    /// A request without fields with one is refused, as one with fields
    /// and an unknown one is: lbd never half-does a request.
    #[tokio::test]
    async fn an_unknown_field_is_refused_of_every_request() {
        for line in [
            r#"{"v":1,"cmd":"stats","anything":1}"#,
            r#"{"cmd":"stats","anything":1}"#,
        ] {
            let refused = read(line).await.unwrap_err();
            assert_eq!(
                refused.error.unwrap(),
                "malformed request: unknown field `anything`: `stats` takes no fields"
            );
        }
        let refused = read(r#"{"v":1,"cmd":"vip_list","anything":1}"#)
            .await
            .unwrap_err();
        assert!(refused.error.unwrap().contains("unknown field `anything`"));
        let refused = read(r#"{"v":1,"cmd":"backend_list","vip":null,"anything":1}"#)
            .await
            .unwrap_err();
        assert!(
            refused
                .error
                .unwrap()
                .starts_with("malformed request: unknown field `anything`")
        );
        assert!(read(r#"{"v":1,"cmd":"stats"}"#).await.is_ok());
        assert!(
            read(r#"{"v":1,"cmd":"backend_list","vip":null}"#)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_newer_or_unreadable_version_is_refused_by_name() {
        let newer = read(r#"{"v":2,"cmd":"status"}"#).await.unwrap_err();
        assert!(!newer.ok);
        assert_eq!(
            newer.error.unwrap(),
            "this lbctl speaks control protocol 2, this lbd speaks 1: use the lbctl shipped \
             with the running lbd (lbd --version)"
        );
        assert_eq!(newer.v, PROTOCOL_VERSION);
        let garbled = read(r#"{"v":-1,"cmd":"status"}"#).await.unwrap_err();
        assert_eq!(
            garbled.error.unwrap(),
            "malformed request: v: -1 is not a version number"
        );
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
