//! Handler changes: a bookkeeping call (`rt_sigaction`, `signal`,
//! `sigaction`, an exec) is recorded before its answer, and held as pending
//! until the kernel has made it; until then a decision needs the table before
//! and after to agree (docs/design.md#never-crash-a-target). The evidence
//! that a change is made or an exec failed comes from /proc; the rules that
//! read it (`made`, `ended`) are pure, and tested below without a kernel.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use sigvisor_proto::signal_bit;

use super::handlers::{self, Action, Disposition, HandlerCall, Table};
use super::{Callers, Process, Source, DRAIN_LIMIT, ORDER_LIMIT};
use crate::procfs::{self, pagemap, status, status::Status};
use crate::sys::memory;
use crate::sys::seccomp::{Listener, Notification};

/// A handler change the kernel may not have made yet: decisions for the
/// process need `before` and the current table to agree until it has.
pub(super) struct Pending {
    /// The thread that made the call.
    pub(super) tid: i32,
    /// Boxed: a table is 1 KiB, and most processes have no pending change.
    pub(super) before: Box<Table>,
    /// The signal a sigaction set (0 for an exec), and whether the change
    /// leaves it caught: a change of caught or not shows in /proc's `SigCgt`
    /// once made.
    pub(super) signal: i32,
    pub(super) caught: bool,
    /// The thread's voluntary context switches while it waited for the
    /// answer: one more, and it has slept since, so it is past the call.
    pub(super) switches: u64,
    /// The call's syscall number, as `/proc/<tid>/syscall` shows it.
    pub(super) nr: i32,
    /// An `execve`, which may yet fail (and leave the handlers as they were).
    pub(super) exec: bool,
}

impl Callers {
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
        let switches = status::read(tid).map_or(u64::MAX, |s| s.switches);
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

    /// Ends a pending change once the notification's thread shows it is
    /// over: the thread that made the call makes another one, or (for an
    /// exec) what it left behind tells success from failure.
    pub(super) fn settle(&mut self, tid: i32, tgid: i32, same_thread: bool) {
        let watched = self.watched;
        let Some(process) = self.processes.get(&tgid) else { return };
        let Some(pending) = process.pending.as_ref() else { return };
        let seen = Sighting { tid, tgid, same_thread };
        // The leader's image after its exec catches a watched signal that
        // the old one's table did not: only the old image's did (failed).
        let leader_failed =
            || status::read(tid).map(|s| s.caught & watched & !process.table.caught(watched) != 0);
        let old_tid_dead = || self.threads.get(&pending.tid).is_some_and(|t| !t.pin.alive());
        let Some(failed) = ended(pending, seen, leader_failed, old_tid_dead) else { return };
        let Some(process) = self.processes.get_mut(&tgid) else { return };
        let Some(pending) = process.pending.take() else { return };
        self.changed.push(tgid);
        if failed {
            process.table = *pending.before;
        } else if pending.exec {
            // The old image's threads are gone; names are read afresh.
            self.threads.retain(|&t, thread| thread.tgid != tgid || t == tid);
            if let Some(status) = status::read(tid) {
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
}

pub(super) fn wait_delivered(tid: i32, signal: i32) {
    let pending = || status::read(tid).is_some_and(|s| s.pending & signal_bit(signal) != 0);
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
pub(super) fn change_made(pending: &Pending) -> bool {
    made(pending, status::read(pending.tid).as_ref(), || procfs::syscall::read_number(pending.tid))
}

/// `change_made` on what /proc shows of the thread (None: it is gone), and
/// the syscall it is in, read only if nothing else tells: a runnable
/// thread off the CPU that shows -1 (preempted in user space) or another
/// call is past this one; "running" (on a CPU, None) tells nothing.
fn made(pending: &Pending, status: Option<&Status>, syscall: impl FnOnce() -> Option<i64>) -> bool {
    let Some(status) = status else { return true };
    let bit = signal_bit(pending.signal);
    let flips = pending.caught != (pending.before.caught(bit) != 0);
    status.state != b'R'
        || status.switches > pending.switches
        || (flips && (status.caught & bit != 0) == pending.caught)
        || syscall().is_some_and(|n| n != i64::from(pending.nr))
}

/// The call now being looked at: its thread, and whether that thread's
/// pin is the one cached (the same thread, not a new one with its tid).
#[derive(Clone, Copy)]
struct Sighting {
    tid: i32,
    tgid: i32,
    same_thread: bool,
}

/// Whether a pending change is over, from a later call of its process:
/// None (not yet), or whether it failed (only an exec can). A sigaction's
/// thread is past it once it calls again; an exec's outcome shows in which
/// thread calls under which tid (execve(2): the exec'ing thread takes the
/// leader's tid, every other thread is gone).
fn ended(
    pending: &Pending,
    now: Sighting,
    leader_failed: impl FnOnce() -> Option<bool>,
    old_tid_dead: impl FnOnce() -> bool,
) -> Option<bool> {
    let Sighting { tid, tgid, same_thread } = now;
    match (pending.exec, tid == pending.tid) {
        (false, true) => Some(false),
        (false, false) => None,
        // The same thread, still under its old tid: the exec failed.
        (true, true) if same_thread && tid != tgid => Some(true),
        // The leader exec'd and calls again: /proc shows which image.
        (true, true) if same_thread => leader_failed(),
        // The tid was reused: the exec'ing thread became the leader.
        (true, true) => Some(false),
        // A non-leader exec'd; the leader's tid calls: if the exec'ing
        // thread's old tid is dead, it took the leader's.
        (true, false) if tid == tgid && old_tid_dead() => Some(false),
        (true, false) => None,
    }
}

/// Once a change is made, /proc has the last word on whether the signal is
/// caught: not caught is not caught (a one-shot handler that another signal
/// used up); caught where the table says not (the caller's memory changed
/// between sigvisor's read and the kernel's) is a handler of unknown origin.
pub(super) fn check_with_proc(process: &mut Process, tid: i32, signal: i32) {
    if signal == 0 {
        return;
    }
    let recorded = process.table.caught(signal_bit(signal)) != 0;
    match status::read(tid).map(|s| s.caught & signal_bit(signal) != 0) {
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
    if !pagemap::resident(tid, at, len) {
        return Err(io::Error::new(io::ErrorKind::WouldBlock, "not resident: it could block"));
    }
    memory::read(tid, at, buf)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigaction(signal: i32, caught: bool) -> Pending {
        Pending { tid: 7, before: Box::default(), signal, caught, switches: 3, nr: 13, exec: false }
    }

    fn exec(tid: i32) -> Pending {
        Pending { tid, before: Box::default(), signal: 0, caught: false, switches: 0, nr: 59, exec: true }
    }

    fn status(state: u8, switches: u64, caught: u64) -> Status {
        Status { tgid: 7, state, switches, caught, ..Status::default() }
    }

    #[test]
    fn a_change_is_made_once_its_thread_is_past_the_call() {
        let p = sigaction(libc::SIGILL, true);
        let never = || -> Option<i64> { panic!("syscall read though status told") };
        assert!(made(&p, None, never), "a thread gone is past it");
        assert!(made(&p, Some(&status(b'S', 3, 0)), never), "asleep: setting a handler never sleeps");
        assert!(made(&p, Some(&status(b'R', 4, 0)), never), "it slept since");
        let bit = signal_bit(libc::SIGILL);
        assert!(made(&p, Some(&status(b'R', 3, bit)), never), "SigCgt shows the new handler");
        let running = status(b'R', 3, 0);
        assert!(!made(&p, Some(&running), || None), "running on a CPU tells nothing");
        assert!(!made(&p, Some(&running), || Some(13)), "still in the call");
        assert!(made(&p, Some(&running), || Some(-1)), "preempted in user space");
        assert!(made(&p, Some(&running), || Some(0)), "in another call");
    }

    #[test]
    fn sigcgt_tells_only_a_change_of_caught_or_not() {
        // Before and after both catch it (a handler replaced by another).
        let mut p = sigaction(libc::SIGILL, true);
        p.before.set(libc::SIGILL, Disposition::Unknown);
        let bit = signal_bit(libc::SIGILL);
        assert!(!made(&p, Some(&status(b'R', 3, bit)), || None));
    }

    #[test]
    fn a_sigaction_ends_when_its_thread_calls_again() {
        let p = sigaction(libc::SIGILL, true);
        let no = || -> Option<bool> { panic!("not asked for a sigaction") };
        let seen = |tid| Sighting { tid, tgid: 7, same_thread: true };
        assert_eq!(ended(&p, seen(7), no, || false), Some(false));
        assert_eq!(ended(&p, seen(8), no, || false), None, "another thread tells nothing");
    }

    #[test]
    fn an_exec_outcome_by_who_calls_under_which_tid() {
        let unasked = || -> Option<bool> { panic!("/proc read though the tids told") };
        let seen = |tid, same_thread| Sighting { tid, tgid: 7, same_thread };
        // A non-leader (tid 9) exec'd.
        let p = exec(9);
        assert_eq!(ended(&p, seen(9, true), unasked, || false), Some(true), "still tid 9: it failed");
        assert_eq!(ended(&p, seen(7, true), unasked, || true), Some(false), "tid 9 dead, 7 calls: took it");
        assert_eq!(ended(&p, seen(7, true), unasked, || false), None, "tid 9 alive: not yet");
        assert_eq!(ended(&p, seen(8, true), unasked, || true), None, "another thread tells nothing");
        // The leader exec'd.
        let p = exec(7);
        assert_eq!(ended(&p, seen(7, false), unasked, || false), Some(false), "a new thread under tid 7");
        assert_eq!(ended(&p, seen(7, true), || Some(true), || false), Some(true), "/proc: the old image");
        assert_eq!(ended(&p, seen(7, true), || None, || false), None, "/proc unreadable: not yet");
    }
}
