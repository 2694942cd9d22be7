//! Writer tests: group commit, and the transient-or-fatal policy, with faults injected
//! through the [`Disk`] seam.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::replay_tests::{entries, indexes, one, open, opts, put};
use super::segment::{Disk, RealDisk};
use super::*;

/// Faults to inject, switched on and off by the test.
#[derive(Default)]
struct Faults {
    /// Writes and preallocation fail with ENOSPC (a write first writes half its bytes).
    full: bool,
    /// Creating a file fails with EMFILE.
    no_fds: bool,
    /// fdatasync fails with EIO.
    fail_sync: bool,
    /// Writes fail with EIO.
    eio: bool,
    /// Preallocating more than this fails with ENOSPC (a nearly full disk).
    free: Option<u64>,
}

#[derive(Default)]
struct FaultyDisk {
    faults: Mutex<Faults>,
    /// Held by a test to hold the writer inside a write.
    gate: Mutex<()>,
    failed_writes: AtomicUsize,
    syncs: AtomicUsize,
}

fn os(errno: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.raw_os_error())
}

impl Disk for FaultyDisk {
    fn create(&self, path: &Path, size: u64) -> io::Result<File> {
        let f = self.faults.lock().unwrap();
        if f.no_fds {
            return Err(os(rustix::io::Errno::MFILE));
        }
        if f.full || f.free.is_some_and(|free| size > free) {
            // As a real fallocate can: the file exists, the space is not there.
            File::create(path)?;
            return Err(os(rustix::io::Errno::NOSPC));
        }
        RealDisk.create(path, size)
    }

    fn write_at(&self, file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        drop(self.gate.lock().unwrap());
        let f = self.faults.lock().unwrap();
        if f.eio {
            return Err(os(rustix::io::Errno::IO));
        }
        if f.full {
            // A partial write, then the disk is full.
            let all = bufs.concat();
            RealDisk.write_at(file, &[&all[..all.len() / 2]], offset)?;
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(os(rustix::io::Errno::NOSPC));
        }
        RealDisk.write_at(file, bufs, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.lock().unwrap().fail_sync {
            return Err(os(rustix::io::Errno::IO));
        }
        RealDisk.sync_data(file)
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        if self.faults.lock().unwrap().fail_sync {
            return Err(os(rustix::io::Errno::IO));
        }
        RealDisk.sync_all(file)
    }

    fn open_dir(&self, dir: &Path) -> io::Result<File> {
        RealDisk.open_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealDisk.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealDisk.remove(path)
    }
}

fn faulty(dir: &Path, segment_bytes: u64) -> (Wal, Arc<FaultyDisk>, Arc<Mutex<Vec<String>>>) {
    let disk = Arc::new(FaultyDisk::default());
    let fatal = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&fatal);
    let opts = Options {
        disk: Some(Arc::clone(&disk) as Arc<dyn Disk>),
        retry_min: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        on_fatal: Some(Arc::new(move |why: &str| sink.lock().unwrap().push(why.to_string()))),
        ..opts(segment_bytes)
    };
    let (wal, _) = Wal::open(dir, opts).unwrap();
    (wal, disk, fatal)
}

/// Submits and returns the receiver of the acknowledgement.
fn submit(wal: &Wal, records: Records) -> mpsc::Receiver<io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    wal.submit(records, Ack::new(move |r| tx.send(r).unwrap())).unwrap();
    rx
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stalled(wal: &Wal, want: Stall) -> bool {
    matches!(wal.health(), Health::Stalled { reason, .. } if reason == want)
}

#[test]
fn disk_full_stalls_then_resumes_without_losing_or_tearing_anything() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, fatal) = faulty(dir.path(), 64 << 10);
    put(&wal, entries(0..3, 100)).unwrap();
    disk.faults.lock().unwrap().full = true;
    let rx = submit(&wal, entries(3..6, 1000));
    let later = submit(&wal, entries(6..7, 10));
    wait_for("a stall", || stalled(&wal, Stall::DiskFull));
    wait_for("retries", || disk.failed_writes.load(Ordering::SeqCst) >= 5);
    // Nothing is acknowledged while the disk is full, and nothing fails.
    assert_eq!(rx.try_recv().unwrap_err(), mpsc::TryRecvError::Empty);
    assert_eq!(later.try_recv().unwrap_err(), mpsc::TryRecvError::Empty);
    let Health::Stalled { detail, .. } = wal.health() else { unreachable!() };
    assert!(detail.contains(&dir.path().display().to_string()), "{detail}");

    disk.faults.lock().unwrap().full = false;
    rx.recv().unwrap().unwrap();
    later.recv().unwrap().unwrap();
    assert_eq!(wal.health(), Health::Ok);
    assert!(fatal.lock().unwrap().is_empty());
    put(&wal, entries(7..8, 10)).unwrap();
    drop(wal);
    // The half-written attempts were overwritten from the batch's start: a clean log.
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (0..8).collect::<Vec<_>>());
}

#[test]
fn no_fds_or_no_space_for_a_new_segment_stalls_then_resumes() {
    for no_fds in [true, false] {
        let dir = TempDir::new().unwrap();
        let (wal, disk, _) = faulty(dir.path(), 4 << 10);
        put(&wal, entries(0..6, 500)).unwrap();
        {
            let mut f = disk.faults.lock().unwrap();
            if no_fds {
                f.no_fds = true;
            } else {
                f.full = true;
            }
        }
        // Does not fit in the current segment: needs a new one.
        let rx = submit(&wal, entries(6..10, 500));
        let want = if no_fds { Stall::OutOfFileDescriptors } else { Stall::DiskFull };
        wait_for("a stall", || stalled(&wal, want));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rx.try_recv().unwrap_err(), mpsc::TryRecvError::Empty);
        *disk.faults.lock().unwrap() = Faults::default();
        rx.recv().unwrap().unwrap();
        assert_eq!(wal.health(), Health::Ok);
        drop(wal);
        let (_wal, rec) = open(dir.path()).unwrap();
        assert_eq!(indexes(&rec), (0..10).collect::<Vec<_>>());
        assert_eq!(super::replay::segment_paths(dir.path()).len(), 2);
    }
}

#[test]
fn a_nearly_full_disk_gets_a_smaller_segment_instead_of_a_stall() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, fatal) = faulty(dir.path(), 64 << 10);
    put(&wal, entries(0..6, 10_000)).unwrap();
    // Room for 20 KiB, not for a whole 64 KiB segment (nor for 32 KiB).
    disk.faults.lock().unwrap().free = Some(20 << 10);
    put(&wal, entries(6..8, 5_000)).unwrap();
    assert_eq!(wal.health(), Health::Ok);
    assert!(fatal.lock().unwrap().is_empty());
    drop(wal);
    let segments = super::replay::segment_paths(dir.path());
    assert_eq!(segments.len(), 2);
    let newest = std::fs::metadata(segments.last().unwrap()).unwrap().len();
    assert!(newest <= 20 << 10, "the new segment is {newest} bytes");
    // Its smaller size is in its header: it reopens cleanly, and a cut is still noticed.
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (0..8).collect::<Vec<_>>());
}

#[test]
fn failed_fsync_is_fatal() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, fatal) = faulty(dir.path(), 64 << 10);
    put(&wal, entries(0..3, 100)).unwrap();
    disk.faults.lock().unwrap().fail_sync = true;
    let err = put(&wal, entries(3..4, 100)).unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    let Health::Failed(why) = wal.health() else { panic!("{:?}", wal.health()) };
    assert!(why.contains("fsync"), "{why}");
    assert_eq!(fatal.lock().unwrap().len(), 1);
    // Even once fsync works again: the page cache state is unknown, nothing more is written.
    disk.faults.lock().unwrap().fail_sync = false;
    assert!(wal.submit(entries(4..5, 1), Ack::none()).is_err());
    drop(wal);
    // What was acknowledged survives.
    let (_wal, rec) = open(dir.path()).unwrap();
    assert!(indexes(&rec).starts_with(&[0, 1, 2]));
}

#[test]
fn other_write_errors_are_fatal() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, fatal) = faulty(dir.path(), 64 << 10);
    disk.faults.lock().unwrap().eio = true;
    let rx = submit(&wal, entries(0..1, 10));
    let queued = submit(&wal, entries(1..2, 10));
    assert!(rx.recv().unwrap().is_err());
    assert!(queued.recv().unwrap().is_err());
    assert!(matches!(wal.health(), Health::Failed(_)));
    assert_eq!(fatal.lock().unwrap().len(), 1);
}

#[test]
fn closing_while_stalled_gives_up() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, fatal) = faulty(dir.path(), 64 << 10);
    disk.faults.lock().unwrap().full = true;
    let rx = submit(&wal, entries(0..1, 10));
    wait_for("a stall", || stalled(&wal, Stall::DiskFull));
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        drop(wal);
        done_tx.send(()).unwrap();
    });
    done.recv_timeout(Duration::from_secs(10)).expect("drop returns");
    assert!(rx.recv().unwrap().is_err());
    assert!(fatal.lock().unwrap().is_empty(), "closing is not a fatal error");
}

#[test]
fn group_commit_is_one_fsync_per_batch() {
    let dir = TempDir::new().unwrap();
    let (wal, disk, _) = faulty(dir.path(), 64 << 10);
    let before = disk.syncs.load(Ordering::SeqCst);
    let held = disk.gate.lock().unwrap();
    // The first request gets the writer stuck in its write; the rest queue up behind it.
    let mut rxs = vec![submit(&wal, entries(0..1, 10))];
    std::thread::sleep(Duration::from_millis(20));
    for i in 1..200 {
        let mut r = Records::new();
        r.push_bytes(Record::Entry { index: i }, b"e").unwrap();
        if i % 10 == 0 {
            r.push_bytes(Record::Vote, b"v").unwrap();
        }
        rxs.push(submit(&wal, r));
    }
    drop(held);
    for rx in rxs {
        rx.recv().unwrap().unwrap();
    }
    assert_eq!(
        disk.syncs.load(Ordering::SeqCst) - before,
        2,
        "one fsync for the first batch, one for the rest"
    );

    // Committed-only batches are written, acknowledged, and not fsynced on their own.
    let before = disk.syncs.load(Ordering::SeqCst);
    put(&wal, one(Record::Committed, b"c")).unwrap();
    assert_eq!(disk.syncs.load(Ordering::SeqCst), before);
    drop(wal);
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (0..200).collect::<Vec<_>>());
    assert_eq!(rec.committed.unwrap().bytes, b"c", "made durable on close");
}

#[test]
fn writer_ends_with_the_last_clone() {
    let dir = TempDir::new().unwrap();
    let (wal, _) = open(dir.path()).unwrap();
    let other = wal.clone();
    drop(wal);
    put(&other, entries(0..1, 10)).unwrap();
    assert_eq!(open(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock, "a clone is alive");
    drop(other);
    // The writer (which holds the lock) is gone once the last clone is.
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![0]);
}

#[test]
fn queued_writes_across_rotations_and_deletions() {
    let dir = TempDir::new().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(16 << 10)).unwrap();
    let mut rxs = Vec::new();
    for i in 0..3000u64 {
        rxs.push(submit(&wal, entries(i..i + 1, 2000)));
        rxs.push(submit(&wal, one(Record::Committed, &i.to_le_bytes())));
        if i % 97 == 0 {
            rxs.push(submit(&wal, one(Record::Vote, &(i / 97).to_le_bytes())));
        }
        if i % 50 == 49 {
            rxs.push(submit(&wal, one(Record::Purge { upto: i - 20 }, &(i - 20).to_le_bytes())));
        }
        if i % 333 == 332 {
            rxs.push(submit(&wal, one(Record::Truncate { since: i - 1 }, b"")));
            rxs.push(submit(&wal, entries(i - 1..i + 1, 10)));
        }
    }
    for rx in rxs {
        rx.recv().unwrap().unwrap();
    }
    let n = super::replay::segment_paths(dir.path()).len();
    assert!(n <= 16, "purged segments not deleted: {n}");
    drop(wal);
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (2980..3000).collect::<Vec<_>>());
    assert_eq!(rec.purged.unwrap().0, 2979);
    assert_eq!(rec.vote.unwrap().bytes, 30u64.to_le_bytes());
    assert_eq!(rec.committed.unwrap().bytes, 2999u64.to_le_bytes());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = TempDir::new().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(4 << 10)).unwrap();
    put(&wal, entries(0..1, 100)).unwrap();
    put(&wal, entries(1..2, 3 << 20)).unwrap();
    put(&wal, entries(2..3, 100)).unwrap();
    drop(wal);
    let segs = super::replay::segment_paths(dir.path());
    assert!(segs.len() >= 2, "{segs:?}");
    assert!(std::fs::metadata(&segs[1]).unwrap().len() > 3 << 20);
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(rec.entries[&1].bytes.len(), 3 << 20);
    assert_eq!(indexes(&rec), vec![0, 1, 2]);
}
