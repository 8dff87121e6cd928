//! Decide, for one notification, whether its calling thread gets the signal.

use std::fmt;

use crate::caller::{Caller, Callers};
use crate::profile::Policy;
use crate::seccomp::Notification;

/// Why a notification was answered without a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// The filter does not wait killable, so any signal could interrupt a
    /// trapped syscall (EINTR, a leaked fd, or a restart loop): observe only.
    FilterNotKillable,
    /// `notif.pid` is 0: the caller is in a pid namespace we cannot see into.
    CallerNotVisible,
    /// The caller's process does not catch the signal; it would die of it.
    NoHandler,
    /// The caller died before it could be signalled.
    CallerGone,
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
            Skip::FilterNotKillable => "filter-not-killable",
            Skip::CallerNotVisible => "caller-not-visible",
            Skip::NoHandler => "no-handler",
            Skip::CallerGone => "caller-gone",
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

/// The decision for one notification. Cheap refusals come first, so a
/// listener that never signals costs no /proc read.
pub fn decide(policy: &Policy, wait_killable: bool, notif: &Notification, callers: &mut Callers) -> Decision {
    if !wait_killable {
        return Decision::Skip(Skip::FilterNotKillable, None);
    }
    let tid = notif.pid as i32;
    if tid == 0 {
        return Decision::Skip(Skip::CallerNotVisible, None);
    }
    let Some(caller) = callers.look(tid, policy.signal) else {
        return Decision::Skip(Skip::CallerGone, None);
    };
    if !caller.catches {
        return Decision::Skip(Skip::NoHandler, Some(caller));
    }
    if caller.threads < policy.min_threads {
        return Decision::Skip(Skip::MinThreads, Some(caller));
    }
    if let Some(pattern) = &policy.comm {
        if !callers.process_name(tid).is_some_and(|name| pattern.matches(&name)) {
            return Decision::Skip(Skip::Comm, Some(caller));
        }
    }
    // Counted last, so `when` numbers the calls every other check let through.
    if let Some(when) = &policy.when {
        if !callers.count_call(tid).is_some_and(|n| when.selects(n)) {
            return Decision::Skip(Skip::When, Some(caller));
        }
    }
    Decision::Signal(caller)
}
