//! How many entries a hash map holds, without walking it.
//!
//! Walking a map's keys from userspace costs one `bpf()` call per entry, too
//! much for a million-entry connection table read every second. Since Linux
//! 6.6 the kernel keeps a per-CPU element count in every hash map, LRU ones
//! included (the LRU's own evictions decrement it), and the kfunc
//! `bpf_map_sum_elem_count` sums it. No userspace interface reads it
//! directly, so `ElemCounter` loads a three-instruction program that calls
//! the kfunc on one map and returns the sum, and runs it with
//! `BPF_PROG_TEST_RUN`: one syscall per count, whatever the map's size.
//!
//! aya can neither build nor load a kfunc call, so the program is assembled
//! here and loaded with the raw syscall. Minimum kernel version: 6.6 (the
//! kfunc) with vmlinux BTF; on older kernels `ElemCounter::new` fails and
//! callers count keys instead.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{Btf, maps::MapData};
use aya_obj::btf::BtfKind;

/// The kfunc that sums a map's per-CPU element count.
const KFUNC: &str = "bpf_map_sum_elem_count";

// From include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SYSCALL: u32 = 31;
/// Syscall programs must be sleepable.
const BPF_F_SLEEPABLE: u32 = 1 << 4;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
/// kfuncs are for GPL-compatible programs; this one is ours, dual-licensed.
const LICENSE: &[u8] = b"Dual MIT/GPL\0";

#[derive(Debug, thiserror::Error)]
pub enum ElemCountError {
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("the kernel has no {KFUNC} kfunc (Linux 6.6 or later has)")]
    NoKfunc,
    #[error("loading the element-count program: {0}")]
    Load(io::Error),
    #[error("running the element-count program: {0}")]
    Run(io::Error),
}

/// One instruction: opcode, registers (dst in the low nibble), offset,
/// immediate; the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off: 0,
        imm,
    }
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to the fields we set.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised prefix of `union bpf_attr` for
    // `cmd`, and its size is passed with it; the kernel zero-extends it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Counts the entries of one map, one syscall a count.
pub struct ElemCounter {
    prog: OwnedFd,
}

impl ElemCounter {
    /// A counter for `map` (a hash map: other kinds keep no count). It
    /// holds its own reference to the map.
    pub fn new(map: &MapData) -> Result<Self, ElemCountError> {
        let btf = Btf::from_sys_fs()?;
        let kfunc = btf
            .id_by_type_name_kind(KFUNC, BtfKind::Func)
            .map_err(|_| ElemCountError::NoKfunc)?;
        Self::with_kfunc(map, kfunc)
    }

    fn with_kfunc(map: &MapData, kfunc: u32) -> Result<Self, ElemCountError> {
        let map_fd = map.fd().as_fd().as_raw_fd();
        let insns = [
            // r1 = the map (a 16-byte load: the second half is zero).
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, map_fd),
            insn(0, 0, 0, 0),
            // r0 = bpf_map_sum_elem_count(r1)
            insn(0x85, 0, BPF_PSEUDO_KFUNC_CALL, kfunc as i32),
            // return r0 (the count; the run's 32-bit return value).
            insn(0x95, 0, 0, 0),
        ];
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"elem_count");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SYSCALL,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_flags: BPF_F_SLEEPABLE,
            prog_name: name,
            ..Default::default()
        };
        let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).map_err(ElemCountError::Load)?;
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { prog })
    }

    /// The map's current number of entries.
    pub fn count(&self) -> Result<u64, ElemCountError> {
        let mut attr = TestRunAttr {
            prog_fd: self.prog.as_raw_fd() as u32,
            ..Default::default()
        };
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr).map_err(ElemCountError::Run)?;
        Ok(attr.retval as u64)
    }
}
