//! Developer workflows: `cargo xtask setup | build | test | upgrade-test |
//! demo | bench | package`.
//!
//! Every command first runs `setup`, which installs what building the eBPF
//! program needs, idempotently, and says what it does. xtask itself depends
//! on nothing of ours, so it builds on a machine that has nothing yet.

mod bench_against;
mod package;
mod setup;
mod upgrade;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (apt packages, bpf-linker, linked rustup toolchain).
    Setup,
    /// Build everything in release mode (the binaries embed the eBPF object).
    Build,
    /// Check formatting and lints, then run all tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the previous release and test upgrading from it and back,
    /// under traffic (needs root).
    UpgradeTest,
    /// Run the demo (needs root): one load balancer, or `cluster`: three
    /// LB nodes behind a BGP router.
    Demo {
        #[arg(value_enum)]
        which: Option<DemoKind>,
    },
    /// Run the benchmarks; results in target/bench/ (needs root).
    Bench {
        /// Instead, compare the per-packet figures with those of another
        /// revision (a commit, branch or tag), both built and run in turns;
        /// results in target/bench/against.md and .json.
        #[arg(long, value_name = "REV")]
        against: Option<String>,
        /// Rounds of each side with --against.
        #[arg(long, default_value_t = 5, requires = "against")]
        rounds: usize,
    },
    /// Build the Debian package (binaries, systemd units, man pages,
    /// completions, examples, docs) into target/dist/.
    Package {
        /// Package the debug binaries (quicker; for tests).
        #[arg(long)]
        debug: bool,
        /// Where to put the package (default: target/dist).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoKind {
    /// Three LB nodes behind a router running BIRD: a backend added, a
    /// node cut off, another drained, under traffic.
    Cluster,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            // The default members: everything but lb-ebpf, which build.rs
            // compiles for the BPF target.
            cargo(&["build", "--release"])
        }
        Cmd::Test { args } => {
            setup::run()?;
            require_root("the tests load XDP programs and create network namespaces")?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            // The cp_ tests run the real lbd and lbctl binaries.
            cargo(&["build", "--bins"])?;
            // lb-ebpf is checked by clippy above and exercised through the
            // golden tests; it has no host tests of its own.
            let mut test = vec!["test", "--workspace", "--exclude", "lb-ebpf"];
            test.extend(args.iter().map(String::as_str));
            cargo(&test)
        }
        Cmd::UpgradeTest => {
            setup::run()?;
            require_root("the test loads XDP programs and creates network namespaces")?;
            upgrade::run(&workspace_root())
        }
        Cmd::Bench {
            against: Some(rev),
            rounds,
        } => {
            setup::run()?;
            require_root("the benchmarks load XDP programs")?;
            bench_against::run(&workspace_root(), &rev, rounds)
        }
        Cmd::Bench { against: None, .. } => {
            setup::run()?;
            require_root("the benchmarks load XDP programs")?;
            setup::bench_tools()?;
            // The control-plane figures run the real lbd.
            cargo(&["build", "--release", "--bins"])?;
            cargo(&[
                "run",
                "--release",
                "--quiet",
                "-p",
                "lb-tests",
                "--example",
                "bench",
            ])?;
            // The packet fuzzers' longer run (lb and lb_decap): ten times
            // CI's cases or more, a new seed.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1);
            println!("xtask: packet fuzzing (lb, lb_decap), 300,000 cases, FUZZ_SEED={seed}");
            // SAFETY: single-threaded here; the variables are for the child.
            unsafe {
                std::env::set_var("FUZZ_CASES", "300000");
                std::env::set_var("FUZZ_SEED", seed.to_string());
            }
            cargo(&[
                "test",
                "--release",
                "-p",
                "lb-tests",
                "--test",
                "fuzz",
                "--",
                "fuzz_packets::",
                "fuzz_decap::",
            ])
        }
        Cmd::Package { debug, out } => {
            setup::run()?;
            let root = workspace_root();
            let profile = if debug { "debug" } else { "release" };
            if debug {
                cargo(&["build", "--bins"])?;
            } else {
                cargo(&["build", "--release", "--bins"])?;
            }
            let out = out.unwrap_or_else(|| root.join("target/dist"));
            std::fs::create_dir_all(&out)?;
            let deb = package::build(&root, &root.join("target").join(profile), &out, debug)?;
            println!("xtask: {}", deb.display());
            Ok(())
        }
        Cmd::Demo { which } => {
            setup::run()?;
            require_root("the demo loads XDP programs and creates network namespaces")?;
            // The demo runs the real lbd and lbctl (and lb-decap, BIRD).
            cargo(&["build", "--release", "--bins"])?;
            let example = match which {
                None => "demo",
                Some(DemoKind::Cluster) => "demo_cluster",
            };
            cargo(&[
                "run",
                "--release",
                "--quiet",
                "-p",
                "lb-tests",
                "--example",
                example,
            ])
        }
    }
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Run cargo (the one that runs us) in the workspace root.
fn cargo(args: &[&str]) -> Result<()> {
    cargo_in(&workspace_root(), args, &[])
}

/// Run cargo in `dir` with `envs` added to the environment.
fn cargo_in(dir: &std::path::Path, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
