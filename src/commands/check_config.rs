//! `coffer check-config [--remote]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Also ask the target: it answers, holds this repository, and has Object Lock and
    /// versioning on where the config locks.
    #[arg(long)]
    remote: bool,
    /// Print `{"ok": …, "problems": […]}`.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let mut problems = crate::preflight::check(&cfg);
    // The target is asked even when this host is not ready (before `init`, say).
    if a.remote {
        problems.extend(crate::preflight::check_remote(&cfg));
    }
    let warnings = crate::preflight::warnings(&cfg);
    let code = if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if a.json {
        super::json::print(
            &serde_json::json!({ "ok": problems.is_empty(), "problems": problems, "warnings": warnings }),
        )?;
        return Ok(code);
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if problems.is_empty() {
        println!(
            "{}: {} jobs, state directory {}, targets {}{}: no problem found",
            config.display(),
            cfg.jobs.len(),
            cfg.state_dir.display(),
            cfg.targets.iter().map(|t| format!("{} ({})", t.name, t.url)).collect::<Vec<_>>().join(", "),
            if a.remote { " (answering)" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    // On standard error, so that `-q` (which silences the summary) still shows them.
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(ExitCode::FAILURE)
}
