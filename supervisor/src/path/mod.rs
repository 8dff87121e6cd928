//! One notification's way: `notify` waits for it, `pipeline` takes it
//! through `decision` (whom to signal), `signal` (the calling thread),
//! `response` (CONTINUE), then hands what happened to `output`.

pub mod decision;
pub mod notify;
pub mod pipeline;
pub mod response;
pub mod signal;
