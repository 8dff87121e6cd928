//! Why a call went without a signal: what a decision answers, and the key
//! of a Trace's `skipped` counters and of an event's `skipped` field.

use std::fmt;

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
    /// The Trace's `signal: none`: observed (and its stack taken), never signalled.
    SignalNone,
}

impl Skip {
    /// Whether the Trace selected the call all the same (its stack is
    /// taken if it asks for stacks): only the signal was not sent.
    pub fn selected(self) -> bool {
        !matches!(
            self,
            Skip::NotSelected
                | Skip::NotStarted
                | Skip::CallerNotVisible
                | Skip::CallerGone
                | Skip::MinThreads
                | Skip::Comm
                | Skip::When
        )
    }
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
            Skip::SignalNone => "signal-none",
        })
    }
}
