//! coffer's environment, held in memory.
//!
//! The environment coffer starts with carries secrets: the targets' keys, prune's, a
//! bucket source's, a git password. A child inherits the process environment unless
//! whoever starts it says otherwise, and some children are started by libraries coffer
//! does not steer: the age crate starts an age plugin for every object it encrypts or
//! decrypts. So once the command line is read, while coffer is still one thread, [`seal`]
//! copies the whole environment into memory and leaves in the process only what any
//! child may see ([`kept`]). coffer reads its variables here, never from the process.
//!
//! A child could still read the environment coffer started with where the kernel shows
//! it, `/proc/<coffer's pid>/environ`: so [`seal`] also overwrites that block in place,
//! and makes the process non-dumpable (its `/proc` files become root's, and no process
//! of the same user may trace it). Children then start with no ambient capabilities
//! and `no_new_privs`: under `AmbientCapabilities=CAP_DAC_READ_SEARCH` a hook does not
//! inherit the right to read every file, nor gain privileges through a setuid program.
//! PATH keeps only absolute entries, so that no program (an age plugin the age crate
//! looks up by name) is taken from the current directory.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::sync::OnceLock;

/// The environment as coffer started with it, once sealed.
static SEALED: OnceLock<BTreeMap<OsString, OsString>> = OnceLock::new();

/// Variables left in the process after [`seal`]: what libraries read by themselves
/// (proxies, CA certificates, the time zone, temporary files), what a plugin needs to
/// reach a token or a terminal, and nothing that authenticates coffer anywhere.
const KEPT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TERM",
    "COLUMNS",
    "NO_COLOR",
    "TMPDIR",
    "SQLITE_TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "XDG_RUNTIME_DIR",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "PCSCLITE_CSOCK_NAME",
    "AGEDEBUG",
];

/// Whether a variable stays in the process environment after [`seal`].
pub fn kept(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| KEPT.contains(&n) || n.starts_with("LC_"))
}

/// Moves the environment into memory, leaving only [`kept`] variables in the process.
///
/// # Safety
/// No other thread may exist: changing the environment races with any thread reading it.
pub unsafe fn seal() {
    let all: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in &all {
        // SAFETY: the caller promises a single thread. Kept variables are set again, so
        // that the process's copies live on the heap and the block the process started
        // with can be overwritten.
        match kept(name) {
            true if name == "PATH" => unsafe { std::env::set_var(name, absolute_path_entries(value)) },
            true => unsafe { std::env::set_var(name, value) },
            false => unsafe { std::env::remove_var(name) },
        }
    }
    let _ = SEALED.set(all);
    wipe_initial_environment();
    seal_children();
}

/// PATH without empty or relative entries (which name the current directory).
fn absolute_path_entries(path: &OsStr) -> OsString {
    let kept: Vec<std::path::PathBuf> = std::env::split_paths(path).filter(|p| p.is_absolute()).collect();
    std::env::join_paths(kept).unwrap_or_default()
}

/// Overwrites the environment block the kernel shows as `/proc/self/environ` (between
/// `env_start` and `env_end` of `/proc/self/stat`), once nothing points into it.
fn wipe_initial_environment() {
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // Fields after the command name, which is in parentheses and may hold spaces;
        // env_start and env_end are fields 50 and 51.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some((fields.get(47)?.parse::<usize>().ok()?, fields.get(48)?.parse::<usize>().ok()?))
    }) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    // SAFETY: [start, end) is this process's own environment block on its initial stack,
    // mapped writable. After `seal` set every kept variable again, neither `environ` nor
    // anything else in the process refers to it.
    unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
}

/// What every child inherits from now on: no ambient capabilities, no new privileges;
/// and the process itself is not dumpable (its `/proc` files are root's).
fn seal_children() {
    // SAFETY: prctl with these options takes integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
}

/// A variable coffer started with (the process's own, if never sealed: tests).
pub fn var_os(name: impl AsRef<OsStr>) -> Option<OsString> {
    match SEALED.get() {
        Some(sealed) => sealed.get(name.as_ref()).cloned(),
        None => std::env::var_os(name),
    }
}

/// [`var_os`] as UTF-8, with `std::env::var`'s errors.
pub fn var(name: impl AsRef<OsStr>) -> Result<String, std::env::VarError> {
    match var_os(name) {
        Some(v) => v.into_string().map_err(std::env::VarError::NotUnicode),
        None => Err(std::env::VarError::NotPresent),
    }
}

/// Every variable whose name starts with `prefix`, both name and value UTF-8.
pub fn with_prefix(prefix: &str) -> Vec<(String, String)> {
    let pairs: Vec<(OsString, OsString)> = match SEALED.get() {
        Some(sealed) => sealed.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => std::env::vars_os().collect(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

/// An S3 client builder configured from the `AWS_*` variables, as
/// `AmazonS3Builder::from_env` would from the process environment.
pub fn s3_builder() -> object_store::aws::AmazonS3Builder {
    with_prefix("AWS_").into_iter().fold(Default::default(), |b, (k, v)| match k.to_ascii_lowercase().parse() {
        Ok(key) => b.with_config(key, v),
        Err(_) => b,
    })
}

/// An Azure client builder configured from the `AZURE_*` variables (and `MSI_ENDPOINT`),
/// as `MicrosoftAzureBuilder::from_env` would from the process environment.
pub fn azure_builder() -> object_store::azure::MicrosoftAzureBuilder {
    let b =
        with_prefix("AZURE_").into_iter().fold(object_store::azure::MicrosoftAzureBuilder::default(), |b, (k, v)| {
            match k.to_ascii_lowercase().parse() {
                Ok(key) => b.with_config(key, v),
                Err(_) => b,
            }
        });
    match var("MSI_ENDPOINT") {
        Ok(endpoint) => b.with_msi_endpoint(endpoint),
        Err(_) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_kept() {
        for name in ["AWS_SECRET_ACCESS_KEY", "COFFER_PRUNE_SECRET_ACCESS_KEY", "PGPASSWORD", "GIT_ASKPASS"] {
            assert!(!kept(OsStr::new(name)), "{name}");
        }
        for name in ["PATH", "LC_ALL", "TZ", "HTTPS_PROXY"] {
            assert!(kept(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn path_keeps_absolute_entries_only() {
        assert_eq!(absolute_path_entries(OsStr::new(":/usr/bin:.:bin::/bin:")), OsStr::new("/usr/bin:/bin"));
    }
}
