//! sigvisor, the supervisor: a seccomp user-notification supervisor as a
//! library, which the `sigvisor` binary (main.rs, the command line) drives.
//!
//! The data path, one module per step: the launcher (`sigvisor-launch`)
//! loads the filter → `handoff` receives the listener → `attach` puts it
//! under its Trace → `notify` waits for notifications → `pipeline` answers
//! each: `decision` (with `caller` and `handlers`) → `signal` → `response`
//! (CONTINUE) → `stats`, `events` and `output` (the Trace status). The
//! `stacks` takes the caller's stack from outside, when a Trace asks. The
//! `keeper` holds a copy of every listener, so that the targets' calls go on
//! when the supervisor dies; `state` keeps the Traces. `sys` holds every
//! unsafe. The Trace model: `profile`, `registry`, `container`.
//! The commands on top: `run`, `serve`, `oci`, and the client `verbs` over
//! `control`.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod attach;
pub mod caller;
pub mod container;
pub mod control;
pub mod decision;
pub mod events;
pub mod failpoint;
pub mod fuzzing;
pub mod handlers;
pub mod handoff;
pub mod keeper;
pub mod notify;
pub mod oci;
pub mod output;
pub mod pipeline;
pub mod profile;
pub mod registry;
pub mod response;
pub mod run;
pub mod serve;
pub mod shared;
pub mod signal;
pub mod socket;
pub mod stacks;
pub mod state;
pub mod stats;
pub mod sys;
pub mod verbs;
