//! Failures on purpose, for the tests of what sigvisor does when its own
//! code fails. `SIGVISOR_FAILPOINT=` one of:
//! - `listener-panic:N`: the Nth notification this process answers panics,
//!   once, between its RECV and its answer: the listener must go to the
//!   keeper, which answers that call too;
//! - `kill-after-recv:N`: the process SIGKILLs itself right after the Nth
//!   RECV returns, before anything else of that notification is done: the
//!   keeper must find and answer it.
//!
//! Unset, a failpoint costs one load of a value read once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Point {
    ListenerPanic,
    KillAfterRecv,
}

fn configured() -> Option<(Point, u64)> {
    static AT: OnceLock<Option<(Point, u64)>> = OnceLock::new();
    *AT.get_or_init(|| {
        let value = std::env::var("SIGVISOR_FAILPOINT").ok()?;
        let parsed = [("listener-panic:", Point::ListenerPanic), ("kill-after-recv:", Point::KillAfterRecv)]
            .iter()
            .find_map(|(prefix, point)| Some((*point, value.strip_prefix(prefix)?.parse().ok()?)));
        if parsed.is_none() {
            tracing::warn!("SIGVISOR_FAILPOINT={value:?}: accepted: listener-panic:N, kill-after-recv:N");
        }
        parsed
    })
}

/// Whether this is the Nth time `point` is passed.
#[inline]
fn fires(point: Point, seen: &AtomicU64) -> Option<u64> {
    let (configured, at) = configured()?;
    (configured == point && seen.fetch_add(1, Ordering::Relaxed) + 1 == at).then_some(at)
}

/// Panics at the notification `SIGVISOR_FAILPOINT` names.
#[inline]
pub fn listener_panic() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if let Some(at) = fires(Point::ListenerPanic, &SEEN) {
        panic!("failpoint listener-panic:{at}");
    }
}

/// Dies by SIGKILL right after the RECV `SIGVISOR_FAILPOINT` names.
#[inline]
pub fn after_recv() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if fires(Point::KillAfterRecv, &SEEN).is_some() {
        crate::sys::process::kill_self();
    }
}
