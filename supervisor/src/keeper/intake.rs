//! The agent socket while no supervisor is attached. serve gives the keeper
//! a copy of its listening socket, so that the socket outlives serve: a
//! runtime that starts a container while serve is down still connects, and
//! the keeper receives the listener itself (the same handoff protocol as
//! `handoff.rs`, non-blocking, never waiting on one client), answers its
//! calls, and hands it to the next supervisor with the rest. Without this,
//! a container started in a restart's gap would fail to start.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use sigvisor_proto::{Handoff, HandoffError, MAX_FDS};

use crate::sys::fd;
use crate::trace::peer::Peer;

/// The epoll data word of the agent socket, and the first of the
/// connections being read.
pub const AGENT: u64 = u64::MAX - 3;
pub const FIRST_HANDOFF: u64 = 1 << 40;

/// A client that has not sent a whole handoff by then is dropped, as
/// serve's `--handoff-timeout` does by default.
pub const HANDOFF_LIMIT: Duration = Duration::from_secs(10);

/// serve's listening agent socket, held by the keeper; and its file, as
/// serve bound it.
pub struct Agent {
    pub file: crate::sys::socket::BoundFile,
    pub socket: OwnedFd,
}

struct Incoming {
    socket: OwnedFd,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    peer: Option<Peer>,
    runtime: Option<String>,
    since: Instant,
}

#[derive(Default)]
pub struct Intake {
    pub agent: Option<Agent>,
    incoming: BTreeMap<u64, Incoming>,
    next: u64,
}

/// A listener received, and the program that handed it over.
pub type Received = (Handoff, Option<String>);

impl Intake {
    /// Whether a handoff is being read.
    pub fn busy(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// Accepts on the agent socket while the keeper is alone.
    pub fn watch(&self, epoll: &Epoll) {
        if let Some(agent) = &self.agent {
            if let Err(e) = epoll.add(&agent.socket, EpollEvent::new(EpollFlags::EPOLLIN, AGENT)) {
                tracing::error!("watching the agent socket {}: {e}", agent.file.path().display());
            }
        }
    }

    /// A supervisor accepts from now on.
    pub fn unwatch(&self, epoll: &Epoll) {
        if let Some(agent) = &self.agent {
            let _ = epoll.delete(&agent.socket);
        }
    }

    /// Takes every connection waiting on the agent socket.
    pub fn accept(&mut self, epoll: &Epoll) {
        let Some(agent) = &self.agent else { return };
        loop {
            let socket = match fd::accept(agent.socket.as_fd(), true) {
                Ok(socket) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("agent socket: accept: {e}");
                    return;
                }
            };
            let peer = fd::peer(socket.as_fd()).ok().map(|(pid, uid)| Peer { pid, uid });
            let runtime = peer.and_then(|p| crate::trace::container::runtime_name(p.pid));
            let token = FIRST_HANDOFF + self.next;
            self.next += 1;
            if let Err(e) = epoll.add(&socket, EpollEvent::new(EpollFlags::EPOLLIN, token)) {
                tracing::warn!("agent socket: watching a client: {e}");
                continue;
            }
            self.incoming.insert(
                token,
                Incoming { socket, bytes: Vec::new(), fds: Vec::new(), peer, runtime, since: Instant::now() },
            );
        }
    }

    /// Reads what a client sent; its listener once the handoff is whole.
    pub fn readable(&mut self, epoll: &Epoll, token: u64) -> Option<Received> {
        let incoming = self.incoming.get_mut(&token)?;
        let whole = loop {
            match fd::recv_with_fds(incoming.socket.as_fd(), &mut incoming.bytes, &mut incoming.fds, MAX_FDS)
            {
                Ok(n) => {
                    if let Some(done) = sigvisor_proto::message_complete(n, &incoming.bytes) {
                        break done;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => break Err(e.into()),
            }
        };
        let incoming = self.incoming.remove(&token)?;
        let _ = epoll.delete(&incoming.socket);
        let received = whole.and_then(|()| sigvisor_proto::decode(&incoming.bytes, incoming.fds));
        crate::sys::socket::send_nowait(incoming.socket.as_fd(), &sigvisor_proto::reply_text(&received));
        match received {
            Ok(mut handoff) => {
                if let Some(why) = crate::trace::peer::vet(&mut handoff, incoming.peer) {
                    tracing::warn!("agent socket: {why}");
                }
                Some((handoff, incoming.runtime))
            }
            // A probe (the shim checks the socket) or an aborted start.
            Err(e @ HandoffError::Empty) => {
                tracing::debug!("agent socket: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("agent socket: {e}; dropped");
                None
            }
        }
    }

    /// Drops the clients that have taken too long.
    pub fn expire(&mut self, epoll: &Epoll) {
        let late: Vec<u64> = self
            .incoming
            .iter()
            .filter(|(_, i)| i.since.elapsed() > HANDOFF_LIMIT)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            if let Some(incoming) = self.incoming.remove(&token) {
                let _ = epoll.delete(&incoming.socket);
                tracing::warn!("agent socket: no complete handoff within {HANDOFF_LIMIT:?}; dropped");
            }
        }
    }

    /// A supervisor is attaching: the handoffs under way are read to their
    /// end (they are whole within microseconds unless a client stalls),
    /// for at most `limit`, so that it gets their listeners too.
    pub fn finish(&mut self, epoll: &Epoll, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        let mut received = Vec::new();
        while self.busy() && Instant::now() < deadline {
            let tokens: Vec<u64> = self.incoming.keys().copied().collect();
            for token in tokens {
                received.extend(self.readable(epoll, token));
            }
            if self.busy() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for (_, incoming) in std::mem::take(&mut self.incoming) {
            let _ = epoll.delete(&incoming.socket);
            tracing::warn!("agent socket: a handoff still incomplete when a supervisor attached; dropped");
        }
        received
    }
}
