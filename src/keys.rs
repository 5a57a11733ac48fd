//! Keys and encryption.
//!
//! The backup host holds only public age recipients and the repository secret. The
//! secret keys chunk ids and authenticates snapshot records; it can never decrypt
//! anything, because every object is encrypted to the recipients alone. The restorer's
//! age identity stays offline and is the only thing that can read a backup.

use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use age::secrecy::{ExposeSecret, SecretString};
use anyhow::{Context, Result, anyhow, bail};

use crate::fsutil;

pub const SECRET_LEN: usize = 32;

/// The largest key file coffer reads (identities, passphrases, the repository secret):
/// far more than any holds.
pub const MAX_KEY_FILE: u64 = 1 << 20;

/// The repository secret and the keys derived from it, one per purpose.
#[derive(Clone)]
pub struct RepoSecret {
    secret: [u8; SECRET_LEN],
    chunk_key: [u8; 32],
    mac_key: [u8; 32],
}

impl std::fmt::Debug for RepoSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoSecret(..)")
    }
}

impl RepoSecret {
    pub fn generate() -> Result<Self> {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).map_err(|e| anyhow!("no randomness from the OS: {e}"))?;
        Ok(Self::from_bytes(secret))
    }

    pub fn from_bytes(secret: [u8; SECRET_LEN]) -> Self {
        RepoSecret {
            secret,
            chunk_key: blake3::derive_key("coffer 2026-11 chunk id", &secret),
            mac_key: blake3::derive_key("coffer 2026-11 record mac", &secret),
        }
    }

    pub fn bytes(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// A chunk's id: equal plaintexts get equal ids, but without the secret an id
    /// reveals nothing about the content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> crate::chunk_id::ChunkId {
        crate::chunk_id::ChunkId(*blake3::keyed_hash(&self.chunk_key, plaintext).as_bytes())
    }

    /// Seeds the chunker's gear table, so cut points do not follow a public table.
    pub fn chunker_seed(&self) -> u64 {
        let k = blake3::derive_key("coffer 2026-11 chunker seed", &self.secret);
        u64::from_le_bytes(k[..8].try_into().unwrap_or_default())
    }

    /// Authenticates a stored record together with the key it is stored under, so a
    /// record cannot be replayed under another name.
    pub fn record_mac(&self, key: &str, body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(key.as_bytes());
        h.update(&[0]);
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// Loads the secret from its file (hex), refusing a file others can read.
    pub fn load(path: &Path) -> Result<Self> {
        check_private(path)?;
        let text = fsutil::read_small(path, "repository secret", MAX_KEY_FILE)?;
        let text = String::from_utf8_lossy(&text);
        let bytes = crate::hex::decode(text.trim())
            .filter(|b| b.len() == SECRET_LEN)
            .ok_or_else(|| anyhow!("repository secret {} is not 64 hex digits", path.display()))?;
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&bytes);
        Ok(Self::from_bytes(secret))
    }

    /// Writes the secret to a new file, mode 0600, atomically. Never overwrites.
    pub fn create_file(&self, path: &Path) -> Result<()> {
        let text = format!("{}\n", crate::hex::encode(&self.secret));
        fsutil::write_new_private(path, text.as_bytes())
            .with_context(|| format!("cannot write repository secret {}", path.display()))
    }
}

/// Refuses a key file others could read or change. Only two shapes pass:
/// - private to its owner (0600, 0400), whoever that is;
/// - readable, not writable, by coffer's own group (0640, 0440), when that group is the
///   one coffer runs as and the file belongs to coffer's user or to root. That is what
///   Kubernetes makes of a Secret volume (`defaultMode: 0400` under `fsGroup`: root's,
///   0440, the pod's group), and what a host's `coffer` group (no other member) needs.
pub fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| fsutil::io_error(e, path).context("cannot read a key file"))?;
    let (mode, egid) = (meta.mode() & 0o777, rustix::process::getegid().as_raw());
    if let Some(why) = exposure(mode, meta.uid(), meta.gid(), fsutil::euid(), egid) {
        bail!("key file {} {why} (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display());
    }
    Ok(())
}

/// Why a key file of this mode and owner is exposed to coffer's user `euid` in group
/// `egid`, if it is.
fn exposure(mode: u32, uid: u32, gid: u32, euid: u32, egid: u32) -> Option<String> {
    if mode & 0o007 != 0 {
        return Some("is accessible by others".into());
    }
    if mode & 0o070 == 0 {
        return None;
    }
    if mode & 0o070 != 0o040 {
        return Some("is writable or executable by its group".into());
    }
    if gid != egid {
        return Some(format!("is readable by group {gid}, not coffer's own ({egid})"));
    }
    if uid != euid && uid != 0 {
        return Some(format!("belongs to uid {uid}, neither coffer's ({euid}) nor root"));
    }
    None
}

/// A public key backups are encrypted to: an age key (`age1…`), an `ssh-ed25519` public
/// key, or an age plugin's recipient (`age1NAME1…`), which the plugin's program
/// `age-plugin-NAME`, found on PATH, wraps each object's key to (a hardware token's, say).
#[derive(Clone)]
pub enum Recipient {
    X25519(age::x25519::Recipient),
    SshEd25519(age::ssh::Recipient),
    Plugin(age::plugin::Recipient),
}

impl FromStr for Recipient {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with("ssh-") {
            return match age::ssh::Recipient::from_str(s) {
                Ok(r @ age::ssh::Recipient::SshEd25519(..)) => Ok(Recipient::SshEd25519(r)),
                // The rsa crate's decryption is open to a timing attack (RUSTSEC-2023-0071):
                // coffer never gets as far as an RSA key, so it never runs that code.
                Ok(age::ssh::Recipient::SshRsa(..)) => bail!("ssh-rsa keys are not accepted; use an ssh-ed25519 key"),
                Err(e) => bail!("not an ssh public key ({e:?})"),
            };
        }
        if let Ok(r) = age::x25519::Recipient::from_str(s) {
            return Ok(Recipient::X25519(r));
        }
        age::plugin::Recipient::from_str(s)
            .map(Recipient::Plugin)
            .map_err(|e| anyhow!("not an age recipient (age1…, age1PLUGIN1… or ssh-ed25519 …): {e}"))
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::X25519(r) => r.fmt(f),
            Recipient::SshEd25519(r) => r.fmt(f),
            Recipient::Plugin(r) => r.fmt(f),
        }
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

pub fn parse_recipient(s: &str) -> Result<Recipient> {
    s.parse()
}

impl Recipient {
    /// A short, stable name for the key: 32 hex digits of the blake3 hash of its text.
    /// Key sets record recipients by it ([`crate::format::keyset`]).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.to_string())
    }
}

/// The fingerprint of a recipient written as text (as `coffer.repo` lists them).
pub fn fingerprint_of(recipient: &str) -> String {
    let canonical = parse_recipient(recipient).map(|r| r.to_string()).unwrap_or_else(|_| recipient.trim().to_string());
    crate::hex::encode(&blake3::hash(canonical.as_bytes()).as_bytes()[..16])
}

/// The age plugins `recipients` need, each found on PATH, or which one is missing.
pub fn plugins_for(recipients: &[Recipient]) -> Result<Vec<age::plugin::RecipientPluginV1<Prompts>>> {
    let plugged: Vec<age::plugin::Recipient> = recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Plugin(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let mut names: Vec<&str> = plugged.iter().map(|p| p.plugin()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            age::plugin::RecipientPluginV1::new(name, &plugged, &[], Prompts::unattended())
                .map_err(|e| anyhow!("recipient needs an age plugin: {e}"))
        })
        .collect()
}

/// A new age identity, as an identity file's text, and its public recipient.
pub fn new_identity() -> (String, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let now = chrono_like_now();
    let text = format!("# created: {now}\n# public key: {recipient}\n{}\n", identity.to_string().expose_secret());
    (text, recipient)
}

/// Creates a new age identity file (0600) and returns its public recipient.
pub fn keygen(path: &Path) -> Result<String> {
    let (text, recipient) = new_identity();
    fsutil::write_new_private(path, text.as_bytes())
        .with_context(|| format!("cannot write identity {}", path.display()))?;
    Ok(recipient)
}

fn chrono_like_now() -> String {
    crate::time::format_utc(crate::time::now_secs())
}

/// The restorer's identity, read from its (private) file: age identities (`age-keygen`,
/// `coffer keygen`), age plugin identities (`AGE-PLUGIN-…`, a hardware token's, say), or
/// an ssh-ed25519 private key; the first two possibly encrypted with `age -p`, the last
/// with its own passphrase.
pub struct Identity {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    pub path: std::path::PathBuf,
}

impl Identity {
    /// Reads an identity file. A passphrase is taken from the file
    /// `COFFER_IDENTITY_PASSPHRASE_FILE` names (mode 0600), or asked on the terminal.
    pub fn load(path: &Path) -> Result<Self> {
        check_private(path)?;
        let text = fsutil::read_small(path, "identity", MAX_KEY_FILE)?;
        if is_age_file(&text) {
            Self::parse(&decrypt_with_passphrase(&text, path)?, path)
        } else if text.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----") {
            Ok(Identity { identities: vec![Box::new(ssh_identity(&text, path)?)], path: path.to_path_buf() })
        } else {
            Self::parse(&text, path)
        }
    }

    /// Parses identity file text; `path` names it in messages.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let file = age::IdentityFile::from_buffer(text)
            .with_context(|| format!("identity {} is not an age identity file", path.display()))?;
        let identities = file
            .with_callbacks(Prompts::interactive())
            .into_identities()
            .map_err(|e| anyhow!("identity {} is not usable: {e}", path.display()))?;
        if identities.is_empty() {
            bail!("identity file {} holds no age identity", path.display());
        }
        Ok(Identity { identities, path: path.to_path_buf() })
    }

    /// Decrypts one age stream held in memory.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, age::DecryptError> {
        let decryptor = age::Decryptor::new(ciphertext)?;
        let mut reader = decryptor.decrypt(self.identities.iter().map(|i| i.as_ref() as &dyn age::Identity))?;
        let mut out = Vec::with_capacity(ciphertext.len());
        reader.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Whether `text` is an age file (binary or armored) rather than an identity file.
fn is_age_file(text: &[u8]) -> bool {
    text.starts_with(b"age-encryption.org/") || text.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
}

/// An OpenSSH ed25519 private key, its passphrase asked once here rather than for every
/// object it opens.
fn ssh_identity(text: &[u8], path: &Path) -> Result<age::ssh::Identity> {
    let parsed = age::ssh::Identity::from_buffer(text, Some(path.display().to_string()))
        .map_err(|e| anyhow!("identity {} is not an OpenSSH private key: {e}", path.display()))?;
    // The public half is in the clear, so the kind is known before any passphrase.
    match age::ssh::Recipient::try_from(parsed.clone()) {
        Ok(age::ssh::Recipient::SshEd25519(..)) => {}
        Ok(age::ssh::Recipient::SshRsa(..)) => {
            bail!("identity {}: ssh-rsa keys are not accepted; use an ssh-ed25519 key", path.display())
        }
        Err(e) => bail!("identity {}: this kind of ssh key is not supported ({e:?})", path.display()),
    }
    match parsed {
        age::ssh::Identity::Encrypted(key) => {
            let passphrase = secret(&format!("passphrase for {}", path.display()))
                .with_context(|| format!("identity {} is encrypted with a passphrase", path.display()))?;
            let key = key.decrypt(passphrase).map_err(|_| anyhow!("identity {}: wrong passphrase", path.display()))?;
            Ok(age::ssh::Identity::Unencrypted(key))
        }
        unencrypted => Ok(unencrypted),
    }
}

/// The identity file inside a passphrase-encrypted one.
fn decrypt_with_passphrase(text: &[u8], path: &Path) -> Result<Vec<u8>> {
    let passphrase = secret(&format!("passphrase for {}", path.display()))
        .with_context(|| format!("identity {} is encrypted with a passphrase", path.display()))?;
    let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(text))
        .with_context(|| format!("identity {} is not a valid age file", path.display()))?;
    let scrypt = age::scrypt::Identity::new(passphrase);
    let mut reader = decryptor.decrypt(std::iter::once(&scrypt as &dyn age::Identity)).map_err(|e| match e {
        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
            anyhow!("identity {}: wrong passphrase", path.display())
        }
        e => anyhow!("identity {}: {e}", path.display()),
    })?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// A secret the person restoring gives: the first line of the file
/// COFFER_IDENTITY_PASSPHRASE_FILE names (a private file, so that no secret is in the
/// environment or argv), else typed on the terminal without echo.
fn secret(prompt: &str) -> Result<SecretString> {
    if let Some(file) = crate::env::var_os("COFFER_IDENTITY_PASSPHRASE_FILE") {
        let file = Path::new(&file);
        check_private(file)?;
        let text = fsutil::read_small(file, "passphrase file", MAX_KEY_FILE)?;
        let text = String::from_utf8(text).map_err(|_| anyhow!("passphrase file {} is not UTF-8", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string().into());
    }
    Ok(ask(prompt, false)?.into())
}

/// Asks on the terminal, echoing the answer or not.
fn ask(prompt: &str, echo: bool) -> Result<String> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|_| {
        anyhow!("no terminal to ask for it on: run on one, or name a 0600 file holding it in COFFER_IDENTITY_PASSPHRASE_FILE")
    })?;
    let saved = rustix::termios::tcgetattr(&tty)?;
    if !echo {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Flush, &quiet)?;
    }
    let mut prompter = &tty;
    let _ = write!(prompter, "{prompt}: ");
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Flush, &saved)?;
    if !echo {
        let _ = writeln!(prompter);
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// How an identity or an age plugin reaches the person restoring: messages ("touch your
/// token") on stderr, and a passphrase or PIN as [`secret`] gets it, asked once per run
/// however many objects the plugin opens. On the backup host ([`Prompts::unattended`])
/// nothing is asked and messages go to the log.
#[derive(Clone)]
pub struct Prompts {
    interactive: bool,
    answers: Arc<Mutex<HashMap<String, SecretString>>>,
}

impl Prompts {
    pub fn unattended() -> Self {
        Prompts { interactive: false, answers: Default::default() }
    }

    pub fn interactive() -> Self {
        Prompts { interactive: true, answers: Default::default() }
    }
}

impl age::Callbacks for Prompts {
    fn display_message(&self, message: &str) {
        match self.interactive {
            true => eprintln!("{}", crate::escape::printable(message.as_bytes())),
            false => tracing::info!("age plugin: {}", crate::escape::printable(message.as_bytes())),
        }
    }

    fn confirm(&self, message: &str, yes: &str, no: Option<&str>) -> Option<bool> {
        if !self.interactive {
            return None;
        }
        let no = no.unwrap_or("no");
        let prompt = format!("{} [{} / {}]", crate::escape::printable(message.as_bytes()), yes, no);
        let answer = ask(&prompt, true).ok()?;
        Some(answer.trim().eq_ignore_ascii_case(yes))
    }

    fn request_public_string(&self, description: &str) -> Option<String> {
        self.interactive.then(|| ask(&crate::escape::printable(description.as_bytes()), true).ok()).flatten()
    }

    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        if !self.interactive {
            return None;
        }
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = answers.get(description) {
            return Some(known.clone());
        }
        let answer = secret(&crate::escape::printable(description.as_bytes())).ok()?;
        answers.insert(description.to_string(), answer.clone());
        Some(answer)
    }
}

/// Encrypts `plaintext` as one age stream to every recipient. A plugin's recipients
/// start its program once per call.
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    encrypt_into(recipients, plaintext, &mut out)?;
    Ok(out)
}

/// [`encrypt`], appending to `out`.
pub fn encrypt_into(recipients: &[Recipient], plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let plugins = plugins_for(recipients)?;
    let native = recipients.iter().filter_map(|r| match r {
        Recipient::X25519(r) => Some(r as &dyn age::Recipient),
        Recipient::SshEd25519(r) => Some(r as &dyn age::Recipient),
        Recipient::Plugin(_) => None,
    });
    let encryptor = age::Encryptor::with_recipients(native.chain(plugins.iter().map(|p| p as &dyn age::Recipient)))
        .map_err(|e| anyhow!("cannot encrypt: {e}"))?;
    let mut writer = encryptor.wrap_output(out)?;
    writer.write_all(plaintext)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn encrypt_decrypt_and_wrong_identity() {
        let dir = tempdir();
        let id_path = dir.join("id.txt");
        let recipient = parse_recipient(&keygen(&id_path).unwrap()).unwrap();
        let other = dir.join("other.txt");
        keygen(&other).unwrap();
        let ct = encrypt(&[recipient], b"hello").unwrap();
        assert_eq!(Identity::load(&id_path).unwrap().decrypt(&ct).unwrap(), b"hello");
        assert!(matches!(Identity::load(&other).unwrap().decrypt(&ct), Err(age::DecryptError::NoMatchingKeys)));
        assert!(keygen(&id_path).is_err(), "keygen must not overwrite an identity");
    }

    #[test]
    fn readable_key_files_are_refused() {
        let dir = tempdir();
        let p = dir.join("repo.secret");
        let s = RepoSecret::generate().unwrap();
        s.create_file(&p).unwrap();
        assert_eq!(RepoSecret::load(&p).unwrap().bytes(), s.bytes());
        for mode in [0o644, 0o660, 0o604] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = RepoSecret::load(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        // Read-only to the group coffer runs in (a file of this test's user and group).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(RepoSecret::load(&p).unwrap().bytes(), s.bytes());
    }

    #[test]
    fn a_key_file_may_be_read_by_coffers_own_group_only() {
        let (me, group, other) = (990, 990, 1000);
        // (mode, owner, group) -> passes
        let cases = [
            ((0o600, me, other), true),
            ((0o400, other, other), true), // private to someone else: reading it fails, not this check
            ((0o440, 0, group), true),     // a Kubernetes Secret under fsGroup
            ((0o640, me, group), true),
            ((0o440, me, other), false), // another group reads it
            ((0o440, other, group), false),
            ((0o660, me, group), false), // the group could replace it
            ((0o650, me, group), false),
            ((0o604, me, group), false),
            ((0o444, 0, group), false),
        ];
        for ((mode, uid, gid), passes) in cases {
            let found = exposure(mode, uid, gid, me, group);
            assert_eq!(found.is_none(), passes, "{mode:o} {uid}:{gid}: {found:?}");
        }
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let a = RepoSecret::from_bytes([1; 32]);
        let b = RepoSecret::from_bytes([2; 32]);
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.record_mac("k1", b"x"), a.record_mac("k2", b"x"));
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("coffer-keys-{}-{}", std::process::id(), crate::hex::random(4)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
