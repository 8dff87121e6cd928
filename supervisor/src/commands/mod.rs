//! The commands: `run` (one target, here), `serve` (the node's supervisor,
//! for every container) and `oci` (what runtimes call: the patch and the
//! shim, and what it asks docker). The client verbs are in `control::verbs`; `instance` derives a
//! serve's paths from its agent socket.

pub mod docker;
pub mod instance;
pub mod oci;
pub mod run;
pub mod serve;
pub mod shim;
