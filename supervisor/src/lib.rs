//! sigvisor, the supervisor: a seccomp user-notification supervisor as a
//! library, which the `sigvisor` binary (main.rs, the command line) drives.
//!
//! The data path, a folder per stage, each importing only those listed
//! before it (tests/tests/layout.rs holds the code to this list):
//!
//! - `sys`: every unsafe (the seccomp ioctls, pidfds, other processes'
//!   memory, fd passing) behind small safe functions; `shared`, `failpoint`.
//! - `procfs`: every read of `/proc`, each with the parser of its format.
//! - `trace`: the Trace model (profile, saved state, container selection).
//! - `callers`: the calling threads and processes (pin cache, handler
//!   tables and their changes, what a successor is told).
//! - `stacks`: the caller's stack, taken from outside when a Trace asks.
//! - `output`: counters, events and the Trace status.
//! - `control`: the living Traces (registry), what a listener holds of its
//!   Trace (handle), the control socket, the client verbs.
//! - `keeper`: the process that holds a copy of every listener, so that the
//!   targets' calls go on when the supervisor dies; `custody` is its part
//!   on the answer path.
//! - `path`: one notification: notify → pipeline → decision → signal →
//!   response (CONTINUE) → output.
//! - `intake`: a listener arrives (handoff) and is put under its Trace
//!   (attach).
//! - `cluster`: the Kubernetes API as a source of Traces (`serve
//!   --kubernetes`): their watch, and their status written back.
//! - `commands`: `run`, `serve`, `oci`.
//!
//! The launcher (`sigvisor-launch`) loads the filter and hands the listener
//! over; `proto` holds what both sides share.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod callers;
pub mod cluster;
pub mod commands;
pub mod control;
pub mod failpoint;
pub mod fuzzing;
pub mod intake;
pub mod keeper;
pub mod output;
pub mod path;
pub mod procfs;
pub mod shared;
pub mod stacks;
pub mod sys;
pub mod trace;
