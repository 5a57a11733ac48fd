//! The command line: parses arguments, calls the module that does the work, prints the
//! result for people (or JSON for machines), and maps outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::progress::bytes;

/// Exit code of a backup that completed but could not read some paths.
const EXIT_PARTIAL: u8 = 3;
/// Exit code of `recover` and `verify` when they found tampering or damage.
const EXIT_FINDINGS: u8 = 4;

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Immutable off-site backups: deduplicated, compressed, encrypted to offline age keys",
    long_about = "coffer backs up directories, git repositories, command output (database dumps) and \
                  cloud buckets into content-defined, deduplicated chunks, compresses them with zstd and \
                  encrypts them to age public keys, so the backup host can write backups but never read \
                  them. Packs go to an object store (S3 with Object Lock, or a local directory) and are \
                  tracked in a SQLite catalog in the state directory. `coffer daemon` runs the jobs on \
                  their schedules.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 backup completed but some paths could not be read, \
                  4 recover or verify found tampering or damage.\n\
                  `coffer status`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios convention)."
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "COFFER_CONFIG", default_value = "/etc/coffer/coffer.toml")]
    config: PathBuf,
    /// More log output (-v info, -vv debug). The daemon logs at info by default.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format: `human` (for terminals) or `json` (one object per line, for journald
    /// and log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create an age identity for the restorer (keep it offline) and print its public recipient.
    Keygen {
        /// Where to write the identity (created with mode 0600; never overwritten).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Create the state directory, catalog and repository secret, check the target
    /// (Object Lock on, and a locked canary these credentials cannot delete), and write
    /// the repository record.
    Init {
        /// Go on even if the canary could be deleted (recorded, and repeated by every status report).
        #[arg(long)]
        allow_unprotected: bool,
    },
    /// Back up one job now.
    Backup {
        /// Job name from the config.
        job: String,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Run the scheduler: every job with a `schedule` runs at its fire times; `/metrics`
    /// and `/health` are served on [http] listen (127.0.0.1:9477 by default). SIGTERM
    /// stops at a checkpoint, SIGHUP reloads the config.
    Daemon,
    /// The run history, newest first: trigger, outcome, bytes, retries, errors.
    Runs {
        /// Only this job's runs.
        job: Option<String>,
        /// How many runs to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, oldest first.
    Snapshots {
        /// Only this job's snapshots.
        job: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The retention status check: live snapshots, freshness against the schedule, protection
    /// horizon and gaps per job.
    /// Exit codes for monitoring: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Status {
        /// Read the lock of every needed object version from the server instead of
        /// trusting the catalog.
        #[arg(long)]
        remote: bool,
        /// With --remote: check only this many packs, chosen at random (snapshot records
        /// and the repository record are always checked).
        #[arg(long, requires = "remote")]
        sample: Option<usize>,
        /// Print JSON (the shape is documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Delete object versions whose lock has ended and that no live snapshot needs (the
    /// only command that deletes). Shows what it would delete unless --yes. On S3 it needs
    /// the privileged credentials named in [prune], which the daemon never holds.
    Prune {
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
    /// Check the catalog against the target: every recorded object version exists with
    /// its size and at least its lock. With --read-data, also download, decrypt and
    /// re-hash every chunk (or a random --subset of packs), and check every snapshot's
    /// file list for entries a restore would refuse (a forged snapshot). Exit 4 on any
    /// finding, naming the snapshots affected.
    Verify {
        /// Download packs and re-hash their chunks; authenticate snapshot records.
        #[arg(long, requires = "identity")]
        read_data: bool,
        /// With --read-data: the share of packs to read, chosen at random (e.g. `10%`).
        #[arg(long, requires = "read_data", value_parser = parse_percent)]
        subset: Option<f64>,
        /// The restorer's age identity file (mode 0600).
        #[arg(long, short, env = "COFFER_IDENTITY")]
        identity: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Rebuild the catalog from the target alone, into an empty state directory: every
    /// object version is listed, and for each key the version coffer wrote is used, so
    /// delete markers and overwrites change nothing. Writes the repository secret to
    /// repo_secret_file if it is missing. Reports tampering (delete markers, overwrites,
    /// unknown keys, forged snapshot records) and exits 4 when it found any; it still
    /// recovers everything it can. Resumes where an interrupted recover stopped.
    Recover {
        /// The restorer's age identity file (mode 0600).
        #[arg(long, short, env = "COFFER_IDENTITY")]
        identity: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Restore a snapshot into a directory (or a bucket source's objects back into a
    /// bucket), verifying every chunk. The snapshot's file list is checked before
    /// anything is written: entries that would escape the directory or write through the
    /// snapshot's own symlinks (only a forged snapshot has them) are named and skipped,
    /// and no symlink inside the directory is ever followed. Files appear only when
    /// complete, with their owner (as root), mode and times. Exits 1 if any entry could
    /// not be restored.
    Restore {
        /// Snapshot id (or a unique prefix), or `latest`.
        snapshot: String,
        /// The job the snapshot belongs to.
        #[arg(long)]
        job: String,
        /// Directory to restore into (created 0700 if missing; must be empty unless
        /// --overwrite).
        #[arg(long, required_unless_present = "to_bucket")]
        to: Option<PathBuf>,
        /// For a bucket source: write the objects back into this bucket (`s3://bucket/prefix`,
        /// with the job's source endpoint, region and credentials), keys and content types
        /// preserved. Staged in the state directory first.
        #[arg(long, conflicts_with = "to")]
        to_bucket: Option<String>,
        /// Restore only this file or directory (relative to the snapshot's root).
        #[arg(long)]
        path: Option<String>,
        /// The restorer's age identity file (mode 0600).
        #[arg(long, short, env = "COFFER_IDENTITY")]
        identity: PathBuf,
        /// Restore into a non-empty directory, replacing whatever is in an entry's way (a
        /// file, a symlink or a directory tree), never following it.
        #[arg(long)]
        overwrite: bool,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// For a git source: also make a working clone beside each restored bare repository.
        #[arg(long)]
        checkout: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Daemon);
    init_logging(cli.verbose, cli.log_format, daemon);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. Commands log warnings; the daemon, whose log is the record of what
/// it did, logs at info with timestamps.
fn init_logging(verbose: u8, format: LogFormat, daemon: bool) {
    let level = match (verbose, std::env::var("COFFER_LOG").ok().as_deref()) {
        (_, Some("debug")) | (2.., _) => tracing::Level::DEBUG,
        (_, Some("info")) | (1, _) => tracing::Level::INFO,
        _ if daemon => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    match (format, daemon) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).init(),
        (LogFormat::Human, true) => builder.init(),
        (LogFormat::Human, false) => builder.without_time().init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Keygen { output } = &cli.command {
        let recipient = crate::keys::keygen(output)?;
        eprintln!("wrote identity {} (keep it offline; it is the only key that can restore)", output.display());
        println!("{recipient}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Status { remote, sample, json } = &cli.command {
        return Ok(status(&cli.config, &crate::status::Options { remote: *remote, sample: *sample }, *json));
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Keygen { .. } | Command::Status { .. } => unreachable!("handled above"),
        Command::Daemon => crate::daemon::run(&cli.config),
        Command::Runs { job, limit, json } => {
            if let Some(job) = &job {
                cfg.job(job)?;
            }
            let rows = Catalog::open_existing(&cfg)?.runs(job.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let widths = [-6, -20, -12, -9, -11, 7, 10, 10, 7];
            let header =
                ["RUN", "STARTED (UTC)", "JOB", "TRIGGER", "OUTCOME", "TIME", "READ", "UPLOADED", "RETRIES", "ERROR"];
            println!("{}", table_line(&header.map(String::from), &widths));
            for r in &rows {
                let cells = [
                    r.id.to_string(),
                    crate::time::format_utc(r.started_at),
                    r.job.clone(),
                    r.trigger.clone(),
                    r.outcome.to_string(),
                    r.duration_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                    bytes(r.bytes_read),
                    bytes(r.bytes_uploaded),
                    r.retries.to_string(),
                    r.error.as_deref().unwrap_or("").replace('\n', " "),
                ];
                println!("{}", table_line(&cells, &widths));
            }
            if rows.is_empty() {
                println!("(no runs)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { allow_unprotected } => {
            match crate::init::run(&cfg, allow_unprotected)? {
                crate::init::Outcome::Created { repo_id, protection } => {
                    println!("initialised repository {repo_id} on {}", cfg.target.url);
                    match protection {
                        crate::target::Protection::Unprotected => println!(
                            "note: this target is UNPROTECTED (no write-once retention): anyone with its \
                             credentials can delete the backups. Use a bucket with Object Lock for real backups."
                        ),
                        mode => println!("every object will be written with a {mode} Object Lock"),
                    }
                }
                crate::init::Outcome::AlreadyInitialised { repo_id } => {
                    println!("already initialised: repository {repo_id} on {}", cfg.target.url);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { job, no_progress } => {
            let job = cfg.job(&job)?;
            let opts = crate::backup::Options {
                progress: !no_progress,
                trigger: crate::catalog::Trigger::Manual,
                scheduled_for: None,
                stop: None,
            };
            let s = crate::backup::run(&cfg, job, &opts)?;
            let st = &s.stats;
            println!("snapshot {} of job {} complete", s.snapshot_id, job.name);
            println!(
                "  files {} ({} unchanged), dirs {}, symlinks {}, size {}",
                st.files,
                s.unchanged_files,
                st.dirs,
                st.symlinks,
                bytes(st.bytes)
            );
            println!(
                "  read {}, new {}, uploaded {} in {} packs, {:.1}s",
                bytes(st.bytes_read),
                bytes(st.bytes_new),
                bytes(st.bytes_uploaded),
                st.packs_uploaded,
                st.duration_ms as f64 / 1000.0
            );
            if let Some(until) = s.retain_until {
                let keeper = if s.keeps.is_empty() { String::new() } else { format!(", {} keeper", s.keeps.join("/")) };
                println!(
                    "  locked ({}) until {}{keeper}; {} lock extensions of reused packs",
                    s.protection,
                    crate::time::format_utc(until),
                    st.lock_extensions
                );
            }
            if s.errors.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                println!("  {} paths could not be read and are not in the snapshot:", s.errors.len());
                for e in &s.errors {
                    println!("    {}: {}", e.path, e.error);
                }
                Ok(ExitCode::from(EXIT_PARTIAL))
            }
        }
        Command::Prune { yes } => {
            let s = crate::prune::run(&cfg, &crate::prune::Options { yes })?;
            if !s.forgotten.is_empty() {
                println!("forgot {} snapshots past their retain-until: {}", s.forgotten.len(), s.forgotten.join(", "));
            }
            let verb = if yes { "deleted" } else { "would delete (pass --yes to delete)" };
            let total: u64 = s.candidates.iter().map(|c| c.size).sum();
            println!("{verb}: {} object versions, {}", s.candidates.len(), bytes(total));
            for c in &s.candidates {
                let why = match &c.what {
                    crate::prune::What::Pack { .. } => "pack no live snapshot needs",
                    crate::prune::What::Snapshot { .. } => "record of a forgotten snapshot",
                    crate::prune::What::Canary => "init canary",
                };
                println!("  {}  {}  {}  ({why})", c.key, c.version.as_deref().unwrap_or("-"), bytes(c.size));
            }
            for (key, until) in &s.still_locked {
                println!("  still locked on the server until {}, left alone: {key}", crate::time::format_utc(*until));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { read_data, subset, identity, json, no_progress } => {
            let read_data = match (read_data, identity) {
                (true, Some(path)) => Some(crate::keys::Identity::load(&path)?),
                _ => None,
            };
            let r = crate::verify::run(
                &cfg,
                &crate::verify::Options { read_data, subset: subset.unwrap_or(1.0), progress: !no_progress },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "checked {} object versions; read {} packs ({}), verified {} chunks",
                    r.objects_checked,
                    r.packs_read,
                    bytes(r.bytes_read),
                    r.chunks_verified
                );
                print_findings(&r.findings);
                if !r.snapshots_affected.is_empty() {
                    let list: Vec<&str> = r.snapshots_affected.iter().map(String::as_str).collect();
                    println!("snapshots affected: {}", list.join(", "));
                }
            }
            Ok(if r.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FINDINGS) })
        }
        Command::Recover { identity, json, no_progress } => {
            let r = crate::recover::run(&cfg, &crate::recover::Options { identity, progress: !no_progress })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "recovered repository {} from {}: {} snapshots, {} packs ({} already recorded by an earlier attempt)",
                    r.repo_id,
                    cfg.target.url,
                    r.snapshots.len(),
                    r.packs,
                    r.packs_resumed
                );
                for (job, id) in &r.snapshots {
                    println!("  snapshot {job}/{id}");
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
        Command::Snapshots { job, json } => {
            let catalog = Catalog::open_existing(&cfg)?;
            let rows = catalog.snapshots(job.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let widths = [-16, -20, -12, 8, 10, 10, 10, 6];
            let header = ["ID", "TIME (UTC)", "JOB", "FILES", "SIZE", "NEW", "UPLOADED", "ERRORS", "CONTENTS"];
            println!("{}", table_line(&header.map(String::from), &widths));
            for s in &rows {
                let cells = [
                    s.id.clone(),
                    crate::time::format_utc(s.created_at),
                    s.job.clone(),
                    s.files.to_string(),
                    bytes(s.bytes),
                    bytes(s.bytes_new),
                    bytes(s.bytes_uploaded),
                    s.errors.to_string(),
                    s.contents.as_ref().map(|c| c.summary()).unwrap_or_default(),
                ];
                println!("{}", table_line(&cells, &widths));
            }
            if rows.is_empty() {
                println!("(no snapshots)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { snapshot, job, to, path, identity, overwrite, no_progress, checkout, to_bucket } => {
            let job_cfg = cfg.job(&job)?.clone();
            let progress = !no_progress;
            let dest = match (to, to_bucket) {
                (_, Some(url)) => {
                    let crate::config::Source::Bucket(src) = &job_cfg.source else {
                        anyhow::bail!("--to-bucket: job `{job}` does not back up a bucket");
                    };
                    crate::restore::Destination::Bucket(crate::source::bucket::Bucket::open(src, &url)?)
                }
                (Some(to), None) => crate::restore::Destination::Dir(to),
                (None, None) => anyhow::bail!("restore needs --to DIR (or --to-bucket URL)"),
            };
            let shown = match &dest {
                crate::restore::Destination::Dir(p) => p.display().to_string(),
                crate::restore::Destination::Bucket(b) => b.url.clone(),
            };
            let opts =
                crate::restore::Options { job, snapshot, to: dest, subpath: path, identity, overwrite, progress };
            let s = crate::restore::run(&cfg, &opts)?;
            match &opts.to {
                crate::restore::Destination::Bucket(_) => {
                    println!("restored snapshot {} to {shown}: {} objects ({})", s.snapshot_id, s.files, bytes(s.bytes))
                }
                crate::restore::Destination::Dir(_) => println!(
                    "restored snapshot {} to {shown}: {} files ({}), {} dirs, {} symlinks",
                    s.snapshot_id,
                    s.files,
                    bytes(s.bytes),
                    s.dirs,
                    s.symlinks
                ),
            }
            if checkout && s.failures.is_empty() {
                match &s.contents {
                    Some(crate::format::contents::Contents::Git { repos }) => {
                        let crate::restore::Destination::Dir(to) = &opts.to else {
                            anyhow::bail!("--checkout needs --to");
                        };
                        for work in crate::source::git::checkout(to, repos)? {
                            println!("checked out {}", work.display());
                        }
                    }
                    _ => anyhow::bail!("--checkout: snapshot {} is not of a git source", s.snapshot_id),
                }
            }
            if s.failures.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: {} files could not be restored:", s.failures.len());
                for f in &s.failures {
                    eprintln!("  {f}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// `coffer status`: a failed check is UNKNOWN (3) for monitoring, never a silent OK.
fn status(config: &std::path::Path, opts: &crate::status::Options, json: bool) -> ExitCode {
    let report = Config::load(config).map_err(anyhow::Error::from).and_then(|cfg| crate::status::run(&cfg, opts));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "status": "UNKNOWN", "problems": [format!("{e:#}")] }));
            } else {
                println!("UNKNOWN: {e:#}");
            }
            return ExitCode::from(3);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return ExitCode::from(report.status.exit_code());
    }
    let t = &report.target;
    let source = if t.protection == crate::target::Protection::Unprotected {
        "no locks".to_string()
    } else if t.remote_checked {
        format!("locks read from the server ({} objects)", t.objects_checked)
    } else {
        "locks as recorded in the catalog".into()
    };
    println!("target {} {} ({source})", t.url, t.protection);
    let widths = [-16, 5, -16, 8, -20, 4];
    let header = ["JOB", "LIVE", "NEWEST", "AGE", "PROTECTED UNTIL", "GAPS"];
    println!("{}", table_line(&header.map(String::from), &widths));
    for j in &report.jobs {
        let cells = [
            j.name.clone(),
            j.live_snapshots.to_string(),
            j.newest_snapshot.clone().unwrap_or_else(|| "-".into()),
            j.newest_age_secs.map(age).unwrap_or_else(|| "-".into()),
            j.protected_until.map(crate::time::format_utc).unwrap_or_else(|| "-".into()),
            j.gaps.len().to_string(),
        ];
        println!("{}", table_line(&cells, &widths));
    }
    println!(
        "status: {}",
        serde_json::to_value(report.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    );
    for p in &report.problems {
        println!("  - {p}");
    }
    ExitCode::from(report.status.exit_code())
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

/// `10%` as 0.1; a share of 0 reads nothing, so it is refused.
fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("`{s}` is not a percentage like 10%"))?;
    if !(n > 0.0 && n <= 100.0) {
        return Err(format!("`{s}`: expected a percentage above 0% and at most 100%"));
    }
    Ok(n / 100.0)
}

/// Removes a staging directory however the command ends.
/// `3d4h`, `2h5m`, `40s`
fn age(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}
