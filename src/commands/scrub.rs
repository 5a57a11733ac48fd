//! `coffer scrub`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::EXIT_FINDINGS;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let opts = crate::scrub::Options { trigger: crate::catalog::Trigger::Manual, scheduled_for: None, stop: None };
    let r = crate::scrub::run(&cfg, &opts)?;
    if a.json {
        super::json::print(&r)?;
    } else {
        println!(
            "scrubbed {}: {} object versions listed, {} packs read ({})",
            r.targets.join(", "),
            r.objects_listed,
            r.packs_read,
            crate::progress::bytes(r.bytes_read)
        );
        for e in &r.errors {
            println!("  failed: {e}");
        }
        if r.findings.is_empty() && r.errors.is_empty() {
            println!("no findings");
        }
        for f in &r.findings {
            println!("  - {}: target {}: {}", f.finding.kind(), f.target, f.finding);
        }
    }
    Ok(match (r.errors.is_empty(), r.findings.is_empty()) {
        (false, _) => ExitCode::FAILURE,
        (true, false) => ExitCode::from(EXIT_FINDINGS),
        (true, true) => ExitCode::SUCCESS,
    })
}
