//! `coffer verify [--read-data [--subset N%]]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::EXIT_FINDINGS;
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Download packs and re-hash their chunks; authenticate snapshot records.
    #[arg(long, requires = "identity")]
    read_data: bool,
    /// With --read-data: the share of packs to read, chosen at random (e.g. `10%`).
    #[arg(long, requires = "read_data", value_parser = parse_percent)]
    subset: Option<f64>,
    /// The restorer's identity file (mode 0600): an age identity, an age plugin's, or an
    /// ssh-ed25519 private key.
    #[arg(long, short, env = "COFFER_IDENTITY")]
    identity: Option<PathBuf>,
    /// Check only this target (by its name in the config); else every target in turn.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
    /// Do not draw a progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let read_data = match (a.read_data, a.identity) {
        (true, Some(path)) => Some(std::sync::Arc::new(crate::keys::Identity::load(&path)?)),
        _ => None,
    };
    let opts = crate::verify::Options {
        target: a.target,
        read_data,
        subset: a.subset.unwrap_or(1.0),
        progress: !a.no_progress,
    };
    let r = crate::verify::run(&cfg, &opts)?;
    if a.json {
        super::json::print(&r)?;
    } else {
        println!(
            "checked {} object versions on {}; read {} packs ({}), verified {} chunks",
            r.objects_checked,
            r.targets.join(", "),
            r.packs_read,
            bytes(r.bytes_read),
            r.chunks_verified
        );
        if r.learned > 0 {
            println!("recorded {} objects the targets hold that the catalog did not know of", r.learned);
        }
        if r.packs_for_other_keys > 0 {
            println!(
                "{} packs are encrypted to keys this identity is not one of (written before it was added): \
                 their content hashes hold; verify them with an older key (`coffer key list`)",
                r.packs_for_other_keys
            );
        }
        if r.findings.is_empty() {
            println!("no findings");
        }
        for f in &r.findings {
            println!("  - {}: target {}: {}", f.finding.kind(), f.target, f.finding);
        }
        if !r.snapshots_affected.is_empty() {
            let list: Vec<&str> = r.snapshots_affected.iter().map(String::as_str).collect();
            println!("snapshots affected: {}", list.join(", "));
        }
    }
    Ok(if r.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) })
}

/// `10%` as 0.1; a share of 0 reads nothing, so it is refused.
fn parse_percent(s: &str) -> Result<f64, String> {
    // A bare number could mean packs or a share: it is refused, not guessed.
    let Some(number) = s.strip_suffix('%') else {
        return Err(format!("`{s}` is not a percentage: write it with % (e.g. `{s}%` of the packs)"));
    };
    let n: f64 = number.parse().map_err(|_| format!("`{s}` is not a percentage like 10%"))?;
    if !(n > 0.0 && n <= 100.0) {
        return Err(format!("`{s}`: expected a percentage above 0% and at most 100%"));
    }
    Ok(n / 100.0)
}
