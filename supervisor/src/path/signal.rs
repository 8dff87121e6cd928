//! Signal exactly the thread that made the trapped syscall, and tell its
//! handler which call it was.
//!
//! `notif.pid` is a tid, and tids are recycled. The caller's entry pins one
//! thread (`callers/mod.rs`) and was proven alive after the notification was
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

use crate::callers::{Caller, Callers, Pin};
use crate::sys::seccomp::{Listener, Notification};
use crate::sys::thread;

#[derive(Debug)]
pub enum SignalError {
    /// The caller died (or its notification was withdrawn) before the signal.
    CallerGone,
    Os(io::Error),
}

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
    let Some(pin) = callers.pin(caller.tid) else { return Err(SignalError::CallerGone) };
    // A pidfd pin was proven alive after the notification was received (or
    // opened and checked with ID_VALID then): it has held the tid since
    // before the call, so it is the caller, and no ID_VALID is needed; if
    // the caller died since, the pidfd says ESRCH. A stat pin signals by
    // number: ID_VALID first.
    if matches!(pin, Pin::Stat(_)) && !listener.id_valid(notif.id) {
        return Err(SignalError::CallerGone);
    }
    thread::send_queued(pin, caller.tgid, caller.tid, signal, value_of(notif)).map_err(|e| {
        if e.raw_os_error() == Some(libc::ESRCH) {
            SignalError::CallerGone
        } else {
            SignalError::Os(e)
        }
    })
}
