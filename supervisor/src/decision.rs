//! Decide, for one notification, whether its calling thread gets the signal.

use std::fmt;
use std::io::Read;

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
    /// The caller died before it could be looked at.
    CallerGone,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Skip::FilterNotKillable => "filter-not-killable",
            Skip::CallerNotVisible => "caller-not-visible",
            Skip::NoHandler => "no-handler",
            Skip::CallerGone => "caller-gone",
        })
    }
}

/// The calling thread, as `/proc/<tid>/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tid: i32,
    pub tgid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    pub threads: u32,
    /// Signals with a handler (SigCgt), bit n-1 for signal n.
    pub caught: u64,
}

pub enum Decision {
    Signal(Caller),
    Skip(Skip, Option<Caller>),
}

/// Reads `/proc/<tid>/status` (one open and one read) into a reused buffer.
pub struct ProcReader {
    buf: Vec<u8>,
}

impl ProcReader {
    pub fn new() -> Self {
        ProcReader {
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn caller(&mut self, tid: i32) -> Option<Caller> {
        self.buf.clear();
        let mut file = std::fs::File::open(format!("/proc/{tid}/status")).ok()?;
        file.read_to_end(&mut self.buf).ok()?;
        parse_status(tid, &self.buf)
    }
}

fn parse_status(tid: i32, text: &[u8]) -> Option<Caller> {
    let text = std::str::from_utf8(text).ok()?;
    let mut caller = Caller {
        tid,
        tgid: 0,
        name: String::new(),
        threads: 0,
        caught: 0,
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => caller.name = value.to_owned(),
            "Tgid" => caller.tgid = value.parse().ok()?,
            "Threads" => caller.threads = value.parse().ok()?,
            "SigCgt" => caller.caught = u64::from_str_radix(value, 16).ok()?,
            _ => {}
        }
    }
    (caller.tgid > 0).then_some(caller)
}

/// The decision for one notification. Cheap refusals come first, so a
/// listener that never signals costs no /proc read.
pub fn decide(
    policy: &Policy,
    wait_killable: bool,
    notif: &Notification,
    proc: &mut ProcReader,
) -> Decision {
    if !wait_killable {
        return Decision::Skip(Skip::FilterNotKillable, None);
    }
    let tid = notif.pid as i32;
    if tid == 0 {
        return Decision::Skip(Skip::CallerNotVisible, None);
    }
    let Some(caller) = proc.caller(tid) else {
        return Decision::Skip(Skip::CallerGone, None);
    };
    if caller.caught & (1u64 << (policy.signal - 1)) == 0 {
        return Decision::Skip(Skip::NoHandler, Some(caller));
    }
    Decision::Signal(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_status() {
        let mut proc = ProcReader::new();
        let me = proc.caller(std::process::id() as i32).unwrap();
        assert_eq!(me.tgid, std::process::id() as i32);
        assert!(me.threads >= 1);
        assert!(proc.caller(i32::MAX).is_none());
    }
}
