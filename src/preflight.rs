//! The preflight: what the jobs need that can be known before the first fire time,
//! checked at once and reported one line per problem. `coffer check-config` prints it
//! (and `systemctl reload` runs it first); the daemon runs it at start and on every
//! reload, refuses a config it fails, and `/health` shows what it found.
//!
//! A problem names its cause: a file by its path, owner and mode against the user coffer
//! runs as; a credential by the variable that should hold it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsutil::{euid, owner_of, readable};

use crate::config::Config;
use crate::state_dir::StateDir;

/// Every problem of `cfg` on this host, without asking the target.
pub fn check(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    state_dir(cfg, &mut problems);
    if let Err(e) = crate::keys::RepoSecret::load(&cfg.repo_secret_file) {
        problems.push(format!("{e:#}"));
    }
    if let Some(token) = &cfg.http.token_file
        && let Err(e) = readable(token, "http.token_file").and_then(|()| crate::keys::check_private(token))
    {
        problems.push(format!("{e:#}"));
    }
    problems.extend(identities(cfg));
    if let Err(e) = crate::keys::plugins_for(&cfg.recipients) {
        problems.push(format!("{e:#}"));
    }
    // The recipients must be the repository's keys (once there is a repository here;
    // a catalog that cannot be opened is the state directory's problem, named above).
    if cfg.state().catalog().exists()
        && let Some(why) = crate::catalog::Catalog::open_existing(&cfg.state_dir)
            .and_then(|c| crate::keyring::drift(cfg, &c))
            .ok()
            .flatten()
    {
        problems.push(why);
    }
    problems.extend(cfg.targets.iter().filter_map(|t| t.options.missing_credentials(&t.name, &t.url)));
    for job in &cfg.jobs {
        let mut found = job.source.check();
        for hook in [&job.hooks.on_success, &job.hooks.on_failure].into_iter().flatten() {
            if !crate::source::findable(&hook[0]) {
                found.push(format!("hook `{}` is not found (PATH, or not executable)", hook[0]));
            }
        }
        // A canary that is not there is never seen to change.
        for (_, canary) in job.tripwire.canaries.iter().filter(|_| job.tripwire.enabled) {
            if !std::fs::symlink_metadata(canary).is_ok_and(|m| m.is_file()) {
                found.push(format!("tripwire canary {canary} is not a regular file (it must exist, and never change)"));
            }
        }
        problems.extend(found.into_iter().map(|p| format!("job `{}`: {p}", job.name)));
    }
    problems
}

/// What the jobs cannot read right now (a source directory missing): each run would
/// fail, but the condition may pass before the job fires, so it is a warning.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let per_job = cfg.jobs.iter().map(|job| (job, job.source.unavailable()));
    per_job.flat_map(|(job, found)| found.into_iter().map(move |w| format!("job `{}`: {w}", job.name))).collect()
}

/// With `--remote`: each target answers and locks as configured; once the repository
/// exists, each holds it (a target new to the config, once a backup caught it up);
/// before `init`, none holds a repository already (init would refuse it).
pub fn check_remote(cfg: &Config) -> Vec<String> {
    let catalog = match cfg.state().catalog().exists() {
        true => {
            match crate::catalog::Catalog::open_existing(&cfg.state_dir).and_then(|c| Ok((c.repo()?, c.targets()?))) {
                Ok(found) => Some(found),
                Err(e) => return vec![format!("{e:#}")],
            }
        }
        false => None,
    };
    let initialised = catalog.as_ref().is_some_and(|(repo, _)| repo.is_some());
    let holds = |name: &str| catalog.iter().flat_map(|(_, t)| t).any(|r| r.name == name && r.record.is_some());
    let mut problems = Vec::new();
    for t in &cfg.targets {
        let (name, url) = (&t.name, &t.url);
        let target = match crate::store::Target::open(t, crate::catalog::TargetId::NONE) {
            Ok(target) => target,
            Err(e) => {
                problems.push(format!("target {name} ({url}): {e:#}"));
                continue;
            }
        };
        match crate::runtime::block_on(target.exists(crate::format::REPO_KEY)) {
            Ok(false) if holds(name) => {
                problems.push(format!(
                    "target {name} ({url}) holds no {}: wrong bucket or prefix?",
                    crate::format::REPO_KEY
                ));
                continue;
            }
            Ok(true) if !initialised => problems.push(format!(
                "target {name} ({url}) already holds a coffer repository: `coffer init` will not overwrite it \
                 (`coffer recover` rebuilds this host's catalog from it)"
            )),
            Ok(_) => {}
            Err(e) => {
                problems.push(format!("target {name} ({url}): {e:#}"));
                continue;
            }
        }
        if let Err(e) = crate::runtime::block_on(target.check_lock_configuration()) {
            problems.push(format!("target {name}: {e:#}"));
        }
    }
    problems
}

/// The state directory and the catalog in it: present, the running user's, private,
/// and writable (a catalog made by `init` as root cannot be used by a service user).
fn state_dir(cfg: &Config, problems: &mut Vec<String>) {
    let dir = &cfg.state_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!("state directory {} does not exist: run `coffer init`", dir.display()));
            return;
        }
        Err(e) => {
            problems.push(format!("state directory {}: {e} ({})", dir.display(), owner_of(dir)));
            return;
        }
    };
    if meta.uid() != euid() {
        problems.push(format!(
            "state directory {}: {}; run coffer as its owner, or `chown -R {} {}`",
            dir.display(),
            owner_of(dir),
            euid(),
            dir.display()
        ));
        return;
    }
    if meta.mode() & 0o077 != 0 {
        problems.push(format!(
            "state directory {} is {:o}: others can read the catalog; `chmod 700 {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        ));
    }
    let catalog = StateDir(dir).catalog();
    if !catalog.exists() {
        problems.push(format!("state directory {} holds no catalog: run `coffer init`", dir.display()));
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = catalog.clone().into_os_string();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        let access = rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK;
        if file.exists() && rustix::fs::access(&file, access).is_err() {
            problems.push(format!("permission denied: {} ({})", file.display(), owner_of(&file)));
        }
    }
    match crate::catalog::Catalog::open_repo(&cfg.state_dir) {
        Ok(_) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
}

/// Files holding an age identity (a secret key) beside the config or in the state
/// directory: the identity belongs offline, with the restorer, never on the backup host.
fn identities(cfg: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if crate::env::var_os("COFFER_IDENTITY").is_some() {
        found.push("COFFER_IDENTITY is set: the identity belongs offline, not on the backup host".to_string());
    }
    let dirs = [cfg.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")), &cfg.state_dir];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let small = e.metadata().is_ok_and(|m| m.is_file() && m.len() < 64 * 1024);
            if small && std::fs::read(&path).is_ok_and(|b| b.windows(15).any(|w| w == b"AGE-SECRET-KEY-")) {
                found.push(format!(
                    "{} holds an age identity: the restorer's secret key belongs offline, not on the backup host",
                    path.display()
                ));
            }
        }
    }
    found
}
