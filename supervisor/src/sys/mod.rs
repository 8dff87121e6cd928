//! Every `unsafe` of the supervisor, behind small safe functions: the
//! seccomp listener's ioctls, other processes' threads (pidfds, queued
//! signals) and memory, fd passing, and process-wide settings. The rest of
//! the crate denies unsafe code.
#![allow(unsafe_code)]

pub mod fd;
pub mod memory;
pub mod process;
pub mod seccomp;
pub mod thread;
