//! `coffer completions SHELL` and `coffer man`.

use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Prints the completion script for a shell (e.g. `coffer completions bash >
/// /etc/bash_completion.d/coffer`) of `cmd`, the whole command line.
pub fn run(a: Args, mut cmd: clap::Command) -> Result<ExitCode> {
    clap_complete::generate(a.shell, &mut cmd, "coffer", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// A command's own page (`coffer man restore` is coffer-restore(1)); without it,
    /// coffer(1).
    command: Option<String>,
}

/// Prints a man page of `top`, the whole command line, in roff (`coffer man | man -l -`).
pub fn man(a: ManArgs, top: clap::Command) -> Result<ExitCode> {
    let page = match &a.command {
        None => top,
        Some(name) => {
            let Some(sub) = top.find_subcommand(name) else {
                anyhow::bail!("no command `{name}` (see `coffer --help`)");
            };
            // Named as the top page lists it, with the global options it takes too.
            let global: Vec<clap::Arg> = top.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
            // clap names are &'static str; this one lives as long as the process (it exits next).
            let page_name: &'static str = Box::leak(format!("coffer-{name}").into_boxed_str());
            sub.clone().name(page_name).version(env!("CARGO_PKG_VERSION")).args(global)
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
