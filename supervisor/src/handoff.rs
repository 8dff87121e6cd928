//! Receiving a listener: one OCI `ContainerProcessState` message with the
//! fds as SCM_RIGHTS (the fds come with the first read; crun's pretty JSON
//! may take several). The message ends at EOF or as soon as the bytes parse
//! as a whole JSON document, whichever comes first: a sender whose filter is
//! already loaded may block in a trapped close() of this very socket, and
//! waiting for its EOF would wait for our own answer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use sigvisor_proto::{Handoff, HandoffError, MAX_FDS, MAX_MESSAGE_BYTES};

use crate::sys::fd;

/// Reads one handoff from a connected stream socket, and tells the sender
/// whether the listener was taken (`reply`).
pub async fn receive(socket: OwnedFd) -> Result<Handoff, HandoffError> {
    fd::set_nonblocking(&socket)?;
    let socket = fd::readable(socket)?;
    let received = read(&socket).await;
    reply(socket.get_ref().as_fd(), &received);
    received
}

/// Tells a sender whether its listener was taken: `ACK`, or `error: ...`.
/// sigvisor-launch waits for it (with a deadline) before it execs; runc
/// and crun have closed their end, and the write fails unseen.
pub fn reply<T>(socket: std::os::fd::BorrowedFd<'_>, received: &Result<T, HandoffError>) {
    let text = match received {
        Ok(_) => sigvisor_proto::ACK.to_vec(),
        Err(e) => format!("error: {e}\n").into_bytes(),
    };
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
    let _ = nix::sys::socket::send(std::os::fd::AsRawFd::as_raw_fd(&socket), &text, flags);
}

async fn read(socket: &tokio::io::unix::AsyncFd<OwnedFd>) -> Result<Handoff, HandoffError> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| fd::recv_with_fds(s.get_ref().as_fd(), &mut bytes, &mut fds, MAX_FDS)) {
            Ok(Ok(n)) => match complete(n, &bytes) {
                Some(Ok(())) => break,
                Some(Err(e)) => return Err(e),
                None => {}
            },
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => {}
        }
    }
    sigvisor_proto::decode(&bytes, fds)
}

/// After a read of `n` bytes: whether the message is complete (EOF, or a
/// whole document), too long, or not yet (None).
pub fn complete(n: usize, bytes: &[u8]) -> Option<Result<(), HandoffError>> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Some(Err(HandoffError::TooLong));
    }
    (n == 0 || is_whole_document(bytes)).then_some(Ok(()))
}

/// Whether `bytes` hold one complete JSON value (more may follow: ignored).
fn is_whole_document(bytes: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    matches!(values.next(), Some(Ok(_)))
}
