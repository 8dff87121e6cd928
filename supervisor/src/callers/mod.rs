//! The calling threads and processes of one listener.
//!
//! Each thread seen gets a handle opened once: a `PIDFD_THREAD` pidfd (6.9),
//! or before that its kept-open `/proc/<tid>/stat`. The handle pins the
//! thread it was opened for (its `struct pid`), never a later thread that
//! reuses the tid, so one cheap probe per notification (a zero-timeout
//! poll of the pidfd) proves that the cached entry still names the caller.
//! A dead one is reopened, with /proc read once.
//!
//! Each process gets its handler table (`handlers.rs`), kept current from
//! the bookkeeping calls the filter traps. Nothing on the notification path
//! reads /proc once a process is known, except: a handler change not yet
//! confirmed, the name and thread count a profile selects by (at most every
//! `SELECTION_TTL`), and a Trace whose signal the filter does not watch.

mod changes;
pub mod handlers;
mod known;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sigvisor_proto::signal_bit;

use crate::procfs::{self, stat, status, status::Status};
use crate::sys::seccomp::{Listener, Notification};
pub use crate::sys::thread::Pin;
use changes::{change_made, check_with_proc, wait_delivered, Pending};
use handlers::{Disposition, HandlerCalls, Table, Verdict};
pub use known::KnownProcess;

/// Threads (and, apart, processes) kept at most per listener. When full,
/// the dead go first; if all still live, all go and are reopened on demand.
const MAX_ENTRIES: usize = 256;

/// How long a handler change waits for a signal already sent to be
/// delivered under the old handler (it is, as soon as its thread returns
/// from the trapped call; only a thread that blocks the signal keeps it).
const DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// How long a handler change waits for another thread's earlier change to
/// be made, so that the two reach the kernel in the order they were answered.
const ORDER_LIMIT: Duration = Duration::from_millis(100);

/// How long a process's name and thread count, which selection reads, are
/// taken as current: both change without a trapped call (`prctl`, `clone`),
/// and reading them at every call would cost more than the round trip.
const SELECTION_TTL: Duration = Duration::from_millis(10);

/// The bookkeeping syscalls' numbers on this machine's ABIs.
pub fn handler_calls() -> &'static HandlerCalls {
    static CALLS: OnceLock<HandlerCalls> = OnceLock::new();
    CALLS.get_or_init(HandlerCalls::default)
}

/// A calling thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tid: i32,
    pub tgid: i32,
    /// The thread's name (`comm`) when it was first seen.
    pub name: Arc<str>,
}

struct Thread {
    tgid: i32,
    name: Arc<str>,
    pin: Pin,
    /// A signal sent to it whose delivery is not confirmed yet.
    in_flight: Option<i32>,
    /// Its `/proc/<tid>/stat`, kept open where handlers are read from /proc.
    stat: Option<File>,
}

/// How a process's table became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// From an `execve` on: exact.
    Exec,
    /// First seen without an exec: a fork child (or the first process of a
    /// filter, until it execs). /proc's caught or not, taken as inherited.
    Proc,
}

struct Process {
    /// Start time (clock ticks since boot): tells processes with one pid apart.
    start: u64,
    table: Table,
    source: Source,
    /// Whether `source` was counted in `Knowledge` (at its first decision).
    counted: bool,
    pending: Option<Pending>,
    /// Signallable calls seen, for `when`.
    calls: u64,
    /// `/proc/<tgid>/comm`, opened when a profile selects by name.
    comm: Option<File>,
    /// The process's name and thread count, and when they were read.
    name: Option<(Arc<str>, Instant)>,
    threads: Option<(u32, Instant)>,
}

/// How processes' handlers became known, for the Trace status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Knowledge {
    /// `execve`s seen: the table is exact from there on.
    pub exec: u64,
    /// Processes decided on before any exec sigvisor saw (fork children):
    /// /proc's caught/not caught, and no inherited handler is signalled.
    pub proc: u64,
    /// Decisions that read /proc because the filter does not watch the signal.
    pub proc_reads: u64,
    /// Bookkeeping calls answered (handler changes and execs).
    pub handler_calls: u64,
}

pub struct Callers {
    /// The signals whose handler changes the filter traps (a mask).
    pub watched: u64,
    threads: HashMap<i32, Thread>,
    /// Boxed: a map's spare slots are as large as its values (10,000 idle
    /// listeners cost twice the memory with the processes inline).
    processes: HashMap<i32, Box<Process>>,
    pub knowledge: Knowledge,
    /// Processes whose table or pending change changed since `take_changed`.
    changed: Vec<i32>,
    /// Whether a handler change waits (up to `ORDER_LIMIT`) for another
    /// thread's earlier one to be made, for an exact table.
    patient: bool,
}

impl Callers {
    pub fn new(watched: u64) -> Self {
        Callers {
            watched,
            threads: HashMap::new(),
            processes: HashMap::new(),
            knowledge: Knowledge::default(),
            changed: Vec::new(),
            patient: true,
        }
    }

    /// For the keeper: one thread answers every listener, and it signals
    /// nobody, so it never waits on a target. Two changes under way meet
    /// in a table that holds whichever way they go, at once.
    pub fn impatient(watched: u64) -> Self {
        Callers { patient: false, ..Callers::new(watched) }
    }

    /// The notification's caller, from its cached entry when that still
    /// pins a live thread, else looked up afresh; None if it is gone.
    pub fn caller(&mut self, listener: &Listener, notif: &Notification) -> Option<Caller> {
        let tid = notif.pid as i32;
        let cached = self.threads.get(&tid).is_some_and(|t| t.pin.alive());
        if !cached {
            self.open(listener, notif)?;
        }
        let tgid = self.threads.get(&tid)?.tgid;
        // Settled first: an exec it ends renames the thread.
        self.settle(tid, tgid, cached);
        let thread = self.threads.get(&tid)?;
        Some(Caller { tid, tgid, name: Arc::clone(&thread.name) })
    }

    /// The start time of a process seen (it tells it from a later one
    /// with its pid).
    pub fn process_start(&self, tgid: i32) -> Option<u64> {
        self.processes.get(&tgid).map(|p| p.start)
    }

    /// The process of a thread seen.
    pub fn tgid_of(&self, tid: i32) -> Option<i32> {
        self.threads.get(&tid).map(|t| t.tgid)
    }

    /// The pin of a thread `caller` returned.
    pub fn pin(&self, tid: i32) -> Option<&Pin> {
        self.threads.get(&tid).map(|t| &t.pin)
    }

    /// Whether `signal` may be sent to the caller's process now, for a call
    /// made through a 32-bit ABI (`compat`) or not.
    pub fn verdict(&mut self, caller: &Caller, signal: i32, any_handler: bool, compat: bool) -> Verdict {
        if self.watched & signal_bit(signal) == 0 {
            // The filter does not tell this signal's changes: /proc, each time.
            self.knowledge.proc_reads += 1;
            return match self.caught_now(caller.tid, signal) {
                Some(caught) => Table::from_caught(caught).verdict(signal, any_handler, true, compat),
                None => Verdict::Unknown,
            };
        }
        let Some(process) = self.processes.get_mut(&caller.tgid) else { return Verdict::Unknown };
        if !process.counted {
            process.counted = true;
            if process.source == Source::Proc {
                self.knowledge.proc += 1;
            }
        }
        let now = process.table.verdict(signal, any_handler, false, compat);
        let held_back = match &process.pending {
            Some(p) => handlers::both(now, p.before.verdict(signal, any_handler, false, compat)),
            None => now,
        };
        if held_back != now {
            // The change makes the signal sendable: only once the kernel made
            // it, and then as /proc shows it.
            let pending = process.pending.as_ref().filter(|p| !p.exec && change_made(p));
            let Some(pending) = pending else { return held_back };
            let changed = pending.signal;
            process.pending = None;
            check_with_proc(process, caller.tid, changed);
            self.changed.push(caller.tgid);
            return process.table.verdict(signal, any_handler, false, compat);
        }
        if now == Verdict::Unknown && process.table.get(signal) == Disposition::Unknown {
            // What sigvisor could not read, /proc may still settle: not caught.
            if self.caught_now(caller.tid, signal).is_some_and(|c| c & signal_bit(signal) == 0) {
                if let Some(process) = self.processes.get_mut(&caller.tgid) {
                    process.table.set(signal, Disposition::NotCaught);
                    self.changed.push(caller.tgid);
                }
                return Verdict::NoHandler;
            }
        }
        now
    }

    /// After a signal was sent: remember it is on its way (and that a
    /// one-shot handler, signalled under `handler: any`, goes at delivery).
    pub fn signalled(&mut self, caller: &Caller, signal: i32) {
        if let Some(thread) = self.threads.get_mut(&caller.tid) {
            thread.in_flight = Some(signal);
        }
        if let Some(process) = self.processes.get_mut(&caller.tgid) {
            if let Disposition::Handler { once: true, .. } = process.table.get(signal) {
                process.table.set(signal, Disposition::NotCaught);
                self.changed.push(caller.tgid);
            }
        }
    }

    /// The signals the thread's process catches, read now: its stat
    /// file's `sigcatch` holds signals 1-31 (the fault signals among them);
    /// a real-time signal needs `status`.
    fn caught_now(&mut self, tid: i32, signal: i32) -> Option<u64> {
        if signal >= 32 {
            return status::read(tid).map(|s| s.caught);
        }
        self.stat_field(tid, stat::CAUGHT)
    }

    /// Field `n` of the thread's stat line, by a `pread` of its kept-open
    /// `/proc/<tid>/stat`.
    fn stat_field(&mut self, tid: i32, n: usize) -> Option<u64> {
        let thread = self.threads.get_mut(&tid)?;
        let stat = match thread.stat {
            Some(ref file) => file,
            None => thread.stat.insert(File::open(procfs::path(tid, "stat")).ok()?),
        };
        stat::field(procfs::reread(stat, &mut [0u8; 1024])?, n)
    }

    /// The number of threads in the caller's process, read now.
    /// The number of threads in the caller's process, as of at most
    /// `SELECTION_TTL` ago (threads come and go without a trapped call).
    pub fn threads(&mut self, caller: &Caller) -> Option<u32> {
        if let Some((n, at)) = self.processes.get(&caller.tgid)?.threads {
            if at.elapsed() < SELECTION_TTL {
                return Some(n);
            }
        }
        let n = u32::try_from(self.stat_field(caller.tid, stat::THREADS)?).ok()?;
        self.processes.get_mut(&caller.tgid)?.threads = Some((n, Instant::now()));
        Some(n)
    }

    /// The name of the caller's process (its main thread's comm): read now
    /// if `fresh`, else as of at most `SELECTION_TTL` ago or its last exec
    /// seen (`prctl(PR_SET_NAME)`, and an exec under a filter without
    /// sigvisor's rules, rename it without a call sigvisor sees).
    pub fn process_name(&mut self, caller: &Caller, fresh: bool) -> Option<Arc<str>> {
        let process = self.processes.get_mut(&caller.tgid)?;
        if let Some((name, at)) = &process.name {
            if !fresh && at.elapsed() < SELECTION_TTL {
                return Some(Arc::clone(name));
            }
        }
        let comm = match process.comm {
            Some(ref file) => file,
            None => process.comm.insert(File::open(procfs::path(caller.tgid, "comm")).ok()?),
        };
        let name: Arc<str> = Arc::from(procfs::parse_comm(procfs::reread(comm, &mut [0u8; 64])?));
        process.name = Some((Arc::clone(&name), Instant::now()));
        Some(name)
    }

    /// Counts one more signallable call of the caller's process and returns
    /// the count (1 for its first).
    pub fn count_call(&mut self, caller: &Caller) -> Option<u64> {
        let process = self.processes.get_mut(&caller.tgid)?;
        process.calls += 1;
        Some(process.calls)
    }

    /// Drops what is kept for `tid` (its caller left before being signalled,
    /// so a pidfd opened since may name another thread).
    pub fn forget(&mut self, tid: i32) {
        self.threads.remove(&tid);
    }

    /// A new entry for the notification's caller: pin it, read /proc once,
    /// then prove with ID_VALID that both were the caller (it was alive and
    /// waiting throughout, so no other thread held its tid).
    fn open(&mut self, listener: &Listener, notif: &Notification) -> Option<()> {
        let tid = notif.pid as i32;
        self.make_room();
        let pin = Pin::open(tid).ok()?;
        let status = status::read(tid)?;
        let start = stat::process_start(status.tgid)?;
        if !listener.id_valid(notif.id) {
            return None;
        }
        let tgid = status.tgid;
        if self.processes.get(&tgid).is_none_or(|p| p.start != start) {
            let process = Callers::first_seen(&status, start);
            self.processes.insert(tgid, Box::new(process));
        }
        let name = Arc::from(status.name.as_str());
        self.threads.insert(tid, Thread { tgid, name, pin, in_flight: None, stat: None });
        Some(())
    }

    /// A process seen for the first time without an exec: a fork child.
    /// Its handlers are what /proc shows, all taken as inherited.
    fn first_seen(status: &Status, start: u64) -> Process {
        Process {
            start,
            table: Table::from_caught(status.caught),
            source: Source::Proc,
            counted: false,
            pending: None,
            calls: 0,
            comm: None,
            name: None,
            threads: None,
        }
    }

    fn make_room(&mut self) {
        if self.threads.len() >= MAX_ENTRIES {
            self.threads.retain(|_, t| t.pin.alive());
            if self.threads.len() >= MAX_ENTRIES {
                for (&tid, thread) in &self.threads {
                    if let Some(signal) = thread.in_flight {
                        wait_delivered(tid, signal);
                    }
                }
                self.threads.clear();
            }
        }
        if self.processes.len() >= MAX_ENTRIES {
            // A live process never loses its table or its count.
            self.processes.retain(|&tgid, p| stat::process_start(tgid) == Some(p.start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::thread;

    #[test]
    fn own_thread_pin_is_alive() {
        let pin = Pin::open(thread::gettid()).expect("pin self");
        assert!(pin.alive());
    }

    #[test]
    fn a_pin_outlives_its_thread_and_says_so() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(thread::gettid()).expect("send tid");
            go_rx.recv().ok();
        });
        let tid = tid_rx.recv().expect("tid");
        let pin = Pin::open(tid).expect("pin the thread");
        assert!(pin.alive());
        go_tx.send(()).expect("let it end");
        thread.join().expect("join");
        // join returns when the kernel clears the thread's tid word, a
        // moment before its exit is complete and its pidfd readable.
        let deadline = Instant::now() + Duration::from_secs(1);
        while pin.alive() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!pin.alive(), "an exited thread's pin must read dead");
    }
}
