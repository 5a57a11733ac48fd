//! coffer's environment, held in memory.
//!
//! The environment coffer starts with carries secrets: the targets' keys, prune's, a
//! bucket source's, a git password. A child inherits the process environment unless
//! whoever starts it says otherwise, and some children are started by libraries coffer
//! does not steer: the age crate starts an age plugin for every object it encrypts or
//! decrypts. So once the command line is read, while coffer is still one thread, [`seal`]
//! copies the whole environment into memory and leaves in the process only what any
//! child may see ([`kept`]). coffer reads its variables here, never from the process.

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
    for name in all.keys().filter(|n| !kept(n)) {
        // SAFETY: the caller promises a single thread.
        unsafe { std::env::remove_var(name) };
    }
    let _ = SEALED.set(all);
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
}
