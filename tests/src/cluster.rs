//! A real Kubernetes control plane for the tests (tests/cluster/up): etcd
//! and kube-apiserver on loopback, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{bin, closer, exit_code, needed, output_bounded, repo, scratch, wait_bounded};

/// Whether the control plane's binaries are built (`make test` builds them
/// with Go 1.26 or later); on CI their absence fails.
pub fn cluster_ready() -> bool {
    let built = Command::new(repo().join("tests/cluster/build"))
        .env("SIGVISOR_CLUSTER_NO_BUILD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    needed(built, "the control plane", "`make test` builds it with Go 1.26 or later: tests/cluster/build")
}

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub fn up(name: &str) -> Cluster {
        let dir = scratch(name);
        // Ports of its own, so that clusters of tests running at once never
        // meet: the kernel's free ones, held together until asked, then
        // let go for etcd and kube-apiserver to take.
        let held: Vec<std::net::TcpListener> =
            (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let port = |i: usize| held[i].local_addr().expect("its port").port().to_string();
        let mut up = Command::new(repo().join("tests/cluster/up"));
        up.arg(&dir)
            .env("SIGVISOR_CLUSTER_PORT", port(0))
            .env("SIGVISOR_ETCD_PORT", port(1))
            .env("SIGVISOR_ETCD_PEER_PORT", port(2));
        drop(held);
        let out = up.output().expect("tests/cluster/up");
        assert!(
            out.status.success(),
            "tests/cluster/up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { kubeconfig: dir.join("kubeconfig"), dir }
    }

    /// A cluster serving deploy/crd.yaml; None (the test skipped) where
    /// the control plane is not built.
    pub fn with_traces(name: &str) -> Option<Cluster> {
        if !cluster_ready() {
            return None;
        }
        let cluster = Cluster::up(name);
        cluster.apply(&repo().join("deploy/crd.yaml"));
        let crd = "crd/traces.gadget.kinvolk.io";
        let out = cluster.kubectl(&["wait", "--for", "condition=established", "--timeout=60s", crd]);
        assert!(out.status.success(), "{crd}: {}", String::from_utf8_lossy(&out.stderr));
        Some(cluster)
    }

    /// `tests/cluster/down DIR`, then `up DIR` again: its data kept.
    pub fn restart(&self) {
        let down = Command::new(repo().join("tests/cluster/down")).arg(&self.dir).status();
        assert!(down.is_ok_and(|s| s.success()), "tests/cluster/down");
        let out =
            Command::new(repo().join("tests/cluster/up")).arg(&self.dir).output().expect("tests/cluster/up");
        assert!(out.status.success(), "tests/cluster/up again: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.dir.join("bin/kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        output_bounded(self.kubectl_command().args(args), "kubectl")
    }

    /// `kubectl apply -f FILE`, which must succeed.
    pub fn apply(&self, file: &Path) {
        let out = output_bounded(self.kubectl_command().arg("apply").arg("-f").arg(file), "kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/cluster/down")).arg(&self.dir).status();
    }
}

/// A container of pod NAMESPACE/POD named NAME, handed over on `socket` as
/// a kubelet's containerd hands it (the CRI annotations): the C closer
/// closing `closes` times. Its report, once it exited 0.
pub fn pod_container(
    socket: &Path,
    (namespace, pod, name): (&str, &str, &str),
    closes: &str,
) -> serde_json::Value {
    let mut cmd = Command::new(bin("sigvisor-launch"));
    cmd.arg("--socket").arg(socket).args(["--container-id", &format!("{pod}-{name}")]);
    for (key, value) in [
        ("sandbox-namespace", namespace),
        ("sandbox-name", pod),
        ("container-name", name),
        ("container-type", "container"),
    ] {
        cmd.arg("--annotation").arg(format!("io.kubernetes.cri.{key}={value}"));
    }
    let child = cmd
        .arg("--")
        .args([closer(), "--closes", closes])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sigvisor-launch");
    let out = wait_bounded(child, "a pod's container");
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    crate::containers::report(&out)
}
