//! Receiving a listener: one OCI `ContainerProcessState` message with the
//! fds as SCM_RIGHTS (the fds come with the first read; crun's pretty JSON
//! may take several). The message ends at EOF or as soon as the bytes parse
//! as a whole JSON document, whichever comes first: a sender whose filter is
//! already loaded may block in a trapped close() of this very socket, and
//! waiting for its EOF would wait for our own answer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use sigvisor_proto::{Handoff, HandoffError, MAX_FDS, MAX_MESSAGE_BYTES};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Reads one handoff from a connected stream socket.
pub async fn receive(socket: OwnedFd) -> Result<Handoff, HandoffError> {
    set_nonblocking(&socket)?;
    // SAFETY: the AsyncFd owns the fd (an OwnedFd inside), so it stays open
    // and the same until the AsyncFd is dropped or into_inner'd.
    let socket =
        unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)?;
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| recv_chunk(s.get_ref().as_raw_fd(), &mut bytes, &mut fds)) {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) if bytes.len() > MAX_MESSAGE_BYTES => return Err(HandoffError::TooLong),
            Ok(Ok(_)) if is_whole_document(&bytes) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => {}
        }
    }
    sigvisor_proto::decode(&bytes, fds)
}

/// Whether `bytes` hold one complete JSON value (more may follow: ignored).
fn is_whole_document(bytes: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    matches!(values.next(), Some(Ok(_)))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg`: appends the bytes, and takes ownership of any fds at
/// once (CLOEXEC), so an error later cannot leak them. Returns the byte
/// count; 0 is EOF.
fn recv_chunk(socket: RawFd, bytes: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const FD_BYTES: u32 = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
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
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
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
