//! The Maglev ring map (and the previous-owner map, `PREV_OWNERS`, which
//! has a slot per ring slot too), written through a shared memory mapping.
//!
//! `RINGS` is an array created with `BPF_F_MMAPABLE`, so its slots can be
//! written with plain stores instead of one `bpf(MAP_UPDATE_ELEM)` call per
//! slot: a 65537-slot ring goes from tens of milliseconds to a memcpy, and
//! a restart over 100 VIPs from seconds to well under one. Only a table no
//! packet reads (a VIP's inactive ring) is ever written this way; the flip
//! that makes it live is a map update, a syscall, after a fence.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;

/// The kernel rounds array values up to 8 bytes: a `u32` value `i` starts
/// at byte `8 * i` of the mapping, and a value of two `u32` slots (as
/// `PREV_OWNERS` has) holds slot `i` at byte `4 * i`.
const VALUE_ALIGN: usize = 8;

/// `BPF_F_MMAPABLE` from the kernel's uapi (aya does not export it).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A cause is part of the message and is not also returned from
/// `source()` (see `crate::errors`).
#[derive(Debug, thiserror::Error)]
pub enum RingMemoryError {
    #[error("reading the ring map's info: {}", crate::errors::chain(.0))]
    Info(aya::maps::MapError),
    #[error("the ring map was not created mmapable (pinned by an older lbd?)")]
    NotMmapable,
    #[error("mapping the ring map into memory: {0}")]
    Mmap(std::io::Error),
    #[error("slots {first}..{end} are past the ring map's {slots}")]
    OutOfRange { first: u32, end: usize, slots: u32 },
}

impl From<aya::maps::MapError> for RingMemoryError {
    fn from(e: aya::maps::MapError) -> Self {
        Self::Info(e)
    }
}

/// Writes slots of the ring map through short-lived mappings of just the
/// pages a ring covers, so the map's memory (the kernel's, counted in the
/// map's memlock) does not also sit in lbd's resident set.
pub struct RingMemory {
    fd: OwnedFd,
    slots: u32,
    /// Bytes from one slot to the next in the mapping.
    stride: usize,
    page: usize,
}

impl RingMemory {
    /// The slots of the array `data`, whose values each hold
    /// `slots_per_value` `u32` slots.
    pub fn new(data: &MapData, slots_per_value: u32) -> Result<Self, RingMemoryError> {
        let info = data.info()?;
        if info.map_flags() & BPF_F_MMAPABLE == 0 {
            return Err(RingMemoryError::NotMmapable);
        }
        let value = (info.value_size() as usize).div_ceil(VALUE_ALIGN) * VALUE_ALIGN;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(RingMemoryError::Mmap)?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        Ok(Self {
            fd,
            slots: info.max_entries() * slots_per_value,
            stride: value / slots_per_value as usize,
            page,
        })
    }

    /// Write `ids` into the slots from `first` on.
    pub fn write(&mut self, first: u32, ids: &[u32]) -> Result<(), RingMemoryError> {
        self.with_slots(first, ids.len(), true, |slot| {
            for (i, id) in ids.iter().enumerate() {
                // SAFETY: `slot(i)` is inside the mapping and aligned.
                unsafe { slot(i).write_volatile(*id) };
            }
        })?;
        // Everything written is visible before whatever the caller does next
        // (the flip that makes this table live).
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// The `n` slots from `first` on, as the program reads them.
    pub fn read(&self, first: u32, n: usize) -> Result<Vec<u32>, RingMemoryError> {
        let mut ids = Vec::with_capacity(n);
        self.with_slots(first, n, false, |slot| {
            for i in 0..n {
                // SAFETY: `slot(i)` is inside the mapping and aligned.
                ids.push(unsafe { slot(i).read_volatile() });
            }
        })?;
        Ok(ids)
    }

    /// Map the pages that hold slots `first..first + n` (writable if
    /// `write`) for the duration of `f`, which gets a pointer to each slot
    /// by its index from `first`.
    fn with_slots(
        &self,
        first: u32,
        n: usize,
        write: bool,
        f: impl FnOnce(&dyn Fn(usize) -> *mut u32),
    ) -> Result<(), RingMemoryError> {
        let end = first as usize + n;
        if end > self.slots as usize {
            return Err(RingMemoryError::OutOfRange {
                first,
                end,
                slots: self.slots,
            });
        }
        let start_byte = first as usize * self.stride;
        let map_offset = start_byte / self.page * self.page;
        let len = (end * self.stride).div_ceil(self.page) * self.page - map_offset;
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel refuses
        // one past the map's (page-rounded) size, and we checked `end`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                map_offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(RingMemoryError::Mmap(std::io::Error::last_os_error()));
        }
        let ring = base.cast::<u8>();
        let stride = self.stride;
        let slot = |i: usize| {
            let offset = start_byte - map_offset + i * stride;
            // SAFETY: inside the mapping (offset + 4 <= len by the sizes
            // above), 4-byte aligned (a stride of 4 or 8 from a page
            // boundary).
            unsafe { ring.add(offset).cast::<u32>() }
        };
        f(&slot);
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(base, len) };
        Ok(())
    }
}
