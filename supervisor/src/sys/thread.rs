//! Threads of other processes: pinning one (a `PIDFD_THREAD` pidfd, or
//! before Linux 6.9 its stat file), asking whether it is alive, and sending
//! it a queued signal.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::unix::fs::FileExt;

/// `PIDFD_THREAD` (= O_EXCL, Linux 6.9); not in libc yet.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
/// `PIDFD_SIGNAL_THREAD` (Linux 6.9); not in libc yet.
const PIDFD_SIGNAL_THREAD: libc::c_uint = 1;

/// What pins a thread: a `PIDFD_THREAD` pidfd, or (before 6.9) its stat file.
pub enum Pin {
    Pidfd(OwnedFd),
    Stat(File),
}

/// Cleared on the first EINVAL from `pidfd_open(.., PIDFD_THREAD)`.
static THREAD_PIDFDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

impl Pin {
    pub fn open(tid: i32) -> io::Result<Pin> {
        use std::sync::atomic::Ordering::Relaxed;
        if THREAD_PIDFDS.load(Relaxed) {
            // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
            if fd >= 0 {
                // SAFETY: the kernel just returned this fd (O_CLOEXEC); nobody else owns it.
                return Ok(Pin::Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            tracing::info!("kernel has no PIDFD_THREAD (Linux < 6.9): pinning threads by their stat file");
            THREAD_PIDFDS.store(false, Relaxed);
        }
        File::open(format!("/proc/{tid}/stat")).map(Pin::Stat)
    }

    /// Whether the pinned thread is alive, and so the one holding its tid.
    /// A thread pidfd polls readable once its thread has exited (6.9): a
    /// zero-timeout poll is the cheapest syscall that asks.
    pub fn alive(&self) -> bool {
        match self {
            Pin::Pidfd(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::ZERO) == Ok(0)
            }
            Pin::Stat(file) => file.read_at(&mut [0u8; 1], 0).is_ok(),
        }
    }
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

/// Sends `signal` to the pinned thread with `si_code = SI_QUEUE` and
/// `si_value`; before 6.9 (a stat pin) by number, `tgid`/`tid`, so the
/// caller must have proven the numbers current just before.
pub fn send_queued(pin: &Pin, tgid: i32, tid: i32, signal: i32, value: u64) -> io::Result<()> {
    let info = QueuedInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        // SAFETY: getpid and getuid cannot fail.
        pid: unsafe { libc::getpid() },
        // SAFETY: as above.
        uid: unsafe { libc::getuid() },
        value,
        _rest: [0; 12],
    };
    let info = &info as *const QueuedInfo;
    let ret = match pin {
        // SAFETY: info points at a whole siginfo_t-sized struct we own.
        Pin::Pidfd(pidfd) => unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, info, PIDFD_SIGNAL_THREAD)
        },
        // SAFETY: as above.
        Pin::Stat(_) => unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, tgid, tid, signal, info) },
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's id.
#[cfg(test)]
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
