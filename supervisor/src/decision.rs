//! Decide, for one notification, whether its calling thread gets the signal.

use std::fmt;

use crate::caller::{Caller, Callers};
use crate::container;
use crate::handlers::{self, Verdict};
use crate::profile::Policy;
use crate::sys::seccomp::{Listener, Notification};

/// Why a notification was answered without a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// No Trace selects this listener's container.
    NotSelected,
    /// Its Trace is not started (or stopped, or deleted).
    NotStarted,
    /// The filter does not wait killable, so any signal could interrupt a
    /// trapped syscall (EINTR, a leaked fd, or a restart loop): observe only.
    FilterNotKillable,
    /// `notif.pid` is 0: the caller is in a pid namespace we cannot see into.
    CallerNotVisible,
    /// The caller died before it could be looked at or signalled.
    CallerGone,
    /// Sending the signal failed (the error is in the status' lastError).
    SignalFailed,
    /// The caller is the OCI runtime's init, before it execs the container.
    RuntimeInit,
    /// The caller's process does not catch the signal; it would die of it.
    NoHandler,
    /// Its handler for the signal is also its handler for a fault signal:
    /// a crash handler, which a sent signal kills (handlers.rs).
    CrashHandler,
    /// Its handler changed in a way sigvisor could not read.
    HandlerUnknown,
    /// Its handler came from its parent at fork; not signalled until the
    /// process installs one itself or execs (handlers.rs).
    Inherited,
    /// Its handler is one-shot (`SA_RESETHAND`), as crash handlers' are.
    OneShot,
    /// Its process has fewer threads than `min-threads`.
    MinThreads,
    /// Its process name does not match `comm`.
    Comm,
    /// Not a call that `when` selects.
    When,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Skip::NotSelected => "not-selected",
            Skip::NotStarted => "not-started",
            Skip::FilterNotKillable => "filter-not-killable",
            Skip::CallerNotVisible => "caller-not-visible",
            Skip::CallerGone => "caller-gone",
            Skip::SignalFailed => "signal-failed",
            Skip::RuntimeInit => "runtime-init",
            Skip::NoHandler => "no-handler",
            Skip::CrashHandler => "crash-handler",
            Skip::HandlerUnknown => "handler-unknown",
            Skip::Inherited => "inherited",
            Skip::OneShot => "one-shot",
            Skip::MinThreads => "min-threads",
            Skip::Comm => "comm",
            Skip::When => "when",
        })
    }
}

pub enum Decision {
    Signal(Caller),
    Skip(Skip, Option<Caller>),
}

/// What one listener decides with, besides its Trace's policy.
pub struct Decider {
    pub wait_killable: bool,
    /// The container init's pid while it may still be the runtime's init
    /// (until it execs the container's process); None once it has.
    pub runtime_init: Option<i32>,
    pub callers: Callers,
}

impl Decider {
    /// The decision for one notification. Cheap refusals come first; the
    /// handler check reads the process's table, not /proc.
    pub fn decide(&mut self, policy: &Policy, listener: &Listener, notif: &Notification) -> Decision {
        if !self.wait_killable {
            return Decision::Skip(Skip::FilterNotKillable, None);
        }
        if notif.pid == 0 {
            return Decision::Skip(Skip::CallerNotVisible, None);
        }
        let Some(caller) = self.callers.caller(listener, notif) else {
            return Decision::Skip(Skip::CallerGone, None);
        };
        // Read at most once per notification, and only if a check needs it.
        let mut process_name = None;
        if let Some(init) = self.runtime_init {
            let name = process_name.insert(self.callers.process_name(&caller));
            if name.as_deref().is_some_and(container::is_runtime_init) {
                return Decision::Skip(Skip::RuntimeInit, Some(caller));
            }
            if caller.tgid == init {
                // The container's init runs the container's program now.
                self.runtime_init = None;
            }
        }
        let compat = handlers::is_compat(notif.data.arch, notif.data.nr);
        let skip = match self.callers.verdict(&caller, policy.signal, policy.any_handler, compat) {
            Verdict::Signal => None,
            Verdict::NoHandler => Some(Skip::NoHandler),
            Verdict::CrashHandler => Some(Skip::CrashHandler),
            Verdict::Unknown => Some(Skip::HandlerUnknown),
            Verdict::Inherited => Some(Skip::Inherited),
            Verdict::OneShot => Some(Skip::OneShot),
        };
        if let Some(why) = skip {
            return Decision::Skip(why, Some(caller));
        }
        if policy.min_threads > 1 && self.callers.threads(&caller).is_none_or(|n| n < policy.min_threads) {
            return Decision::Skip(Skip::MinThreads, Some(caller));
        }
        if let Some(pattern) = &policy.comm {
            let name = process_name.get_or_insert_with(|| self.callers.process_name(&caller));
            if !name.as_deref().is_some_and(|name| pattern.matches(name)) {
                return Decision::Skip(Skip::Comm, Some(caller));
            }
        }
        // Counted last, so `when` numbers the calls every other check let through.
        if let Some(when) = &policy.when {
            if !self.callers.count_call(&caller).is_some_and(|n| when.selects(n)) {
                return Decision::Skip(Skip::When, Some(caller));
            }
        }
        Decision::Signal(caller)
    }
}
