//! A memory region shared by the supervisor and its keeper (keeper.rs): one
//! slot per listener, where the supervisor leaves the id of the
//! notification it is answering. If it dies there, the keeper still knows
//! which id to answer (a received notification is reachable only by its id,
//! design.md §9). A memfd mapped by both: a store per notification, no
//! syscall.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use nix::unistd::ftruncate;

/// One listener's slot: the last notification id received, and what the
/// supervisor is doing with it (`keeper::slot` says what the values mean).
#[repr(C, align(16))]
pub struct Cell {
    pub id: AtomicU64,
    pub state: AtomicU64,
}

/// Slots in a region: 1 MiB of memfd, of which only touched pages cost memory.
pub const SLOTS: usize = 65_536;
const BYTES: usize = SLOTS * std::mem::size_of::<Cell>();
/// After the cells, one word per slot that only the keeper writes: bumped
/// when it answered handler changes for a supervisor that was stuck, so
/// that the supervisor forgets what it knew of those processes' handlers.
/// A keeper of an earlier version makes a region without them.
const WITH_EPOCHS: usize = BYTES + SLOTS * std::mem::size_of::<AtomicU64>();

/// The mapped region. Mapped once per process and never unmapped, so a
/// cell's reference is `'static`.
pub struct Region {
    fd: OwnedFd,
    cells: &'static [Cell],
    epochs: Option<&'static [AtomicU64]>,
}

impl Region {
    /// A new region (the keeper makes it; the supervisor maps the keeper's).
    pub fn create() -> io::Result<Region> {
        let fd = memfd_create("sigvisor-slots", MFdFlags::MFD_CLOEXEC)?;
        ftruncate(&fd, WITH_EPOCHS as i64)?;
        Region::map(fd)
    }

    /// Maps a region received from the keeper; refuses one of another size.
    pub fn map(fd: OwnedFd) -> io::Result<Region> {
        let size = nix::sys::stat::fstat(&fd)?.st_size;
        let bytes = match usize::try_from(size) {
            Ok(n @ (BYTES | WITH_EPOCHS)) => n,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("slot region of {size} bytes"),
                ))
            }
        };
        let length = NonZeroUsize::new(bytes).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of the whole memfd, which is
        // `bytes` long (checked above) and never shrunk: the memfd is
        // sigvisor's own, passed only between the keeper and its supervisor.
        let base: NonNull<u8> = unsafe {
            mmap(None, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, &fd, 0)?
        }
        .cast();
        // SAFETY: the mapping starts with BYTES = SLOTS cells, page-aligned
        // (so aligned for Cell), zero-filled (a valid Cell: two atomics),
        // only ever accessed through atomics, and never unmapped.
        let cells = unsafe { std::slice::from_raw_parts(base.as_ptr().cast::<Cell>(), SLOTS) };
        // SAFETY: with epochs, SLOTS words follow the cells, at BYTES (a
        // multiple of 16, so aligned for AtomicU64), zero-filled, atomics
        // only, never unmapped.
        let epochs = (bytes == WITH_EPOCHS).then(|| unsafe {
            std::slice::from_raw_parts(base.as_ptr().add(BYTES).cast::<AtomicU64>(), SLOTS)
        });
        Ok(Region { fd, cells, epochs })
    }

    /// Slot `slot`'s epoch word, if the region has them.
    pub fn epoch(&self, slot: u32) -> Option<&'static AtomicU64> {
        self.epochs?.get(slot as usize)
    }

    pub fn cell(&self, slot: u32) -> Option<&'static Cell> {
        self.cells.get(slot as usize)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
