//! The BPF filesystem the pins live on, and whether it will outlive us.
//!
//! lbd and lb-decap promise that forwarding goes on after they exit: the
//! link and maps are pinned. That holds only if the bpffs holding the pins
//! is one the host keeps mounted. `ip netns exec` runs a command in a
//! private mount namespace with a fresh /sys and no bpffs in it; a bpffs
//! mounted there disappears with the last process of that namespace, and
//! the program is detached when the command exits. So before pinning:
//!
//! - a bpffs already covering the pin directory is used if it is also
//!   mounted in the host's mount namespace (that of PID 1), or when that
//!   cannot be told (no access to PID 1's mounts, as in a container);
//! - a missing bpffs is mounted at /sys/fs/bpf only from the host's mount
//!   namespace, where the mount stays after we exit;
//! - anything else is refused with what to do instead.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// `statfs(2)`'s `f_type` for bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{path} is not on a BPF filesystem, and this process runs in a mount namespace \
         other than the host's (as under `ip netns exec`, which mounts a private /sys): \
         a bpffs mounted here would vanish when this process exits, taking the pinned \
         program with it. Enter only the network namespace instead \
         (`nsenter --net=/run/netns/NAME ...`, or systemd's NetworkNamespacePath=)"
    )]
    PrivateMountNamespace { path: PathBuf },
    #[error(
        "{path} is on a BPF filesystem mounted only in this process's private mount \
         namespace, not in the host's: the pins would vanish when this process exits. \
         Use the host's bpffs (bind-mount it, or enter only the network namespace with \
         `nsenter --net=/run/netns/NAME ...`)"
    )]
    EphemeralMount { path: PathBuf },
    #[error("{path} is not on a BPF filesystem (mount one there: `mount -t bpf bpf DIR`)")]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs on {DEFAULT_MOUNT}: {0}")]
    Mount(std::io::Error),
}

/// Make sure `pin_dir` can hold pins that outlive this process, mounting
/// bpffs on /sys/fs/bpf when it is missing and that is safe.
pub fn prepare(pin_dir: &Path) -> Result<(), BpffsError> {
    let host_ns = same_mount_namespace_as_init();
    let existing = nearest_existing(pin_dir);
    if is_bpffs(&existing) {
        if host_ns == Some(false) && !mounted_in_init(&existing) {
            return Err(BpffsError::EphemeralMount {
                path: pin_dir.to_path_buf(),
            });
        }
        return Ok(());
    }
    if !pin_dir.starts_with(DEFAULT_MOUNT) {
        return Err(BpffsError::NotBpffs {
            path: pin_dir.to_path_buf(),
        });
    }
    if host_ns == Some(false) {
        return Err(BpffsError::PrivateMountNamespace {
            path: pin_dir.to_path_buf(),
        });
    }
    mount_default()
}

/// Whether this process shares PID 1's mount namespace; `None` when that
/// cannot be told (PID 1's files unreadable, or a PID namespace whose PID 1
/// is a container's init: then the container's view is the one that
/// matters and we trust it). The namespace links need ptrace rights over
/// PID 1; failing those, the root mount's id tells, since a new mount
/// namespace gets copies of every mount under new ids.
fn same_mount_namespace_as_init() -> Option<bool> {
    let link = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if let (Some(ours), Some(init)) = (link("self"), link("1")) {
        return Some(ours == init);
    }
    let root_mount_id = |pid: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        text.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?;
            (fields.nth(3)? == "/").then(|| id.to_string())
        })
    };
    Some(root_mount_id("self")? == root_mount_id("1")?)
}

/// Whether the bpffs holding `path` is also mounted in PID 1's mount
/// namespace (the same filesystem instance: same device number). True when
/// PID 1's mounts cannot be read.
fn mounted_in_init(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return true;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/1/mountinfo") else {
        return true;
    };
    let dev = meta.dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    mountinfo.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let device = fields.nth(2);
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next());
        device == Some(want.as_str()) && fstype == Some("bpf")
    })
}

/// `path`, or its closest ancestor that exists.
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: all-zero is a valid statfs; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call's duration.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_default() -> Result<(), BpffsError> {
    std::fs::create_dir_all(DEFAULT_MOUNT).map_err(BpffsError::Mount)?;
    let source = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}
