//! Another process's memory: read while its thread waits for an answer.

use std::io::{self, IoSliceMut};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::{sysconf, Pid, SysconfVar};

/// Reads `buf.len()` bytes at `at` in thread `tid`'s process; a short read
/// is EFAULT (part of the range is not mapped).
pub fn read(tid: i32, at: u64, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let remote = [RemoteIoVec { base: at as usize, len }];
    let n = process_vm_readv(Pid::from_raw(tid), &mut [IoSliceMut::new(buf)], &remote)?;
    if n == len {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EFAULT))
    }
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    sysconf(SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |n| n.max(4096) as u64)
}
