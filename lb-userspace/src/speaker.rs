//! Whether the BGP speaker that exports lbd's routes is there and peering.
//!
//! lbd only writes routes into a kernel table (`announce`); whether the
//! router hears of them is up to the BGP speaker. A node whose BIRD is
//! stopped or has no session up still forwards whatever reaches it but is
//! announced nowhere, which an operator would otherwise only find on the
//! router. So lbd asks BIRD over its control socket (`speaker.bird_socket`)
//! once a second for its BGP sessions, from a thread of its own so that a
//! hung BIRD never holds up the daemon, and shows the answer in
//! `lbctl status`, metrics and the log. Forwarding never depends on it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use tracing::{info, warn};

use crate::control::{SpeakerSession, SpeakerStatus};

/// How long one question to BIRD may take, connecting included.
const QUERY_TIMEOUT: Duration = Duration::from_millis(500);
/// How often BIRD is asked.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One BGP protocol of the speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpSession {
    pub name: String,
    /// BIRD's protocol state is `up` only once the session is established.
    pub established: bool,
    /// BIRD's info column: `Established`, `Active`, `Idle`, ...
    pub info: String,
}

/// What lbd knows of the speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpeakerState {
    /// `speaker.bird_socket` is null, or nothing is announced.
    NotWatched,
    /// Not asked yet since lbd started or the socket changed.
    Unknown,
    /// The socket did not answer.
    Unreachable { socket: PathBuf, error: String },
    /// BIRD answered with its version and BGP sessions.
    Answered {
        version: String,
        sessions: Vec<BgpSession>,
    },
}

impl SpeakerState {
    /// BGP sessions established, when BIRD answered.
    pub fn established(&self) -> Option<usize> {
        match self {
            SpeakerState::Answered { sessions, .. } => {
                Some(sessions.iter().filter(|s| s.established).count())
            }
            _ => None,
        }
    }

    /// One line for an operator: is anyone telling the router?
    pub fn summary(&self) -> String {
        match self {
            SpeakerState::NotWatched => "not watched (speaker.bird_socket is null)".into(),
            SpeakerState::Unknown => "not asked yet".into(),
            SpeakerState::Unreachable { socket, error } => format!(
                "BIRD not reachable at {} ({error}): no router hears of this node's VIPs; forwarding goes on",
                socket.display()
            ),
            SpeakerState::Answered { version, sessions } => {
                let up = sessions.iter().filter(|s| s.established).count();
                if sessions.is_empty() {
                    format!(
                        "BIRD {version} runs no BGP session: no router hears of this node's VIPs"
                    )
                } else if up == 0 {
                    let states: Vec<String> = sessions
                        .iter()
                        .map(|s| format!("{} {}", s.name, s.info))
                        .collect();
                    format!(
                        "BIRD {version}: no BGP session established ({}): no router hears of this node's VIPs",
                        states.join(", ")
                    )
                } else {
                    format!(
                        "BIRD {version}: {up} of {} BGP sessions established",
                        sessions.len()
                    )
                }
            }
        }
    }

    /// `lbctl status`'s `speaker`.
    pub fn status(&self) -> SpeakerStatus {
        let sessions = match self {
            SpeakerState::Answered { sessions, .. } => sessions
                .iter()
                .map(|s| SpeakerSession {
                    name: s.name.clone(),
                    established: s.established,
                    info: s.info.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        SpeakerStatus {
            reachable: matches!(self, SpeakerState::Answered { .. }),
            established: self.established(),
            sessions,
            summary: self.summary(),
        }
    }
}

/// Ask the BIRD at `socket` for its version and BGP sessions.
pub fn query_bird(socket: &Path, timeout: Duration) -> Result<SpeakerState, String> {
    // A BIRD that stopped accepting must not hold this thread forever.
    let stream = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .and_then(|s| {
            s.connect_timeout(&socket2::SockAddr::unix(socket)?, timeout)?;
            Ok(UnixStream::from(std::os::fd::OwnedFd::from(s)))
        })
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let greeting = read_reply(&mut reader)?;
    let version = greeting
        .first()
        .and_then(|(_, text)| text.strip_prefix("BIRD "))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("not a BIRD control socket (it said {greeting:?})"))?
        .to_string();
    (&stream)
        .write_all(b"show protocols\n")
        .map_err(|e| e.to_string())?;
    let reply = read_reply(&mut reader)?;
    Ok(SpeakerState::Answered {
        version,
        sessions: bgp_sessions(&reply),
    })
}

/// One reply of BIRD's control protocol: lines `CODE-text` go on, a line
/// `CODE text` ends it, a line starting with a space continues the last
/// code. Codes 8xxx and 9xxx are errors.
fn read_reply(reader: &mut impl BufRead) -> Result<Vec<(u16, String)>, String> {
    let mut lines = Vec::new();
    let mut code = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("BIRD closed the connection".into());
        }
        let line = line.trim_end_matches('\n');
        if let Some(text) = line.strip_prefix(' ') {
            lines.push((code, text.to_string()));
            continue;
        }
        let (head, text) = line.split_at_checked(5).unwrap_or((line, ""));
        code = head[..head.len().min(4)]
            .parse()
            .map_err(|_| format!("unexpected line from BIRD: {line:?}"))?;
        if code >= 8000 {
            return Err(format!("BIRD: {text}"));
        }
        lines.push((code, text.to_string()));
        if head.ends_with(' ') || head.len() < 5 {
            return Ok(lines);
        }
    }
}

/// The states of a BGP session as BIRD names them in its info column.
const BGP_STATES: [&str; 7] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
    "Close",
];

/// The BGP rows of a `show protocols` reply (code 1002): name, protocol,
/// table, state, since, info.
fn bgp_sessions(reply: &[(u16, String)]) -> Vec<BgpSession> {
    reply
        .iter()
        .filter(|(code, _)| *code == 1002)
        .filter_map(|(_, row)| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            if fields.get(1) != Some(&"BGP") {
                return None;
            }
            Some(BgpSession {
                name: fields[0].to_string(),
                established: fields.get(3) == Some(&"up"),
                info: fields
                    .iter()
                    .skip(4)
                    .find(|f| BGP_STATES.contains(f))
                    .copied()
                    .unwrap_or("")
                    .to_string(),
            })
        })
        .collect()
}

/// Asks BIRD once a second on a thread of its own; the daemon reads the
/// latest answer and points it at another socket when the config changes.
pub struct SpeakerWatch {
    socket: Arc<Mutex<Option<PathBuf>>>,
    state: Arc<Mutex<SpeakerState>>,
    stop: Arc<AtomicBool>,
}

impl SpeakerWatch {
    pub fn start(socket: Option<PathBuf>) -> Self {
        let watch = Self {
            state: Arc::new(Mutex::new(if socket.is_some() {
                SpeakerState::Unknown
            } else {
                SpeakerState::NotWatched
            })),
            socket: Arc::new(Mutex::new(socket)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (socket, state, stop) = (
            watch.socket.clone(),
            watch.state.clone(),
            watch.stop.clone(),
        );
        let spawned = thread::Builder::new()
            .name("lbd-speaker".into())
            .spawn(move || poll(&socket, &state, &stop));
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the thread that asks BIRD for its BGP sessions");
        }
        watch
    }

    /// Ask `socket` from now on (`None`: stop asking).
    pub fn set_socket(&self, socket: Option<PathBuf>) {
        let mut current = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        if *current != socket {
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = if socket.is_some() {
                SpeakerState::Unknown
            } else {
                SpeakerState::NotWatched
            };
            *current = socket;
        }
    }

    pub fn state(&self) -> SpeakerState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for SpeakerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn poll(socket: &Mutex<Option<PathBuf>>, state: &Mutex<SpeakerState>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let asked = socket.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(path) = asked.clone() {
            let now = query_bird(&path, QUERY_TIMEOUT).unwrap_or_else(|error| {
                SpeakerState::Unreachable {
                    socket: path.clone(),
                    error,
                }
            });
            // The socket may have changed while BIRD was asked.
            if *socket.lock().unwrap_or_else(|e| e.into_inner()) == asked {
                let mut current = state.lock().unwrap_or_else(|e| e.into_inner());
                log_change(&current, &now);
                *current = now;
            }
        }
        thread::sleep(POLL_EVERY);
    }
}

/// Log when the answer to "does a router hear of us" changes.
fn log_change(before: &SpeakerState, now: &SpeakerState) {
    let heard = |s: &SpeakerState| s.established().is_some_and(|n| n > 0);
    if !matches!(before, SpeakerState::Unknown) && heard(before) == heard(now) {
        return;
    }
    if heard(now) {
        info!(speaker = %now.summary(), "BGP speaker peering: VIPs are announced to the router");
    } else {
        warn!(speaker = %now.summary(), "BGP speaker not peering: VIPs in lbd's table reach no router");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Result<Vec<(u16, String)>, String> {
        read_reply(&mut text.as_bytes())
    }

    #[test]
    fn show_protocols_gives_bgp_sessions_and_their_state() {
        let text = "2002-Name       Proto      Table      State  Since         Info\n\
                    1002-device1    Device     ---        up     18:53:34.727  \n \
                    k4         Kernel     master4    up     18:53:34.727  \n \
                    peer1      BGP        ---        start  18:53:34.727  Active        Socket: Connection refused\n \
                    peer2      BGP        ---        up     18:53:35.001  Established   \n\
                    0000 \n";
        let sessions = bgp_sessions(&reply(text).unwrap());
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0].name, "peer1");
        assert!(!sessions[0].established);
        assert_eq!(sessions[0].info, "Active");
        assert_eq!(sessions[1].name, "peer2");
        assert!(sessions[1].established);
        assert_eq!(sessions[1].info, "Established");
    }

    #[test]
    fn an_error_reply_or_a_closed_socket_is_an_error() {
        assert!(reply("9001 Syntax error\n").is_err());
        assert!(reply("2002-Name\n").is_err());
        assert_eq!(
            reply("0001 BIRD 2.0.12 ready.\n").unwrap()[0].1,
            "BIRD 2.0.12 ready."
        );
    }
}
