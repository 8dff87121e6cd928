//! Decide, for one notification, whether its calling thread gets the signal.

use std::sync::Arc;

use crate::callers::handlers::{self, Verdict};
use crate::callers::{Caller, Callers};
use crate::output::skip::Skip;
use crate::sys::seccomp::{Listener, Notification};
use crate::trace::container;
use crate::trace::policy::Policy;

pub enum Decision {
    Signal(Caller),
    Skip(Skip, Option<Caller>),
}

/// What a decision reads about the caller and its process. `Callers` reads
/// the kernel (pidfds, the handler table, /proc); the unit tests below use
/// a table of their own.
pub trait Processes {
    /// The notification's caller; None if it is gone.
    fn caller(&mut self, listener: &Listener, notif: &Notification) -> Option<Caller>;
    /// Whether `signal` may be sent to the caller's process now.
    fn verdict(&mut self, caller: &Caller, signal: i32, any_handler: bool, compat: bool) -> Verdict;
    /// The name of the caller's process: read now if `fresh`, else recently.
    fn process_name(&mut self, caller: &Caller, fresh: bool) -> Option<Arc<str>>;
    /// The number of threads of the caller's process, recently read.
    fn threads(&mut self, caller: &Caller) -> Option<u32>;
    /// Counts one more signallable call of the caller's process: 1 for its first.
    fn count_call(&mut self, caller: &Caller) -> Option<u64>;
}

impl Processes for Callers {
    fn caller(&mut self, listener: &Listener, notif: &Notification) -> Option<Caller> {
        Callers::caller(self, listener, notif)
    }
    fn verdict(&mut self, caller: &Caller, signal: i32, any_handler: bool, compat: bool) -> Verdict {
        Callers::verdict(self, caller, signal, any_handler, compat)
    }
    fn process_name(&mut self, caller: &Caller, fresh: bool) -> Option<Arc<str>> {
        Callers::process_name(self, caller, fresh)
    }
    fn threads(&mut self, caller: &Caller) -> Option<u32> {
        Callers::threads(self, caller)
    }
    fn count_call(&mut self, caller: &Caller) -> Option<u64> {
        Callers::count_call(self, caller)
    }
}

/// What one listener decides with, besides its Trace's policy.
pub struct Decider<P = Callers> {
    pub wait_killable: bool,
    /// The container init's pid while it may still be the runtime's init
    /// (until it execs the container's process); None once it has.
    pub runtime_init: Option<i32>,
    pub callers: P,
}

impl<P: Processes> Decider<P> {
    /// The decision for one notification. Cheap refusals come first; the
    /// handler check reads the process's table, not /proc.
    pub fn decide(&mut self, policy: &Policy, listener: &Listener, notif: &Notification) -> Decision {
        if !self.wait_killable && policy.send_signal {
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
            // A safety check (the runtime's init dies of a signal): fresh.
            let name = process_name.insert(self.callers.process_name(&caller, true));
            if name.as_deref().is_some_and(container::is_runtime_init) {
                return Decision::Skip(Skip::RuntimeInit, Some(caller));
            }
            if caller.tgid == init {
                // The container's init runs the container's program now.
                self.runtime_init = None;
            }
        }
        let compat = handlers::is_compat(notif.data.arch, notif.data.nr);
        let verdict = match policy.send_signal {
            true => self.callers.verdict(&caller, policy.signal, policy.any_handler, compat),
            false => Verdict::Signal,
        };
        let skip = match verdict {
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
            let name = process_name.get_or_insert_with(|| self.callers.process_name(&caller, false));
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
        if !policy.send_signal {
            return Decision::Skip(Skip::SignalNone, Some(caller));
        }
        Decision::Signal(caller)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::trace::policy::{parse_comm, parse_when, OutputMode, Policy, RunMode};

    /// Processes as a table: tid -> (tgid, process name, threads, verdict).
    #[derive(Default)]
    struct Table {
        threads: HashMap<i32, (i32, &'static str, u32, Verdict)>,
        calls: HashMap<i32, u64>,
    }

    impl Processes for Table {
        fn caller(&mut self, _: &Listener, notif: &Notification) -> Option<Caller> {
            let tid = notif.pid as i32;
            let &(tgid, name, ..) = self.threads.get(&tid)?;
            Some(Caller { tid, tgid, name: Arc::from(name) })
        }
        fn verdict(&mut self, caller: &Caller, _: i32, _: bool, _: bool) -> Verdict {
            self.threads[&caller.tid].3
        }
        fn process_name(&mut self, caller: &Caller, _: bool) -> Option<Arc<str>> {
            Some(Arc::from(self.threads[&caller.tid].1))
        }
        fn threads(&mut self, caller: &Caller) -> Option<u32> {
            Some(self.threads[&caller.tid].2)
        }
        fn count_call(&mut self, caller: &Caller) -> Option<u64> {
            let n = self.calls.entry(caller.tgid).or_default();
            *n += 1;
            Some(*n)
        }
    }

    fn policy() -> Policy {
        Policy {
            run_mode: RunMode::Auto,
            output_mode: OutputMode::Status,
            signal: libc::SIGILL,
            send_signal: true,
            stacks: false,
            any_handler: false,
            syscalls: vec![],
            min_threads: 1,
            comm: None,
            when: None,
        }
    }

    fn notif(tid: u32) -> Notification {
        let data =
            libc::seccomp_data { nr: 3, arch: 0xC000_003E, instruction_pointer: 0, args: [5, 0, 0, 0, 0, 0] };
        Notification { id: 1, pid: tid, flags: 0, data }
    }

    fn decider(threads: &[(i32, i32, &'static str, u32, Verdict)]) -> Decider<Table> {
        let threads = threads.iter().map(|&(tid, tgid, name, n, v)| (tid, (tgid, name, n, v))).collect();
        Decider { wait_killable: true, runtime_init: None, callers: Table { threads, calls: HashMap::new() } }
    }

    fn listener() -> Listener {
        Listener::new(std::fs::File::open("/dev/null").expect("/dev/null").into())
    }

    fn skipped(decision: Decision) -> Option<Skip> {
        match decision {
            Decision::Signal(_) => None,
            Decision::Skip(why, _) => Some(why),
        }
    }

    #[test]
    fn refusals_in_order() {
        let l = listener();
        let mut d = decider(&[(10, 10, "closer", 2, Verdict::Signal)]);
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(10))), None);
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(0))), Some(Skip::CallerNotVisible));
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(11))), Some(Skip::CallerGone));
        d.wait_killable = false;
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(10))), Some(Skip::FilterNotKillable));
    }

    #[test]
    fn handler_verdicts_become_skip_reasons() {
        let l = listener();
        for (verdict, skip) in [
            (Verdict::NoHandler, Skip::NoHandler),
            (Verdict::CrashHandler, Skip::CrashHandler),
            (Verdict::Unknown, Skip::HandlerUnknown),
            (Verdict::Inherited, Skip::Inherited),
            (Verdict::OneShot, Skip::OneShot),
        ] {
            let mut d = decider(&[(10, 10, "closer", 2, verdict)]);
            assert_eq!(skipped(d.decide(&policy(), &l, &notif(10))), Some(skip));
        }
    }

    #[test]
    fn runtime_init_is_spared_until_the_container_execs() {
        let l = listener();
        let mut d =
            decider(&[(7, 7, "runc:[2:INIT]", 1, Verdict::Signal), (8, 7, "closer", 1, Verdict::Signal)]);
        d.runtime_init = Some(7);
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(7))), Some(Skip::RuntimeInit));
        assert_eq!(d.runtime_init, Some(7));
        // The init's process runs the container's program now.
        assert_eq!(skipped(d.decide(&policy(), &l, &notif(8))), None);
        assert_eq!(d.runtime_init, None);
    }

    #[test]
    fn selection_and_when_counts_only_what_passed() {
        let l = listener();
        let mut d =
            decider(&[(10, 10, "gosignal", 1, Verdict::Signal), (20, 20, "other", 3, Verdict::Signal)]);
        let mut p = policy();
        p.min_threads = 2;
        assert_eq!(skipped(d.decide(&p, &l, &notif(10))), Some(Skip::MinThreads));
        p.min_threads = 1;
        p.comm = Some(parse_comm("gosi*").unwrap());
        assert_eq!(skipped(d.decide(&p, &l, &notif(20))), Some(Skip::Comm));
        p.when = Some(parse_when("2").unwrap());
        // The two refused above were not counted: this is call 1, then 2.
        assert_eq!(skipped(d.decide(&p, &l, &notif(10))), Some(Skip::When));
        assert_eq!(skipped(d.decide(&p, &l, &notif(10))), None);
        assert_eq!(skipped(d.decide(&p, &l, &notif(10))), Some(Skip::When));
    }
}
