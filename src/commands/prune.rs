//! `coffer prune [--yes]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::progress::bytes;
use crate::prune::What;

#[derive(clap::Args)]
pub struct Args {
    /// Really delete.
    #[arg(long)]
    yes: bool,
    /// Prune only this target (by its name in the config); else every target in turn.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let s = crate::prune::run(&cfg, &crate::prune::Options { yes: a.yes, target: a.target })?;
    if a.json {
        super::json::print(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !s.forgotten.is_empty() {
        println!("forgot {} snapshots past their retain-until: {}", s.forgotten.len(), s.forgotten.join(", "));
    }
    for job in &s.frozen {
        println!(
            "job {job} is frozen: the tripwire found a run's changes anomalous and nobody acknowledged it \
             (`coffer status`, `coffer ack`); none of its snapshots is forgotten or deleted"
        );
    }
    let verb = if a.yes { "deleted" } else { "would delete (pass --yes to delete)" };
    let total: u64 = s.candidates.iter().map(|c| c.size).sum();
    println!("{verb}: {} object versions, {}", s.candidates.len(), bytes(total));
    for c in &s.candidates {
        let why = match &c.what {
            What::Pack { .. } => "pack no live snapshot needs",
            What::Snapshot { .. } => "record of a forgotten snapshot",
            What::Canary => "init canary",
        };
        let version = c.version.as_deref().unwrap_or("-");
        println!("  {}: {}  {version}  {}  ({why})", c.target, c.key, bytes(c.size));
    }
    for crate::prune::StillLocked { target, key, locked_until } in &s.still_locked {
        let until = crate::time::format_utc(*locked_until);
        println!("  {target}: still locked on the server until {until}, left alone: {key}");
    }
    Ok(ExitCode::SUCCESS)
}
