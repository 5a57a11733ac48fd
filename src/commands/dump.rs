//! `coffer dump SNAPSHOT PATH`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::Reading;
use crate::format::entry::Kind;
use crate::restore::inside;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id (or a unique prefix), `latest` or `latest-clean` with --job.
    snapshot: String,
    /// A file (its bytes go to stdout) or a directory (a tar stream of it goes to
    /// stdout); `/` is the whole snapshot. With or without the source root's path.
    path: String,
    #[command(flatten)]
    reading: Reading,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let (mut browser, snap) = a.reading.open(config, &a.snapshot)?;
    let path = inside(&snap.source, &a.path);
    let stdout = std::io::stdout().lock();
    if path.is_empty() {
        return finish(browser.tar(&snap, b"", stdout)?);
    }
    let entry = browser.entry(&snap, &path)?;
    match entry.kind {
        Kind::File => {
            let mut out = std::io::BufWriter::new(stdout);
            browser.copy_file(&entry, &mut out)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Kind::Dir => finish(browser.tar(&snap, &path, stdout)?),
        Kind::Symlink => bail!("`{}` is a symlink; dump its target's path", a.path),
    }
}

/// Names what the tar stream left out (on stderr), and fails if anything was.
fn finish(skipped: Vec<String>) -> Result<ExitCode> {
    for s in &skipped {
        eprintln!("left out: {s}");
    }
    Ok(if skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
