//! One listener the keeper holds: what its supervisor said of it, and
//! what the keeper records while it answers the listener itself.
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicU64;

use super::rescue::{take_slot, Watch};
use super::{Known, Record};
use crate::callers::{handler_calls, Callers};
use crate::sys::region::Cell;
use crate::sys::seccomp::{Listener, Notification};

pub(super) struct Kept {
    pub(super) listener: Listener,
    pub(super) record: Record,
    /// What the supervisor last said of its processes' handlers.
    pub(super) known: Known,
    /// The keeper answers this listener (no supervisor serves it).
    pub(super) serving: bool,
    pub(super) answered: u64,
    /// While the keeper answers it: the handler changes it records, as a
    /// supervisor would, for the next one.
    pub(super) callers: Option<Callers>,
    /// Whether its attached supervisor is stuck on it (rescue.rs).
    pub(super) watch: Watch,
}

impl Kept {
    pub(super) fn new(listener: Listener, record: Record, serving: bool) -> Kept {
        Kept {
            listener,
            record,
            known: Known::default(),
            serving,
            answered: 0,
            callers: None,
            watch: Watch::default(),
        }
    }

    /// Records a handler change or exec the keeper answers itself.
    pub(super) fn observe(&mut self, notif: &Notification, call: crate::callers::handlers::HandlerCall) {
        let known = &self.known;
        let callers = self.callers.get_or_insert_with(|| {
            let mut callers = Callers::impatient(self.record.watched);
            callers.import(known.all().cloned().collect());
            callers
        });
        callers.observe(&self.listener, notif, call);
        for process in callers.take_changed() {
            self.known.remember(process);
        }
    }

    /// A supervisor takes over: what the keeper recorded goes with it.
    pub(super) fn hand_over(&mut self) {
        if let Some(mut callers) = self.callers.take() {
            callers.settle_all();
            for process in callers.take_changed() {
                self.known.remember(process);
            }
        }
    }
}

impl Kept {
    /// While covering for a stuck supervisor: the call it received last,
    /// unless it is signalling it right now and the signal is not out yet
    /// (then next time). The slot goes
    /// to TAKEN first, so that the supervisor, resumed, does not signal a
    /// call that has returned. Returns how many were answered.
    pub(super) fn take_over(
        &mut self,
        cell: &Cell,
        last: &Notification,
        signal: Option<i32>,
        epoch: Option<&AtomicU64>,
    ) -> u64 {
        if !self.listener.id_valid(last.id) {
            return 0;
        }
        // Stopped between its signal and the rest: once the signal is
        // pending, it lands at the call's return whoever answers.
        let sent =
            || signal.is_some_and(|s| s > 0 && crate::procfs::status::signal_pending(last.pid as i32, s));
        if !take_slot(&cell.state, sent) {
            return 0;
        }
        self.answer_orphan(last, epoch)
    }

    /// Answers a call its supervisor received and cannot answer; a handler
    /// change is recorded first, as the keeper records its own, and makes
    /// a supervisor still alive forget what it knew (`epoch`).
    pub(super) fn answer_orphan(&mut self, notif: &Notification, epoch: Option<&AtomicU64>) -> u64 {
        if let Some(call) = handler_calls().classify(notif.data.arch, notif.data.nr) {
            self.observe(notif, call);
            if let Some(epoch) = epoch {
                epoch.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
        }
        let answered = u64::from(self.listener.send_continue(notif.id).is_ok());
        self.answered += answered;
        answered
    }

    /// Before a notification of unknown kind is answered (one a dead
    /// supervisor received): its caller still waits inside the call, so
    /// /proc shows which processes have a thread in a bookkeeping call;
    /// what was known of those is forgotten (they are then not signalled).
    pub(super) fn forget_those_in_bookkeeping_calls(&mut self) {
        self.known.forget_if(in_bookkeeping_call);
    }
}

/// Whether a thread of process `tgid` is inside a bookkeeping call now.
fn in_bookkeeping_call(tgid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(crate::procfs::path(tgid, "task")) else { return false };
    tasks.flatten().any(|task| {
        let nr = std::fs::read_to_string(task.path().join("syscall")).ok();
        let nr = nr.and_then(|text| i32::try_from(crate::procfs::syscall::number(&text)?).ok());
        nr.is_some_and(|nr| handler_calls().any_abi(nr))
    })
}
