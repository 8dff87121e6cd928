//! A memory region shared by the supervisor and its keeper (`keeper/`): one
//! slot per listener, where the supervisor says what it is doing with the
//! notification it is answering. If it dies there, the keeper still knows
//! which id to answer (a received notification is reachable only by its id,
//! docs/design.md#if-the-supervisor-dies-the-keeper). A memfd mapped by both:
//! no syscall, no lock.
//!
//! The supervisor RECVs straight into its slot's `Received` buffer, so the
//! id is in the region when the ioctl returns: the kernel's copy to user
//! memory happens inside the ioctl, and SIGKILL acts only at its return.
//! No instant exists at which a notification is received but its id is not
//! recorded, and the keeper needs no guess of which ids to probe.

use std::cell::UnsafeCell;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use nix::unistd::ftruncate;

/// One listener's slot: what the supervisor is doing with the notification
/// it received (`keeper::slot` says what the values mean), and, written by
/// a supervisor whose keeper's region has no `Received` buffers (an
/// earlier version's), its id.
#[repr(C, align(16))]
pub struct Cell {
    pub id: AtomicU64,
    pub state: AtomicU64,
}

/// A slot's RECV buffer: the kernel writes each notification here. And the
/// signal the supervisor sends its caller, said before the slot goes to
/// SIGNALLING: a keeper covering for a supervisor stopped in the middle of
/// signalling answers once that signal is pending.
#[repr(C)]
pub struct Received {
    notif: UnsafeCell<libc::seccomp_notif>,
    pub signal: AtomicU64,
}

// SAFETY: only one thread of the supervisor RECVs into a slot at a time (a
// listener is served by one loop), and the keeper reads it only while that
// thread is stopped, stuck or dead; every access is volatile.
unsafe impl Sync for Received {}

impl Received {
    /// Where RECV writes; the kernel requires it zeroed first.
    pub fn cleared(&self) -> *mut libc::seccomp_notif {
        let at = self.notif.get();
        // SAFETY: the buffer is valid for writes (a mapped, never unmapped
        // slot); seccomp_notif is plain old data, all-zero valid.
        unsafe { std::ptr::write_volatile(at, std::mem::zeroed()) };
        at
    }

    /// What the kernel wrote last (all zero before a RECV completed).
    pub fn read(&self) -> libc::seccomp_notif {
        // SAFETY: valid for reads, plain old data: any bytes are a value.
        unsafe { std::ptr::read_volatile(self.notif.get()) }
    }
}

/// Slots in a region: 1 MiB of memfd, of which only touched pages cost memory.
pub const SLOTS: usize = 65_536;
const BYTES: usize = SLOTS * std::mem::size_of::<Cell>();
/// After the cells, one word per slot that only the keeper writes: bumped
/// when it answered handler changes for a supervisor that was stuck, so
/// that the supervisor forgets what it knew of those processes' handlers.
/// A keeper of an earlier version makes a region without them.
const WITH_EPOCHS: usize = BYTES + SLOTS * std::mem::size_of::<AtomicU64>();
/// After the epochs, one `Received` buffer per slot.
const WITH_BUFFERS: usize = WITH_EPOCHS + SLOTS * std::mem::size_of::<Received>();

/// The mapped region. Mapped once per process and never unmapped, so a
/// cell's reference is `'static`.
pub struct Region {
    fd: OwnedFd,
    cells: &'static [Cell],
    epochs: Option<&'static [AtomicU64]>,
    buffers: Option<&'static [Received]>,
}

impl Region {
    /// A new region (the keeper makes it; the supervisor maps the keeper's).
    pub fn create() -> io::Result<Region> {
        let fd = memfd_create("sigvisor-slots", MFdFlags::MFD_CLOEXEC)?;
        ftruncate(&fd, WITH_BUFFERS as i64)?;
        Region::map(fd)
    }

    /// Maps a region received from the keeper; refuses one of another size.
    pub fn map(fd: OwnedFd) -> io::Result<Region> {
        let size = nix::sys::stat::fstat(&fd)?.st_size;
        let bytes = match usize::try_from(size) {
            Ok(n @ (BYTES | WITH_EPOCHS | WITH_BUFFERS)) => n,
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
        let epochs = (bytes >= WITH_EPOCHS).then(|| unsafe {
            std::slice::from_raw_parts(base.as_ptr().add(BYTES).cast::<AtomicU64>(), SLOTS)
        });
        // SAFETY: with buffers, SLOTS of them follow the epochs, at
        // WITH_EPOCHS (a multiple of 16, so aligned for Received),
        // zero-filled (plain old data and an atomic), never unmapped;
        // `Received` says who may touch one when.
        let buffers = (bytes == WITH_BUFFERS).then(|| unsafe {
            std::slice::from_raw_parts(base.as_ptr().add(WITH_EPOCHS).cast::<Received>(), SLOTS)
        });
        Ok(Region { fd, cells, epochs, buffers })
    }

    /// Slot `slot`'s epoch word, if the region has them.
    pub fn epoch(&self, slot: u32) -> Option<&'static AtomicU64> {
        self.epochs?.get(slot as usize)
    }

    /// Slot `slot`'s RECV buffer, if the region has them.
    pub fn received(&self, slot: u32) -> Option<&'static Received> {
        self.buffers?.get(slot as usize)
    }

    /// The notification slot `slot`'s supervisor received last: what the
    /// kernel wrote to its buffer or, in a region without buffers, only the
    /// id the supervisor stored (its kind unknown: `arch` 0).
    pub fn last_received(&self, slot: u32) -> Option<libc::seccomp_notif> {
        match self.received(slot) {
            Some(buffer) => Some(buffer.read()),
            None => {
                // SAFETY: seccomp_notif is plain old data, all-zero valid.
                let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
                notif.id = self.cell(slot)?.id.load(std::sync::atomic::Ordering::Acquire);
                Some(notif)
            }
        }
    }

    pub fn cell(&self, slot: u32) -> Option<&'static Cell> {
        self.cells.get(slot as usize)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
