//! `coffer init`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::init::Outcome;
use crate::store::Protection;

#[derive(clap::Args)]
pub struct Args {
    /// Go on even if the canary could be deleted (recorded, and repeated by every status report).
    #[arg(long)]
    allow_unprotected: bool,
    /// Print what was made as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let outcome = crate::init::run(&cfg, a.allow_unprotected)?;
    if a.json {
        let urls = cfg.targets.iter().map(|t| (t.name.as_str(), t.url.as_str()));
        let json = match &outcome {
            Outcome::Created { repo_id, fingerprint, targets } => {
                let targets: Vec<_> = targets
                    .iter()
                    .zip(urls)
                    .map(|((name, protection), (_, url))| serde_json::json!({ "target": name, "url": url, "protection": protection }))
                    .collect();
                serde_json::json!({ "repo_id": repo_id, "fingerprint": fingerprint, "created": true, "targets": targets })
            }
            Outcome::AlreadyInitialised { repo_id, fingerprint } => {
                let targets: Vec<_> =
                    urls.map(|(name, url)| serde_json::json!({ "target": name, "url": url })).collect();
                serde_json::json!({ "repo_id": repo_id, "fingerprint": fingerprint, "created": false, "targets": targets })
            }
        };
        super::json::print(&json)?;
        return Ok(ExitCode::SUCCESS);
    }
    match outcome {
        Outcome::Created { repo_id, fingerprint, targets } => {
            println!("initialised repository {repo_id}");
            println!("repository fingerprint: {fingerprint}");
            println!(
                "  keep it beside the restorer's identity: `coffer recover --expect-fingerprint` checks that the \
                 targets hold this repository, not one put in its place"
            );
            for ((name, protection), t) in targets.iter().zip(&cfg.targets) {
                match protection {
                    Protection::Unprotected => println!(
                        "target {name} ({}) is UNPROTECTED (no write-once retention): anyone with its \
                         credentials can delete the backups. Use a bucket with Object Lock for real backups.",
                        t.url
                    ),
                    mode => {
                        println!("target {name} ({}): every object will be written with a {mode} Object Lock", t.url)
                    }
                }
            }
        }
        Outcome::AlreadyInitialised { repo_id, fingerprint } => {
            let urls: Vec<&str> = cfg.targets.iter().map(|t| t.url.as_str()).collect();
            println!("already initialised: repository {repo_id} on {}", urls.join(", "));
            if let Some(fingerprint) = fingerprint {
                println!("repository fingerprint: {fingerprint}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
