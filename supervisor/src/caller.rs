//! The calling threads of one listener, and the handles kept open on each.
//!
//! Looking at a caller costs a procfs read per notification, the biggest
//! single cost on the notification path (open+read+close of
//! `/proc/<tid>/status` is ~15 µs here; `pread` of a kept-open
//! `/proc/<tid>/stat` ~4 µs, docs/benchmarks.md). So each tid gets two
//! handles, opened once: its `stat` file and (when it is to be signalled) a
//! `PIDFD_THREAD` pidfd.
//!
//! Both pin the thread they were opened for (its `struct pid`), never a later
//! thread that reuses the tid. That makes the cache safe: a successful
//! `pread` proves the pinned thread is alive now, so it is the one thread
//! that holds this tid, the caller. A dead one reads ESRCH, and its entry is
//! reopened. What the handles show is read fresh every time: handlers change
//! with `sigaction` and `execve`, so "catches the signal" is never cached.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

/// Entries kept at most per listener (each holds up to three fds). When
/// full, those of exited threads go first; if all still live, all go and
/// are reopened on demand.
const MAX_ENTRIES: usize = 256;

/// `PIDFD_THREAD` (= O_EXCL, Linux 6.9); not in libc yet.
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// A calling thread, as its handles show it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tid: i32,
    pub tgid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    /// Threads in its process.
    pub threads: u32,
    /// Whether its process has a handler for the signal asked about.
    pub catches: bool,
}

struct Entry {
    stat: File,
    tgid: i32,
    pidfd: Option<OwnedFd>,
    /// `/proc/<tgid>/comm`, opened when a profile selects by name.
    comm: Option<File>,
    /// The process's start time, read when a profile counts calls.
    process_start: Option<u64>,
}

/// A process across pid reuse: its tgid and its start time.
type ProcessKey = (i32, u64);

pub struct Callers {
    entries: HashMap<i32, Entry>,
    /// Signallable calls seen per process, for `when`.
    counts: HashMap<ProcessKey, u64>,
    buf: Vec<u8>,
}

impl Callers {
    pub fn new() -> Self {
        Callers { entries: HashMap::new(), counts: HashMap::new(), buf: vec![0; 1024] }
    }

    /// Thread `tid` now, and whether it catches `signal`; None if it is gone.
    pub fn look(&mut self, tid: i32, signal: i32) -> Option<Caller> {
        let stat = self.read_stat(tid).or_else(|| {
            self.entries.remove(&tid);
            self.open(tid)?;
            self.read_stat(tid)
        })?;
        // stat's sigcatch holds signals 1-31 only: real-time ones need status.
        let caught = if signal < 32 {
            stat.catches_bits
        } else {
            u64::from_str_radix(&status_field(tid, "SigCgt")?, 16).ok()?
        };
        let mut caller = stat.caller;
        caller.catches = caught & (1 << (signal - 1)) != 0;
        Some(caller)
    }

    /// The thread's pidfd, opened on first use. Err(EINVAL) on kernels
    /// without PIDFD_THREAD. The caller must check ID_VALID *after* this
    /// returns, which proves a new pidfd names the notification's caller.
    pub fn pidfd(&mut self, tid: i32) -> io::Result<BorrowedFd<'_>> {
        let entry = self.entries.get_mut(&tid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let pidfd = match entry.pidfd {
            Some(ref fd) => fd,
            None => entry.pidfd.insert(open_thread_pidfd(tid)?),
        };
        Ok(pidfd.as_fd())
    }

    /// The name of the caller's process (its main thread's comm), read now:
    /// `execve` and `prctl(PR_SET_NAME)` change it. Call after `look`.
    pub fn process_name(&mut self, tid: i32) -> Option<String> {
        let entry = self.entries.get_mut(&tid)?;
        let comm = match entry.comm {
            Some(ref file) => file,
            None => entry.comm.insert(File::open(format!("/proc/{}/comm", entry.tgid)).ok()?),
        };
        let n = comm.read_at(&mut self.buf, 0).ok()?;
        let name = std::str::from_utf8(self.buf.get(..n)?).ok()?;
        Some(name.trim_end_matches('\n').to_owned())
    }

    /// Counts one more signallable call of the caller's process and returns
    /// the count (1 for its first). Processes are told apart by start time,
    /// so a reused pid starts again from 1. Call after `look`.
    pub fn count_call(&mut self, tid: i32) -> Option<u64> {
        let entry = self.entries.get_mut(&tid)?;
        let start = match entry.process_start {
            Some(start) => start,
            None => *entry.process_start.insert(process_start(entry.tgid)?),
        };
        if self.counts.len() >= MAX_ENTRIES && !self.counts.contains_key(&(entry.tgid, start)) {
            forget_exited(&mut self.counts);
        }
        let count = self.counts.entry((entry.tgid, start)).or_default();
        *count += 1;
        Some(*count)
    }

    /// Drops what is kept for `tid` (its caller left before being signalled,
    /// so a pidfd opened since may name another thread).
    pub fn forget(&mut self, tid: i32) {
        self.entries.remove(&tid);
    }

    fn open(&mut self, tid: i32) -> Option<()> {
        if self.entries.len() >= MAX_ENTRIES {
            let mut probe = [0u8; 1];
            self.entries.retain(|_, e| e.stat.read_at(&mut probe, 0).is_ok());
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        let stat = File::open(format!("/proc/{tid}/stat")).ok()?;
        // The tgid is not in stat; it never changes for a thread, so once.
        let tgid = status_field(tid, "Tgid")?.parse().ok()?;
        self.entries.insert(tid, Entry { stat, tgid, pidfd: None, comm: None, process_start: None });
        Some(())
    }

    fn read_stat(&mut self, tid: i32) -> Option<Stat> {
        let entry = self.entries.get(&tid)?;
        let n = entry.stat.read_at(&mut self.buf, 0).ok()?;
        parse_stat(tid, entry.tgid, self.buf.get(..n)?)
    }
}

struct Stat {
    caller: Caller,
    catches_bits: u64,
}

/// Splits `pid (comm) state ppid …` into comm and the fields from 3 (state)
/// on. comm may hold spaces and parentheses: it ends at the last ')'.
fn split_stat(text: &str) -> Option<(&str, std::str::SplitAsciiWhitespace<'_>)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    Some((text.get(open + 1..close)?, text.get(close + 1..)?.split_ascii_whitespace()))
}

/// num_threads is field 20, sigcatch 34.
fn parse_stat(tid: i32, tgid: i32, text: &[u8]) -> Option<Stat> {
    let (name, mut fields) = split_stat(std::str::from_utf8(text).ok()?)?;
    let threads = fields.nth(20 - 3)?.parse().ok()?;
    let catches_bits = fields.nth(34 - 20 - 1)?.parse().ok()?;
    Some(Stat { caller: Caller { tid, tgid, name: name.to_owned(), threads, catches: false }, catches_bits })
}

fn open_thread_pidfd(tid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (O_CLOEXEC); nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Field 22 (starttime) of `/proc/<tgid>/stat`: fixed for a process's life,
/// across `execve` too.
fn process_start(tgid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    split_stat(&text)?.1.nth(22 - 3)?.parse().ok()
}

/// Drops the `when` counts of processes that have exited (their tgid is
/// gone, or now belongs to a process started at another time). A live
/// process never loses its count, or `when: 3` could fire twice.
fn forget_exited(counts: &mut HashMap<ProcessKey, u64>) {
    counts.retain(|&(tgid, start), _| process_start(tgid) == Some(start));
}

/// One field of `/proc/<tid>/status` (open, read, close: the slow path).
fn status_field(tid: i32, key: &str) -> Option<String> {
    let mut text = String::new();
    File::open(format!("/proc/{tid}/status")).ok()?.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':')).map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_at_own_threads() {
        let mut callers = Callers::new();
        let me = std::process::id() as i32;
        let caller = callers.look(me, libc::SIGUSR1).expect("self is alive");
        assert_eq!(caller.tgid, me);
        assert!(caller.threads >= 1);
        assert!(!caller.name.is_empty());
        // Twice: the second read goes through the kept-open handle (the
        // thread count may differ: the test harness runs other tests).
        let again = callers.look(me, libc::SIGUSR1).expect("still alive");
        assert_eq!((again.tid, again.tgid, &again.name), (caller.tid, caller.tgid, &caller.name));
        assert!(callers.look(i32::MAX, libc::SIGUSR1).is_none());
        let name = callers.process_name(me).expect("own comm");
        assert!(!name.is_empty() && !name.ends_with('\n'));
        assert_eq!(callers.count_call(me), Some(1));
        assert_eq!(callers.count_call(me), Some(2));
    }

    #[test]
    fn exited_processes_lose_their_counts_live_ones_keep_them() {
        let me = std::process::id() as i32;
        let mine = (me, process_start(me).expect("own start time"));
        let mut counts: HashMap<ProcessKey, u64> = (1..=300).map(|n| ((i32::MAX - n, 1), 1)).collect();
        counts.insert(mine, 7);
        forget_exited(&mut counts);
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[&mine], 7);
    }

    #[test]
    fn stat_with_awkward_comm() {
        let mut text = String::from("42 (a) b (c)) S");
        for n in 4..=40 {
            text.push_str(&format!(" {n}"));
        }
        let stat = parse_stat(42, 40, text.as_bytes()).unwrap();
        assert_eq!(stat.caller.name, "a) b (c)");
        assert_eq!(stat.caller.threads, 20);
        assert_eq!(stat.catches_bits, 34);
    }
}
