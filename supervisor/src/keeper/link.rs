//! The supervisor's side of the keeper: connect (starting a keeper if none
//! listens), take back what it holds, then give it a copy of every new
//! listener and what is learnt of its processes' handlers.
//!
//! Every message to the keeper is one small packet on a blocking socket,
//! sent where the news is made: a new listener (once per container) and a
//! handler change (a few per process, at its start). The notification path
//! only stores ids in its slot.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sigvisor_proto::Handoff;

use super::{slot, Record, ToKeeper, ToSupervisor, MAX_PACKET};
use crate::caller::KnownProcess;
use crate::shared;
use crate::sys::fd::{self, SockType};
use crate::sys::region::{Cell, Region, SLOTS};

/// How long a keeper just started has to listen.
const START_LIMIT: Duration = Duration::from_secs(5);

pub struct Link {
    socket: OwnedFd,
    region: Region,
    /// Slots in use (by listeners this supervisor serves or adopted).
    used: Mutex<Vec<bool>>,
    /// Said once: the keeper is gone, listeners are no longer kept.
    broken: AtomicBool,
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

/// One listener's place with the keeper.
#[derive(Clone)]
pub struct Custody {
    pub link: Arc<Link>,
    pub slot: u32,
    cell: &'static Cell,
    epoch: Option<&'static std::sync::atomic::AtomicU64>,
}

impl Custody {
    /// A notification was received: the keeper answers `id` if this
    /// supervisor dies before it does.
    #[inline]
    pub fn received(&self, id: u64, bookkeeping: bool) {
        self.cell.id.store(id, Ordering::Relaxed);
        let state = if bookkeeping { slot::BOOKKEEPING } else { slot::CALL };
        self.cell.state.store(state, Ordering::Release);
    }

    /// About to signal the caller: false if the keeper took the call over
    /// (this supervisor was stuck), and then no signal may be sent. Exactly
    /// one of the two wins the slot.
    #[inline]
    pub fn signalling(&self) -> bool {
        self.cell
            .state
            .compare_exchange(slot::CALL, slot::SIGNALLING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The signal was sent (or failed): the keeper may answer again.
    #[inline]
    pub fn signal_done(&self) {
        let _ = self.cell.state.compare_exchange(
            slot::SIGNALLING,
            slot::CALL,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// It was answered.
    #[inline]
    pub fn answered(&self) {
        self.cell.state.store(slot::IDLE, Ordering::Release);
    }

    /// How often the keeper answered handler changes for this supervisor
    /// while it was stuck: when it changes, what the supervisor knows of
    /// its processes' handlers may be out of date.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// What is known now of these processes' handlers, for a successor.
    pub fn known(&self, processes: Vec<KnownProcess>) {
        for process in processes {
            self.link.send(&ToKeeper::Known { slot: self.slot, process }, None);
        }
    }

    /// The listener is done with: its filter has no task left.
    pub fn release(self) {
        self.link.send(&ToKeeper::Release { slot: self.slot }, None);
        if let Some(used) = shared::lock(&self.link.used).get_mut(self.slot as usize) {
            *used = false;
        }
    }

    /// This supervisor can no longer serve the listener: the keeper answers
    /// it from now on.
    pub fn give_back(self) {
        self.link.send(&ToKeeper::GiveBack { slot: self.slot }, None);
    }
}

impl Link {
    /// Connects to the keeper at `path`, starting one (detached, logging to
    /// `log`) if none listens; takes what it held.
    pub fn connect(path: &Path, log: &Path, answer_within: Duration) -> Result<Taken> {
        let socket = match fd::seqpacket_connect(path) {
            Ok(socket) => socket,
            Err(_) => {
                spawn_keeper(path, log, answer_within)?;
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
        Link::handshake(socket).with_context(|| format!("taking over from the keeper at {}", path.display()))
    }

    /// A keeper of this supervisor's own over a socket pair (`sigvisor
    /// run`): it lives until the supervisor is gone and its listeners too.
    pub fn private() -> Result<Arc<Link>> {
        let (ours, theirs) = fd::socketpair_for_child(SockType::SeqPacket).context("socketpair")?;
        let exe = std::env::current_exe().context("finding sigvisor's own binary")?;
        let mut command = Command::new(exe);
        command
            .args(["keeper", "--exit-when-idle", "--fd"])
            .arg(std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // It shares run's terminal: only its warnings, unless asked.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        crate::sys::process::new_session(&mut command);
        command.spawn().context("starting the keeper")?;
        drop(theirs);
        Ok(Link::handshake(ours)?.link)
    }

    /// Receives the region and every listener, up to `Ready`.
    fn handshake(socket: OwnedFd) -> Result<Taken> {
        let mut region = None;
        let mut adopted = Vec::new();
        let mut agent = None;
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
                    let fd = fds.pop().context("the region came without its memfd")?;
                    region = Some(Region::map(fd).context("mapping the slot region")?);
                }
                ToSupervisor::Adopt { slot, record, known, answered } => {
                    let fd = fds.pop().context("a listener came without its fd")?;
                    match sigvisor_proto::decode(record.state.as_bytes(), vec![fd]) {
                        Ok(handoff) => {
                            adopted.push(Adopted { handoff, runtime: record.runtime, slot, known, answered })
                        }
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
                    break;
                }
                ToSupervisor::Agent { path } => {
                    let fd = fds.pop().context("the agent socket came without its fd")?;
                    agent = Some((PathBuf::from(path), fd));
                }
                ToSupervisor::Refused { reason } => bail!("{reason}"),
            }
        }
        let region = region.context("the keeper sent no slot region")?;
        let mut used = vec![false; SLOTS];
        for a in &adopted {
            if let Some(u) = used.get_mut(a.slot as usize) {
                *u = true;
            }
        }
        let link = Link { socket, region, used: Mutex::new(used), broken: AtomicBool::new(false) };
        Ok(Taken { link: Arc::new(link), adopted, agent })
    }

    /// Gives the keeper a copy of a new listener; None if it cannot keep it
    /// (no free slot, or the keeper is gone): then it is served unkept.
    pub fn keep(self: &Arc<Link>, handoff: &Handoff, runtime: Option<&str>) -> Option<Custody> {
        let slot = {
            let mut used = shared::lock(&self.used);
            let free = used.iter().position(|u| !u)?;
            used[free] = true;
            free as u32
        };
        let record = Record::of(handoff, runtime);
        if !self.send(&ToKeeper::Keep { slot, record }, Some(&handoff.listener)) {
            return None;
        }
        self.custody(slot)
    }

    /// Tells the keeper this supervisor stops on purpose.
    pub fn stopping(&self) {
        self.send(&ToKeeper::Stopping, None);
    }

    /// Gives the keeper a copy of serve's listening agent socket, so that it
    /// outlives this process. False if the keeper is gone.
    pub fn give_agent(&self, path: &Path, socket: BorrowedFd<'_>) -> bool {
        let message = ToKeeper::Agent { path: path.display().to_string() };
        match serde_json::to_vec(&message) {
            Ok(bytes) => fd::send_packet(self.socket.as_fd(), &bytes, Some(socket)).is_ok(),
            Err(_) => false,
        }
    }

    /// The custody of a listener adopted from the keeper.
    pub fn custody(self: &Arc<Link>, slot: u32) -> Option<Custody> {
        let cell = self.region.cell(slot)?;
        Some(Custody { link: Arc::clone(self), slot, cell, epoch: self.region.epoch(slot) })
    }

    fn send(&self, message: &ToKeeper, fd: Option<&OwnedFd>) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let sent = serde_json::to_vec(message)
            .map_err(io::Error::other)
            .and_then(|bytes| fd::send_packet(self.socket.as_fd(), &bytes, fd.map(|f| f.as_fd())));
        if let Err(e) = sent {
            if !self.broken.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "the keeper is gone ({e}): listeners are no longer kept, and if sigvisor stops \
                     now their calls fail; restart sigvisor to start a new keeper"
                );
            }
            return false;
        }
        true
    }
}

/// Starts `sigvisor keeper` for `path` in a session of its own, so that
/// nothing aimed at the supervisor (its process group's signals, a
/// terminal's hang-up) reaches it.
fn spawn_keeper(path: &Path, log: &Path, answer_within: Duration) -> Result<()> {
    let exe = std::env::current_exe().context("finding sigvisor's own binary")?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the keeper's log {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .args(["keeper", "--exit-when-idle", "--socket"])
        .arg(PathBuf::from(path))
        .arg("--answer-within")
        .arg(answer_within.as_secs_f64().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    crate::sys::process::new_session(&mut command);
    command.spawn().context("starting the keeper")?;
    tracing::info!("started a keeper on {} (log: {})", path.display(), log.display());
    Ok(())
}
