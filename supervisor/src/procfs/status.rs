//! `/proc/<tid>/status`: the fields sigvisor uses.

/// The fields of `/proc/<tid>/status` sigvisor uses.
#[derive(Debug, Default)]
pub struct Status {
    pub name: String,
    pub tgid: i32,
    /// `SigCgt`: the process's caught signals.
    pub caught: u64,
    /// `SigPnd`: signals pending for this thread.
    pub pending: u64,
    /// `State`'s letter: `R` running or runnable, `S`, `D`… asleep.
    pub state: u8,
    /// `voluntary_ctxt_switches`: how often the thread went to sleep.
    pub switches: u64,
}

/// Thread `tid`'s status now; None if it is gone.
pub fn read(tid: i32) -> Option<Status> {
    parse(&std::fs::read_to_string(super::path(tid, "status")).ok()?)
}

/// None unless the text names a thread group (`Tgid` above 0) and every
/// field it has of those used parses.
pub fn parse(text: &str) -> Option<Status> {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key {
            "Name" => status.name = value.to_owned(),
            "Tgid" => status.tgid = value.parse().ok()?,
            "SigCgt" => status.caught = u64::from_str_radix(value, 16).ok()?,
            "SigPnd" => status.pending = u64::from_str_radix(value, 16).ok()?,
            "State" => status.state = value.bytes().next()?,
            "voluntary_ctxt_switches" => status.switches = value.parse().ok()?,
            _ => {}
        }
    }
    (status.tgid > 0).then_some(status)
}

/// Whether `signal` is pending for thread `tid` (sent to it, not yet
/// delivered): a thread waiting in a trapped call whose wait is killable
/// only keeps a signal sent to it pending until the call returns.
pub fn signal_pending(tid: i32, signal: i32) -> bool {
    read(tid).is_some_and(|s| s.pending & sigvisor_proto::signal_bit(signal) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let text = "Name:\tgo (x)\nState:\tS (sleeping)\nTgid:\t42\nPPid:\t1\nThreads:\t3\n\
                    SigPnd:\t0000000000000004\nSigCgt:\tfffffffe7fc1feff\nvoluntary_ctxt_switches:\t7\n";
        let status = parse(text).expect("parses");
        assert_eq!((status.name.as_str(), status.tgid), ("go (x)", 42));
        assert_eq!(status.pending, sigvisor_proto::signal_bit(libc::SIGQUIT));
        assert!(status.caught & sigvisor_proto::signal_bit(libc::SIGILL) != 0);
        assert_eq!((status.state, status.switches), (b'S', 7));
    }

    #[test]
    fn refuses_what_is_no_thread_or_does_not_parse() {
        assert!(parse("").is_none());
        assert!(parse("Tgid:\t0\n").is_none());
        assert!(parse("Tgid:\t42\nSigCgt:\tnot hex\n").is_none());
        assert!(parse("Tgid:\t42\nState:\t\n").is_none(), "an empty state");
    }

    #[test]
    fn reads_own_status() {
        let me = std::process::id() as i32;
        let status = read(me).expect("own status");
        assert_eq!(status.tgid, me);
        assert!(!status.name.is_empty());
        let this = read(crate::sys::thread::gettid()).expect("this thread's status");
        assert_eq!(this.state, b'R', "this thread runs");
        assert!(read(i32::MAX).is_none());
    }
}
