//! The repository's keys: the recipients backups encrypt to now, those they encrypted
//! to before, and the commands that change them (`coffer key add`, `coffer key remove`).
//!
//! `coffer.repo` wraps the repository secret to the recipients given at init: key set 0.
//! Each change writes a key-set record ([`crate::format::keyset`]) wrapping the secret to
//! the new set, on every target, so that a key added later opens the repository and reads
//! every snapshot made from then on. The host holds the secret in clear: it needs no
//! identity for this. A pack written before a key was added cannot be read by that key,
//! so backups stop deduplicating against such packs and store those chunks again.
//!
//! A config whose `recipients` differ from the repository's current set is refused
//! (backup, the daemon, check-config): its snapshots would be encrypted to keys the
//! repository does not know, or without keys its owner counts on.

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;

use crate::catalog::{Catalog, KeySetRow, StoredCopy};
use crate::config::Config;
use crate::format::keyset::{self, KeySet};
use crate::keys::{Recipient, fingerprint_of};
use crate::repo::{Host, Repo};

/// Set 0 from the repository record the host read (a catalog made before key sets).
pub fn learn_first_set(catalog: &Catalog, record: &[u8]) -> Result<()> {
    if catalog.current_keyset()?.is_some() {
        return Ok(());
    }
    let record = crate::format::repo::RepoRecord::decode(record)?;
    let recipients = record.recipients.iter().map(|r| fingerprint_of(r)).collect();
    catalog.add_keyset(&KeySetRow { seq: 0, created_at: record.created, recipients, record_hash: None }, &[])
}

/// Set 0 at init: the recipients the repository record was written to.
pub fn first_set(recipients: &[Recipient], created: i64) -> KeySetRow {
    KeySetRow { seq: 0, created_at: created, recipients: fingerprints(recipients), record_hash: None }
}

fn fingerprints(recipients: &[Recipient]) -> BTreeSet<String> {
    recipients.iter().map(Recipient::fingerprint).collect()
}

/// Why the config's `recipients` cannot be used with this repository, if they differ
/// from its current key set: the keys added and removed, and what to run.
pub fn drift(cfg: &Config, catalog: &Catalog) -> Result<Option<String>> {
    let Some(current) = catalog.current_keyset()? else { return Ok(None) };
    let config = fingerprints(&cfg.recipients);
    if config == current.recipients {
        return Ok(None);
    }
    let added: Vec<String> = cfg
        .recipients
        .iter()
        .filter(|r| !current.recipients.contains(&r.fingerprint()))
        .map(|r| format!("{r} (fingerprint {})", r.fingerprint()))
        .collect();
    let removed: Vec<&String> = current.recipients.difference(&config).collect();
    let mut what = Vec::new();
    if !added.is_empty() {
        what.push(format!(
            "the config adds {}: run `coffer key add RECIPIENT` for each, so that the repository can be opened with it",
            added.join(", ")
        ));
    }
    if !removed.is_empty() {
        let removed: Vec<&str> = removed.iter().map(|s| s.as_str()).collect();
        what.push(format!(
            "the config lacks the repository's key(s) with fingerprint {}: put them back, or run `coffer key remove \
             FINGERPRINT` (see `coffer key list`)",
            removed.join(", ")
        ));
    }
    Ok(Some(format!(
        "the config's recipients are not the repository's keys (set {}): {}",
        current.seq,
        what.join("; ")
    )))
}

/// One key of a set, as `coffer key list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Key {
    pub fingerprint: String,
    /// The recipient as the config writes it, where the config has it.
    pub recipient: Option<String>,
    /// Live snapshots it can restore, of how many.
    pub restores: usize,
}

/// A key set, as `coffer key list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Set {
    pub seq: u32,
    pub created_at: i64,
    pub current: bool,
    pub keys: Vec<Key>,
}

/// Every key set, oldest first, with each key's recipient (where the config has it) and
/// how many live snapshots it can restore.
pub fn list(cfg: &Config) -> Result<(Vec<Set>, usize)> {
    let (catalog, _) = Catalog::open_repo(&cfg.state_dir)?;
    let sets = catalog.keysets()?;
    let live = live_readers(&catalog)?;
    let named = |fp: &str| cfg.recipients.iter().find(|r| r.fingerprint() == fp).map(|r| r.to_string());
    let out = sets
        .iter()
        .map(|s| Set {
            seq: s.seq,
            created_at: s.created_at,
            current: Some(s.seq) == sets.last().map(|l| l.seq),
            keys: s
                .recipients
                .iter()
                .map(|fp| Key {
                    fingerprint: fp.clone(),
                    recipient: named(fp),
                    restores: live.iter().filter(|(_, r)| r.contains(fp)).count(),
                })
                .collect(),
        })
        .collect();
    Ok((out, live.len()))
}

/// Each live snapshot (job/id) and the keys that can restore it.
fn live_readers(catalog: &Catalog) -> Result<Vec<(String, BTreeSet<String>)>> {
    let now = crate::time::now_secs();
    let mut out = Vec::new();
    for s in catalog.snapshots(None)? {
        if s.is_live(now) {
            out.push((format!("{}/{}", s.job, s.id), catalog.snapshot_readers(&s.id)?));
        }
    }
    Ok(out)
}

/// What a key command did.
#[derive(Debug, serde::Serialize)]
pub struct Changed {
    pub seq: u32,
    pub keys: Vec<String>,
    /// Targets that stored the new record.
    pub stored_on: Vec<String>,
    /// Targets that did not, with why (the next backup copies it to them).
    pub not_stored: Vec<String>,
    /// Live snapshots no key of the new set can restore (`key remove --force`).
    pub unreadable: Vec<String>,
}

/// `coffer key add RECIPIENT`: the next set is the current one and `recipient`.
pub fn add(cfg: &Config, recipient: &str) -> Result<Changed> {
    let new: Recipient = recipient.parse().with_context(|| format!("`{recipient}`"))?;
    let repo = Repo::open(cfg)?.host(cfg)?;
    let current = current(&repo)?;
    if current.recipients.contains(&new.fingerprint()) {
        bail!("{new} (fingerprint {}) is already one of the repository's keys", new.fingerprint());
    }
    let mut members = resolve(cfg, &current.recipients)?;
    members.push(new);
    write(&repo, &current, &members, Vec::new())
}

/// `coffer key remove RECIPIENT|FINGERPRINT`: the next set is the current one without it.
/// Refused while it is the only key that can restore a live snapshot (unless `force`),
/// and always for the last key.
pub fn remove(cfg: &Config, key: &str, force: bool) -> Result<Changed> {
    let repo = Repo::open(cfg)?.host(cfg)?;
    let current = current(&repo)?;
    let fp = match key.parse::<Recipient>() {
        Ok(r) => r.fingerprint(),
        Err(_) => key.trim().to_lowercase(),
    };
    if !current.recipients.contains(&fp) {
        bail!("`{key}` is not one of the repository's keys (see `coffer key list`)");
    }
    let rest: BTreeSet<String> = current.recipients.iter().filter(|r| **r != fp).cloned().collect();
    if rest.is_empty() {
        bail!("{fp} is the repository's last key: add another first (`coffer key add`), or nobody could restore");
    }
    let unreadable: Vec<String> = live_readers(&repo.catalog)?
        .into_iter()
        .filter(|(_, readers)| readers.contains(&fp) && readers.intersection(&rest).next().is_none())
        .map(|(snapshot, _)| snapshot)
        .collect();
    if !unreadable.is_empty() && !force {
        bail!(
            "key {fp} is the only key that can restore {} live snapshots ({}); keep it, or pass --force to remove it \
             anyway (those snapshots stay restorable with it alone)",
            unreadable.len(),
            unreadable.join(", ")
        );
    }
    write(&repo, &current, &resolve(cfg, &rest)?, unreadable)
}

fn current(repo: &Repo<Host>) -> Result<KeySetRow> {
    repo.catalog.current_keyset()?.ok_or_else(|| {
        anyhow!(
            "this catalog does not know the repository's keys yet: run a backup first (it reads them from the target)"
        )
    })
}

/// The recipients of `fingerprints`, from the config: a key set wraps the secret to each.
fn resolve(cfg: &Config, fingerprints: &BTreeSet<String>) -> Result<Vec<Recipient>> {
    fingerprints
        .iter()
        .map(|fp| {
            cfg.recipients.iter().find(|r| r.fingerprint() == *fp).cloned().ok_or_else(|| {
                anyhow!("the repository's key {fp} is not in the config's `recipients`: put it there to keep it")
            })
        })
        .collect()
}

/// Writes the next key set to every target that answers, and records it.
fn write(repo: &Repo<Host>, current: &KeySetRow, members: &[Recipient], unreadable: Vec<String>) -> Result<Changed> {
    let Some(pin) = &repo.row.pin else {
        bail!("the repository record is not pinned yet: run a backup first");
    };
    let previous = current.record_hash.clone().unwrap_or_else(|| pin.record_hash.clone());
    let seq = current.seq + 1;
    let set = KeySet::new(&repo.row.repo_id, seq, &previous, members, repo.secret())?;
    let object = set.seal(repo.secret());
    let key = keyset::key(seq);
    let (mut copies, mut stored_on, mut not_stored) = (Vec::new(), Vec::new(), Vec::new());
    for target in &repo.targets {
        let Some(record) = repo.catalog.repo_record(target.id)? else {
            not_stored.push(format!(
                "target `{}` does not hold the repository record yet (the next backup copies it)",
                target.name
            ));
            continue;
        };
        if let Err(why) = crate::runtime::block_on(crate::pin::confirm(target, pin, record.version.as_deref())) {
            not_stored.push(why);
            continue;
        }
        // Locked as long as the repository record there: every restore with a key of this
        // set needs it (and backups extend it with the record).
        let floor = crate::time::now_secs() + crate::config::EXTENSION_SLACK_DAYS * 86_400;
        let until = record.lock.map_or(floor, |l| l.until.max(floor));
        match crate::runtime::block_on(target.put_new(&key, Bytes::from(object.clone()), until)) {
            Ok(version) => {
                copies.push((target.id, StoredCopy { version, lock: target.lock_until(until) }));
                stored_on.push(target.name.clone());
            }
            Err(e) => not_stored.push(format!("target `{}`: {e:#}", target.name)),
        }
    }
    if copies.is_empty() {
        bail!("no target stored the new key set: {}", not_stored.join("; "));
    }
    let row = KeySetRow {
        seq,
        created_at: set.created,
        recipients: set.recipients.iter().cloned().collect(),
        record_hash: Some(blake3::hash(&object).to_hex().to_string()),
    };
    repo.catalog.add_keyset(&row, &copies)?;
    Ok(Changed { seq, keys: set.recipients, stored_on, not_stored, unreadable })
}
