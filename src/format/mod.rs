//! Every format coffer writes to a target, in one place, each with a version.
//!
//! | object key | format | encrypted | module |
//! | --- | --- | --- | --- |
//! | `coffer.repo` | repository record v1: JSON; the repository secret inside is an age stream to the recipients | secret only | [`repo`] |
//! | `packs/<id[0..2]>/<id>` | pack v1: one age stream of `blob… trailer`; `id` = blake3 of the ciphertext | yes | [`pack`] |
//! | `snapshots/<job>/<id>` | snapshot record v1: age stream of JSON, then a 32-byte MAC keyed by the repository secret | yes | [`snapshot`] |
//! | `keys/<seq>` | key-set record v1: JSON (recipients' fingerprints, the secret as an age stream to them), then a 32-byte MAC | secret only | [`keyset`] |
//! | (blobs in packs) | entry stream v1: JSON lines describing the files of a snapshot, chunked like file data | yes | [`entry`] |
//!
//! Decoders never panic on malformed input and never allocate more than the input's size.

pub mod contents;
pub mod entry;
pub mod entry_check;
pub mod keyset;
pub mod pack;
pub mod repo;
pub mod snapshot;

#[cfg(test)]
pub mod robustness;

pub use crate::chunk_id::ChunkId;

/// A pack's id: the blake3 hash of its ciphertext, so anyone can check a pack's
/// integrity without any key.
pub fn pack_id(ciphertext: &[u8]) -> String {
    crate::hex::encode(blake3::hash(ciphertext).as_bytes())
}

/// The key of a pack. The id may come from a damaged catalog: any string gives a key
/// (which then names no stored object), never a panic.
pub fn pack_key(pack_id: &str) -> String {
    format!("packs/{}/{}", pack_id.get(..2).unwrap_or(pack_id), pack_id)
}

pub fn snapshot_key(job: &str, id: &str) -> String {
    format!("snapshots/{job}/{id}")
}

pub const REPO_KEY: &str = "coffer.repo";

/// The most bytes coffer reads of a repository record: a few hundred bytes of JSON per
/// recipient. A target answering with more is refused, never buffered.
pub const MAX_REPO_RECORD: u64 = 256 << 10;

/// The most bytes coffer reads of a snapshot record (its file list's chunk ids and the
/// paths that could not be read; a few KiB for most snapshots).
pub const MAX_SNAPSHOT_RECORD: u64 = 64 << 20;

/// Errors of the decoders: what was malformed, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Malformed(String),
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("authentication failed (MAC mismatch): the record was altered or forged")]
    Mac,
    #[error("cannot decrypt: {0}")]
    Decrypt(#[from] age::DecryptError),
    /// A stored object whose bytes are not the ones its name (its hash) says.
    #[error("{0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Whether the stored bytes are damaged, rather than this identity unable to open
    /// them: only damage makes the next backup store a pack's chunks again.
    pub fn is_damage(&self) -> bool {
        !matches!(
            self,
            DecodeError::Decrypt(
                age::DecryptError::NoMatchingKeys
                    | age::DecryptError::KeyDecryptionFailed
                    | age::DecryptError::Plugin(_)
                    | age::DecryptError::PluginResolve(_)
                    | age::DecryptError::Io(_)
                    | age::DecryptError::ExcessiveWork { .. }
            )
        )
    }
}

pub fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Stored samples of every format version, decoded by today's code: a format change that
/// would make existing backups unreadable fails here.
#[cfg(test)]
mod samples {
    use std::path::{Path, PathBuf};

    use super::entry::{Entry, EntryReader, EntryWriter, Kind};
    use super::keyset::KeySet;
    use super::pack::{self, FLAG_ZSTD, PackBuilder};
    use super::repo::RepoRecord;
    use super::snapshot::{self, SnapshotRecord, SnapshotStats};
    use crate::chunker::ChunkerParams;
    use crate::keys::{Identity, RepoSecret};

    const SNAPSHOT_KEY: &str = "snapshots/sample/00112233aabbccdd";

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats")
    }

    fn secret() -> RepoSecret {
        RepoSecret::from_bytes([7; 32])
    }

    fn blobs() -> [Vec<u8>; 2] {
        [b"a raw sample blob".to_vec(), b"compressible ".repeat(200)]
    }

    /// Writes `name` unless it is there: a stored sample is never rewritten.
    fn keep(name: &str, bytes: impl FnOnce() -> Vec<u8>) {
        let path = dir().join(name);
        if !path.exists() {
            std::fs::write(path, bytes()).unwrap();
        }
    }

    /// The key set of the samples (set 1, after `repo-v1.json`).
    const KEYSET_SAMPLE: &str = "keyset-v1.bin";
    /// Pack v2: the v1 layout and the key set it is encrypted to.
    const PACK_V2_SAMPLE: &str = "pack-v2.age";

    #[test]
    #[ignore = "writes the samples of a new format version (those not stored yet); run once, then commit them"]
    fn write_samples() {
        let d = dir();
        std::fs::create_dir_all(&d).unwrap();
        if !d.join("identity.txt").exists() {
            crate::keys::keygen(&d.join("identity.txt")).unwrap();
        }
        let public = std::fs::read_to_string(d.join("identity.txt")).unwrap();
        let public = public.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
        let recipients = [crate::keys::parse_recipient(&public).unwrap()];
        let s = secret();
        keep("repo-v1.json", || RepoRecord::new(&s, &recipients, ChunkerParams::default()).unwrap().encode());
        let repo = std::fs::read(d.join("repo-v1.json")).unwrap();
        keep(KEYSET_SAMPLE, || {
            let id = RepoRecord::decode(&repo).unwrap().id;
            let previous = blake3::hash(&repo).to_hex().to_string();
            KeySet::new(&id, 1, &previous, &recipients, &s).unwrap().seal(&s)
        });

        let [raw, text] = blobs();
        let mut b = PackBuilder::default();
        b.add(s.chunk_id(&raw), &raw, raw.len() as u32, 0);
        b.add(s.chunk_id(&text), &zstd::bulk::compress(&text, 3).unwrap(), text.len() as u32, FLAG_ZSTD);
        let (plain, _) = b.finish(1);
        keep(PACK_V2_SAMPLE, || crate::keys::encrypt(&recipients, &plain).unwrap());

        let entry = |path: &str, kind| Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_795_432_333_123_456_789,
            ctime_ns: 1_795_432_333_123_456_789,
            ino: 42,
            size: 0,
            target: None,
            content_type: None,
            key: None,
            xattrs: Vec::new(),
            chunks: vec![],
        };
        let mut w = EntryWriter::new(Vec::new()).unwrap();
        w.write(&entry("docs", Kind::Dir)).unwrap();
        let mut f = entry("docs/file with\nnewline", Kind::File);
        f.size = (raw.len() + text.len()) as u64;
        f.chunks = vec![s.chunk_id(&raw), s.chunk_id(&text)];
        w.write(&f).unwrap();
        let mut l = entry("link", Kind::Symlink);
        l.target = Some(b"docs".to_vec());
        w.write(&l).unwrap();
        let entries = w.into_inner();
        keep("entries-v1.jsonl", || entries.clone());

        let record = SnapshotRecord {
            format: snapshot::VERSION,
            id: "00112233aabbccdd".into(),
            job: "sample".into(),
            host: "sample-host".into(),
            created: 1_795_432_333,
            created_ns: None,
            source: "path /srv/sample".into(),
            tree: vec![s.chunk_id(&entries)],
            stats: SnapshotStats { files: 1, dirs: 1, symlinks: 1, ..Default::default() },
            errors: vec![],
            retain_until: None,
            contents: None,
            keyset: None,
            tags: vec![],
        };
        keep("snapshot-v1.bin", || snapshot::seal(&record, SNAPSHOT_KEY, &recipients, &s).unwrap());
    }

    #[test]
    fn pack_v2_and_key_set_v1_samples_decode() {
        let d = dir();
        let read = |name: &str| std::fs::read(d.join(name)).unwrap();
        let identity = Identity::parse(&read("identity.txt"), &d.join("identity.txt")).unwrap();
        let s = secret();

        let plain = identity.decrypt(&read(PACK_V2_SAMPLE)).unwrap();
        let (table, keyset) = pack::read_table(&plain).unwrap();
        assert_eq!((table.len(), keyset), (2, 1));
        for (blob, want) in table.iter().zip(blobs()) {
            let stored = pack::blob_bytes(&plain, blob.offset, blob.length).unwrap();
            assert_eq!(pack::unpack_blob(stored, blob.raw_length, blob.flags).unwrap(), want);
        }
        // A v1 pack reads as key set 0.
        let v1 = identity.decrypt(&read("pack-v1.age")).unwrap();
        assert_eq!(pack::read_table(&v1).unwrap().1, 0);

        let repo = read("repo-v1.json");
        let object = read(KEYSET_SAMPLE);
        let (set, opened) = KeySet::open(&object, &identity).unwrap();
        assert_eq!(opened.bytes(), s.bytes());
        assert_eq!((set.seq, set.repo.as_str()), (1, RepoRecord::decode(&repo).unwrap().id.as_str()));
        assert_eq!(set.previous, blake3::hash(&repo).to_hex().to_string());
        assert_eq!(KeySet::verify(&object, &s).unwrap(), set);
        assert!(KeySet::verify(&object, &RepoSecret::from_bytes([8; 32])).is_err());
        // The secret opens through the set when the record does not name the identity:
        // the chain from `coffer.repo` holds.
        let (_, through) = super::keyset::open_secret(&repo, &identity, || Ok(vec![(1, object.clone())])).unwrap();
        assert_eq!(through.bytes(), s.bytes());
    }

    #[test]
    fn version_1_samples_decode() {
        let d = dir();
        let read = |name: &str| std::fs::read(d.join(name)).unwrap();
        // Read without the 0600 check: git does not keep file modes.
        let identity = Identity::parse(&read("identity.txt"), &d.join("identity.txt")).unwrap();
        let s = secret();

        let repo = RepoRecord::decode(&read("repo-v1.json")).unwrap();
        assert_eq!(repo.chunker, ChunkerParams::default());
        assert_eq!(repo.open_secret(&identity).unwrap().bytes(), s.bytes());

        let plain = identity.decrypt(&read("pack-v1.age")).unwrap();
        let table = pack::read_trailer(&plain).unwrap();
        assert_eq!(table.len(), 2);
        for (blob, want) in table.iter().zip(blobs()) {
            let stored = pack::blob_bytes(&plain, blob.offset, blob.length).unwrap();
            let data = pack::unpack_blob(stored, blob.raw_length, blob.flags).unwrap();
            assert_eq!(data, want);
            assert_eq!(blob.id, s.chunk_id(&data));
        }

        let entries = read("entries-v1.jsonl");
        let parsed: Vec<Entry> = EntryReader::new(&entries[..]).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].path, b"docs/file with\nnewline");
        assert_eq!(parsed[1].chunks, table.iter().map(|b| b.id).collect::<Vec<_>>());
        assert_eq!(parsed[2].target.as_deref(), Some(&b"docs"[..]));

        let record = snapshot::open(&read("snapshot-v1.bin"), SNAPSHOT_KEY, &s, &identity).unwrap();
        assert_eq!((record.job.as_str(), record.created), ("sample", 1_795_432_333));
        assert_eq!(record.tree, vec![s.chunk_id(&entries)]);
        // The record is bound to its key and to the secret.
        assert!(snapshot::open(&read("snapshot-v1.bin"), "snapshots/sample/other", &s, &identity).is_err());
        let other = RepoSecret::from_bytes([8; 32]);
        assert!(snapshot::open(&read("snapshot-v1.bin"), SNAPSHOT_KEY, &other, &identity).is_err());
    }
}
