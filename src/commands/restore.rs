//! `coffer restore SNAPSHOT --job JOB --to DIR` (or `--to-bucket URL`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::config::Config;
use crate::format::contents::Contents;
use crate::progress::bytes;
use crate::restore::Destination;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id (or a unique prefix), `latest`, or `latest-clean`: the newest snapshot
    /// the tripwire did not find suspicious (after an anomalous change, the one to
    /// restore).
    snapshot: String,
    /// The job the snapshot belongs to.
    #[arg(long)]
    job: String,
    #[command(flatten)]
    pick: super::Pick,
    /// Directory to restore into (created 0700 if missing; must be empty unless
    /// --overwrite).
    #[arg(long, required_unless_present = "to_bucket")]
    to: Option<PathBuf>,
    /// For a bucket source: write the objects back into this bucket (`s3://bucket/prefix`
    /// or `az://account/container/prefix`, with the job's source endpoint and
    /// credentials), keys and content types preserved. Staged in the state directory first.
    #[arg(long, conflicts_with = "to")]
    to_bucket: Option<String>,
    /// Restore only this file or directory (and what is under it); repeatable. With or
    /// without the source root's path in front (`/srv/www/a` and `a` are the same for a
    /// job backing up /srv/www).
    #[arg(long)]
    path: Vec<String>,
    /// Restore only entries matching this glob (`*.html`, `docs/**`), and what is under
    /// a matching directory; repeatable.
    #[arg(long)]
    include: Vec<String>,
    /// Leave out entries matching this glob, and what is under a matching directory;
    /// repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// The restorer's identity file (mode 0600): an age identity, an age plugin's, or an
    /// ssh-ed25519 private key.
    #[arg(long, short, env = "COFFER_IDENTITY")]
    identity: PathBuf,
    /// Read from this target (by its name in the config); else from the first target,
    /// in config order, that holds the snapshot and answers.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
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
    /// List what would be written (as `ls --long`, or `ls --json` lines), then a
    /// summary; read only the snapshot's file list, write nothing. Fails where the restore
    /// would: an unknown snapshot, a selection that matches nothing, a destination that
    /// is not empty without --overwrite.
    #[arg(long, conflicts_with = "checkout")]
    dry_run: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let job_cfg = cfg.job(&a.job)?.clone();
    let dest = match (a.to, a.to_bucket) {
        (_, Some(url)) => {
            Destination::Bucket(job_cfg.source.origin(&url).map_err(|e| anyhow::anyhow!("--to-bucket: {e:#}"))?)
        }
        (Some(to), None) => Destination::Dir(to),
        (None, None) => bail!("restore needs --to DIR (or --to-bucket URL)"),
    };
    let shown = match &dest {
        Destination::Dir(p) => p.display().to_string(),
        Destination::Bucket(b) => b.url.clone(),
    };
    let opts = crate::restore::Options {
        job: a.job,
        snapshot: a.snapshot,
        to: dest,
        paths: a.path,
        include: a.include,
        exclude: a.exclude,
        identity: a.identity,
        target: a.target,
        filter: a.pick.filter(),
        overwrite: a.overwrite,
        progress: !a.no_progress,
    };
    if a.dry_run {
        return dry_run(&cfg, &opts, &shown, a.json);
    }
    let s = crate::restore::run(&cfg, &opts, None)?;
    if a.json {
        super::json::print(&s)?;
    }
    match &opts.to {
        _ if a.json => {}
        Destination::Bucket(_) => {
            println!(
                "restored snapshot {} from target {} to {shown}: {} objects ({})",
                s.snapshot_id,
                s.target,
                s.files,
                bytes(s.bytes)
            )
        }
        Destination::Dir(_) => println!("restored {}", what(&s, &shown)),
    }
    if a.checkout && s.failures.is_empty() {
        match &s.contents {
            Some(Contents::Git { repos }) => {
                let Destination::Dir(to) = &opts.to else { bail!("--checkout needs --to") };
                for work in crate::source::git::checkout(to, repos)? {
                    if !a.json {
                        println!("checked out {}", work.display());
                    }
                }
            }
            _ => bail!("--checkout: snapshot {} is not of a git source", s.snapshot_id),
        }
    }
    if s.failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("error: {} files could not be restored:", s.failures.len());
    for f in &s.failures {
        eprintln!("  {f}");
    }
    Ok(ExitCode::FAILURE)
}

/// `--dry-run`: each entry the restore would write, then what it adds up to.
fn dry_run(cfg: &Config, opts: &crate::restore::Options, shown: &str, json: bool) -> Result<ExitCode> {
    if let Destination::Dir(to) = &opts.to
        && !opts.overwrite
        && std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some())
    {
        bail!("restore target {} is not empty; choose an empty directory or pass --overwrite", to.display());
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut listing = |e: &crate::format::entry::Entry| super::ls::write_entry(&mut out, e, true, json);
    let s = crate::restore::run(cfg, opts, Some(&mut listing))?;
    std::io::Write::flush(&mut out)?;
    if !json {
        println!("would restore {}; nothing written", what(&s, shown));
        for f in &s.failures {
            println!("  {f}");
        }
    }
    Ok(if s.refused > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// "snapshot S from target T to DIR: N files (B), D dirs, L symlinks".
fn what(s: &crate::restore::Summary, shown: &str) -> String {
    format!(
        "snapshot {} from target {} to {shown}: {} files ({}), {} dirs, {} symlinks",
        s.snapshot_id,
        s.target,
        s.files,
        bytes(s.bytes),
        s.dirs,
        s.symlinks
    )
}
