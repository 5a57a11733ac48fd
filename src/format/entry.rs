//! Entry stream v1: the metadata of a snapshot.
//!
//! A header line `{"coffer_entries":1}` then one JSON object per line, in walk order
//! (a directory before its contents, names sorted bytewise). It is chunked like file data,
//! so an unchanged tree stores no new metadata. Paths are relative to the source root,
//! `/`-separated; a path that is not UTF-8 is written as `{"hex": "…"}`.

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use super::{ChunkId, DecodeError, malformed};

pub const HEADER: &str = "{\"coffer_entries\":1}";

/// Longest line a decoder accepts: a file of 4 TiB in 1 MiB chunks has 4 M ids of 67
/// bytes each; far beyond that a line is garbage (and memory a forger chose).
const MAX_LINE: u64 = 256 << 20;

/// How much of a snapshot's file list a reader accepts (`[restore]` in the config). A
/// file list is compressed like any chunk, so a forged one can expand a thousandfold
/// from the pack that holds it; these bounds are named when hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole entry stream (`max_file_list_mib`).
    pub file_list: u64,
    /// Bytes of extended attributes (names and values) of one entry (`max_xattr_kib`).
    pub xattrs: u64,
}

impl Default for Limits {
    /// 16 GiB of file list (some 50 million files); 1 MiB of attributes per entry (Linux
    /// caps a value at 64 KiB).
    fn default() -> Self {
        Limits { file_list: 16 << 30, xattrs: 1 << 20 }
    }
}

/// A file list read through its bound: an error, naming the config key, once more than
/// `limits.file_list` bytes come.
pub struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Capped<R> {
    pub fn new(inner: R, limits: &Limits) -> Self {
        Capped { inner, left: limits.file_list, limit: limits.file_list }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "the snapshot's file list is larger than {} MiB (restore.max_file_list_mib)",
                self.limit >> 20
            ))
        })?;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "raw_path")]
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Change time and inode: only for the incremental fast path of the next backup.
    #[serde(default)]
    pub ctime_ns: i64,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default, with = "opt_raw_path", skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
    /// The MIME type of an object from a bucket source, restored with `--to-bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A bucket source's object key, when the object's path is not its key (the key is not
    /// a file path): `restore --to-bucket` writes it back under this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Extended attributes of a file or directory (`user.*`, `security.*`, POSIX ACLs as
    /// `system.posix_acl_*`), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute: its name, and its value (hex: values are bytes, ACLs binary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "raw_path")]
    pub name: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

impl Entry {
    /// An entry that does not come from a file system (a command's output, a bucket's
    /// objects and the directories their keys imply), owned by the user coffer runs as.
    pub fn synthetic(path: Vec<u8>, kind: Kind, mode: u32, mtime_ns: i64) -> Entry {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime_ns,
            ctime_ns: 0,
            ino: 0,
            size: 0,
            target: None,
            chunks: Vec::new(),
            content_type: None,
            key: None,
            xattrs: Vec::new(),
        }
    }
}

/// Writes entries as lines.
pub struct EntryWriter<W: Write> {
    out: W,
}

impl<W: Write> EntryWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(HEADER.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(EntryWriter { out })
    }

    pub fn write(&mut self, e: &Entry) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, e)?;
        self.out.write_all(b"\n")
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads entries back, one at a time.
pub struct EntryReader<R: BufRead> {
    input: R,
    line: Vec<u8>,
    /// Bytes of the stream consumed so far.
    offset: u64,
    /// Bytes of extended attributes an entry may carry.
    xattrs: u64,
}

impl<R: BufRead> EntryReader<R> {
    pub fn new(input: R) -> Result<Self, DecodeError> {
        Self::with_limits(input, &Limits::default())
    }

    /// A reader refusing entries with more extended attributes than `limits` allows.
    pub fn with_limits(mut input: R, limits: &Limits) -> Result<Self, DecodeError> {
        let mut line = Vec::new();
        let n = read_line(&mut input, &mut line)?;
        if line != HEADER.as_bytes() {
            return Err(malformed("entry stream: missing or unknown header"));
        }
        Ok(EntryReader { input, line, offset: n as u64, xattrs: limits.xattrs })
    }

    /// Where in the stream the next entry's line starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// One entry from its line (without the newline), as [`EntryReader`] reads it.
pub fn parse_line(line: &[u8]) -> Result<Entry, DecodeError> {
    serde_json::from_slice(line).map_err(|e| malformed(format!("entry stream: {e}")))
}

fn read_line<R: BufRead>(input: &mut R, line: &mut Vec<u8>) -> Result<usize, DecodeError> {
    line.clear();
    let n =
        input.by_ref().take(MAX_LINE).read_until(b'\n', line).map_err(|e| malformed(format!("entry stream: {e}")))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if n as u64 == MAX_LINE {
        return Err(malformed("entry stream: line too long"));
    }
    Ok(n)
}

impl<R: BufRead> Iterator for EntryReader<R> {
    type Item = Result<Entry, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match read_line(&mut self.input, &mut self.line) {
            Ok(0) => None,
            Ok(n) => {
                self.offset += n as u64;
                Some(parse_line(&self.line).and_then(|e| {
                    let bytes: u64 = e.xattrs.iter().map(|x| (x.name.len() + x.value.len()) as u64).sum();
                    match bytes > self.xattrs {
                        true => Err(malformed(format!(
                            "entry stream: an entry carries {bytes} bytes of extended attributes, more than \
                             the {} KiB allowed (restore.max_xattr_kib)",
                            self.xattrs >> 10
                        ))),
                        false => Ok(e),
                    }
                }))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// An entry stream read from its chunks one at a time (it can be larger than memory):
/// `fetch` gives a chunk's verified plaintext.
pub struct ChunkedStream<I, F> {
    ids: I,
    fetch: F,
    chunk: std::io::Cursor<Vec<u8>>,
}

impl<I, F> ChunkedStream<I, F>
where
    I: Iterator<Item = ChunkId>,
    F: FnMut(&ChunkId) -> std::io::Result<Vec<u8>>,
{
    pub fn new(ids: impl IntoIterator<IntoIter = I>, fetch: F) -> Self {
        ChunkedStream { ids: ids.into_iter(), fetch, chunk: std::io::Cursor::new(Vec::new()) }
    }
}

impl<I, F> std::io::Read for ChunkedStream<I, F>
where
    I: Iterator<Item = ChunkId>,
    F: FnMut(&ChunkId) -> std::io::Result<Vec<u8>>,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.chunk.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(id) = self.ids.next() else { return Ok(0) };
            self.chunk = std::io::Cursor::new((self.fetch)(&id)?);
        }
    }
}

/// Checks a stored relative path cannot escape the restore directory.
pub fn safe_relative(path: &[u8]) -> bool {
    !path.is_empty()
        && path[0] != b'/'
        && !path.contains(&0)
        && path.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PathRepr {
    Utf8(String),
    Hex { hex: String },
}

pub(crate) mod raw_path {
    use super::PathRepr;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(p) {
            Ok(u) => PathRepr::Utf8(u.to_string()),
            Err(_) => PathRepr::Hex { hex: crate::hex::encode(p) },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match PathRepr::deserialize(d)? {
            PathRepr::Utf8(u) => Ok(u.into_bytes()),
            PathRepr::Hex { hex } => crate::hex::decode(&hex).ok_or_else(|| serde::de::Error::custom("bad hex path")),
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::hex::decode(&text).ok_or_else(|| serde::de::Error::custom("an xattr value is not hex"))
    }
}

pub(crate) mod opt_raw_path {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => super::raw_path::serialize(p, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        super::raw_path::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8]) -> Entry {
        Entry {
            path: path.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 5,
            ino: 7,
            size: 3,
            target: None,
            content_type: None,
            key: None,
            xattrs: Vec::new(),
            chunks: vec![ChunkId([9; 32])],
        }
    }

    #[test]
    fn odd_names_round_trip() {
        let entries = [entry(b"plain"), entry(b"new\nline and space"), entry("ünï".as_bytes()), entry(b"\xff\xfe")];
        let mut w = EntryWriter::new(Vec::new()).unwrap();
        for e in &entries {
            w.write(e).unwrap();
        }
        let bytes = w.into_inner();
        let back: Vec<Entry> = EntryReader::new(&bytes[..]).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, entries);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(EntryReader::new(&b"nope\n"[..]).is_err());
        let text = format!("{HEADER}\n{{\"path\":1}}\n");
        let mut r = EntryReader::new(text.as_bytes()).unwrap();
        assert!(r.next().unwrap().is_err());
    }

    #[test]
    fn unsafe_paths_are_detected() {
        for bad in [&b""[..], b"/etc/passwd", b"a/../../x", b"..", b"a//b", b"./a", b"a\0b"] {
            assert!(!safe_relative(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(safe_relative(b"a/b c/..d"));
    }
}
