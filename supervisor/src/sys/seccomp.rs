//! The listener fd's kernel interface: RECV, ID_VALID, SEND, SET_FLAGS, poll.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libseccomp::ScmpArch;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

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

    /// Receives one notification, blocking; EINTR if a signal (`Ticker`)
    /// interrupted the wait, before any notification was taken.
    pub fn recv_once(&self) -> io::Result<Notification> {
        // SAFETY: seccomp_notif is plain old data; the kernel requires it zeroed.
        let mut notif: Notification = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into the buffer we own.
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) })?;
        Ok(notif)
    }

    /// Receives one notification into a slot's buffer in the region the
    /// keeper shares (`region::Received`), so that its id is recorded the
    /// moment the ioctl returns; as `recv_once` otherwise.
    pub fn recv_into(&self, buffer: &crate::sys::region::Received) -> io::Result<Notification> {
        let at = buffer.cleared();
        // SAFETY: RECV writes one seccomp_notif into the zeroed buffer,
        // valid for writes for as long as the region is mapped (for ever).
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_RECV, at) })?;
        Ok(buffer.read())
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

    /// Asks the kernel to wake this listener's receiver, and later the
    /// caller, on the waker's CPU (6.6+): a synchronous hand-off that cuts
    /// the round trip ~4x for a receiver blocked in RECV or poll
    /// (docs/design.md#how-a-listener-waits).
    pub fn enable_sync_wake_up(&self) -> io::Result<()> {
        // SAFETY: SET_FLAGS reads one u64 flag word.
        check(unsafe { libc::ioctl(self.raw(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, FD_SYNC_WAKE_UP) })
    }

    /// Whether a notification was received and not answered yet: the
    /// listener polls writable (POLLOUT) while one is.
    pub fn received_unanswered(&self) -> bool {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLOUT)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLOUT))
    }

    /// `poll(2)` on the listener alone; `timeout_ms` < 0 waits forever.
    pub fn poll(&self, timeout_ms: i32) -> io::Result<Readiness> {
        let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
        loop {
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            // A notification still pending is answered before a hang-up.
            return Ok(if revents.contains(PollFlags::POLLIN) {
                Readiness::Notification
            } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
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

/// The signal a `Ticker` sends: a real-time one nothing else here uses.
fn tick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// Interrupts this thread's blocking syscalls every `period` with a signal
/// whose handler does nothing (without SA_RESTART, so they fail EINTR).
/// libc, not nix: nix's `Signal` has no real-time signals.
pub struct Ticker(libc::timer_t);

extern "C" fn on_tick(_: libc::c_int) {}

impl Ticker {
    pub fn start(period: std::time::Duration) -> io::Result<Ticker> {
        static HANDLER: std::sync::Once = std::sync::Once::new();
        HANDLER.call_once(|| {
            // SAFETY: sigaction is plain old data; all-zero is its empty
            // value. The handler is async-signal-safe (it does nothing).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_tick as *const () as libc::sighandler_t;
                libc::sigaction(tick_signal(), &action, std::ptr::null_mut());
            }
        });
        // SAFETY: sigevent is plain old data; all-zero is its empty value.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = tick_signal();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: timer_create reads the sigevent and writes the timer id.
        check(unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) })?;
        let ticker = Ticker(timer);
        let interval = libc::timespec { tv_sec: period.as_secs() as _, tv_nsec: period.subsec_nanos() as _ };
        let spec = libc::itimerspec { it_interval: interval, it_value: interval };
        // SAFETY: the timer was just created; settime reads the spec.
        check(unsafe { libc::timer_settime(ticker.0, 0, &spec, std::ptr::null_mut()) })?;
        Ok(ticker)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // SAFETY: the timer is ours and deleted once; a signal it already
        // queued is handled by the do-nothing handler.
        unsafe { libc::timer_delete(self.0) };
    }
}

// SAFETY: a timer id is a plain handle the kernel owns; it names the same
// timer from any thread.
unsafe impl Send for Ticker {}
