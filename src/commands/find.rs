//! `coffer find PATTERN [--job J] [--snapshot S] [--json]`.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Reading;
use crate::browse::{Browser, Shown};
use crate::escape::printable;

#[derive(clap::Args)]
pub struct Args {
    /// A glob (`*.conf`, `etc/**/passwd`): matched against each entry's whole path and
    /// against its name.
    pattern: String,
    /// Only this snapshot (id or prefix, `latest` or `latest-clean` with --job); else every snapshot,
    /// newest first.
    #[arg(long)]
    snapshot: Option<String>,
    #[command(flatten)]
    reading: Reading,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Hit<'a> {
    job: &'a str,
    snapshot: &'a str,
    created_at: i64,
    #[serde(flatten)]
    entry: Shown<'a>,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let glob = globset::Glob::new(&a.pattern).with_context(|| format!("bad pattern `{}`", a.pattern))?;
    let matcher = glob.compile_matcher();
    let cfg = crate::config::Config::load(config)?;
    let reading = &a.reading;
    let mut browser = Browser::open(&cfg, &reading.identity, reading.target.as_deref(), reading.pick.filter())?;
    let snapshots = match &a.snapshot {
        Some(s) => vec![browser.snapshot(a.reading.job.as_deref(), s)?],
        None => browser.snapshots(a.reading.job.as_deref())?,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut hits = 0u64;
    for snap in &snapshots {
        browser.entries(snap, |e| {
            let path = Path::new(std::ffi::OsStr::from_bytes(&e.path));
            if !matcher.is_match(path) && !path.file_name().is_some_and(|n| matcher.is_match(n)) {
                return Ok(true);
            }
            hits += 1;
            if a.json {
                let hit =
                    Hit { job: &snap.job, snapshot: &snap.id, created_at: snap.created_at, entry: Shown::from(e) };
                super::json::write(&mut out, &hit)?;
            } else {
                let when = crate::time::format_utc(snap.created_at);
                writeln!(out, "{}/{}  {when}  {}", snap.job, snap.id, printable(&e.path))?;
            }
            Ok(true)
        })?;
    }
    out.flush()?;
    if hits == 0 && !a.json {
        eprintln!("no match in {} snapshots", snapshots.len());
    }
    Ok(ExitCode::SUCCESS)
}
