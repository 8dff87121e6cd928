//! The supervisor's side of the keeper: connect (starting a keeper if none
//! listens), take back what it holds, then give it a copy of every new
//! listener and what is learnt of its processes' handlers.
//!
//! Every message to the keeper is one small packet on a blocking socket,
//! sent where the news is made: a new listener (once per container) and a
//! handler change (a few per process, at its start). The notification path
//! only writes to its slot.
//!
//! The supervisor keeps what it told the keeper (a copy of each listener,
//! its record, what is known of its processes), so that a keeper that dies
//! is replaced at once by one that gets all of it again: killing the
//! keeper, then the supervisor, loses no listener.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sigvisor_proto::Handoff;

use super::custody::Custody;
use super::{Known, Record, ToKeeper, ToSupervisor, MAX_PACKET};
use crate::callers::KnownProcess;
use crate::shared;
use crate::sys::fd::{self, SockType};
use crate::sys::process::ProcessFd;
use crate::sys::region::{Region, SLOTS};

/// How long a keeper just started has to listen.
const START_LIMIT: Duration = Duration::from_secs(5);

/// How often starting a keeper in place of one that died is tried again
/// when it fails.
const RETRY: Duration = Duration::from_secs(2);

/// How long a message to the keeper may wait for room in its socket: a
/// keeper that takes none for this long (stopped, wedged) must not hold up
/// the calls whose news it is, so it is killed and replaced.
const SEND_LIMIT: Duration = Duration::from_secs(1);

pub struct Link {
    region: Region,
    pub(super) inner: Mutex<Inner>,
    /// How its keeper is started, again when it dies.
    spawn: Spawn,
    /// The supervisor is stopping on purpose: a keeper gone now is not
    /// replaced.
    stopping: AtomicBool,
}

/// What the keeper was told, under one lock: every message is sent under
/// it, and a replacement keeper is told it all again under it.
pub(super) struct Inner {
    /// None while the keeper is gone and not replaced yet.
    pub(super) socket: Option<OwnedFd>,
    /// By slot, every listener the keeper holds a copy of.
    pub(super) kept: BTreeMap<u32, Told>,
    /// serve's listening agent socket, which the keeper holds too.
    pub(super) agent: Option<(PathBuf, OwnedFd)>,
    /// The keeper, where this process started it: reaped once it died.
    pub(super) child: Option<std::process::Child>,
    /// A keeper an earlier serve started, by a pidfd: killed when it is
    /// replaced for taking no message.
    pub(super) process: Option<ProcessFd>,
    /// It took no message within `SEND_LIMIT`.
    pub(super) wedged: bool,
}

/// One listener as the keeper was told of it.
pub(super) struct Told {
    pub(super) listener: Option<OwnedFd>,
    pub(super) record: Record,
    pub(super) known: Known,
    /// Given back: the keeper answers it.
    pub(super) given_back: bool,
}

/// How a keeper is started for this supervisor.
#[derive(Clone)]
struct Spawn {
    /// serve's keeper listens here (for the serve after this one); run's
    /// has none.
    socket: Option<PathBuf>,
    /// Its stderr; run's shares run's.
    log: Option<PathBuf>,
    answer_within: Duration,
}

/// A listener taken back from the keeper.
pub struct Adopted {
    pub handoff: Handoff,
    pub runtime: Option<String>,
    pub slot: u32,
    pub known: Vec<KnownProcess>,
    /// Calls the keeper answered for it while no supervisor was attached.
    pub answered: u64,
}

/// What a supervisor takes over from the keeper when it connects.
pub struct Taken {
    pub link: Arc<Link>,
    pub adopted: Vec<Adopted>,
    /// The agent socket the keeper held (its path and listening socket).
    pub agent: Option<(PathBuf, OwnedFd)>,
}

impl Link {
    /// Connects to the keeper at `path`, starting one (detached, logging to
    /// `log`) if none listens; takes what it held.
    pub fn connect(path: &Path, log: &Path, answer_within: Duration) -> Result<Taken> {
        let spawn = Spawn { socket: Some(path.to_owned()), log: Some(log.to_owned()), answer_within };
        let mut child = None;
        let socket = match fd::seqpacket_connect(path) {
            Ok(socket) => socket,
            Err(_) => {
                child = Some(spawn.start(None)?);
                let deadline = Instant::now() + START_LIMIT;
                loop {
                    match fd::seqpacket_connect(path) {
                        Ok(socket) => break socket,
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                        Err(e) => bail!(
                            "the keeper started for {} did not listen within {START_LIMIT:?} ({e}); see {}",
                            path.display(),
                            log.display()
                        ),
                    }
                }
            }
        };
        let taken = Link::handshake(socket, child, spawn)
            .with_context(|| format!("taking over from the keeper at {}", path.display()))?;
        Link::watch(&taken.link);
        Ok(taken)
    }

    /// A keeper of this supervisor's own over a socket pair (`sigvisor
    /// run`): it lives until the supervisor is gone and its listeners too.
    pub fn private() -> Result<Arc<Link>> {
        let spawn = Spawn { socket: None, log: None, answer_within: super::hold::ANSWER_WITHIN };
        let (socket, child) = spawn.start_connected()?;
        let link = Link::handshake(socket, Some(child), spawn)?.link;
        Link::watch(&link);
        Ok(link)
    }

    /// Receives the region and every listener, up to `Ready`.
    fn handshake(socket: OwnedFd, child: Option<std::process::Child>, spawn: Spawn) -> Result<Taken> {
        let Holdings { region, adopted, agent } = Holdings::receive(&socket)?;
        let region = Region::map(region.context("the keeper sent no slot region")?)
            .context("mapping the slot region")?;
        let mut kept = BTreeMap::new();
        for a in &adopted {
            let copy = Told {
                listener: a.handoff.listener.try_clone().ok(),
                record: Record::of(&a.handoff, a.runtime.as_deref()),
                known: a.known.iter().cloned().fold(Known::default(), |mut k, p| {
                    k.remember(p);
                    k
                }),
                given_back: false,
            };
            kept.insert(a.slot, copy);
        }
        let agent_copy = agent.as_ref().and_then(|(path, fd)| Some((path.clone(), fd.try_clone().ok()?)));
        let process = keeper_process(&socket, child.as_ref());
        fd::send_timeout(socket.as_fd(), SEND_LIMIT)?;
        let inner = Inner { socket: Some(socket), kept, agent: agent_copy, child, process, wedged: false };
        let link = Link { region, inner: Mutex::new(inner), spawn, stopping: AtomicBool::new(false) };
        Ok(Taken { link: Arc::new(link), adopted, agent })
    }

    /// Gives the keeper a copy of a new listener; None if it cannot keep it
    /// (no free slot, or the keeper is gone): then it is served unkept.
    pub fn keep(self: &Arc<Link>, handoff: &Handoff, runtime: Option<&str>) -> Option<Custody> {
        let mut inner = shared::lock(&self.inner);
        let slot = (0..SLOTS as u32).find(|s| !inner.kept.contains_key(s))?;
        let record = Record::of(handoff, runtime);
        if !inner.send(&ToKeeper::Keep { slot, record: record.clone() }, Some(handoff.listener.as_fd())) {
            return None;
        }
        let copy = Told {
            listener: handoff.listener.try_clone().ok(),
            record,
            known: Known::default(),
            given_back: false,
        };
        inner.kept.insert(slot, copy);
        drop(inner);
        self.custody(slot)
    }

    /// Tells the keeper this supervisor stops on purpose.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        shared::lock(&self.inner).send(&ToKeeper::Stopping, None);
    }

    /// Gives the keeper a copy of serve's listening agent socket, so that it
    /// outlives this process. False if the keeper is gone.
    pub fn give_agent(&self, path: &Path, socket: BorrowedFd<'_>) -> bool {
        let mut inner = shared::lock(&self.inner);
        if !inner.send(&ToKeeper::Agent { path: path.display().to_string() }, Some(socket)) {
            return false;
        }
        inner.agent = socket.try_clone_to_owned().ok().map(|fd| (path.to_owned(), fd));
        true
    }

    /// The custody of a listener adopted from the keeper.
    pub fn custody(self: &Arc<Link>, slot: u32) -> Option<Custody> {
        let cell = self.region.cell(slot)?;
        Some(Custody {
            link: Arc::clone(self),
            slot,
            cell,
            epoch: self.region.epoch(slot),
            buffer: self.region.received(slot),
        })
    }

    /// Watches the keeper's connection on a thread of its own: the keeper
    /// never writes after `Ready`, so the socket turns readable only when
    /// the keeper is gone (EOF), and then another is started in its place.
    fn watch(link: &Arc<Link>) {
        let link = Arc::clone(link);
        let spawned = std::thread::Builder::new().name("keeper-watch".into()).spawn(move || loop {
            let watched = shared::lock(&link.inner).socket.as_ref().and_then(|s| s.try_clone().ok());
            if let Some(socket) = watched {
                let mut fds = [nix::poll::PollFd::new(socket.as_fd(), nix::poll::PollFlags::POLLIN)];
                if matches!(
                    nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE),
                    Err(nix::errno::Errno::EINTR)
                ) {
                    continue;
                }
            }
            if link.stopping.load(Ordering::Relaxed) {
                return;
            }
            if !link.replace() {
                std::thread::sleep(RETRY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("watching the keeper: {e}; a keeper that dies is not replaced");
        }
    }

    /// Starts a keeper in place of one that died and tells it everything
    /// again: this supervisor's region, every listener with its record and
    /// known processes (given back ones as given back), the agent socket.
    fn replace(&self) -> bool {
        let mut inner = shared::lock(&self.inner);
        // Its connection ended: it died, or it took no message (stopped,
        // wedged) and is killed, which it survives in no state that
        // matters (attached, it answers nothing), then reaped if it is this
        // process's child. One that closed the connection itself (never
        // seen) would be answering on its own: it is left alone.
        let wedged = std::mem::take(&mut inner.wedged);
        let process = inner.process.take();
        let mut child = inner.child.take();
        if wedged {
            // A child by its pid (not reaped, it cannot be reused).
            let _ = match (&mut child, &process) {
                (Some(child), _) => child.kill(),
                (None, Some(process)) => process.kill(),
                (None, None) => Ok(()),
            };
        }
        if let Some(mut child) = child {
            // A dying process closes its fds before it can be reaped.
            let deadline = Instant::now() + Duration::from_secs(1);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if inner.socket.take().is_some() {
            tracing::error!(
                "the keeper is gone: starting another, with a copy of each of the {} listeners",
                inner.kept.len()
            );
        }
        let told = self.spawn.start_connected().and_then(|(socket, child)| {
            inner.child = Some(child);
            let holdings = Holdings::receive(&socket)?;
            fd::send_timeout(socket.as_fd(), SEND_LIMIT)?;
            if !holdings.adopted.is_empty() {
                bail!("the new keeper holds listeners already");
            }
            inner.socket = Some(socket);
            let told = inner.tell_all(self.region.fd());
            if !told {
                inner.socket = None;
                bail!("it went before it had everything");
            }
            Ok(())
        });
        match told {
            Ok(()) => {
                tracing::info!("a new keeper holds a copy of each of the {} listeners", inner.kept.len());
                true
            }
            Err(e) => {
                tracing::error!(
                    "starting a keeper in place of the one that died: {e:#}; listeners are not kept \
                     (if sigvisor stops now their calls fail); trying again in {RETRY:?}"
                );
                false
            }
        }
    }
}

/// What a keeper sends a supervisor that attaches.
struct Holdings {
    region: Option<OwnedFd>,
    adopted: Vec<Adopted>,
    agent: Option<(PathBuf, OwnedFd)>,
}

impl Holdings {
    /// Everything up to `Ready`, within `START_LIMIT` for each message: a
    /// keeper that hangs must not hang its supervisor (which, replacing a
    /// keeper, holds the link's lock meanwhile).
    fn receive(socket: &OwnedFd) -> Result<Holdings> {
        fd::receive_timeout(socket.as_fd(), Some(START_LIMIT))?;
        let holdings = Holdings::receive_all(socket)?;
        fd::receive_timeout(socket.as_fd(), None)?;
        Ok(holdings)
    }

    fn receive_all(socket: &OwnedFd) -> Result<Holdings> {
        let mut holdings = Holdings { region: None, adopted: Vec::new(), agent: None };
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let mut fds = Vec::new();
            let n = fd::recv_packet(socket.as_fd(), &mut buf, &mut fds)?;
            if n == 0 {
                bail!("the keeper closed the connection");
            }
            let message: ToSupervisor =
                serde_json::from_slice(&buf[..n]).context("a message from the keeper")?;
            match message {
                ToSupervisor::Region => {
                    holdings.region = Some(fds.pop().context("the region came without its memfd")?);
                }
                ToSupervisor::Adopt { slot, record, known, answered } => {
                    let fd = fds.pop().context("a listener came without its fd")?;
                    match sigvisor_proto::decode(record.state.as_bytes(), vec![fd]) {
                        Ok(handoff) => holdings.adopted.push(Adopted {
                            handoff,
                            runtime: record.runtime,
                            slot,
                            known,
                            answered,
                        }),
                        // Dropping it is safe: the keeper still holds it.
                        Err(e) => tracing::error!("listener {slot} from the keeper: {e}; left to the keeper"),
                    }
                }
                ToSupervisor::Ready { answered, rescued } => {
                    if answered + rescued > 0 {
                        tracing::info!(
                            "the keeper answered {answered} calls while no supervisor was attached, \
                             {rescued} of them received by the one before"
                        );
                    }
                    return Ok(holdings);
                }
                ToSupervisor::Agent { path } => {
                    let fd = fds.pop().context("the agent socket came without its fd")?;
                    holdings.agent = Some((PathBuf::from(path), fd));
                }
                ToSupervisor::Refused { reason } => bail!("{reason}"),
            }
        }
    }
}

impl Inner {
    /// Sends one message; false, and said once, if the keeper is gone.
    pub(super) fn send(&mut self, message: &ToKeeper, fd: Option<BorrowedFd<'_>>) -> bool {
        let Some(socket) = &self.socket else { return false };
        let sent = serde_json::to_vec(message)
            .map_err(io::Error::other)
            .and_then(|bytes| fd::send_packet(socket.as_fd(), &bytes, fd));
        if let Err(e) = sent {
            self.wedged = e.kind() == io::ErrorKind::WouldBlock;
            if self.wedged {
                tracing::error!(
                    "the keeper took no message for {SEND_LIMIT:?} (stopped? wedged?): it is replaced"
                );
            } else {
                tracing::error!("the keeper is gone ({e}): listeners are not kept until another is started");
            }
            // Seen at once by the thread that watches the connection.
            fd::shut_down(socket.as_fd());
            self.socket = None;
            return false;
        }
        true
    }

    /// Tells a new keeper everything the last one was told.
    fn tell_all(&mut self, region: BorrowedFd<'_>) -> bool {
        if !self.send(&ToKeeper::Region, Some(region)) {
            return false;
        }
        let kept = std::mem::take(&mut self.kept);
        for (&slot, copy) in &kept {
            let Some(listener) = &copy.listener else { continue };
            let _ = self.send(&ToKeeper::Keep { slot, record: copy.record.clone() }, Some(listener.as_fd()))
                && copy.known.all().all(|p| self.send(&ToKeeper::Known { slot, process: p.clone() }, None))
                && (!copy.given_back || self.send(&ToKeeper::GiveBack { slot }, None));
        }
        self.kept = kept;
        if let Some((path, socket)) = self.agent.take() {
            self.send(&ToKeeper::Agent { path: path.display().to_string() }, Some(socket.as_fd()));
            self.agent = Some((path, socket));
        }
        self.socket.is_some()
    }
}

impl Spawn {
    /// Starts `sigvisor keeper` in a session of its own, so that nothing
    /// aimed at the supervisor (its process group's signals, a terminal's
    /// hang-up) reaches it: connected to this process on `connection` if
    /// given, listening on `socket` if any.
    fn start(&self, connection: Option<&OwnedFd>) -> Result<std::process::Child> {
        let exe = std::env::current_exe().context("finding sigvisor's own binary")?;
        let mut command = Command::new(exe);
        command.args(["keeper", "--exit-when-idle", "--answer-within"]);
        command.arg(self.answer_within.as_secs_f64().to_string());
        if let Some(socket) = &self.socket {
            command.arg("--socket").arg(socket);
        }
        if let Some(fd) = connection {
            command.arg("--fd").arg(std::os::fd::AsRawFd::as_raw_fd(fd).to_string());
        }
        command.stdin(Stdio::null()).stdout(Stdio::null());
        match &self.log {
            // A keeper without its log (a full or read-only disk) is
            // better than no keeper.
            Some(log) => match open_log(log) {
                Ok(file) => {
                    command.stderr(file);
                }
                Err(e) => {
                    tracing::warn!("the keeper's log {}: {e}; it logs nowhere", log.display());
                    command.stderr(Stdio::null());
                }
            },
            // It shares run's terminal: only its warnings, unless asked.
            None if std::env::var_os("RUST_LOG").is_none() => {
                command.env("RUST_LOG", "warn");
            }
            None => {}
        }
        crate::sys::process::new_session(&mut command);
        let child = command.spawn().context("starting the keeper")?;
        match (&self.socket, &self.log) {
            (Some(path), Some(log)) => {
                tracing::info!("started a keeper on {} (log: {})", path.display(), log.display())
            }
            _ => tracing::debug!("started a keeper"),
        }
        Ok(child)
    }

    /// Starts a keeper connected to this process over a socket pair.
    fn start_connected(&self) -> Result<(OwnedFd, std::process::Child)> {
        let (ours, theirs) = fd::socketpair_for_child(SockType::SeqPacket).context("socketpair")?;
        let child = self.start(Some(&theirs))?;
        Ok((ours, child))
    }
}

/// The keeper behind `socket`, where it is not this process's child: the
/// peer that listens there.
fn keeper_process(socket: &OwnedFd, child: Option<&std::process::Child>) -> Option<ProcessFd> {
    match child {
        Some(_) => None,
        None => ProcessFd::open(fd::peer(socket.as_fd()).ok()?.0).ok(),
    }
}

fn open_log(log: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(log)
}
