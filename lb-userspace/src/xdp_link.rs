//! Which interface a pinned XDP link is attached to, and which program
//! it runs.
//!
//! A BPF link outlives the interface it was made for: when the interface
//! is deleted the kernel detaches the link, but the pinned link object
//! stays, attached to nothing, and updating it fails (`ENOLINK`). An
//! interface created again under the same name has a new ifindex and no
//! program. So before reusing a pin, lbd and lb-decap ask the kernel what
//! the link is attached to (`BPF_OBJ_GET_INFO_BY_FD`: `xdp.ifindex`, 0 once
//! detached). aya 0.14 reads link info but does not expose this field, so
//! the two syscalls are made here, with aya's own kernel bindings.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// What a pinned XDP link is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkState {
    /// The interface it is attached to; 0 once that interface is gone.
    pub ifindex: u32,
    /// The program it runs (`bpftool prog show id N`, `ip link` shows it
    /// too). A link attached to nothing still holds its last program.
    pub program_id: u32,
}

/// The ifindex the XDP link pinned at `path` is attached to: `Some(0)`
/// once its interface is gone, `None` when nothing is pinned there.
pub fn attached_ifindex(path: &Path) -> io::Result<Option<u32>> {
    Ok(state(path)?.map(|s| s.ifindex))
}

/// Interface and program of the XDP link pinned at `path`; `None` when
/// nothing is pinned there.
pub fn state(path: &Path) -> io::Result<Option<XdpLinkState>> {
    let link = match open_pin(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let info = link_info(&link)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an XDP link", path.display()),
        ));
    }
    Ok(Some(XdpLinkState {
        // SAFETY: the kernel filled the `xdp` member for an XDP link.
        ifindex: unsafe { info.__bindgen_anon_1.xdp.ifindex },
        program_id: info.prog_id,
    }))
}

/// `BPF_OBJ_GET`: a file descriptor for the object pinned at `path`.
fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = name.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
fn link_info(link: &OwnedFd) -> io::Result<bpf_link_info> {
    // SAFETY: all-zero is a valid bpf_link_info (a C struct of integers).
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // SAFETY: all-zero is a valid bpf_attr (a C union of integer structs).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = link.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = &mut info as *mut bpf_link_info as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr for `cmd`; its
    // pointers stay valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}
