//! `coffer recover --identity FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::{EXIT_FINDINGS, print_findings};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// The restorer's identity file (mode 0600): an age identity, an age plugin's, or an
    /// ssh-ed25519 private key.
    #[arg(long, short, env = "COFFER_IDENTITY")]
    identity: PathBuf,
    /// Rebuild from this target (by its name in the config; else the first). Then
    /// `coffer verify --target NAME` records what each other target holds.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// The repository fingerprint `coffer init` printed (kept beside the identity): the
    /// target's repository record must have it. Without it, every configured target
    /// that answers must hold the same record.
    #[arg(long, value_name = "HEX")]
    expect_fingerprint: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
    /// Do not draw a progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let r = crate::recover::run(
        &cfg,
        &crate::recover::Options {
            identity: a.identity,
            target: a.target,
            expect_fingerprint: a.expect_fingerprint,
            progress: !a.no_progress,
        },
    )?;
    if a.json {
        super::json::print(&r)?;
    } else {
        println!(
            "recovered repository {} from target {} ({}): {} snapshots, {} packs ({} already recorded by an \
             earlier attempt)",
            r.repo_id,
            r.target,
            cfg.target(&r.target).map(|t| t.url.as_str()).unwrap_or("?"),
            r.snapshots.len(),
            r.packs,
            r.packs_resumed
        );
        println!("repository fingerprint {} ({})", r.fingerprint, r.fingerprint_check);
        for crate::recover::Recovered { job, snapshot: id } in &r.snapshots {
            println!("  snapshot {job}/{id}");
        }
        if !r.other_keys.is_empty() {
            println!(
                "{} objects are encrypted to keys this identity is not one of (made before it was added; recover \
                 with an older key to include them): {}",
                r.other_keys.len(),
                r.other_keys.join(", ")
            );
        }
        if r.duplicates > 0 {
            println!("{} identical duplicate versions (retried uploads) ignored", r.duplicates);
        }
        if r.tampered() {
            println!("TAMPERING FOUND: {}", crate::inventory::summarize(&r.findings));
        }
        print_findings(&r.findings);
    }
    Ok(if r.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) })
}
