//! `cargo xtask upgrade-test`: the previous release's lbd replaced by this
//! tree's over the same pins, under traffic, and back again.
//!
//! The release's source is exported from its commit (`git archive`, no
//! worktree to clean up) into target/upgrade/, and its binaries built
//! there in debug mode with their own target directory; the eBPF object is
//! built by the release's own build.rs with the same toolchain as ours.
//! Then the `e2e_upgrade` test runs with `LB_UPGRADE_OLD_BINARIES` naming
//! that build's binaries (without it, the test skips itself).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The release upgrades are tested from: its tag, and the commit the tag
/// names, for a clone that has the commit but not the tag.
pub const PREVIOUS_RELEASE: Release = Release {
    tag: "v0.1.0",
    commit: "0099a28f15dcbe9e350f8e5344e5e00192dae220",
};

/// The variable the test reads the old binaries' directory from.
pub const OLD_BINARIES_VAR: &str = "LB_UPGRADE_OLD_BINARIES";

pub struct Release {
    pub tag: &'static str,
    pub commit: &'static str,
}

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let release = &PREVIOUS_RELEASE;
    let commit = resolve(root, release)?;
    let base = root.join("target/upgrade");
    let source = base.join(format!("src-{}", release.tag));
    export(root, &commit, &source)?;
    let target = base.join("target");
    println!(
        "xtask: building {} ({}) in {}",
        release.tag,
        &commit[..12],
        source.display()
    );
    super::cargo_in(
        &source,
        &["build", "--locked", "-p", "lb-userspace", "--bins"],
        &[("CARGO_TARGET_DIR", target.as_os_str())],
    )?;
    let built = started.elapsed();
    // This tree's binaries, which the test runs next to its executable.
    super::cargo(&["build", "--bins"])?;
    let old_binaries = target.join("debug");
    let tested = Instant::now();
    super::cargo_in(
        root,
        &[
            "test",
            "-p",
            "lb-tests",
            "--test",
            "e2e",
            "--",
            "e2e_upgrade::",
        ],
        &[(OLD_BINARIES_VAR, old_binaries.as_os_str())],
    )?;
    println!(
        "xtask: upgrade test passed: {} built in {:.0?}, test ran in {:.0?}, {:.0?} in all",
        release.tag,
        built,
        tested.elapsed(),
        started.elapsed()
    );
    Ok(())
}

/// The release's commit: its tag's if this clone has the tag (and it
/// still names that commit), else the recorded commit, which must be here.
fn resolve(root: &Path, release: &Release) -> Result<String> {
    let tagged = git(
        root,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("{}^{{commit}}", release.tag),
        ],
    );
    match tagged {
        Ok(commit) if commit == release.commit => return Ok(commit),
        Ok(other) => bail!(
            "tag {} names {other}, but xtask/src/upgrade.rs records {} for it: \
             fix the tag or the record",
            release.tag,
            release.commit
        ),
        Err(_) => {}
    }
    git(
        root,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("{}^{{commit}}", release.commit),
        ],
    )
    .with_context(|| {
        format!(
            "neither tag {} nor commit {} is in this clone: fetch them \
                 (`git fetch --tags`, or `git fetch --unshallow` in a shallow clone)",
            release.tag, release.commit
        )
    })
}

/// Export `commit`'s tree to `dir`, unless it is there already.
pub(crate) fn export(root: &Path, commit: &str, dir: &Path) -> Result<()> {
    let stamp = dir.join(".exported-commit");
    if std::fs::read_to_string(&stamp).is_ok_and(|c| c == commit) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let unpacked = Command::new("tar")
        .arg("-x")
        .current_dir(dir)
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("running tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !archived.success() || !unpacked.success() {
        bail!("exporting {commit} to {} failed", dir.display());
    }
    std::fs::write(&stamp, commit).with_context(|| format!("writing {}", stamp.display()))
}

pub(crate) fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
