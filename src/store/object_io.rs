//! Reads and listings through `object_store`, as every store kind built on it makes
//! them.

use anyhow::Result;
use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload};

use super::{AlreadyExists, ObjectVersion};

/// The object a key names, byte for byte: `object_store`'s `Path::from` would
/// percent-encode `%`, `#`, `?`… and so name another object than the one a listing
/// showed. A key it cannot name at all (a control character, an empty segment) is an error.
pub fn path(key: &str) -> Result<ObjPath> {
    ObjPath::parse(key)
        .map_err(|e| anyhow::anyhow!("the key {} cannot be addressed: {e}", crate::escape::quote(key.as_bytes(), 200)))
}

/// Writes a new object through `object_store`, create-only: an existing key is refused
/// with [`AlreadyExists`]. Returns the version id where the store keeps versions.
pub async fn put_new(store: &dyn ObjectStore, key: &str, body: Bytes) -> Result<Option<String>> {
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(&path(key)?, PutPayload::from_bytes(body), opts).await {
        Ok(r) => Ok(r.version),
        Err(object_store::Error::AlreadyExists { .. }) => Err(AlreadyExists { key: key.to_string() }.into()),
        Err(e) => Err(e.into()),
    }
}

/// Reads an object version of at most `max` bytes through `object_store`, with its
/// version id: the announced size is checked first, and a body is streamed, never
/// buffered from what the server announces ([`crate::bounded`]).
pub async fn get(
    store: &dyn ObjectStore,
    key: &str,
    version: Option<&str>,
    max: u64,
) -> Result<(Bytes, Option<String>)> {
    let opts = GetOptions { version: version.map(str::to_string), ..Default::default() };
    let r = store.get_opts(&path(key)?, opts).await?;
    let version = r.meta.version.clone();
    let size = r.meta.size;
    let bytes = match r.payload {
        // A file: read at once, once its size is known to be within bounds.
        object_store::GetResultPayload::File(..) if size <= max => r.bytes().await?,
        _ => crate::bounded::collect(r.into_stream(), Some(size), max, key).await?,
    };
    Ok((bytes, version))
}

/// The size of an object version through `object_store`, or `None` when it is missing.
pub async fn size_of(store: &dyn ObjectStore, key: &str, version: Option<&str>) -> Result<Option<u64>> {
    let opts = GetOptions { version: version.map(str::to_string), head: true, ..Default::default() };
    match store.get_opts(&path(key)?, opts).await {
        Ok(r) => Ok(Some(r.meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The current objects under `sub`, through `object_store` (a directory): as many as a
/// listing may keep ([`crate::bounded::Listing`]).
pub async fn list_current(store: &dyn ObjectStore, sub: &str) -> Result<Vec<ObjectVersion>> {
    use futures::TryStreamExt;
    let prefix = (!sub.is_empty()).then(|| path(sub)).transpose()?;
    let mut listing = crate::bounded::Listing::default();
    let mut out = Vec::new();
    let mut metas = store.list(prefix.as_ref());
    while let Some(m) = metas.try_next().await? {
        let key = m.location.to_string();
        listing.keep(key.len() + m.e_tag.as_ref().map_or(0, String::len), "listing")?;
        out.push(ObjectVersion {
            key,
            version_id: m.version,
            is_latest: true,
            delete_marker: false,
            size: m.size,
            last_modified: m.last_modified.timestamp(),
            etag: m.e_tag,
        });
    }
    Ok(out)
}
