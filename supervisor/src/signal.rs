//! Signal exactly the thread that made the trapped syscall.
//!
//! `notif.pid` is a tid, and tids are recycled: by the time we act, the
//! caller may have died and its tid been reused. The race-free sequence
//! (Linux 6.9) is: open a pidfd for the tid (pins one thread), then
//! ID_VALID (the notification is still pending, so its caller was alive
//! when the pidfd was opened: the pidfd is the caller), then signal
//! through the pidfd. Older kernels get ID_VALID then tgkill, which leaves
//! a window of a few instructions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::caller::{Caller, Callers};
use crate::seccomp::Listener;

/// `PIDFD_SIGNAL_THREAD` (Linux 6.9); not in libc yet.
const PIDFD_SIGNAL_THREAD: libc::c_uint = 1;

/// Cleared on the first EINVAL from `pidfd_open(.., PIDFD_THREAD)`.
static THREAD_PIDFDS: AtomicBool = AtomicBool::new(true);

#[derive(Debug)]
pub enum SignalError {
    /// The caller died (or its notification was withdrawn) before the signal.
    CallerGone,
    Os(io::Error),
}

pub fn signal_caller(
    listener: &Listener,
    id: u64,
    callers: &mut Callers,
    caller: &Caller,
    signal: i32,
) -> Result<(), SignalError> {
    if THREAD_PIDFDS.load(Ordering::Relaxed) {
        match callers.pidfd(caller.tid) {
            // ID_VALID after the pidfd exists: the call is still pending, so
            // its caller lived when the pidfd was opened; the pidfd is it.
            Ok(pidfd) if listener.id_valid(id) => return send_via_pidfd(pidfd, signal),
            Ok(_) => {
                callers.forget(caller.tid);
                return Err(SignalError::CallerGone);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    "kernel has no PIDFD_THREAD (Linux < 6.9): signalling with tgkill after ID_VALID"
                );
                THREAD_PIDFDS.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(gone_or(e)),
        }
    }
    if !listener.id_valid(id) {
        return Err(SignalError::CallerGone);
    }
    // SAFETY: tgkill takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, caller.tgid, caller.tid, signal) };
    if ret < 0 {
        return Err(gone_or(io::Error::last_os_error()));
    }
    Ok(())
}

fn gone_or(e: io::Error) -> SignalError {
    if e.raw_os_error() == Some(libc::ESRCH) {
        SignalError::CallerGone
    } else {
        SignalError::Os(e)
    }
}

fn send_via_pidfd(pidfd: BorrowedFd<'_>, signal: i32) -> Result<(), SignalError> {
    // SAFETY: a null siginfo makes the kernel fill in SI_USER itself.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            PIDFD_SIGNAL_THREAD,
        )
    };
    if ret < 0 {
        return Err(gone_or(io::Error::last_os_error()));
    }
    Ok(())
}
