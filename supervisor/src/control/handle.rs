//! What a listener holds of the Trace that selects it, read on every
//! notification: one atomic load says whether the Trace is started, one
//! more whether the selection changed; the policy and sink are swapped
//! whole, so the path never holds a lock the control plane waits on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::output::events::Sink;
use crate::output::stats::Stats;
use crate::trace::policy::Policy;

/// What listeners of one Trace read on every notification.
pub struct TraceHandle {
    pub name: String,
    active: AtomicBool,
    config: RwLock<Arc<Config>>,
}

/// A Trace's policy and where its events go; replaced whole on apply/start.
pub struct Config {
    pub policy: Arc<Policy>,
    pub sink: Sink,
}

impl TraceHandle {
    pub(super) fn new(name: String, config: Config) -> TraceHandle {
        TraceHandle { name, active: AtomicBool::new(false), config: RwLock::new(Arc::new(config)) }
    }

    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Relaxed: a listener that reads it a moment late acts on (or skips)
    /// one more call, which either state allows.
    pub(super) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    pub(super) fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// Which Trace selects one live listener, and the counters it keeps there.
pub type Selected = (Arc<TraceHandle>, Arc<Mutex<Stats>>);

/// A live listener's place in the registry. Traces applied or deleted while
/// it lives select it anew; the listener notices by `version` (one atomic
/// load per notification) and takes `current`.
#[derive(Default)]
pub struct Selection {
    version: AtomicU64,
    current: Mutex<Option<Selected>>,
}

impl Selection {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Option<Selected> {
        crate::shared::lock(&self.current).clone()
    }

    pub(super) fn set(&self, selected: Option<Selected>) {
        *crate::shared::lock(&self.current) = selected;
        self.version.fetch_add(1, Ordering::Release);
    }
}
