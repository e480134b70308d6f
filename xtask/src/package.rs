//! `cargo xtask package`: the Debian package of lbd, lbctl and lb-decap,
//! built with `dpkg-deb` from a staged tree: the binaries, the systemd
//! units (pointing at /usr/bin), man pages and shell completions generated
//! by the binaries themselves (`--generate`, lb_userspace::cli_docs), an
//! example configuration, the BIRD configurations and the docs. No
//! maintainer scripts: installing enables nothing, as the docs say how.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const BINARIES: [&str; 3] = ["lbd", "lbctl", "lb-decap"];

/// Build the package from the binaries in `bin_dir` into `out_dir`; its
/// path. `quick`: light compression (debug binaries, for tests).
pub fn build(root: &Path, bin_dir: &Path, out_dir: &Path, quick: bool) -> Result<PathBuf> {
    let version = workspace_version(root)?;
    let stage = out_dir.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    for name in BINARIES {
        install(
            &bin_dir.join(name),
            &stage.join("usr/bin").join(name),
            0o755,
        )?;
    }
    for unit in ["lbd.service", "lb-decap.service"] {
        let text = fs::read_to_string(root.join("deploy/systemd").join(unit))?;
        write(
            &stage.join("lib/systemd/system").join(unit),
            &text.replace("/usr/local/bin/", "/usr/bin/"),
            0o644,
        )?;
    }
    man_pages(bin_dir, &stage.join("usr/share/man/man1"))?;
    completions(bin_dir, &stage)?;
    let doc = stage.join("usr/share/doc/lbd");
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    for entry in fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            install(&path, &doc.join(path.file_name().unwrap()), 0o644)?;
        }
    }
    for example in ["lbd.json", "lbd.toml"] {
        install(
            &root.join("examples").join(example),
            &doc.join("examples").join(example),
            0o644,
        )?;
    }
    for conf in ["lb-node.conf", "router.conf"] {
        install(
            &root.join("deploy/bird").join(conf),
            &doc.join("examples/bird").join(conf),
            0o644,
        )?;
    }
    write(&stage.join("DEBIAN/control"), &control(&version), 0o644)?;
    let deb = out_dir.join(format!("lbd_{version}_amd64.deb"));
    let compression: &[&str] = if quick { &["-Zgzip", "-z1"] } else { &["-Zxz"] };
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .args(compression)
        .arg("--build")
        .arg(&stage)
        .arg(&deb))?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn control(version: &str) -> String {
    format!(
        "Package: lbd\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: lb developers <lb-dev@example.invalid>\n\
         Depends: libc6 (>= 2.36)\n\
         Recommends: bird2\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP Maglev layer-4 load balancer\n \
         lbd attaches an XDP program that balances virtual services over\n \
         backends with Maglev consistent hashing and a connection table;\n \
         lbctl controls it; lb-decap terminates its tunnels on backends.\n"
    )
}

/// Every man page of every binary, gzipped as Debian wants them.
fn man_pages(bin_dir: &Path, dir: &Path) -> Result<()> {
    for name in BINARIES {
        run(Command::new(bin_dir.join(name))
            .args(["--generate", "man"])
            .arg(dir))?;
    }
    for entry in fs::read_dir(dir)? {
        run(Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(entry?.path()))?;
    }
    Ok(())
}

/// bash, zsh and fish completions of every binary, where each shell looks.
fn completions(bin_dir: &Path, stage: &Path) -> Result<()> {
    for name in BINARIES {
        for (shell, path) in [
            (
                "bash",
                format!("usr/share/bash-completion/completions/{name}"),
            ),
            ("zsh", format!("usr/share/zsh/vendor-completions/_{name}")),
            (
                "fish",
                format!("usr/share/fish/vendor_completions.d/{name}.fish"),
            ),
        ] {
            let out = Command::new(bin_dir.join(name))
                .args(["--generate", "completions", shell])
                .output()
                .with_context(|| format!("running {name}"))?;
            if !out.status.success() {
                bail!(
                    "{name} --generate completions {shell}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            write(&stage.join(path), &String::from_utf8(out.stdout)?, 0o644)?;
        }
    }
    Ok(())
}

/// The workspace's version (`[workspace.package] version`).
fn workspace_version(root: &Path) -> Result<String> {
    let text = fs::read_to_string(root.join("Cargo.toml"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
        })
        .map(str::to_string)
        .context("no version in Cargo.toml")
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
