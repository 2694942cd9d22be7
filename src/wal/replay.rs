//! Recovery: reads the segments back, decides what is a torn final write (cut, with a
//! warning) and what is damage (refuse, naming file and offset), and hands the writer the
//! segment to append to.
//!
//! Owns the open-time rules listed in the module docs of [`super`]. Invariants: nothing
//! that may have been acknowledged is ever dropped; the only bytes this changes are a torn
//! final write of the newest segment (zeroed) and the newest segment of an interrupted
//! rotation (removed, it holds a header only), and only after deciding the log is sound
//! up to there; a failed open changes nothing else.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::record::{self, Frame, Header, Kind};
use super::segment::{self, Disk, LOCK_MARKER};
use super::{Loc, Meta, Payload, Recovered};

/// One segment as the writer tracks it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SegInfo {
    pub seq: u64,
    /// The largest index of any entry record in it (truncated ones included).
    pub max_index: Option<u64>,
}

/// What the writer starts from.
pub(super) struct Opened {
    /// Every segment, oldest first; the last is the one appended to.
    pub segments: VecDeque<SegInfo>,
    pub file: File,
    pub size: u64,
    /// Where the next record goes.
    pub len: u64,
    pub meta: Meta,
    /// Epoch of the next record.
    pub epoch: u64,
}

fn damaged(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// How the records of a segment end.
#[derive(Debug)]
enum End {
    /// With a seal naming `next`.
    Sealed { next: u64 },
    /// With zeros from `at` to the end of the file.
    Clean { at: usize },
    /// With an invalid record at `at`.
    Bad { at: usize, why: String },
}

/// A segment read into memory, its header checked.
struct Loaded {
    seq: u64,
    path: Arc<Path>,
    file: File,
    buf: Vec<u8>,
    size: u64,
}

impl Loaded {
    fn read(dir: &Path, seq: u64) -> io::Result<Loaded> {
        let path: Arc<Path> = segment::segment_path(dir, seq).into();
        let p = path.display();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| segment::with_path(e, "cannot open WAL segment", &path))?;
        let len = file.metadata().map_err(|e| segment::with_path(e, "cannot stat", &path))?.len();
        if len == 0 {
            return Err(damaged(format!(
                "WAL segment {p} is empty (0 bytes); a segment starts with a header"
            )));
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).map_err(|e| segment::with_path(e, "cannot read", &path))?;
        let begin = match record::parse(&buf, 0) {
            Ok(f) => f,
            Err(bad) => {
                return Err(match record::version_at(&buf, 0) {
                    Some(v) if v != record::VERSION => damaged(format!(
                        "WAL segment {p} has format version {v}, which this build cannot read (it reads \
                         version {})",
                        record::VERSION
                    )),
                    _ => damaged(format!("WAL segment {p} has a bad header at offset 0: {bad}")),
                })
            }
        };
        if begin.header.kind != Kind::Begin || begin.payload.len() != 8 {
            return Err(damaged(format!("WAL segment {p} does not start with a segment header (offset 0)")));
        }
        if begin.header.arg != seq {
            return Err(damaged(format!(
                "WAL segment {p} says it is segment {} (renamed or copied from elsewhere?)",
                begin.header.arg
            )));
        }
        let size = u64::from_le_bytes(begin.payload.try_into().expect("8 bytes"));
        if len < size {
            return Err(damaged(format!(
                "WAL segment {p} is truncated: {len} bytes, but it was preallocated to {size} (data from \
                 offset {len} on is missing)"
            )));
        }
        if len > size {
            return Err(damaged(format!(
                "WAL segment {p} is {len} bytes, longer than the {size} it was preallocated to: bytes were \
                 added at offset {size}"
            )));
        }
        Ok(Loaded { seq, path, file, buf, size })
    }

    fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }
}

/// The valid records of a segment up to where they end.
struct Scan<'a> {
    /// From `Begin` on, `Seal` included.
    frames: Vec<Frame<'a>>,
    end: End,
}

fn scan(seg: &Loaded) -> Scan<'_> {
    let buf = &seg.buf;
    let begin = record::parse(buf, 0).expect("checked by Loaded::read");
    let mut off = begin.end;
    let mut frames = vec![begin];
    let end = loop {
        let prev = frames.last().expect("begin").header;
        match record::parse(buf, off) {
            Ok(f) if f.header.kind == Kind::Begin => {
                break End::Bad { at: off, why: "a second segment header".into() };
            }
            Ok(f) if f.header.epoch < prev.epoch => {
                break End::Bad {
                    at: off,
                    why: format!("a record of batch {} after one of batch {}", f.header.epoch, prev.epoch),
                };
            }
            Ok(f) => {
                frames.push(f);
                if f.header.kind == Kind::Seal {
                    break End::Sealed { next: f.header.arg };
                }
                off = f.end;
            }
            Err(_) if record::zero_from(buf, off) => break End::Clean { at: off },
            Err(bad) => break End::Bad { at: off, why: bad.to_string() },
        }
    };
    Scan { frames, end }
}

impl Scan<'_> {
    /// Only what a rotation writes before anything else: `Begin` and restated meta, all of
    /// the header's epoch, then zeros.
    fn header_only(&self) -> bool {
        let epoch = self.frames[0].header.epoch;
        matches!(self.end, End::Clean { .. })
            && self.frames.iter().all(|f| {
                f.header.epoch == epoch
                    && matches!(f.header.kind, Kind::Begin | Kind::Vote | Kind::Purge | Kind::Committed)
            })
    }

    fn last(&self) -> Header {
        self.frames.last().expect("begin").header
    }
}

/// Decides whether the invalid record at `at` in the newest segment is a torn final write.
/// Returns where the non-zero bytes from `at` on end (what to zero), or the damage.
fn torn_tail(seg: &Loaded, prev: Header, at: usize, why: &str) -> io::Result<usize> {
    let buf = &seg.buf;
    let p = seg.display();
    // The batch X was written in: the previous record's, or the next one if an fsync
    // followed the previous record.
    let epoch = if prev.synced() { prev.epoch + 1 } else { prev.epoch };
    if !record::looks_torn(buf, at) {
        return Err(damaged(format!(
            "WAL segment {p} is damaged at offset {at}: {why}, in a record that was written completely (a \
             torn write leaves part of a record unwritten); it may have been acknowledged, so it is not cut"
        )));
    }
    if let Some(h) = record::valid_header(buf, at).filter(|h| h.epoch != epoch) {
        return Err(damaged(format!(
            "WAL segment {p} is damaged at offset {at}: {why}, in a record of batch {} where batch {epoch} \
             was expected",
            h.epoch
        )));
    }
    if let Some(later) = record::scan_valid(buf, at + 1).find(|f| f.header.epoch != epoch) {
        return Err(damaged(format!(
            "WAL segment {p} is damaged at offset {at}: {why}, yet a valid record of batch {} follows at \
             offset {} (a torn final write could only hold records of batch {epoch}); records after a bad \
             one may have been acknowledged, so nothing is cut",
            later.header.epoch, later.offset
        )));
    }
    Ok(record::nonzero_end(buf).max(at))
}

/// Zeroes `[from, to)` of the segment and fsyncs it.
fn zero_range(seg: &Loaded, from: usize, to: usize) -> io::Result<()> {
    let zeros = vec![0u8; (to - from).min(1 << 20)];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len());
        seg.file.write_all_at(&zeros[..n], at as u64)?;
        at += n;
    }
    seg.file.sync_data()
}

/// Applies records to the replayed state.
#[derive(Default)]
struct State {
    rec: Recovered,
}

impl State {
    fn apply(&mut self, f: &Frame<'_>, file: &Arc<Path>) -> Option<u64> {
        let payload = || Payload {
            bytes: f.payload.to_vec(),
            at: Loc { file: Arc::clone(file), offset: f.offset as u64 },
        };
        let entries = &mut self.rec.entries;
        match f.header.kind {
            Kind::Entry => {
                let index = f.header.arg;
                drop(entries.split_off(&index));
                entries.insert(index, payload());
                return Some(index);
            }
            Kind::Truncate => drop(entries.split_off(&f.header.arg)),
            Kind::Purge => {
                let upto = f.header.arg;
                *entries = match upto.checked_add(1) {
                    Some(next) => entries.split_off(&next),
                    None => BTreeMap::new(),
                };
                if self.rec.purged.as_ref().is_none_or(|(p, _)| upto > *p) {
                    self.rec.purged = Some((upto, payload()));
                }
            }
            Kind::Vote => self.rec.vote = Some(payload()),
            Kind::Committed => self.rec.committed = Some(payload()),
            Kind::Begin | Kind::Seal => {}
        }
        None
    }

    /// Applies a segment's records; returns its bookkeeping.
    fn apply_segment(&mut self, seg: &Loaded, frames: &[Frame<'_>]) -> SegInfo {
        let mut max_index = None;
        for f in frames {
            max_index = max_index.max(self.apply(f, &seg.path));
        }
        SegInfo { seq: seg.seq, max_index }
    }

    fn meta(&self) -> Meta {
        Meta {
            vote: self.rec.vote.as_ref().map(|p| p.bytes.clone()),
            purged: self.rec.purged.as_ref().map(|(i, p)| (*i, p.bytes.clone())),
            committed: self.rec.committed.as_ref().map(|p| p.bytes.clone()),
        }
    }

    /// Entries start right after the purge point (at 0 without one) and have no holes.
    fn check(&self, dir: &Path) -> io::Result<()> {
        let d = dir.display();
        let entries = &self.rec.entries;
        let Some((&first, at)) = entries.first_key_value() else { return Ok(()) };
        match &self.rec.purged {
            Some((p, purge)) if Some(first) != p.checked_add(1) => {
                return Err(damaged(format!(
                    "WAL in {d}: the log was purged up to index {p} ({}), but its first entry is {first} \
                     ({}): entries {}..{first} are missing (a deleted segment?)",
                    purge.at,
                    at.at,
                    p.saturating_add(1)
                )));
            }
            None if first != 0 => {
                return Err(damaged(format!(
                    "WAL in {d}: nothing was purged, so the log starts at index 0, but its first entry is \
                     {first} ({}): entries 0..{first} are missing (a deleted segment?)",
                    at.at
                )));
            }
            _ => {}
        }
        let mut expect = first;
        for (&index, p) in entries {
            if index != expect {
                return Err(damaged(format!(
                    "WAL in {d}: entries {expect}..{index} are missing: entry {index} ({}) follows entry {}",
                    p.at,
                    expect - 1
                )));
            }
            expect = index + 1;
        }
        Ok(())
    }
}

/// Creates segment `seq` with a header restating `meta`, preallocated to `size`.
fn create(
    dir: &Path,
    disk: &dyn Disk,
    seq: u64,
    size: u64,
    meta: &Meta,
    epoch: u64,
) -> io::Result<(File, u64)> {
    let header = segment::header_bytes(seq, size, epoch, &meta.records());
    let path = segment::segment_path(dir, seq);
    let file = segment::create_segment(disk, dir, seq, size, &header)
        .map_err(|e| segment::with_path(e.into_inner(), "cannot create WAL segment", &path))?;
    Ok((file, header.len() as u64))
}

/// Replays `dir` (locked by `lock`) and returns where the writer continues.
pub(super) fn recover(
    dir: &Path,
    lock: &File,
    disk: &dyn Disk,
    segment_bytes: u64,
) -> io::Result<(Opened, Recovered)> {
    let d = dir.display();
    let listing = segment::list(dir)?;
    for tmp in &listing.tmps {
        disk.remove(tmp).map_err(|e| segment::with_path(e, "cannot remove", tmp))?;
        tracing::info!(file = %tmp.display(), "WAL: removed a segment whose creation was interrupted");
    }
    let seqs = listing.segments;
    if seqs.is_empty() {
        if has_marker(lock)? {
            return Err(damaged(format!(
                "WAL in {d}: its LOCK file says segments were created here, but none is left: the log is \
                 lost; refusing to start a fresh one over it (remove the directory to start over)"
            )));
        }
        if let Some(other) = listing.others.first() {
            return Err(damaged(format!(
                "WAL in {d}: no segment, but other files such as {}: refusing to start a fresh log next to \
                 them",
                other.display()
            )));
        }
        let meta = Meta::default();
        let (file, len) = create(dir, disk, 1, segment_bytes, &meta, 0)?;
        write_marker(lock, dir)?;
        let opened = Opened {
            segments: VecDeque::from([SegInfo { seq: 1, max_index: None }]),
            file,
            size: segment_bytes,
            len,
            meta,
            epoch: 1,
        };
        return Ok((opened, Recovered::default()));
    }
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(damaged(format!(
                "WAL in {d}: segment {} is missing ({} is followed by {})",
                segment::segment_name(w[0] + 1),
                segment::segment_name(w[0]),
                segment::segment_name(w[1])
            )));
        }
    }

    let mut state = State::default();
    let mut segments = VecDeque::with_capacity(seqs.len());
    let mut current = None;
    let n = seqs.len();
    for (i, &seq) in seqs.iter().enumerate() {
        let seg = Loaded::read(dir, seq)?;
        let sc = scan(&seg);
        let newest = i + 1 == n;
        let p = seg.display();
        if !newest {
            match &sc.end {
                &End::Sealed { next } if next == seq + 1 => {
                    segments.push_back(state.apply_segment(&seg, &sc.frames));
                    continue;
                }
                End::Sealed { next } => {
                    return Err(damaged(format!(
                        "WAL segment {p} is sealed for successor {next}, but {} follows it",
                        segment::segment_name(seq + 1)
                    )));
                }
                _ if i + 2 == n => {
                    // Unsealed, with one newer segment: an interrupted rotation, if that one
                    // holds nothing but its header (nothing is written there before this one
                    // is sealed).
                    let next = Loaded::read(dir, seq + 1)?;
                    if !scan(&next).header_only() {
                        let how = match &sc.end {
                            End::Clean { at } => format!("its records end at offset {at}"),
                            End::Bad { at, why } => format!("it is damaged at offset {at}: {why}"),
                            End::Sealed { .. } => unreachable!(),
                        };
                        return Err(damaged(format!(
                            "WAL segment {p} is not sealed ({how}), yet the newer segment {} holds records",
                            next.display()
                        )));
                    }
                    let (info, len, last) = finish_newest(&seg, &sc, &mut state)?;
                    drop(sc);
                    disk.remove(&next.path)
                        .map_err(|e| segment::with_path(e, "cannot remove", &next.path))?;
                    segment::sync_dir(disk, dir)
                        .map_err(|e| segment::with_path(e.into_inner(), "cannot sync", dir))?;
                    tracing::warn!(
                        file = %next.display(),
                        "WAL: removed the newest segment, left by an interrupted rotation (it held only a header)"
                    );
                    segments.push_back(info);
                    current = Some((seg, len, last));
                    break;
                }
                End::Clean { at } => {
                    return Err(damaged(format!(
                        "WAL segment {p} is not sealed (its records end at offset {at}), yet a newer segment \
                         follows"
                    )));
                }
                End::Bad { at, why } => {
                    return Err(damaged(format!(
                        "WAL segment {p} is damaged at offset {at}: {why} (only the newest segment may end in a \
                         torn write)"
                    )));
                }
            }
        }
        if let End::Sealed { next } = sc.end {
            return Err(damaged(format!(
                "WAL segment {p} is sealed, so segment {} should follow it, but it is missing (deleted?)",
                segment::segment_path(dir, next).display()
            )));
        }
        let (info, len, last) = finish_newest(&seg, &sc, &mut state)?;
        drop(sc);
        segments.push_back(info);
        current = Some((seg, len, last));
    }
    state.check(dir)?;

    let (seg, len, last) = current.expect("the newest segment");
    // What survived a crash may still be only in the page cache: make it durable before
    // anything is appended behind it.
    seg.file.sync_data().map_err(|e| segment::with_path(e, "cannot fsync", &seg.path))?;
    if !has_marker(lock)? {
        write_marker(lock, dir)?;
    }
    let opened = Opened {
        segments,
        meta: state.meta(),
        epoch: if last.synced() { last.epoch + 1 } else { last.epoch },
        size: seg.size,
        len,
        file: seg.file,
    };
    Ok((opened, state.rec))
}

fn has_marker(lock: &File) -> io::Result<bool> {
    Ok(lock.metadata()?.len() > 0)
}

fn write_marker(lock: &File, dir: &Path) -> io::Result<()> {
    lock.write_all_at(LOCK_MARKER, 0)
        .and_then(|()| lock.sync_all())
        .map_err(|e| segment::with_path(e, "cannot write", &dir.join(segment::LOCK_FILE)))
}

/// Applies the newest segment's records, cutting a torn final write; returns its
/// bookkeeping, where appending continues and the header of the last record before that.
fn finish_newest(seg: &Loaded, sc: &Scan<'_>, state: &mut State) -> io::Result<(SegInfo, u64, Header)> {
    let len = match &sc.end {
        End::Clean { at } => *at,
        End::Bad { at, why } => {
            let to = torn_tail(seg, sc.last(), *at, why)?;
            zero_range(seg, *at, to)
                .map_err(|e| segment::with_path(e, "cannot cut the torn tail of", &seg.path))?;
            tracing::warn!(
                file = %seg.display(),
                offset = at,
                dropped_bytes = to - at,
                "WAL: cut off a torn final write (it was never acknowledged)"
            );
            *at
        }
        End::Sealed { .. } => unreachable!("checked by the caller"),
    };
    Ok((state.apply_segment(seg, &sc.frames), len as u64, sc.last()))
}

/// Paths of the segments in `dir`, oldest first (for tests).
#[cfg(test)]
pub(crate) fn segment_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    segment::list(dir).unwrap().segments.into_iter().map(|s| segment::segment_path(dir, s)).collect()
}

/// The largest entry index recorded in the segment at `path` (for tests).
#[cfg(test)]
pub(crate) fn max_entry_index(path: &Path) -> Option<u64> {
    let buf = std::fs::read(path).unwrap();
    let mut off = 0;
    let mut max = None;
    while let Ok(f) = record::parse(&buf, off) {
        if f.header.kind == Kind::Entry {
            max = max.max(Some(f.header.arg));
        }
        off = f.end;
    }
    max
}
