//! The verbs of the command line, one file each: its arguments (with the help text) and
//! what it prints. The work itself is done by the engine modules they call. A new
//! command is a file here, a variant of [`Command`] and a line in [`run`].

mod ack;
mod backup;
mod check_config;
mod completions;
mod daemon;
mod diff;
mod dump;
mod find;
mod init;
mod json;
mod key;
mod keygen;
mod ls;
mod mount;
mod prune;
mod recover;
mod restore;
mod runs;
mod scrub;
mod snapshots;
mod stats;
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
/// `backup`: the tripwire found the run's changes anomalous (outcome `suspicious`).
const EXIT_SUSPICIOUS: u8 = 6;
/// Exit code of `recover` and `verify` when they found tampering or damage.
const EXIT_FINDINGS: u8 = 4;
/// Exit status of a command whose reader closed standard output (`coffer ls | head`):
/// what a shell reports for a process SIGPIPE ended (128 + 13).
pub const EXIT_CLOSED_PIPE: u8 = 141;

/// Writes `bytes` to standard output; a reader that closed it ends the command quietly.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes).and_then(|()| std::io::stdout().flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(EXIT_CLOSED_PIPE)),
        Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
    }
}

/// Whether standard output is a pipe whose reader is gone: an error then is that, and
/// not one to report (a broken pipe met elsewhere, on a connection, is).
pub fn stdout_closed() -> bool {
    let mut fd = libc::pollfd { fd: 1, events: 0, revents: 0 };
    // SAFETY: one pollfd, owned here; a zero timeout never blocks.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 && fd.revents & libc::POLLERR != 0 }
}

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
    /// The repository's keys: list them, add a recipient, remove one. The config's
    /// `recipients` must be the repository's current keys (backups refuse otherwise).
    Key(key::Args),
    /// Check the config and this host before a run: every job, the state directory's
    /// owner and mode, the repository secret readable by this user, no identity beside
    /// the config, credentials present, key files private. With --remote, the target too.
    /// One line per problem on standard error; exit 1 on any. A missing source directory
    /// is a warning (it may be mounted by the time the job fires). `systemctl reload` runs
    /// it first.
    CheckConfig(check_config::Args),
    /// Run the scheduler: every job with a `schedule` runs at its fire times; `/metrics`
    /// and `/health` are served on [http] listen (127.0.0.1:9477 by default). SIGTERM
    /// stops at a checkpoint, SIGHUP reloads the config.
    Daemon,
    /// The run history, newest first: trigger, outcome, bytes, retries, errors.
    Runs(runs::Args),
    /// Acknowledge a run the tripwire found suspicious (anomalous change), once someone
    /// looked: `status` is no longer CRITICAL for it and prune is no longer frozen. With
    /// --false-alarm the job's thresholds rise.
    Ack(ack::Args),
    /// List snapshots, oldest first.
    Snapshots(snapshots::Args),
    /// What the repository holds, from the catalog: per job, the snapshots stored, what
    /// restoring them all would write, the packs and bytes stored, the dedup and
    /// compression ratios; per target, its packs, bytes and how much is locked until when.
    Stats(stats::Args),
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
    /// Check what the targets hold without the identity (what the daemon does on
    /// `[scrub] schedule`): every recorded object version is listed there, nothing else
    /// is, the bucket's settings put nothing at risk, and a rotating share of the packs
    /// (`read_per_day`) read back matches its hash. A changed pack is marked damaged:
    /// the next backup stores its chunks again. Exit 4 on any finding.
    Scrub(scrub::Args),
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
    /// List what a snapshot holds (everything under PATH), without restoring it. Needs
    /// the identity: the file list is encrypted to it.
    Ls(ls::Args),
    /// Find paths matching a glob across snapshots, newest first.
    Find(find::Args),
    /// What changed between two snapshots: added, removed, modified (content) and
    /// metadata-only changes, with sizes.
    Diff(diff::Args),
    /// The snapshots as a read-only file system on DIR (FUSE): `by-job/JOB/SNAPSHOT/...`
    /// and `by-job/JOB/latest`. File lists are read when a snapshot's directory is first
    /// opened, files' bytes when they are read, every chunk verified; entries a restore
    /// refuses are left out and named in the log. Ctrl-C or SIGTERM unmounts.
    Mount(mount::Args),
    /// Write a file of a snapshot to stdout, or a directory as a tar stream, every chunk
    /// verified as a restore verifies it; entries a restore refuses are left out of the
    /// tar and named.
    Dump(dump::Args),
    /// Print a shell completion script (`coffer completions bash >
    /// /etc/bash_completion.d/coffer`).
    Completions(completions::Args),
    /// Print the man page, or a command's (`coffer man restore | man -l -`).
    Man(completions::ManArgs),
}

/// How the browsing commands read a snapshot.
#[derive(clap::Args)]
pub struct Reading {
    /// The job (needed for `latest`; else snapshot ids are looked up in every job).
    #[arg(long)]
    job: Option<String>,
    /// The restorer's identity file (mode 0600): an age identity, an age plugin's, or an
    /// ssh-ed25519 private key.
    #[arg(long, short, env = "COFFER_IDENTITY")]
    identity: std::path::PathBuf,
    /// Read from this target (by its name in the config); else from the first that
    /// holds the snapshot.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    #[command(flatten)]
    pick: Pick,
}

/// Which snapshots `latest`, an id prefix or a list may pick.
#[derive(clap::Args)]
pub struct Pick {
    /// Only snapshots with this tag (repeatable: with every one given).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only snapshots made on this host.
    #[arg(long)]
    host: Option<String>,
}

impl Pick {
    fn filter(&self) -> crate::catalog::Filter {
        crate::catalog::Filter { tags: self.tags.clone(), host: self.host.clone() }
    }
}

impl Reading {
    /// The unlocked repository and the snapshot `selector` names.
    fn open(&self, config: &Path, selector: &str) -> Result<(crate::browse::Browser, crate::catalog::SnapshotRow)> {
        let cfg = crate::config::Config::load(config)?;
        let browser = crate::browse::Browser::open(&cfg, &self.identity, self.target.as_deref(), self.pick.filter())?;
        let snap = browser.snapshot(self.job.as_deref(), selector)?;
        Ok((browser, snap))
    }
}

impl Command {
    /// The daemon logs at info, with timestamps: its log is the record of what it did.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Daemon)
    }

    /// Whether standard output is a summary for people, which `--quiet` silences (the
    /// exit code says how it went; errors still go to standard error). Output that is
    /// data (`--json`, ls, find, diff, dump, keygen's recipient, completions, man) is
    /// kept.
    pub fn prints_summary(&self) -> bool {
        match self {
            Command::Backup(a) => !a.json,
            Command::Init(a) => !a.json,
            Command::Restore(a) => !a.json,
            Command::Prune(a) => !a.json,
            Command::Verify(a) => !a.json,
            Command::Scrub(a) => !a.json,
            Command::Recover(a) => !a.json,
            Command::Snapshots(a) => !a.json,
            Command::Stats(a) => !a.json,
            Command::Runs(a) => !a.json,
            Command::Ack(a) => !a.json,
            Command::Status(a) => !a.json,
            Command::CheckConfig(a) => !a.json,
            Command::Daemon => true,
            _ => false,
        }
    }
}

/// Runs a command with the config file at `config` (each command loads it, or not);
/// `whole` builds the whole command line, for completions and man pages.
pub fn run(config: &Path, command: Command, whole: fn() -> clap::Command) -> Result<ExitCode> {
    match command {
        Command::Keygen(a) => keygen::run(a),
        Command::Init(a) => init::run(config, a),
        Command::Backup(a) => backup::run(config, a),
        Command::Key(a) => key::run(config, a),
        Command::CheckConfig(a) => check_config::run(config, a),
        Command::Daemon => daemon::run(config),
        Command::Runs(a) => runs::run(config, a),
        Command::Ack(a) => ack::run(config, a),
        Command::Snapshots(a) => snapshots::run(config, a),
        Command::Stats(a) => stats::run(config, a),
        Command::Status(a) => status::run(config, a),
        Command::Prune(a) => prune::run(config, a),
        Command::Verify(a) => verify::run(config, a),
        Command::Scrub(a) => scrub::run(config, a),
        Command::Recover(a) => recover::run(config, a),
        Command::Restore(a) => restore::run(config, a),
        Command::Mount(a) => mount::run(config, a),
        Command::Ls(a) => ls::run(config, a),
        Command::Find(a) => find::run(config, a),
        Command::Diff(a) => diff::run(config, a),
        Command::Dump(a) => dump::run(config, a),
        Command::Completions(a) => completions::run(a, whole()),
        Command::Man(a) => completions::man(a, whole()),
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
