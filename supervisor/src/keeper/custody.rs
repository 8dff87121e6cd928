//! One listener's place with the keeper, as the notification path uses
//! it: each notification's id goes to the listener's slot in the shared
//! region when it is received, and the slot says who answers it
//! (keeper/mod.rs, `slot`). Every call here is a store or a compare-and-swap
//! on the answer path; none waits.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::link::Link;
use super::{slot, ToKeeper};
use crate::callers::KnownProcess;
use crate::shared;
use crate::sys::region::{Cell, Received};
use crate::sys::seccomp::{Listener, Notification};

/// One listener's place with the keeper.
#[derive(Clone)]
pub struct Custody {
    pub link: Arc<Link>,
    pub slot: u32,
    pub(super) cell: &'static Cell,
    pub(super) epoch: Option<&'static std::sync::atomic::AtomicU64>,
    pub(super) buffer: Option<&'static Received>,
}

impl Custody {
    /// RECV, into this slot's buffer where the keeper's region has them.
    #[inline]
    pub fn recv_once(&self, listener: &Listener) -> io::Result<Notification> {
        let received = match self.buffer {
            Some(buffer) => listener.recv_into(buffer),
            None => listener.recv_once(),
        };
        if received.is_ok() {
            crate::failpoint::after_recv();
        }
        received
    }

    /// The notification received is a call the Trace may signal, or
    /// bookkeeping: the keeper answers it if this supervisor dies before it
    /// does (by the id the kernel wrote to the region, or, for a keeper of
    /// an earlier version, by the id stored here).
    #[inline]
    pub fn received(&self, id: u64, bookkeeping: bool) {
        if self.buffer.is_none() {
            self.cell.id.store(id, Ordering::Relaxed);
        }
        let state = if bookkeeping { slot::BOOKKEEPING } else { slot::CALL };
        // Unless the keeper took it (covering for this supervisor while it
        // was stuck, between its RECV and here): then `signalling` fails.
        let _ = self
            .cell
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now != slot::TAKEN).then_some(state));
    }

    /// About to signal the caller: false if the keeper took the call over
    /// (this supervisor was stuck), and then no signal may be sent. Exactly
    /// one of the two wins the slot.
    #[inline]
    pub fn signalling(&self, signal: i32) -> bool {
        if let Some(buffer) = self.buffer {
            buffer.signal.store(signal as u64, Ordering::Relaxed);
        }
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
        let mut inner = shared::lock(&self.link.inner);
        for process in processes {
            inner.send(&ToKeeper::Known { slot: self.slot, process: process.clone() }, None);
            if let Some(copy) = inner.kept.get_mut(&self.slot) {
                copy.known.remember(process);
            }
        }
    }

    /// The listener is done with: its filter has no task left.
    pub fn release(self) {
        let mut inner = shared::lock(&self.link.inner);
        inner.send(&ToKeeper::Release { slot: self.slot }, None);
        inner.kept.remove(&self.slot);
    }

    /// This supervisor can no longer serve the listener: the keeper answers
    /// it from now on.
    pub fn give_back(self) {
        let mut inner = shared::lock(&self.link.inner);
        inner.send(&ToKeeper::GiveBack { slot: self.slot }, None);
        if let Some(copy) = inner.kept.get_mut(&self.slot) {
            copy.given_back = true;
        }
    }
}
