//! Container engines for the tests, each started here on directories of its
//! own and stopped when dropped: Debian's dockerd (with the containerd it
//! starts) and containerd. Also the wrapper script that registers the shim
//! with an engine, as docs/containers.md has it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, needed, output_bounded};

/// dockerd, containerd and ctr, from `make test`; on CI their absence fails.
pub fn engines_ready() -> bool {
    let present = ["dockerd", "containerd", "ctr", "/usr/bin/docker"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    needed(present, "Debian's docker.io and containerd", "`make test` installs them")
}

/// The wrapper an engine is given as its runtime (docs/containers.md):
/// `sigvisor oci runtime --runtime RUNTIME --socket SOCKET [EXTRA] -- "$@"`.
/// crun runs in a mount namespace without the cgroup v2 hierarchy, which
/// this host's cgroup v1/v2 hybrid makes crun refuse (not something a
/// normal host needs).
pub fn shim_script(path: &Path, runtime: &str, socket: &Path, extra: &str) -> PathBuf {
    let shim = format!(
        "'{}' oci runtime --runtime {runtime} --socket '{}' {extra} -- \"$@\"",
        bin("sigvisor").display(),
        socket.display()
    );
    let body = if runtime == "crun" {
        let quoted = shim.replace('\'', "'\\''");
        format!(
            "exec unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec {quoted}' sh \"$@\""
        )
    } else {
        format!("exec {shim}")
    };
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the wrapper");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod the wrapper");
    path.to_owned()
}

/// A daemon of this test's, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub dir: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
    child: Child,
}

impl Daemon {
    /// dockerd on `DIR/data`, `DIR/exec` and `DIR/docker.sock`, with no
    /// network set-up, configured by `daemon.json` (the runtimes).
    pub fn dockerd(name: &str, daemon_json: &serde_json::Value) -> Daemon {
        let dir = short_scratch(name);
        let config = dir.join("daemon.json");
        let mut json = daemon_json.clone();
        json["bridge"] = "none".into();
        json["iptables"] = false.into();
        json["ip6tables"] = false.into();
        std::fs::write(&config, json.to_string()).expect("daemon.json");
        let socket = dir.join("docker.sock");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file").arg(&config);
        for (flag, sub) in [("--data-root", "data"), ("--exec-root", "exec"), ("--pidfile", "docker.pid")] {
            cmd.arg(flag).arg(dir.join(sub));
        }
        cmd.arg("-H").arg(format!("unix://{}", socket.display()));
        let daemon = Daemon::spawn(cmd, dir, socket);
        daemon.wait_until(|d| d.docker(&["version"]).status.success());
        daemon
    }

    /// containerd with `config.toml`, on `DIR/root`, `DIR/state` and
    /// `DIR/containerd.sock`.
    pub fn containerd(name: &str, config_toml: &str) -> Daemon {
        let dir = short_scratch(name);
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n{config_toml}",
            dir.join("root").display(),
            dir.join("state").display(),
            socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("config.toml");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(dir.join("config.toml"));
        let daemon = Daemon::spawn(cmd, dir, socket);
        daemon.wait_until(|d| d.ctr(&["version"]).status.success());
        daemon
    }

    fn spawn(mut cmd: Command, dir: PathBuf, socket: PathBuf) -> Daemon {
        let log = std::fs::File::create(dir.join("daemon.log")).expect("daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Daemon { dir, socket, child }
    }

    fn wait_until(&self, ready: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(self.socket.exists() && ready(self)) {
            assert!(Instant::now() < deadline, "the daemon did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Debian's docker client against this dockerd.
    pub fn docker_command(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/docker");
        cmd.arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        output_bounded(self.docker_command().args(args), "docker")
    }

    /// ctr against this containerd, in the namespace `sigvisor-test`.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(["--namespace", "sigvisor-test"]);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        output_bounded(self.ctr_command().args(args), "ctr")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill has no memory preconditions; pid is our child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory with a short path: containerd's sockets live under
/// it, and a unix socket's path has at most 107 bytes.
fn short_scratch(name: &str) -> PathBuf {
    let dir = Path::new("/tmp").join(format!("sv-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
