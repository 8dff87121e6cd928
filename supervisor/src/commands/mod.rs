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

use std::process::ExitCode;

use sigvisor_proto::exit::FAILED;

/// Runs a long-lived command on a multi-threaded runtime; its error is
/// printed and exits FAILED.
pub fn block_on(future: impl std::future::Future<Output = anyhow::Result<i32>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sigvisor: cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let result = runtime.block_on(future);
    // A listener's thread may be blocked in RECV: do not wait for it (the
    // keeper answers whatever it leaves unanswered).
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("sigvisor: {e:#}");
            ExitCode::from(FAILED)
        }
    }
}
