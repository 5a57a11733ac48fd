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

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Immutable off-site backups: deduplicated, compressed, encrypted to offline age keys",
    long_about = "coffer backs up directories into content-defined, deduplicated chunks, compresses \
                  them with zstd and encrypts them to age public keys, so the backup host can write \
                  backups but never read them. Packs go to an object store (S3 or a local directory) \
                  and are tracked in a SQLite catalog in the state directory.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 backup completed but some paths could not be read."
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "COFFER_CONFIG", default_value = "/etc/coffer/coffer.toml")]
    config: PathBuf,
    /// More log output (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an age identity for the restorer (keep it offline) and print its public recipient.
    Keygen {
        /// Where to write the identity (created with mode 0600; never overwritten).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Create the state directory, catalog and repository secret, and write the repository record to the target.
    Init,
    /// Back up one job now.
    Backup {
        /// Job name from the config.
        job: String,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// List snapshots, oldest first.
    Snapshots {
        /// Only this job's snapshots.
        job: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a directory, verifying every chunk.
    Restore {
        /// Snapshot id (or a unique prefix), or `latest`.
        snapshot: String,
        /// The job the snapshot belongs to.
        #[arg(long)]
        job: String,
        /// Directory to restore into (created if missing; must be empty unless --overwrite).
        #[arg(long)]
        to: PathBuf,
        /// Restore only this file or directory (relative to the snapshot's root).
        #[arg(long)]
        path: Option<String>,
        /// The restorer's age identity file (mode 0600).
        #[arg(long, short, env = "COFFER_IDENTITY")]
        identity: PathBuf,
        /// Restore into a non-empty directory, replacing files of the same name.
        #[arg(long)]
        overwrite: bool,
        /// Do not draw a progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match (verbose, std::env::var("COFFER_LOG").ok().as_deref()) {
        (_, Some("debug")) | (2.., _) => tracing::Level::DEBUG,
        (_, Some("info")) | (1, _) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Keygen { output } = &cli.command {
        let recipient = crate::keys::keygen(output)?;
        eprintln!("wrote identity {} (keep it offline; it is the only key that can restore)", output.display());
        println!("{recipient}");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Keygen { .. } => unreachable!("handled above"),
        Command::Init => {
            match crate::init::run(&cfg)? {
                crate::init::Outcome::Created { repo_id, protection } => {
                    println!("initialised repository {repo_id} on {}", cfg.target.url);
                    match protection {
                        "UNPROTECTED" => println!(
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
            let s = crate::backup::run(&cfg, job, &crate::backup::Options { progress: !no_progress })?;
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
        Command::Snapshots { job, json } => {
            let catalog = Catalog::open_existing(&cfg)?;
            let rows = catalog.snapshots(job.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16}  {:<20}  {:<12}  {:>8}  {:>10}  {:>10}  {:>10}  {:>6}",
                "ID", "TIME (UTC)", "JOB", "FILES", "SIZE", "NEW", "UPLOADED", "ERRORS"
            );
            for s in &rows {
                println!(
                    "{:<16}  {:<20}  {:<12}  {:>8}  {:>10}  {:>10}  {:>10}  {:>6}",
                    s.id,
                    crate::time::format_utc(s.created_at),
                    s.job,
                    s.files,
                    bytes(s.bytes),
                    bytes(s.bytes_new),
                    bytes(s.bytes_uploaded),
                    s.errors
                );
            }
            if rows.is_empty() {
                println!("(no snapshots)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { snapshot, job, to, path, identity, overwrite, no_progress } => {
            cfg.job(&job)?;
            let progress = !no_progress;
            let opts = crate::restore::Options { job, snapshot, to, subpath: path, identity, overwrite, progress };
            let s = crate::restore::run(&cfg, &opts)?;
            println!(
                "restored snapshot {} to {}: {} files ({}), {} dirs, {} symlinks",
                s.snapshot_id,
                opts.to.display(),
                s.files,
                bytes(s.bytes),
                s.dirs,
                s.symlinks
            );
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
