//! `/proc/<pid>/stat`: one line of numbered fields after `(comm)`.

/// Field `n` (1-based, as proc(5) numbers them; 3 or more) of a stat line.
pub fn field(text: &str, n: usize) -> Option<u64> {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    let after = text.get(text.rfind(')')? + 1..)?;
    after.split_ascii_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// Field 20: the number of threads in the process.
pub const THREADS: usize = 20;
/// Field 22: starttime, clock ticks since boot.
pub const START: usize = 22;
/// Field 34: `sigcatch`, obsolete but cheaper than status's `SigCgt`.
pub const CAUGHT: usize = 34;

/// Field 22 (starttime) of `/proc/<tgid>/stat`: fixed for a process's
/// life, across `execve` too, so (tgid, start) names one process.
pub fn process_start(tgid: i32) -> Option<u64> {
    field(&std::fs::read_to_string(super::path(tgid, "stat")).ok()?, START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_comm() {
        let mut text = String::from("42 (a) b (c)) S");
        for n in 4..=40 {
            text.push_str(&format!(" {n}"));
        }
        assert_eq!(field(&text, START), Some(22));
        assert_eq!(field(&text, CAUGHT), Some(34));
        assert_eq!(field(&text, 60), None);
        assert_eq!(field(&text, 1), None, "fields before comm are not numbered here");
        assert_eq!(field("42 no parenthesis 1 2 3", 3), None);
    }

    #[test]
    fn own_start() {
        assert!(process_start(std::process::id() as i32).is_some());
    }
}
