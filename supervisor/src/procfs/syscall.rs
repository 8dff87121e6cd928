//! `/proc/<tid>/syscall`: `running`; `-1 SP PC` for a thread blocked
//! outside any syscall; `NR ARG0..ARG5 SP PC` for one inside syscall NR.

/// The syscall the thread is in: None while it runs (nothing can be said),
/// -1 when it is blocked outside any syscall.
pub fn number(text: &str) -> Option<i64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// SP and PC of a thread inside a syscall; None otherwise.
pub fn registers(text: &str) -> Option<(u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok();
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    match fields.as_slice() {
        [nr, _, _, _, _, _, _, sp, pc] if nr.parse::<i64>().is_ok_and(|n| n >= 0) => {
            Some((hex(sp)?, hex(pc)?))
        }
        _ => None,
    }
}

/// The syscall thread `tid` is in now (see `number`).
pub fn read_number(tid: i32) -> Option<i64> {
    number(&std::fs::read_to_string(super::path(tid, "syscall")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_shapes() {
        let inside = "3 0x5 0x0 0x0 0x0 0x0 0x0 0x7ffd1234 0x7f0012ab\n";
        assert_eq!((number(inside), registers(inside)), (Some(3), Some((0x7ffd1234, 0x7f0012ab))));
        let outside = "-1 0x7ffd1234 0x7f0012ab\n";
        assert_eq!((number(outside), registers(outside)), (Some(-1), None));
        assert_eq!((number("running\n"), registers("running\n")), (None, None));
        assert_eq!(registers("3 0x5 0x0 0x0 0x0 0x0 0x0 zz 0x1"), None);
        assert_eq!(registers("-1 0 0 0 0 0 0 0x1 0x2"), None);
    }
}
