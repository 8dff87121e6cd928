//! Process-wide settings: the fd limit, signals to children, who we are.

use std::os::unix::process::CommandExt;
use std::sync::OnceLock;

/// The fd limit sigvisor started with, which CMD gets back.
static ORIGINAL_FD_LIMIT: OnceLock<libc::rlimit> = OnceLock::new();

/// Lifts sigvisor's soft limit on open fds to the hard one: each supervised
/// thread may hold a few (caller.rs), and 1024 is soon reached.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let _ = ORIGINAL_FD_LIMIT.set(limit);
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, ..limit };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
}

/// Makes `command`'s child start with the fd limit sigvisor started with.
pub fn give_back_fd_limit(command: &mut std::process::Command) {
    if let Some(&limit) = ORIGINAL_FD_LIMIT.get() {
        // SAFETY: the closure runs between fork and exec and only calls
        // setrlimit, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    }
}

/// Sends `signal` to process `pid` (a child of ours); errors are ignored:
/// it may have exited.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, signal) };
}

/// Our effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
