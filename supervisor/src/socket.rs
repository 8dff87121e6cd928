//! The unix sockets sigvisor serves on: made private, stale ones replaced,
//! removed on every way out.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use tokio::net::UnixListener;

/// Removes a socket file this process bound, however the process leaves
/// the scope that holds it (errors included).
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// Leaves the file in place: another process (the keeper) holds the socket.
    pub fn leave(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Binds the socket: its directory made if missing (0700), a stale socket
/// replaced, a live one refused, the socket itself mode 0600. The file goes
/// when the returned `SocketFile` is dropped.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another supervisor is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok((listener, file))
}
