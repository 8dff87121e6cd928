//! What a Trace shows: counters (`stats`), one event per call for Stream
//! and File outputs (`events`), and its status (`status`); `skip` names
//! why a call went unsignalled.

pub mod events;
pub mod skip;
pub mod stats;
pub mod status;
