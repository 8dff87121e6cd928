//! deploy/ as a cluster takes it: the API server accepts every object in it
//! (`kubectl apply --dry-run=server`), and the DaemonSet's two containers,
//! from the image deploy/Containerfile builds offline, run by podman as a
//! kubelet would run them (host PID namespace, the capabilities the
//! DaemonSet lists and no others, a read-only root, the host paths, the
//! ServiceAccount's token and the in-cluster environment) drive the seed's
//! Example Trace: nothing until `operation=start`, then every close of a
//! program of another uid signalled precisely, `stop` back to none.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use sigvisor_tests::cluster::*;
use sigvisor_tests::containers::report;
use sigvisor_tests::*;

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Polls `what` until it holds, for at most 30 s.
fn eventually(what: &str, holds: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !holds() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Containers podman runs for the test, removed however it ends.
struct Pod(Vec<String>);

impl Drop for Pod {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", name]).output();
        }
    }
}

/// What the DaemonSet's containers are given: their capabilities.
fn capabilities(daemonset: &yaml_serde::Value) -> Vec<String> {
    let agent = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let added = agent["securityContext"]["capabilities"]["add"].as_sequence().expect("capabilities.add");
    added.iter().map(|c| c.as_str().expect("a capability").to_owned()).collect()
}

/// `podman run -d` of the image as the DaemonSet runs its containers.
fn run_container(
    name: &str,
    image: &str,
    caps: &[String],
    mounts: &[(&Path, &str)],
    env: &[(&str, &str)],
    args: &[&str],
) {
    // runc, with cgroupfs: crun refuses this machine's cgroup v1/v2 hybrid
    // (tests/tests/podman.rs). Limits no higher than the test's own: podman
    // would raise them, which takes CAP_SYS_RESOURCE, not in the set.
    let mut cmd = Command::new("podman");
    cmd.args(["--cgroup-manager=cgroupfs", "--runtime", "runc", "run", "-d", "--name", name]);
    cmd.args(["--pid", "host", "--network", "host", "--read-only", "--security-opt", "seccomp=unconfined"]);
    cmd.args(["--ulimit", "nofile=8192:8192", "--ulimit", "nproc=1024:1024"]);
    cmd.args(["--cap-drop", "all", "--cap-add", &caps.join(",")]);
    for (host, inside) in mounts {
        cmd.arg("-v").arg(format!("{}:{inside}", host.display()));
    }
    for (key, value) in env {
        cmd.arg("-e").arg(format!("{key}={value}"));
    }
    let out = output_bounded(cmd.arg(image).args(args), "podman run");
    assert!(out.status.success(), "podman run {name}: {}", said(&out));
}

#[test]
fn the_daemonset_runs_from_its_image_as_the_seed_drives_it() {
    let podman = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    if !needed(podman, "podman", "the Debian package podman; `make test` installs it") {
        return;
    }
    let statics = bin_dir().join("sigvisor-static").is_file();
    if !needed(statics, "the static sigvisor", "`make test` builds it: make static") {
        return;
    }
    let Some(cluster) = Cluster::with_traces("daemonset") else { return };
    cluster.apply(&repo().join("deploy/rbac.yaml"));
    let deploy = repo().join("deploy");
    let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", deploy.to_str().expect("path")]);
    assert!(out.status.success(), "kubectl apply --dry-run=server -f deploy/: {}", said(&out));

    let image = format!("localhost/sigvisor-test-{}:latest", std::process::id());
    let built = output_bounded(Command::new(repo().join("deploy/build-image")).arg(&image), "build-image");
    assert!(built.status.success(), "deploy/build-image: {}", said(&built));
    let _image = Image(image.clone());

    // The ServiceAccount's token and the cluster's CA where a pod finds them.
    let dir = scratch("daemonset-host");
    let account = dir.join("serviceaccount");
    std::fs::create_dir_all(&account).expect("mkdir");
    let token = cluster.kubectl(&["create", "token", "sigvisor", "-n", "sigvisor", "--duration", "1h"]);
    assert!(token.status.success(), "kubectl create token: {}", said(&token));
    std::fs::write(account.join("token"), String::from_utf8_lossy(&token.stdout).trim()).expect("token");
    std::fs::copy(cluster.dir.join("pki/ca.crt"), account.join("ca.crt")).expect("ca.crt");
    std::fs::write(account.join("namespace"), "sigvisor").expect("namespace");
    // The host paths as a kubelet makes them (DirectoryOrCreate: 0755).
    let (run, state) = (dir.join("run"), dir.join("state"));
    for d in [&run, &state] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }

    let text = std::fs::read_to_string(deploy.join("daemonset.yaml")).expect("deploy/daemonset.yaml");
    let caps = capabilities(&yaml_serde::from_str(&text).expect("the DaemonSet parses"));
    let id = std::process::id();
    let (keeper, agent) = (format!("sigvisor-test-keeper-{id}"), format!("sigvisor-test-agent-{id}"));
    let _pod = Pod(vec![agent.clone(), keeper.clone()]);
    run_container(
        &keeper,
        &image,
        &caps,
        &[(&run, "/run/sigvisor")],
        &[],
        &["keeper", "--socket", "/run/sigvisor/keeper.sock"],
    );
    let probe = |path: &Path| {
        let out = output_bounded(sigvisor().arg("probe").arg(path), "sigvisor probe");
        out.status.success()
    };
    eventually("the keeper listens", || probe(&run.join("keeper.sock")));
    let port = cluster_port(&cluster);
    let mounts: [(&Path, &str); 3] = [
        (&run, "/run/sigvisor"),
        (&state, "/var/lib/sigvisor"),
        (&account, "/var/run/secrets/kubernetes.io/serviceaccount"),
    ];
    let env = [
        ("NODE_NAME", "minikube"),
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
        ("KUBERNETES_SERVICE_PORT", port.as_str()),
        ("RUST_LOG", "sigvisor=info"),
    ];
    run_container(&agent, &image, &caps, &mounts, &env, &["serve", "--kubernetes"]);
    eventually("the agent serves", || probe(&run.join("control.sock")));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&run).expect("run").permissions());
    assert_eq!(mode & 0o777, 0o700, "serve makes its host directory private");

    // The seed's Example Trace, verbatim.
    assert!(cluster.kubectl(&["create", "namespace", "gadget"]).status.success());
    cluster.apply(&repo().join("profiles/signal.yaml"));
    let field = |path: &str| {
        let jsonpath = format!("jsonpath={{{path}}}");
        said(&cluster.kubectl(&["get", "-n", "gadget", "trace", "seccomp", "-o", &jsonpath]))
    };
    let logs = || said(&output_bounded(Command::new("podman").args(["logs", &agent]), "podman logs"));
    eventually("the agent writes the seed Trace's status", || !field(".status.output").is_empty());
    assert_eq!(field(".status.state"), "", "runMode Manual: nothing until started\n{}", logs());

    // A program of another uid, handed over on the agent socket as a
    // runtime would: supervised, and not signalled before `start`.
    let closes = |n: &str| {
        let child = Command::new(bin("sigvisor-launch"))
            .arg("--socket")
            .arg(run.join("agent.sock"))
            .args(["--", "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", closer()])
            .args(["--closes", n])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sigvisor-launch");
        let out = wait_bounded(child, "the closer under the agent");
        assert_eq!(exit_code(&out), 0, "{}\n{}", said(&out), logs());
        report(&out)
    };
    let before = closes("10");
    assert_eq!(before["signals"], 0, "signalled before start: {before}");

    let annotate = |op: &str| {
        let annotation = format!("gadget.kinvolk.io/operation={op}");
        let out = cluster.kubectl(&["annotate", "--overwrite", "-n", "gadget", "trace/seccomp", &annotation]);
        assert!(out.status.success(), "kubectl annotate: {}", said(&out));
    };
    annotate("start");
    eventually("started, the annotation consumed", || {
        field(".status.state") == "Started"
            && field(r".metadata.annotations.gadget\.kinvolk\.io/operation").is_empty()
    });
    assert_precise(&closes("30"));
    eventually("the signals in status.output", || field(".status.output").contains("signalsSent: 30"));

    annotate("stop");
    eventually("stopped", || field(".status.state") == "Stopped");
    let after = closes("10");
    assert_eq!(after["signals"], 0, "signalled after stop: {after}");
    assert!(field(".status.output").contains("signalsSent: 30"), "{}", field(".status.output"));
}

/// The image the test built, removed when it ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// The API server's port, from the admin kubeconfig `tests/cluster/up` wrote.
fn cluster_port(cluster: &Cluster) -> String {
    let config = std::fs::read_to_string(&cluster.kubeconfig).expect("kubeconfig");
    let server = config.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("a server line");
    server.rsplit(':').next().expect("a port").trim_end_matches('/').to_owned()
}
