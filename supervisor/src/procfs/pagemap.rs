//! `/proc/<pid>/pagemap`: whether a page is in memory, before it is read.
//! A page that is not could be one a userfaultfd serves, and a read of it
//! would wait for whoever serves it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::sys::memory;

/// Process `pid`'s pagemap, kept open by whoever reads it often.
pub fn open(pid: i32) -> Option<File> {
    File::open(super::path(pid, "pagemap")).ok()
}

/// For each page of `[at, at+len)`, whether it is in memory or in swap
/// (all of them if pagemap cannot be read); none for a range past the end
/// of the address space.
pub fn resident_pages(pagemap: &File, at: u64, len: usize) -> Vec<bool> {
    let page = memory::page_size();
    let Some(last) = at.checked_add(len.max(1) as u64 - 1) else { return Vec::new() };
    let (first, last) = (at / page, last / page);
    let count = (last - first + 1) as usize;
    // One read for the whole range: an entry per page.
    let mut entries = vec![0u8; count * 8];
    let Ok(n) = pagemap.read_at(&mut entries, first * 8) else { return vec![true; count] };
    let mut held: Vec<bool> = entries[..n - n % 8]
        .chunks_exact(8)
        // Bit 63: present; bit 62: swapped.
        .map(|e| u64::from_ne_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]) >> 62 != 0)
        .collect();
    held.resize(count, false);
    held
}

/// Whether every page of `[at, at+len)` in `pid`'s process is in memory or
/// in swap; true where pagemap cannot be read.
pub fn resident(pid: i32, at: u64, len: usize) -> bool {
    open(pid).is_none_or(|pagemap| resident_pages(&pagemap, at, len).iter().all(|p| *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pages() {
        let me = std::process::id() as i32;
        let value = 7u64;
        assert!(resident(me, &value as *const u64 as u64, 8));
        assert!(!resident(me, 8, 8), "page 0 is never mapped");
        let pagemap = open(me).expect("own pagemap");
        assert!(resident_pages(&pagemap, u64::MAX - 4, 16).is_empty(), "past the address space");
        assert_eq!(resident_pages(&pagemap, 0, 3 * memory::page_size() as usize).len(), 3);
    }
}
