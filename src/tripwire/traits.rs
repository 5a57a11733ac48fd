//! What a file's bytes look like, cheaply: its type from its first bytes, and the entropy
//! of a sample of it (how random it looks). Kept per file (16 bits, in the file cache) so
//! that the next run sees a file that turned random or changed type; the content itself
//! is never kept.

/// A file's type, from its first bytes (the magic numbers of common formats), or text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// Bytes of no known format (or too few to say).
    Binary = 0,
    Text = 1,
    Png,
    Jpeg,
    Gif,
    Pdf,
    Zip,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    SevenZip,
    Elf,
    Pe,
    Sqlite,
    Ole,
    Wasm,
    Flac,
    Ogg,
    Mp4,
    Ar,
    Tar,
    Empty,
}

const MAGICS: &[(usize, &[u8], Class)] = &[
    (0, b"\x89PNG\r\n\x1a\n", Class::Png),
    (0, b"\xff\xd8\xff", Class::Jpeg),
    (0, b"GIF8", Class::Gif),
    (0, b"%PDF-", Class::Pdf),
    (0, b"PK\x03\x04", Class::Zip),
    (0, b"PK\x05\x06", Class::Zip),
    (0, b"\x1f\x8b", Class::Gzip),
    (0, b"BZh", Class::Bzip2),
    (0, b"\xfd7zXZ\x00", Class::Xz),
    (0, b"\x28\xb5\x2f\xfd", Class::Zstd),
    (0, b"7z\xbc\xaf\x27\x1c", Class::SevenZip),
    (0, b"\x7fELF", Class::Elf),
    (0, b"MZ", Class::Pe),
    (0, b"SQLite format 3\x00", Class::Sqlite),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", Class::Ole),
    (0, b"\x00asm", Class::Wasm),
    (0, b"fLaC", Class::Flac),
    (0, b"OggS", Class::Ogg),
    (4, b"ftyp", Class::Mp4),
    (0, b"!<arch>\n", Class::Ar),
    (257, b"ustar", Class::Tar),
];

/// The class an extension promises, where it promises one.
fn promised(ext: &str) -> Option<Class> {
    Some(match ext {
        "png" => Class::Png,
        "jpg" | "jpeg" => Class::Jpeg,
        "gif" => Class::Gif,
        "pdf" => Class::Pdf,
        "zip" | "docx" | "xlsx" | "pptx" | "odt" | "ods" | "odp" | "jar" | "epub" | "apk" | "whl" => Class::Zip,
        "gz" | "tgz" => Class::Gzip,
        "bz2" => Class::Bzip2,
        "xz" => Class::Xz,
        "zst" => Class::Zstd,
        "7z" => Class::SevenZip,
        "exe" | "dll" => Class::Pe,
        "sqlite" | "sqlite3" => Class::Sqlite,
        "doc" | "xls" | "ppt" | "msi" => Class::Ole,
        "wasm" => Class::Wasm,
        "flac" => Class::Flac,
        "ogg" | "oga" | "opus" => Class::Ogg,
        "mp4" | "m4a" | "m4v" | "mov" => Class::Mp4,
        "txt" | "md" | "rst" | "rs" | "c" | "h" | "cc" | "cpp" | "hpp" | "py" | "js" | "ts" | "html" | "htm"
        | "css" | "json" | "toml" | "yaml" | "yml" | "xml" | "csv" | "sh" | "sql" | "ini" | "cfg" | "conf" | "go"
        | "java" | "rb" | "pl" | "php" | "svg" => Class::Text,
        _ => return None,
    })
}

/// Whether an extension promises a type (`png`, `pdf`, `rs`…).
pub fn promises(ext: &str) -> bool {
    promised(ext).is_some()
}

impl Class {
    /// The class of a file whose first bytes are `head` (up to a few KiB).
    pub fn of(head: &[u8]) -> Class {
        Class::from_head(head, &Histogram::of(head))
    }

    /// The class of `head`, whose byte histogram is `counts`.
    fn from_head(head: &[u8], counts: &Histogram) -> Class {
        if head.is_empty() {
            return Class::Empty;
        }
        for (at, magic, class) in MAGICS {
            if head.get(*at..*at + magic.len()) == Some(*magic) {
                return *class;
            }
        }
        // Text: no NUL, and nearly every byte printable, whitespace, or part of UTF-8.
        let odd: u32 =
            (1..0x20u8).filter(|b| !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)).map(|b| counts.count(b)).sum();
        if counts.count(0) == 0 && odd as usize * 100 <= head.len() {
            return Class::Text;
        }
        Class::Binary
    }

    fn from_u8(n: u8) -> Class {
        const ALL: [Class; 23] = [
            Class::Binary,
            Class::Text,
            Class::Png,
            Class::Jpeg,
            Class::Gif,
            Class::Pdf,
            Class::Zip,
            Class::Gzip,
            Class::Bzip2,
            Class::Xz,
            Class::Zstd,
            Class::SevenZip,
            Class::Elf,
            Class::Pe,
            Class::Sqlite,
            Class::Ole,
            Class::Wasm,
            Class::Flac,
            Class::Ogg,
            Class::Mp4,
            Class::Ar,
            Class::Tar,
            Class::Empty,
        ];
        ALL.get(usize::from(n)).copied().unwrap_or(Class::Binary)
    }

    /// Whether a file of this class contradicts what `ext` promises (`x.png` that is no
    /// PNG). Text promised and binary found contradicts; a type that is merely other
    /// (a `.txt` holding JSON) does not, nor does an extension that promises nothing.
    pub fn contradicts(self, ext: &str) -> bool {
        match promised(ext) {
            None => false,
            Some(Class::Text) => self == Class::Binary,
            Some(class) => self != class && self != Class::Empty,
        }
    }
}

/// What the tripwire keeps of a file: its class and its sample's entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    pub class: Class,
    /// Order-0 entropy of the sample, in percent of 8 bits a byte: 58–63 for text (the
    /// medians of HTML, Markdown, Rust, TOML, CSS and JavaScript in the toolchain's books
    /// and the registry's crates), ~75 for Base64, 95 and more for ciphertext. `None`: too small a sample to
    /// say. (zstd level 1 on the same samples cost 8 times as much: 9.1 µs a file against
    /// 1.2 µs, measured on the first 4 KiB of the toolchain's 52,073 files.)
    pub entropy: Option<u8>,
}

impl Traits {
    /// Samples shorter than this say little about their entropy.
    const MIN_SAMPLE: usize = 256;

    pub fn pack(self) -> u16 {
        u16::from(self.class as u8) | u16::from(self.entropy.unwrap_or(u8::MAX)) << 8
    }

    /// Read back from the catalog (input: any value gives some traits, never a panic).
    pub fn unpack(n: u16) -> Traits {
        let entropy = (n >> 8) as u8;
        Traits { class: Class::from_u8(n as u8), entropy: (entropy <= 100).then_some(entropy) }
    }

    /// Measures a sample: a file's first `head` bytes, then a few blocks further on. One
    /// pass over the bytes gives both the type and the entropy.
    pub fn of(sample: &[u8], head: usize) -> Traits {
        let (first, rest) = sample.split_at(head.min(sample.len()));
        let mut counts = Histogram::of(first);
        let class = Class::from_head(first, &counts);
        counts.add(rest);
        let entropy = (sample.len() >= Self::MIN_SAMPLE).then(|| counts.entropy_percent(sample.len()));
        Traits { class, entropy }
    }
}

/// How often each byte value occurs, in four tables so that runs of one value do not
/// wait on one counter.
struct Histogram([[u32; 256]; 4]);

impl Histogram {
    fn of(bytes: &[u8]) -> Histogram {
        let mut h = Histogram([[0; 256]; 4]);
        h.add(bytes);
        h
    }

    fn add(&mut self, bytes: &[u8]) {
        let mut quads = bytes.chunks_exact(4);
        for q in &mut quads {
            for (table, &b) in self.0.iter_mut().zip(q) {
                table[usize::from(b)] += 1;
            }
        }
        for &b in quads.remainder() {
            self.0[0][usize::from(b)] += 1;
        }
    }

    fn count(&self, b: u8) -> u32 {
        self.0.iter().map(|t| t[usize::from(b)]).sum()
    }

    /// The order-0 entropy of the `n` bytes counted, in percent of 8 bits a byte.
    fn entropy_percent(&self, n: usize) -> u8 {
        let sum: f64 =
            (0..=255u8).map(|b| self.count(b)).filter(|&c| c > 1).map(|c| f64::from(c) * f64::from(c).log2()).sum();
        let n = n as f64;
        let bits = n.log2() - sum / n;
        (bits / 8.0 * 100.0).round().clamp(0.0, 100.0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits_of(data: &[u8]) -> Traits {
        Traits::of(data, 4096)
    }

    #[test]
    fn types_and_entropy_are_told_apart() {
        let text = "fn main() { println!(\"hello\"); }\n".repeat(100);
        let t = traits_of(text.as_bytes());
        assert_eq!(t.class, Class::Text);
        assert!(t.entropy.unwrap() <= 70, "{t:?}");
        let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let noise = blake3::Hasher::new().update(&random).finalize_xof();
        let mut bytes = vec![0u8; 4096];
        let mut reader = noise;
        reader.fill(&mut bytes);
        let t = traits_of(&bytes);
        assert_eq!(t.class, Class::Binary);
        assert!(t.entropy.unwrap() >= 95, "{t:?}");
        // Base64 of those bytes: text, six bits a byte.
        let b64: Vec<u8> = bytes
            .chunks(3)
            .flat_map(|c| {
                let n = c.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - c.len()));
                (0..4).map(move |i| {
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                        [(n >> (18 - 6 * i) & 63) as usize]
                })
            })
            .collect();
        let t = traits_of(&b64);
        assert_eq!(t.class, Class::Text);
        assert!((72..=76).contains(&t.entropy.unwrap()), "{t:?}");
        assert_eq!(traits_of(b"\x89PNG\r\n\x1a\n....").class, Class::Png);
        assert_eq!(traits_of(b"").class, Class::Empty);
        assert_eq!(traits_of(b"short").entropy, None);
        assert!(Class::Binary.contradicts("png") && Class::Binary.contradicts("rs"));
        assert!(!Class::Png.contradicts("png") && !Class::Binary.contradicts("locked"));
    }

    #[test]
    fn the_type_is_the_heads_and_the_entropy_the_whole_samples() {
        let mut sample = b"%PDF-1.7\n".repeat(500);
        sample.truncate(4096);
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let head_only = Traits::of(&sample, 4096);
        sample.extend_from_slice(&noise);
        let both = Traits::of(&sample, 4096);
        assert_eq!((head_only.class, both.class), (Class::Pdf, Class::Pdf));
        assert!(both.entropy.unwrap() > head_only.entropy.unwrap() + 20, "{head_only:?} {both:?}");
    }

    #[test]
    fn every_packed_value_reads_back_as_some_traits() {
        for n in [0u16, 1, 0x6401, 0xffff, 0x1717, 0x00ff] {
            let t = Traits::unpack(n);
            assert!(t.entropy.is_none_or(|r| r <= 100));
        }
        let t = Traits { class: Class::Gzip, entropy: Some(97) };
        assert_eq!(Traits::unpack(t.pack()), t);
        assert_eq!(Traits::unpack(Traits { class: Class::Text, entropy: None }.pack()).entropy, None);
    }
}
