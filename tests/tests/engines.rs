//! docker and containerd for real: Debian's docker.io 20.10 and containerd
//! 1.6, each started here on private directories, with the shim registered
//! the way docs/containers.md says, in front of runc (wrap mode) and crun
//! (listener mode), against a real `sigvisor serve`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use sigvisor_tests::containers::*;
use sigvisor_tests::engines::*;
use sigvisor_tests::*;

const CLOSER: &[&str] = &["/bin/closer", "--threads", "2", "--closes", "200"];

fn ok(out: &Output, what: &str) {
    assert_eq!(exit_code(out), 0, "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The container lines of Trace `name` in serve's final status.
fn lines_of(traces: &[yaml_serde::Value], name: &str) -> Vec<yaml_serde::Value> {
    let trace = traces.iter().find(|t| t["metadata"]["name"] == name).expect("the trace");
    summary(trace)["containers"].as_sequence().cloned().unwrap_or_default()
}

/// A tar of the test rootfs (busybox and the static closer).
fn rootfs_tar(name: &str) -> std::path::PathBuf {
    let rootfs = bundle(name, &["/bin/true"]).join("rootfs");
    let tar = rootfs.with_file_name("rootfs.tar");
    let out = output_bounded(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."), "tar");
    ok(&out, "tar");
    tar
}

/// docker through the shim, for a root container, a `--user 1000:1000`
/// one and `docker exec` into a running one, with runc (wrapped) and crun
/// (listener): every close signalled precisely, docker's `--name` and
/// labels selecting Traces, and the shim's error in docker's own output.
#[test]
fn docker_through_the_shim() {
    if !require_tools() || !engines_ready() {
        return;
    }
    let profiles = [
        ("a.yaml", auto_trace("named", "  filter:\n    containerName: picked\n")),
        ("b.yaml", auto_trace("labelled", "  filter:\n    labels:\n      team: blue\n")),
        ("c.yaml", auto_trace("z-everyone", "")),
    ];
    let given: Vec<(&str, &str)> = profiles.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let server = Server::with_profiles("docker", &[], &given);
    let wrappers = scratch("docker-wrappers");
    let docker_sock = Path::new("/tmp").join(format!("sv-{}-docker/docker.sock", std::process::id()));
    let host = format!("--docker-host unix://{}", docker_sock.display());
    let runc = shim_script(&wrappers.join("sigvisor-runc"), "runc", &server.socket, &host);
    let crun = shim_script(&wrappers.join("sigvisor-crun"), "crun", &server.socket, &host);
    let nobody = shim_script(&wrappers.join("sigvisor-nobody"), "runc", &wrappers.join("none.sock"), "");
    let docker = Daemon::dockerd(
        "docker",
        &json!({"runtimes": {"sigvisor": {"path": runc}, "sigvisor-crun": {"path": crun},
                             "sigvisor-nobody": {"path": nobody}}}),
    );
    assert_eq!(docker.socket, docker_sock);
    let image = format!("sigvisor-test-{}:closer", std::process::id());
    let tar = rootfs_tar("docker-image");
    ok(
        &output_bounded(docker.docker_command().arg("import").arg(&tar).arg(&image), "docker import"),
        "import",
    );

    let run = |runtime: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec!["run", "--rm", "--network", "none", "--runtime", runtime];
        args.extend(extra);
        args.push(&image);
        args.extend(cmd);
        docker.docker(&args)
    };
    for runtime in ["sigvisor", "sigvisor-crun"] {
        for user in [&[][..], &["--user", "1000:1000"]] {
            let out = run(runtime, user, CLOSER);
            ok(&out, &format!("docker run --runtime {runtime} {user:?}"));
            assert_precise(&report(&out));
        }
        // docker exec, as root and as another user, into a running container.
        let name = format!("sleeper-{runtime}");
        let detached = ["-d", "--name", &name];
        let out = docker.docker(
            &[&["run", "--network", "none", "--runtime", runtime][..], &detached, &[&image, "sleep", "30"]]
                .concat(),
        );
        ok(&out, "docker run -d");
        for user in ["0", "1000:1000"] {
            let out = docker.docker(&["exec", "--user", user, &name, "/bin/closer", "--closes", "100"]);
            ok(&out, &format!("docker exec --user {user} ({runtime})"));
            assert_precise(&report(&out));
        }
        ok(&docker.docker(&["rm", "-f", &name]), "docker rm");
    }
    // Selected by docker's --name and by a label, and by nothing else.
    let out = run("sigvisor", &["--name", "picked", "--label", "team=red"], CLOSER);
    ok(&out, "named");
    let out = run("sigvisor-crun", &["--label", "team=blue", "--user", "1000"], CLOSER);
    ok(&out, "labelled");
    // No supervisor: docker shows the shim's reason, and the container
    // never starts.
    let out = run("sigvisor-nobody", &[], &["/bin/true"]);
    assert_eq!(exit_code(&out), 125);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no supervisor is listening on") && said.contains("none.sock"), "{said}");

    let _ = docker.docker(&["rmi", "-f", &image]);
    let (traces, log) = server.stop();
    let named = lines_of(&traces, "named");
    assert_eq!(named.len(), 1, "{named:?}\n{log}");
    assert_eq!((named[0]["name"].as_str(), named[0]["signals"].as_u64()), (Some("picked"), Some(400)));
    let labelled = lines_of(&traces, "labelled");
    assert_eq!(labelled.len(), 1, "{labelled:?}\n{log}");
    assert_eq!(labelled[0]["signals"], 400, "{labelled:?}");
    assert_eq!(labelled[0]["filter"], "sigvisor", "crun, listener mode: {labelled:?}");
    // The rest: 2 runtimes x (2 runs, a sleeper and its 2 execs).
    let everyone = lines_of(&traces, "z-everyone");
    let signals: u64 = everyone.iter().map(|l| l["signals"].as_u64().unwrap_or(0)).sum();
    assert_eq!(signals, 2 * (400 + 400 + 100 + 100), "{everyone:?}\n{log}");
    assert!(everyone.iter().all(|l| l["id"].as_str().is_some_and(|id| id.len() == 64)), "{everyone:?}");
}

/// containerd: `ctr run --runc-binary` with the wrapper in front of runc
/// and of crun, CRI annotations selecting both; and the CRI plugin's
/// stanza of docs/containers.md, which keeps the plugin loaded.
#[test]
fn containerd_through_the_shim() {
    if !require_tools() || !engines_ready() {
        return;
    }
    let pod = "  filter:\n    namespace: team-a\n    podname: web-0\n";
    let server = Server::with_profiles(
        "containerd",
        &[],
        &[("a.yaml", &auto_trace("web-0", pod)), ("b.yaml", &auto_trace("z-everyone", ""))],
    );
    let wrappers = scratch("containerd-wrappers");
    let runc = shim_script(&wrappers.join("sigvisor-runc"), "runc", &server.socket, "");
    let crun = shim_script(&wrappers.join("sigvisor-crun"), "crun", &server.socket, "");
    // docs/containers.md's stanza, with this test's wrapper.
    let stanza = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sigvisor]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sigvisor.options]\n  BinaryName = \"{}\"\n",
        runc.display()
    );
    // The CRI plugin's state with a config: "ok", or "error" when runc's
    // stanza is left out (the default runtime must be declared).
    let cri = |config: &str| {
        let containerd = Daemon::containerd("containerd-cri", config);
        let plugins = containerd.ctr(&["plugins", "ls"]);
        let plugins = String::from_utf8_lossy(&plugins.stdout).into_owned();
        let line = plugins
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|l| l.get(1) == Some(&"cri"));
        line.and_then(|l| l.last().map(|s| s.to_string())).unwrap_or(plugins)
    };
    let without_runc: String = stanza.lines().skip(2).map(|l| format!("{l}\n")).collect();
    assert_eq!(cri(&without_runc), "error");
    assert_eq!(cri(&stanza), "ok");
    let containerd = Daemon::containerd("containerd", &stanza);

    let rootfs = bundle("containerd-rootfs", &["/bin/true"]).join("rootfs");
    let annotations = [
        "io.kubernetes.cri.container-name=closer",
        "io.kubernetes.cri.sandbox-name=web-0",
        "io.kubernetes.cri.sandbox-namespace=team-a",
    ];
    // (ctr 1.6 has no --user, and with --uidmap it ignores --runc-binary:
    // other users are docker's test.)
    for wrapper in [&runc, &crun] {
        let id = container_id(&format!("ctr-{}", wrapper.file_name().unwrap_or_default().to_string_lossy()));
        let mut cmd = containerd.ctr_command();
        cmd.args(["run", "--rm", "--runc-binary"]).arg(wrapper);
        for a in annotations {
            cmd.args(["--annotation", a]);
        }
        cmd.arg("--rootfs").arg(&rootfs).arg(&id).args(CLOSER);
        let out = output_bounded(&mut cmd, "ctr run");
        ok(&out, &format!("ctr run --runc-binary {}", wrapper.display()));
        assert_precise(&report(&out));
    }
    let (traces, log) = server.stop();
    let selected = lines_of(&traces, "web-0");
    assert_eq!(selected.len(), 2, "{selected:?}\n{log}");
    for line in &selected {
        assert_eq!((line["signals"].as_u64(), line["pod"].as_str()), (Some(400), Some("web-0")), "{line:?}");
    }
    let modes: Vec<&str> = selected.iter().filter_map(|l| l["filter"].as_str()).collect();
    assert!(modes.contains(&"sigvisor"), "{modes:?}");
    assert!(lines_of(&traces, "z-everyone").is_empty(), "{log}");
}
