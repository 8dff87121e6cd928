//! Rescue: the keeper answers the calls a supervisor leaves, every call of
//! one that died (`supervisor_lost`, `rescue`) and those a live but stuck
//! one leaves waiting past `answer_within` (`watch_supervisor`). Exactly
//! one of the two answers each call: they race for its slot in the shared
//! region (keeper/mod.rs, `slot`), and the rules of that race (`take_slot`)
//! and of "stuck" (`Watch::step`) are pure, tested here without a kernel.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::hold::Keeper;
use super::slot;

/// Whether a supervisor attached to a listener is stuck on it.
#[derive(Debug, Default)]
pub struct Watch {
    /// Its slot as last seen busy (a call received and not answered, or
    /// one waiting to be received): the id, and since when it has not moved.
    busy: Option<(u64, Instant)>,
    /// The keeper answers for it; the slot's id when that began (the id
    /// moves once the supervisor answers again).
    pub covering: Option<u64>,
}

/// What a look at a slot found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing waits, or not for long yet.
    Fine,
    /// The same call has waited this long: the keeper covers from now on.
    Stuck(Duration),
    /// The keeper covers, and the supervisor is still stuck.
    Covering,
    /// The supervisor answered again: the keeper stops covering.
    Resumed,
}

impl Watch {
    /// One look at the slot: its last id, and whether it is idle with
    /// nothing waiting to be received.
    pub fn step(&mut self, id: u64, idle: bool, now: Instant, threshold: Duration) -> Step {
        if let Some(covered) = self.covering {
            if id == covered {
                return Step::Covering;
            }
            *self = Watch::default();
            return Step::Resumed;
        }
        if idle {
            self.busy = None;
            return Step::Fine;
        }
        match self.busy {
            Some((seen, since)) if seen == id => {
                let waited = now.saturating_duration_since(since);
                if waited < threshold {
                    return Step::Fine;
                }
                self.covering = Some(id);
                Step::Stuck(waited)
            }
            _ => {
                self.busy = Some((id, now));
                Step::Fine
            }
        }
    }
}

/// Takes a stuck supervisor's slot for the keeper, which may then answer
/// its call: from any state but SIGNALLING, and from SIGNALLING only once
/// the signal is out (`signal_sent`), or it could land after the call
/// returned. TAKEN stops the supervisor, resumed, from signalling a call
/// that has returned; a slot already TAKEN is not taken twice.
pub fn take_slot(state: &AtomicU64, signal_sent: impl FnOnce() -> bool) -> bool {
    let take = |from| state.compare_exchange(from, slot::TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok();
    take(slot::CALL)
        || take(slot::BOOKKEEPING)
        || take(slot::IDLE)
        || (signal_sent() && take(slot::SIGNALLING))
}

impl Keeper {
    /// How often an attached supervisor's slots are looked at: an eighth of
    /// the bound, so that no call waits much past it.
    pub(super) fn watch_tick(&self) -> Duration {
        (self.answer_within / 8).max(Duration::from_millis(10))
    }

    /// A live supervisor that leaves a call waiting (SIGSTOP, a deadlock, a
    /// thread blocked where it should not be) must not hold it for ever:
    /// a slot whose call, received or waiting to be, has not moved for
    /// `answer_within` is answered by the keeper, which serves that
    /// listener, unsignalled, until the supervisor's slot moves again. One
    /// poll(2) for all held listeners per tick.
    pub(super) fn watch_supervisor(&mut self) {
        use std::sync::atomic::Ordering::Acquire;
        self.watched = Instant::now();
        let threshold = self.answer_within.saturating_sub(self.watch_tick());
        let slots: Vec<u32> = self
            .kept
            .iter()
            .filter(|(_, k)| !k.serving || k.watch.covering.is_some())
            .map(|(&s, _)| s)
            .collect();
        let waiting = {
            let mut fds: Vec<nix::poll::PollFd> = slots
                .iter()
                .filter_map(|s| self.kept.get(s))
                .map(|k| nix::poll::PollFd::new(k.listener.as_fd(), nix::poll::PollFlags::POLLIN))
                .collect();
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN)))
                .collect::<Vec<bool>>()
        };
        for (&slot, waiting) in slots.iter().zip(waiting) {
            let (Some(cell), Some(last)) = (self.region.cell(slot), self.region.last_received(slot)) else {
                continue;
            };
            let (id, state, epoch) = (last.id, cell.state.load(Acquire), self.region.epoch(slot));
            let signal = self.region.received(slot).map(|r| r.signal.load(Acquire) as i32);
            let Some(kept) = self.kept.get_mut(&slot) else { continue };
            let now = Instant::now();
            match kept.watch.step(id, state == slot::IDLE && !waiting, now, threshold) {
                Step::Resumed => {
                    tracing::warn!(
                        "listener {slot}: its supervisor answers again; the keeper answered {} calls meanwhile",
                        kept.answered
                    );
                    kept.answered = 0;
                    self.set_serving(slot, false);
                }
                // Still stuck: a call it was signalling when it stopped is
                // answered once the signal is out.
                Step::Covering => self.answered += kept.take_over(cell, &last, signal, epoch),
                Step::Stuck(waited) => {
                    tracing::warn!(
                        "listener {slot}: its supervisor left a call waiting {waited:?} (stopped? wedged?): \
                         the keeper answers its calls, unsignalled, until it answers again"
                    );
                    self.answered += kept.take_over(cell, &last, signal, epoch);
                    self.set_serving(slot, true);
                }
                Step::Fine => {}
            }
        }
    }

    /// The supervisor is gone: answer what it left unanswered, then every
    /// call, until another one attaches.
    pub(super) fn supervisor_lost(&mut self, why: &str) {
        if let Some(conn) = self.supervisor.take() {
            let _ = self.epoll.delete(&conn);
        }
        self.intake.watch(&self.epoll);
        let slots: Vec<u32> = self.kept.iter().filter(|(_, k)| !k.serving).map(|(&s, _)| s).collect();
        for &slot in &slots {
            self.rescue(slot);
        }
        let stopped = std::mem::take(&mut self.leaving);
        let what = if stopped { "supervisor stopped" } else { "supervisor gone" };
        let rescued = if self.rescued > 0 {
            format!("; {} calls it had received and not answered were answered by their id", self.rescued)
        } else {
            String::new()
        };
        if slots.is_empty() {
            tracing::info!("{what} ({why}), holding no listener");
        } else if stopped {
            tracing::info!("{what}: answering {} listeners' calls until one attaches{rescued}", slots.len());
        } else {
            tracing::warn!(
                "{what} ({why}): answering {} listeners' calls until one attaches{rescued}",
                slots.len()
            );
        }
    }

    /// Takes a listener over from its supervisor: answers the notification
    /// its slot names, and those that may have been received after it.
    pub(super) fn rescue(&mut self, slot: u32) {
        self.set_serving(slot, true);
        let Some(kept) = self.kept.get_mut(&slot) else { return };
        let (Some(cell), Some(last)) = (self.region.cell(slot), self.region.last_received(slot)) else {
            return;
        };
        let state = cell.state.swap(slot::IDLE, std::sync::atomic::Ordering::AcqRel);
        // ID_VALID: received and unanswered.
        if kept.listener.id_valid(last.id) {
            // A region without buffers says only whether it was bookkeeping.
            if last.data.arch == 0 && state == slot::BOOKKEEPING {
                kept.forget_those_in_bookkeeping_calls();
            }
            self.rescued += kept.answer_orphan(&last, None);
        }
        // POLLOUT: a notification is still received and unanswered. With
        // RECV buffers in the region this cannot be; without (a supervisor
        // of an earlier keeper's region) its id is unknown.
        if kept.listener.received_unanswered() {
            tracing::error!(
                "listener {slot}: a call its supervisor received is still unanswered and its id unknown; \
                 its caller waits until killed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_after_the_same_call_waited_past_the_bound() {
        let (t0, bound) = (Instant::now(), Duration::from_millis(100));
        let later = |ms| t0 + Duration::from_millis(ms);
        let mut watch = Watch::default();
        assert_eq!(watch.step(5, false, t0, bound), Step::Fine, "first seen busy");
        assert_eq!(watch.step(5, false, later(99), bound), Step::Fine);
        assert_eq!(watch.step(6, false, later(150), bound), Step::Fine, "it moved: the clock starts again");
        assert_eq!(watch.step(6, false, later(200), bound), Step::Fine);
        assert_eq!(watch.step(6, false, later(250), bound), Step::Stuck(Duration::from_millis(100)));
        assert_eq!(watch.step(6, false, later(300), bound), Step::Covering);
        assert_eq!(watch.step(6, true, later(310), bound), Step::Covering, "idle, but the same id: still");
        assert_eq!(watch.step(7, false, later(320), bound), Step::Resumed);
        assert_eq!(watch.step(7, false, later(330), bound), Step::Fine, "watched afresh");
    }

    #[test]
    fn an_idle_slot_is_never_stuck() {
        let (t0, bound) = (Instant::now(), Duration::from_millis(100));
        let mut watch = Watch::default();
        assert_eq!(watch.step(5, false, t0, bound), Step::Fine);
        assert_eq!(watch.step(5, true, t0 + Duration::from_secs(9), bound), Step::Fine);
        assert_eq!(watch.step(5, false, t0 + Duration::from_secs(10), bound), Step::Fine, "busy again: anew");
    }

    #[test]
    fn a_slot_is_taken_once_and_never_mid_signal() {
        let unasked = || -> bool { panic!("asked whether a signal is out, though no signal is under way") };
        for from in [slot::IDLE, slot::CALL, slot::BOOKKEEPING] {
            let state = AtomicU64::new(from);
            assert!(take_slot(&state, unasked), "from {from}");
            assert_eq!(state.load(Ordering::Relaxed), slot::TAKEN);
            assert!(!take_slot(&state, || true), "taken twice");
        }
        let state = AtomicU64::new(slot::SIGNALLING);
        assert!(!take_slot(&state, || false), "the signal is not out: the call must wait");
        assert_eq!(state.load(Ordering::Relaxed), slot::SIGNALLING);
        assert!(take_slot(&state, || true), "once it is out");
        assert_eq!(state.load(Ordering::Relaxed), slot::TAKEN);
    }
}
