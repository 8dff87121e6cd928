//! The Trace model: the resource as read from a profile (`profile`), what
//! it asks the supervisor to do (`policy`), the containers it selects
//! (`container`), and its saved state (`state`).

pub mod container;
pub mod policy;
pub mod profile;
pub mod state;
