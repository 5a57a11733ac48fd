//! Records of one size written to a scratch file and read back in order: for what a
//! run would otherwise hold in memory in proportion to its files. The file is unlinked
//! as soon as it is open, so nothing is left of it after the run, even a killed one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use anyhow::Result;

use crate::state_dir::StateDir;

/// A scratch file of `N`-byte records, being written.
pub struct Spill<const N: usize>(BufWriter<File>);

impl<const N: usize> Spill<N> {
    /// A new one under the state directory's `tmp/` (`what` names it while it is opened).
    pub fn new(state: StateDir, what: &str) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = state.scratch(what)?;
        let open = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path);
        let file = open.map_err(|e| crate::fsutil::io_error(e, &path))?;
        std::fs::remove_file(&path).map_err(|e| crate::fsutil::io_error(e, &path))?;
        Ok(Spill(BufWriter::new(file)))
    }

    pub fn push(&mut self, record: &[u8; N]) -> std::io::Result<()> {
        self.0.write_all(record)
    }

    /// The records written, from the first.
    pub fn read_back(self) -> Result<SpillRead<N>> {
        let mut file = self.0.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(SpillRead(Some(BufReader::new(file))))
    }
}

/// The records of a [`Spill`], in order; a read that fails is the last item.
pub struct SpillRead<const N: usize>(Option<BufReader<File>>);

impl<const N: usize> Iterator for SpillRead<N> {
    type Item = std::io::Result<[u8; N]>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = [0u8; N];
        match self.0.as_mut()?.read_exact(&mut record) {
            Ok(()) => Some(Ok(record)),
            Err(e) => {
                self.0 = None;
                (e.kind() != std::io::ErrorKind::UnexpectedEof).then_some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_in_order_and_leave_no_file() {
        let dir = std::env::temp_dir().join(format!("coffer-spill-{}", crate::hex::random(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spill = Spill::<10>::new(StateDir(&dir), "test").unwrap();
        for i in 0..100_000u64 {
            spill.push(&[&i.to_le_bytes()[..], &[1, 2]].concat().try_into().unwrap()).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0, "unlinked once open");
        let back: Vec<[u8; 10]> = spill.read_back().unwrap().collect::<std::io::Result<_>>().unwrap();
        assert_eq!(back.len(), 100_000);
        assert!(back.iter().enumerate().all(|(i, r)| r[..8] == (i as u64).to_le_bytes() && r[8..] == [1, 2]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
