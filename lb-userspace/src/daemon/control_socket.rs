//! The control socket: created with its owner and mode, served one task
//! per connection (requests go to the daemon's task, captures are streamed
//! on their own connection).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    capture::{CaptureEvent, CaptureMaps, CaptureSpec, Capturer},
    control::{self, Reply, Request},
};

use super::Daemon;

impl Daemon {
    /// The data plane's packet capture, for the control socket to serve
    /// (once: it takes the capture maps).
    pub fn capturer(&mut self) -> anyhow::Result<Capturer> {
        let maps = CaptureMaps::take(&mut self.dp.ebpf).context("capture maps")?;
        Capturer::new(maps, self.config.pin_dir.clone()).context("capture ring buffer")
    }

    pub fn control_socket(&self) -> (PathBuf, Option<String>) {
        (
            self.config.control.socket.clone(),
            self.config.control.group.clone(),
        )
    }
}

/// A request from a control connection, with where to send the reply.
pub type ControlMsg = (Request, oneshot::Sender<Reply>);

/// Accept control connections; each is served by its own task, so a slow
/// or stalled client holds up no one else.
pub async fn serve_control(
    listener: UnixListener,
    tx: mpsc::Sender<ControlMsg>,
    capturer: Option<Arc<Capturer>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let capturer = capturer.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let received = match control::read_request(&mut reader).await {
                    Ok(None) => return,
                    Ok(Some(received)) => received,
                    Err(reply) => {
                        let _ = write_reply(&mut write, &reply).await;
                        return;
                    }
                };
                // Answered in the request's version.
                let answer = move |reply: Reply| reply.in_version(received.version);
                let reply = match received.request {
                    // Streams its replies, then the connection ends.
                    Request::Capture { spec } => {
                        return serve_capture(capturer.as_deref(), &spec, answer, reader, write)
                            .await;
                    }
                    req => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send((req, reply_tx)).await.is_err() {
                            return;
                        }
                        match reply_rx.await {
                            Ok(r) => r,
                            Err(_) => Reply::error("lbd is shutting down"),
                        }
                    }
                };
                if write_reply(&mut write, &answer(reply)).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One `lbctl capture` on its connection: a line per event, or one error.
async fn serve_capture(
    capturer: Option<&Capturer>,
    spec: &CaptureSpec,
    answer: impl Fn(Reply) -> Reply,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
) {
    let Some(capturer) = capturer else {
        let refused = answer(Reply::error("this lbd cannot capture"));
        let _ = write_reply(&mut write, &refused).await;
        return;
    };
    // lbctl sends nothing more: anything readable is its end.
    let gone = async {
        let _ = reader.fill_buf().await;
    };
    let (events_tx, mut events) = mpsc::channel::<CaptureEvent>(1024);
    let run = capturer.run(spec, gone, events_tx);
    let forward = async {
        while let Some(event) = events.recv().await {
            if write_reply(&mut write, &answer(Reply::data(event)))
                .await
                .is_err()
            {
                // Dropping the receiver ends the capture.
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(run, forward);
    match result {
        Ok(Some(end)) => {
            info!(packets = end.packets, ended_by = %end.ended_by, lost = end.lost, "capture ended")
        }
        Ok(None) => info!("capture ended: lbctl went away"),
        Err(why) => {
            let _ = write_reply(&mut write, &answer(Reply::error(why))).await;
        }
    }
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
        serde_json::to_vec(&Reply::<control::ReplyData> {
            error: Some(format!("encoding the reply: {e}")),
            data: None,
            ok: false,
            v: reply.v,
        })
        .unwrap_or_default()
    });
    line.push(b'\n');
    w.write_all(&line).await
}

/// Create the control socket: owned by root, mode 0600, or 0660 with a
/// group. It is created under a umask that leaves it 0600, so no moment
/// exists in which others could connect; the group gets it only after the
/// owner group is set.
pub fn bind_control(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let gid = match group {
        Some(name) => {
            Some(group_id(name).with_context(|| format!("control.group: no group {name:?}"))?)
        }
        None => None,
    };
    // SAFETY: umask only swaps this process's file-creation mask; nothing
    // else creates files while lbd starts.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    if let Some(gid) = gid {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid path; uid -1 keeps the owner.
        if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
            bail!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

pub(super) fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}
