//! Git repositories as a source: a bare mirror per repository in the state directory,
//! updated before each snapshot and then backed up like any directory tree.
//!
//! The mirror is made with `git clone --mirror` and updated with `git fetch --prune`, with automatic gc and maintenance off, so pack files already stored stay
//! byte-identical and deduplicate. A fetch that fails (network, credentials, repository
//! gone) never touches the mirror: the snapshot keeps the last good mirror and records
//! the failure. An upstream that was wiped cannot make coffer delete anything.
//!
//! Credentials come from the environment (a credential helper, `GIT_SSH_COMMAND`), an SSH
//! key file, or a password: named by `password_env`, or embedded in the URL (which works
//! but puts it in the config file). A password never reaches git's argv (which every
//! user can read in /proc), the mirror's config, a snapshot or any file: git gets the URL
//! without it, and asks for it through `GIT_ASKPASS`, which is coffer itself reading it
//! from the environment coffer gave git. git runs in a clean environment, like every
//! child (`process::ChildEnv`), plus its own `GIT_*` settings and an ssh agent.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::format::contents::{Contents, Refs, RepoState};
use crate::format::snapshot::EntryError;
use crate::source::path::Excludes;
use crate::source::{JobContext, Prepared, Resolve, Source};

pub const KIND: super::Kind = super::Kind { key: "git", form: "`{ git = \"URL\" }` (or a list of URLs)", parse };

/// `source = { git = ["URL", …], ssh_key_file = "…", password_env = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// URLs or paths, as written (may embed credentials: print only `redacted`).
    pub repos: Vec<String>,
    /// An SSH private key (mode 0600) for ssh:// and scp-like URLs.
    pub ssh_key_file: Option<PathBuf>,
    /// The environment variable holding the password for https URLs (`https://user@…`),
    /// so that no password sits in the config file.
    pub password_env: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    git: OneOrMany,
    ssh_key_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn parse(table: toml::Table, resolve: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let raw: Raw = super::table(table, "git")?;
    let repos = match raw.git {
        OneOrMany::One(u) => vec![u],
        OneOrMany::Many(v) => v,
    };
    if repos.is_empty() || repos.iter().any(|u| u.trim().is_empty()) {
        return Err("`git`: expected a repository URL or path, or a list of them".into());
    }
    let names: Vec<String> = repos.iter().map(|u| mirror_name(u)).collect();
    if let Some(dup) = names.iter().enumerate().find(|(k, n)| names[..*k].contains(n)) {
        return Err(format!("`git`: two repositories would both be stored as `{}`", dup.1));
    }
    if raw.password_env.is_some() && repos.iter().any(|u| has_password(u)) {
        return Err("`password_env` names where the password is; the URLs must not hold one too".into());
    }
    Ok(Arc::new(GitSource {
        repos,
        ssh_key_file: raw.ssh_key_file.as_deref().map(resolve),
        password_env: raw.password_env,
    }))
}

impl std::fmt::Display for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.repos.iter().map(|u| redacted(u)).collect();
        write!(f, "git {}", urls.join(" "))
    }
}

impl Source for GitSource {
    fn secret_vars(&self) -> Vec<&str> {
        self.password_env.as_deref().into_iter().collect()
    }

    fn check(&self) -> Vec<String> {
        let mut problems = super::unset_vars(&self.secret_vars());
        if !super::findable("git") {
            problems.push("git is not installed (not found in PATH)".into());
        }
        if let Some(key) = &self.ssh_key_file
            && let Err(e) = crate::fsutil::readable(key, "ssh_key_file").and_then(|()| crate::keys::check_private(key))
        {
            problems.push(format!("{e:#}"));
        }
        problems
    }

    /// Updates the mirrors, then walks the mirrors of this config only: not unfinished
    /// clones, nor repositories removed from the config (kept on disk, out of new
    /// snapshots). FETCH_HEAD is rewritten by every fetch and no restore needs it.
    fn prepare(&self, job: &JobContext) -> Result<Prepared> {
        let dir = job.state.mirrors(job.name);
        let repos = update_mirrors(self, &dir)?;
        let errors: Vec<EntryError> = repos
            .iter()
            .filter_map(|(r, _)| Some(EntryError { path: r.dir.clone(), error: r.error.clone()? }))
            .collect();
        if repos.iter().all(|(_, present)| !present) {
            let why: Vec<String> = errors.iter().map(|e| e.error.clone()).collect();
            bail!("no repository of job `{}` could be fetched: {}", job.name, why.join("; "));
        }
        let mut patterns = job.exclude.to_vec();
        patterns.extend(["/.tmp-*".to_string(), "/*/FETCH_HEAD".to_string()]);
        for e in std::fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !repos.iter().any(|(r, _)| r.dir == name) {
                patterns.push(format!("/{}", globset::escape(&name)));
            }
        }
        let repos = repos.into_iter().map(|(r, _)| r).collect();
        Ok(Prepared {
            contents: Some(Contents::Git { repos }),
            errors,
            ..Prepared::tree(dir, Excludes::new(&patterns)?)
        })
    }
}

/// The mirror's directory name: the URL's last path segment, `.git` appended.
pub fn mirror_name(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let base = last.strip_suffix(".git").unwrap_or(last);
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let clean = clean.trim_start_matches('.');
    format!("{}.git", if clean.is_empty() { "repo" } else { clean })
}

/// The URL as it may be printed: a password in it becomes `***`.
pub fn redacted(url: &str) -> String {
    match password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_string(),
    }
}

/// Whether a URL embeds a password.
pub fn has_password(url: &str) -> bool {
    password(url).is_some()
}

/// The URL without its password (`https://user@host/...`): what git and the mirror see.
pub fn without_password(url: &str) -> String {
    match password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), "@", 1),
        None => url.to_string(),
    }
}

/// Set in git's environment when coffer is its `GIT_ASKPASS`.
const ASKPASS: &str = "COFFER_GIT_ASKPASS";
const ASKPASS_PASSWORD: &str = "COFFER_GIT_PASSWORD";

/// When git runs coffer as its `GIT_ASKPASS`: answers the prompt (git's only argument)
/// with the password from the environment, and says so. `None` otherwise.
pub fn askpass() -> Option<std::process::ExitCode> {
    crate::env::var_os(ASKPASS)?;
    let prompt = std::env::args().nth(1).unwrap_or_default();
    if !prompt.starts_with("Password") {
        // The user name is in the URL; anything else is a question coffer cannot answer.
        return Some(std::process::ExitCode::FAILURE);
    }
    let password = crate::env::var(ASKPASS_PASSWORD).unwrap_or_default();
    println!("{password}");
    Some(std::process::ExitCode::SUCCESS)
}

/// The password embedded in `scheme://user:password@host/...`, if any.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty())
}

/// Replaces every occurrence of the URL's password in `text` (git's own messages).
fn scrub(text: &str, url: &str) -> String {
    match password(url) {
        Some(p) => text.replace(p, "***"),
        None => text.to_string(),
    }
}

/// Updates (or first creates) the mirror of every repository. Returns each one's state;
/// a repository whose fetch failed has `error` set and keeps its previous mirror, if any.
pub fn update_mirrors(src: &GitSource, dir: &Path) -> Result<Vec<(RepoState, bool)>> {
    crate::fsutil::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(key) = &src.ssh_key_file {
        crate::keys::check_private(key)?;
    }
    let mut out = Vec::new();
    for url in &src.repos {
        let name = mirror_name(url);
        let mirror = dir.join(&name);
        let fetched = if mirror.exists() { fetch(src, url, &mirror) } else { clone(src, url, dir, &mirror) };
        let fetched = fetched.and_then(|()| hide_credentials(&mirror));
        let error = fetched.err().map(|e| scrub(&format!("{e:#}"), url));
        if let Some(e) = &error {
            tracing::warn!(repo = %redacted(url), "git fetch failed; the previous mirror is kept unchanged: {e}");
        }
        let present = mirror.exists();
        let (head, refs) = if present { refs(&mirror)? } else { (None, Vec::new()) };
        out.push((RepoState { dir: name, url: redacted(url), head, refs, error }, present));
    }
    Ok(out)
}

/// A first clone, into a temporary directory renamed into place once complete.
fn clone(src: &GitSource, url: &str, dir: &Path, mirror: &Path) -> Result<()> {
    let tmp = dir.join(format!(".tmp-{}", crate::hex::random(6)));
    let plain = without_password(url);
    let result = git(src, url, None, &["clone", "--mirror", "--quiet", "--", &plain]).arg(&tmp).status_checked("clone");
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    for (key, value) in [("gc.auto", "0"), ("maintenance.auto", "false"), ("fetch.writeCommitGraph", "false")] {
        git(src, url, Some(&tmp), &["config", key, value]).status_checked("config")?;
    }
    std::fs::rename(&tmp, mirror).with_context(|| format!("cannot move the new mirror to {}", mirror.display()))?;
    crate::fsutil::sync_dir(dir)?;
    Ok(())
}

fn fetch(src: &GitSource, url: &str, mirror: &Path) -> Result<()> {
    // Rewriting the config with the same URL would change it on disk for nothing. A
    // mirror made before passwords were kept out of it gets the URL without.
    let plain = without_password(url);
    if local(mirror, ["config", "--get", "remote.origin.url"])?.as_deref() != Some(plain.as_str()) {
        git(src, url, Some(mirror), &["remote", "set-url", "origin", &plain]).status_checked("remote set-url")?;
    }
    // The mirror refspec (+refs/*:refs/*) with --prune mirrors deletions too; FETCH_HEAD
    // is not written, so a failed fetch leaves every file as it was.
    git(src, url, Some(mirror), &["fetch", "--prune", "--no-write-fetch-head", "--quiet", "origin"])
        .status_checked("fetch")
}

/// After a restore: a working clone beside each restored bare repository
/// (`app.git` -> `app`), checked out at its HEAD. Returns the clones made.
pub fn checkout(to: &Path, repos: &[RepoState]) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for r in repos {
        // The names come from the snapshot record, which a forger can write: one plain
        // name each, a real directory (not a symlink) inside `to`.
        let name = r.dir.as_bytes();
        if name.contains(&b'/') || !crate::format::entry::safe_relative(name) {
            bail!("--checkout: the snapshot names a repository `{}` that is not a plain name", r.dir);
        }
        let bare = to.join(&r.dir);
        if !std::fs::symlink_metadata(&bare).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let work = to.join(r.dir.strip_suffix(".git").unwrap_or(&r.dir));
        if std::fs::symlink_metadata(&work).is_ok() {
            bail!("--checkout: {} already exists; git would write into it", work.display());
        }
        let args = [OsStr::new("clone"), OsStr::new("--quiet"), OsStr::new("--no-hardlinks"), OsStr::new("--")];
        if local(to, args.into_iter().chain([bare.as_os_str(), work.as_os_str()]))?.is_none() {
            bail!("git clone of {} into {} failed", bare.display(), work.display());
        }
        made.push(work);
    }
    Ok(made)
}

/// The symbolic HEAD and every ref of a mirror.
fn refs(mirror: &Path) -> Result<(Option<String>, Refs)> {
    let listed = local(mirror, ["for-each-ref", "--format=%(refname) %(objectname)"])?
        .with_context(|| format!("git for-each-ref failed in {}", mirror.display()))?;
    let refs = listed.lines().filter_map(|l| l.split_once(' ').map(|(r, o)| (r.to_string(), o.to_string()))).collect();
    Ok((local(mirror, ["symbolic-ref", "-q", "HEAD"])?, refs))
}

/// A local git command in `dir` (no network, no credentials): its output, or `None` when
/// git says no (a missing key, a detached HEAD, a failed clone; git's own message goes to
/// stderr).
fn local<I: AsRef<OsStr>>(dir: &Path, args: impl IntoIterator<Item = I>) -> Result<Option<String>> {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    clean_env(&mut c);
    let out = c.output().context("cannot run git (is it installed?)")?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// What git gets of coffer's environment: the common variables, git's own `GIT_*`
/// settings and an ssh agent; never coffer's credentials.
fn clean_env(c: &mut Command) {
    let own = crate::env::with_prefix("GIT_").into_iter().map(|(k, _)| k);
    let env =
        crate::process::ChildEnv { set: Vec::new(), passthrough: own.chain(["SSH_AUTH_SOCK".to_string()]).collect() };
    env.apply(c, &[("GIT_TERMINAL_PROMPT", "0")]);
}

/// The mirror's files that may hold credentials (its config, which git rewrites with 0644)
/// readable by coffer only, whatever git made them.
fn hide_credentials(mirror: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let config = mirror.join("config");
    let mode = std::fs::metadata(&config).with_context(|| format!("cannot read {}", config.display()))?.permissions();
    // Only when needed: a chmod changes the file's ctime, which would make it new data.
    if mode.mode() & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", config.display()))
}

/// A git command that never prompts on a terminal, never runs gc, and gives up on a
/// stalled transfer, in a clean environment; a password comes through `GIT_ASKPASS`.
fn git(src: &GitSource, url: &str, dir: Option<&Path>, args: &[&str]) -> GitCommand {
    let mut c = Command::new("git");
    if let Some(d) = dir {
        c.arg("-C").arg(d);
    }
    c.args(["-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "http.lowSpeedLimit=1000"])
        .args(["-c", "http.lowSpeedTime=120"])
        .args(args)
        .stdin(Stdio::null());
    clean_env(&mut c);
    let password = match &src.password_env {
        Some(var) => crate::env::var(var).ok(),
        None => password(url).map(str::to_string),
    };
    if let (Some(password), Ok(me)) = (password, std::env::current_exe()) {
        c.env("GIT_ASKPASS", me).env(ASKPASS, "1").env(ASKPASS_PASSWORD, password);
    }
    if let Some(key) = &src.ssh_key_file {
        let quoted = format!("'{}'", key.display().to_string().replace('\'', "'\\''"));
        c.env("GIT_SSH_COMMAND", format!("ssh -i {quoted} -o IdentitiesOnly=yes -o BatchMode=yes"));
    }
    GitCommand { command: c, url: url.to_string() }
}

struct GitCommand {
    command: Command,
    url: String,
}

impl GitCommand {
    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.arg(a);
        self
    }

    fn status_checked(mut self, what: &str) -> Result<()> {
        let out = self.command.output().context("cannot run git (is it installed?)")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "git {what} of {} failed ({}): {}",
                redacted(&self.url),
                out.status,
                scrub(&tail.join(" / "), &self.url)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redaction() {
        assert_eq!(mirror_name("https://git.example.com/team/app.git"), "app.git");
        assert_eq!(mirror_name("git@github.com:team/tool"), "tool.git");
        assert_eq!(mirror_name("/srv/git/x y/"), "x_y.git");
        assert_eq!(mirror_name("ssh://host:22/"), "22.git");
        let url = "https://alice:hunter2@git.example.com/app.git";
        assert_eq!(redacted(url), "https://alice:***@git.example.com/app.git");
        assert_eq!(redacted("https://alice@git.example.com/app.git"), "https://alice@git.example.com/app.git");
        assert_eq!(scrub("fatal: auth failed for hunter2", url), "fatal: auth failed for ***");
        assert_eq!(without_password(url), "https://alice@git.example.com/app.git");
        assert_eq!(without_password("/srv/git/a"), "/srv/git/a");
    }
}
