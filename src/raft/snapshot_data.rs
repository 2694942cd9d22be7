//! [`SnapshotData`]: what openraft carries as a snapshot's data, a handle on a snapshot
//! file instead of its bytes, so a snapshot of any size costs a file descriptor.
//!
//! A handle holds the file open: a later snapshot renamed over the same name does not
//! change what an earlier handle reads (the sender of a transfer keeps reading the file
//! its metadata describes). A handle on a file received from a leader also carries the
//! state decoded from it (it was decoded to check it) and the path of the file, which
//! installing renames into place; one dropped without being installed removes its file.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state_machine::Applied;

/// A snapshot file, open for reading.
pub struct SnapshotData {
    file: Arc<File>,
    len: u64,
    received: Option<Received>,
}

/// A received file that is not installed yet.
pub(crate) struct Received {
    path: PathBuf,
    /// The state in it, as decoded while checking it.
    pub applied: Box<Applied>,
}

impl Received {
    /// Where the file is (the caller moves it, then must not let it be removed).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SnapshotData {
    /// Opens the snapshot file at `path`.
    pub fn open(path: &Path) -> io::Result<SnapshotData> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SnapshotData { file: Arc::new(file), len, received: None })
    }

    /// A handle on an open file.
    pub fn from_file(file: File) -> io::Result<SnapshotData> {
        let len = file.metadata()?.len();
        Ok(SnapshotData { file: Arc::new(file), len, received: None })
    }

    /// A handle on `path`, a complete file received from a leader and checked, with the
    /// state decoded from it. The file is removed unless it is installed.
    pub(crate) fn received(path: PathBuf, applied: Applied) -> io::Result<SnapshotData> {
        let received = Received { path, applied: Box::new(applied) };
        let mut data = SnapshotData::open(&received.path)?;
        data.received = Some(received);
        Ok(data)
    }

    /// The size of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (a snapshot file never is).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `offset` (fewer only at the end of the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The received file and its decoded state, if this handle is on one.
    pub(crate) fn take_received(&mut self) -> Option<Received> {
        self.received.take()
    }
}

impl Received {
    /// Marks the file as moved: dropping no longer removes anything.
    pub fn moved(mut self) -> Box<Applied> {
        self.path = PathBuf::new();
        std::mem::take(&mut self.applied)
    }
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotData")
            .field("len", &self.len)
            .field("received", &self.received.as_ref().map(|r| r.path.display().to_string()))
            .finish()
    }
}
