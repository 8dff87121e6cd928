//! File descriptors: non-blocking mode, fds passed as SCM_RIGHTS, a socket
//! pair for a child.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use std::path::Path;

use nix::sys::socket::sockopt::PeerCredentials;
pub use nix::sys::socket::SockType;
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, socket, socketpair, AddressFamily, Backlog, MsgFlags,
    SockFlag, UnixAddr,
};
use sigvisor_proto::MAX_FDS;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A value that owns the fd it reports: it stays open, and the same fd, for
/// as long as the value lives (what tokio's registration requires).
///
/// # Safety
/// An implementation must report an fd the value owns, and never close or
/// replace it while the value lives: `readable`'s registration relies on it.
pub unsafe trait OwnsFd: AsRawFd {}

// SAFETY: an OwnedFd owns its fd and closes it only when dropped.
unsafe impl OwnsFd for OwnedFd {}
// SAFETY: a Listener wraps one OwnedFd, never replaced.
unsafe impl OwnsFd for crate::sys::seccomp::Listener {}

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
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    debug_assert!(max_fds <= MAX_FDS);
    let mut chunk = [0u8; 8192];
    let n = recvmsg(socket, &mut chunk, fds, libc::MSG_DONTWAIT)?.0;
    bytes.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// One blocking `recvmsg` of a whole packet (SOCK_SEQPACKET) into `buf`,
/// with its fds; an `InvalidData` error if the packet did not fit.
pub fn recv_packet(socket: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let (n, truncated) = recvmsg(socket, buf, fds, 0)?;
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("packet longer than {} bytes", buf.len()),
        ));
    }
    Ok(n)
}

/// `recvmsg(2)` with room for `MAX_FDS` fds, owned at once. Returns the
/// byte count and whether the data was truncated. (libc, not nix: nix's
/// control-message iterator refuses a truncated buffer, which would leave
/// the fds that did arrive open and unowned.)
fn recvmsg(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    flags: libc::c_int,
) -> io::Result<(usize, bool)> {
    const FD_BYTES: u32 = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE is pure arithmetic.
    const SPACE: usize = unsafe { libc::CMSG_SPACE(FD_BYTES) } as usize;
    #[repr(C)]
    union ControlBuffer {
        bytes: [u8; SPACE],
        _align: libc::cmsghdr,
    }
    let mut control = ControlBuffer { bytes: [0; SPACE] };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: msghdr is plain old data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &mut control as *mut ControlBuffer as *mut libc::c_void;
    msg.msg_controllen = SPACE as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
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
    Ok((n as usize, msg.msg_flags & libc::MSG_TRUNC != 0))
}

/// Sends one packet, with `fd` attached if given.
pub fn send_packet(socket: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    match fd {
        Some(fd) => sigvisor_proto::send_with_fd(socket, bytes, fd),
        None => loop {
            match nix::sys::socket::send(socket.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => return other.map(drop).map_err(io::Error::from),
            }
        },
    }
}

/// A SOCK_SEQPACKET socket listening at `path` (a stale file replaced by
/// the caller), CLOEXEC.
pub fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// Accepts one connection, non-blocking if asked (any socket type).
pub fn accept(listening: BorrowedFd<'_>, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags =
        if nonblocking { SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK } else { SockFlag::SOCK_CLOEXEC };
    let fd = accept4(listening.as_raw_fd(), flags)?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// Bounds every blocking receive on `socket` to `limit` (then EAGAIN);
/// None: unbounded again.
pub fn receive_timeout(socket: BorrowedFd<'_>, limit: Option<std::time::Duration>) -> io::Result<()> {
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeval(limit))?;
    Ok(())
}

/// Bounds every blocking send on `socket` to `limit` (then EAGAIN).
pub fn send_timeout(socket: BorrowedFd<'_>, limit: std::time::Duration) -> io::Result<()> {
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SendTimeout, &timeval(Some(limit)))?;
    Ok(())
}

fn timeval(limit: Option<std::time::Duration>) -> nix::sys::time::TimeVal {
    let limit = limit.unwrap_or_default();
    nix::sys::time::TimeVal::new(limit.as_secs() as _, limit.subsec_micros() as _)
}

/// Shuts a socket down both ways: every copy of it sees the end at once.
pub fn shut_down(socket: BorrowedFd<'_>) {
    let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
}

/// The credentials of a connected unix socket's peer: (pid, uid).
pub fn peer(socket: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let cred = getsockopt(&socket, PeerCredentials)?;
    Ok((cred.pid(), cred.uid()))
}

/// A connected socket pair of `kind`: the first CLOEXEC, the second
/// inherited by a child across exec.
pub fn socketpair_for_child(kind: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)?;
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok((ours, theirs))
}

/// Takes ownership of an fd this process inherited (`--fd N`): it must be
/// an open socket.
///
/// # Safety
/// Nothing else in the process may own `raw`, or use it after this call.
pub unsafe fn inherited(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {raw} is stdio")));
    }
    // SAFETY: F_GETFD on any integer only reads the fd table.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open (checked just above), and ours alone: the caller passed
    // it on the command line for this process to take.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let stat = nix::sys::stat::fstat(fd)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {raw} is not a socket")));
    }
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: open (checked above) and owned by nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
