//! The writer thread: group commit, rotation, deletion of purged segments, and the
//! transient-or-fatal policy for I/O errors.
//!
//! Owns the segment files once the WAL is open. Invariants:
//! - nothing is acknowledged before it is fsynced (`Committed`-only batches excepted: they
//!   are advisory), and acknowledgements go out in submission order;
//! - one positioned vectored write and one `fdatasync` per batch; a batch never spans two
//!   segments (the segment is rotated before a request that does not fit);
//! - records of epoch k+1 are written only after everything of epoch k is fsynced, and the
//!   last record before each fsync is flagged `SYNCED` (what recovery relies on to tell a
//!   torn final write from damage);
//! - a new segment is complete and durable under its final name before the current one
//!   is sealed, and sealed before anything is written to the new one;
//! - segments are deleted oldest first, one directory fsync each, so a crash never leaves
//!   a gap;
//! - ENOSPC/EDQUOT/EMFILE/ENFILE on create, preallocate, write, rename or open are retried
//!   (the batch is rewritten from its start offset); any other error and any failed fsync
//!   fail the WAL for good.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::record::{self, Kind, OVERHEAD, SYNCED};
use super::replay::{Opened, SegInfo};
use super::segment::{self, Disk, Failed};
use super::{Health, Stall};
use super::{HealthCell, Meta, OnFatal, Options, Req};

/// Room every segment keeps for its seal.
const SEAL_LEN: u64 = OVERHEAD as u64;

/// Where the writer is, for the crash-consistency tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// A batch was written (and acknowledged).
    Batch,
    /// A new segment exists under its final name; the previous one is not sealed yet.
    Created,
    /// The previous segment is sealed; the new one is appended to from now on.
    Rotated,
    /// One old segment was deleted.
    Deleted,
}

#[cfg(test)]
pub(crate) type Hook = Arc<std::sync::Mutex<dyn FnMut(Point) + Send>>;

/// An I/O error, classified.
enum Failure {
    /// Disk full or out of fds: retry.
    Transient(Stall, io::Error),
    Fatal(io::Error),
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw_os_error), Some(Errno::NOSPC | Errno::DQUOT))
}

fn classify(e: io::Error) -> Failure {
    let stall = match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOSPC | Errno::DQUOT) => Some(Stall::DiskFull),
        Some(Errno::MFILE | Errno::NFILE) => Some(Stall::OutOfFileDescriptors),
        _ => match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(Stall::DiskFull),
            _ => None,
        },
    };
    match stall {
        Some(s) => Failure::Transient(s, e),
        None => Failure::Fatal(e),
    }
}

impl From<Failed> for Failure {
    fn from(f: Failed) -> Failure {
        match f {
            Failed::Op(e) => classify(e),
            Failed::Sync(e) => Failure::Fatal(e),
        }
    }
}

/// Why the writer stopped trying.
enum Stop {
    Fatal(io::Error),
    /// The WAL is being dropped while the writer was stalled.
    Closing(io::Error),
}

/// What [`Writer::new`] needs besides the recovered position.
pub(super) struct Setup {
    pub dir: PathBuf,
    pub lock: File,
    pub disk: Arc<dyn Disk>,
    pub segment_bytes: u64,
    pub health: Arc<HealthCell>,
    pub closing: Arc<AtomicBool>,
    pub opts: Options,
}

pub(super) struct Writer {
    dir: PathBuf,
    /// Holds the directory's lock as long as the writer lives.
    _lock: File,
    disk: Arc<dyn Disk>,
    /// The current (newest) segment.
    file: File,
    seq: u64,
    size: u64,
    /// Where the next record goes in `file`.
    len: u64,
    /// Every segment on disk, oldest first.
    segments: VecDeque<SegInfo>,
    /// The meta state as written so far.
    meta: Meta,
    /// Epoch of the next record.
    epoch: u64,
    /// Records were written since the last fsync (advisory ones only).
    unsynced: bool,
    segment_bytes: u64,
    retry_min: Duration,
    retry_max: Duration,
    health: Arc<HealthCell>,
    closing: Arc<AtomicBool>,
    on_fatal: Option<OnFatal>,
    on_fsync: Option<super::OnFsync>,
    /// `(kind, message)` of the error that failed the WAL.
    failed: Option<(io::ErrorKind, String)>,
    #[cfg(test)]
    hook: Option<Hook>,
}

impl Writer {
    pub(super) fn new(opened: Opened, setup: Setup) -> Writer {
        let seq = opened.segments.back().expect("a current segment").seq;
        Writer {
            dir: setup.dir,
            _lock: setup.lock,
            disk: setup.disk,
            file: opened.file,
            seq,
            size: opened.size,
            len: opened.len,
            segments: opened.segments,
            meta: opened.meta,
            epoch: opened.epoch,
            unsynced: false,
            segment_bytes: setup.segment_bytes,
            retry_min: setup.opts.retry_min,
            retry_max: setup.opts.retry_max.max(setup.opts.retry_min),
            health: setup.health,
            closing: setup.closing,
            on_fatal: setup.opts.on_fatal,
            on_fsync: setup.opts.on_fsync,
            failed: None,
            #[cfg(test)]
            hook: setup.opts.hook,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Req>) {
        // Delete what an earlier run left deletable (a crash between purge and deletion).
        if let Err(stop) = self.delete_purged() {
            drop(self.stop(stop));
        }
        let mut carry: Option<Req> = None;
        // Ends once every sender is dropped and the queue is empty.
        loop {
            let first = match carry.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut rotated = false;
            if self.failed.is_none() && !self.fits(first.records.len_bytes()) {
                match self.rotate(first.records.len_bytes()) {
                    Ok(()) => rotated = true,
                    Err(stop) => drop(self.stop(stop)),
                }
            }
            let mut batch = vec![first];
            if self.failed.is_none() {
                let mut bytes = batch[0].records.len_bytes();
                while let Ok(r) = rx.try_recv() {
                    let n = r.records.len_bytes();
                    if !self.fits(bytes + n) {
                        carry = Some(r);
                        break;
                    }
                    bytes += n;
                    batch.push(r);
                }
            } else {
                batch.extend(rx.try_iter());
            }
            let purged = batch.iter().any(|r| r.records.frames.iter().any(|f| f.kind == Kind::Purge));
            self.commit(batch);
            self.point(Point::Batch);
            if self.failed.is_none() && (purged || rotated) {
                if let Err(stop) = self.delete_purged() {
                    drop(self.stop(stop));
                }
            }
        }
        // Shutting down: make trailing advisory records durable too.
        if self.unsynced && self.failed.is_none() {
            if let Err(e) = self.disk.sync_data(&self.file) {
                tracing::error!(dir = %self.dir.display(), error = %e, "WAL: final fsync failed");
            }
        }
    }

    /// Whether `bytes` more fit in the current segment, leaving room for its seal.
    fn fits(&self, bytes: u64) -> bool {
        self.len + bytes + SEAL_LEN <= self.size
    }

    /// Calls the test hook, if any.
    fn point(&mut self, point: Point) {
        #[cfg(test)]
        if let Some(hook) = &self.hook {
            (hook.lock().unwrap())(point);
        }
        #[cfg(not(test))]
        let _ = point;
    }

    /// Writes the batch (retrying transient errors), fsyncs once, then acknowledges every
    /// request in it, in order.
    fn commit(&mut self, mut batch: Vec<Req>) {
        let res = match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => self.write_batch(&mut batch).map_err(|stop| self.stop(stop)),
        };
        match res {
            Ok(()) => batch.into_iter().for_each(|r| r.ack.complete(Ok(()))),
            Err(e) => {
                for r in batch {
                    r.ack.complete(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &mut [Req]) -> Result<(), Stop> {
        let sync = batch.iter().any(|r| r.records.needs_sync());
        let last = batch.iter().rposition(|r| !r.records.is_empty());
        let epoch = self.epoch;
        for (i, r) in batch.iter_mut().enumerate() {
            let n = r.records.frames.len();
            for (j, f) in r.records.frames.iter().enumerate() {
                let flags = if sync && Some(i) == last && j + 1 == n { SYNCED } else { 0 };
                record::stamp(&mut r.records.buf[f.at..], epoch, flags);
            }
        }
        let bufs: Vec<&[u8]> = batch.iter().map(|r| &r.records.buf[..]).filter(|b| !b.is_empty()).collect();
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if total > 0 {
            let at = self.len;
            let seq = self.seq;
            self.retry("writing to", seq, |w| w.disk.write_at(&w.file, &bufs, at).map_err(classify))?;
        }
        self.len += total;
        let current = self.segments.back_mut().expect("a current segment");
        for r in batch.iter() {
            for f in &r.records.frames {
                match f.kind {
                    Kind::Entry => current.max_index = current.max_index.max(Some(f.arg)),
                    Kind::Vote => self.meta.vote = Some(r.records.payload(f).to_vec()),
                    Kind::Committed => self.meta.committed = Some(r.records.payload(f).to_vec()),
                    Kind::Purge => self.meta.purge(f.arg, r.records.payload(f)),
                    Kind::Truncate | Kind::Begin | Kind::Seal => {}
                }
            }
        }
        if sync {
            self.sync()?;
            self.epoch += 1;
            self.unsynced = false;
        } else if total > 0 {
            self.unsynced = true;
        }
        Ok(())
    }

    /// fsyncs the current segment, timed for `on_fsync`.
    fn sync(&self) -> Result<(), Stop> {
        let t0 = std::time::Instant::now();
        self.disk.sync_data(&self.file).map_err(|e| self.fsync_failed(e))?;
        if let Some(cb) = &self.on_fsync {
            cb(t0.elapsed());
        }
        Ok(())
    }

    fn fsync_failed(&self, e: io::Error) -> Stop {
        let path = segment::segment_path(&self.dir, self.seq);
        Stop::Fatal(segment::with_path(e, "fsync failed on", &path))
    }

    /// Starts the next segment, sized for at least `need` more bytes, and makes it the
    /// current one.
    fn rotate(&mut self, need: u64) -> Result<(), Stop> {
        let seq = self.seq + 1;
        let header_len = segment::header_bytes(seq, 0, 0, &self.meta.records()).len() as u64;
        let least = (header_len + need + SEAL_LEN).div_ceil(4096) * 4096;
        let full = self.segment_bytes.max(least);
        // With the disk nearly full, a smaller segment (down to what the waiting records
        // need) lets writes go on as soon as some space is free; its size is in its
        // header, so truncation is still detected.
        let created = self.retry("creating", seq, |w| {
            let mut size = full;
            loop {
                let header = segment::header_bytes(seq, size, w.epoch, &w.meta.records());
                match segment::create_segment(&*w.disk, &w.dir, seq, size, &header) {
                    Ok(file) => return Ok((file, size, header)),
                    Err(segment::Failed::Op(e)) if size > least && is_disk_full(&e) => {
                        size = (size / 2 / 4096 * 4096).max(least);
                    }
                    Err(e) => return Err(Failure::from(e)),
                }
            }
        });
        let (file, size, header) = match created {
            Ok(created) => created,
            Err(stop) => {
                let _ = self.disk.remove(&segment::tmp_path(&self.dir, seq));
                return Err(stop);
            }
        };
        self.epoch += 1;
        self.point(Point::Created);

        let mut seal = Vec::new();
        record::encode(&mut seal, Kind::Seal, seq, self.epoch, SYNCED, &[]);
        let at = self.len;
        let current = self.seq;
        self.retry("sealing", current, |w| w.disk.write_at(&w.file, &[&seal], at).map_err(classify))?;
        self.sync()?;
        self.epoch += 1;
        self.unsynced = false;

        self.file = file;
        self.seq = seq;
        self.size = size;
        self.len = header.len() as u64;
        self.segments.push_back(SegInfo { seq, max_index: None });
        tracing::debug!(seq, size, "WAL: started a new segment");
        self.point(Point::Rotated);
        Ok(())
    }

    /// Deletes the oldest segments while they are not the current one and hold no entry
    /// above the purge point, fsyncing the directory after each. A failed removal is only
    /// logged (retried after the next purge); a failed fsync is fatal.
    fn delete_purged(&mut self) -> Result<(), Stop> {
        let purged = self.meta.purged.as_ref().map(|(p, _)| *p);
        while self.segments.len() > 1 {
            let oldest = self.segments[0];
            if oldest.max_index.is_some_and(|max| purged.is_none_or(|p| max > p)) {
                break;
            }
            let path = segment::segment_path(&self.dir, oldest.seq);
            match self.disk.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "WAL: could not delete a purged segment");
                    break;
                }
            }
            self.segments.pop_front();
            match segment::sync_dir(&*self.disk, &self.dir) {
                Ok(()) => {}
                Err(Failed::Op(e)) => {
                    // The next deletion's directory fsync covers this one.
                    tracing::warn!(error = %e, dir = %self.dir.display(), "WAL: could not open the directory to fsync it");
                    break;
                }
                Err(Failed::Sync(e)) => {
                    return Err(Stop::Fatal(segment::with_path(e, "fsync failed on", &self.dir)))
                }
            }
            self.point(Point::Deleted);
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, retrying transient failures with a growing backoff while
    /// health says why; gives up on a fatal failure, or when the WAL is closing.
    fn retry<T>(
        &mut self,
        what: &str,
        seq: u64,
        mut op: impl FnMut(&mut Writer) -> Result<T, Failure>,
    ) -> Result<T, Stop> {
        let mut backoff = self.retry_min;
        let mut stalled: Option<(Stall, Instant)> = None;
        loop {
            match op(self) {
                Ok(v) => {
                    if let Some((_, since)) = stalled {
                        self.health.set(Health::Ok);
                        tracing::info!(
                            file = %segment::segment_path(&self.dir, seq).display(),
                            stalled_ms = since.elapsed().as_millis() as u64,
                            "WAL: {what} the segment succeeded again; writes resume"
                        );
                    }
                    return Ok(v);
                }
                Err(Failure::Fatal(e)) => {
                    let path = segment::segment_path(&self.dir, seq);
                    return Err(Stop::Fatal(segment::with_path(e, what, &path)));
                }
                Err(Failure::Transient(reason, e)) => {
                    if self.closing.load(Ordering::Acquire) {
                        return Err(Stop::Closing(e));
                    }
                    if stalled.is_none_or(|(r, _)| r != reason) {
                        let since = stalled.map_or_else(Instant::now, |(_, s)| s);
                        stalled = Some((reason, since));
                        let path = segment::segment_path(&self.dir, seq);
                        tracing::warn!(
                            file = %path.display(),
                            error = %e,
                            "WAL: {what} the segment stalled ({reason:?}); retrying until it succeeds, nothing is \
                             acknowledged meanwhile"
                        );
                        let detail = format!("{what} {}: {e}", path.display());
                        self.health.set(Health::Stalled { reason, detail, since });
                    }
                    std::thread::park_timeout(backoff);
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
    }

    /// Stops writing: records why and returns the error for the requests at hand.
    fn stop(&mut self, stop: Stop) -> io::Error {
        let e = match stop {
            Stop::Fatal(e) => {
                let msg = e.to_string();
                tracing::error!(
                    dir = %self.dir.display(),
                    error = %msg,
                    "WAL failed; it refuses all further writes (restart to recover from the files)"
                );
                self.health.set(Health::Failed(msg.clone()));
                if let Some(cb) = &self.on_fatal {
                    cb(&msg);
                }
                e
            }
            Stop::Closing(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "WAL closed while stalled; failing what it held");
                io::Error::new(e.kind(), format!("the WAL was closed while stalled: {e}"))
            }
        };
        self.failed = Some((e.kind(), e.to_string()));
        e
    }
}
