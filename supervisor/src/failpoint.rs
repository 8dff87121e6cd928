//! Failures on purpose, for the tests of what sigvisor does when its own
//! code fails. `SIGVISOR_FAILPOINT=listener-panic:N` makes the Nth
//! notification this process answers panic, once, between its RECV and its
//! answer: the listener must go to the keeper, which answers that call too.
//! Unset, a failpoint costs one load of a value read once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn listener_panic_at() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| {
        let value = std::env::var("SIGVISOR_FAILPOINT").ok()?;
        let n = value.strip_prefix("listener-panic:")?.parse().ok();
        if n.is_none() {
            tracing::warn!("SIGVISOR_FAILPOINT={value:?}: accepted: listener-panic:N");
        }
        n
    })
}

/// Panics at the notification `SIGVISOR_FAILPOINT` names.
#[inline]
pub fn listener_panic() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if let Some(at) = listener_panic_at() {
        if SEEN.fetch_add(1, Ordering::Relaxed) + 1 == at {
            panic!("failpoint listener-panic:{at}");
        }
    }
}
