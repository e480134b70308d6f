//! Man pages and shell completions for lbd, lbctl and lb-decap, generated
//! from their own command definitions so they never drift from `--help`.
//! Each binary answers a hidden first argument, `--generate`, before its
//! normal parsing (which would ask for a config file or a subcommand):
//!
//! - `--generate man DIR`: a page per command and subcommand, in DIR;
//! - `--generate completions bash|zsh|fish`: the script, on stdout.
//!
//! `cargo xtask package` runs them to build the Debian package.

use std::{io::Write, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

/// If the command line asks to generate documentation for `C`, the
/// command of binary `name`, do it and return the exit status; otherwise
/// `None`, and the binary runs as usual.
pub fn handle<C: CommandFactory>(name: &'static str) -> Option<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("--generate") {
        return None;
    }
    let result = match args.get(1).map(String::as_str) {
        Some("man") => match args.get(2) {
            Some(dir) => man(C::command().name(name), Path::new(dir)),
            None => Err("--generate man needs a directory".into()),
        },
        Some("completions") => match args.get(2).map(|s| s.parse::<Shell>()) {
            Some(Ok(shell)) => {
                let mut script = Vec::new();
                completions(C::command().name(name), shell, &mut script);
                std::io::stdout()
                    .write_all(&script)
                    .map_err(|e| format!("writing the script: {e}"))
            }
            _ => Err("--generate completions needs a shell: bash, zsh or fish".into()),
        },
        _ => Err("--generate man DIR | completions SHELL".into()),
    };
    Some(match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// Man pages (section 1) for `cmd` and each of its subcommands, in `dir`:
/// `lbctl.1`, `lbctl-vip.1`, `lbctl-vip-add.1`, ...
pub fn man(cmd: clap::Command, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The completion script of `cmd` for `shell`, in `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut Vec<u8>) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}
