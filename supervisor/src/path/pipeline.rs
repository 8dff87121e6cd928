//! One notification, from RECV to CONTINUE: decide → signal the calling
//! thread → SEND CONTINUE, then record what happened.
//!
//! The order is forced by the kernel
//! (docs/design.md#the-order-recv-signal-continue): with WAIT_KILLABLE_RECV,
//! a received notification's caller waits killable only, so a signal sent
//! before CONTINUE stays pending, the syscall runs, and the handler runs at
//! the syscall's return site. Sent after CONTINUE it lands late, possibly in
//! the thread's next trapped syscall; without the flag it interrupts the
//! syscall. `decision` refuses the latter case.
//!
//! The syscalls come first and the counting after: no lock is held across
//! a syscall (the registry reads the counters for the Trace's status), and
//! nothing is allocated unless events are followed or something failed.

use std::borrow::Cow;
use std::io;
use std::sync::{Arc, Mutex};

use crate::callers::KnownProcess;
use crate::callers::{self, Caller, Callers};
use crate::control::handle::{Selection, TraceHandle};
use crate::keeper::custody::Custody;
use crate::output::events::{Describer, Happened};
use crate::output::skip::Skip;
use crate::output::stats::Stats;
use crate::path::decision::{Decider, Decision};
use crate::path::response::{self, Answered};
use crate::path::signal::{self, SignalError};
use crate::shared;
use crate::stacks::snapshot::Snapshot;
use crate::stacks::{self, Captured, Stacks};
use crate::sys::seccomp::{Listener, Notification};

/// Everything one listener needs to answer a notification; moves between
/// the async task and a hot thread together with the listener.
pub struct Pipeline {
    decider: Decider,
    /// Which Trace selects this listener's container; it may change.
    selection: Arc<Selection>,
    /// The selection's version `trace` and `stats` were taken at.
    seen: u64,
    /// The Trace that selects this listener's container, if any.
    trace: Option<Arc<TraceHandle>>,
    /// Shared with the registry, which shows them in the Trace's status.
    stats: Arc<Mutex<Stats>>,
    describer: Describer,
    /// This listener's place with the keeper, if it keeps a copy.
    custody: Option<Custody>,
    /// Stack capture, made when a Trace first asks for stacks.
    stacks: Option<Box<Stacks>>,
    /// Its stacks still being unwound, after their answers.
    stacks_pending: stacks::Pending,
    /// The keeper's count of handler changes it answered while this
    /// supervisor was stuck, as last seen.
    keeper_epoch: u64,
}

/// What became of one notification, recorded once it is answered.
struct Outcome {
    caller: Option<Caller>,
    skipped: Option<Skip>,
    signal_error: Option<io::Error>,
    /// The caller's stack snapshot, if the Trace asks for stacks and
    /// selected it.
    stack: Option<Result<Snapshot, String>>,
}

impl Pipeline {
    /// `runtime_init`: the container init's pid, for a listener an OCI
    /// runtime handed over (its init runs under the filter until it execs).
    pub fn new(
        selection: Arc<Selection>,
        wait_killable: bool,
        watched_signals: u64,
        runtime_init: Option<i32>,
        describer: Describer,
        custody: Option<Custody>,
    ) -> Pipeline {
        let mut pipeline = Pipeline {
            decider: Decider { wait_killable, runtime_init, callers: Callers::new(watched_signals) },
            selection,
            seen: u64::MAX,
            trace: None,
            stats: Arc::default(),
            describer,
            custody,
            stacks: None,
            stacks_pending: stacks::Pending::default(),
            keeper_epoch: 0,
        };
        pipeline.keeper_epoch = pipeline.custody.as_ref().map_or(0, Custody::epoch);
        pipeline.follow_selection();
        pipeline
    }

    /// Takes the current selection if a Trace applied or deleted changed it:
    /// one atomic load when nothing did.
    fn follow_selection(&mut self) {
        let version = self.selection.version();
        if version == self.seen {
            return;
        }
        self.seen = version;
        let (trace, stats) = match self.selection.current() {
            Some((trace, stats)) => (Some(trace), stats),
            None => (None, Arc::default()),
        };
        self.trace = trace;
        self.stats = stats;
    }

    /// Handlers an earlier supervisor knew of this listener's processes.
    pub fn import(&mut self, known: Vec<KnownProcess>) {
        self.decider.callers.import(known);
    }

    /// Before an answer: tells the keeper what changed in the processes'
    /// handlers, so that a successor never knows less than the kernel will.
    fn tell_keeper(&mut self) {
        let changed = self.decider.callers.take_changed();
        if let (Some(custody), false) = (&self.custody, changed.is_empty()) {
            custody.known(changed);
        }
    }

    /// Tells when the stacks of this listener's calls are all named.
    pub fn stacks_pending(&self) -> stacks::Pending {
        self.stacks_pending.clone()
    }

    /// What this listener counted so far.
    pub fn stats(&self) -> Stats {
        shared::lock(&self.stats).clone()
    }

    /// Counts a failure of the listener itself.
    pub fn listener_failed(&self, e: &io::Error) {
        shared::lock(&self.stats).error(format_args!("listener failed: {e}"));
    }

    /// One notification, from RECV to CONTINUE. Call only when `poll` said a
    /// notification waits. Err only if the listener itself is unusable.
    pub fn serve_one(&mut self, listener: &Listener) -> io::Result<()> {
        loop {
            match self.recv_once(listener) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(notif) => return self.answer(listener, notif),
                Err(e) => return self.recv_failed(e),
            }
        }
    }

    /// RECV, blocking; EINTR if a signal interrupted the wait. Where the
    /// keeper has a slot for this listener, into the region it shares.
    #[inline]
    pub fn recv_once(&self, listener: &Listener) -> io::Result<Notification> {
        match &self.custody {
            Some(custody) => custody.recv_once(listener),
            None => listener.recv_once(),
        }
    }

    /// RECV's ENOENT: the caller was killed or interrupted before it; not
    /// an error of the listener.
    pub fn recv_failed(&mut self, e: io::Error) -> io::Result<()> {
        if e.raw_os_error() == Some(libc::ENOENT) {
            shared::lock(&self.stats).withdrawn += 1;
            return Ok(());
        }
        Err(e)
    }

    /// A received notification: decide, signal, CONTINUE, then count.
    pub fn answer(&mut self, listener: &Listener, notif: Notification) -> io::Result<()> {
        self.follow_selection();
        if let Some(epoch) = self.custody.as_ref().map(Custody::epoch).filter(|e| *e != self.keeper_epoch) {
            self.keeper_epoch = epoch;
            tracing::warn!("the keeper answered handler changes while this listener was stuck: its processes are seen afresh");
            self.decider.callers.forget_all();
        }
        let bookkeeping = callers::handler_calls().classify(notif.data.arch, notif.data.nr);
        if let Some(custody) = &self.custody {
            custody.received(notif.id, bookkeeping.is_some());
        }
        crate::failpoint::listener_panic();
        // sigvisor's own calls (handler changes, execs): recorded, answered,
        // never signalled, whatever the Trace's state.
        if let Some(call) = bookkeeping {
            self.decider.callers.observe(listener, &notif, call);
            if let (crate::callers::handlers::HandlerCall::Exec, Some(stacks)) = (call, &self.stacks) {
                // Before the answer: a stack snapshot taken so far belongs
                // to the image the exec leaves.
                if let Some(tgid) = self.decider.callers.tgid_of(notif.pid as i32) {
                    stacks.exec(tgid);
                }
            }
            self.tell_keeper();
            let answered = response::answer(listener, notif.id);
            if let Some(custody) = &self.custody {
                custody.answered();
            }
            let mut stats = shared::lock(&self.stats);
            stats.handlers = self.decider.callers.knowledge;
            if let Err(e) = answered {
                stats.error(format_args!("SEND CONTINUE for tid {}: {e}", notif.pid));
            }
            return Ok(());
        }
        // A stopped or unstarted Trace: one atomic load, then the answer.
        let config = self.trace.as_ref().filter(|t| t.active()).map(|t| t.config());
        let outcome = match &config {
            None => Outcome {
                caller: None,
                skipped: Some(if self.trace.is_some() { Skip::NotStarted } else { Skip::NotSelected }),
                signal_error: None,
                stack: None,
            },
            Some(config) => self.decide_and_signal(&config.policy, listener, &notif),
        };
        let stack = outcome.stack;
        let events = config.filter(|c| c.sink.wants_events());
        let pending =
            (events.is_some() || stack.is_some()).then(|| self.describer.before_answer(listener, &notif));
        self.tell_keeper();
        let answered = response::answer(listener, notif.id);
        if let Some(custody) = &self.custody {
            custody.answered();
        }

        let mut stats = shared::lock(&self.stats);
        stats.notified(notif.pid as i32);
        match (&outcome.skipped, &outcome.caller) {
            (None, Some(caller)) => stats.signalled(caller),
            (Some(why), caller) => stats.skipped(*why, caller.as_ref()),
            (None, None) => {}
        }
        if let (Some(e), Some(caller)) = (&outcome.signal_error, &outcome.caller) {
            stats.error(format_args!("signalling tid {}: {e}", caller.tid));
        }
        stats.handlers = self.decider.callers.knowledge;
        let snapshot = match stack {
            Some(Ok(snapshot)) => Some(snapshot),
            Some(Err(why)) => {
                stats.stack_missed(why);
                None
            }
            None => None,
        };
        let result: Cow<'static, str> = match answered {
            Ok(Answered::Continued) => "continued".into(),
            Ok(Answered::CallerGone) => {
                stats.withdrawn += 1;
                "caller-gone".into()
            }
            Err(e) => {
                stats.error(format_args!("SEND CONTINUE for tid {}: {e}", notif.pid));
                format!("error: {e}").into()
            }
        };
        drop(stats);
        let happened = Happened {
            caller: outcome.caller.as_ref(),
            skipped: outcome.skipped,
            stack: None,
            result: &result,
        };
        match (snapshot, &self.stacks) {
            (Some(snapshot), Some(stacks)) => {
                // The event waits for its stack: rendered now, sent by the
                // unwinder with the stack in it.
                let event = match (&events, &pending) {
                    (Some(config), Some(p)) => {
                        self.describer.render(&notif, p, &happened).map(|e| (config.sink.clone(), e))
                    }
                    _ => None,
                };
                let path = pending.and_then(|p| p.path);
                stacks.unwind(snapshot, stack_done(Arc::clone(&self.stats), path, event));
            }
            _ => {
                if let (Some(config), Some(pending)) = (events, pending) {
                    self.describer.emit(&config.sink, &notif, &pending, &happened);
                }
            }
        }
        Ok(())
    }

    /// The caller's stack snapshot, taken while it waits: proven by
    /// ID_VALID after the reads to be this call's (its thread was frozen
    /// throughout).
    fn stack(
        &mut self,
        listener: &Listener,
        notif: &Notification,
        caller: &Caller,
    ) -> Result<Snapshot, String> {
        let start = self.decider.callers.process_start(caller.tgid).ok_or("its process is gone")?;
        let pending = &self.stacks_pending;
        let stacks = self.stacks.get_or_insert_with(|| Box::new(Stacks::new(pending.clone())));
        let snapshot = stacks.snapshot(caller.tid, caller.tgid, start)?;
        if !listener.id_valid(notif.id) {
            return Err("the caller went away during the capture".into());
        }
        Ok(snapshot)
    }

    /// The decision, and the signal if it says so: before the answer.
    fn decide_and_signal(
        &mut self,
        policy: &crate::trace::policy::Policy,
        listener: &Listener,
        notif: &Notification,
    ) -> Outcome {
        let (caller, skip) = match self.decider.decide(policy, listener, notif) {
            Decision::Skip(why, caller) => (caller, Some(why)),
            Decision::Signal(caller) => (Some(caller), None),
        };
        // The stack before the signal: a signal wakes the waiting thread
        // for a moment (it goes back to a killable wait), and /proc shows
        // no registers of a running thread.
        let stack = match &caller {
            Some(caller) if policy.stacks && skip.is_none_or(Skip::selected) => {
                Some(self.stack(listener, notif, caller))
            }
            _ => None,
        };
        let caller = match (caller, skip) {
            (Some(caller), None) => caller,
            (caller, skipped) => return Outcome { caller, skipped, signal_error: None, stack },
        };
        let signal = policy.signal;
        // A keeper that took this call over (this supervisor was stuck)
        // has answered it: a signal now would land after the call.
        if self.custody.as_ref().is_some_and(|c| !c.signalling(signal)) {
            return Outcome {
                caller: Some(caller),
                skipped: Some(Skip::CallerGone),
                signal_error: None,
                stack,
            };
        }
        let sent = signal::signal_caller(listener, notif, &self.decider.callers, &caller, signal);
        if let Some(custody) = &self.custody {
            custody.signal_done();
        }
        let (skipped, signal_error) = match sent {
            Ok(()) => {
                self.decider.callers.signalled(&caller, signal);
                (None, None)
            }
            Err(SignalError::CallerGone) => {
                self.decider.callers.forget(caller.tid);
                (Some(Skip::CallerGone), None)
            }
            Err(SignalError::Os(e)) => (Some(Skip::SignalFailed), Some(e)),
        };
        Outcome { caller: Some(caller), skipped, signal_error, stack }
    }
}

/// What the unwinder does with a call's stack: counts it in the Trace's
/// status (with the path its fd referred to), and sends the call's event,
/// if one waits for it, with the stack in it.
fn stack_done(
    stats: Arc<Mutex<Stats>>,
    path: Option<String>,
    event: Option<(crate::output::events::Sink, serde_json::Value)>,
) -> stacks::Done {
    Box::new(move |named: Result<Captured, String>| {
        match &named {
            Ok(captured) => shared::lock(&stats).stack(Arc::clone(&captured.lines), path.as_deref()),
            Err(why) => shared::lock(&stats).stack_missed(why),
        }
        if let Some((sink, mut event)) = event {
            if let (Ok(captured), Some(fields)) = (&named, event.as_object_mut()) {
                if let Ok(stack) = serde_json::to_value(&*captured.stack) {
                    fields.insert("stack".into(), stack);
                }
            }
            sink.send(event.to_string());
        }
    })
}
