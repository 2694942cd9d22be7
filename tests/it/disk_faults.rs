//! Replaced and damaged disks, with real processes: a member whose data dir was wiped or
//! lost its log must not rejoin as itself (it was counted in quorums; its empty vote could
//! elect a leader missing acknowledged writes), while a member that never ran (a late
//! start of a new cluster) joins; a member restarted with another peer address is refused.
//! In every case no acknowledged write goes missing.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::process::{
    free_ports, run_to_exit, with_flag, without_flag, Cluster, ClusterOptions, Consistency,
};

/// Writes `n` keys through the leader; every one acknowledged.
async fn write_keys(c: &Cluster, prefix: &str, n: usize) {
    let (leader, _) = c.leader().await;
    for i in 0..n {
        let r =
            c.http().put(&c.client_url(leader), &format!("{prefix}/{i}"), &format!("v{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// Every acknowledged key is there, read linearizably through node `via`.
async fn assert_keys(c: &Cluster, via: u64, prefix: &str, n: usize) {
    let listing =
        c.http().list(&c.client_url(via), prefix, Consistency::Linearizable).await.expect("a listing");
    assert_eq!(listing.kvs.len(), n, "node {via} lost acknowledged keys under {prefix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_refuses_to_rejoin_as_itself() {
    let c = Cluster::start(ClusterOptions::default()).await;
    write_keys(&c, "/acked", 100).await;
    let (leader, _) = c.leader().await;
    let victim = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.kill_9(victim);
    std::fs::remove_dir_all(c.data_dir(victim)).unwrap();
    let (status, log) = c.start_expecting_exit(victim, Duration::from_secs(20)).await;
    assert!(!status.success(), "a wiped member exited with {status}");
    assert!(log.contains("disk was replaced or wiped"), "{log}");
    assert!(log.contains("--rebuild-from-peers"), "{log}");
    // The others still hold (and serve) every acknowledged write, and still have a quorum.
    for id in c.live_ids() {
        assert_keys(&c, id, "/acked", 100).await;
    }
    write_keys(&c, "/later", 5).await;
    // The explicit step: rebuild it from its peers.
    rebuild(&c, victim).await;
    assert_keys(&c, victim, "/acked", 100).await;
    assert_keys(&c, victim, "/later", 5).await;
}

/// Starts node `id` on an empty data dir with `--rebuild-from-peers` and waits until it
/// has caught up and votes again.
async fn rebuild(c: &Cluster, id: u64) {
    let dir = c.data_dir(id).to_path_buf();
    if dir.exists() {
        std::fs::rename(&dir, dir.with_extension("damaged")).unwrap();
    }
    let args = c.command_line(id);
    c.set_command_line(id, [args.clone(), vec!["--rebuild-from-peers".into()]].concat());
    c.start_node(id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log_tail(id, 200).contains("caught up, votes again") {
        assert!(Instant::now() < deadline, "node {id} did not finish its rebuild\n{}", c.log_tail(id, 60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = c.http().get_path(&c.client_url(id), "/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text);
    c.set_command_line(id, args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_log_refuses_to_start() {
    let c = Cluster::start(ClusterOptions::default()).await;
    write_keys(&c, "/acked", 30).await;
    let (leader, _) = c.leader().await;
    let victim = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.kill_9(victim);
    // The identity file stays; the log and snapshots go.
    std::fs::remove_dir_all(c.data_dir(victim).join("raft")).unwrap();
    let _ = std::fs::remove_dir_all(c.data_dir(victim).join("snapshot"));
    let (status, log) = c.start_expecting_exit(victim, Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(log.contains("its raft log and snapshots are gone"), "{log}");
    for id in c.live_ids() {
        assert_keys(&c, id, "/acked", 30).await;
    }
    rebuild(&c, victim).await;
    assert_keys(&c, victim, "/acked", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_forms_only_when_an_empty_majority_of_the_others_answers() {
    // Of a new 3-node cluster, 1 and 2 start: neither may count itself (an empty data dir
    // may be a wiped one), and one answer is not more than half of the others: they wait
    // for node 3, saying so.
    let c = Cluster::start(ClusterOptions { delayed: vec![3], ..Default::default() }).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for id in [1, 2] {
        let r = c.http().get_path(&c.client_url(id), "/readyz").await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(r.text.contains("waits for members [3]"), "{}", r.text);
    }
    c.start_node(3).await;
    write_keys(&c, "/formed", 5).await;
    assert_keys(&c, 3, "/formed", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_start_of_a_new_cluster_joins() {
    // Four of five start and form the cluster; the fifth, which never ran, joins later.
    let c = Cluster::start(ClusterOptions { nodes: 5, delayed: vec![5], ..Default::default() }).await;
    write_keys(&c, "/early", 20).await;
    c.start_node(5).await;
    // Node 5 had no data, so it may join; it catches up with everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let l = c.http().list(&c.client_url(5), "/early", Consistency::Serializable).await;
        if l.as_ref().is_ok_and(|l| l.kvs.len() == 20) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 5 did not catch up: {l:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it is a full member: with nodes 1 and 2 down, 3, 4 and 5 are a quorum.
    c.kill_9(1);
    c.kill_9(2);
    let (leader, _) = c.leader().await;
    assert!(leader >= 3);
    write_keys(&c, "/after", 5).await;
    assert_keys(&c, 5, "/early", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_peer_address_is_refused() {
    let c = Cluster::start(ClusterOptions::default()).await;
    write_keys(&c, "/acked", 10).await;
    let victim = 2;
    c.stop(victim, Duration::from_secs(5));
    let port = free_ports(1)[0];
    let args = without_flag(&c.command_line(victim), "--initial-cluster");
    let args = with_flag(&args, "--listen-peer", &format!("127.0.0.1:{port}"));
    let out = run_to_exit(&args, Duration::from_secs(20));
    assert!(out.status.is_some_and(|s| !s.success()), "{out:?}");
    assert!(out.stderr.contains("but the cluster records"), "{}", out.stderr);
    // The same command line as before still works.
    c.restart(victim).await;
    assert_keys(&c, victim, "/acked", 10).await;
}

/// A small tmpfs mounted on a temp dir, unmounted on drop. Needs root (CI runs as root).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("palisade-tmpfs-").tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "this test mounts a small tmpfs and needs root (mount exited with {st})");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `path` until a write fails with ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 256 << 10];
    loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_recovers_by_itself() {
    let fs = Tmpfs::mount(32);
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        data_root: Some(fs.path().to_path_buf()),
        extra_args: vec!["--wal-segment-bytes".into(), (8 << 20).to_string()],
        ..Default::default()
    })
    .await;
    let url = c.client_url(1);
    let (leader, _) = c.leader().await;
    assert_eq!(leader, 1);
    write_keys(&c, "/before", 5).await;
    fill(&fs.path().join("filler"));
    // Writes go on into the log's preallocated segment, then stop at the next segment.
    let value = "v".repeat(900 << 10);
    let mut acked = 0;
    let mut refused = None;
    for i in 0..200 {
        let r = c.http().put(&url, &format!("/big/{i}"), &value).await.unwrap();
        match r.status {
            200 => acked += 1,
            503 | 504 => {
                refused = Some(r);
                break;
            }
            other => panic!("put {i}: {other} {}", r.text),
        }
    }
    let first = refused.expect("the disk never filled up");
    eprintln!("disk full after {acked} writes; first refusal: {} {}", first.status, first.text);
    // From now on writes are refused at once, saying why; health holds, readiness does not.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.http().put(&url, "/during", "x").await.unwrap();
        if r.status == 503 && r.text.contains("data disk is full") {
            break;
        }
        assert!(Instant::now() < deadline, "writes are not refused as a full disk: {} {}", r.status, r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = c.http().get_path(&url, "/readyz").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(ready.text.contains("data disk is full"), "{}", ready.text);
    assert_eq!(c.http().get_path(&url, "/healthz").await.unwrap().status, 200);
    // Serializable reads still work; a linearizable one says why it cannot be served.
    let l = c.http().list(&url, "/before", Consistency::Serializable).await.unwrap();
    assert_eq!(l.kvs.len(), 5);
    let r = c.http().get(&url, "/before/0", Consistency::Linearizable).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("data disk is full"), "{}", r.text);
    // Space comes back: the node serves writes again without a restart.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c.http().put(&url, "/after", "x").await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {} {}", r.status, r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.http().get_path(&url, "/readyz").await.unwrap().status, 200);
    // Every acknowledged write is there.
    let listing = c.http().list(&url, "/big", Consistency::Linearizable).await.unwrap();
    for i in 0..acked {
        assert!(listing.kvs.contains_key(&format!("/big/{i}")), "acknowledged /big/{i} is missing");
    }
    assert_keys(&c, 1, "/before", 5).await;
    c.stop_all();
    drop(c);
    drop(fs);
}

/// The segment files of a node's log, oldest first.
fn segments(c: &Cluster, id: u64) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(c.data_dir(id).join("raft"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

/// Flips one byte of `path` at `at`.
fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// How many bytes of `path` are in use (the rest is preallocated zeros).
fn used(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1)
}

/// Writes enough through the leader for several log segments (and a snapshot), damages a
/// follower's files while it is down, and checks that the follower refuses to start with
/// `expect` and the damaged file named, that no acknowledged write is missing, and that
/// the explicit rebuild brings it back with every write.
async fn damaged_member(what: &str, damage: impl FnOnce(&Cluster, u64) -> std::path::PathBuf, expect: &str) {
    let extra = ["--wal-segment-bytes", "131072", "--snapshot-every", "300"].map(String::from).to_vec();
    let c = Cluster::start(ClusterOptions { extra_args: extra, ..Default::default() }).await;
    let (leader, _) = c.leader().await;
    let value = "v".repeat(1024);
    for i in 0..400 {
        let r = c.http().put(&c.client_url(leader), &format!("/acked/{i}"), &value).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let victim = c.ids().into_iter().find(|id| *id != leader).unwrap();
    // Let the follower hold everything before it goes down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill_9(victim);
    let file = damage(&c, victim);
    let (status, log) = c.start_expecting_exit(victim, Duration::from_secs(20)).await;
    assert!(!status.success(), "{what}: the damaged member started");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(log.contains(&name), "{what}: the message does not name {name}:\n{log}");
    assert!(log.contains(expect), "{what}: the message does not say {expect:?}:\n{log}");
    assert!(log.contains("--rebuild-from-peers"), "{what}: no way back is given:\n{log}");
    for id in c.live_ids() {
        assert_keys(&c, id, "/acked", 400).await;
    }
    rebuild(&c, victim).await;
    assert_keys(&c, victim, "/acked", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_older_segment_is_refused() {
    damaged_member(
        "flip in an older segment",
        |c, id| {
            let segs = segments(c, id);
            assert!(segs.len() >= 3, "test premise: several segments, got {segs:?}");
            let old = segs[segs.len() - 2].clone();
            flip(&old, used(&old) / 2);
            old
        },
        "offset",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_newest_segment_before_good_records_is_refused() {
    damaged_member(
        "flip in the newest segment",
        |c, id| {
            let newest = segments(c, id).pop().unwrap();
            flip(&newest, used(&newest) / 3);
            newest
        },
        "offset",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_deleted_newest_segment_is_refused() {
    damaged_member(
        "truncated newest segment",
        |c, id| {
            let newest = segments(c, id).pop().unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
            f.set_len(used(&newest) / 2).unwrap();
            newest
        },
        "truncated",
    )
    .await;
    damaged_member(
        "deleted newest segment",
        |c, id| {
            let newest = segments(c, id).pop().unwrap();
            std::fs::remove_file(&newest).unwrap();
            newest
        },
        "missing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_snapshot_is_refused() {
    damaged_member(
        "flip in the snapshot",
        |c, id| {
            let snap = c.data_dir(id).join("snapshot").join("snapshot.bin");
            assert!(snap.exists(), "test premise: a snapshot");
            let len = std::fs::metadata(&snap).unwrap().len();
            flip(&snap, len / 2);
            snap
        },
        "checksum",
    )
    .await;
}
