//! Locking for state shared between listeners and the registry.
//!
//! What sits behind these locks is plain data (counters, a map of Traces, a
//! file handle): if a thread panicked while holding one, the data is still
//! usable, so poisoning is ignored rather than spread to every listener.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
