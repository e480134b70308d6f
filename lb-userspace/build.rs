//! Builds the eBPF object (`lb-ebpf`) so the binaries can embed it.
//!
//! The BPF target needs `-Z build-std=core`, so the compiler must have the
//! library source. We use, in order: `$LB_BPF_TOOLCHAIN`; a rustup `nightly`
//! that has rust-src; the `lb-bpf` toolchain that `cargo xtask setup` links
//! to Debian's rustc-web + rust-web-src.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};
use aya_build::{Package, Toolchain};

const LINKED_TOOLCHAIN: &str = "lb-bpf";

fn sysroot(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn has_rust_src(sysroot: &str) -> bool {
    Path::new(sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn pick_toolchain() -> anyhow::Result<String> {
    if let Ok(name) = std::env::var("LB_BPF_TOOLCHAIN") {
        return Ok(name);
    }
    for name in ["nightly", LINKED_TOOLCHAIN] {
        if sysroot(name).is_some_and(|s| has_rust_src(&s)) {
            return Ok(name.to_string());
        }
    }
    bail!(
        "no toolchain can build the eBPF program (it needs rust-src for -Z build-std=core): \
         run `cargo xtask setup`, or set LB_BPF_TOOLCHAIN to a rustup toolchain with rust-src"
    )
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LB_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed=../lb-common/src");
    let toolchain = pick_toolchain()?;
    // build-std is unstable; the Debian compiler is a stable release.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        no_default_features: false,
        features: &[],
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
        .with_context(|| format!("building the eBPF program with toolchain {toolchain}"))
}
