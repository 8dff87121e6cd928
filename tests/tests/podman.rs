//! A real high-level client: Debian's podman runs a busybox image (imported
//! offline from a rootfs the test builds, `--network none`, no registry)
//! through `sigvisor oci runtime` registered as its runtime, with crun
//! underneath (listener mode, the flag) and with runc (wrap mode).

use std::path::{Path, PathBuf};
use std::process::Command;

use sigvisor_tests::containers::*;
use sigvisor_tests::engines::shim_script;
use sigvisor_tests::*;

/// podman, if installed; on CI its absence is a broken setup.
fn podman_ready() -> bool {
    if !require_tools() {
        return false;
    }
    let present = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    needed(present, "podman", "the Debian package podman; `make test` installs it")
}

/// An image from the test bundle's rootfs (busybox and the static closer).
fn import_image(name: &str) -> String {
    let rootfs = bundle(name, &["/bin/true"]).join("rootfs");
    let tar = scratch(&format!("{name}-image")).join("rootfs.tar");
    let out = output_bounded(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."), "tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let image = format!("localhost/sigvisor-test-{}-{name}:latest", std::process::id());
    let out =
        output_bounded(Command::new("podman").arg("import").arg("-q").arg(&tar).arg(&image), "podman import");
    assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
    image
}

/// The shim registered as podman's runtime: a script named after the real
/// runtime (podman judges a runtime's abilities by its name).
fn shim(dir: &Path, runtime: &str, socket: &Path) -> PathBuf {
    shim_script(&dir.join(runtime), runtime, socket, "")
}

const LIMITS: &str = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024";
const CLOSER_ARGS: &str = "/bin/closer --threads 2 --closes 200";

#[test]
fn podman_through_the_shim_with_crun_and_runc() {
    if !podman_ready() {
        return;
    }
    let server = Server::start("podman", &[]);
    let image = import_image("podman");
    let dir = scratch("podman-shims");
    let fds_before = server.open_fds();
    // crun: listener mode. It refuses cgroup v1/v2 hybrids, so it runs with
    // cgroups disabled, in a mount namespace without the v2 hierarchy.
    let crun = shim(&dir, "crun", &server.socket);
    let script = format!(
        "umount /sys/fs/cgroup/unified 2>/dev/null; exec podman --runtime {} run --rm --network none \
         --cgroups=disabled {LIMITS} {image} {CLOSER_ARGS}",
        crun.display()
    );
    let out = output_bounded(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]),
        "podman crun",
    );
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    // runc: wrap mode (runc 1.1 cannot make the filter wait killable).
    let runc = shim(&dir, "runc", &server.socket);
    let out = output_bounded(
        Command::new("podman")
            .arg("--cgroup-manager=cgroupfs")
            .arg("--runtime")
            .arg(&runc)
            .args(["run", "--rm", "--network", "none"])
            .args(LIMITS.split(' '))
            .arg(&image)
            .args(CLOSER_ARGS.split(' ')),
        "podman runc",
    );
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_precise(&report(&out));
    let _ = Command::new("podman").args(["rmi", "-f", &image]).output();
    // Both containers removed (--rm), and serve is as it was.
    assert_eq!(server.open_fds(), fds_before, "serve holds no fd of a removed container");
    let (traces, log) = server.stop();
    let summary = summary(&traces[0]);
    let lines = summary["containers"].as_sequence().expect("container lines").clone();
    assert_eq!(lines.len(), 2, "{summary:?}\n{log}");
    for line in &lines {
        assert_eq!(line["signals"], 400, "{line:?}");
    }
    assert!(lines.iter().any(|l| l["filter"] == "sigvisor"), "{lines:?}");
}
