//! A listener arrives: `handoff` receives it with its metadata over the
//! agent socket (or from `run`'s launcher), `attach` puts it under its
//! Trace and serves it to its end.

pub mod attach;
pub mod handoff;
