//! Every `unsafe` of the supervisor, behind small safe functions: the
//! seccomp listener's ioctls, other processes' threads (pidfds, queued
//! signals) and memory, fd passing, and process-wide settings. The rest of
//! the crate denies unsafe code.
//!
//! Built on `nix` where it has the call (poll, fcntl, socketpair,
//! process_vm_readv, rlimits, kill); `libc` for what it lacks: the seccomp
//! ioctls, pidfds and `SI_QUEUE` siginfo, real-time timer signals, and
//! SCM_RIGHTS reception that keeps every fd of a truncated message. Also the
//! socket files (`socket`): bound, and removed only by their owner.
#![allow(unsafe_code)]

pub mod fd;
pub mod memory;
pub mod process;
pub mod region;
pub mod seccomp;
pub mod socket;
pub mod thread;
