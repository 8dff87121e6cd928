//! Decide, for one notification, whether its calling thread gets the signal.

use std::fmt;

use crate::caller::{Caller, Callers};
use crate::container;
use crate::profile::Policy;
use crate::seccomp::Notification;

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
    /// The decision for one notification. Cheap refusals come first, so a
    /// listener that never signals costs no /proc read.
    pub fn decide(&mut self, policy: &Policy, notif: &Notification) -> Decision {
        if !self.wait_killable {
            return Decision::Skip(Skip::FilterNotKillable, None);
        }
        let tid = notif.pid as i32;
        if tid == 0 {
            return Decision::Skip(Skip::CallerNotVisible, None);
        }
        let Some(caller) = self.callers.look(tid, policy.signal) else {
            return Decision::Skip(Skip::CallerGone, None);
        };
        // Read at most once per notification, and only if a check needs it.
        let mut process_name = None;
        if let Some(init) = self.runtime_init {
            let name = process_name.insert(self.callers.process_name(tid));
            if name.as_deref().is_some_and(container::is_runtime_init) {
                return Decision::Skip(Skip::RuntimeInit, Some(caller));
            }
            if caller.tgid == init {
                // The container's init runs the container's program now.
                self.runtime_init = None;
            }
        }
        if !caller.catches {
            return Decision::Skip(Skip::NoHandler, Some(caller));
        }
        if caller.threads < policy.min_threads {
            return Decision::Skip(Skip::MinThreads, Some(caller));
        }
        if let Some(pattern) = &policy.comm {
            let name = process_name.get_or_insert_with(|| self.callers.process_name(tid));
            if !name.as_deref().is_some_and(|name| pattern.matches(name)) {
                return Decision::Skip(Skip::Comm, Some(caller));
            }
        }
        // Counted last, so `when` numbers the calls every other check let through.
        if let Some(when) = &policy.when {
            if !self.callers.count_call(tid).is_some_and(|n| when.selects(n)) {
                return Decision::Skip(Skip::When, Some(caller));
            }
        }
        Decision::Signal(caller)
    }
}
