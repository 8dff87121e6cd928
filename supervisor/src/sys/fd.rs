//! File descriptors: non-blocking mode, fds passed as SCM_RIGHTS, a socket
//! pair for a child.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use sigvisor_proto::MAX_FDS;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A value that owns the fd it reports: it stays open, and the same fd, for
/// as long as the value lives (what tokio's registration requires).
pub trait OwnsFd: AsRawFd {}

impl OwnsFd for OwnedFd {}
impl OwnsFd for crate::sys::seccomp::Listener {}

/// Registers `inner`'s fd with tokio, for readability.
pub fn readable<T: OwnsFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (OwnsFd), and the AsyncFd owns `inner`
    // until it is dropped or into_inner'd, so the fd stays open and the same.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// One non-blocking `recvmsg`: appends the bytes, and takes ownership of
/// any fds that came with them at once (CLOEXEC), so an error later cannot
/// leak them; room for `MAX_FDS` fds. Returns the byte count; 0 is EOF.
/// (libc, not nix: nix's control-message iterator refuses a truncated
/// buffer, which would leave the fds that did arrive open and unowned.)
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    const FD_BYTES: u32 = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    debug_assert!(max_fds <= MAX_FDS);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(FD_BYTES) } as usize;
    #[repr(C)]
    union ControlBuffer {
        bytes: [u8; SPACE],
        _align: libc::cmsghdr,
    }
    let mut control = ControlBuffer { bytes: [0; SPACE] };
    let mut chunk = [0u8; 8192];
    let mut iov = libc::iovec { iov_base: chunk.as_mut_ptr() as *mut libc::c_void, iov_len: chunk.len() };
    // SAFETY: msghdr is plain old data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &mut control as *mut ControlBuffer as *mut libc::c_void;
    msg.msg_controllen = SPACE as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    let n =
        unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed cmsghdrs; CMSG_NXTHDR stays within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    // Each fd is new in this process and owned by nobody else.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    bytes.extend_from_slice(&chunk[..n as usize]);
    Ok(n as usize)
}

/// A connected socket pair: the first CLOEXEC, the second inherited by a
/// child across exec.
pub fn socketpair_for_child() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)?;
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok((ours, theirs))
}
