//! Receiving a listener: one OCI `ContainerProcessState` message with the
//! fds as SCM_RIGHTS (the fds come with the first read; crun's pretty JSON
//! may take several); where it ends is `sigvisor_proto::message_complete`'s
//! rule.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use sigvisor_proto::{Handoff, HandoffError, MAX_FDS};

use crate::sys::fd;

/// Reads one handoff from a connected stream socket, and tells the sender
/// whether the listener was taken (sigvisor-launch waits for the answer,
/// with a deadline, before it execs; runc and crun have closed their end,
/// and the write fails unseen).
pub async fn receive(socket: OwnedFd) -> Result<Handoff, HandoffError> {
    fd::set_nonblocking(&socket)?;
    let socket = fd::readable(socket)?;
    let received = read(&socket).await;
    crate::sys::socket::send_nowait(socket.get_ref().as_fd(), &sigvisor_proto::reply_text(&received));
    received
}

async fn read(socket: &tokio::io::unix::AsyncFd<OwnedFd>) -> Result<Handoff, HandoffError> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut guard = socket.readable().await?;
        match guard.try_io(|s| fd::recv_with_fds(s.get_ref().as_fd(), &mut bytes, &mut fds, MAX_FDS)) {
            Ok(Ok(n)) => match sigvisor_proto::message_complete(n, &bytes) {
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
