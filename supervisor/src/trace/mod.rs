//! The Trace model: the resource as read from a profile (`profile`),
//! the containers it selects (`container`), and its saved state (`state`).

pub mod container;
pub mod profile;
pub mod state;
