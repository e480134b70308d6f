//! Idempotent installation of what building and running the eBPF program
//! needs. Each step checks first and only acts when something is missing.
//!
//! The usual aya route is a rustup nightly with rust-src. Where that does
//! not exist (no rustup downloads), Debian's rustc-web + rust-web-src is
//! linked into rustup as the `lb-bpf` toolchain; see
//! lb-userspace/build.rs for how the build picks one.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

const LINKED_TOOLCHAIN: &str = "lb-bpf";
const LINKED_TOOLCHAIN_DIR: &str = "/opt/lb-bpf-toolchain";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Tools the tests and the demo use at run time. BIRD 2 (`bird2`) is the
/// BGP speaker of deploy/bird/, whose configurations the tests run;
/// nftables holds a handshake's ACK back in e2e_second_chance; tcpdump
/// reads the pcapng file of e2e_capture.
const RUNTIME_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "util-linux",
    "bird2",
    "nftables",
    "tcpdump",
];
/// Debian's compiler and library source, for the linked toolchain.
const DEBIAN_RUST_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
/// bpf-linker is built against Debian's LLVM.
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev"];
/// The benchmarks' traffic generator (trafgen); nftables, the reference,
/// is a runtime package.
const BENCH_PACKAGES: &[&str] = &["netsniff-ng"];

pub fn run() -> Result<()> {
    let nightly = toolchain_has_rust_src("nightly");
    let mut packages: Vec<&str> = RUNTIME_PACKAGES.to_vec();
    packages.extend_from_slice(LLVM_PACKAGES);
    if nightly {
        say("a rustup nightly with rust-src exists: the eBPF build uses it");
    } else {
        packages.extend_from_slice(DEBIAN_RUST_PACKAGES);
    }
    apt_install(&packages)?;
    install_bpf_linker()?;
    if !nightly {
        link_debian_toolchain()?;
    }
    Ok(())
}

fn say(msg: &str) {
    println!("setup: {msg}");
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn toolchain_has_rust_src(toolchain: &str) -> bool {
    output("rustup", &["run", toolchain, "rustc", "--print", "sysroot"]).is_some_and(|sysroot| {
        Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
    })
}

/// What `cargo xtask bench` needs beyond `run`.
pub fn bench_tools() -> Result<()> {
    apt_install(BENCH_PACKAGES)
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s == "install ok installed")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        say(&format!("apt packages present: {}", packages.join(" ")));
        return Ok(());
    }
    say(&format!("installing apt packages: {}", missing.join(" ")));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_bpf_linker() -> Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output("bpf-linker", &["--version"]).is_some_and(|v| v == want) {
        say(&format!("{want} present"));
        return Ok(());
    }
    say(&format!(
        "building {want} against {LLVM_PREFIX} (a few minutes)"
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

/// Make Debian's rustc a rustup toolchain, so `rustup run lb-bpf cargo`
/// (what aya-build calls) uses it.
fn link_debian_toolchain() -> Result<()> {
    if toolchain_has_rust_src(LINKED_TOOLCHAIN) {
        say(&format!("rustup toolchain {LINKED_TOOLCHAIN} present"));
        return Ok(());
    }
    say(&format!(
        "linking Debian's rustc-web as rustup toolchain {LINKED_TOOLCHAIN} ({LINKED_TOOLCHAIN_DIR})"
    ));
    let dir = Path::new(LINKED_TOOLCHAIN_DIR);
    std::fs::create_dir_all(dir.join("bin"))?;
    for tool in ["rustc", "cargo", "rustdoc"] {
        symlink(&format!("/usr/bin/{tool}"), &dir.join("bin").join(tool))?;
    }
    symlink("/usr/lib", &dir.join("lib"))?;
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "link",
        LINKED_TOOLCHAIN,
        LINKED_TOOLCHAIN_DIR,
    ]))?;
    if !toolchain_has_rust_src(LINKED_TOOLCHAIN) {
        bail!("toolchain {LINKED_TOOLCHAIN} still has no library source under its sysroot");
    }
    Ok(())
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {target}", link.display()))
}
