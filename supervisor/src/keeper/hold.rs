//! The keeper process (`sigvisor keeper`): single-threaded, blocking, one
//! epoll over its sockets and the listeners it answers itself.
//!
//! While a supervisor is attached, the keeper only holds: each copy waits,
//! untouched, until the supervisor says its filter has no task left. While
//! none is attached, it answers every notification with CONTINUE, and a
//! supervisor that connects takes every listener back.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::intake::{Agent, Intake, Received, AGENT, FIRST_HANDOFF};
use super::kept::Kept;
use super::{slot, Record, ToKeeper, ToSupervisor, MAX_PACKET};
use crate::callers::handler_calls;
use crate::sys::fd;
use crate::sys::region::Region;
use crate::sys::seccomp::{Listener, Ticker};
use crate::sys::socket::BoundFile;

/// How long a keeper started for a supervisor waits for it to connect.
const FIRST_CONNECT: Duration = Duration::from_secs(10);

/// How often a keeper that answers calls itself interrupts its own RECV:
/// readiness seen by `poll` can be stale (a caller interrupted since), and a
/// RECV with nothing to receive blocks.
const RECV_TICK: Duration = Duration::from_millis(100);

/// A keeper holding serve's agent socket stays this long with nothing to
/// keep, so that a serve restarting finds it (and containers starting
/// meanwhile can still hand over their listeners).
const IDLE_GRACE: Duration = Duration::from_secs(5);

/// How long an attaching supervisor waits for handoffs under way.
const FINISH_LIMIT: Duration = Duration::from_secs(1);

/// How long a call may wait for a live but stuck supervisor (stopped,
/// wedged) before the keeper answers it, by default.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

pub struct Options {
    /// Listen here for supervisors (`sigvisor serve`'s keeper).
    pub socket: Option<PathBuf>,
    /// A call its supervisor leaves waiting this long is answered by the
    /// keeper, unsignalled, until the supervisor answers again.
    pub answer_within: Duration,
    /// Or: the one supervisor, already connected (`sigvisor run`'s keeper).
    pub connection: Option<OwnedFd>,
    /// Exit once no supervisor is attached and no listener is held (after
    /// `IDLE_GRACE` while it holds serve's agent socket).
    pub exit_when_idle: bool,
}

pub(super) struct Keeper {
    pub(super) epoll: Epoll,
    pub(super) region: Region,
    pub(super) kept: BTreeMap<u32, Kept>,
    pub(super) listening: Option<OwnedFd>,
    pub(super) supervisor: Option<OwnedFd>,
    /// serve's agent socket, and handoffs the keeper is reading from it.
    pub(super) intake: Intake,
    pub(super) had_supervisor: bool,
    /// The supervisor said it is stopping (SIGTERM), not crashing.
    pub(super) leaving: bool,
    pub(super) draining: bool,
    /// Since the last supervisor attached.
    pub(super) answered: u64,
    pub(super) rescued: u64,
    pub(super) answer_within: Duration,
    /// When the attached supervisor's slots were last looked at.
    pub(super) watched: Instant,
}

/// What one epoll event is about: its data word.
const SIGNALS: u64 = u64::MAX;
const CONNECTION: u64 = u64::MAX - 1;
const SUPERVISOR: u64 = u64::MAX - 2;

/// Runs the keeper until it has nothing left to keep (with
/// `exit_when_idle`) or, after SIGTERM, holds no listener any more.
pub fn run(opts: Options) -> Result<i32> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("blocking SIGTERM")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    // SIGINT from a terminal's ^C and SIGHUP from its hang-up are meant for
    // the program: the keeper stays as long as the program needs it.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        crate::sys::process::ignore(sig);
    }
    let (listening, own_file) = match &opts.socket {
        Some(path) => {
            let (socket, file) = listen(path)?;
            (Some(socket), Some(file))
        }
        None => (None, None),
    };
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
    if let Some(l) = &listening {
        epoll.add(l, EpollEvent::new(EpollFlags::EPOLLIN, CONNECTION))?;
    }
    let mut keeper = Keeper {
        epoll,
        region: Region::create().context("creating the slot region")?,
        kept: BTreeMap::new(),
        listening,
        supervisor: None,
        intake: Intake::default(),
        had_supervisor: false,
        leaving: false,
        draining: false,
        answered: 0,
        rescued: 0,
        answer_within: opts.answer_within,
        watched: Instant::now(),
    };
    if let Some(conn) = opts.connection {
        keeper.attach(conn);
    }
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    let mut ticker: Option<Ticker> = None;
    loop {
        let idle = keeper.supervisor.is_none() && keeper.kept.is_empty() && !keeper.intake.busy();
        idle_since = if idle { idle_since.or(Some(Instant::now())) } else { None };
        let grace = if keeper.intake.agent.is_some() { IDLE_GRACE } else { Duration::ZERO };
        let idle_for = idle_since.map(|t| t.elapsed());
        if idle
            && (keeper.draining || (opts.exit_when_idle && keeper.had_supervisor && idle_for >= Some(grace)))
        {
            break;
        }
        if idle && opts.exit_when_idle && !keeper.had_supervisor && started.elapsed() > FIRST_CONNECT {
            tracing::warn!("no supervisor connected within {FIRST_CONNECT:?}");
            break;
        }
        keeper.intake.expire(&keeper.epoll);
        let serving = keeper.kept.values().any(|k| k.serving);
        if serving != ticker.is_some() {
            ticker = if serving { Some(Ticker::start(RECV_TICK)?) } else { None };
        }
        // Waiting for a first supervisor, a handoff and an idle keeper's
        // grace are bounded; an attached supervisor is watched.
        let tick = keeper.watch_tick();
        let timeout = if keeper.supervisor.is_some() && !keeper.kept.is_empty() {
            EpollTimeout::try_from(tick).unwrap_or(EpollTimeout::ZERO)
        } else if (opts.exit_when_idle && (!keeper.had_supervisor || idle)) || keeper.intake.busy() {
            EpollTimeout::from(1000u16)
        } else {
            EpollTimeout::NONE
        };
        let mut events = [EpollEvent::empty(); 64];
        let n = match keeper.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for event in &events[..n] {
            match event.data() {
                SIGNALS => {
                    while let Ok(Some(_)) = signals.read_signal() {}
                    keeper.draining = true;
                    keeper.listening = None;
                    keeper.drop_agent();
                    tracing::info!("SIGTERM: exiting once no listener is held ({} now)", keeper.kept.len());
                }
                CONNECTION => keeper.accept(),
                SUPERVISOR => keeper.message(),
                AGENT => keeper.intake.accept(&keeper.epoll),
                token if token >= FIRST_HANDOFF => {
                    if let Some(received) = keeper.intake.readable(&keeper.epoll, token) {
                        keeper.take_in(received);
                    }
                }
                slot => keeper.listener(slot as u32, event.events()),
            }
        }
        if keeper.supervisor.is_some() && keeper.watched.elapsed() >= tick {
            keeper.watch_supervisor();
        }
    }
    if let Some(file) = &own_file {
        file.remove();
    }
    keeper.drop_agent();
    tracing::info!("nothing left to keep: exiting");
    Ok(0)
}

/// Listens at `path`: a stale socket is replaced, a live keeper refused.
fn listen(path: &Path) -> Result<(OwnedFd, BoundFile)> {
    crate::sys::socket::make_dir(path)?;
    match fd::seqpacket_connect(path) {
        Ok(_) => anyhow::bail!("another keeper is already listening on {}", path.display()),
        // Refused: stale (a keeper that died). A full backlog is a live one.
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {}
        Err(e) => anyhow::bail!("cannot tell whether a keeper listens on {}: {e}", path.display()),
    }
    let _ = std::fs::remove_file(path);
    let socket = fd::seqpacket_listen(path).with_context(|| format!("listening on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok((socket, BoundFile::at(path)))
}

impl Keeper {
    fn accept(&mut self) {
        let Some(listening) = &self.listening else { return };
        let conn = match fd::accept(listening.as_fd(), false) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accept: {e}");
                return;
            }
        };
        // The socket is 0600 in a 0700 directory; this is one more fence.
        match fd::peer(conn.as_fd()) {
            Ok((_, uid)) if uid == 0 || uid == crate::sys::process::euid() => {}
            Ok((pid, uid)) => {
                tracing::warn!("refused pid {pid}: uid {uid} is neither root nor the keeper's");
                return;
            }
            Err(e) => {
                tracing::warn!("refused a peer whose credentials are unknown: {e}");
                return;
            }
        }
        if self.supervisor.is_some() {
            let reason = "another supervisor is attached to this keeper".to_owned();
            let _ = send(conn.as_fd(), &ToSupervisor::Refused { reason }, None);
            return;
        }
        self.attach(conn);
    }

    /// A supervisor connected: it gets the region and every listener; the
    /// keeper stops answering (it is single-threaded: no RECV is under way).
    fn attach(&mut self, conn: OwnedFd) {
        for received in self.intake.finish(&self.epoll, FINISH_LIMIT) {
            self.take_in(received);
        }
        self.intake.unwatch(&self.epoll);
        for kept in self.kept.values_mut() {
            kept.hand_over();
        }
        let sent = (|| -> io::Result<usize> {
            send(conn.as_fd(), &ToSupervisor::Region, Some(self.region.fd()))?;
            for (&slot, kept) in &self.kept {
                if let Some(cell) = self.region.cell(slot) {
                    cell.state.store(slot::IDLE, std::sync::atomic::Ordering::Relaxed);
                }
                let adopt = ToSupervisor::Adopt {
                    slot,
                    record: kept.record.clone(),
                    known: kept.known.all().cloned().collect(),
                    answered: kept.answered,
                };
                send(conn.as_fd(), &adopt, Some(kept.listener.as_fd()))?;
            }
            if let Some(agent) = &self.intake.agent {
                let path = agent.file.path().display().to_string();
                send(conn.as_fd(), &ToSupervisor::Agent { path }, Some(agent.socket.as_fd()))?;
            }
            send(
                conn.as_fd(),
                &ToSupervisor::Ready { answered: self.answered, rescued: self.rescued },
                None,
            )?;
            Ok(self.kept.len())
        })();
        match sent {
            Ok(n) => {
                tracing::info!(
                    "supervisor attached: {n} listeners handed over ({} calls answered, {} rescued meanwhile)",
                    self.answered,
                    self.rescued
                );
                let slots: Vec<u32> = self.kept.keys().copied().collect();
                for slot in slots {
                    self.set_serving(slot, false);
                    if let Some(kept) = self.kept.get_mut(&slot) {
                        kept.answered = 0;
                    }
                }
                self.answered = 0;
                self.rescued = 0;
                if let Err(e) = self.epoll.add(&conn, EpollEvent::new(EpollFlags::EPOLLIN, SUPERVISOR)) {
                    tracing::error!("watching the supervisor's connection: {e}");
                }
                self.supervisor = Some(conn);
                self.had_supervisor = true;
            }
            Err(e) => {
                tracing::warn!("a supervisor connected and went before it had everything: {e}");
                self.intake.watch(&self.epoll);
            }
        }
    }

    /// A listener the keeper received itself: answered until a supervisor
    /// attaches and takes it with the others.
    fn take_in(&mut self, (handoff, runtime): Received) {
        let Some(slot) = (0..crate::sys::region::SLOTS as u32).find(|s| !self.kept.contains_key(s)) else {
            tracing::error!("no free slot: a listener received is dropped");
            return;
        };
        let record = Record::of(&handoff, runtime.as_deref());
        self.kept.insert(slot, Kept::new(Listener::new(handoff.listener), record, false));
        self.set_serving(slot, true);
        tracing::info!(
            "container {:?}: listener received from {} while no supervisor is attached: answered unsignalled until one is",
            handoff.state.state().id(),
            runtime.as_deref().unwrap_or("an unknown program")
        );
    }

    /// Gives up serve's agent socket, and its file unless a supervisor is
    /// attached: serve accepts on it then, and the file is serve's.
    fn drop_agent(&mut self) {
        if let Some(agent) = self.intake.agent.take() {
            self.intake.unwatch(&self.epoll);
            if self.supervisor.is_none() {
                agent.file.remove();
            }
        }
    }

    fn message(&mut self) {
        let Some(conn) = &self.supervisor else { return };
        let mut buf = vec![0u8; MAX_PACKET];
        let mut fds = Vec::new();
        let n = match fd::recv_packet(conn.as_fd(), &mut buf, &mut fds) {
            Ok(0) => return self.supervisor_lost("its connection closed"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!("supervisor: {e}; ignored");
                return;
            }
            Err(e) => return self.supervisor_lost(&e.to_string()),
        };
        let message = match serde_json::from_slice::<ToKeeper>(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("supervisor: a message that is not the keeper's protocol ({e}); ignored");
                return;
            }
        };
        match message {
            ToKeeper::Keep { slot, record } => {
                let Some(listener) = fds.pop().filter(|_| fds.is_empty()) else {
                    tracing::warn!("supervisor: keep {slot} without exactly one fd; ignored");
                    return;
                };
                // A slot is reused only after its listener hung up.
                self.release(slot);
                self.kept.insert(slot, Kept::new(Listener::new(listener), record, false));
            }
            ToKeeper::Release { slot } => self.release(slot),
            ToKeeper::Stopping => self.leaving = true,
            ToKeeper::Known { slot, process } => {
                if let Some(kept) = self.kept.get_mut(&slot) {
                    kept.known.remember(process);
                }
            }
            ToKeeper::Agent { path } => {
                let Some(socket) = fds.pop().filter(|_| fds.is_empty()) else {
                    tracing::warn!("supervisor: agent socket without exactly one fd; ignored");
                    return;
                };
                // serve bound it just now: the file at the path is serve's.
                let file = BoundFile::at(Path::new(&path));
                if let Some(old) = self.intake.agent.take().filter(|old| old.file.path() != file.path()) {
                    old.file.remove();
                }
                self.intake.agent = Some(Agent { file, socket });
            }
            ToKeeper::Region => {
                let Some(memfd) = fds.pop().filter(|_| fds.is_empty() && self.kept.is_empty()) else {
                    tracing::warn!(
                        "supervisor: a region without exactly one fd, or after listeners; ignored"
                    );
                    return;
                };
                match Region::map(memfd) {
                    Ok(region) => self.region = region,
                    Err(e) => tracing::warn!("supervisor: its slot region: {e}; ignored"),
                }
            }
            ToKeeper::GiveBack { slot } => {
                if self.kept.contains_key(&slot) {
                    tracing::warn!("supervisor gave listener {slot} back: answering it from now on");
                    self.rescue(slot);
                }
            }
        }
    }

    /// A listener the keeper answers is in its epoll; one a supervisor
    /// serves is not: even a registration for nothing would put an epoll
    /// callback on every notification's wake-up (measured: +4% on an
    /// unsignalled round trip). The supervisor says when it hangs up.
    pub(super) fn set_serving(&mut self, slot: u32, serving: bool) {
        let Some(kept) = self.kept.get_mut(&slot) else { return };
        if kept.serving == serving {
            return;
        }
        kept.serving = serving;
        let watched = if serving {
            self.epoll.add(&kept.listener, EpollEvent::new(EpollFlags::EPOLLIN, u64::from(slot)))
        } else {
            self.epoll.delete(&kept.listener)
        };
        if let Err(e) = watched {
            tracing::error!("watching listener {slot}: {e}");
        }
    }

    /// Stops holding a listener (closing the keeper's copy).
    fn release(&mut self, slot: u32) {
        if let Some(kept) = self.kept.remove(&slot) {
            if kept.serving {
                let _ = self.epoll.delete(&kept.listener);
            }
        }
    }

    fn listener(&mut self, slot: u32, revents: EpollFlags) {
        let Some(kept) = self.kept.get_mut(&slot) else { return };
        if kept.serving && revents.contains(EpollFlags::EPOLLIN) {
            match kept.listener.recv_once() {
                Ok(notif) => {
                    if let Some(call) = handler_calls().classify(notif.data.arch, notif.data.nr) {
                        kept.observe(&notif, call);
                        if kept.watch.covering.is_some() {
                            // The stuck supervisor's tables miss this change:
                            // it forgets them when it answers again.
                            if let Some(epoch) = self.region.epoch(slot) {
                                epoch.fetch_add(1, std::sync::atomic::Ordering::Release);
                            }
                        }
                    }
                    // The supervisor's answer too (path/response.rs), but
                    // no signal: the keeper never signals.
                    match kept.listener.send_continue(notif.id) {
                        Ok(()) => {
                            kept.answered += 1;
                            self.answered += 1;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => tracing::warn!("listener {slot}: SEND CONTINUE: {e}"),
                    }
                }
                // Interrupted by the tick, or the caller went away.
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => tracing::warn!("listener {slot}: RECV: {e}"),
            }
            return;
        }
        if revents.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            tracing::debug!("listener {slot}: no process uses its filter any more; released");
            self.release(slot);
        }
    }
}

fn send(socket: BorrowedFd<'_>, message: &ToSupervisor, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    fd::send_packet(socket, &bytes, fd)
}
