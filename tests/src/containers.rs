//! Real containers for the tests: a busybox rootfs with the static fixture,
//! OCI bundles from `runc spec`, a `sigvisor serve` process, runc and crun.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{bin, exit_code, output_bounded, scratch, wait_bounded};

/// Runtimes and busybox come from `make test`; on CI their absence fails.
pub fn require_tools() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = ["runc", "crun", "busybox", "unshare"]
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the container tests: root={root}, missing {missing:?} (`make test` installs runc, crun, busybox-static)"
    );
    eprintln!("SKIPPED: container tests need root and {missing:?}");
    false
}

/// A bundle: busybox (every applet but `busybox` itself, which a symlink
/// would overwrite) and the static fixture at /bin/closer.
pub fn bundle(name: &str, args: &[&str]) -> PathBuf {
    let dir = scratch(name).join("bundle");
    let bin_dir = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin_dir).expect("rootfs");
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d)).expect("rootfs dir");
    }
    let busybox = which("busybox");
    std::fs::copy(&busybox, bin_dir.join("busybox")).expect("copy busybox");
    let list = Command::new(&busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = symlink("busybox", bin_dir.join(applet));
    }
    std::fs::copy(env!("SIGVISOR_FIXTURE_CLOSER_STATIC"), bin_dir.join("closer")).expect("copy closer");
    let out = output_bounded(Command::new("runc").args(["spec", "--bundle"]).arg(&dir), "runc spec");
    assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
    edit_config(&dir, |c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
    });
    dir
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn config(bundle: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).expect("config.json"))
        .expect("JSON")
}

pub fn edit_config(bundle: &Path, edit: impl FnOnce(&mut Value)) {
    let mut c = config(bundle);
    edit(&mut c);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&c).expect("JSON"))
        .expect("write config");
}

/// The seccomp section that sends close(2) to `socket`.
pub fn notify_close(socket: &Path, wait_killable: bool) -> Value {
    let mut s = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": socket,
        "syscalls": [{"names": ["close"], "action": "SCMP_ACT_NOTIFY"}],
    });
    if wait_killable {
        s["flags"] = json!(["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]);
        s["listenerMetadata"] = json!(r#"{"waitKillable":true}"#);
    }
    s
}

/// An Auto Trace named `name` with `filter` (YAML lines under `spec:`,
/// indented two spaces; empty for all).
pub fn auto_trace(name: &str, filter: &str) -> String {
    format!(
        "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: {name}\nspec:\n  gadget: signal\n  \
         runMode: Auto\n{filter}"
    )
}

/// A `sigvisor serve` on its own sockets and state directory, with one
/// Auto trace selecting all.
pub struct Server {
    pub socket: PathBuf,
    pub control: PathBuf,
    pub status: PathBuf,
    /// The keeper's socket and the state directory (its log is there).
    pub keeper: PathBuf,
    pub state: PathBuf,
    /// The whole command line, to start it again the same way.
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A Trace selecting every container, started at once.
pub const ALL: &str = "apiVersion: gadget.kinvolk.io/v1alpha1\nkind: Trace\nmetadata:\n  name: all\n\
                       spec:\n  gadget: signal\n  runMode: Auto\n  outputMode: Status\n";

impl Server {
    /// A server with the `all` Trace.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        Server::with_profiles(name, extra, &[("all.yaml", ALL)])
    }

    /// A server with the `all` Trace and these environment variables.
    pub fn with_env(name: &str, env: &[(&str, &str)]) -> Server {
        Server::build(name, &[], &[("all.yaml", ALL)], env)
    }

    /// A server with these profiles (file name, YAML) loaded at start.
    pub fn with_profiles(name: &str, extra: &[&str], profiles_given: &[(&str, &str)]) -> Server {
        Server::build(name, extra, profiles_given, &[])
    }

    /// A server with the `all` Trace whose state directory is made ready
    /// by `prepare` before serve starts (a small tmpfs mounted on it, say).
    pub fn with_state(name: &str, prepare: impl FnOnce(&Path)) -> Server {
        Server::build_with(name, &[], &[("all.yaml", ALL)], &[], prepare)
    }

    /// A serve given only its agent socket, `DIR/run/agent.sock`, and the
    /// profiles in `DIR/profiles` (written there): every other path is the
    /// one serve derives from the socket (docs/cli.md), and its state
    /// directory is under /var/lib/sigvisor/instances.
    pub fn instance(dir: &Path, profiles_given: &[(&str, &str)]) -> Server {
        let profiles = dir.join("profiles");
        std::fs::create_dir_all(&profiles).expect("profiles dir");
        for (file, text) in profiles_given {
            std::fs::write(profiles.join(file), text).expect("profile");
        }
        let socket = dir.join("run/agent.sock");
        let status = dir.join("status.yaml");
        let args = vec![
            "serve".into(),
            "--socket".into(),
            socket.clone().into(),
            "--status-file".into(),
            status.clone().into(),
            profiles.into(),
        ];
        let mut server = Server {
            control: dir.join("run/agent.control.sock"),
            keeper: dir.join("run/agent.keeper.sock"),
            state: Path::new("/var/lib/sigvisor/instances").join(systemd_escape_path(&socket)),
            socket,
            status,
            args,
            env: Vec::new(),
            child: None,
        };
        server.spawn();
        server
    }

    fn build(name: &str, extra: &[&str], profiles_given: &[(&str, &str)], env: &[(&str, &str)]) -> Server {
        Server::build_with(name, extra, profiles_given, env, |_| {})
    }

    fn build_with(
        name: &str,
        extra: &[&str],
        profiles_given: &[(&str, &str)],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Server {
        let dir = scratch(&format!("{name}-serve"));
        let profiles = dir.join("profiles");
        std::fs::create_dir_all(&profiles).expect("profiles dir");
        for (file, text) in profiles_given {
            std::fs::write(profiles.join(file), text).expect("profile");
        }
        let socket = dir.join("run/agent.sock");
        let control = dir.join("control/control.sock");
        let status = dir.join("status.yaml");
        let keeper = dir.join("run/keeper.sock");
        let state = dir.join("state");
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into()];
        for (flag, path) in [
            ("--socket", &socket),
            ("--control", &control),
            ("--status-file", &status),
            ("--keeper", &keeper),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.push("--state-dir".into());
        args.push(state.clone().into());
        args.extend(extra.iter().map(Into::into));
        args.push(profiles.into());
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        std::fs::create_dir_all(&state).expect("state dir");
        prepare(&state);
        let mut server = Server { socket, control, status, keeper, state, args, env, child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // A killed serve leaves its control socket: wait for the new one.
        // (The agent socket stays: the keeper holds it across restarts.)
        let _ = std::fs::remove_file(&self.control);
        let child = Command::new(bin("sigvisor"))
            .args(&self.args)
            .env("RUST_LOG", "sigvisor=info")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sigvisor serve");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() || !self.control.exists() {
            assert!(Instant::now() < deadline, "sigvisor serve did not create {}", self.socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// A second serve with this one's command line, run to its end: a
    /// serve that is refused.
    pub fn second(&self) -> Output {
        output_bounded(Command::new(bin("sigvisor")).args(&self.args), "a second serve on the same sockets")
    }

    /// `kill -9` of serve: nothing of it runs any more, its keeper does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts serve again with the same command line (after `kill` or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "serve still runs");
        self.spawn();
    }

    /// The keeper serve started (its child, until serve dies).
    pub fn keeper_pid(&self) -> i32 {
        let children = crate::children_of(self.pid());
        *children.first().unwrap_or_else(|| panic!("serve {} has no keeper child", self.pid()))
    }

    /// `sigvisor get trace NAME -o yaml` from this server, parsed.
    pub fn get(&self, name: &str) -> yaml_serde::Value {
        let out = output_bounded(
            Command::new(bin("sigvisor"))
                .args(["get", "trace", name, "-o", "yaml", "--control"])
                .arg(&self.control),
            "sigvisor get",
        );
        assert_eq!(exit_code(&out), 0, "get trace {name}: {}", String::from_utf8_lossy(&out.stderr));
        yaml_serde::from_slice(&out.stdout).expect("get prints YAML")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Open fds of the server process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// SIGTERM, then the Traces it printed and its log.
    pub fn stop(mut self) -> (Vec<yaml_serde::Value>, String) {
        self.terminate()
    }

    /// SIGTERM, then the Traces it printed and its log; it may be restarted.
    pub fn terminate(&mut self) -> (Vec<yaml_serde::Value>, String) {
        let child = self.child.take().expect("running");
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = wait_bounded(child, "sigvisor serve");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(exit_code(&out), 0, "serve exit status; log:\n{log}");
        let text = std::fs::read_to_string(&self.status).unwrap_or_default();
        let traces = yaml_serde::Deserializer::from_str(&text)
            .map(|doc| yaml_serde::Value::deserialize(doc).expect("status YAML"))
            .collect();
        (traces, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A path as `systemd-escape --path` writes it (the name of a serve
/// instance's state directory).
pub fn systemd_escape_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::new();
    for (i, part) in text.split('/').filter(|p| !p.is_empty()).enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            match b {
                b'.' if (i, j) != (0, 0) => out.push('.'),
                b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => out.push(b as char),
                b => out.push_str(&format!("\\x{b:02x}")),
            }
        }
    }
    out
}

/// The fixture under `sigvisor-launch` against a server's agent socket.
pub fn launch(server: &Server, args: &[&str]) -> Child {
    launch_program(server, Path::new(crate::closer()), args)
}

/// `sigvisor-launch --socket S -- PROGRAM ARGS`, its output piped.
pub fn launch_program(server: &Server, program: &Path, args: &[&str]) -> Child {
    Command::new(bin("sigvisor-launch"))
        .arg("--socket")
        .arg(&server.socket)
        .arg("--")
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sigvisor-launch")
}

/// The Dockerfile way: a bundle whose entrypoint (`args`) is wrapped by the
/// static launcher copied into the image, the agent socket a volume.
pub fn wrapped_bundle(name: &str, args: &[&str], socket: &Path) -> PathBuf {
    let mut wrapped = vec!["/sigvisor-launch", "--socket", "/run/sigvisor.sock", "--"];
    wrapped.extend(args);
    let bundle = bundle(name, &wrapped);
    std::fs::copy(bin("sigvisor-launch-static"), bundle.join("rootfs/sigvisor-launch"))
        .expect("copy launcher");
    edit_config(&bundle, |c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/run/sigvisor.sock", "type": "bind", "source": socket, "options": ["rbind", "ro"],
        }))
    });
    bundle
}

/// `status.output` of a Trace, parsed.
pub fn summary(trace: &yaml_serde::Value) -> yaml_serde::Value {
    yaml_serde::from_str(trace["status"]["output"].as_str().expect("status.output")).expect("summary YAML")
}

/// A unique container id for this test process.
pub fn container_id(name: &str) -> String {
    format!("sv-{}-{name}", std::process::id())
}

/// `runc run` in the foreground; returns its output.
pub fn runc_run(bundle: &Path, id: &str) -> Output {
    let out = output_bounded(Command::new("runc").arg("run").arg("--bundle").arg(bundle).arg(id), id);
    let _ = Command::new("runc").args(["delete", "-f", id]).output();
    out
}

/// `crun run` in a private mount namespace without the cgroup v2 mount
/// that this host's hybrid cgroup layout makes crun trip over.
pub fn crun_command(bundle: &Path, id: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle \"$0\" \"$1\"")
        .arg(bundle)
        .arg(id);
    cmd
}

pub fn crun_run(bundle: &Path, id: &str) -> Output {
    let out = output_bounded(&mut crun_command(bundle, id), id);
    let _ = Command::new("crun").args(["delete", "-f", id]).output();
    out
}

/// The fixture's `"event":"done"` report in a container's stdout.
pub fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| {
            panic!("no report; stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
        })
}

/// `sigvisor oci patch [extra] --socket SOCKET BUNDLE`, which must succeed.
pub fn patch(bundle: &Path, socket: &Path, extra: &[&str]) {
    let out = output_bounded(
        Command::new(bin("sigvisor"))
            .args(["oci", "patch"])
            .args(extra)
            .arg("--socket")
            .arg(socket)
            .arg(bundle),
        "sigvisor oci patch",
    );
    assert_eq!(exit_code(&out), 0, "oci patch: {}", String::from_utf8_lossy(&out.stderr));
}
