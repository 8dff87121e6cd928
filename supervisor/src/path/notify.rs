//! The notification loop: one per listener, and how it waits. What it does
//! with each notification is `pipeline.rs`.
//!
//! Two ways to wait, because they cost differently
//! (docs/design.md#how-a-listener-waits):
//! - **async**: tokio's `AsyncFd` (epoll). An idle listener costs one task
//!   and no thread, but epoll loses the synchronous wake-up (3x to 8x the
//!   hot thread's cost per notification in docs/benchmarks.md).
//! - **hot**: a dedicated thread blocked in RECV on this listener, which
//!   keeps `SYNC_WAKE_UP`'s same-CPU hand-off. A listener that bursts moves
//!   here (bounded by a semaphore: at most a few threads), and returns to
//!   async after a quiet spell.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::output::stats::Stats;
use crate::path::pipeline::Pipeline;
use crate::sys::fd;
use crate::sys::seccomp::{Listener, Readiness, Ticker};

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

enum HotEnd {
    Idle,
    Hangup,
}

/// Why a listener's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// No task uses its filter any more.
    Hangup,
    /// The listener failed, or the loop did: its calls still need answers.
    Failed,
}

/// Serves one listener until no task uses its filter any more, or until it
/// fails; returns what it counted and why it ended. The listener is closed
/// when this returns.
pub async fn supervise(mut listener: Listener, mut handler: Pipeline, ctx: Arc<Context>) -> (Stats, End) {
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
                Ok(None) => return (handler.stats(), End::Hangup),
                Err(e) => {
                    handler.listener_failed(&e);
                    return (handler.stats(), End::Failed);
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
                return (Stats::default(), End::Failed);
            }
        };
        handler = h;
        match end {
            Ok(HotEnd::Idle) => listener = back,
            Ok(HotEnd::Hangup) => return (handler.stats(), End::Hangup),
            Err(e) => {
                handler.listener_failed(&e);
                return (handler.stats(), End::Failed);
            }
        }
    }
}

/// Waits through tokio until the listener hangs up (`Ok(None)`), or until it
/// is hot and a thread is free for it (`Ok(Some(..))`).
async fn run_async(
    listener: Listener,
    handler: &mut Pipeline,
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
fn run_hot(listener: &Listener, handler: &mut Pipeline) -> io::Result<HotEnd> {
    let _ticker = Ticker::start(HOT_TICK)?;
    let mut quiet = Duration::ZERO;
    loop {
        match handler.recv_once(listener) {
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
