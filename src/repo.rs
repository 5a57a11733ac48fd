//! The repository as one handle, with the threat model in its type.
//!
//! The backup host holds the catalog, the target and the repository secret (which keys
//! chunk ids and seals records), never the identity. So [`Repo<Host>`] writes backups
//! and has no method that reads their data. Unlocking a handle with the identity, on a
//! restorer's machine, gives a [`Repo<Restorer>`]: it opens the repository record and
//! reads snapshot records by their recorded versions. Commands that only look at what is
//! stored (status, prune, verify without `--read-data`) keep the bare handle.
//!
//! `init` and `recover` come before a handle can exist: they make the catalog's
//! repository row that [`Repo::open`] requires.

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};

use crate::catalog::{Catalog, RepoRow, SnapshotRow};
use crate::config::Config;
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::{MAX_REPO_RECORD, MAX_SNAPSHOT_RECORD, REPO_KEY, snapshot_key};
use crate::keys::{Identity, RepoSecret};
use crate::retry::Retry;
use crate::store::Target;

/// The catalog, the targets it describes, and the one runtime target calls run on; with
/// what `Role` holds.
pub struct Repo<Role = Bare> {
    pub catalog: Catalog,
    /// The catalog's repository row: its id and chunker parameters.
    pub row: RepoRow,
    /// Every configured target, in config order.
    pub targets: Vec<Target>,
    /// Where the config keeps the repository secret (a restorer that has it checks the
    /// record against it).
    secret_file: std::path::PathBuf,
    /// How much of a snapshot's file list is read (`[restore]`).
    pub limits: crate::format::entry::Limits,
    /// The config's recipients, to name keys by (fingerprints are what the catalog has).
    pub recipients: Vec<crate::keys::Recipient>,
    role: Role,
}

/// No key: sees what is stored, reads nothing of it.
pub struct Bare;

/// The backup host: the repository secret, to write with.
pub struct Host {
    secret: RepoSecret,
}

/// A restorer: the identity, the secret it opened, and the target it reads from.
pub struct Restorer {
    identity: Arc<Identity>,
    secret: RepoSecret,
    source: usize,
}

impl Repo<Bare> {
    /// Opens the state directory's catalog and the targets it belongs to; target calls
    /// ride out brief failures.
    pub fn open(cfg: &Config) -> Result<Repo<Bare>> {
        Repo::open_with(cfg, |_| Retry::brief())
    }

    /// As [`Repo::open`], with each target's calls retried under `retry(target)` (a
    /// backup run's budget). A target new to the config joins the catalog, holding
    /// nothing yet: backups catch it up.
    pub fn open_with(cfg: &Config, retry: impl Fn(&crate::config::TargetConfig) -> Retry) -> Result<Repo<Bare>> {
        let (catalog, row) = Catalog::open_repo(&cfg.state_dir)?;
        let known = catalog.targets()?;
        let mut targets = Vec::new();
        for t in &cfg.targets {
            let id = match known.iter().find(|k| k.name == t.name) {
                Some(k) => {
                    crate::catalog::ensure_same_url(k, &cfg.state_dir, &t.url)?;
                    k.id
                }
                None => {
                    if let Some(k) = known.iter().find(|k| k.url == t.url) {
                        bail!(
                            "target `{}` has the URL of target `{}`, which the catalog in {} knows by that name; \
                             keep its name",
                            t.name,
                            k.name,
                            cfg.state_dir.display()
                        );
                    }
                    catalog.add_target(&t.name, &t.url)?
                }
            };
            targets.push(Target::open_with(t, id, retry(t))?);
        }
        let secret_file = cfg.repo_secret_file.clone();
        let (limits, recipients) = (cfg.limits, cfg.recipients.clone());
        Ok(Repo { catalog, row, targets, secret_file, limits, recipients, role: Bare })
    }

    /// Takes the repository secret from its file: the backup host's handle.
    pub fn host(self, cfg: &Config) -> Result<Repo<Host>> {
        let secret = RepoSecret::load(&cfg.repo_secret_file)?;
        Ok(self.with_role(Host { secret }))
    }

    /// Opens the repository record with the identity, from the target named `wanted`, or
    /// else from the first target (in config order) that holds `snapshot` (when given)
    /// and answers. Everything the handle reads then comes from that target.
    pub fn unlock(
        mut self,
        identity: Arc<Identity>,
        wanted: Option<&str>,
        snapshot: Option<&SnapshotRow>,
    ) -> Result<Repo<Restorer>> {
        let holders = match snapshot {
            Some(s) => self.catalog.snapshot_holders(&s.id)?.into_iter().map(|(t, _)| t).collect(),
            None => self.targets.iter().map(|t| t.id).collect::<Vec<_>>(),
        };
        let records = self.catalog.targets()?;
        let mut failures = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            if wanted.is_some_and(|w| w != target.name) {
                continue;
            }
            let record = records.iter().find(|r| r.id == target.id).and_then(|r| r.record.clone());
            let (Some(record), true) = (record, holders.contains(&target.id)) else {
                let what = snapshot.map_or("the repository".to_string(), |s| format!("snapshot {}", s.id));
                failures.push(format!("target `{}` does not hold {what} yet", target.name));
                continue;
            };
            let found = crate::runtime::block_on(crate::pin::read(target, record.version.as_deref()));
            let bytes = match (found, &self.row.pin) {
                (Ok(bytes), Some(pin)) => match crate::pin::refusal(target, pin.judge(bytes.as_deref())) {
                    Some(why) => {
                        failures.push(why);
                        continue;
                    }
                    None => bytes.unwrap_or_default(),
                },
                (Ok(Some(bytes)), None) => bytes,
                (Ok(None), None) => {
                    failures.push(format!("target `{}` holds no {REPO_KEY}", target.name));
                    continue;
                }
                (Err(e), _) => {
                    failures.push(format!("target `{}`: {e:#}", target.name));
                    continue;
                }
            };
            let sets = || self.keyset_records(target);
            let (_, secret) = crate::format::keyset::open_secret(&bytes, &identity, sets)?;
            self.check_secret(&bytes, &secret)?;
            return Ok(self.with_role(Restorer { identity, secret, source: i }));
        }
        match (wanted, failures.is_empty()) {
            (Some(w), true) => Err(anyhow!("no target `{w}` in the config")),
            _ => Err(anyhow!("no target could be read: {}", failures.join("; "))),
        }
    }
}

impl Repo<Bare> {
    /// Every key-set record `target` holds (by recorded version), for an identity that
    /// `coffer.repo` does not list.
    fn keyset_records(&self, target: &Target) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for set in self.catalog.keysets()?.into_iter().filter(|s| s.seq > 0) {
            let held = self.catalog.keyset_holders(set.seq)?;
            let Some((_, copy)) = held.iter().find(|(t, _)| *t == target.id) else { continue };
            let key = crate::format::keyset::key(set.seq);
            let bytes = crate::runtime::block_on(target.get(&key, copy.version.as_deref(), MAX_REPO_RECORD))?;
            // A record that is not the one recorded is not opened.
            if set.record_hash.as_deref() == Some(blake3::hash(&bytes).to_hex().as_str()) {
                out.push((set.seq, bytes.to_vec()));
            }
        }
        Ok(out)
    }

    /// A restorer that holds the repository secret too (restoring on the backup host)
    /// refuses a record that opens to another secret; a catalog made before records were
    /// pinned pins the one the identity opened.
    fn check_secret(&mut self, record: &[u8], secret: &RepoSecret) -> Result<()> {
        // A secret this user cannot read (another user's backup host) is no evidence.
        if let Ok(kept) = RepoSecret::load(&self.secret_file)
            && kept.bytes() != secret.bytes()
        {
            bail!(
                "the repository record opens to another secret than the one in {}: it was replaced; nothing is \
                 read with it",
                self.secret_file.display()
            );
        }
        let pin = crate::pin::Pin::of(record, secret);
        match &self.row.pin {
            None => {
                self.catalog.set_pin(&pin)?;
                self.row.pin = Some(pin);
            }
            // A key set opened another secret than the repository's: forged.
            Some(pinned) if pinned.fingerprint != pin.fingerprint => bail!(
                "the repository secret this identity opened is not the repository's (fingerprint {} against the \
                 pinned {}): a key set was forged; nothing is read with it",
                pin.fingerprint,
                pinned.fingerprint
            ),
            Some(_) => {}
        }
        Ok(())
    }
}

impl<Role> Repo<Role> {
    fn with_role<R>(self, role: R) -> Repo<R> {
        let Repo { catalog, row, targets, secret_file, limits, recipients, .. } = self;
        Repo { catalog, row, targets, secret_file, limits, recipients, role }
    }

    /// The target named `name`, or the first one.
    pub fn target(&self, name: Option<&str>) -> Result<&Target> {
        match name {
            None => Ok(&self.targets[0]),
            Some(name) => self.targets.iter().find(|t| t.name == name).ok_or_else(|| {
                let known: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
                anyhow!("no target `{name}` (targets: {})", known.join(", "))
            }),
        }
    }

    /// The targets named (`Some`), or all of them.
    pub fn selected(&self, name: Option<&str>) -> Result<Vec<&Target>> {
        match name {
            None => Ok(self.targets.iter().collect()),
            Some(_) => Ok(vec![self.target(name)?]),
        }
    }
}

impl Repo<Host> {
    pub fn secret(&self) -> &RepoSecret {
        &self.role.secret
    }
}

impl Repo<Restorer> {
    pub fn identity(&self) -> &Arc<Identity> {
        &self.role.identity
    }

    pub fn secret(&self) -> &RepoSecret {
        &self.role.secret
    }

    /// Reads from `self.targets[index]` from now on (verify checks each target in turn).
    pub fn read_from(&mut self, index: usize) {
        self.role.source = index;
    }

    /// The target this handle reads from.
    pub fn read_target(&self) -> &Target {
        &self.targets[self.role.source]
    }

    /// A snapshot's record, by the version the catalog recorded on the source target,
    /// opened and checked.
    pub fn snapshot_record(&self, snap: &SnapshotRow) -> Result<SnapshotRecord> {
        let key = snapshot_key(&snap.job, &snap.id);
        let source = self.read_target();
        let holders = self.catalog.snapshot_holders(&snap.id)?;
        let Some((_, copy)) = holders.iter().find(|(t, _)| *t == source.id) else {
            bail!("target `{}` does not hold snapshot {} yet", source.name, snap.id);
        };
        let object = crate::runtime::block_on(source.get(&key, copy.version.as_deref(), MAX_SNAPSHOT_RECORD))?;
        snapshot::open(&object, &key, self.secret(), self.identity()).map_err(|e| {
            let readers = match e.is_damage() {
                true => String::new(),
                false => self.readers(&snap.id).map(|r| format!("; it can be restored with: {r}")).unwrap_or_default(),
            };
            anyhow!("snapshot record {key}: {e}{readers}")
        })
    }
}

impl<Role> Repo<Role> {
    /// The keys that can restore a snapshot, by fingerprint and, where the config has
    /// it, recipient.
    pub fn readers(&self, snapshot: &str) -> Result<String> {
        let named = |fp: String| match self.recipients.iter().find(|r| r.fingerprint() == fp) {
            Some(r) => format!("{fp} ({r})"),
            None => fp,
        };
        Ok(self.catalog.snapshot_readers(snapshot)?.into_iter().map(named).collect::<Vec<_>>().join(", "))
    }
}
