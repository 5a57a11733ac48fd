//! `coffer init`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::init::Outcome;
use crate::target::Protection;

#[derive(clap::Args)]
pub struct Args {
    /// Go on even if the canary could be deleted (recorded, and repeated by every status report).
    #[arg(long)]
    allow_unprotected: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    match crate::init::run(&cfg, a.allow_unprotected)? {
        Outcome::Created { repo_id, protection } => {
            println!("initialised repository {repo_id} on {}", cfg.target.url);
            match protection {
                Protection::Unprotected => println!(
                    "note: this target is UNPROTECTED (no write-once retention): anyone with its \
                     credentials can delete the backups. Use a bucket with Object Lock for real backups."
                ),
                mode => println!("every object will be written with a {mode} Object Lock"),
            }
        }
        Outcome::AlreadyInitialised { repo_id } => {
            println!("already initialised: repository {repo_id} on {}", cfg.target.url);
        }
    }
    Ok(ExitCode::SUCCESS)
}
