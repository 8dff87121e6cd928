//! The Trace model: the resource as read from a profile (`profile`), what
//! it asks the supervisor to do (`policy`), the containers it selects
//! (`container`), which of a listener's claims to believe (`peer`), and its
//! saved state (`state`).

pub mod container;
pub mod peer;
pub mod policy;
pub mod profile;
pub mod state;
