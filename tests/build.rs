//! Builds the C fixture target and tells the tests where it is.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "fixtures/closer.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("closer");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "compiling {src} failed");
    println!("cargo:rustc-env=SIGVISOR_FIXTURE_CLOSER={}", out.display());
}
