//! Recovery tests: what a crash can leave is recovered, anything else is refused with the
//! file and offset named.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tempfile::TempDir;

use super::record::{self, Kind, OVERHEAD};
use super::replay::segment_paths;
use super::segment::{self, LOCK_FILE};
use super::*;

const SEG: u64 = 4 << 10;

pub(super) fn opts(segment_bytes: u64) -> Options {
    Options { segment_bytes, ..Options::default() }
}

pub(super) fn open(dir: &Path) -> io::Result<(Wal, Recovered)> {
    Wal::open(dir, opts(SEG))
}

/// Submits and waits for the acknowledgement.
pub(super) fn put(wal: &Wal, records: Records) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    wal.submit(records, Ack::new(move |r| tx.send(r).unwrap()))?;
    rx.recv().unwrap()
}

pub(super) fn payload(index: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + ((i as u64 + index) % 26) as u8).collect()
}

pub(super) fn entries(range: std::ops::Range<u64>, size: usize) -> Records {
    let mut r = Records::new();
    for i in range {
        r.push_bytes(Record::Entry { index: i }, &payload(i, size)).unwrap();
    }
    r
}

pub(super) fn one(rec: Record, bytes: &[u8]) -> Records {
    let mut r = Records::new();
    r.push_bytes(rec, bytes).unwrap();
    r
}

pub(super) fn indexes(rec: &Recovered) -> Vec<u64> {
    rec.entries.keys().copied().collect()
}

/// Every entry holds the payload it was written with.
fn assert_payloads(rec: &Recovered, size: usize) {
    for (&i, p) in &rec.entries {
        assert_eq!(p.bytes, payload(i, size), "entry {i}");
    }
}

fn last(dir: &Path) -> PathBuf {
    segment_paths(dir).pop().unwrap()
}

/// Offsets of the valid records of a segment, `Begin` first.
fn offsets(path: &Path) -> Vec<usize> {
    let buf = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while let Ok(f) = record::parse(&buf, off) {
        out.push(off);
        off = f.end;
    }
    out
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at as u64).unwrap();
}

fn flip(path: &Path, at: usize) {
    let mut b = [0u8];
    fs::File::open(path).unwrap().read_exact_at(&mut b, at as u64).unwrap();
    patch(path, at, &[b[0] ^ 0x5a]);
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn open_err(dir: &Path) -> String {
    let err = open(dir).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    err.to_string()
}

/// A log of entries 0..5, one batch each, after a vote.
fn five(dir: &Path) {
    let (wal, _) = open(dir).unwrap();
    put(&wal, one(Record::Vote, b"v1")).unwrap();
    for i in 0..5 {
        put(&wal, entries(i..i + 1, 300)).unwrap();
    }
}

#[test]
fn round_trip_and_reopen() {
    let dir = TempDir::new().unwrap();
    let (wal, rec) = open(dir.path()).unwrap();
    assert!(rec.entries.is_empty() && rec.vote.is_none() && rec.purged.is_none() && rec.committed.is_none());
    put(&wal, entries(0..10, 100)).unwrap();
    put(&wal, one(Record::Vote, b"vote-3")).unwrap();
    put(&wal, one(Record::Committed, b"c4")).unwrap();
    put(&wal, one(Record::Truncate { since: 7 }, b"")).unwrap();
    put(&wal, entries(7..8, 50)).unwrap();
    put(&wal, one(Record::Purge { upto: 2 }, b"p2")).unwrap();
    put(&wal, one(Record::Purge { upto: 1 }, b"p1")).unwrap();
    drop(wal);
    let (wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![3, 4, 5, 6, 7]);
    assert_eq!(rec.entries[&6].bytes, payload(6, 100));
    assert_eq!(rec.entries[&7].bytes, payload(7, 50));
    assert_eq!(rec.vote.unwrap().bytes, b"vote-3");
    assert_eq!(rec.committed.unwrap().bytes, b"c4");
    let (upto, p) = rec.purged.unwrap();
    assert_eq!((upto, &p.bytes[..]), (2, &b"p2"[..]));
    assert_eq!(p.at.file.as_ref(), last(dir.path()).as_path());
    // The same directory cannot be opened twice.
    assert_eq!(open(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    drop(wal);
    open(dir.path()).unwrap();
}

#[test]
fn fresh_directory_rules() {
    // Nothing at all, or only an empty LOCK (a crash in the very first open): fresh.
    let nested = TempDir::new().unwrap();
    drop(open(&nested.path().join("a/b")).unwrap());
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join(LOCK_FILE), b"").unwrap();
    let (wal, _) = open(dir.path()).unwrap();
    put(&wal, entries(0..1, 10)).unwrap();
    drop(wal);

    // A LOCK that recorded segments, with none left: the log is lost, not fresh.
    fs::remove_file(last(dir.path())).unwrap();
    assert!(open_err(dir.path()).contains("none is left"));

    // Other files and no segment: refused, not overwritten.
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("raft-00000000000000000001.log"), b"old").unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("raft-00000000000000000001.log"), "{msg}");
}

#[test]
fn leftover_tmp_segment_is_removed() {
    let dir = TempDir::new().unwrap();
    five(dir.path());
    let tmp = segment::tmp_path(dir.path(), 2);
    fs::write(&tmp, b"half a segment").unwrap();
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![0, 1, 2, 3, 4]);
    assert!(!tmp.exists());
}

/// Damages the tail of the newest segment of `five`, reopens: 0..keep must be there, and the
/// log must keep working across another reopen.
fn torn_case(damage: impl FnOnce(&Path, &[usize]), keep: u64) {
    let dir = TempDir::new().unwrap();
    five(dir.path());
    let seg = last(dir.path());
    damage(&seg, &offsets(&seg));
    let (wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (0..keep).collect::<Vec<_>>());
    assert_payloads(&rec, 300);
    assert_eq!(rec.vote.unwrap().bytes, b"v1");
    put(&wal, entries(keep..keep + 3, 50)).unwrap();
    drop(wal);
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), (0..keep + 3).collect::<Vec<_>>());
}

#[test]
fn torn_tail_cut_short_in_payload() {
    // A write cut short: the record's end still reads as the preallocated zeros.
    torn_case(|p, offs| patch(p, offs[6] + 200, &[0; 140]), 4);
}

#[test]
fn torn_tail_cut_short_in_header() {
    torn_case(|p, offs| patch(p, offs[6] + 5, &[0; 335]), 4);
}

#[test]
fn torn_tail_first_sector_lost() {
    // The last record's first sector never made it, its later ones did.
    torn_case(
        |p, offs| {
            let end = (offs[6] / record::SECTOR + 1) * record::SECTOR;
            patch(p, offs[6], &vec![0; end - offs[6]]);
        },
        4,
    );
}

#[test]
fn torn_tail_garbage_after_the_end() {
    // Part of a header written past the last record, the rest still zeros.
    torn_case(|p, offs| patch(p, offs[6] + OVERHEAD + 300, b"\x10\x00\x00\x00garbage garbage garbage"), 5);
}

#[test]
fn zeros_after_the_end_are_the_end() {
    torn_case(|_, _| {}, 5);
}

#[test]
fn torn_batch_with_valid_records_of_the_same_batch_after_it() {
    let dir = TempDir::new().unwrap();
    let (wal, _) = open(dir.path()).unwrap();
    put(&wal, entries(0..2, 100)).unwrap();
    put(&wal, entries(2..6, 100)).unwrap();
    drop(wal);
    let seg = last(dir.path());
    let offs = offsets(&seg);
    // Entry 3's trailer never made it; 4 and 5, of the same batch, did.
    patch(&seg, offs[5] - 4, &[0; 4]);
    let (_wal, rec) = open(dir.path()).unwrap();
    assert_eq!(indexes(&rec), vec![0, 1, 2]);
}

#[test]
fn flipped_byte_with_later_batches_after_it_is_damage() {
    let dir = TempDir::new().unwrap();
    five(dir.path());
    let seg = last(dir.path());
    let offs = offsets(&seg);
    let before = fs::read(&seg).unwrap();
    flip(&seg, offs[3] + 100);
    let msg = open_err(dir.path());
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {}", offs[3])), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    // Nothing was cut.
    let mut after = fs::read(&seg).unwrap();
    after[offs[3] + 100] ^= 0x5a;
    assert_eq!(after, before);
}

#[test]
fn flipped_byte_in_the_last_complete_record_is_damage() {
    for at in [0, 3, 20, 33, 36, 200, 335, 338] {
        let dir = TempDir::new().unwrap();
        five(dir.path());
        let seg = last(dir.path());
        let offs = offsets(&seg);
        flip(&seg, offs[6] + at);
        let msg = open_err(dir.path());
        assert!(
            msg.contains(&format!("offset {}", offs[6])) && msg.contains("written completely"),
            "{at}: {msg}"
        );
    }
}

#[test]
fn undecodable_kind_with_valid_checksums_is_damage() {
    let dir = TempDir::new().unwrap();
    five(dir.path());
    let seg = last(dir.path());
    let offs = offsets(&seg);
    let mut rec = Vec::new();
    record::encode(&mut rec, Kind::Vote, 0, 99, record::SYNCED, b"x");
    rec[5] = 42;
    record::stamp(&mut rec, 99, record::SYNCED);
    let end = offs[6] + OVERHEAD + 300;
    patch(&seg, end, &rec);
    let msg = open_err(dir.path());
    assert!(msg.contains("unknown kind 42") && msg.contains(&format!("offset {end}")), "{msg}");
}

/// A log spread over several segments.
fn several(dir: &Path) -> Vec<PathBuf> {
    let (wal, _) = open(dir).unwrap();
    for i in 0..20 {
        put(&wal, entries(i..i + 1, 500)).unwrap();
    }
    drop(wal);
    let segs = segment_paths(dir);
    assert!(segs.len() >= 3, "{segs:?}");
    segs
}

#[test]
fn damage_in_an_earlier_segment_fails_open() {
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 4] = [
        ("checksum", |p| flip(p, offsets(p)[2] + 50)),
        ("truncated", |p| set_len(p, SEG - 3)),
        ("truncated", |p| set_len(p, offsets(p)[2] as u64 + 10)),
        ("not sealed", |p| {
            let offs = offsets(p);
            patch(p, *offs.last().unwrap(), &[0; OVERHEAD]);
        }),
    ];
    for (what, damage) in damages {
        let dir = TempDir::new().unwrap();
        let segs = several(dir.path());
        let victim = &segs[segs.len() - 2];
        damage(victim);
        let before: Vec<Vec<u8>> = segs.iter().map(|p| fs::read(p).unwrap()).collect();
        let msg = open_err(dir.path());
        assert!(msg.contains(what) && msg.contains(&victim.display().to_string()), "{what}: {msg}");
        // Nothing was cut off or deleted by the failed open.
        assert_eq!(segment_paths(dir.path()), segs);
        assert_eq!(segs.iter().map(|p| fs::read(p).unwrap()).collect::<Vec<_>>(), before);
    }
}

#[test]
fn truncated_or_empty_newest_segment_fails_open() {
    for (len, what) in [(SEG - 1, "truncated"), (100, "truncated"), (0, "empty")] {
        let dir = TempDir::new().unwrap();
        five(dir.path());
        let seg = last(dir.path());
        set_len(&seg, len);
        let msg = open_err(dir.path());
        assert!(msg.contains(what) && msg.contains(&seg.display().to_string()), "{msg}");
    }
    // Longer than preallocated: bytes were added.
    let dir = TempDir::new().unwrap();
    five(dir.path());
    set_len(&last(dir.path()), SEG + 1);
    assert!(open_err(dir.path()).contains("longer than"));
}

#[test]
fn missing_segments_fail_open() {
    // A gap in the middle.
    let dir = TempDir::new().unwrap();
    let segs = several(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains(&segment::segment_name(2)) && msg.contains("missing"), "{msg}");

    // The newest: the one before it is sealed.
    let dir = TempDir::new().unwrap();
    let segs = several(dir.path());
    fs::remove_file(segs.last().unwrap()).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains(&segs.last().unwrap().display().to_string()) && msg.contains("sealed"), "{msg}");

    // The oldest, with nothing purged: the log does not start at 0.
    let dir = TempDir::new().unwrap();
    let segs = several(dir.path());
    fs::remove_file(&segs[0]).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("nothing was purged"), "{msg}");

    // The oldest, behind a purge point: the first entry does not follow it.
    let dir = TempDir::new().unwrap();
    let (wal, _) = open(dir.path()).unwrap();
    put(&wal, entries(0..4, 500)).unwrap();
    put(&wal, one(Record::Purge { upto: 1 }, b"p")).unwrap();
    for i in 4..20 {
        put(&wal, entries(i..i + 1, 500)).unwrap();
    }
    drop(wal);
    let segs = segment_paths(dir.path());
    fs::remove_file(&segs[0]).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("purged up to index 1") && msg.contains("entries 2.."), "{msg}");
}

#[test]
fn holes_between_entries_fail_open() {
    let dir = TempDir::new().unwrap();
    let (wal, _) = open(dir.path()).unwrap();
    put(&wal, entries(0..3, 10)).unwrap();
    put(&wal, entries(5..6, 10)).unwrap();
    drop(wal);
    let msg = open_err(dir.path());
    assert!(msg.contains("entries 3..5 are missing"), "{msg}");
}

#[test]
fn unknown_version_and_foreign_segment_fail_open() {
    let dir = TempDir::new().unwrap();
    five(dir.path());
    let seg = last(dir.path());
    patch(&seg, 4, &[7]);
    let msg = open_err(dir.path());
    assert!(msg.contains("format version 7") && msg.contains(&seg.display().to_string()), "{msg}");

    let dir = TempDir::new().unwrap();
    five(dir.path());
    let seg = last(dir.path());
    fs::rename(&seg, segment::segment_path(dir.path(), 9)).unwrap();
    assert!(open_err(dir.path()).contains("says it is segment 1"));
}

/// Copies of the segment files taken at each step of the writer.
type Images = Arc<Mutex<Vec<(Point, Vec<(PathBuf, Vec<u8>)>)>>>;

fn hooked(dir: &Path, images: &Images) -> Options {
    let (path, sink) = (dir.to_path_buf(), Arc::clone(images));
    let hook: writer::Hook = Arc::new(Mutex::new(move |point| {
        let files = segment_paths(&path).into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect();
        sink.lock().unwrap().push((point, files));
    }));
    Options { hook: Some(hook), ..opts(SEG) }
}

fn restore(files: &[(PathBuf, Vec<u8>)]) -> TempDir {
    let copy = TempDir::new().unwrap();
    for (p, bytes) in files {
        fs::write(copy.path().join(p.file_name().unwrap()), bytes).unwrap();
    }
    copy
}

#[test]
fn interrupted_rotation_is_finished_by_open() {
    let dir = TempDir::new().unwrap();
    let images: Images = Arc::default();
    let (wal, _) = Wal::open(dir.path(), hooked(dir.path(), &images)).unwrap();
    put(&wal, one(Record::Vote, b"v")).unwrap();
    for i in 0..20 {
        put(&wal, entries(i..i + 1, 500)).unwrap();
    }
    drop(wal);
    let images = std::mem::take(&mut *images.lock().unwrap());
    let created: Vec<_> = images.iter().filter(|(p, _)| *p == Point::Created).map(|(_, f)| f).collect();
    assert!(created.len() >= 2);
    for files in created {
        let n = files.len();
        // As the crash left it; and with the seal half written.
        for torn_seal in [false, true] {
            let copy = restore(files);
            let prev = copy.path().join(files[n - 2].0.file_name().unwrap());
            if torn_seal {
                let last_at = *offsets(&prev).last().unwrap();
                let end = record::parse(&fs::read(&prev).unwrap(), last_at).unwrap().end;
                let mut seal = Vec::new();
                record::encode(&mut seal, Kind::Seal, n as u64 + 1, 1000, record::SYNCED, b"");
                patch(&prev, end, &seal[..20]);
            }
            let (wal, rec) = open(copy.path()).unwrap();
            assert_eq!(segment_paths(copy.path()).len(), n - 1, "the header-only segment is removed");
            let count = rec.entries.len() as u64;
            assert_eq!(indexes(&rec), (0..count).collect::<Vec<_>>());
            put(&wal, entries(count..count + 10, 500)).unwrap();
            drop(wal);
            let (_wal, rec) = open(copy.path()).unwrap();
            assert_eq!(indexes(&rec), (0..count + 10).collect::<Vec<_>>());
        }
    }

    // An unsealed segment followed by one that holds records is damage, not a rotation.
    let (_, files) = images.iter().rev().find(|(p, f)| *p == Point::Batch && f.len() >= 3).unwrap();
    let copy = restore(files);
    let n = files.len();
    let prev = copy.path().join(files[n - 2].0.file_name().unwrap());
    let seal_at = *offsets(&prev).last().unwrap();
    patch(&prev, seal_at, &[0; OVERHEAD]);
    let msg = open_err(copy.path());
    assert!(msg.contains("not sealed") && msg.contains("holds records"), "{msg}");
}
