//! What a Trace asks the supervisor to do, as the notification path reads
//! it: its modes and its `spec.parameters`, each parsed from its string
//! form (docs/profiles.md#parameters). Each parser's error says what is
//! accepted; `profile` adds the file and the field.

/// `spec.runMode`: Auto starts when the Trace is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Auto,
    Manual,
}

/// `spec.outputMode`: where what a Trace sees goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A summary in `status.output`, kept current.
    Status,
    /// JSON lines to `sigvisor stream` followers.
    Stream,
    /// JSON lines appended to `spec.output`.
    File,
}

impl RunMode {
    /// From a value `profile::parse` checked.
    pub(super) fn of(value: &str) -> RunMode {
        if value == "Auto" {
            RunMode::Auto
        } else {
            RunMode::Manual
        }
    }
}

impl OutputMode {
    /// From a value `profile::parse` checked.
    pub(super) fn of(value: &str) -> OutputMode {
        match value {
            "Stream" => OutputMode::Stream,
            "File" => OutputMode::File,
            _ => OutputMode::Status,
        }
    }
}
/// Accepted keys of `spec.parameters`, documented in docs/profiles.md.
pub const PARAMETERS: &[&str] = &["signal", "handler", "syscalls", "min-threads", "comm", "when", "stacks"];
/// Values of `spec.parameters.handler`.
pub const HANDLERS: &[&str] = &["own", "any"];

/// What a validated Trace asks the supervisor to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub run_mode: RunMode,
    pub output_mode: OutputMode,
    /// Signal sent to the calling thread (and whose handler the filter
    /// watches); with `send_signal` false (`signal: none`), none is sent.
    pub signal: i32,
    pub send_signal: bool,
    /// `stacks: "true"`: sigvisor captures the calling thread's stack.
    pub stacks: bool,
    /// `handler: any`: crash handlers are signalled too (the user knows
    /// better); by default only a handler meant for this signal is.
    pub any_handler: bool,
    /// Syscall names the filter traps.
    pub syscalls: Vec<String>,
    /// Only processes with at least this many threads are signalled.
    pub min_threads: u32,
    /// Only processes whose name (comm) matches this glob are signalled.
    pub comm: Option<glob::Pattern>,
    /// Which of a process's signallable calls are signalled.
    pub when: Option<When>,
}

/// strace's `first[..last][+step]`: calls first, first+step, … up to last
/// (1-based, inclusive). `N` alone is the N-th call only; `N..` or `N+S`
/// without a last goes on for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    pub first: u64,
    pub last: Option<u64>,
    pub step: u64,
}

impl When {
    pub fn selects(&self, n: u64) -> bool {
        n >= self.first
            && self.last.is_none_or(|last| n <= last)
            && (n - self.first).is_multiple_of(self.step)
    }
}

/// Comma-separated syscall names known to libseccomp, minus those the
/// launcher itself must call after loading the filter.
pub fn parse_syscalls(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> =
        value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(format!(
            "invalid value {value:?}; accepted: comma-separated syscall names, e.g. close,openat"
        ));
    }
    for name in &names {
        if sigvisor_proto::HANDLER_SYSCALLS.contains(&name.as_str()) {
            return Err(format!(
                "invalid value {name:?}: sigvisor traps it itself, to know each process's signal handlers \
                 (reserved: {})",
                sigvisor_proto::HANDLER_SYSCALLS.join(", ")
            ));
        }
        if sigvisor_proto::NEVER_TRAPPED.contains(&name.as_str()) {
            return Err(format!(
                "invalid value {name:?}: the launcher needs it to start the target; it cannot be trapped \
                 (never trapped: {})",
                sigvisor_proto::NEVER_TRAPPED.join(", ")
            ));
        }
        if libseccomp::ScmpSyscall::from_name(name).is_err() {
            return Err(format!("invalid value {name:?}: not a syscall name on this system; accepted: names such as close, openat, read"));
        }
    }
    Ok(names)
}

pub fn parse_min_threads(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid value {value:?}; accepted: a whole number of threads, 1 or more")),
    }
}

/// A glob (`*`, `?`, `[...]`) matched against the whole process name; the
/// kernel keeps at most 15 bytes of it.
pub fn parse_comm(value: &str) -> Result<glob::Pattern, String> {
    let accepted = "accepted: a glob matched against the whole process name (comm, at most 15 bytes), \
                    e.g. gosignal or gosi*";
    if value.is_empty() {
        return Err(format!("invalid value {value:?}; {accepted}"));
    }
    glob::Pattern::new(value).map_err(|e| format!("invalid value {value:?}: {e}; {accepted}"))
}

pub fn parse_when(value: &str) -> Result<When, String> {
    let bad = || {
        format!(
            "invalid value {value:?}; accepted: first[..last][+step] as in strace, counting from 1, \
             e.g. 3 (the 3rd only), 2..5, 10.. (10th on), 1+10 (every 10th), 5..50+5"
        )
    };
    let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n >= 1);
    let (range, step) = match value.trim().split_once('+') {
        Some((range, step)) => (range, Some(number(step).ok_or_else(bad)?)),
        None => (value.trim(), None),
    };
    let (first, last) = match range.split_once("..") {
        Some((first, "")) => (number(first).ok_or_else(bad)?, None),
        Some((first, last)) => (number(first).ok_or_else(bad)?, Some(number(last).ok_or_else(bad)?)),
        // `N` alone is the N-th only; `N+S` runs on.
        None => {
            let first = number(range).ok_or_else(bad)?;
            (first, if step.is_some() { None } else { Some(first) })
        }
    };
    if last.is_some_and(|last| last < first) {
        return Err(bad());
    }
    Ok(When { first, last, step: step.unwrap_or(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_forms() {
        let picks = |w: &str| (1..=30).filter(|n| parse_when(w).unwrap().selects(*n)).collect::<Vec<_>>();
        assert_eq!(picks("3"), vec![3]);
        assert_eq!(picks("2..4"), vec![2, 3, 4]);
        assert_eq!(picks("28.."), vec![28, 29, 30]);
        assert_eq!(picks("1+10"), vec![1, 11, 21]);
        assert_eq!(picks("5..20+5"), vec![5, 10, 15, 20]);
        for bad in ["", "0", "x", "3..2", "1+0", "..3", "1..2..3"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }
}
