//! The answer: CONTINUE, always. The syscall runs unchanged; sigvisor
//! observes and signals, it never decides whether a syscall may run (a
//! CONTINUE is no security decision: the arguments could change under it).

use std::io;

use crate::sys::seccomp::Listener;

pub enum Answered {
    /// The syscall runs now; a signal sent before this is delivered on its
    /// way back to user space.
    Continued,
    /// The caller went away first (killed, or its wait was interrupted).
    CallerGone,
}

pub fn answer(listener: &Listener, id: u64) -> io::Result<Answered> {
    match listener.send_continue(id) {
        Ok(()) => Ok(Answered::Continued),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Answered::CallerGone),
        Err(e) => Err(e),
    }
}
