//! Reads from a peer that may lie: every body has a ceiling, and nothing is allocated
//! from what the peer announces.
//!
//! A target (or a source bucket) may be hostile or broken: it can announce a length of
//! 10^15 bytes, send more than it announced, or list without end. So a body is read as a
//! stream into a buffer that grows only with what arrived and never past the ceiling the
//! caller gives for that kind of object, and a listing counts what it keeps.

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Collects a body of at most `max` bytes. `announced` (a Content-Length, a listing's
/// size) is checked against the ceiling before anything is read, and against what
/// arrived at the end; it never sizes an allocation beyond `max`.
pub async fn collect<E>(
    mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    announced: Option<u64>,
    max: u64,
    what: &str,
) -> Result<Bytes>
where
    E: Into<anyhow::Error>,
{
    if let Some(n) = announced.filter(|&n| n > max) {
        bail!("{what}: the server announces {n} bytes, more than the {max} such an object can have");
    }
    // Start small: the announcement is only a hint, and is at most `max` here.
    let mut out = BytesMut::with_capacity(announced.unwrap_or(0).min(1 << 20) as usize);
    while let Some(part) = body.next().await {
        let part = part.map_err(Into::into)?;
        if (out.len() + part.len()) as u64 > max {
            bail!("{what}: the server sends more than the {max} bytes such an object can have");
        }
        out.extend_from_slice(&part);
    }
    if let Some(n) = announced.filter(|&n| n != out.len() as u64) {
        bail!("{what}: the server announced {n} bytes but sent {}", out.len());
    }
    Ok(out.freeze())
}

/// The most object versions one listing keeps: about 16 TB of default-sized packs, and
/// about 250 MiB of memory. A server that lists more (or without end) is refused.
pub const MAX_LISTED: usize = 1_000_000;

/// The most bytes of keys, version ids and ETags one listing keeps.
pub const MAX_LISTED_BYTES: usize = 128 << 20;

/// Counts what a listing keeps, page by page, and refuses a listing that would keep
/// too much or that goes round in circles.
#[derive(Default)]
pub struct Listing {
    entries: usize,
    bytes: usize,
    markers: std::collections::HashSet<String>,
}

impl Listing {
    /// One more entry of `bytes` bytes of text kept.
    pub fn keep(&mut self, bytes: usize, what: &str) -> Result<()> {
        self.entries += 1;
        self.bytes += bytes;
        if self.entries > MAX_LISTED || self.bytes > MAX_LISTED_BYTES {
            bail!(
                "{what}: the listing goes on past {} entries ({} MiB of names); coffer refuses it \
                 (a server that lists without end?)",
                self.entries - 1,
                self.bytes >> 20
            );
        }
        Ok(())
    }

    /// The marker of the next page, which must not have been seen before.
    pub fn next_page(&mut self, marker: &str, what: &str) -> Result<()> {
        if !self.markers.insert(marker.to_string()) {
            bail!("{what}: the server lists the same page again (marker {marker:?}); refused");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn a_body_is_held_to_its_ceiling_and_its_announcement() {
        assert_eq!(&collect(body(&[b"ab", b"c"]), Some(3), 3, "x").await.unwrap()[..], b"abc");
        assert_eq!(&collect(body(&[b"ab", b"c"]), None, 3, "x").await.unwrap()[..], b"abc");
        let huge = collect(body(&[b"ab"]), Some(1_000_000_000_000_000), 10, "x").await.unwrap_err();
        assert!(huge.to_string().contains("announces 1000000000000000 bytes"), "{huge}");
        let more = collect(body(&[b"ab", b"cd"]), None, 3, "x").await.unwrap_err();
        assert!(more.to_string().contains("more than the 3 bytes"), "{more}");
        let short = collect(body(&[b"ab"]), Some(3), 3, "x").await.unwrap_err();
        assert!(short.to_string().contains("announced 3 bytes but sent 2"), "{short}");
        let long = collect(body(&[b"ab", b"c"]), Some(2), 3, "x").await.unwrap_err();
        assert!(long.to_string().contains("announced 2 bytes but sent 3"), "{long}");
    }

    #[test]
    fn a_listing_that_repeats_or_goes_on_is_refused() {
        let mut l = Listing::default();
        l.next_page("k1", "x").unwrap();
        assert!(l.next_page("k1", "x").is_err());
        let mut l = Listing::default();
        for _ in 0..MAX_LISTED {
            l.keep(10, "x").unwrap();
        }
        assert!(l.keep(10, "x").unwrap_err().to_string().contains("past 1000000 entries"));
        assert!(Listing::default().keep(MAX_LISTED_BYTES + 1, "x").is_err());
    }
}
