//! `/proc/<pid>/maps`: a process's mappings, one per line.

use std::io::Read;

/// The most of a maps file read (about 5,000 mappings; past them, frames
/// show as addresses): a target can map as much as it likes.
pub const MAX_BYTES: u64 = 512 * 1024;

/// Process `pid`'s maps, at most `MAX_BYTES` of them, whole lines only.
pub fn read(pid: i32) -> std::io::Result<String> {
    let file = std::fs::File::open(super::path(pid, "maps"))?;
    let mut maps = String::new();
    file.take(MAX_BYTES).read_to_string(&mut maps)?;
    // A cut line is no mapping.
    maps.truncate(maps.rfind('\n').map_or(0, |end| end + 1));
    Ok(maps)
}

/// A line of `/proc/PID/maps`: range, permissions, offset, device, inode
/// and path.
pub struct Line<'a> {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    pub dev: &'a str,
    pub inode: u64,
    pub path: &'a str,
}

/// Parses one line of `/proc/PID/maps`.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut fields = line.splitn(6, |c: char| c.is_ascii_whitespace());
    let (range, perms, offset, dev, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let inode = inode.parse().ok()?;
    (start < end).then_some(Line { start, end, executable: perms.contains('x'), offset, dev, inode, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let m = parse_line("7f00-7f10 r-xp 00001000 fd:01 1234    /usr/lib/a b.so").expect("line");
        assert_eq!((m.start, m.end, m.executable, m.offset), (0x7f00, 0x7f10, true, 0x1000));
        assert_eq!((m.dev, m.inode, m.path), ("fd:01", 1234, "/usr/lib/a b.so"));
        let m = parse_line("1000-2000 rw-p 00000000 00:00 0").expect("anonymous");
        assert_eq!((m.executable, m.inode, m.path), (false, 0, ""));
        assert!(parse_line("2000-1000 rw-p 0 00:00 0").is_none(), "an empty range");
        assert!(parse_line("zz-1000 rw-p 0 00:00 0").is_none());
        assert!(parse_line("1000-2000 rw-p").is_none(), "a cut line");
    }

    #[test]
    fn own_maps_end_with_a_whole_line() {
        let maps = read(std::process::id() as i32).expect("own maps");
        assert!(maps.ends_with('\n'));
        assert!(maps.lines().filter_map(parse_line).any(|m| m.executable));
    }
}
