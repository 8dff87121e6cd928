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

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sigvisor_proto::signal_bit;

use crate::handlers::{self, Action, Disposition, HandlerCall, HandlerCalls, Table, Verdict};
use crate::sys::memory;
use crate::sys::seccomp::{Listener, Notification};
#[cfg(test)]
use crate::sys::thread;
pub use crate::sys::thread::Pin;

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

/// A handler change the kernel may not have made yet: decisions for the
/// process need `before` and the current table to agree until it has.
struct Pending {
    /// The thread that made the call.
    tid: i32,
    /// Boxed: a table is 1 KiB, and most processes have no pending change.
    before: Box<Table>,
    /// The signal a sigaction set (0 for an exec), and whether the change
    /// leaves it caught: a change of caught or not shows in /proc's `SigCgt`
    /// once made.
    signal: i32,
    caught: bool,
    /// The thread's voluntary context switches while it waited for the
    /// answer: one more, and it has slept since, so it is past the call.
    switches: u64,
    /// The call's syscall number, as `/proc/<tid>/syscall` shows it.
    nr: i32,
    /// An `execve`, which may yet fail (and leave the handlers as they were).
    exec: bool,
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

/// What a supervisor knew of one process's handlers, kept by the keeper
/// for the next one (keeper/mod.rs). The table is the one that holds
/// whichever way a change still under way goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KnownProcess {
    pub tgid: i32,
    /// Start time, which tells it from a later process with its pid.
    pub start: u64,
    pub table: Vec<(i32, Disposition)>,
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

    /// Takes over what an earlier supervisor knew (keeper/): those
    /// processes are signalled as if their handler changes had been seen here.
    pub fn import(&mut self, known: Vec<KnownProcess>) {
        for k in known {
            let process = Process {
                table: Table::from_entries(&k.table),
                source: Source::Exec,
                counted: true,
                ..Callers::first_seen(&Status::default(), k.start)
            };
            self.processes.insert(k.tgid, Box::new(process));
        }
    }

    /// Ends the handler changes the kernel has made by now, as a decision
    /// would: before the tables go to another supervisor (the keeper, which
    /// makes no decisions, records changes but never settles them).
    pub fn settle_all(&mut self) {
        let Callers { processes, changed, .. } = self;
        for (&tgid, process) in processes.iter_mut() {
            let Some(pending) = process.pending.as_ref().filter(|p| !p.exec && change_made(p)) else {
                continue;
            };
            let signal = pending.signal;
            process.pending = None;
            // SigCgt is the process's: any of its threads shows it.
            check_with_proc(process, tgid, signal);
            changed.push(tgid);
        }
    }

    /// What changed since the last call, as a successor should know it;
    /// empty (and no allocation) when nothing did.
    pub fn take_changed(&mut self) -> Vec<KnownProcess> {
        if self.changed.is_empty() {
            return Vec::new();
        }
        let mut tgids = std::mem::take(&mut self.changed);
        tgids.sort_unstable();
        tgids.dedup();
        tgids
            .into_iter()
            .filter_map(|tgid| {
                let p = self.processes.get(&tgid)?;
                let table = match &p.pending {
                    Some(pending) => pending.before.meet(&p.table),
                    None => p.table.clone(),
                };
                Some(KnownProcess { tgid, start: p.start, table: table.entries() })
            })
            .collect()
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

    /// A bookkeeping call, before its answer: records what it changes.
    pub fn observe(&mut self, listener: &Listener, notif: &Notification, call: HandlerCall) {
        self.knowledge.handler_calls += 1;
        if notif.pid == 0 {
            return;
        }
        let Some(caller) = self.caller(listener, notif) else { return };
        let tid = caller.tid;
        self.changed.push(caller.tgid);
        if call == HandlerCall::Exec {
            self.knowledge.exec += 1;
            let Some(process) = self.processes.get_mut(&caller.tgid) else { return };
            let before = match process.pending.take() {
                Some(p) => p.before.meet(&process.table),
                None => process.table.clone(),
            };
            process.table.reset();
            process.source = Source::Exec;
            process.name = None;
            process.pending = Some(Pending {
                tid,
                before: Box::new(before),
                signal: 0,
                caught: false,
                switches: 0,
                nr: notif.data.nr,
                exec: true,
            });
            return;
        }
        let compat = handlers::is_compat(notif.data.arch, notif.data.nr);
        let (signal, action) = handlers::sigaction_of(call, compat, &notif.data.args);
        if self.watched & signal_bit(signal) == 0 {
            return;
        }
        let new = match action {
            Action::Nothing => return,
            Action::Now(disposition) => disposition,
            Action::Read { at, len } => match read_sigaction(tid, at, len) {
                // Read from the caller's memory only if it still waits.
                Ok(bytes) if listener.id_valid(notif.id) => {
                    handlers::decode(call, compat, &bytes[..len]).unwrap_or(Disposition::Unknown)
                }
                Ok(_) => return,
                // The kernel cannot read it either: the call fails.
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => return,
                Err(e) => {
                    tracing::debug!("reading tid {tid}'s sigaction: {e}");
                    Disposition::Unknown
                }
            },
        };
        // A signal already sent is delivered to whatever handler is there
        // when its thread returns: let it land before the handler changes.
        self.drain(caller.tgid, signal);
        let switches = read_status(tid).map_or(u64::MAX, |s| s.switches);
        let nr = notif.data.nr;
        let Some(process) = self.processes.get_mut(&caller.tgid) else { return };
        if process.pending.as_ref().is_some_and(|p| p.exec) {
            // Another thread's exec: if it succeeds, the new image will not
            // have this handler; if it fails, the process will.
            if let Some(p) = process.pending.as_mut() {
                p.before.set(signal, new);
            }
            return;
        }
        // Another thread's change, answered earlier, must be made first, or
        // the kernel could make the two in the other order.
        if let Some(earlier) = process.pending.take() {
            if self.patient && !change_made(&earlier) {
                off_the_workers(|| {
                    let deadline = Instant::now() + ORDER_LIMIT;
                    while !change_made(&earlier) && Instant::now() < deadline {
                        std::thread::yield_now();
                    }
                });
            }
            if change_made(&earlier) {
                check_with_proc(process, earlier.tid, earlier.signal);
                process.pending = None;
            } else {
                // Either order may happen: the table holds for both.
                let met = process.table.get(signal).meet(new);
                process.table.set(signal, met);
                let before = earlier.before.meet(&process.table);
                let caught = process.table.caught(signal_bit(signal)) != 0;
                process.pending = Some(Pending {
                    tid,
                    before: Box::new(before),
                    signal,
                    caught,
                    switches,
                    nr,
                    exec: false,
                });
                return;
            }
        }
        let before = process.table.clone();
        process.table.set(signal, new);
        let caught = process.table.caught(signal_bit(signal)) != 0;
        process.pending =
            Some(Pending { tid, before: Box::new(before), signal, caught, switches, nr, exec: false });
    }

    /// The signals the thread's process catches, read now: its stat
    /// file's `sigcatch` holds signals 1-31 (the fault signals among them);
    /// a real-time signal needs `status`.
    fn caught_now(&mut self, tid: i32, signal: i32) -> Option<u64> {
        if signal >= 32 {
            return read_status(tid).map(|s| s.caught);
        }
        self.stat_field(tid, 34)
    }

    /// Field `n` of the thread's stat line, by a `pread` of its kept-open
    /// `/proc/<tid>/stat`.
    fn stat_field(&mut self, tid: i32, n: usize) -> Option<u64> {
        let thread = self.threads.get_mut(&tid)?;
        let stat = match thread.stat {
            Some(ref file) => file,
            None => thread.stat.insert(File::open(format!("/proc/{tid}/stat")).ok()?),
        };
        let mut buf = [0u8; 1024];
        let len = stat.read_at(&mut buf, 0).ok()?;
        stat_field(std::str::from_utf8(buf.get(..len)?).ok()?, n)
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
        let n = u32::try_from(self.stat_field(caller.tid, 20)?).ok()?;
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
            None => process.comm.insert(File::open(format!("/proc/{}/comm", caller.tgid)).ok()?),
        };
        let mut buf = [0u8; 64];
        let n = comm.read_at(&mut buf, 0).ok()?;
        let name: Arc<str> = Arc::from(std::str::from_utf8(buf.get(..n)?).ok()?.trim_end_matches('\n'));
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
        let status = read_status(tid)?;
        let start = process_start(status.tgid)?;
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

    /// Ends a pending change once the notification's thread shows it is
    /// over: the thread that made the call makes another one, or (for an
    /// exec) what it left behind tells success from failure.
    fn settle(&mut self, tid: i32, tgid: i32, same_thread: bool) {
        let watched = self.watched;
        let Some(pending) = self.processes.get(&tgid).and_then(|p| p.pending.as_ref()) else { return };
        let failed = match (pending.exec, tid == pending.tid) {
            (false, true) => Some(false),
            (false, false) => None,
            // The same thread, still under its old tid: the exec failed.
            (true, true) if same_thread && tid != tgid => Some(true),
            // The leader exec'd and calls again: /proc shows which image.
            (true, true) if same_thread => read_status(tid).map(|s| {
                let table = &self.processes[&tgid].table;
                s.caught & watched & !table.caught(watched) != 0
            }),
            // The tid was reused: the exec'ing thread became the leader.
            (true, true) => Some(false),
            // A non-leader exec'd; the leader's tid calls: if the exec'ing
            // thread's old tid is dead, it took the leader's.
            (true, false)
                if tid == tgid && self.threads.get(&pending.tid).is_some_and(|t| !t.pin.alive()) =>
            {
                Some(false)
            }
            (true, false) => None,
        };
        let Some(failed) = failed else { return };
        let Some(process) = self.processes.get_mut(&tgid) else { return };
        let Some(pending) = process.pending.take() else { return };
        self.changed.push(tgid);
        if failed {
            process.table = *pending.before;
        } else if pending.exec {
            // The old image's threads are gone; names are read afresh.
            self.threads.retain(|&t, thread| thread.tgid != tgid || t == tid);
            if let Some(status) = read_status(tid) {
                if let Some(thread) = self.threads.get_mut(&tid) {
                    thread.name = Arc::from(status.name.as_str());
                }
            }
        }
    }

    /// Waits until every signal `signal` sent to a thread of `tgid` has been
    /// delivered (its pending bit is clear, or the thread gone).
    fn drain(&mut self, tgid: i32, signal: i32) {
        for (&tid, thread) in &mut self.threads {
            if thread.tgid == tgid && thread.in_flight == Some(signal) {
                wait_delivered(tid, signal);
                thread.in_flight = None;
            }
        }
    }

    /// Forgets every thread and process: the keeper answered handler
    /// changes while this supervisor was stuck, so its tables may be wrong.
    /// Each process is then seen afresh, as a fork child is (/proc, and no
    /// inherited handler signalled), which is never unsafe.
    pub fn forget_all(&mut self) {
        for (&tid, thread) in &self.threads {
            if let Some(signal) = thread.in_flight {
                wait_delivered(tid, signal);
            }
        }
        self.threads.clear();
        self.processes.clear();
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
            self.processes.retain(|&tgid, p| process_start(tgid) == Some(p.start));
        }
    }
}

fn wait_delivered(tid: i32, signal: i32) {
    let pending = || read_status(tid).is_some_and(|s| s.pending & signal_bit(signal) != 0);
    if !pending() {
        return;
    }
    off_the_workers(|| {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while pending() {
            if Instant::now() > deadline {
                tracing::warn!(
                    "tid {tid} has kept signal {signal} pending for {DRAIN_LIMIT:?} (does it block it?); \
                     its handler changes now"
                );
                return;
            }
            std::thread::yield_now();
        }
    })
}

/// Runs a wait a target can make last (up to `DRAIN_LIMIT`, by blocking a
/// signal, say) without holding a tokio worker: tokio first hands the
/// worker's other tasks, every other listener queued on it, to another
/// thread. Elsewhere (a hot listener's own thread, the keeper) it just runs.
fn off_the_workers<R>(wait: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(wait)
}

/// Whether the kernel has made a sigaction change whose call was answered.
/// Setting a handler never sleeps, so its thread is past the call once it
/// sleeps or has slept since it was answered (/proc's state, and its
/// voluntary context switches); "running" is not enough: a thread just woken
/// from the wait runs before it makes the change. A change of caught or not
/// also shows in `SigCgt`. A thread that is gone is past it too.
fn change_made(pending: &Pending) -> bool {
    let Some(status) = read_status(pending.tid) else { return true };
    let bit = signal_bit(pending.signal);
    let flips = pending.caught != (pending.before.caught(bit) != 0);
    status.state != b'R'
        || status.switches > pending.switches
        || (flips && (status.caught & bit != 0) == pending.caught)
        || out_of_call(pending.tid, pending.nr)
}

/// Whether a runnable thread that is not on a CPU right now shows, in
/// `/proc/<tid>/syscall`, that it is not inside syscall `nr`: -1 (preempted
/// in user space) or another call. "running" (on a CPU) tells nothing.
fn out_of_call(tid: i32, nr: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tid}/syscall")) else { return false };
    text.split_ascii_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| n != i64::from(nr))
}

/// Once a change is made, /proc has the last word on whether the signal is
/// caught: not caught is not caught (a one-shot handler that another signal
/// used up); caught where the table says not (the caller's memory changed
/// between sigvisor's read and the kernel's) is a handler of unknown origin.
fn check_with_proc(process: &mut Process, tid: i32, signal: i32) {
    if signal == 0 {
        return;
    }
    let recorded = process.table.caught(signal_bit(signal)) != 0;
    match read_status(tid).map(|s| s.caught & signal_bit(signal) != 0) {
        Some(false) if recorded => process.table.set(signal, Disposition::NotCaught),
        Some(true) if !recorded => process.table.set(signal, Disposition::Unknown),
        _ => {}
    }
}

/// Reads a `struct sigaction` (`len` bytes, at most 32) at `at` in thread
/// `tid`'s process, if its pages are in memory: a missing page could be one
/// a userfaultfd serves, and the read would wait for it for ever.
fn read_sigaction(tid: i32, at: u64, len: usize) -> io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    let buf = bytes.get_mut(..len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if !resident(tid, at, len) {
        return Err(io::Error::new(io::ErrorKind::WouldBlock, "not resident: it could block"));
    }
    memory::read(tid, at, buf)?;
    Ok(bytes)
}

/// Whether every page of `[at, at+len)` in `tid`'s process is in memory or
/// in swap (`/proc/<tid>/pagemap`); true where pagemap cannot be read.
fn resident(tid: i32, at: u64, len: usize) -> bool {
    match File::open(format!("/proc/{tid}/pagemap")) {
        Ok(pagemap) => crate::stacks::snapshot::resident_pages(&pagemap, at, len).iter().all(|p| *p),
        Err(_) => true,
    }
}

/// Whether `signal` is pending for thread `tid` (sent to it, not yet
/// delivered): a thread waiting in a trapped call whose wait is killable
/// only keeps a signal sent to it pending until the call returns.
pub fn signal_pending(tid: i32, signal: i32) -> bool {
    read_status(tid).is_some_and(|s| s.pending & sigvisor_proto::signal_bit(signal) != 0)
}

/// The fields of `/proc/<tid>/status` sigvisor uses.
#[derive(Default)]
struct Status {
    name: String,
    tgid: i32,
    /// `SigCgt`: the process's caught signals.
    caught: u64,
    /// `SigPnd`: signals pending for this thread.
    pending: u64,
    /// `State`'s letter: `R` running or runnable, `S`, `D`… asleep.
    state: u8,
    /// `voluntary_ctxt_switches`: how often the thread went to sleep.
    switches: u64,
}

fn read_status(tid: i32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    parse_status(&text)
}

fn parse_status(text: &str) -> Option<Status> {
    let mut status = Status { name: String::new(), tgid: 0, caught: 0, pending: 0, state: 0, switches: 0 };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key {
            "Name" => status.name = value.to_owned(),
            "Tgid" => status.tgid = value.parse().ok()?,
            "SigCgt" => status.caught = u64::from_str_radix(value, 16).ok()?,
            "SigPnd" => status.pending = u64::from_str_radix(value, 16).ok()?,
            "State" => status.state = value.bytes().next()?,
            "voluntary_ctxt_switches" => status.switches = value.parse().ok()?,
            _ => {}
        }
    }
    (status.tgid > 0).then_some(status)
}

/// Field `n` (1-based, as proc(5) numbers them; 3 or more) of a stat line.
fn stat_field(text: &str, n: usize) -> Option<u64> {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    let after = text.get(text.rfind(')')? + 1..)?;
    after.split_ascii_whitespace().nth(n - 3)?.parse().ok()
}

/// Field 22 (starttime, clock ticks since boot) of `/proc/<tgid>/stat`:
/// fixed for a process's life, across `execve` too.
fn process_start(tgid: i32) -> Option<u64> {
    stat_field(&std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_status_and_start() {
        let me = std::process::id() as i32;
        let status = read_status(me).expect("own status");
        assert_eq!(status.tgid, me);
        assert!(!status.name.is_empty());
        assert!(process_start(me).is_some());
        let this = read_status(thread::gettid()).expect("this thread's status");
        assert_eq!(this.state, b'R', "this thread runs");
        assert!(read_status(i32::MAX).is_none());
    }

    #[test]
    fn own_thread_pin_is_alive_and_memory_readable() {
        let me = std::process::id() as i32;
        let pin = Pin::open(me).expect("pin self");
        assert!(pin.alive());
        let value: u64 = 0x1234_5678_9abc_def0;
        let mut buf = [0u8; 8];
        memory::read(me, &value as *const u64 as u64, &mut buf).expect("read own memory");
        assert_eq!(u64::from_ne_bytes(buf), value);
        let err = memory::read(me, 8, &mut buf).expect_err("page 0");
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert!(resident(me, &value as *const u64 as u64, 8));
        assert!(!resident(me, 8, 8), "page 0 is never mapped");
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

    #[test]
    fn stat_with_awkward_comm() {
        let mut text = String::from("42 (a) b (c)) S");
        for n in 4..=40 {
            text.push_str(&format!(" {n}"));
        }
        assert_eq!(stat_field(&text, 22), Some(22));
        assert_eq!(stat_field(&text, 34), Some(34));
        assert_eq!(stat_field(&text, 60), None);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tgo (x)\nState:\tS (sleeping)\nTgid:\t42\nPPid:\t1\nThreads:\t3\n\
                    SigPnd:\t0000000000000004\nSigCgt:\tfffffffe7fc1feff\nvoluntary_ctxt_switches:\t7\n";
        let status = parse_status(text).expect("parses");
        assert_eq!((status.name.as_str(), status.tgid), ("go (x)", 42));
        assert_eq!(status.pending, signal_bit(libc::SIGQUIT));
        assert!(status.caught & signal_bit(libc::SIGILL) != 0);
        assert_eq!((status.state, status.switches), (b'S', 7));
    }
}
