//! Segment files: names, the directory lock, creation with preallocation, and the file
//! operations the writer uses, behind the [`Disk`] seam so tests can make them fail.
//!
//! Owns: `wal-<seq>.log` (`seq` zero-padded to 20 digits, from 1), `wal-<seq>.log.tmp` (a
//! segment being created) and `LOCK`. Invariants: a segment is only ever visible under its
//! final name with its header complete and fsynced (it is written under the `.tmp` name,
//! fsynced, renamed, and the directory fsynced); its file length is its preallocated size
//! from then on, so a shorter file is a truncated one. Nothing here decides what is
//! transient or fatal: errors are returned as they come.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Kind, SYNCED};

pub(crate) const LOCK_FILE: &str = "LOCK";
/// Written into `LOCK` once the directory holds a segment: a directory that says so but has
/// no segment left lost its log, and is not taken for a fresh one.
pub(crate) const LOCK_MARKER: &[u8] = b"palisade wal v1: segments were created here\n";
const PREFIX: &str = "wal-";
const SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".log.tmp";

pub(crate) fn segment_name(seq: u64) -> String {
    format!("{PREFIX}{seq:020}{SUFFIX}")
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

pub(crate) fn tmp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:020}{TMP_SUFFIX}"))
}

fn parse_seq(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a WAL directory holds.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment sequence numbers, ascending.
    pub segments: Vec<u64>,
    /// Leftovers of segment creations a crash interrupted.
    pub tmps: Vec<PathBuf>,
    /// Anything else but the lock file.
    pub others: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| with_path(e, "cannot list", dir))?;
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, "cannot list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            listing.others.push(entry.path());
            continue;
        };
        if let Some(seq) = parse_seq(name, SUFFIX) {
            listing.segments.push(seq);
        } else if parse_seq(name, TMP_SUFFIX).is_some() {
            listing.tmps.push(entry.path());
        } else if name != LOCK_FILE {
            listing.others.push(entry.path());
        }
    }
    listing.segments.sort_unstable();
    Ok(listing)
}

/// `e` with `what` and the path in its message, same kind.
pub(crate) fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Opens (creating) `dir/LOCK` and takes an exclusive advisory lock on it, failing at once
/// with `WouldBlock` if another WAL holds it. The lock lasts as long as the file is open.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| with_path(e, "cannot open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is in use by another WAL", path.display()),
        )),
        Err(fs::TryLockError::Error(e)) => Err(with_path(e, "cannot lock", &path)),
    }
}

/// The records a new segment starts with: `Begin` and the meta restated, the last flagged
/// as synced (they are fsynced before anything else goes into the segment).
pub(crate) fn header_bytes(seq: u64, size: u64, epoch: u64, meta: &[(Kind, u64, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    let last = meta.len();
    let flags = |i: usize| if i == last { SYNCED } else { 0 };
    record::encode(&mut buf, Kind::Begin, seq, epoch, flags(0), &size.to_le_bytes());
    for (i, (kind, arg, payload)) in meta.iter().enumerate() {
        record::encode(&mut buf, *kind, *arg, epoch, flags(i + 1), payload);
    }
    buf
}

/// An error of a step of creating a segment or syncing the directory.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Of an operation that may be retried (create, preallocate, write, rename, open).
    Op(io::Error),
    /// Of an fsync: never retried.
    Sync(io::Error),
}

impl Failed {
    pub fn into_inner(self) -> io::Error {
        match self {
            Failed::Op(e) | Failed::Sync(e) => e,
        }
    }
}

/// fsyncs `dir` (so that creations, renames and removals in it are durable).
pub(crate) fn sync_dir(disk: &dyn Disk, dir: &Path) -> Result<(), Failed> {
    let d = disk.open_dir(dir).map_err(Failed::Op)?;
    disk.sync_all(&d).map_err(Failed::Sync)
}

/// Creates segment `seq` in `dir`, preallocated to `size`, starting with `header`: under
/// its `.tmp` name (a leftover of an earlier attempt is removed first), fsynced, renamed,
/// and the directory fsynced. Repeatable after any `Op` error.
pub(crate) fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    seq: u64,
    size: u64,
    header: &[u8],
) -> Result<File, Failed> {
    let tmp = tmp_path(dir, seq);
    match disk.remove(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Failed::Op(e)),
    }
    let file = disk.create(&tmp, size).map_err(Failed::Op)?;
    disk.write_at(&file, &[header], 0).map_err(Failed::Op)?;
    disk.sync_all(&file).map_err(Failed::Sync)?;
    disk.rename(&tmp, &segment_path(dir, seq)).map_err(Failed::Op)?;
    sync_dir(disk, dir)?;
    Ok(file)
}

/// The file operations of the writer. The real one is [`RealDisk`]; tests wrap it to inject
/// faults (a full disk, no file descriptors left, a failed fsync).
pub(crate) trait Disk: Send + Sync {
    /// Creates `path` (which must not exist) and preallocates `size` bytes.
    fn create(&self, path: &Path, size: u64) -> io::Result<File>;
    /// Writes all of `bufs`, in order, at `offset`.
    fn write_at(&self, file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// fsync, metadata included.
    fn sync_all(&self, file: &File) -> io::Result<()>;
    fn open_dir(&self, dir: &Path) -> io::Result<File>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The file system, as it is.
pub(crate) struct RealDisk;

/// Preallocates `size` bytes of `file` (which is empty): the blocks are reserved now, so
/// writes into them cannot hit a full disk and change no file size. Falls back to writing
/// zeros on a file system without `fallocate`.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Disk for RealDisk {
    fn create(&self, path: &Path, size: u64) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        preallocate(&file, size)?;
        Ok(file)
    }

    fn write_at(&self, file: &File, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        // One pwritev per batch (in runs of at most 1024 buffers), no copying.
        const MAX_IOV: usize = 1024;
        let mut slices: Vec<IoSlice<'_>> =
            bufs.iter().filter(|b| !b.is_empty()).map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = rest.len().min(MAX_IOV);
            let written = rustix::io::pwritev(file, &rest[..n], offset)?;
            if written == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
            }
            offset += written as u64;
            IoSlice::advance_slices(&mut rest, written);
        }
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn open_dir(&self, dir: &Path) -> io::Result<File> {
        File::open(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_name(7), "wal-00000000000000000007.log");
        assert_eq!(parse_seq(&segment_name(u64::MAX), SUFFIX), Some(u64::MAX));
        assert_eq!(parse_seq("wal-7.log", SUFFIX), None);
        assert_eq!(parse_seq("wal-0000000000000000000x.log", SUFFIX), None);
        let dir = TempDir::new().unwrap();
        for name in [segment_name(3), segment_name(2), "wal-00000000000000000004.log.tmp".into(), "x".into()]
        {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        fs::write(dir.path().join(LOCK_FILE), b"").unwrap();
        let l = list(dir.path()).unwrap();
        assert_eq!(l.segments, vec![2, 3]);
        assert_eq!(l.tmps, vec![tmp_path(dir.path(), 4)]);
        assert_eq!(l.others, vec![dir.path().join("x")]);
    }

    #[test]
    fn create_preallocates_and_writes_vectored() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("f");
        let file = RealDisk.create(&path, 1 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        assert!(RealDisk.create(&path, 10).is_err(), "create_new");
        let many: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; 3]).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| &v[..]).collect();
        RealDisk.write_at(&file, &refs, 100).unwrap();
        let back = fs::read(&path).unwrap();
        assert_eq!(back.len(), 1 << 20);
        assert_eq!(&back[100..100 + 9000], &many.concat()[..]);
        assert!(back[..100].iter().chain(&back[9100..]).all(|&b| b == 0));
    }

    #[test]
    fn second_lock_fails() {
        let dir = TempDir::new().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        assert_eq!(lock_dir(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
