//! One `serve` instance: its agent socket names it, and every other path
//! it uses follows from that socket unless given. Two instances on two
//! sockets then never share a keeper, a control socket or saved Traces,
//! with no flag but `--socket`.
//!
//! For the default socket the paths are the historic defaults, so that a
//! serve upgraded in place finds the keeper (and the listeners it holds)
//! and the Traces its predecessor left. For `DIR/NAME.sock`:
//! `DIR/NAME.control.sock`, `DIR/NAME.keeper.sock`, and the state
//! directory `/var/lib/sigvisor/instances/ESCAPED`, where ESCAPED is the
//! socket's path as `systemd-escape --path` writes it.

use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET: &str = "/run/sigvisor/agent.sock";
pub const DEFAULT_CONTROL: &str = "/run/sigvisor/control.sock";
pub const DEFAULT_KEEPER: &str = "/run/sigvisor/keeper.sock";
pub const DEFAULT_STATE: &str = "/var/lib/sigvisor";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub socket: PathBuf,
    pub control: PathBuf,
    pub keeper: PathBuf,
    pub state_dir: PathBuf,
}

impl Instance {
    /// The instance serving on `socket`, with the paths given explicitly
    /// taking the place of the derived ones.
    pub fn of(
        socket: PathBuf,
        control: Option<PathBuf>,
        keeper: Option<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> Instance {
        let default = socket == Path::new(DEFAULT_SOCKET);
        let sibling = |kind: &str, historic: &str| {
            if default {
                return PathBuf::from(historic);
            }
            let stem =
                socket.file_stem().map_or_else(|| "agent".into(), |s| s.to_string_lossy().into_owned());
            socket.with_file_name(format!("{stem}.{kind}.sock"))
        };
        let control = control.unwrap_or_else(|| sibling("control", DEFAULT_CONTROL));
        let keeper = keeper.unwrap_or_else(|| sibling("keeper", DEFAULT_KEEPER));
        let state_dir = state_dir.unwrap_or_else(|| {
            if default {
                PathBuf::from(DEFAULT_STATE)
            } else {
                Path::new(DEFAULT_STATE).join("instances").join(escape_path(&socket))
            }
        });
        Instance { socket, control, keeper, state_dir }
    }
}

/// A path as one file name, the way `systemd-escape --path` writes it:
/// `/run/a-b/agent.sock` → `run-a\x2db-agent.sock`. Distinct paths give
/// distinct names (a `-` in the path is escaped, a `/` becomes `-`).
pub fn escape_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, byte) in part.bytes().enumerate() {
            let plain = byte.is_ascii_alphanumeric()
                || byte == b':'
                || byte == b'_'
                || (byte == b'.' && (i, j) != (0, 0));
            if plain {
                out.push(byte as char);
            } else {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_socket_keeps_the_historic_paths() {
        let i = Instance::of(DEFAULT_SOCKET.into(), None, None, None);
        assert_eq!(i.control, Path::new(DEFAULT_CONTROL));
        assert_eq!(i.keeper, Path::new(DEFAULT_KEEPER));
        assert_eq!(i.state_dir, Path::new(DEFAULT_STATE));
    }

    #[test]
    fn another_socket_has_paths_of_its_own() {
        let i = Instance::of("/run/sigvisor/b.sock".into(), None, None, None);
        assert_eq!(i.control, Path::new("/run/sigvisor/b.control.sock"));
        assert_eq!(i.keeper, Path::new("/run/sigvisor/b.keeper.sock"));
        assert_eq!(i.state_dir, Path::new("/var/lib/sigvisor/instances/run-sigvisor-b.sock"));
        let j = Instance::of("/tmp/x/agent.sock".into(), None, Some("/k.sock".into()), None);
        assert_eq!(j.keeper, Path::new("/k.sock"), "a path given wins");
        assert_eq!(j.control, Path::new("/tmp/x/agent.control.sock"));
        assert_ne!(i.state_dir, j.state_dir);
    }

    #[test]
    fn escaping_is_systemd_s_and_keeps_paths_apart() {
        assert_eq!(escape_path(Path::new("/run/a-b/agent.sock")), "run-a\\x2db-agent.sock");
        assert_eq!(escape_path(Path::new("//tmp//x/")), "tmp-x");
        assert_eq!(escape_path(Path::new("/.hidden/a b")), "\\x2ehidden-a\\x20b");
        assert_eq!(escape_path(Path::new("/")), "-");
        assert_ne!(escape_path(Path::new("/a-b/c")), escape_path(Path::new("/a/b-c")));
    }
}
