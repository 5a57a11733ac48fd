//! `coffer ls SNAPSHOT [PATH] [--long] [--json]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Reading;
use crate::browse::Shown;
use crate::escape::printable;
use crate::format::entry::{Entry, Kind};
use crate::restore::inside;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id (or a unique prefix), `latest` or `latest-clean` with --job.
    snapshot: String,
    /// Only this directory (or file) and what is under it; with or without the source
    /// root's path in front.
    path: Option<String>,
    /// Mode, owner, size and modification time too.
    #[arg(long, short)]
    long: bool,
    #[command(flatten)]
    reading: Reading,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let (mut browser, snap) = a.reading.open(config, &a.snapshot)?;
    let sub = a.path.as_deref().map(|p| inside(&snap.source, p)).unwrap_or_default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut matched = sub.is_empty();
    browser.entries(&snap, |e| {
        if under(&e.path, &sub) {
            matched = true;
            write_entry(&mut out, e, a.long, a.json)?;
        }
        Ok(true)
    })?;
    std::io::Write::flush(&mut out)?;
    if !matched {
        anyhow::bail!("no path `{}` in snapshot {}", printable(&sub), snap.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` is `sub` or under it (everything is under the root, `b""`).
pub fn under(path: &[u8], sub: &[u8]) -> bool {
    sub.is_empty() || path == sub || (path.starts_with(sub) && path.get(sub.len()) == Some(&b'/'))
}

/// One entry: its path, or a long line, or a JSON object.
pub fn write_entry(out: &mut impl std::io::Write, e: &Entry, long: bool, json: bool) -> Result<()> {
    if json {
        return super::json::write(out, &Shown::from(e));
    }
    let link = e.target.as_deref().map(|t| format!(" -> {}", printable(t))).unwrap_or_default();
    if !long {
        writeln!(out, "{}{link}", printable(&e.path))?;
        return Ok(());
    }
    let kind = match e.kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
    };
    let mtime = crate::time::format_utc(e.mtime_ns.div_euclid(1_000_000_000));
    writeln!(
        out,
        "{kind}{} {:>6} {:>6} {:>10}  {mtime}  {}{link}",
        mode_text(e.mode),
        e.uid,
        e.gid,
        e.size,
        printable(&e.path)
    )?;
    Ok(())
}

/// `rwxr-xr-x`, with setuid, setgid and sticky as `ls -l` shows them.
fn mode_text(mode: u32) -> String {
    let mut s: Vec<char> =
        "rwxrwxrwx".chars().enumerate().map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' }).collect();
    for (bit, at, set, unset) in [(0o4000, 2, 's', 'S'), (0o2000, 5, 's', 'S'), (0o1000, 8, 't', 'T')] {
        if mode & bit != 0 {
            s[at] = if s[at] == '-' { unset } else { set };
        }
    }
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(super::mode_text(0o755), "rwxr-xr-x");
        assert_eq!(super::mode_text(0o4750), "rwsr-x---");
        assert_eq!(super::mode_text(0o1777), "rwxrwxrwt");
        assert_eq!(super::mode_text(0o2640), "rw-r-S---");
    }
}
