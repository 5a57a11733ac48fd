//! `coffer diff SNAPSHOT_A SNAPSHOT_B [--json]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Reading;
use crate::browse::{Change, diff};
use crate::escape::printable;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// The older snapshot (id, prefix, `latest` or `latest-clean` with --job).
    before: String,
    /// The newer snapshot.
    after: String,
    #[command(flatten)]
    reading: Reading,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let (mut browser, before) = a.reading.open(config, &a.before)?;
    let after = browser.snapshot(a.reading.job.as_deref(), &a.after)?;
    let old = browser.all_entries(&before)?;
    let new = browser.all_entries(&after)?;
    let changes = diff(old, new);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write;
    for d in &changes {
        if a.json {
            super::json::write(&mut out, d)?;
            continue;
        }
        let (mark, sizes) = match d.change {
            Change::Added => ('+', bytes(d.size_after.unwrap_or(0))),
            Change::Removed => ('-', bytes(d.size_before.unwrap_or(0))),
            Change::Modified => {
                ('M', format!("{} -> {}", bytes(d.size_before.unwrap_or(0)), bytes(d.size_after.unwrap_or(0))))
            }
            Change::Metadata => ('U', String::new()),
        };
        writeln!(out, "{mark}  {}  {sizes}", printable(&d.path))?;
    }
    if !a.json {
        let count = |c: Change| changes.iter().filter(|d| d.change == c).count();
        writeln!(
            out,
            "{} added, {} removed, {} modified, {} with new metadata ({} -> {})",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Modified),
            count(Change::Metadata),
            before.id,
            after.id
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
