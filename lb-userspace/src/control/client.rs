//! lbctl's end of the control socket: send a versioned request, check the
//! reply's version before its body, and read the body into the type the
//! request gets back.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    Reply, Request,
    version::{self, PROTOCOL_VERSION, VersionError},
};
use crate::capture::{CaptureEvent, CaptureSpec};

/// Why a request to lbd failed. A cause is part of the message and is not
/// also returned from `source()` (see `crate::errors`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lbd at {path}: {error} (is lbd running? are you root?)")]
    Connect { path: String, error: std::io::Error },
    #[error("talking to lbd: {0}")]
    Io(std::io::Error),
    /// The request could not be written as JSON (not expected).
    #[error("encoding the request: {0}")]
    Encode(serde_json::Error),
    #[error("lbd sent a reply that is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error(
        "lbd sent a reply whose version is not a number (v: {v}); {advice}",
        advice = version::advice()
    )]
    BadVersion { v: Value },
    #[error("{0}")]
    Version(VersionError),
    /// The reply, or its body, is not what this lbctl expects of `cmd`:
    /// `what` names the field (`data.backends[0].weight: ...`).
    #[error(
        "lbd's reply to `{cmd}` cannot be read (lbd speaks control protocol {lbd}, this lbctl \
         speaks {PROTOCOL_VERSION}): {what}; {}",
        version::advice()
    )]
    Unreadable { cmd: String, lbd: u32, what: String },
    #[error("the control socket answered with JSON that is not an lbd reply (no `ok`)")]
    NotAReply,
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

/// A reply's body, read as `T` and as lbd sent it: `--json` prints the
/// latter, with any field this lbctl does not know and none it made up.
#[derive(Clone, Debug, PartialEq)]
pub struct Body<T> {
    pub read: T,
    pub sent: Value,
}

/// Send one request and read its reply's body as `T` (the `lbctl` side).
pub async fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, ClientError> {
    call_for_body(socket, request).await.map(|body| body.read)
}

/// `call`, keeping the body as lbd sent it too.
pub async fn call_for_body<T: DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> Result<Body<T>, ClientError> {
    let (mut reader, _write) = send(socket, request).await?;
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(ClientError::NoReply);
    }
    read_reply(request, &line)
}

/// Send a capture request and hand each event lbd streams back to
/// `on_event` (read, and as sent), up to and including the end (the
/// `lbctl capture` side). An event of a kind this lbctl does not know
/// (`{"kind": {...}}` from a newer lbd) is skipped.
pub async fn capture(
    socket: &Path,
    spec: CaptureSpec,
    mut on_event: impl FnMut(Body<CaptureEvent>) -> Result<(), String>,
) -> Result<(), ClientError> {
    let request = Request::Capture { spec };
    // Held open until the end: lbd takes the connection's end for lbctl's.
    let (reader, _write) = send(socket, &request).await?;
    let mut lines = reader.lines();
    while let Some(line) = lines.next_line().await? {
        let (lbd, sent) = read_envelope(&request, &line)?;
        let known = ["packet", "end"];
        if sent
            .as_object()
            .is_some_and(|kinds| kinds.len() == 1 && kinds.keys().all(|k| !known.contains(&&**k)))
        {
            continue;
        }
        let event = Body {
            read: read_body(&request, lbd, &sent)?,
            sent,
        };
        let end = matches!(event.read, CaptureEvent::End(_));
        on_event(event).map_err(ClientError::Refused)?;
        if end {
            return Ok(());
        }
    }
    Err(ClientError::NoReply)
}

/// Connect and write `request` with this lbctl's version; the reading half
/// is left for the replies, and the writing half to the caller to close
/// (dropping it shuts the connection's writing side down).
async fn send(
    socket: &Path,
    request: &Request,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| ClientError::Connect {
            path: socket.display().to_string(),
            error,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = super::request::encode(request).map_err(ClientError::Encode)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok((BufReader::new(read), write))
}

/// One reply line to `request`, in this order: JSON at all; a version this
/// lbctl reads; an envelope; a refusal; a body of type `T`. So a newer lbd
/// is named as such whatever else changed in its reply.
pub fn read_reply<T: DeserializeOwned>(
    request: &Request,
    line: &str,
) -> Result<Body<T>, ClientError> {
    let (lbd, sent) = read_envelope(request, line)?;
    Ok(Body {
        read: read_body(request, lbd, &sent)?,
        sent,
    })
}

/// `read_reply` up to the body: lbd's version and the body as sent.
fn read_envelope(request: &Request, line: &str) -> Result<(u32, Value), ClientError> {
    let value: Value = serde_json::from_str(line).map_err(ClientError::NotJson)?;
    let unreadable = |lbd: u32, what: String| ClientError::Unreadable {
        cmd: request.cmd(),
        lbd,
        what,
    };
    let lbd = match value.get("v") {
        // Every lbd since versions puts `v` in every reply. An lbd from
        // before them refuses the `v` of most requests, but answers those
        // without arguments (`status`, `vip_list`, `stats`, `config_dump`)
        // as if it were not there (serde ignores `deny_unknown_fields` on
        // such variants, serde-rs/serde#2123; builds between the two may
        // also have carried out `node_drain` or `node_resume`): its success
        // is not to be read as this version's either. Something that is
        // not an lbd reply at all (no boolean `ok`) is not called one.
        None if value.get("ok").is_some_and(Value::is_boolean) => {
            return Err(ClientError::Version(VersionError::UnversionedLbd));
        }
        None => return Err(ClientError::NotAReply),
        Some(v) => v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ClientError::BadVersion { v: v.clone() })?,
    };
    version::check_reply(lbd).map_err(ClientError::Version)?;
    let reply: Reply<Value> =
        serde_path_to_error::deserialize(&value).map_err(|e| unreadable(lbd, at("", e)))?;
    if !reply.ok {
        let error = reply
            .error
            .unwrap_or_else(|| "lbd refused the request".into());
        return Err(ClientError::Refused(error));
    }
    Ok((lbd, reply.data.unwrap_or(Value::Null)))
}

/// A reply's body as `T`, or what could not be read in it.
fn read_body<T: DeserializeOwned>(
    request: &Request,
    lbd: u32,
    data: &Value,
) -> Result<T, ClientError> {
    serde_path_to_error::deserialize(data).map_err(|e| ClientError::Unreadable {
        cmd: request.cmd(),
        lbd,
        what: at("data", e),
    })
}

/// `within.path.to.field: what is wrong`, the path as serde_path_to_error
/// follows it (`.` for the value itself).
fn at(within: &str, e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = match (within, e.path().to_string()) {
        (within, path) if path == "." => within.to_string(),
        ("", path) => path,
        (within, path) if path.starts_with('[') => format!("{within}{path}"),
        (within, path) => format!("{within}.{path}"),
    };
    match path.as_str() {
        "" => e.into_inner().to_string(),
        path => format!("{path}: {}", e.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Applied, Stats};

    fn stats_line(v: &str, data: &str) -> String {
        format!(r#"{{{v}"ok":true,"data":{data}}}"#)
    }

    const STATS: &str = r#"{"time_s":1.5,"vips":[],"backends":[],"counters":{"pass_non_vip":3}}"#;

    #[test]
    fn a_reply_of_this_version_is_read_and_kept_as_sent() {
        let body: Body<Stats> =
            read_reply(&Request::Stats, &stats_line(r#""v":1,"#, STATS)).unwrap();
        assert_eq!(body.read.counters["pass_non_vip"], 3);
        assert_eq!(body.sent, serde_json::from_str::<Value>(STATS).unwrap());
    }

    /// `--json` prints what lbd sent: a field this lbctl does not know
    /// stays, and one it would fill in (an absent `Option`) is not added.
    #[test]
    fn the_body_as_sent_keeps_unknown_fields_and_adds_none() {
        let sent = r#"{"drained":true,"was_drained":false,"announced":[],"added_later":{"x":1}}"#;
        let line = stats_line(r#""v":1,"#, sent);
        let body: Body<crate::control::NodeDrainState> =
            read_reply(&Request::NodeDrain, &line).unwrap();
        assert_eq!(body.read.error, None);
        assert_eq!(body.sent, serde_json::from_str::<Value>(sent).unwrap());
        assert_eq!(body.sent["added_later"]["x"], 1);
        assert!(body.sent.get("error").is_none());
    }

    /// A newer lbd is named before anything else of its reply is read,
    /// however different the rest is.
    #[test]
    fn a_newer_reply_is_refused_with_the_versions_and_what_to_do() {
        for line in [
            stats_line(r#""v":2,"#, STATS),
            r#"{"v":999,"answer":{"entirely":"new"}}"#.to_string(),
        ] {
            let e = read_reply::<Stats>(&Request::Stats, &line).unwrap_err();
            let lbd: u32 = if line.contains("999") { 999 } else { 2 };
            assert_eq!(
                e.to_string(),
                format!(
                    "lbd speaks control protocol {lbd}, this lbctl speaks 1: use the lbctl \
                     shipped with the running lbd (lbd --version)"
                )
            );
        }
    }

    #[test]
    fn a_garbled_reply_names_what_could_not_be_read() {
        let e = |line: &str| {
            read_reply::<Stats>(&Request::Stats, line)
                .unwrap_err()
                .to_string()
        };
        let bad_field = stats_line(
            r#""v":1,"#,
            r#"{"time_s":1.5,"vips":[{"vip":"x","packets":"many","bytes":1,"new_flows":1,"dropped":0}],"backends":[],"counters":{}}"#,
        );
        assert_eq!(
            e(&bad_field),
            "lbd's reply to `stats` cannot be read (lbd speaks control protocol 1, this lbctl \
             speaks 1): data.vips[0].packets: invalid type: string \"many\", expected u64; use \
             the lbctl shipped with the running lbd (lbd --version)"
        );
        let rows = read_reply::<Vec<Stats>>(&Request::Stats, r#"{"v":1,"ok":true,"data":[7]}"#);
        assert!(
            rows.unwrap_err()
                .to_string()
                .contains("): data[0]: invalid type"),
            "a list's element is named by its index"
        );
        let missing = stats_line(r#""v":1,"#, r#"{"time_s":1.5,"vips":[],"counters":{}}"#);
        assert!(
            e(&missing).contains("): data: missing field `backends`; use"),
            "{}",
            e(&missing)
        );
        let no_ok = r#"{"v":1,"data":{}}"#;
        assert!(
            e(no_ok).contains("): missing field `ok`; use"),
            "{}",
            e(no_ok)
        );
        let bad_version = r#"{"v":"one","ok":true}"#;
        assert_eq!(
            e(bad_version),
            "lbd sent a reply whose version is not a number (v: \"one\"); use the lbctl \
             shipped with the running lbd (lbd --version)"
        );
        assert!(
            e("{\"v\":1,\"ok\":tr").starts_with("lbd sent a reply that is not JSON: "),
            "{}",
            e("{\"v\":1,\"ok\":tr")
        );
    }

    #[test]
    fn refusals_are_passed_on_and_an_unversioned_lbd_is_named() {
        let refused = r#"{"v":1,"ok":false,"error":"no VIP 198.51.100.99:53/udp"}"#;
        let e = read_reply::<Applied>(&Request::Status, refused).unwrap_err();
        assert_eq!(e.to_string(), "no VIP 198.51.100.99:53/udp");
        // What an lbd from before versions answers to a versioned request:
        // a refusal of its `v`, or, to a request without arguments, its
        // own success reply (serde-rs/serde#2123).
        for (request, old) in [
            (
                Request::VipDel {
                    vip: crate::control::VipRef {
                        address: "198.51.100.10".parse().unwrap(),
                        port: 53,
                        protocol: crate::config::Protocol::Udp,
                    },
                },
                r#"{"ok":false,"error":"malformed request: unknown field `v`, expected `cmd` at line 1 column 12"}"#.to_string(),
            ),
            (Request::Stats, stats_line("", STATS)),
            (Request::ConfigDump, r#"{"ok":true,"data":{"vips":[]}}"#.into()),
            (Request::Status, r#"{"ok":false,"error":"anything"}"#.into()),
        ] {
            let e = read_reply::<Value>(&request, &old).unwrap_err();
            assert_eq!(
                e.to_string(),
                "lbd speaks control protocol 0 (an lbd from before protocol versions), this \
                 lbctl speaks 1: use the lbctl shipped with the running lbd (lbd --version)",
                "{old}"
            );
        }
    }
}
