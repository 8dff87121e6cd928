//! The notification loop: one per listener.
//!
//! Per notification: RECV → decide → signal the calling thread → SEND
//! CONTINUE. The order is forced by the kernel (design.md §4): with
//! WAIT_KILLABLE_RECV, a received notification's caller waits killable
//! only, so a signal sent before CONTINUE stays pending, the syscall runs,
//! and the handler runs at the syscall's return site. Sent after CONTINUE it
//! lands late, possibly in the thread's next trapped syscall; without the
//! flag it interrupts the syscall. `decision` refuses the latter case.
//!
//! Two ways to wait, because they cost differently (design.md §7):
//! - **async**: tokio's `AsyncFd` (epoll). An idle listener costs one task
//!   and no thread, but epoll loses the synchronous wake-up (4x slower per
//!   notification in design.md's C figures, 1.1-1.2x the hot thread in
//!   docs/benchmarks.md).
//! - **hot**: a dedicated thread blocked in RECV on this listener, which
//!   keeps `SYNC_WAKE_UP`'s same-CPU hand-off. A listener that bursts moves
//!   here (bounded by a semaphore: at most a few threads), and returns to
//!   async after a quiet spell.

use std::borrow::Cow;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::caller::{self, Callers};
use crate::decision::{Decider, Decision, Skip};
use crate::events::Describer;
use crate::registry::TraceHandle;
use crate::response::{self, Answered};
use crate::shared;
use crate::signal::{self, SignalError};
use crate::stats::Stats;
use crate::sys::fd;
use crate::sys::seccomp::{Listener, Notification, Readiness, Ticker};

/// How a listener waits for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoopMode {
    /// Async, moving to a dedicated thread while hot (the default).
    Adaptive,
    /// Always async (epoll), never a thread of its own.
    Async,
    /// Always on a dedicated thread.
    Hot,
}

/// A listener is hot after this many notifications within `HOT_WINDOW`.
const HOT_BURST: u32 = 64;
const HOT_WINDOW: Duration = Duration::from_millis(50);
/// A hot listener this long without a notification goes back to async.
const HOT_IDLE: Duration = Duration::from_millis(250);
/// How often a hot thread's RECV is interrupted to look for a hang-up.
const HOT_TICK: Duration = Duration::from_millis(50);

/// Shared by all listeners of a supervisor.
pub struct Context {
    pub mode: LoopMode,
    /// Permits for dedicated hot-listener threads.
    pub hot_threads: Arc<Semaphore>,
}

impl Context {
    /// Hot-listener threads: one per CPU, less the one tokio and the
    /// targets need, at least one.
    pub fn new(mode: LoopMode) -> Arc<Context> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
        Arc::new(Context { mode, hot_threads: Arc::new(Semaphore::new(threads)) })
    }
}

/// Everything one listener needs to answer a notification; moves between
/// the async task and a hot thread together with the listener.
pub struct Handler {
    decider: Decider,
    /// The Trace that selected this listener's container, if any.
    trace: Option<Arc<TraceHandle>>,
    /// Shared with the registry, which shows them in the Trace's status.
    stats: Arc<Mutex<Stats>>,
    describer: Describer,
}

impl Handler {
    /// `runtime_init`: the container init's pid, for a listener an OCI
    /// runtime handed over (its init runs under the filter until it execs).
    pub fn new(
        selected: Option<(Arc<TraceHandle>, Arc<Mutex<Stats>>)>,
        wait_killable: bool,
        watched_signals: u64,
        runtime_init: Option<i32>,
        describer: Describer,
    ) -> Handler {
        let (trace, stats) = match selected {
            Some((trace, stats)) => (Some(trace), stats),
            None => (None, Arc::default()),
        };
        Handler {
            decider: Decider { wait_killable, runtime_init, callers: Callers::new(watched_signals) },
            trace,
            stats,
            describer,
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        shared::lock(&self.stats)
    }

    /// One notification, from RECV to CONTINUE. Call only when `poll` said a
    /// notification waits. Err only if the listener itself is unusable.
    fn serve_one(&mut self, listener: &Listener) -> io::Result<()> {
        match listener.recv() {
            Ok(notif) => self.answer(listener, notif),
            Err(e) => self.recv_failed(e),
        }
    }

    /// RECV's ENOENT: the caller was killed or interrupted before it; not
    /// an error of the listener.
    fn recv_failed(&mut self, e: io::Error) -> io::Result<()> {
        if e.raw_os_error() == Some(libc::ENOENT) {
            self.stats().withdrawn += 1;
            return Ok(());
        }
        Err(e)
    }

    /// A received notification: decide, signal, CONTINUE, count.
    fn answer(&mut self, listener: &Listener, notif: Notification) -> io::Result<()> {
        // sigvisor's own calls (handler changes, execs): recorded, answered,
        // never signalled, whatever the Trace's state.
        if let Some(call) = caller::handler_calls().classify(notif.data.arch, notif.data.nr) {
            self.decider.callers.observe(listener, &notif, call);
            let answered = response::answer(listener, notif.id);
            let mut stats = shared::lock(&self.stats);
            stats.handlers = self.decider.callers.knowledge;
            if let Err(e) = answered {
                stats.error(format_args!("SEND CONTINUE for tid {}: {e}", notif.pid));
            }
            return Ok(());
        }
        let mut stats = shared::lock(&self.stats);
        stats.notified(notif.pid as i32);
        // A stopped or unstarted Trace: one atomic load, then the answer.
        let config = self.trace.as_ref().filter(|t| t.active()).map(|t| t.config());
        let (caller, skipped) = match &config {
            None => (None, Some(if self.trace.is_some() { Skip::NotStarted } else { Skip::NotSelected })),
            Some(config) => match self.decider.decide(&config.policy, listener, &notif) {
                Decision::Signal(caller) => {
                    let signal = config.policy.signal;
                    match signal::signal_caller(listener, &notif, &self.decider.callers, &caller, signal) {
                        Ok(()) => {
                            self.decider.callers.signalled(&caller, signal);
                            stats.signalled(&caller);
                            (Some(caller), None)
                        }
                        Err(SignalError::CallerGone) => {
                            self.decider.callers.forget(caller.tid);
                            (Some(caller), Some(Skip::CallerGone))
                        }
                        Err(SignalError::Os(e)) => {
                            stats.error(format_args!("signalling tid {}: {e}", caller.tid));
                            (Some(caller), Some(Skip::SignalFailed))
                        }
                    }
                }
                Decision::Skip(why, caller) => (caller, Some(why)),
            },
        };
        if let Some(why) = skipped {
            stats.skipped(why, caller.as_ref());
        }
        stats.handlers = self.decider.callers.knowledge;
        let events = config.filter(|c| c.sink.wants_events());
        let pending = events.as_ref().map(|_| self.describer.before_answer(listener, &notif));
        let result: Cow<'static, str> = match response::answer(listener, notif.id) {
            Ok(Answered::Continued) => "continued".into(),
            Ok(Answered::CallerGone) => {
                stats.withdrawn += 1;
                "caller-gone".into()
            }
            Err(e) => {
                stats.error(format_args!("SEND CONTINUE for tid {}: {e}", notif.pid));
                format!("error: {e}").into()
            }
        };
        drop(stats);
        if let (Some(config), Some(pending)) = (events, pending) {
            self.describer.emit(&config.sink, &notif, &pending, caller.as_ref(), skipped, &result);
        }
        Ok(())
    }
}

enum HotEnd {
    Idle,
    Hangup,
}

/// Serves one listener until no task uses its filter any more, and returns
/// what it counted. The listener is closed when this returns.
pub async fn supervise(mut listener: Listener, mut handler: Handler, ctx: Arc<Context>) -> Stats {
    if let Err(e) = listener.enable_sync_wake_up() {
        tracing::debug!("SYNC_WAKE_UP not available (Linux < 6.6?): {e}");
    }
    loop {
        let forced = match ctx.mode {
            LoopMode::Hot => Arc::clone(&ctx.hot_threads).acquire_owned().await.ok(),
            _ => None,
        };
        let permit = match forced {
            Some(permit) => permit,
            None => match run_async(listener, &mut handler, &ctx).await {
                Ok(Some((back, permit))) => {
                    listener = back;
                    permit
                }
                Ok(None) => return handler.stats().clone(),
                Err(e) => {
                    handler.stats().error(format_args!("listener failed: {e}"));
                    return handler.stats().clone();
                }
            },
        };
        let ran = tokio::task::spawn_blocking(move || {
            let end = run_hot(&listener, &mut handler);
            drop(permit);
            (listener, handler, end)
        })
        .await;
        let (back, h, end) = match ran {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("hot listener thread failed: {e}");
                return Stats::default();
            }
        };
        handler = h;
        match end {
            Ok(HotEnd::Idle) => listener = back,
            Ok(HotEnd::Hangup) => return handler.stats().clone(),
            Err(e) => {
                handler.stats().error(format_args!("listener failed: {e}"));
                return handler.stats().clone();
            }
        }
    }
}

/// Waits through tokio until the listener hangs up (`Ok(None)`), or until it
/// is hot and a thread is free for it (`Ok(Some(..))`).
async fn run_async(
    listener: Listener,
    handler: &mut Handler,
    ctx: &Context,
) -> io::Result<Option<(Listener, tokio::sync::OwnedSemaphorePermit)>> {
    let fd = fd::readable(listener)?;
    let mut window = Instant::now();
    let mut burst = 0u32;
    loop {
        let mut guard = fd.readable().await?;
        // Readiness can be stale (a caller interrupted since), and RECV
        // would then block the worker: ask the listener itself first.
        match fd.get_ref().poll(0)? {
            Readiness::Notification => {
                handler.serve_one(fd.get_ref())?;
                burst += 1;
            }
            Readiness::Hangup => return Ok(None),
            Readiness::Idle => {
                guard.clear_ready();
                continue;
            }
        }
        drop(guard);
        if window.elapsed() > HOT_WINDOW {
            window = Instant::now();
            burst = 0;
        } else if burst >= HOT_BURST && ctx.mode == LoopMode::Adaptive {
            burst = 0;
            if let Ok(permit) = Arc::clone(&ctx.hot_threads).try_acquire_owned() {
                tracing::debug!("listener is hot: moving it to a dedicated thread");
                return Ok(Some((fd.into_inner(), permit)));
            }
        }
    }
}

/// The hot loop, on a thread of its own, blocked in RECV itself as a
/// minimal C supervisor is: `SYNC_WAKE_UP` hands the caller's CPU straight
/// to it, with no `poll` before each RECV. RECV cannot tell that the filter
/// has no task left, so a ticker interrupts it now and then (EINTR; no
/// notification is lost), and the loop asks `poll` then.
fn run_hot(listener: &Listener, handler: &mut Handler) -> io::Result<HotEnd> {
    let _ticker = Ticker::start(HOT_TICK)?;
    let mut quiet = Duration::ZERO;
    loop {
        match listener.recv_once() {
            Ok(notif) => {
                quiet = Duration::ZERO;
                handler.answer(listener, notif)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => match listener.poll(0)? {
                Readiness::Notification => {}
                Readiness::Hangup => return Ok(HotEnd::Hangup),
                Readiness::Idle => {
                    quiet += HOT_TICK;
                    if quiet >= HOT_IDLE {
                        return Ok(HotEnd::Idle);
                    }
                }
            },
            // A withdrawn call, or (at once, for ever) a filter no task uses.
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOENT) && listener.poll(0)? == Readiness::Hangup {
                    return Ok(HotEnd::Hangup);
                }
                handler.recv_failed(e)?
            }
        }
    }
}
