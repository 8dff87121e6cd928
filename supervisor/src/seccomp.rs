//! The listener fd's kernel interface: RECV, ID_VALID, SEND, SET_FLAGS, poll.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libseccomp::ScmpArch;

pub use libc::seccomp_notif as Notification;

/// The ABIs sigvisor's filters cover, by their `AUDIT_ARCH_*` value (the
/// `arch` of a notification).
pub const ABIS: &[(u32, ScmpArch)] = &[
    (0xC000_003E, ScmpArch::X8664),
    (0x4000_0003, ScmpArch::X86),
    (0xC000_003E, ScmpArch::X32),
    (0xC000_00B7, ScmpArch::Aarch64),
    (0x4000_0028, ScmpArch::Arm),
];

/// The ABI of a notification: x32 shares x86_64's audit arch and sets a bit
/// in the syscall number.
pub fn abi(arch: u32, nr: i32) -> Option<ScmpArch> {
    const X32_BIT: i32 = 0x4000_0000;
    match arch {
        0xC000_003E if nr & X32_BIT != 0 => Some(ScmpArch::X32),
        0xC000_003E => Some(ScmpArch::X8664),
        _ => ABIS.iter().find(|(a, _)| *a == arch).map(|(_, abi)| *abi),
    }
}

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6), not in libc yet.
const FD_SYNC_WAKE_UP: u64 = 1;

/// A seccomp user-notification listener.
#[derive(Debug)]
pub struct Listener(OwnedFd);

/// What `poll(2)` says about a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A notification waits: RECV will not block.
    Notification,
    /// No task uses the filter any more.
    Hangup,
    /// Nothing before the timeout.
    Idle,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener(fd)
    }

    /// Receives one notification. Only call when `poll` said `Notification`:
    /// RECV has no non-blocking mode. ENOENT means the caller was killed or
    /// interrupted since; it is not an error.
    pub fn recv(&self) -> io::Result<Notification> {
        // SAFETY: seccomp_notif is plain old data; the kernel requires it zeroed.
        let mut notif: Notification = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: RECV writes one seccomp_notif into the buffer we own.
            let ret = unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
            match check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(|()| notif),
            }
        }
    }

    /// Whether notification `id` is still pending: its caller is alive and
    /// waiting. Proves that a tid read from the notification still names it.
    pub fn id_valid(&self, id: u64) -> bool {
        // SAFETY: ID_VALID reads one u64 from the pointer.
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) }).is_ok()
    }

    /// Answers `id` with CONTINUE: the kernel runs the syscall unchanged.
    /// ENOENT means the caller is gone (killed, or interrupted by a signal).
    pub fn send_continue(&self, id: u64) -> io::Result<()> {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from the buffer we own.
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) })
    }

    /// Asks the kernel to wake this listener's receiver, and later the caller,
    /// on the waker's CPU (6.6+): a synchronous hand-off that cuts the round
    /// trip ~4x for a receiver blocked in RECV or poll (design.md §7).
    pub fn enable_sync_wake_up(&self) -> io::Result<()> {
        // SAFETY: SET_FLAGS reads one u64 flag word.
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, FD_SYNC_WAKE_UP) })
    }

    /// `poll(2)` on the listener alone; `timeout_ms` < 0 waits forever.
    pub fn poll(&self, timeout_ms: i32) -> io::Result<Readiness> {
        let mut pfd = libc::pollfd { fd: self.raw(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: one pollfd, owned, for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // A notification still pending is answered before a hang-up.
            return Ok(if pfd.revents & libc::POLLIN != 0 {
                Readiness::Notification
            } else if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                Readiness::Hangup
            } else {
                Readiness::Idle
            });
        }
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}
