//! Tests of the openraft adapter: behaviour through openraft's traits, reopening, the
//! recovery checks that need openraft's types, every crash point, and openraft's own
//! conformance suite. The WAL's own rules are tested in `src/wal/`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use tempfile::TempDir;

use super::*;
use crate::raft::snapshot_data::SnapshotData;
use crate::raft::types::{Snapshot, SnapshotMeta, StoredMembership};
use crate::store::{Command, Outcome, Proposal};
use crate::wal::{max_entry_index, segment_paths, Point};

fn lid(term: u64, index: u64) -> LogId {
    openraft::LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    openraft::Entry { log_id: lid(term, index), payload: EntryPayload::Blank }
}

fn put(term: u64, index: u64, size: usize) -> Entry {
    openraft::Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(Proposal::new(
            Command::Put {
                lease: None,
                sequential: false,
                key: format!("/k/{index}"),
                value: (0..size).map(|i| (i as u64 ^ index) as u8).collect(),
                cond: Default::default(),
                prev_kv: false,
            },
            0,
        )),
    }
}

fn small(dir: &Path, segment_bytes: u64) -> LogStore {
    LogStore::open_with(dir, wal::Options { segment_bytes, ..wal::Options::default() }).unwrap()
}

type Dump = (LogState<TypeConfig>, Option<Vote>, Option<LogId>, Vec<Entry>);

async fn dump(s: &mut LogStore) -> Dump {
    (
        s.get_log_state().await.unwrap(),
        s.read_vote().await.unwrap(),
        s.read_committed().await.unwrap(),
        s.try_get_log_entries(..).await.unwrap(),
    )
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    segment_paths(dir).pop().expect("a segment")
}

/// Bytes of entries' records in all segments (segments are preallocated: their length says
/// nothing), approximated by the segments' count times their size.
fn log_len(dir: &Path) -> u64 {
    segment_paths(dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

fn reply() -> (Ack, oneshot::Receiver<io::Result<()>>) {
    let (tx, rx) = oneshot::channel();
    (
        Ack::new(move |r| {
            let _ = tx.send(r);
        }),
        rx,
    )
}

async fn wait_all(rxs: Vec<oneshot::Receiver<io::Result<()>>>) {
    for rx in rxs {
        rx.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn round_trip_and_reopen() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, (LogState::default(), None, None, vec![]));
    assert_eq!(s.health(), Health::Ok);

    s.blocking_append((0..10).map(|i| put(1, i, 100))).await.unwrap();
    s.save_vote(&Vote::new(3, 2)).await.unwrap();
    s.save_committed(Some(lid(1, 4))).await.unwrap();
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 4)));
    let got = s.try_get_log_entries(3..6).await.unwrap();
    assert_eq!(got, vec![put(1, 3, 100), put(1, 4, 100), put(1, 5, 100)]);

    s.truncate(lid(1, 7)).await.unwrap();
    s.blocking_append([blank(2, 7)]).await.unwrap();
    s.purge(lid(1, 2)).await.unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(1, 2)));
    assert_eq!(st.last_log_id, Some(lid(2, 7)));
    assert_eq!(indexes(&s.try_get_log_entries(0..100).await.unwrap()), vec![3, 4, 5, 6, 7]);

    let before = dump(&mut s).await;
    let mut reader = s.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(7..=7).await.unwrap(), vec![blank(2, 7)]);
    drop((s, reader));

    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);
    s.save_committed(None).await.unwrap();
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn ranges_return_only_what_exists() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append((5..10).map(|i| blank(1, i))).await.unwrap();
    s.purge(lid(1, 6)).await.unwrap();
    let idx = |v: Vec<Entry>| indexes(&v);
    assert_eq!(idx(s.try_get_log_entries(0..100).await.unwrap()), vec![7, 8, 9]);
    assert_eq!(idx(s.try_get_log_entries(..).await.unwrap()), vec![7, 8, 9]);
    assert_eq!(idx(s.try_get_log_entries(0..7).await.unwrap()), Vec::<u64>::new());
    assert_eq!(idx(s.try_get_log_entries(8..8).await.unwrap()), Vec::<u64>::new());
    assert_eq!(
        idx(s.try_get_log_entries((Bound::Included(9), Bound::Excluded(3))).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(idx(s.try_get_log_entries(8..).await.unwrap()), vec![8, 9]);
    assert_eq!(idx(s.try_get_log_entries(..=7).await.unwrap()), vec![7]);
    assert_eq!(idx(s.try_get_log_entries(10..20).await.unwrap()), Vec::<u64>::new());
    let excluded_start = (Bound::Excluded(7), Bound::Unbounded);
    assert_eq!(idx(s.try_get_log_entries(excluded_start).await.unwrap()), vec![8, 9]);
    let at_max = (Bound::Excluded(u64::MAX), Bound::Unbounded);
    assert_eq!(idx(s.try_get_log_entries(at_max).await.unwrap()), Vec::<u64>::new());
    assert_eq!(idx(s.try_get_log_entries(u64::MAX..=u64::MAX).await.unwrap()), Vec::<u64>::new());
}

#[tokio::test]
async fn reading_across_a_hole_is_an_error_and_so_is_opening_it() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append((0..3).map(|i| blank(1, i))).await.unwrap();
    s.blocking_append([blank(1, 5), blank(1, 6)]).await.unwrap();
    assert_eq!(indexes(&s.try_get_log_entries(0..3).await.unwrap()), vec![0, 1, 2]);
    assert_eq!(indexes(&s.try_get_log_entries(5..).await.unwrap()), vec![5, 6]);
    for range in [(Bound::Included(0), Bound::Unbounded), (Bound::Included(2), Bound::Excluded(6))] {
        let err = s.try_get_log_entries(range).await.unwrap_err();
        assert!(err.to_string().contains("no entry 3"), "{err}");
    }
    drop(s);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("entries 3..5 are missing"), "{err}");
}

#[tokio::test]
async fn committed_beyond_the_log_fails_open() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append((0..5).map(|i| blank(1, i))).await.unwrap();
    s.durably(|ack| s.enqueue_committed(Some(lid(1, 3)), ack)).await.unwrap();
    // What a lost tail would leave: the committed position beyond the last entry.
    s.truncate(lid(1, 2)).await.unwrap();
    drop(s);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("committed"), "{msg}");
}

#[tokio::test]
async fn undecodable_record_with_valid_checksums_is_an_error() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append([blank(1, 0)]).await.unwrap();
    drop(s);
    let (wal, _) = Wal::open(dir.path(), wal::Options::default()).unwrap();
    let mut r = Records::new();
    r.push_bytes(Record::Entry { index: 1 }, b"{\"NoSuchRecord\":1}").unwrap();
    let (ack, rx) = reply();
    wal.submit(r, ack).unwrap();
    rx.await.unwrap().unwrap();
    drop(wal);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains(&last_segment(dir.path()).display().to_string()) && msg.contains("offset"), "{msg}");
}

#[tokio::test]
async fn purge_and_truncate_edge_cases() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append((0..=10).map(|i| blank(1, i))).await.unwrap();

    // Truncating beyond the last entry changes nothing.
    s.truncate(lid(1, 11)).await.unwrap();
    assert_eq!(s.get_log_state().await.unwrap().last_log_id, Some(lid(1, 10)));

    // Purging beyond the last entry: no entries, last log id is the purged one.
    s.purge(lid(2, 20)).await.unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(2, 20)), Some(lid(2, 20))));
    assert!(s.try_get_log_entries(..).await.unwrap().is_empty());

    // A smaller purge does not move last_purged back.
    s.purge(lid(1, 5)).await.unwrap();
    assert_eq!(s.get_log_state().await.unwrap().last_purged_log_id, Some(lid(2, 20)));

    // Appending after the purge point continues the log.
    s.blocking_append([blank(2, 21), blank(2, 22)]).await.unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(2, 20)), Some(lid(2, 22))));
    let before = dump(&mut s).await;
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);

    // Truncate everything on a store without purges.
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.blocking_append((0..=10).map(|i| blank(1, i))).await.unwrap();
    s.truncate(lid(0, 0)).await.unwrap();
    assert_eq!(s.get_log_state().await.unwrap(), LogState::default());
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.get_log_state().await.unwrap(), LogState::default());
}

#[tokio::test]
async fn writer_thread_ends_with_the_last_clone() {
    let dir = TempDir::new().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let reader = s.clone();
    drop(s);
    let err = LogStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "a clone is still alive");
    drop(reader);
    LogStore::open(dir.path()).expect("the writer thread, which holds the lock, is gone");
}

/// Appends 0..5, drops, damages the newest segment with `damage` (given the offset where
/// the last entry's record starts), reopens: 0..keep must be there and the store must keep
/// working across another reopen.
async fn torn_tail_case(damage: impl FnOnce(&Path, u64), keep: u64) {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.save_vote(&Vote::new(1, 1)).await.unwrap();
    for i in 0..5 {
        s.blocking_append([put(1, i, 300)]).await.unwrap();
    }
    drop(s);
    let seg = last_segment(dir.path());
    damage(&seg, last_record_at(&seg));

    let mut s = LogStore::open(dir.path()).unwrap();
    let got = s.try_get_log_entries(..).await.unwrap();
    assert_eq!(got, (0..keep).map(|i| put(1, i, 300)).collect::<Vec<_>>());
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(1, 1)));

    s.blocking_append((keep..keep + 3).map(|i| put(2, i, 50))).await.unwrap();
    let before = dump(&mut s).await;
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);
    assert_eq!(before.3.len() as u64, keep + 3);
}

/// Where the last record of a segment starts (records begin with 0xFF "WAL").
fn last_record_at(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes.windows(4).rposition(|w| w == b"\xFFWAL").unwrap() as u64
}

/// One past the last non-zero byte.
fn data_end(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1
}

fn zero(path: &Path, from: u64, to: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0; (to - from) as usize], from).unwrap();
}

#[tokio::test]
async fn torn_tail_chopped_payload() {
    torn_tail_case(
        |p, _| {
            let end = data_end(p);
            zero(p, end - 3, end);
        },
        4,
    )
    .await;
}

#[tokio::test]
async fn torn_tail_chopped_into_header() {
    // Leave 5 bytes of the last record: a short header.
    torn_tail_case(|p, at| zero(p, at + 5, data_end(p)), 4).await;
}

#[tokio::test]
async fn torn_tail_garbage_appended() {
    torn_tail_case(
        |p, _| {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            f.write_all_at(b"\x10\x00\x00\x00garbage garbage garbage", data_end(p)).unwrap();
        },
        5,
    )
    .await;
}

#[tokio::test]
async fn torn_tail_zeros_appended() {
    // Preallocated segments end in zeros anyway.
    torn_tail_case(|_, _| {}, 5).await;
}

#[tokio::test]
async fn flipped_byte_in_the_last_record_is_an_error_not_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    for i in 0..5 {
        s.blocking_append([put(1, i, 300)]).await.unwrap();
    }
    drop(s);
    let seg = last_segment(dir.path());
    let at = last_record_at(&seg);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at as usize + 100] ^= 0xff;
    fs::write(&seg, bytes).unwrap();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(&format!("offset {at}")), "{err}");
}

#[tokio::test]
async fn large_entries() {
    let dir = TempDir::new().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    let big: Vec<Entry> = (0..3).map(|i| put(1, i, 2 << 20)).collect();
    s.blocking_append(big.clone()).await.unwrap();
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.try_get_log_entries(..).await.unwrap(), big);
}

#[tokio::test]
async fn rotation_and_deletion_of_purged_segments() {
    let dir = TempDir::new().unwrap();
    let mut s = small(dir.path(), 8 << 10);
    s.save_vote(&Vote::new(4, 1)).await.unwrap();
    for i in 0..200 {
        s.blocking_append([put(4, i, 1000)]).await.unwrap();
        s.save_committed(Some(lid(4, i))).await.unwrap();
    }
    let full = log_len(dir.path());
    let many = segment_paths(dir.path()).len();
    assert!(many > 20, "segments not rotated: {many}");
    s.purge(lid(4, 150)).await.unwrap();
    // Any durable write after the purge returns only after the deletion it triggered.
    s.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    let left = segment_paths(dir.path());
    assert!(left.len() < many / 3, "segments not deleted: {many} -> {}", left.len());
    assert!(log_len(dir.path()) < full / 3, "{full} -> {}", log_len(dir.path()));
    // Exactly the fully purged ones went: the oldest left still holds a live entry.
    assert!(max_entry_index(&left[0]).is_some_and(|m| m > 150));
    // The directory stays locked.
    assert_eq!(LogStore::open(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock);

    s.blocking_append([put(4, 200, 1000)]).await.unwrap();
    let before = dump(&mut s).await;
    assert_eq!(indexes(&before.3), (151..=200).collect::<Vec<_>>());
    assert_eq!(before.0.last_purged_log_id, Some(lid(4, 150)));
    assert_eq!(before.1, Some(Vote::new_committed(4, 1)));
    assert_eq!(before.2, Some(lid(4, 199)));
    drop(s);

    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);

    // Purging everything: every segment but the one appended to goes.
    s.purge(lid(4, 300)).await.unwrap();
    s.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    drop(s);
    let mut s = small(dir.path(), 8 << 10);
    assert_eq!(segment_paths(dir.path()).len(), 1);
    let (st, vote, committed, entries) = dump(&mut s).await;
    assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(4, 300)), Some(lid(4, 300))));
    assert_eq!((vote, committed), (before.1, before.2));
    assert!(entries.is_empty());
    s.blocking_append([put(4, 301, 10)]).await.unwrap();
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&dump(&mut s).await.3), vec![301]);
}

/// Many writes queued without waiting, with purges that keep deleting segments while
/// the queue is full: exercises group commit across rotations.
#[tokio::test]
async fn queued_writes_across_rotations() {
    let dir = TempDir::new().unwrap();
    let mut s = small(dir.path(), 16 << 10);
    let mut rxs = Vec::new();
    let mut ack = || {
        let (ack, rx) = reply();
        rxs.push(rx);
        ack
    };
    for i in 0..3000u64 {
        s.enqueue_append([put(1, i, 2000)], ack()).unwrap();
        s.enqueue_committed(i.checked_sub(2).map(|c| lid(1, c)), ack()).unwrap();
        if i % 97 == 0 {
            s.enqueue_vote(Vote::new(1 + i / 97, 1), ack()).unwrap();
        }
        if i % 50 == 49 {
            s.enqueue_purge(lid(1, i - 20), ack()).unwrap();
        }
        if i % 333 == 332 {
            s.enqueue_truncate(lid(1, i - 1), ack()).unwrap();
            s.enqueue_append([put(2, i - 1, 10), put(2, i, 10)], ack()).unwrap();
        }
    }
    wait_all(rxs).await;
    let before = dump(&mut s).await;
    assert_eq!(before.0.last_log_id.map(|l| l.index), Some(2999));
    assert_eq!(before.0.last_purged_log_id, Some(lid(1, 2979)));
    assert_eq!(indexes(&before.3), (2980..3000).collect::<Vec<_>>());
    // Every segment left but the first and the current one is over 16 KiB and was written
    // after entry 2980: a handful, out of hundreds rotated through.
    let n = segment_paths(dir.path()).len();
    assert!(n <= 16, "purged segments not deleted: {n}");
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);
}

#[tokio::test]
async fn damage_in_an_earlier_segment_fails_open() {
    let flip: fn(&Path) = |p| {
        let mut bytes = fs::read(p).unwrap();
        let mid = last_record_at(p) as usize / 2;
        bytes[mid] ^= 0xff;
        fs::write(p, bytes).unwrap();
    };
    let cut: fn(&Path) = |p| {
        let len = fs::metadata(p).unwrap().len();
        OpenOptions::new().write(true).open(p).unwrap().set_len(len - 3).unwrap();
    };
    for damage in [flip, cut] {
        let dir = TempDir::new().unwrap();
        let mut s = small(dir.path(), 4 << 10);
        for i in 0..20 {
            s.blocking_append([put(1, i, 500)]).await.unwrap();
        }
        drop(s);
        let segs = segment_paths(dir.path());
        assert!(segs.len() >= 3, "{segs:?}");
        damage(&segs[segs.len() - 2]);
        let err = LogStore::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains(&segs[segs.len() - 2].display().to_string()), "{err}");
        // Nothing was cut off or deleted by the failed open.
        assert_eq!(segment_paths(dir.path()), segs);
    }
}

#[tokio::test]
async fn truncate_reaches_into_earlier_segments() {
    let dir = TempDir::new().unwrap();
    let mut s = small(dir.path(), 4 << 10);
    for i in 0..30 {
        s.blocking_append([put(1, i, 500)]).await.unwrap();
    }
    assert!(segment_paths(dir.path()).len() >= 4);
    s.truncate(lid(1, 5)).await.unwrap();
    s.blocking_append([blank(2, 5), blank(2, 6)]).await.unwrap();
    s.purge(lid(1, 2)).await.unwrap();
    let before = dump(&mut s).await;
    assert_eq!(indexes(&before.3), vec![3, 4, 5, 6]);
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);

    // The segments with the truncated entries stay until those indexes are purged too.
    s.blocking_append((7..40).map(|i| put(2, i, 500))).await.unwrap();
    s.purge(lid(2, 35)).await.unwrap();
    s.save_vote(&Vote::new(2, 1)).await.unwrap();
    let left = segment_paths(dir.path());
    assert!(max_entry_index(&left[0]).is_some_and(|m| m > 35));
    let before = dump(&mut s).await;
    assert_eq!(indexes(&before.3), (36..40).collect::<Vec<_>>());
    drop(s);
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(dump(&mut s).await, before);
}

/// The segment files as they are: what a crash at this moment would leave.
type Image = Vec<(std::ffi::OsString, Vec<u8>)>;

/// Per batch: the images taken after it, each with where the writer was.
type Images = Arc<Mutex<Vec<Vec<(Point, Image)>>>>;

fn image(dir: &Path) -> Image {
    segment_paths(dir)
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_owned(), fs::read(&p).unwrap()))
        .collect()
}

/// Copies the directory at every step of the writer (after each batch, after each new
/// segment is created, after each seal, after each single deletion), opens every copy and
/// compares it with the state acknowledged at that point.
#[tokio::test]
async fn every_crash_point_replays_to_the_acknowledged_state() {
    let dir = TempDir::new().unwrap();
    let images: Images = Arc::default();
    let (path, sink) = (dir.path().to_path_buf(), Arc::clone(&images));
    let hook: Arc<Mutex<dyn FnMut(Point) + Send>> = Arc::new(Mutex::new(move |point| {
        let mut sink = sink.lock().unwrap();
        if point == Point::Batch {
            sink.push(Vec::new());
        }
        sink.last_mut().expect("a batch comes first").push((point, image(&path)));
    }));
    let opts = wal::Options { segment_bytes: 4 << 10, hook: Some(hook), ..wal::Options::default() };
    let mut s = LogStore::open_with(dir.path(), opts).unwrap();

    // One operation at a time, each awaited: every batch is one operation, and `expected`
    // has the state after each.
    let mut expected = Vec::new();
    s.save_vote(&Vote::new(1, 1)).await.unwrap();
    expected.push(dump(&mut s).await);
    let mut term = 1;
    for i in 0..60u64 {
        s.blocking_append([put(term, i, 400)]).await.unwrap();
        expected.push(dump(&mut s).await);
        if i % 4 == 3 {
            let c = Some(lid(term, i - 1));
            s.durably(|ack| s.enqueue_committed(c, ack)).await.unwrap();
            expected.push(dump(&mut s).await);
        }
        if i % 10 == 9 {
            s.purge(lid(term, i - 3)).await.unwrap();
            expected.push(dump(&mut s).await);
        }
        if i == 33 {
            term = 2;
            s.save_vote(&Vote::new(2, 1)).await.unwrap();
            expected.push(dump(&mut s).await);
            s.truncate(lid(1, 31)).await.unwrap();
            expected.push(dump(&mut s).await);
            s.blocking_append((31..=33).map(|j| put(2, j, 400))).await.unwrap();
            expected.push(dump(&mut s).await);
        }
    }
    drop(s);

    let images = std::mem::take(&mut *images.lock().unwrap());
    assert_eq!(images.len(), expected.len());
    let (mut created, mut rotated, mut deleted) = (0, 0, 0);
    for (step, (group, want)) in images.iter().zip(&expected).enumerate() {
        for (point, image) in group {
            created += usize::from(*point == Point::Created);
            rotated += usize::from(*point == Point::Rotated);
            deleted += usize::from(*point == Point::Deleted);
            let copy = TempDir::new().unwrap();
            for (name, bytes) in image {
                fs::write(copy.path().join(name), bytes).unwrap();
            }
            let mut s = LogStore::open(copy.path()).unwrap();
            assert_eq!(&dump(&mut s).await, want, "step {step}, {point:?}");
        }
    }
    assert!(
        created >= 5 && rotated >= 5 && deleted >= 5,
        "created {created}, rotated {rotated}, deleted {deleted}"
    );
}

#[tokio::test]
async fn second_open_of_the_same_dir_fails() {
    let dir = TempDir::new().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let err = LogStore::open(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(s);
    LogStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn open_creates_missing_dirs() {
    let dir = TempDir::new().unwrap();
    let nested = dir.path().join("a/b/raft");
    let mut s = LogStore::open(&nested).unwrap();
    s.save_vote(&Vote::new(1, 1)).await.unwrap();
    assert!(nested.join("LOCK").exists());
    assert_eq!(segment_paths(&nested).len(), 1);
}

// --- openraft's conformance suite, with a throwaway in-memory state machine ---

/// Snapshot data in an anonymous file.
fn file_of(bytes: &[u8]) -> SnapshotData {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    SnapshotData::from_file(f).unwrap()
}

#[derive(Default)]
struct SmInner {
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Option<(SnapshotMeta, Vec<u8>)>,
    built: u64,
}

#[derive(Clone, Default)]
struct MemSm(Arc<Mutex<SmInner>>);

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let mut g = self.0.lock().unwrap();
        g.built += 1;
        let data = serde_json::to_vec(&(g.applied, &g.membership)).unwrap();
        let meta = SnapshotMeta {
            last_log_id: g.applied,
            last_membership: g.membership.clone(),
            snapshot_id: format!("snap-{}", g.built),
        };
        g.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(file_of(&data)) })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotBuilder = MemSm;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let g = self.0.lock().unwrap();
        Ok((g.applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.0.lock().unwrap();
        let mut out = Vec::new();
        for e in entries {
            g.applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = &e.payload {
                g.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            out.push(Outcome::Nothing { revision: 0 });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> MemSm {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(file_of(&[])))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let mut data = vec![0; snapshot.len() as usize];
        snapshot.read_at(&mut data, 0).unwrap();
        let (applied, membership): (Option<LogId>, StoredMembership) = serde_json::from_slice(&data).unwrap();
        let mut g = self.0.lock().unwrap();
        g.applied = applied;
        g.membership = membership;
        g.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let g = self.0.lock().unwrap();
        Ok(g.current
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(file_of(data)) }))
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, MemSm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, MemSm), StorageError> {
        let dir = TempDir::new().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        Ok((dir, store, MemSm::default()))
    }
}

#[test]
fn openraft_conformance_suite() {
    Suite::<TypeConfig, LogStore, MemSm, Builder, TempDir>::test_all(Builder).unwrap();
}
