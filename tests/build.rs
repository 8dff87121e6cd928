//! Builds the fixture targets (the C closer and adversary; plaingo, a Go
//! program with no handler of its own, when Go is installed) and tells the
//! tests where they are.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let src = "fixtures/closer.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=fixtures/adversary.c");
    println!("cargo:rerun-if-changed=fixtures/stacks.c");
    println!("cargo:rerun-if-changed=fixtures/rustcloser.rs");
    println!("cargo:rerun-if-changed=fixtures/hostile.c");
    println!("cargo:rerun-if-changed=fixtures/alloca.c");
    println!("cargo:rerun-if-changed=fixtures/handler.c");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let compiler = cc::Build::new().get_compiler();
    // A dynamic build for the host, a static one for busybox container rootfs.
    for (name, env, extra, src) in [
        ("closer", "SIGVISOR_FIXTURE_CLOSER", None, src),
        ("closer-static", "SIGVISOR_FIXTURE_CLOSER_STATIC", Some("-static"), src),
        ("adversary", "SIGVISOR_FIXTURE_ADVERSARY", None, "fixtures/adversary.c"),
        // Static: its closes run in its own binary, whose tables the
        // hostile-tenant tests craft.
        ("hostile", "SIGVISOR_FIXTURE_HOSTILE", Some("-static"), "fixtures/hostile.c"),
        // With DWARF (-g): its frames have file:line.
        ("stacks", "SIGVISOR_FIXTURE_STACKS", Some("-g"), "fixtures/stacks.c"),
        // A caller whose stack pointer moves after its prologue (stacks.rs).
        // -O0: the plain frame-pointer prologue, then the alloca.
        ("alloca", "SIGVISOR_FIXTURE_ALLOCA", Some("-O0"), "fixtures/alloca.c"),
        // A close in a signal handler (stacks.rs).
        ("handler", "SIGVISOR_FIXTURE_HANDLER", None, "fixtures/handler.c"),
        // With frame pointers, whose frames need RBP to unwind (stacks.rs).
        ("closer-fp", "SIGVISOR_FIXTURE_CLOSER_FP", Some("-fno-omit-frame-pointer"), src),
        (
            "closer-fp-static",
            "SIGVISOR_FIXTURE_CLOSER_FP_STATIC",
            Some("-static -fno-omit-frame-pointer"),
            src,
        ),
    ] {
        let out = out_dir.join(name);
        let status = Command::new(compiler.path())
            .args(["-O2", "-Wall", "-Wextra", "-pthread"])
            .args(extra.map(|e| e.split(' ')).into_iter().flatten())
            .arg("-o")
            .arg(&out)
            .arg(src)
            .status()
            .expect("running the C compiler");
        assert!(status.success(), "compiling {src} ({name}) failed");
        println!("cargo:rustc-env={env}={}", out.display());
    }
    build_plaingo(&out_dir);
    build_rustcloser(&out_dir);
    // An i386 build on x86_64, to check that the filter traps the compat ABI
    // too (needs gcc-multilib, which `make test` installs).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        let out = out_dir.join("closer-i386");
        let built = Command::new(compiler.path())
            .args(["-m32", "-static", "-O2", "-Wall", "-Wextra", "-pthread", "-o"])
            .arg(&out)
            .arg(src)
            .output();
        match built {
            Ok(o) if o.status.success() => {
                println!("cargo:rustc-env=SIGVISOR_FIXTURE_CLOSER_I386={}", out.display())
            }
            _ => println!(
                "cargo:warning=no i386 build of {src} (is gcc-multilib installed?); its test will not run"
            ),
        }
    }
}

/// tests/fixtures/plaingo with Debian's Go 1.19 (stdlib only: nothing is
/// downloaded). Without Go its tests skip locally and fail on CI.
fn build_plaingo(out_dir: &Path) {
    let src = Path::new("fixtures/plaingo");
    for file in ["main.go", "go.mod"] {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }
    if !Command::new("go").arg("version").output().is_ok_and(|o| o.status.success()) {
        println!(
            "cargo:warning=go is not installed (`make test` installs golang-go): the plaingo tests will not run"
        );
        return;
    }
    // target/<profile>/build/<pkg>/out → target/go-build, shared with the
    // gosignal test's builds.
    let cache = out_dir.ancestors().nth(4).unwrap_or(out_dir).join("go-build");
    let out = out_dir.join("plaingo");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(src)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", cache)
        .output()
        .expect("running go build");
    assert!(
        built.status.success(),
        "go build of {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    println!("cargo:rustc-env=SIGVISOR_FIXTURE_PLAINGO={}", out.display());
}

/// tests/fixtures/rustcloser.rs, a Rust release build (no frame pointers,
/// symbols kept), with the rustc that builds these tests.
fn build_rustcloser(out_dir: &Path) {
    let out = out_dir.join("rustcloser");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=3", "-C", "panic=abort", "-o"])
        .arg(&out)
        .arg("fixtures/rustcloser.rs")
        .status()
        .expect("running rustc");
    assert!(status.success(), "compiling fixtures/rustcloser.rs failed");
    println!("cargo:rustc-env=SIGVISOR_FIXTURE_RUSTCLOSER={}", out.display());
}
