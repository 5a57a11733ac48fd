//! Reads and listings through `object_store`, as every store kind built on it makes
//! them.

use anyhow::Result;
use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload};

use super::{AlreadyExists, ObjectVersion};

/// Writes a new object through `object_store`, create-only: an existing key is refused
/// with [`AlreadyExists`]. Returns the version id where the store keeps versions.
pub async fn put_new(store: &dyn ObjectStore, key: &str, body: Bytes) -> Result<Option<String>> {
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(&ObjPath::from(key), PutPayload::from_bytes(body), opts).await {
        Ok(r) => Ok(r.version),
        Err(object_store::Error::AlreadyExists { .. }) => Err(AlreadyExists { key: key.to_string() }.into()),
        Err(e) => Err(e.into()),
    }
}

/// Reads an object version through `object_store`, with its version id.
pub async fn get(store: &dyn ObjectStore, key: &str, version: Option<&str>) -> Result<(Bytes, Option<String>)> {
    let opts = GetOptions { version: version.map(str::to_string), ..Default::default() };
    let r = store.get_opts(&ObjPath::from(key), opts).await?;
    let version = r.meta.version.clone();
    Ok((r.bytes().await?, version))
}

/// The size of an object version through `object_store`, or `None` when it is missing.
pub async fn size_of(store: &dyn ObjectStore, key: &str, version: Option<&str>) -> Result<Option<u64>> {
    let opts = GetOptions { version: version.map(str::to_string), head: true, ..Default::default() };
    match store.get_opts(&ObjPath::from(key), opts).await {
        Ok(r) => Ok(Some(r.meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The current objects under `sub`, through `object_store`.
pub async fn list_current(store: &dyn ObjectStore, sub: &str) -> Result<Vec<ObjectVersion>> {
    use futures::TryStreamExt;
    let prefix = (!sub.is_empty()).then(|| ObjPath::from(sub));
    let metas: Vec<object_store::ObjectMeta> = store.list(prefix.as_ref()).try_collect().await?;
    Ok(metas
        .into_iter()
        .map(|m| ObjectVersion {
            key: m.location.to_string(),
            version_id: m.version,
            is_latest: true,
            delete_marker: false,
            size: m.size,
            last_modified: m.last_modified.timestamp(),
            etag: m.e_tag,
        })
        .collect())
}
