//! The unix sockets sigvisor serves on: made private, stale ones replaced,
//! removed on every way out.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use tokio::net::UnixListener;

/// A socket file as it was when bound: removed only while the path still
/// names that file. Whoever bound a socket at the path since (a serve
/// started after this one, a replacement keeper) owns it, and nobody else
/// removes it.
pub struct BoundFile {
    path: PathBuf,
    id: Option<(u64, u64, i64, i64)>,
}

impl BoundFile {
    /// The file at `path` now.
    pub fn at(path: &Path) -> BoundFile {
        BoundFile { path: path.to_owned(), id: identity(path) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still the one bound.
    pub fn remove(&self) {
        if self.id.is_some() && identity(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file's identity: its inode, and its change time, since a file system
/// may give a freed inode number to the next file made (ext4 does).
fn identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Whether nothing listens at the socket file `path` any more: only a
/// refused connection says so (a full backlog, EAGAIN, is a live socket).
pub fn stale(path: &Path) -> Result<bool> {
    Ok(listening(path)?.is_none())
}

/// Who listens at the socket file `path`: `Some` pid (0 where the kernel
/// cannot say) while it is live, `None` once it is stale.
fn listening(path: &Path) -> Result<Option<i32>> {
    match std::os::unix::net::UnixStream::connect(path) {
        // The listener's credentials are those of whoever called listen().
        Ok(stream) => Ok(Some(
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_or(0, |c| c.pid()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(None),
        // A SOCK_SEQPACKET socket (the keeper's) refuses a stream connection.
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(Some(0)),
        Err(e) => bail!("cannot tell whether {} is in use: {e}", path.display()),
    }
}

/// Sends `bytes` without waiting and without SIGPIPE: a peer that left
/// (runc and crun close their end after the handoff) loses nothing it
/// wanted.
pub fn send_nowait(socket: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) {
    use nix::sys::socket::MsgFlags;
    let _ = nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        bytes,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// Removes a socket file this process bound, however the process leaves
/// the scope that holds it (errors included), while it is still the file
/// this process bound.
pub struct SocketFile(Option<BoundFile>);

impl SocketFile {
    /// Leaves the file in place: another process (the keeper) holds the socket.
    pub fn leave(mut self) {
        self.0 = None;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            file.remove();
        }
    }
}

/// The directory of the socket file `path`, made 0700 if missing.
pub fn make_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Makes `dir` this user's alone (0700) when it is this user's directory
/// but others may enter it: a kubelet's `hostPath: DirectoryOrCreate`
/// makes /run/sigvisor 0755, and wrapped containers of any uid need the
/// socket in it 0666, which is safe only behind a private directory.
pub fn claim_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return Ok(()) };
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 700 {}", dir.display()))?;
    tracing::info!("made {} mode 0700 (it was {:o}): it is sigvisor's", dir.display(), meta.mode() & 0o7777);
    Ok(())
}

/// Who may connect to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Its owner (root) only: mode 0600.
    Owner,
    /// Any uid that can reach the file: mode 0666, but only where its
    /// directory is this user's alone, so that no other user on the host
    /// gets past the directory and only bind mounts of the file itself
    /// (wrap mode's, into containers that run as any user) reach it.
    /// Elsewhere 0600, with a warning.
    Mounted,
}

/// Binds the socket: its directory made if missing (0700), a stale socket
/// replaced, a live one refused, the socket itself mode 0600 or, for
/// `Access::Mounted`, 0666. The file goes when the returned `SocketFile`
/// is dropped.
pub fn bind(path: &Path, access: Access) -> Result<(UnixListener, SocketFile)> {
    make_dir(path)?;
    if path.exists() {
        if let Some(pid) = listening(path)? {
            let by = if pid > 0 { format!(" (pid {pid})") } else { String::new() };
            bail!(
                "another supervisor is already serving on {}{by}: stop it, or give this one a \
                 --socket, --control, --keeper and --state-dir of its own",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = match access {
        Access::Mounted if private_dir(path) => 0o666,
        _ => 0o600,
    };
    let chmod = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    // After the chmod, which changes the file's ctime.
    let file = SocketFile(Some(BoundFile::at(path)));
    chmod.with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok((listener, file))
}

/// Whether only this user can search the directory holding `path`; warns
/// otherwise, since a container process that is not root then cannot
/// connect through its mount.
fn private_dir(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir);
    let me = nix::unistd::geteuid().as_raw();
    if meta.as_ref().is_ok_and(|m| m.uid() == me && m.mode() & 0o077 == 0) {
        return true;
    }
    let why =
        meta.map_or_else(|e| e.to_string(), |m| format!("owner {}, mode {:o}", m.uid(), m.mode() & 0o7777));
    tracing::warn!(
        "{} stays mode 0600, so wrapped containers whose process is not root cannot connect: its directory \
         {} is not this user's alone ({why}); give serve a --socket in a directory of mode 0700",
        path.display(),
        dir.display()
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound again at the same path (by a serve started after
    /// this one) is not removed by the one that bound it first.
    #[test]
    fn only_the_file_bound_is_removed() {
        let dir = std::env::temp_dir().join(format!("sigvisor-boundfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("agent.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let first_file = BoundFile::at(&path);
        drop(first);
        assert!(stale(&path).expect("stale?"), "nothing listens");
        std::fs::remove_file(&path).expect("remove");
        let second = std::os::unix::net::UnixListener::bind(&path).expect("bind again");
        assert!(!stale(&path).expect("stale?"), "the second listens");
        first_file.remove();
        assert!(path.exists(), "the second socket's file stays");
        BoundFile::at(&path).remove();
        assert!(!path.exists(), "its own owner removes it");
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
