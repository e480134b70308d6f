//! One writer per pin directory.
//!
//! Two lbd on one pin directory would both write the same maps, each
//! undoing the other's tables; `lbd --teardown` under a running lbd would
//! pull the maps from under it. So whoever changes what is pinned holds an
//! exclusive `flock(2)` on the pin directory itself: bpffs holds only
//! pinned objects and directories (no lock file can live there), and a
//! lock on the directory's own descriptor needs no file anywhere else and
//! goes with the process, however it ends. The holder's PID is read from
//! /proc/locks to name it in the refusal.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum PinLockError {
    #[error("pin directory {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("pin directory {} is in use by {}", path.display(), describe(*holder))]
    Held { path: PathBuf, holder: Option<u32> },
}

impl PinLockError {
    /// The process holding the lock, when it could be told.
    pub fn holder(&self) -> Option<u32> {
        match self {
            Self::Held { holder, .. } => *holder,
            Self::Io { .. } => None,
        }
    }

    pub fn is_held(&self) -> bool {
        matches!(self, Self::Held { .. })
    }
}

fn describe(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => match process_name(pid) {
            Some(name) => format!("{name} (pid {pid})"),
            None => format!("pid {pid}"),
        },
        None => "another process".into(),
    }
}

/// An exclusive lock on a pin directory, released when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
}

impl PinDirLock {
    /// Create `dir` if missing and lock it, or fail at once naming the holder.
    pub fn acquire(dir: &Path) -> Result<Self, PinLockError> {
        Self::acquire_within(dir, Duration::ZERO)
    }

    /// As `acquire`, waiting up to `patience` for the holder to let go
    /// (for short commands that run after one another).
    pub fn acquire_within(dir: &Path, patience: Duration) -> Result<Self, PinLockError> {
        let io_err = |source| PinLockError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let deadline = Instant::now() + patience;
        loop {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            let file = File::open(dir).map_err(io_err)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // The directory may have been removed (a teardown that held
                // the lock) between open and flock: then this lock guards
                // nothing, and the directory is made and locked again.
                if same_inode(&file, dir) {
                    return Ok(Self { _dir: file });
                }
                continue;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(error));
            }
            if Instant::now() >= deadline {
                return Err(PinLockError::Held {
                    path: dir.to_path_buf(),
                    holder: holder_of(&file),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `path` still names the directory `file` was opened from.
fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The PID /proc/locks gives for the flock on `file`'s inode.
fn holder_of(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`; waiters have
        // a `->` after the number and are not holders.
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, inode, ..] if *inode == want => pid.parse().ok(),
            _ => None,
        }
    })
}

fn process_name(pid: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flock works on any directory; a temporary one stands in for bpffs.
    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_granted_once_released() {
        let dir = std::env::temp_dir().join(format!("lb-pin-lock-{}", std::process::id()));
        let first = PinDirLock::acquire(&dir).expect("first lock");
        let refused = PinDirLock::acquire(&dir).unwrap_err();
        assert_eq!(refused.holder(), Some(std::process::id()), "{refused}");
        let text = refused.to_string();
        assert!(
            text.contains(&dir.display().to_string())
                && text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        drop(first);
        let _again = PinDirLock::acquire(&dir).expect("lock after release");
        std::fs::remove_dir(&dir).unwrap();
    }
}
