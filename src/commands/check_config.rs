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
    if a.remote && problems.is_empty() {
        problems.extend(crate::preflight::check_remote(&cfg));
    }
    let code = if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if a.json {
        println!("{}", serde_json::json!({ "ok": problems.is_empty(), "problems": problems }));
        return Ok(code);
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
    for p in &problems {
        println!("problem: {p}");
    }
    Ok(ExitCode::FAILURE)
}
