//! The Maglev ring map (and the previous-owner map, `PREV_OWNERS`, which
//! has an entry per ring slot too), written through a shared memory
//! mapping.
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

/// The kernel rounds array values up to 8 bytes: a `u32` value `i` (a
/// ring slot) starts at byte `8 * i` of the mapping, as does an 8-byte
/// `PREV_OWNERS` value.
const VALUE_ALIGN: usize = 8;

/// What a slot may hold: a value the CPU stores and loads in one go.
pub trait Slot: Copy {}
impl Slot for u32 {}
impl Slot for u64 {}

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
    /// The slots of the array `data`, one per value.
    pub fn new(data: &MapData) -> Result<Self, RingMemoryError> {
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
            slots: info.max_entries(),
            stride: value,
            page,
        })
    }

    /// Write `values` into the slots from `first` on, each with one store
    /// (a `u32` or a `u64`): a packet reads a slot's old value or its new
    /// one, never half of each.
    pub fn write<T: Slot>(&mut self, first: u32, values: &[T]) -> Result<(), RingMemoryError> {
        self.with_slots(first, values.len(), true, |slot| {
            for (i, value) in values.iter().enumerate() {
                // SAFETY: `slot(i)` is inside the mapping and aligned for
                // `T` (`Slot` types fit a slot's 8 bytes).
                unsafe { slot(i).cast::<T>().write_volatile(*value) };
            }
        })?;
        // Everything written is visible before whatever the caller does next
        // (the flip that makes this table live).
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// The `n` slots from `first` on, as the program reads them.
    pub fn read<T: Slot>(&self, first: u32, n: usize) -> Result<Vec<T>, RingMemoryError> {
        let mut values = Vec::with_capacity(n);
        self.with_slots(first, n, false, |slot| {
            for i in 0..n {
                // SAFETY: as in `write`.
                values.push(unsafe { slot(i).cast::<T>().read_volatile() });
            }
        })?;
        Ok(values)
    }

    /// Map the pages that hold slots `first..first + n` (writable if
    /// `write`) for the duration of `f`, which gets a pointer to each slot
    /// by its index from `first`.
    fn with_slots(
        &self,
        first: u32,
        n: usize,
        write: bool,
        f: impl FnOnce(&dyn Fn(usize) -> *mut u8),
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
            // SAFETY: inside the mapping (offset + stride <= len by the
            // sizes above), 8-byte aligned (a stride of 8 from a page
            // boundary).
            unsafe { ring.add(offset) }
        };
        f(&slot);
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(base, len) };
        Ok(())
    }
}
