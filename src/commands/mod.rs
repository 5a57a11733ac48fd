//! The verbs of the command line, one file each: its arguments (with the help text) and
//! what it prints. The work itself is done by the engine modules they call. A new
//! command is a file here, a variant of [`Command`] and a line in [`run`].

mod backup;
mod check_config;
mod daemon;
mod init;
mod keygen;
mod prune;
mod recover;
mod restore;
mod runs;
mod snapshots;
mod status;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

/// Exit code of a backup that completed but could not read some paths.
const EXIT_PARTIAL: u8 = 3;
/// Exit code of a backup stored on some of its targets, not all (the next run catches
/// the others up).
const EXIT_DEGRADED: u8 = 5;
/// Exit code of `recover` and `verify` when they found tampering or damage.
const EXIT_FINDINGS: u8 = 4;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create an age identity for the restorer (keep it offline) and print its public recipient.
    Keygen(keygen::Args),
    /// Create the state directory, catalog and repository secret, check the target
    /// (Object Lock on, and a locked canary these credentials cannot delete), and write
    /// the repository record.
    Init(init::Args),
    /// Back up one job now.
    Backup(backup::Args),
    /// Check the config and this host before a run: every job, the state directory's
    /// owner and mode, the repository secret readable by this user, no identity beside
    /// the config, credentials present, key files private. With --remote, the target too.
    /// One line per problem; exit 1 on any. `systemctl reload` runs it first.
    CheckConfig(check_config::Args),
    /// Run the scheduler: every job with a `schedule` runs at its fire times; `/metrics`
    /// and `/health` are served on [http] listen (127.0.0.1:9477 by default). SIGTERM
    /// stops at a checkpoint, SIGHUP reloads the config.
    Daemon,
    /// The run history, newest first: trigger, outcome, bytes, retries, errors.
    Runs(runs::Args),
    /// List snapshots, oldest first.
    Snapshots(snapshots::Args),
    /// The retention status check: live snapshots, freshness against the schedule, protection
    /// horizon and gaps per job.
    /// Exit codes for monitoring: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Status(status::Args),
    /// Delete object versions whose lock has ended and that no live snapshot needs (the
    /// only command that deletes). Shows what it would delete unless --yes. On S3 it needs
    /// the privileged credentials named in [prune], which the daemon never holds.
    Prune(prune::Args),
    /// Check the catalog against the target: every recorded object version exists with
    /// its size and at least its lock. With --read-data, also download, decrypt and
    /// re-hash every chunk (or a random --subset of packs), and check every snapshot's
    /// file list for entries a restore would refuse (a forged snapshot). Exit 4 on any
    /// finding, naming the snapshots affected.
    Verify(verify::Args),
    /// Rebuild the catalog from the target alone, into an empty state directory: every
    /// object version is listed, and for each key the version coffer wrote is used, so
    /// delete markers and overwrites change nothing. Writes the repository secret to
    /// repo_secret_file if it is missing. Reports tampering (delete markers, overwrites,
    /// unknown keys, forged snapshot records) and exits 4 when it found any; it still
    /// recovers everything it can. Resumes where an interrupted recover stopped.
    Recover(recover::Args),
    /// Restore a snapshot into a directory (or a bucket source's objects back into a
    /// bucket), verifying every chunk. The snapshot's file list is checked before
    /// anything is written: entries that would escape the directory or write through the
    /// snapshot's own symlinks (only a forged snapshot has them) are named and skipped,
    /// and no symlink inside the directory is ever followed. Files appear only when
    /// complete, with their owner (as root), mode and times. Exits 1 if any entry could
    /// not be restored.
    Restore(restore::Args),
}

impl Command {
    /// The daemon logs at info, with timestamps: its log is the record of what it did.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Daemon)
    }
}

/// Runs a command with the config file at `config` (each command loads it, or not).
pub fn run(config: &Path, command: Command) -> Result<ExitCode> {
    match command {
        Command::Keygen(a) => keygen::run(a),
        Command::Init(a) => init::run(config, a),
        Command::Backup(a) => backup::run(config, a),
        Command::CheckConfig(a) => check_config::run(config, a),
        Command::Daemon => daemon::run(config),
        Command::Runs(a) => runs::run(config, a),
        Command::Snapshots(a) => snapshots::run(config, a),
        Command::Status(a) => status::run(config, a),
        Command::Prune(a) => prune::run(config, a),
        Command::Verify(a) => verify::run(config, a),
        Command::Recover(a) => recover::run(config, a),
        Command::Restore(a) => restore::run(config, a),
    }
}

/// One line of a text table: each cell padded to its column's width (a negative width
/// aligns left), cells beyond the widths (a last free-text column) as they are.
fn table_line(cells: &[String], widths: &[i32]) -> String {
    let padded = cells.iter().zip(widths).map(|(cell, &w)| {
        let width = w.unsigned_abs() as usize;
        if w < 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") }
    });
    padded.chain(cells.iter().skip(widths.len()).cloned()).collect::<Vec<_>>().join("  ")
}

fn print_findings(findings: &[crate::inventory::Finding]) {
    if findings.is_empty() {
        println!("no findings");
    }
    for f in findings {
        println!("  - {}: {f}", f.kind());
    }
}
