//! `coffer key list|add|remove`: the recipients the repository encrypts to.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// The repository's key sets, oldest first: each key's fingerprint, its recipient
    /// where the config lists it, and how many live snapshots it can restore.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a recipient (age1…, ssh-ed25519 …, an age plugin's): the repository secret is
    /// wrapped to the new set on every target (no identity needed), and every snapshot
    /// from then on can be restored with it. Then list it in the config's `recipients`.
    Add {
        /// The recipient to add.
        recipient: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a recipient (or its fingerprint, from `coffer key list`): new snapshots are
    /// no longer encrypted to it. Refused while it is the only key that can restore a
    /// live snapshot, and for the last key. Then take it out of the config's `recipients`.
    Remove {
        /// The recipient or its fingerprint.
        key: String,
        /// Remove it even though some live snapshots can be restored with it alone
        /// (they are named; they stay restorable with that key).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let (changed, json) = match a.action {
        Action::List { json } => return list(&cfg, json),
        Action::Add { recipient, json } => (crate::keyring::add(&cfg, &recipient)?, json),
        Action::Remove { key, force, json } => (crate::keyring::remove(&cfg, &key, force)?, json),
    };
    if json {
        super::json::print(&changed)?;
    } else {
        println!("key set {} written on {}: {}", changed.seq, changed.stored_on.join(", "), changed.keys.join(", "));
        for why in &changed.not_stored {
            println!("  not stored (the next backup copies it): {why}");
        }
        if !changed.unreadable.is_empty() {
            println!(
                "  {} live snapshots can be restored only with the removed key: {}",
                changed.unreadable.len(),
                changed.unreadable.join(", ")
            );
        }
        println!("now make the config's `recipients` these keys (see `coffer key list`), and run a backup");
    }
    Ok(if changed.not_stored.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_DEGRADED) })
}

fn list(cfg: &Config, json: bool) -> Result<ExitCode> {
    let (sets, live) = crate::keyring::list(cfg)?;
    if json {
        super::json::print(&serde_json::json!({ "sets": sets, "live_snapshots": live }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for set in &sets {
        let now = if set.current { " (current)" } else { "" };
        println!("key set {}{now}, made {}", set.seq, crate::time::format_utc(set.created_at));
        for k in &set.keys {
            let who = k.recipient.as_deref().unwrap_or("(not in the config)");
            println!("  {}  restores {}/{live} live snapshots  {who}", k.fingerprint, k.restores);
        }
    }
    if sets.is_empty() {
        println!("(the catalog does not know the repository's keys yet: run a backup)");
    }
    Ok(ExitCode::SUCCESS)
}
