//! Every read of `/proc`: a thread's status and stat line, the syscall it
//! waits in, its process's maps, pagemap and name. Each parser is a pure
//! function of the text (tested here without a kernel); each read is one
//! bounded read, since a target can make its files long (maps) and its
//! names awkward (a comm with spaces and parentheses).

pub mod maps;
pub mod pagemap;
pub mod stat;
pub mod status;
pub mod syscall;

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The path of `/proc/<pid>/<file>`.
pub fn path(pid: i32, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// A kept-open /proc file read again from its start (a `pread`: /proc
/// renders the file anew for each read at offset 0), as text.
pub fn reread<'b>(file: &File, buf: &'b mut [u8]) -> Option<&'b str> {
    let n = file.read_at(buf, 0).ok()?;
    std::str::from_utf8(buf.get(..n)?).ok()
}

/// A comm as /proc gives it, without its newline.
pub fn parse_comm(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

/// The name of process `pid` (its main thread's comm).
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(path(pid, "comm")).ok().map(|c| parse_comm(&c).to_owned())
}

/// This machine's name (the default `--node`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}
