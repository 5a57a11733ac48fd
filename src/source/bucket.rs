//! A cloud bucket as a source: every object under a prefix becomes a file under its key,
//! deduplicated and locked on the target, a *second* provider. The source has its own
//! endpoint, region and credentials, never the target's.
//!
//! An object whose size and ETag (or, without an ETag, last-modified time) equal those of
//! the previous snapshot reuses its chunk list without being downloaded. Objects are
//! streamed through the chunker, never held in memory; each is read only if it still has
//! the ETag the listing gave (an object rewritten during the run is reported, not mixed).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, AttributeValue, Attributes, GetOptions, ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::config::BucketSource;

/// What a snapshot records of the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    pub url: String,
    pub objects: u64,
}

/// An opened bucket (under its prefix).
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    pub url: String,
}

impl Bucket {
    /// Opens `url` with the source's own settings: `endpoint`, `region`, and the
    /// credentials in the environment variables it names.
    pub fn open(src: &BucketSource, url: &str) -> Result<Bucket> {
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
            let store = LocalFileSystem::new_with_prefix(dir).with_context(|| format!("cannot open {dir}"))?;
            return Ok(Bucket { store: Arc::new(store), url: url.to_string() });
        }
        let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow!("`{url}`: expected s3:// or file://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = match (&src.access_key_id_env, &src.secret_access_key_env) {
            (Some(id_var), Some(secret_var)) => {
                let var = |name: &str| {
                    std::env::var(name)
                        .map_err(|_| anyhow!("bucket source {url}: environment variable {name} is not set"))
                };
                AmazonS3Builder::new().with_access_key_id(var(id_var)?).with_secret_access_key(var(secret_var)?)
            }
            _ => AmazonS3Builder::from_env(),
        };
        b = b.with_bucket_name(bucket).with_region(src.region.clone().unwrap_or_else(|| "us-east-1".into()));
        if let Some(ep) = &src.endpoint {
            b = b.with_endpoint(ep).with_allow_http(ep.starts_with("http://"));
        }
        let s3 = b.build().with_context(|| format!("bucket source {url}"))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        Ok(Bucket { store, url: url.to_string() })
    }

    /// Every object, by key.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let mut all = Vec::new();
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.next().await {
            all.push(meta.with_context(|| format!("cannot list {}", self.url))?);
        }
        all.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(all)
    }

    /// Opens one object for streaming, if it still is the version listed; with its
    /// content type.
    pub async fn open_object(&self, meta: &ObjectMeta) -> Result<(BoxStream<'static, Result<Bytes>>, Option<String>)> {
        let opts = GetOptions { if_match: meta.e_tag.clone(), ..Default::default() };
        let r = self.store.get_opts(&meta.location, opts).await.map_err(|e| match e {
            object_store::Error::Precondition { .. } => anyhow!("changed while it was being backed up"),
            e => anyhow!(e),
        })?;
        let content_type = r.attributes.get(&Attribute::ContentType).map(|v| v.to_string());
        let stream = r.into_stream().map(|b| b.map_err(anyhow::Error::from)).boxed();
        Ok((stream, content_type))
    }

    /// Writes every file under `dir` back as an object under its relative path, with the
    /// content type recorded in the snapshot. Returns the number of objects written.
    pub async fn upload_tree(&self, dir: &Path, content_types: &HashMap<String, String>) -> Result<u64> {
        let mut count = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
                let path = e?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                let mut attributes = Attributes::new();
                if let Some(ct) = content_types.get(&rel) {
                    attributes.insert(Attribute::ContentType, AttributeValue::from(ct.clone()));
                }
                // Streamed: large objects go up in parts, never whole in memory.
                let mut w = BufWriter::new(self.store.clone(), ObjPath::from(rel.as_str())).with_attributes(attributes);
                let mut file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
                loop {
                    let mut buf = vec![0u8; UPLOAD_PART];
                    let n =
                        read_full(&mut file, &mut buf).with_context(|| format!("cannot read {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    w.put(Bytes::from(buf)).await.with_context(|| format!("cannot write {rel} to {}", self.url))?;
                }
                w.shutdown().await.with_context(|| format!("cannot write {rel} to {}", self.url))?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// How much of a file is read per part when writing objects back.
const UPLOAD_PART: usize = 8 << 20;

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A 64-bit fingerprint of an ETag, kept where a file keeps its inode (0: no ETag).
pub fn etag_fingerprint(meta: &ObjectMeta) -> u64 {
    meta.e_tag.as_deref().map_or(0, |t| {
        let h = blake3::hash(t.as_bytes());
        // 63 bits: the catalog stores it as a signed SQLite integer.
        (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) >> 1).max(1)
    })
}

/// A blocking reader over an object's byte stream, for the chunker.
pub struct StreamReader<'a> {
    runtime: &'a tokio::runtime::Runtime,
    stream: BoxStream<'static, Result<Bytes>>,
    buf: Bytes,
}

impl<'a> StreamReader<'a> {
    pub fn new(runtime: &'a tokio::runtime::Runtime, stream: BoxStream<'static, Result<Bytes>>) -> Self {
        StreamReader { runtime, stream, buf: Bytes::new() }
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
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

/// Checks that a key can be a path: no empty, `.` or `..` segment.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        bail!("the key cannot be a file path");
    }
    Ok(())
}
