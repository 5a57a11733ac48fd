//! `coffer snapshots [JOB]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::table_line;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::progress::bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Only this job's snapshots.
    job: Option<String>,
    #[command(flatten)]
    pick: super::Pick,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// A snapshot, with the targets that hold its record and the keys that can restore it.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    row: crate::catalog::SnapshotRow,
    /// Until when the latest lock on its record holds, on any target (none: unlocked).
    locked_until: Option<i64>,
    targets: Vec<Held>,
    keys: Vec<Reader>,
    /// Stored by a run the tripwire found suspicious (anomalous change), and not
    /// acknowledged as a false alarm: `restore latest-clean` passes it over.
    suspicious: bool,
}

/// A key that can restore a snapshot: its fingerprint, and the recipient as the config
/// writes it, where the config has it.
#[derive(serde::Serialize)]
struct Reader {
    fingerprint: String,
    recipient: Option<String>,
}

/// A snapshot's record on one target.
#[derive(serde::Serialize)]
struct Held {
    target: String,
    record_version: Option<String>,
    lock_mode: Option<String>,
    locked_until: Option<i64>,
}

pub fn run(config: &Path, a: Args) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    let catalog = Catalog::open_existing(&cfg.state_dir)?;
    let names: std::collections::HashMap<_, _> = catalog.targets()?.into_iter().map(|t| (t.id, t.name)).collect();
    let suspicious = catalog.suspicious_snapshots()?;
    let mut rows = Vec::new();
    let filter = a.pick.filter();
    for row in catalog.snapshots(a.job.as_deref())?.into_iter().filter(|s| filter.matches(s)) {
        let targets = catalog.snapshot_holders(&row.id)?.into_iter().map(|(id, copy)| Held {
            target: names.get(&id).cloned().unwrap_or_else(|| format!("#{}", id.0)),
            record_version: copy.version,
            lock_mode: copy.lock.as_ref().map(|l| l.mode.as_str().to_string()),
            locked_until: copy.lock.map(|l| l.until),
        });
        let keys = catalog.snapshot_readers(&row.id)?.into_iter().map(|fingerprint| Reader {
            recipient: cfg.recipients.iter().find(|r| r.fingerprint() == fingerprint).map(|r| r.to_string()),
            fingerprint,
        });
        let suspicious = suspicious.contains(&row.id);
        let targets: Vec<Held> = targets.collect();
        let locked_until = targets.iter().filter_map(|t| t.locked_until).max();
        rows.push(Listed { targets, keys: keys.collect(), suspicious, locked_until, row });
    }
    if a.json {
        super::json::print_each(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [-16, -20, -12, 8, 10, 10, 10, 6, -10, -10, -12, -12, -17, -12];
    let header = [
        "ID",
        "TIME (UTC)",
        "JOB",
        "FILES",
        "SIZE",
        "NEW",
        "UPLOADED",
        "ERRORS",
        "TRIPWIRE",
        "KEEP UNTIL",
        "LOCKED UNTIL",
        "TARGETS",
        "KEYS",
        "TAGS",
        "CONTENTS",
    ];
    let day = |t: Option<i64>| t.map(|t| crate::time::format_utc(t)[..10].to_string()).unwrap_or_else(|| "-".into());
    println!("{}", table_line(&header.map(String::from), &widths));
    for Listed { row: s, targets, keys, suspicious, locked_until } in &rows {
        let held: Vec<&str> = targets.iter().map(|t| t.target.as_str()).collect();
        let cells = [
            s.id.clone(),
            crate::time::format_utc(s.created_at),
            s.job.clone(),
            s.files.to_string(),
            bytes(s.bytes),
            bytes(s.bytes_new),
            bytes(s.bytes_uploaded),
            s.errors.to_string(),
            if *suspicious { "SUSPICIOUS" } else { "-" }.to_string(),
            day(s.retain_until),
            day(*locked_until),
            held.join(","),
            keys.iter().map(|k| &k.fingerprint[..8]).collect::<Vec<_>>().join(","),
            // The catalog is input too: a tag is shown escaped, whatever wrote it.
            if s.tags.is_empty() { "-".to_string() } else { crate::escape::printable(s.tags.join(",").as_bytes()) },
            s.contents.as_ref().map(|c| c.summary()).unwrap_or_default(),
        ];
        println!("{}", table_line(&cells, &widths));
    }
    if rows.is_empty() {
        println!("(no snapshots)");
    }
    Ok(ExitCode::SUCCESS)
}
