//! Process-wide settings: the fd limit, signals to children, who we are.

use std::os::unix::process::CommandExt;
use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{geteuid, Pid};

/// The fd limit sigvisor started with (soft, hard), which CMD gets back.
static ORIGINAL_FD_LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

/// Lifts sigvisor's soft limit on open fds to the hard one: each supervised
/// thread may hold a few (callers/mod.rs), and 1024 is soon reached.
pub fn raise_fd_limit() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = ORIGINAL_FD_LIMIT.set((soft, hard));
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Makes `command`'s child start with the fd limit sigvisor started with.
pub fn give_back_fd_limit(command: &mut std::process::Command) {
    if let Some(&(soft, hard)) = ORIGINAL_FD_LIMIT.get() {
        // SAFETY: the closure runs between fork and exec and only calls
        // setrlimit(2) (nix's wrapper neither allocates nor locks), which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
                Ok(())
            });
        }
    }
}

/// Sends `signal` to process `pid` (a child of ours); errors are ignored:
/// it may have exited.
pub fn kill(pid: i32, signal: i32) {
    if let Ok(signal) = Signal::try_from(signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// Our effective uid.
pub fn euid() -> u32 {
    geteuid().as_raw()
}

/// Ignores `signal` in this process (SIG_IGN).
pub fn ignore(signal: Signal) {
    // SAFETY: SIG_IGN installs no handler, so no Rust code runs on delivery.
    let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
}

/// Makes `command`'s child the leader of a new session: no process group
/// or terminal signal aimed at its parent reaches it.
pub fn new_session(command: &mut std::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls
    // setsid(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
}

/// Restores SIGPIPE's default action (Rust ignores it), so that a command
/// whose output is piped into `head` ends at once instead of failing to
/// print.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler, so no Rust code runs on delivery.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

/// Dies at once, as `kill -9` from outside would kill it (failpoints).
pub fn kill_self() -> ! {
    let _ = nix::sys::signal::raise(Signal::SIGKILL);
    std::process::abort()
}

/// A process, by a pidfd: signalled only while it is the process it was
/// (a pid can be reused once it exits, a pidfd cannot).
pub struct ProcessFd(std::os::fd::OwnedFd);

impl ProcessFd {
    pub fn open(pid: i32) -> std::io::Result<ProcessFd> {
        // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd (O_CLOEXEC); nobody else owns it.
        Ok(ProcessFd(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }))
    }

    /// SIGKILL; an error if it is gone already.
    pub fn kill(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal reads no memory when info is null.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
