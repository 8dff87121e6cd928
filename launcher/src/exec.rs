//! The target's `execve`, prepared in full before the filter is loaded.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sigvisor_proto::exit;

/// Why CMD cannot run, with `env`'s exit statuses.
pub struct ExecError {
    pub status: u8,
    pub message: String,
}

/// An `execve` ready to go: every string and pointer array is built, so the
/// call itself allocates nothing (see `filter::load`).
pub struct Prepared {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

fn cstring(s: &OsStr, what: &str) -> Result<CString, ExecError> {
    CString::new(s.as_bytes()).map_err(|_| ExecError {
        status: exit::FAILED,
        message: format!("{what} contains a NUL byte: {}", s.to_string_lossy()),
    })
}

/// Finds CMD the way `execvp` does: a name with a slash as is, otherwise the
/// first executable match in `$PATH`. Not found is 127, found but not
/// executable is 126.
fn resolve(cmd: &OsStr) -> Result<PathBuf, ExecError> {
    let executable = |p: &Path| {
        let c = CString::new(p.as_os_str().as_bytes()).ok();
        // SAFETY: access() reads the NUL-terminated path only.
        c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0) && p.is_file()
    };
    let name = cmd.to_string_lossy();
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return match (p.exists(), executable(&p)) {
            (_, true) => Ok(p),
            (true, false) => Err(ExecError {
                status: exit::CANNOT_EXECUTE,
                message: format!("{name}: permission denied or not a regular file"),
            }),
            (false, _) => Err(ExecError {
                status: exit::NOT_FOUND,
                message: format!("{name}: no such file or directory"),
            }),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(cmd);
        if executable(&candidate) {
            return Ok(candidate);
        }
        if candidate.exists() && denied.is_none() {
            denied = Some(candidate);
        }
    }
    Err(match denied {
        Some(p) => ExecError {
            status: exit::CANNOT_EXECUTE,
            message: format!("{name}: permission denied ({})", p.display()),
        },
        None => ExecError { status: exit::NOT_FOUND, message: format!("{name}: command not found in PATH") },
    })
}

pub fn prepare(cmd: &[OsString]) -> Result<Prepared, ExecError> {
    let path = cstring(resolve(&cmd[0])?.as_os_str(), "CMD")?;
    let mut strings = Vec::new();
    for arg in cmd {
        strings.push(cstring(arg, "an argument")?);
    }
    let argc = strings.len();
    for (k, v) in std::env::vars_os() {
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        strings.push(cstring(OsStr::from_bytes(&kv), "an environment variable")?);
    }
    let pointers = |range: &[CString]| {
        range.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
    };
    Ok(Prepared {
        path,
        argv: pointers(&strings[..argc]),
        envp: pointers(&strings[argc..]),
        _strings: strings,
    })
}

impl Prepared {
    /// Replaces this process; returns only on failure, with env's status.
    pub fn exec(&self) -> ExecError {
        // SAFETY: path, argv and envp are NUL-terminated strings and
        // null-terminated arrays owned by self, alive across the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        let err = std::io::Error::last_os_error();
        ExecError {
            status: if err.raw_os_error() == Some(libc::ENOENT) {
                exit::NOT_FOUND
            } else {
                exit::CANNOT_EXECUTE
            },
            message: format!("{}: {err}", self.path.to_string_lossy()),
        }
    }
}
