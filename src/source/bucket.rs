//! A cloud bucket as a source: every object under a prefix becomes a file under its key,
//! deduplicated and locked on the target, a *second* provider. The source has its own
//! endpoint, region and credentials, never the target's.
//!
//! Keys are whatever the bucket's owner (or an attacker with its credentials) wrote, so
//! S3 buckets are listed, read and written back by exact key ([`crate::s3`]); no key can
//! fail the job. A key that cannot be a relative file path (`a//b`, `../x`, `/a`, `a/`,
//! a segment over 255 bytes, or one that clashes with another object's path) is stored
//! under a name in [`ESCAPED_DIR`], with the key itself recorded in its entry, and
//! `restore --to-bucket` writes it back under that key, byte for byte.
//!
//! An object whose size and ETag (or, without an ETag, last-modified time) equal those of
//! the previous snapshot reuses its chunk list without being downloaded. Objects are
//! streamed through the chunker, never held in memory; each is read only if it still has
//! the ETag the listing gave (an object rewritten during the run is reported, not mixed).

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{Attribute, AttributeValue, Attributes, GetOptions, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::catalog::CachedFile;
use crate::format::contents::{BucketState, Contents};
use crate::format::entry::Entry;
use crate::s3::S3Client;
use crate::source::{Input, JobContext, Prepared, Resolve, Source};

pub const KIND: super::Kind = super::Kind { key: "bucket", form: "`{ bucket = \"s3://bucket/prefix\" }`", parse };

/// The directory of the snapshot that holds objects whose keys are not file paths.
pub const ESCAPED_DIR: &str = ".coffer-keys";

/// `source = { bucket = "s3://bucket/prefix", endpoint = "…", region = "…", … }`: a
/// bucket on another provider than the target, with its own endpoint and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSource {
    /// `s3://bucket/prefix` or `file:///dir`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Names of the environment variables holding its credentials (never the secrets);
    /// without them, the standard AWS variables.
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    bucket: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id_env: Option<String>,
    secret_access_key_env: Option<String>,
}

fn parse(table: toml::Table, _: &Resolve<'_>) -> Result<Arc<dyn Source>, String> {
    let raw: Raw = super::table(table, "bucket")?;
    let url = raw.bucket;
    if !(url.starts_with("s3://") && url.len() > 5 || url.starts_with("file:///")) {
        return Err(format!("`bucket`: expected `s3://bucket/prefix` or `file:///dir`, found `{url}`"));
    }
    if raw.access_key_id_env.is_some() != raw.secret_access_key_env.is_some() {
        return Err("`access_key_id_env` and `secret_access_key_env` go together".into());
    }
    Ok(Arc::new(BucketSource {
        url,
        endpoint: raw.endpoint,
        region: raw.region,
        access_key_id_env: raw.access_key_id_env,
        secret_access_key_env: raw.secret_access_key_env,
    }))
}

impl std::fmt::Display for BucketSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bucket {}", self.url)
    }
}

impl Source for BucketSource {
    fn secret_vars(&self) -> Vec<&str> {
        [&self.access_key_id_env, &self.secret_access_key_env].into_iter().flatten().map(String::as_str).collect()
    }

    fn prepare(&self, _: &JobContext) -> Result<Prepared> {
        Bucket::open(self, &self.url)?.prepare()
    }

    fn origin(&self, url: &str) -> Result<Bucket> {
        Bucket::open(self, url)
    }
}

/// The fast path's test for an object: the same size and ETag (its fingerprint is kept
/// where a file keeps its inode); without an ETag, the same size and last-modified time.
pub fn unchanged(c: &CachedFile, e: &Entry) -> bool {
    (c.size, c.inode) == (e.size, e.ino) && (e.ino != 0 || c.mtime_ns == e.mtime_ns)
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The key relative to the prefix, exactly as stored.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Unix nanoseconds.
    pub last_modified_ns: i64,
}

/// The value of the environment variable `name`, which a bucket source's config names.
pub fn env_var(url: &str, name: &str) -> Result<String> {
    crate::env::var(name).map_err(|_| anyhow!("bucket source {url}: environment variable {name} is not set"))
}

/// An opened bucket (under its prefix).
pub struct Bucket {
    reach: Reach,
    pub url: String,
}

/// How the bucket is reached.
enum Reach {
    /// Through object_store: Azure, and writing back to `file://`. Its keys are paths it
    /// accepts.
    Object(Arc<dyn ObjectStore>),
    /// S3, by exact key.
    S3(S3Client),
    /// `file:///dir` read as a bucket (for trying coffer out): every regular file under
    /// it is an object whose key is its path, whatever bytes of UTF-8 its name holds.
    /// Symlinks are not followed, and files are opened without following one.
    Dir { root: std::path::PathBuf, writer: Arc<dyn ObjectStore> },
}

impl Bucket {
    /// Opens `url` with the source's own settings: `endpoint`, `region`, and the
    /// credentials in the environment variables it names.
    pub fn open(src: &BucketSource, url: &str) -> Result<Bucket> {
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
            let writer = Arc::new(LocalFileSystem::new_with_prefix(dir).with_context(|| format!("cannot open {dir}"))?);
            return Ok(Bucket { reach: Reach::Dir { root: dir.into(), writer }, url: url.to_string() });
        }
        let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow!("`{url}`: expected s3:// or file://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = match (&src.access_key_id_env, &src.secret_access_key_env) {
            (Some(id_var), Some(secret_var)) => AmazonS3Builder::new()
                .with_access_key_id(env_var(url, id_var)?)
                .with_secret_access_key(env_var(url, secret_var)?),
            _ => crate::env::s3_builder(),
        };
        let region = src.region.clone().unwrap_or_else(|| "us-east-1".into());
        b = b.with_bucket_name(bucket).with_region(&region);
        if let Some(ep) = &src.endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let s3 = b.build().with_context(|| format!("bucket source {url}"))?;
        let client = S3Client::new(s3.credentials().clone(), endpoint.as_deref(), bucket, prefix, &region)?;
        Ok(Bucket { reach: Reach::S3(client), url: url.to_string() })
    }

    /// A bucket read and written through object_store, its keys relative to `store`.
    pub fn with_store(url: &str, store: Arc<dyn ObjectStore>) -> Bucket {
        Bucket { reach: Reach::Object(store), url: url.to_string() }
    }

    /// Lists the objects, for a backup to read.
    pub fn prepare(self) -> Result<Prepared> {
        let (objects, errors) = match &self.reach {
            Reach::Dir { root, .. } => dir::list(root)?,
            _ => (crate::runtime::block_on(self.list())?, Vec::new()),
        };
        let state = BucketState { url: self.url.clone(), objects: objects.len() as u64 };
        let input = Input::Objects { bucket: self, objects };
        Ok(Prepared { input, contents: Some(Contents::Bucket(state)), errors, command: None })
    }

    /// Every object, sorted by key.
    pub async fn list(&self) -> Result<Vec<Object>> {
        let mut all = match &self.reach {
            Reach::S3(s3) => s3
                .list_objects()
                .await
                .with_context(|| format!("cannot list {}", self.url))?
                .into_iter()
                .map(|o| Object { key: o.key, size: o.size, etag: o.etag, last_modified_ns: o.last_modified_ns })
                .collect(),
            Reach::Dir { root, .. } => dir::list(root)?.0,
            Reach::Object(store) => {
                let mut all = Vec::new();
                let mut listing = store.list(None);
                while let Some(meta) = listing.next().await {
                    let meta = meta.with_context(|| format!("cannot list {}", self.url))?;
                    all.push(Object {
                        key: meta.location.to_string(),
                        size: meta.size,
                        etag: meta.e_tag,
                        last_modified_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
                    });
                }
                all
            }
        };
        all.sort_by(|a: &Object, b: &Object| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(all)
    }

    /// Opens one object for streaming, if it still is the version listed; with its
    /// content type.
    pub async fn open_object(&self, o: &Object) -> Result<(BoxStream<'static, Result<Bytes>>, Option<String>)> {
        let store = match &self.reach {
            Reach::S3(s3) => return s3.get_object(&o.key, o.etag.as_deref()).await,
            Reach::Dir { root, .. } => return Ok((dir::open(root, o)?, None)),
            Reach::Object(store) => store,
        };
        let opts = GetOptions { if_match: o.etag.clone(), ..Default::default() };
        let r = store.get_opts(&ObjPath::from(o.key.as_str()), opts).await.map_err(|e| match e {
            object_store::Error::Precondition { .. } => anyhow!("changed while it was being backed up"),
            e => anyhow!(e),
        })?;
        let content_type = r.attributes.get(&Attribute::ContentType).map(|v| v.to_string());
        let stream = r.into_stream().map(|b| b.map_err(anyhow::Error::from)).boxed();
        Ok((stream, content_type))
    }

    /// An upload of one object under exactly `key`, with its content type; streamed in
    /// parts, never whole in memory. It appears only when finished.
    pub fn writer(&self, key: &str, content_type: Option<&str>) -> Result<Upload> {
        let store = match &self.reach {
            Reach::S3(s3) => return Ok(Upload::S3(Box::new(crate::s3::Upload::new(s3, key, content_type)))),
            Reach::Object(store) | Reach::Dir { writer: store, .. } => store,
        };
        let path = ObjPath::parse(key).map_err(|e| anyhow!("cannot be a key in {}: {e}", self.url))?;
        if path.as_ref() != key {
            bail!("cannot be a key in {} (a leading or trailing `/`)", self.url);
        }
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, AttributeValue::from(ct.to_string()));
        }
        Ok(Upload::Object(Box::new(BufWriter::new(store.clone(), path).with_attributes(attributes))))
    }
}

/// A directory read as a bucket.
mod dir {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::*;
    use crate::format::snapshot::EntryError;

    /// Every regular file under `root`, by key (its path), sorted; what is not a regular
    /// file or a directory (a symlink, a FIFO), or whose name is not UTF-8, is named.
    pub fn list(root: &Path) -> Result<(Vec<Object>, Vec<EntryError>)> {
        let (mut objects, mut skipped) = (Vec::new(), Vec::new());
        let mut listing = crate::bounded::Listing::default();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let at = root.join(&prefix);
            let entries = std::fs::read_dir(&at).with_context(|| format!("cannot list {}", at.display()))?;
            for e in entries {
                let e = e.with_context(|| format!("cannot list {}", at.display()))?;
                let name = e.file_name();
                let Ok(name) = std::str::from_utf8(name.as_bytes()) else {
                    let path = crate::escape::printable(&[prefix.as_bytes(), name.as_bytes()].concat());
                    skipped.push(EntryError { path, error: "the name is not UTF-8: not a bucket key".into() });
                    continue;
                };
                let key = format!("{prefix}{name}");
                let meta = e.metadata().with_context(|| format!("cannot look at {}", e.path().display()))?;
                if meta.is_dir() {
                    stack.push(format!("{key}/"));
                } else if meta.is_file() {
                    listing.keep(key.len(), "bucket listing")?;
                    let last_modified_ns = meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec();
                    objects.push(Object { key, size: meta.len(), etag: None, last_modified_ns });
                } else {
                    let what = if meta.is_symlink() { "a symlink, not followed" } else { "not a regular file" };
                    skipped.push(EntryError { path: crate::escape::printable(key.as_bytes()), error: what.into() });
                }
            }
        }
        objects.sort_by(|a: &Object, b: &Object| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok((objects, skipped))
    }

    /// Opens an object's file beneath `root` without following any symlink on the way
    /// (one swapped in since the listing) or blocking on a FIFO, if it still is the file
    /// listed (same size and modification time).
    pub fn open(root: &Path, o: &Object) -> Result<BoxStream<'static, Result<Bytes>>> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open {}", root.display()))?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = rustix::fs::openat2(&dir, o.key.as_str(), flags, Mode::empty(), beneath)
            .with_context(|| format!("cannot open {}", root.join(&o.key).display()))?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata()?;
        let modified = meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec();
        if !meta.is_file() || meta.len() != o.size || modified != o.last_modified_ns {
            bail!("changed while it was being backed up");
        }
        let reads = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(anyhow!(e)), None)),
            }
        });
        Ok(reads.boxed())
    }
}

/// One object being written back.
pub enum Upload {
    Object(Box<BufWriter>),
    S3(Box<crate::s3::Upload>),
}

impl Upload {
    pub async fn put(&mut self, data: Bytes) -> Result<()> {
        match self {
            Upload::Object(w) => Ok(w.put(data).await?),
            Upload::S3(u) => u.put(&data).await,
        }
    }

    /// Completes the object: only now does it appear under its key.
    pub async fn finish(self) -> Result<()> {
        match self {
            Upload::Object(mut w) => Ok(w.shutdown().await?),
            Upload::S3(u) => u.finish().await,
        }
    }

    /// Drops what was sent of an object that turned out wrong.
    pub async fn abort(self) {
        match self {
            Upload::Object(mut w) => {
                let _ = w.abort().await;
            }
            Upload::S3(u) => u.abort().await,
        }
    }
}

/// Where an object goes in the snapshot. A key that is a clean relative path (no empty,
/// `.` or `..` segment, none over 255 bytes, not under [`ESCAPED_DIR`]) and does not clash
/// with another object's path is its own path (`None`). Any other key gets a name in
/// [`ESCAPED_DIR`]: `k-` and the key percent-encoded (readable, and reversible) when that
/// fits in a file name, else `h-` and a hash of the key; the entry records the key.
pub fn escaped_path(key: &str, clashes: bool) -> Option<String> {
    let clean = crate::format::entry::safe_relative(key.as_bytes())
        && key.split('/').all(|s| s.len() <= crate::format::entry_check::NAME_MAX)
        && key.split('/').next() != Some(ESCAPED_DIR);
    if clean && !clashes {
        return None;
    }
    let encoded = crate::s3::encode_query(key);
    let name = if encoded.len() + 2 <= crate::format::entry_check::NAME_MAX {
        format!("k-{encoded}")
    } else {
        format!("h-{}", &crate::hex::encode(blake3::hash(key.as_bytes()).as_bytes())[..40])
    };
    Some(format!("{ESCAPED_DIR}/{name}"))
}

/// A 64-bit fingerprint of an ETag, kept where a file keeps its inode (0: no ETag).
pub fn etag_fingerprint(etag: Option<&str>) -> u64 {
    etag.map_or(0, |t| {
        let h = blake3::hash(t.as_bytes());
        // 63 bits: the catalog stores it as a signed SQLite integer.
        (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) >> 1).max(1)
    })
}

/// How long an object's transfer may go without data before it counts as failed.
const STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// A blocking reader over an object's byte stream, for the chunker.
pub struct StreamReader {
    stream: BoxStream<'static, Result<Bytes>>,
    buf: Bytes,
}

impl StreamReader {
    pub fn new(stream: BoxStream<'static, Result<Bytes>>) -> Self {
        StreamReader { stream, buf: Bytes::new() }
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            let next = crate::runtime::block_on(async { tokio::time::timeout(STALL, self.stream.next()).await });
            match next.map_err(|_| std::io::Error::other(format!("no data for {STALL:?}: the transfer stalled")))? {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(std::io::Error::other(format!("{e:#}"))),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_not_paths_get_reversible_names() {
        for clean in ["a", "a/b.txt", "50%.txt", "ünï/cödé", "with space", "ctl\u{1}char"] {
            assert_eq!(escaped_path(clean, false), None, "{clean}");
        }
        let long = "x".repeat(300);
        let cases = ["a//b", "../x", "a/../x", "/a", "a/", ".", ".coffer-keys/k-a", "", &long];
        let mut names = std::collections::HashSet::new();
        for key in cases {
            let p = escaped_path(key, false).unwrap_or_else(|| panic!("`{key}` is not a path"));
            assert!(p.starts_with(".coffer-keys/") && crate::format::entry::safe_relative(p.as_bytes()), "{p}");
            assert!(p.split('/').all(|s| s.len() <= 255));
            assert!(names.insert(p), "two keys share a name");
        }
        assert_eq!(escaped_path("a/b", true).as_deref(), Some(".coffer-keys/k-a%2Fb"));
    }
}
