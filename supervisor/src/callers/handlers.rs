//! Each supervised process's signal handlers, known from the kernel's own
//! events rather than guessed from /proc
//! (docs/design.md#never-crash-a-target).
//!
//! The filter traps every call that sets a handler for a watched signal
//! (the one sigvisor sends and the fault signals) and every `execve`. While
//! the caller waits for the answer, the supervisor reads the new handler from
//! its memory and records it here. `execve` resets caught handlers to the
//! default; threads share the table.
//!
//! A handler a process got from its parent at `fork` is never signalled:
//! fork children block signals and reset handlers before they exec
//! (posix_spawn, CPython's subprocess), and a shell's subshell re-raises a
//! trapped signal with its default action. Such a process is signalled once
//! it installs the handler itself, or execs a program that does.
//!
//! Catching a signal is not surviving it: Go's runtime, HotSpot and
//! CPython's faulthandler catch SIGILL only to crash. They install one
//! function for several fault signals at once, which is what tells a crash
//! handler from a handler meant for sigvisor's signal.
//!
//! This module is bookkeeping only, without syscalls, so the rules can be
//! unit-tested as they are.

use libseccomp::{ScmpArch, ScmpSyscall};
use sigvisor_proto::{signal_bit, HandlerSetter, FAULT_SIGNALS};

/// `SA_RESETHAND`: the kernel resets the handler to SIG_DFL when it delivers.
const SA_RESETHAND: u64 = 0x8000_0000;
/// What i386's `signal(2)` sets: `SA_ONESHOT | SA_NOMASK`.
const SIGNAL_FLAGS: u64 = SA_RESETHAND | 0x4000_0000;

/// What a signal does to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Disposition {
    /// SIG_DFL or SIG_IGN: a sent signal kills, stops or is dropped.
    #[default]
    NotCaught,
    /// A handler at this address; `once` if it was installed with
    /// SA_RESETHAND, so that the first delivery makes it SIG_DFL again;
    /// `compat` if it was installed through a 32-bit ABI (whose addresses
    /// are 32 bits: a 64-bit program's handler set that way cannot run).
    Handler { address: u64, once: bool, compat: bool },
    /// Caught by a handler whose address is unknown, which the process
    /// did not install itself since sigvisor knows it: a fork child's
    /// inheritance, as /proc's `SigCgt` shows it.
    Caught,
    /// Changed in a way sigvisor could not read (the caller's memory was
    /// unreadable): never signalled, and may be any fault signal's handler.
    Unknown,
}

impl Disposition {
    /// From a `sigaction`'s handler word and flags, set through a 32-bit
    /// ABI or not.
    pub fn set(handler: u64, flags: u64, compat: bool) -> Disposition {
        match handler {
            // SIG_DFL, SIG_IGN
            0 | 1 => Disposition::NotCaught,
            address => Disposition::Handler { address, once: flags & SA_RESETHAND != 0, compat },
        }
    }

    fn caught(self) -> bool {
        self != Disposition::NotCaught
    }

    /// One disposition for two that may each be the true one: the same, or
    /// `Unknown` (never signalled, and may be any fault signal's handler).
    pub fn meet(self, other: Disposition) -> Disposition {
        if self == other {
            self
        } else {
            Disposition::Unknown
        }
    }

    /// Whether the same function may handle both (an unknown address may be
    /// any function).
    fn may_share(self, other: Disposition) -> bool {
        match (self, other) {
            (Disposition::NotCaught, _) | (_, Disposition::NotCaught) => false,
            (Disposition::Handler { address: a, .. }, Disposition::Handler { address: b, .. }) => a == b,
            _ => true,
        }
    }
}

/// Whether a signal may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Signal,
    /// Not caught: the signal would kill, stop, or do nothing.
    NoHandler,
    /// Caught by the process's handler for a fault signal too.
    CrashHandler,
    /// The handler could not be read.
    Unknown,
    /// The handler came from the parent at fork (see the module's doc).
    Inherited,
    /// A one-shot handler (`SA_RESETHAND`): crash handlers install theirs
    /// so, to die of the signal they re-raise; and a handler the program
    /// means to use once is not sigvisor's to use up.
    OneShot,
}

/// The dispositions of signals 1 to 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table([Disposition; 64]);

impl Default for Table {
    fn default() -> Table {
        Table([Disposition::NotCaught; 64])
    }
}

impl Table {
    /// What /proc shows: `SigCgt`, a mask of caught signals.
    pub fn from_caught(mask: u64) -> Table {
        let mut table = Table::default();
        for signal in sigvisor_proto::signals_in(mask) {
            table.set(signal, Disposition::Caught);
        }
        table
    }

    pub fn get(&self, signal: i32) -> Disposition {
        usize::try_from(signal - 1).ok().and_then(|i| self.0.get(i).copied()).unwrap_or_default()
    }

    pub fn set(&mut self, signal: i32, disposition: Disposition) {
        if let Some(slot) = usize::try_from(signal - 1).ok().and_then(|i| self.0.get_mut(i)) {
            *slot = disposition;
        }
    }

    /// The signals whose disposition is not the default, with it.
    pub fn entries(&self) -> Vec<(i32, Disposition)> {
        (1..=64).map(|s| (s, self.get(s))).filter(|(_, d)| *d != Disposition::NotCaught).collect()
    }

    pub fn from_entries(entries: &[(i32, Disposition)]) -> Table {
        let mut table = Table::default();
        for &(signal, disposition) in entries {
            table.set(signal, disposition);
        }
        table
    }

    /// `execve`: caught signals go back to SIG_DFL (ignored ones stay
    /// ignored, which for sigvisor is the same: not caught).
    pub fn reset(&mut self) {
        *self = Table::default();
    }

    /// The signals of `mask` that are caught.
    pub fn caught(&self, mask: u64) -> u64 {
        sigvisor_proto::signals_in(mask).filter(|&s| self.get(s).caught()).fold(0, |m, s| m | signal_bit(s))
    }

    /// Whether `signal` may be sent: only to a handler the process
    /// installed itself, and by default only to one that is not also a fault
    /// signal's handler. `trust_caught`: a `Caught` signal counts as
    /// installed (a table read from /proc alone, where nothing better is
    /// known), else it is inherited.
    /// `compat`: whether the call to be signalled came through a 32-bit ABI
    /// (a handler installed through the other ABI is not known to work).
    pub fn verdict(&self, signal: i32, any_handler: bool, trust_caught: bool, compat: bool) -> Verdict {
        let mine = self.get(signal);
        match mine {
            Disposition::NotCaught => return Verdict::NoHandler,
            Disposition::Unknown => return Verdict::Unknown,
            Disposition::Caught if !trust_caught => return Verdict::Inherited,
            Disposition::Handler { compat: installed, .. } if installed != compat => return Verdict::Unknown,
            Disposition::Handler { once: true, .. } if !any_handler => return Verdict::OneShot,
            _ => {}
        }
        let crash = FAULT_SIGNALS.iter().any(|&fault| fault != signal && mine.may_share(self.get(fault)));
        if crash && !any_handler {
            Verdict::CrashHandler
        } else {
            Verdict::Signal
        }
    }

    /// One table for two that may each be the true one (`Disposition::meet`).
    pub fn meet(&self, other: &Table) -> Table {
        let mut met = Table::default();
        for (slot, (&a, &b)) in met.0.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *slot = a.meet(b);
        }
        met
    }
}

/// The verdict where either table may be the true one: a signal only if
/// both allow it; otherwise the first one's reason.
pub fn both(first: Verdict, second: Verdict) -> Verdict {
    match (first, second) {
        (Verdict::Signal, other) => other,
        (first, _) => first,
    }
}

/// A call the filter traps for sigvisor's own bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerCall {
    /// `rt_sigaction(signal, act, oact, sigsetsize)`.
    RtSigaction,
    /// i386's `sigaction(signal, act, oact)` (struct old_sigaction).
    OldSigaction,
    /// i386's `signal(signal, handler)`.
    Signal,
    /// `execve` or `execveat`.
    Exec,
}

/// Syscall numbers of the bookkeeping calls, per ABI.
pub struct HandlerCalls(Vec<(u32, i32, HandlerCall)>);

impl Default for HandlerCalls {
    /// For the ABIs a filter of this machine covers.
    fn default() -> HandlerCalls {
        let setters = HandlerSetter::ALL.map(|setter| {
            let call = match setter {
                HandlerSetter::RtSigaction => HandlerCall::RtSigaction,
                HandlerSetter::OldSigaction => HandlerCall::OldSigaction,
                HandlerSetter::Signal => HandlerCall::Signal,
            };
            (setter.name(), call)
        });
        let names: Vec<(&str, HandlerCall)> =
            setters.into_iter().chain(sigvisor_proto::EXECS.map(|name| (name, HandlerCall::Exec))).collect();
        let mut calls = Vec::new();
        for (audit, abi) in crate::sys::seccomp::ABIS {
            for &(name, call) in &names {
                // A negative number is libseccomp's: the ABI has no such call.
                if let Ok(nr) = ScmpSyscall::from_name_by_arch(name, *abi).map(i32::from) {
                    if nr >= 0 {
                        calls.push((*audit, nr, call));
                    }
                }
            }
        }
        HandlerCalls(calls)
    }
}

impl HandlerCalls {
    pub fn classify(&self, arch: u32, nr: i32) -> Option<HandlerCall> {
        self.0.iter().find(|(a, n, _)| *a == arch && *n == nr).map(|(_, _, call)| *call)
    }

    /// Whether `nr` is a bookkeeping call in any ABI: for a syscall number
    /// seen without its ABI (`/proc/TID/syscall`).
    pub fn any_abi(&self, nr: i32) -> bool {
        self.0.iter().any(|(_, n, _)| *n == nr)
    }
}

/// What a sigaction call sets, and where to find it.
pub enum Action {
    /// The call changes nothing sigvisor watches (fails, or a query).
    Nothing,
    /// `signal(2)`: the handler is an argument.
    Now(Disposition),
    /// Read `len` bytes at `at` in the caller's memory, then `decode`.
    Read { at: u64, len: usize },
}

/// The signal a sigaction call is about, and where its handler is.
pub fn sigaction_of(call: HandlerCall, compat: bool, args: &[u64; 6]) -> (i32, Action) {
    let signal = args[0] as u32 as i32;
    let action = match call {
        HandlerCall::Exec => Action::Nothing,
        HandlerCall::Signal => Action::Now(Disposition::set(args[1] & 0xffff_ffff, SIGNAL_FLAGS, true)),
        // A NULL act is a query; a sigsetsize other than 8 is EINVAL.
        _ if args[1] == 0 => Action::Nothing,
        HandlerCall::RtSigaction if args[3] != 8 => Action::Nothing,
        // The whole struct, as the kernel reads it (a part it cannot read
        // fails the call): struct old_sigaction { handler; mask; flags;
        // restorer } (u32 each); compat_sigaction { handler; flags;
        // restorer (u32 each); mask (u64) }; sigaction { handler; flags;
        // restorer; mask } (u64 each).
        HandlerCall::OldSigaction => Action::Read { at: args[1], len: 16 },
        HandlerCall::RtSigaction => Action::Read { at: args[1], len: if compat { 20 } else { 32 } },
    };
    (signal, action)
}

/// The disposition in the bytes `Action::Read` asked for.
pub fn decode(call: HandlerCall, compat: bool, bytes: &[u8]) -> Option<Disposition> {
    let word = |at: usize, len: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        b.get_mut(..len)?.copy_from_slice(bytes.get(at..at + len)?);
        Some(u64::from_ne_bytes(b))
    };
    let (handler, flags) = match call {
        HandlerCall::OldSigaction => (word(0, 4)?, word(8, 4)?),
        HandlerCall::RtSigaction if compat => (word(0, 4)?, word(4, 4)?),
        HandlerCall::RtSigaction => (word(0, 8)?, word(8, 8)?),
        _ => return None,
    };
    Some(Disposition::set(handler, flags, compat || call == HandlerCall::OldSigaction))
}

/// Whether a notification comes from a 32-bit ABI (i386 or x32), whose
/// `struct sigaction` has 4-byte words.
pub fn is_compat(arch: u32, nr: i32) -> bool {
    matches!(crate::sys::seccomp::abi(arch, nr), Some(ScmpArch::X86 | ScmpArch::X32 | ScmpArch::Arm))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ILL: i32 = libc::SIGILL;
    const SEGV: i32 = libc::SIGSEGV;

    fn handler(address: u64) -> Disposition {
        Disposition::Handler { address, once: false, compat: false }
    }

    #[test]
    fn a_handler_of_its_own_is_signalled_a_shared_one_is_not() {
        let mut table = Table::default();
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::NoHandler);
        // Go's runtime: one function for every signal.
        for s in 1..=64 {
            table.set(s, handler(0x1000));
        }
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::CrashHandler);
        assert_eq!(table.verdict(ILL, true, false, false), Verdict::Signal);
        assert_eq!(table.verdict(libc::SIGUSR1, false, false, false), Verdict::CrashHandler);
        // The gosignal demo: its own C handler for SIGILL.
        table.set(ILL, handler(0x2000));
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::Signal);
        // An unknown address may be the crash handler.
        table.set(SEGV, Disposition::Caught);
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::CrashHandler);
        table.set(SEGV, Disposition::Unknown);
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::CrashHandler);
        table.set(SEGV, handler(0x1000));
        // Set through int $0x80 by a 64-bit program: not known to work.
        table.set(ILL, Disposition::Handler { address: 0x2000, once: false, compat: true });
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::Unknown);
        assert_eq!(table.verdict(ILL, false, false, true), Verdict::Signal);
        // One-shot: never used up by sigvisor, unless the user says any.
        table.set(ILL, Disposition::Handler { address: 0x2000, once: true, compat: false });
        assert_eq!(table.verdict(ILL, false, false, false), Verdict::OneShot);
        assert_eq!(table.verdict(ILL, true, false, false), Verdict::Signal);
        table.set(ILL, Disposition::Unknown);
        assert_eq!(table.verdict(ILL, true, false, false), Verdict::Unknown);
        table.reset();
        assert_eq!(table.verdict(ILL, true, false, false), Verdict::NoHandler);
    }

    #[test]
    fn proc_only_knowledge_is_conservative_and_inheritance_never_signalled() {
        let caught = |signals: &[i32]| signals.iter().fold(0, |m, &s| m | signal_bit(s));
        // Trusted (a filter without sigvisor's rules): caught is a handler.
        assert_eq!(Table::from_caught(caught(&[ILL])).verdict(ILL, false, true, false), Verdict::Signal);
        let faulty = Table::from_caught(caught(&[ILL, SEGV]));
        assert_eq!(faulty.verdict(ILL, false, true, false), Verdict::CrashHandler);
        // Otherwise it is a fork child's inheritance: never signalled.
        assert_eq!(Table::from_caught(caught(&[ILL])).verdict(ILL, true, false, false), Verdict::Inherited);
        assert_eq!(faulty.caught(caught(&[ILL, libc::SIGBUS])), caught(&[ILL]));
    }

    #[test]
    fn two_possible_tables_signal_only_where_both_would() {
        let mut before = Table::default();
        before.set(ILL, handler(0x2000));
        let mut after = before.clone();
        after.set(ILL, Disposition::NotCaught);
        assert_eq!(before.meet(&after).verdict(ILL, false, false, false), Verdict::Unknown);
        after.set(ILL, handler(0x3000));
        after.set(SEGV, handler(0x3000));
        assert_eq!(before.verdict(ILL, false, false, false), Verdict::Signal);
        assert_eq!(after.verdict(ILL, false, false, false), Verdict::CrashHandler);
        assert_eq!(before.meet(&after).verdict(ILL, false, false, false), Verdict::Unknown);
        assert_eq!(
            both(before.verdict(ILL, false, false, false), after.verdict(ILL, false, false, false)),
            Verdict::CrashHandler
        );
        assert_eq!(both(Verdict::NoHandler, Verdict::CrashHandler), Verdict::NoHandler);
        assert_eq!(before.meet(&before), before);
    }

    #[test]
    fn decodes_each_abis_struct() {
        let mut native = [0u8; 16];
        native[..8].copy_from_slice(&0x55_0000_1234u64.to_ne_bytes());
        native[8..].copy_from_slice(&SA_RESETHAND.to_ne_bytes());
        assert_eq!(
            decode(HandlerCall::RtSigaction, false, &native),
            Some(Disposition::Handler { address: 0x55_0000_1234, once: true, compat: false })
        );
        let mut compat = [0u8; 8];
        compat[..4].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(decode(HandlerCall::RtSigaction, true, &compat), Some(Disposition::NotCaught));
        let mut old = [0u8; 16];
        old[..4].copy_from_slice(&0x8048000u32.to_ne_bytes());
        let installed = decode(HandlerCall::OldSigaction, true, &old);
        assert_eq!(installed, Some(Disposition::Handler { address: 0x8048000, once: false, compat: true }));
        assert_eq!(decode(HandlerCall::RtSigaction, false, &native[..8]), None);
    }

    #[test]
    fn queries_and_bad_sizes_change_nothing() {
        let nothing = |call, args: [u64; 6]| matches!(sigaction_of(call, false, &args).1, Action::Nothing);
        assert!(nothing(HandlerCall::RtSigaction, [4, 0, 0x10, 8, 0, 0]));
        assert!(nothing(HandlerCall::RtSigaction, [4, 0x10, 0, 16, 0, 0]));
        assert!(!nothing(HandlerCall::RtSigaction, [4, 0x10, 0, 8, 0, 0]));
        let (signal, action) = sigaction_of(HandlerCall::Signal, true, &[4, 0x8048000, 0, 0, 0, 0]);
        assert_eq!(signal, ILL);
        assert!(matches!(action, Action::Now(Disposition::Handler { once: true, .. })));
    }

    #[test]
    fn knows_the_bookkeeping_calls_of_each_abi() {
        let calls = HandlerCalls::default();
        assert_eq!(calls.classify(0xC000_003E, 13), Some(HandlerCall::RtSigaction));
        assert_eq!(calls.classify(0xC000_003E, 59), Some(HandlerCall::Exec));
        assert_eq!(calls.classify(0x4000_0003, 174), Some(HandlerCall::RtSigaction));
        assert_eq!(calls.classify(0x4000_0003, 48), Some(HandlerCall::Signal));
        assert_eq!(calls.classify(0xC000_003E, 3), None);
    }
}
