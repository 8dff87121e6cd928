//! Another process's memory: read while its thread waits for an answer.

use std::io;

/// Reads `buf.len()` bytes at `at` in thread `tid`'s process.
pub fn read(tid: i32, at: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: at as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: one local iovec over `buf`, which we own for the call; the
    // remote address is only read by the kernel, in the other process.
    let n = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize == buf.len() => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
    }
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}
