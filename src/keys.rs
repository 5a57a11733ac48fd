//! Keys and encryption.
//!
//! The backup host holds only public age recipients and the repository secret. The
//! secret keys chunk ids and authenticates snapshot records; it can never decrypt
//! anything, because every object is encrypted to the recipients alone. The restorer's
//! age identity stays offline and is the only thing that can read a backup.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use anyhow::{Context, Result, anyhow, bail};

use crate::fsutil;

pub const SECRET_LEN: usize = 32;

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
    pub fn chunk_id(&self, plaintext: &[u8]) -> crate::ChunkId {
        crate::ChunkId(*blake3::keyed_hash(&self.chunk_key, plaintext).as_bytes())
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
        fsutil::readable(path, "repository secret")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read repository secret {}", path.display()))?;
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

/// Refuses a key file that is readable or writable by group or others.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| fsutil::io_error(e, path).context("cannot read a key file"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is accessible by group or others (mode {:03o}); run `chmod 600 {}`",
            path.display(),
            mode,
            path.display()
        );
    }
    Ok(())
}

pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|e| anyhow!("not an age recipient: {e}"))
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

/// The restorer's identity, read from its (private) file.
pub struct Identity {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    pub path: std::path::PathBuf,
}

impl Identity {
    /// Reads an identity file; one encrypted with a passphrase (`age -p`) is opened with
    /// the passphrase from the file `COFFER_IDENTITY_PASSPHRASE_FILE` names (mode 0600),
    /// or asked for on the terminal.
    pub fn load(path: &Path) -> Result<Self> {
        check_private(path)?;
        fsutil::readable(path, "identity")?;
        let text = std::fs::read(path).with_context(|| format!("cannot read identity {}", path.display()))?;
        match is_age_file(&text) {
            true => Self::parse(&decrypt_with_passphrase(&text, path)?, path),
            false => Self::parse(&text, path),
        }
    }

    /// Parses identity file text; `path` names it in messages.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let file = age::IdentityFile::from_buffer(text)
            .with_context(|| format!("identity {} is not an age identity file", path.display()))?;
        let identities =
            file.into_identities().map_err(|e| anyhow!("identity {} is not usable: {e}", path.display()))?;
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

/// The identity file inside a passphrase-encrypted one.
fn decrypt_with_passphrase(text: &[u8], path: &Path) -> Result<Vec<u8>> {
    let passphrase = passphrase(path)?;
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

/// The passphrase: the first line of the file COFFER_IDENTITY_PASSPHRASE_FILE names (a
/// private file, so that no passphrase is in the environment or argv), else asked on
/// the terminal without echo.
fn passphrase(path: &Path) -> Result<age::secrecy::SecretString> {
    if let Some(file) = std::env::var_os("COFFER_IDENTITY_PASSPHRASE_FILE") {
        let file = Path::new(&file);
        check_private(file)?;
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string().into());
    }
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|_| {
        anyhow!(
            "identity {} is encrypted with a passphrase: run on a terminal, or name a 0600 file holding it in \
             COFFER_IDENTITY_PASSPHRASE_FILE",
            path.display()
        )
    })?;
    let saved = rustix::termios::tcgetattr(&tty)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Flush, &quiet)?;
    let mut prompt = &tty;
    let _ = write!(prompt, "passphrase for {}: ", path.display());
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Flush, &saved)?;
    let _ = writeln!(prompt);
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string().into())
}

/// Encrypts `plaintext` as one age stream to every recipient.
pub fn encrypt(recipients: &[age::x25519::Recipient], plaintext: &[u8]) -> Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| anyhow!("cannot encrypt: {e}"))?;
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    let mut writer = encryptor.wrap_output(&mut out)?;
    writer.write_all(plaintext)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = RepoSecret::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
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
