//! Signal exactly the thread that made the trapped syscall, and tell its
//! handler which call it was.
//!
//! `notif.pid` is a tid, and tids are recycled. The caller's entry pins one
//! thread (`caller.rs`) and was proven alive after the notification was
//! received: it held the tid from before the call until then, so it is the
//! caller. The signal goes through the pin (`pidfd_send_signal`, Linux 6.9);
//! if the caller died since, that fails with ESRCH. Older kernels get
//! `rt_tgsigqueueinfo` after ID_VALID, which leaves a window of a few
//! instructions.
//!
//! The signal carries `si_code = SI_QUEUE` (a process may queue those to
//! another it may kill) and a `si_value` naming the call: the low 32 bits
//! are its first argument (for close, the fd), the high 32 bits its syscall
//! number in the caller's ABI. An `SA_SIGINFO` handler reads the fd from
//! `si_value.sival_int`.

use std::io;
use std::os::fd::AsRawFd;

use crate::caller::{Caller, Callers, Pin, PIDFD_SIGNAL_THREAD};
use crate::seccomp::{Listener, Notification};

#[derive(Debug)]
pub enum SignalError {
    /// The caller died (or its notification was withdrawn) before the signal.
    CallerGone,
    Os(io::Error),
}

/// `siginfo_t` for SI_QUEUE as the 64-bit kernel ABI lays it out: signo,
/// errno, code, padding, then `_rt` (pid, uid, sigval), 128 bytes in all.
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u64; 12],
}

const _: () = assert!(std::mem::size_of::<QueuedInfo>() == std::mem::size_of::<libc::siginfo_t>());

/// The `si_value` for a notification: syscall number, then first argument.
pub fn value_of(notif: &Notification) -> u64 {
    (u64::from(notif.data.nr as u32) << 32) | (notif.data.args[0] & 0xffff_ffff)
}

pub fn signal_caller(
    listener: &Listener,
    notif: &Notification,
    callers: &Callers,
    caller: &Caller,
    signal: i32,
) -> Result<(), SignalError> {
    let info = QueuedInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        // SAFETY: getpid and getuid cannot fail.
        pid: unsafe { libc::getpid() },
        // SAFETY: as above.
        uid: unsafe { libc::getuid() },
        value: value_of(notif),
        _rest: [0; 12],
    };
    let info = &info as *const QueuedInfo;
    let ret = match callers.pin(caller.tid) {
        // The pin was proven alive after the notification was received (or
        // opened and checked with ID_VALID then): it has held the tid since
        // before the call, so it is the caller. No ID_VALID needed; if the
        // caller died since, the pidfd says ESRCH.
        // SAFETY: info points at a whole siginfo_t-sized struct we own.
        Some(Pin::Pidfd(pidfd)) => unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, info, PIDFD_SIGNAL_THREAD)
        },
        _ => {
            if !listener.id_valid(notif.id) {
                return Err(SignalError::CallerGone);
            }
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, caller.tgid, caller.tid, signal, info) }
        }
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ESRCH) {
            SignalError::CallerGone
        } else {
            SignalError::Os(e)
        });
    }
    Ok(())
}
