//! Builds the C fixture target and tells the tests where it is.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "fixtures/closer.c";
    println!("cargo:rerun-if-changed={src}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let compiler = cc::Build::new().get_compiler();
    // A dynamic build for the host, a static one for busybox container rootfs.
    for (name, env, extra) in [
        ("closer", "SIGVISOR_FIXTURE_CLOSER", None),
        ("closer-static", "SIGVISOR_FIXTURE_CLOSER_STATIC", Some("-static")),
    ] {
        let out = out_dir.join(name);
        let status = Command::new(compiler.path())
            .args(["-O2", "-Wall", "-Wextra", "-pthread"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg(src)
            .status()
            .expect("running the C compiler");
        assert!(status.success(), "compiling {src} ({name}) failed");
        println!("cargo:rustc-env={env}={}", out.display());
    }
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
