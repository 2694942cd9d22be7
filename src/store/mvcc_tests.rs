//! Tests of the multi-version key space: worked examples of each rule, a randomized
//! comparison against a naive model (replay one seed with `PALISADE_SEED=<n>`), and the
//! snapshot (serde) round trip.

use super::*;

use crate::store::{Command, Condition, Outcome};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn put_cmd(k: &str, v: &[u8], cond: Condition, prev_kv: bool) -> Command {
    Command::Put { key: k.to_string(), value: v.to_vec(), lease: None, cond, prev_kv, sequential: false }
}

fn del_cmd(k: &str, recursive: bool, cond: Condition, prev_kv: bool) -> Command {
    Command::Delete { key: k.to_string(), recursive, cond, prev_kv }
}

fn put(s: &mut Store, k: &str, v: &str) -> Outcome {
    s.apply(&put_cmd(k, v.as_bytes(), Condition::default(), true))
}

fn put_if(s: &mut Store, k: &str, v: &str, cond: Condition) -> Outcome {
    s.apply(&put_cmd(k, v.as_bytes(), cond, true))
}

fn del(s: &mut Store, k: &str, recursive: bool) -> Outcome {
    s.apply(&del_cmd(k, recursive, Condition::default(), true))
}

fn put_kv(o: &Outcome) -> KeyValue {
    match o {
        Outcome::Put { kv, .. } => kv.clone(),
        other => panic!("expected a put outcome, got {other:?}"),
    }
}

fn now(s: &Store, k: &str) -> Option<KeyValue> {
    let (rev, kv) = s.get(k, None).expect("a current read never fails");
    assert_eq!(rev, s.revision());
    kv
}

fn at(s: &Store, k: &str, rev: u64) -> Option<KeyValue> {
    let (r, kv) = s.get(k, Some(rev)).expect("history read");
    assert_eq!(r, rev, "a history read reports the revision asked for");
    kv
}

fn kv(k: &str, v: &str, create_revision: u64, mod_revision: u64, version: u64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: v.as_bytes().to_vec(),
        create_revision,
        mod_revision,
        version,
        lease: None,
    }
}

fn opts(limit: usize, after: Option<&str>) -> ListOptions {
    ListOptions {
        revision: None,
        after: after.map(str::to_string),
        limit,
        max_bytes: usize::MAX,
        keys_only: false,
    }
}

fn all(s: &Store, k: &str) -> Vec<KeyValue> {
    s.list(k, &opts(usize::MAX, None)).expect("list").kvs
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

fn names(page: &ChildrenPage) -> Vec<&str> {
    page.children.iter().map(|c| c.name.as_str()).collect()
}

fn store_with(keys: &[&str]) -> Store {
    let mut s = Store::new();
    for k in keys {
        put(&mut s, k, &format!("v{k}"));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Revisions, versions
// ---------------------------------------------------------------------------------------

#[test]
fn revision_starts_at_zero_and_each_put_bumps_it_by_one() {
    let mut s = Store::new();
    assert_eq!(s.revision(), 0);
    assert_eq!(s.live_keys(), 0);
    assert_eq!(now(&s, "/a"), None);
    assert_eq!(s.get("/a", Some(0)), Ok((0, None)));
    for (i, k) in ["/a", "/b", "/a", "/a/b", "/a"].iter().enumerate() {
        let o = put(&mut s, k, "x");
        let want = i as u64 + 1;
        assert_eq!(o.revision(), want);
        assert_eq!(s.revision(), want);
        assert_eq!(put_kv(&o).mod_revision, want);
    }
    assert_eq!(s.live_keys(), 3);
}

#[test]
fn create_mod_revision_and_version_semantics() {
    let mut s = Store::new();
    put(&mut s, "/other", "o"); // rev 1, so that create_revision != 1 below

    let o = put(&mut s, "/k", "a"); // rev 2
    assert_eq!(o, Outcome::Put { revision: 2, kv: kv("/k", "a", 2, 2, 1), prev_kv: None });
    let o = put(&mut s, "/k", "b"); // rev 3
    assert_eq!(
        o,
        Outcome::Put { revision: 3, kv: kv("/k", "b", 2, 3, 2), prev_kv: Some(kv("/k", "a", 2, 2, 1)) }
    );
    put(&mut s, "/other", "o2"); // rev 4: does not touch /k
    assert_eq!(now(&s, "/k"), Some(kv("/k", "b", 2, 3, 2)));
    let o = put(&mut s, "/k", "c"); // rev 5
    assert_eq!(put_kv(&o), kv("/k", "c", 2, 5, 3));

    // Without prev_kv the previous value is not returned.
    let o = s.apply(&put_cmd("/k", b"d", Condition::default(), false)); // rev 6
    assert_eq!(o, Outcome::Put { revision: 6, kv: kv("/k", "d", 2, 6, 4), prev_kv: None });

    // Delete, then re-create: a new incarnation, version back to 1.
    let o = del(&mut s, "/k", false); // rev 7
    assert_eq!(o, Outcome::Deleted { revision: 7, deleted: 1, prev_kvs: vec![kv("/k", "d", 2, 6, 4)] });
    assert_eq!(now(&s, "/k"), None);
    let o = put(&mut s, "/k", "e"); // rev 8
    assert_eq!(o, Outcome::Put { revision: 8, kv: kv("/k", "e", 8, 8, 1), prev_kv: None });
    let o = put(&mut s, "/k", "f"); // rev 9
    assert_eq!(put_kv(&o), kv("/k", "f", 8, 9, 2));

    // The old incarnation is still readable at its revisions.
    assert_eq!(at(&s, "/k", 1), None);
    assert_eq!(at(&s, "/k", 2), Some(kv("/k", "a", 2, 2, 1)));
    assert_eq!(at(&s, "/k", 4), Some(kv("/k", "b", 2, 3, 2)));
    assert_eq!(at(&s, "/k", 6), Some(kv("/k", "d", 2, 6, 4)));
    assert_eq!(at(&s, "/k", 7), None);
    assert_eq!(at(&s, "/k", 8), Some(kv("/k", "e", 8, 8, 1)));
    assert_eq!(at(&s, "/k", 9), Some(kv("/k", "f", 8, 9, 2)));
}

// ---------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------

#[test]
fn failed_conditions_change_nothing_and_report_current() {
    let mut s = Store::new();
    put(&mut s, "/k", "a"); // rev 1
    put(&mut s, "/k", "b"); // rev 2: /k version 2, mod 2, create 1
    put(&mut s, "/k/child", "c"); // rev 3
    let current = Some(kv("/k", "b", 1, 2, 2));

    let failing_on_existing = [
        Condition { if_version: Some(0), ..Default::default() },
        Condition { if_version: Some(1), ..Default::default() },
        Condition { if_version: Some(3), ..Default::default() },
        Condition { if_mod_revision: Some(0), ..Default::default() },
        Condition { if_mod_revision: Some(1), ..Default::default() },
        Condition { if_mod_revision: Some(3), ..Default::default() },
        Condition { if_value: Some(b"a".to_vec()), ..Default::default() },
        Condition { if_value: Some(Vec::new()), ..Default::default() },
        // One good and one bad field: all given ones must hold.
        Condition { if_version: Some(2), if_mod_revision: Some(1), ..Default::default() },
        Condition { if_version: Some(2), if_value: Some(b"x".to_vec()), ..Default::default() },
    ];
    for cond in failing_on_existing {
        let before = s.clone();
        for cmd in [
            put_cmd("/k", b"new", cond.clone(), true),
            put_cmd("/k", b"new", cond.clone(), false),
            del_cmd("/k", false, cond.clone(), true),
            del_cmd("/k", true, cond.clone(), false),
        ] {
            let o = s.apply(&cmd);
            assert_eq!(o, Outcome::ConditionFailed { revision: 3, current: current.clone() }, "{cmd:?}");
            assert_eq!(s, before, "a failed condition changed the store: {cmd:?}");
        }
    }

    // On a missing key: version/mod_revision must be 0, and if_value never holds.
    let failing_on_missing = [
        Condition { if_version: Some(1), ..Default::default() },
        Condition { if_mod_revision: Some(3), ..Default::default() },
        Condition { if_value: Some(Vec::new()), ..Default::default() },
        Condition { if_version: Some(0), if_value: Some(b"b".to_vec()), ..Default::default() },
    ];
    for cond in failing_on_missing {
        let before = s.clone();
        for cmd in [
            put_cmd("/missing", b"new", cond.clone(), true),
            del_cmd("/missing", false, cond.clone(), true),
            // The condition is on the key itself, even when its subtree has keys.
            del_cmd("/missing", true, cond.clone(), true),
        ] {
            let o = s.apply(&cmd);
            assert_eq!(o, Outcome::ConditionFailed { revision: 3, current: None }, "{cmd:?}");
            assert_eq!(s, before, "a failed condition changed the store: {cmd:?}");
        }
    }
}

#[test]
fn conditions_that_hold_apply() {
    let mut s = Store::new();
    // Create-only.
    let o = put_if(&mut s, "/k", "a", Condition { if_version: Some(0), ..Default::default() });
    assert_eq!(put_kv(&o), kv("/k", "a", 1, 1, 1));
    let o = put_if(&mut s, "/j", "a", Condition { if_mod_revision: Some(0), ..Default::default() });
    assert_eq!(put_kv(&o), kv("/j", "a", 2, 2, 1));
    // Compare-and-swap on each field, and all at once.
    let o = put_if(&mut s, "/k", "b", Condition { if_version: Some(1), ..Default::default() });
    assert_eq!(put_kv(&o), kv("/k", "b", 1, 3, 2));
    let o = put_if(&mut s, "/k", "c", Condition { if_mod_revision: Some(3), ..Default::default() });
    assert_eq!(put_kv(&o), kv("/k", "c", 1, 4, 3));
    let o = put_if(&mut s, "/k", "d", Condition { if_value: Some(b"c".to_vec()), ..Default::default() });
    assert_eq!(put_kv(&o), kv("/k", "d", 1, 5, 4));
    let all3 = Condition { if_version: Some(4), if_mod_revision: Some(5), if_value: Some(b"d".to_vec()) };
    let o = put_if(&mut s, "/k", "e", all3);
    assert_eq!(put_kv(&o), kv("/k", "e", 1, 6, 5));
    // Conditional delete.
    let o = s.apply(&del_cmd(
        "/k",
        false,
        Condition { if_value: Some(b"e".to_vec()), ..Default::default() },
        false,
    ));
    assert_eq!(o, Outcome::Deleted { revision: 7, deleted: 1, prev_kvs: vec![] });
    // A conditional delete whose condition holds on a missing key deletes nothing.
    let o = s.apply(&del_cmd("/k", false, Condition { if_version: Some(0), ..Default::default() }, true));
    assert_eq!(o, Outcome::Deleted { revision: 7, deleted: 0, prev_kvs: vec![] });
    assert_eq!(s.revision(), 7);
}

// ---------------------------------------------------------------------------------------
// Deletes
// ---------------------------------------------------------------------------------------

#[test]
fn delete_of_missing_key_deletes_nothing_and_keeps_the_revision() {
    let mut s = store_with(&["/a", "/a/b", "/c/d"]);
    let before = s.clone();
    for (k, recursive) in [
        ("/x", false),
        ("/x", true),
        ("/a/b/c", false),
        ("/a/b/c", true),
        // /c is not a key: a plain delete of it matches nothing, even with a subtree.
        ("/c", false),
        ("/a.b", true),
        ("/", false),
    ] {
        let o = del(&mut s, k, recursive);
        assert_eq!(o, Outcome::Deleted { revision: 3, deleted: 0, prev_kvs: vec![] }, "{k}");
        assert_eq!(s, before, "{k} recursive={recursive}");
    }
    // Deleting twice: the second one is a no-op.
    let o = del(&mut s, "/a/b", false);
    assert_eq!(o.revision(), 4);
    let o = del(&mut s, "/a/b", false);
    assert_eq!(o, Outcome::Deleted { revision: 4, deleted: 0, prev_kvs: vec![] });
    assert_eq!(s.revision(), 4);
}

#[test]
fn plain_delete_leaves_the_subtree() {
    let mut s = store_with(&["/a", "/a/b", "/a/b/c"]);
    let o = del(&mut s, "/a", false);
    assert_eq!(o, Outcome::Deleted { revision: 4, deleted: 1, prev_kvs: vec![kv("/a", "v/a", 1, 1, 1)] });
    assert_eq!(keys(&all(&s, "/")), ["/a/b", "/a/b/c"]);
    assert_eq!(s.live_keys(), 2);
}

#[test]
fn recursive_delete_takes_the_subtree_in_one_revision_and_nothing_else() {
    // Neighbours that sort right around the subtree of /a: "/a " < "/a-" < "/a.b" < "/a/" < "/a0".
    let ks = ["/a", "/a/b", "/a/b/c", "/a/z", "/a.b", "/a.b/c", "/ab", "/a0", "/a-", "/a ", "/b", "/0"];
    let mut s = store_with(&ks);
    let rev = s.revision();
    let o = del(&mut s, "/a", true);
    let Outcome::Deleted { revision, deleted, prev_kvs } = o else { panic!("{o:?}") };
    assert_eq!(revision, rev + 1, "one revision for the whole subtree");
    assert_eq!(s.revision(), rev + 1);
    assert_eq!(deleted, 4);
    assert_eq!(keys(&prev_kvs), ["/a", "/a/b", "/a/b/c", "/a/z"]);
    assert_eq!(prev_kvs[1], kv("/a/b", "v/a/b", 2, 2, 1));
    assert_eq!(keys(&all(&s, "/")), ["/0", "/a ", "/a-", "/a.b", "/a.b/c", "/a0", "/ab", "/b"]);
    assert_eq!(s.live_keys(), 8);
    for k in ["/a", "/a/b", "/a/b/c", "/a/z"] {
        assert_eq!(now(&s, k), None, "{k}");
        assert!(at(&s, k, rev).is_some(), "{k} still readable before the delete");
    }

    // A path that is not a key itself but has a subtree.
    let mut s = store_with(&["/x/y", "/x/y/z", "/x.y", "/xy"]);
    let o = del(&mut s, "/x", true);
    assert_eq!(o.revision(), 5);
    assert!(matches!(o, Outcome::Deleted { deleted: 2, .. }), "{o:?}");
    assert_eq!(keys(&all(&s, "/")), ["/x.y", "/xy"]);

    // Deleting an already-deleted subtree again changes nothing.
    let before = s.clone();
    let o = del(&mut s, "/x", true);
    assert_eq!(o, Outcome::Deleted { revision: 5, deleted: 0, prev_kvs: vec![] });
    assert_eq!(s, before);
}

// ---------------------------------------------------------------------------------------
// History, future revisions
// ---------------------------------------------------------------------------------------

#[test]
fn a_write_transaction_lands_every_change_at_one_revision() {
    let mut s = Store::new();
    put(&mut s, "/a", "1"); // rev 1
    put(&mut s, "/gone", "x"); // rev 2
    {
        let mut txn = s.write();
        let (a, prev) = txn.put("/a", b"2".to_vec(), None);
        assert_eq!((a.mod_revision, a.version, a.create_revision), (3, 2, 1));
        assert_eq!(prev.map(|p| p.mod_revision), Some(1));
        let (b, _) = txn.put("/b", b"new".to_vec(), Some(7));
        assert_eq!((b.mod_revision, b.create_revision, b.version, b.lease), (3, 3, 1, Some(7)));
        // Reads inside the transaction see its own changes.
        assert_eq!(txn.current("/b").map(|kv| kv.value), Some(b"new".to_vec()));
        assert_eq!(txn.delete("/gone", false).len(), 1);
        // The same key twice: the later change wins, still at the same revision.
        let (a2, prev2) = txn.put("/a", b"3".to_vec(), None);
        assert_eq!((a2.mod_revision, a2.version), (3, 3));
        assert_eq!(prev2.map(|p| p.value), Some(b"2".to_vec()));
    }
    assert_eq!(s.revision(), 3);
    assert_eq!(s.live_keys(), 2);
    assert_eq!(at(&s, "/a", 3).map(|kv| kv.value), Some(b"3".to_vec()));
    assert_eq!(at(&s, "/a", 2).map(|kv| kv.value), Some(b"1".to_vec()));
    assert_eq!(at(&s, "/gone", 2).map(|kv| kv.value), Some(b"x".to_vec()));
    assert_eq!(at(&s, "/gone", 3), None);
    assert_eq!(at(&s, "/b", 2), None);
    // A transaction that changes nothing takes no revision.
    {
        let mut txn = s.write();
        assert!(txn.delete("/missing", true).is_empty());
    }
    assert_eq!(s.revision(), 3);
    assert_eq!(put_kv(&put(&mut s, "/c", "c")).mod_revision, 4);
}

#[test]
fn compaction_keeps_exactly_what_a_read_at_the_floor_sees() {
    let mut s = Store::new();
    put(&mut s, "/a", "1"); // 1
    put(&mut s, "/a", "2"); // 2
    put(&mut s, "/b", "x"); // 3
    del(&mut s, "/b", false); // 4
    put(&mut s, "/c", "y"); // 5
    assert!(s.compact(4));
    assert_eq!(s.keys.get("/a").unwrap().len(), 1, "only the version a read at the floor sees");
    let b = s.keys.get("/b").unwrap();
    assert!(
        b.len() == 1 && b[0].value.is_none() && b[0].mod_revision == 4,
        "the delete at the floor stays: {b:?}"
    );
    assert_eq!(s.bytes(), 3 + 2 + 3);
    assert_eq!(at(&s, "/a", 4), Some(kv("/a", "2", 1, 2, 2)));
    assert_eq!(s.get("/a", Some(3)), Err(ReadError::Compacted { compact_revision: 4 }));
    assert!(!s.compact(4) && !s.compact(2), "the floor never moves down");
    assert!(s.compact(5));
    assert!(s.keys.get("/b").is_none(), "a delete below the floor goes with its key");
    assert_eq!(s.bytes(), 3 + 3);
    assert_eq!(s.revision(), 5, "compaction takes no revision");
}

#[test]
fn proposals_of_a_newer_format_are_refused_when_decoded() {
    use crate::store::{Proposal, FORMAT_VERSION};
    let p = Proposal::new(put_cmd("/k", b"v", Condition::default(), false), 1_700_000_000_000);
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
    assert!(json.contains(&format!("\"v\":{FORMAT_VERSION}")), "{json}");
    let newer = json.replace(&format!("\"v\":{FORMAT_VERSION}"), &format!("\"v\":{}", FORMAT_VERSION + 1));
    let e = serde_json::from_str::<Proposal>(&newer).unwrap_err().to_string();
    assert!(e.contains("upgrade palisade"), "{e}");
    let zero = json.replace(&format!("\"v\":{FORMAT_VERSION}"), "\"v\":0");
    assert!(serde_json::from_str::<Proposal>(&zero).is_err());
}

#[test]
fn reads_at_old_revisions_see_old_state() {
    let mut s = Store::new();
    put(&mut s, "/d/a", "1"); // 1
    put(&mut s, "/d/b", "1"); // 2
    put(&mut s, "/d/a", "2"); // 3
    del(&mut s, "/d/b", false); // 4
    put(&mut s, "/d/c/x", "1"); // 5
    del(&mut s, "/d", true); // 6
    put(&mut s, "/d/a", "3"); // 7

    let at_rev = |rev: u64| {
        let page = s.list("/d", &ListOptions { revision: Some(rev), ..opts(usize::MAX, None) }).unwrap();
        assert_eq!(page.revision, rev);
        assert_eq!(page.count as usize, page.kvs.len());
        assert_eq!(s.count("/d", Some(rev)).unwrap(), page.count);
        page.kvs
            .iter()
            .map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)))
            .collect::<Vec<_>>()
    };
    assert_eq!(at_rev(0), Vec::<String>::new());
    assert_eq!(at_rev(1), ["/d/a=1"]);
    assert_eq!(at_rev(2), ["/d/a=1", "/d/b=1"]);
    assert_eq!(at_rev(3), ["/d/a=2", "/d/b=1"]);
    assert_eq!(at_rev(4), ["/d/a=2"]);
    assert_eq!(at_rev(5), ["/d/a=2", "/d/c/x=1"]);
    assert_eq!(at_rev(6), Vec::<String>::new());
    assert_eq!(at_rev(7), ["/d/a=3"]);

    assert_eq!(at(&s, "/d/a", 3), Some(kv("/d/a", "2", 1, 3, 2)));
    assert_eq!(at(&s, "/d/a", 7), Some(kv("/d/a", "3", 7, 7, 1)));

    let kids = |rev: u64| {
        let p = s.children("/d", Some(rev), None, usize::MAX).unwrap();
        assert_eq!(p.revision, rev);
        p.children.iter().map(|c| (c.name.clone(), c.has_children, c.kv.is_some())).collect::<Vec<_>>()
    };
    assert_eq!(kids(5), [("a".into(), false, true), ("c".into(), true, false)]);
    assert_eq!(kids(6), vec![]);
    let root = s.children("/", Some(5), None, usize::MAX).unwrap();
    assert_eq!(names(&root), ["d"]);
    assert!(root.children[0].has_children && root.children[0].kv.is_none());
    assert!(s.children("/", Some(6), None, usize::MAX).unwrap().children.is_empty());
    assert_eq!(s.count("/", Some(5)).unwrap(), 2);
    assert_eq!(s.count("/", Some(6)).unwrap(), 0);
    assert_eq!(s.count("/", None).unwrap(), 1);
}

#[test]
fn reads_above_the_current_revision_are_future() {
    let mut s = store_with(&["/a", "/a/b"]);
    let future = ReadError::FutureRevision { revision: 2 };
    assert_eq!(s.get("/a", Some(3)), Err(future.clone()));
    assert_eq!(s.get("/a", Some(u64::MAX)), Err(future.clone()));
    let lo = ListOptions { revision: Some(3), ..opts(10, None) };
    assert_eq!(s.list("/a", &lo), Err(future.clone()));
    assert_eq!(s.list("/", &lo), Err(future.clone()));
    assert_eq!(s.children("/a", Some(3), None, 10), Err(future.clone()));
    assert_eq!(s.count("/", Some(3)), Err(future.clone()));
    assert_eq!(s.count("/a", Some(3)), Err(future));
    // The current revision itself is fine, and so is the next one once it exists.
    assert_eq!(s.get("/a", Some(2)).unwrap().1.unwrap().key, "/a");
    put(&mut s, "/a", "x");
    assert_eq!(at(&s, "/a", 3).unwrap().value, b"x");
    // An empty store: revision 0 reads, 1 is future.
    let e = Store::new();
    assert_eq!(e.get("/a", Some(0)), Ok((0, None)));
    assert_eq!(e.get("/a", Some(1)), Err(ReadError::FutureRevision { revision: 0 }));
}

// ---------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------

fn listing_store() -> Store {
    let mut s = store_with(&[
        "/l", "/l/a", "/l/a/b", "/l/a.b", "/l/a-", "/l/a0", "/l/b", "/l/b/c/d", "/l/c", "/l.x", "/l0", "/lx",
        "/k", "/k/z",
    ]);
    put(&mut s, "/l/gone", "x");
    del(&mut s, "/l/gone", false);
    put(&mut s, "/l/a", "second");
    s
}

#[test]
fn list_is_the_key_and_its_subtree_sorted() {
    let s = listing_store();
    let page = s.list("/l", &opts(usize::MAX, None)).unwrap();
    assert_eq!(
        keys(&page.kvs),
        ["/l", "/l/a", "/l/a-", "/l/a.b", "/l/a/b", "/l/a0", "/l/b", "/l/b/c/d", "/l/c"]
    );
    assert_eq!(page.count, 9);
    assert!(!page.more);
    assert_eq!(page.revision, s.revision());
    assert_eq!(page.kvs[1].value, b"second");
    assert_eq!(keys(&all(&s, "/l/a")), ["/l/a", "/l/a/b"]);
    assert_eq!(keys(&all(&s, "/l/b")), ["/l/b", "/l/b/c/d"]);
    assert_eq!(keys(&all(&s, "/l/b/c")), ["/l/b/c/d"]);
    assert_eq!(keys(&all(&s, "/l/a/b")), ["/l/a/b"]);
    assert!(all(&s, "/l/zz").is_empty());
    assert!(all(&s, "/l/gone").is_empty());
    assert_eq!(all(&s, "/").len(), 14);
    assert_eq!(s.count("/", None).unwrap(), 14);
    assert_eq!(s.count("/l", None).unwrap(), 9);
    assert_eq!(s.count("/l/b/c", None).unwrap(), 1);
    assert_eq!(s.count("/nothing", None).unwrap(), 0);
}

#[test]
fn list_paging_with_after_and_limit_reproduces_the_full_listing() {
    let s = listing_store();
    for path in ["/", "/l", "/l/a", "/k", "/nothing"] {
        let full = all(&s, path);
        for limit in 1..=full.len() + 1 {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            let mut pages = 0;
            loop {
                let page = s.list(path, &opts(limit, after.as_deref())).unwrap();
                pages += 1;
                assert!(pages <= full.len() + 1, "{path} limit {limit}: paging does not end");
                assert_eq!(page.count, full.len() as u64, "count is the whole range");
                assert!(page.kvs.len() <= limit);
                if page.more {
                    assert_eq!(page.kvs.len(), limit, "{path}: a page with more is full");
                }
                got.extend(page.kvs.iter().cloned());
                if !page.more {
                    break;
                }
                after = Some(page.kvs.last().unwrap().key.clone());
            }
            assert_eq!(got, full, "{path} limit {limit}");
            assert_eq!(pages, full.len().div_ceil(limit).max(1), "{path} limit {limit}");
        }
    }
}

#[test]
fn list_after_any_key_gives_the_keys_greater_than_it() {
    let s = listing_store();
    let full = all(&s, "/l");
    for after in ["/", "/k", "/l", "/l/", "/l/a", "/l/a.b", "/l/a/", "/l/a/b", "/l/az", "/l/c"] {
        let page = s.list("/l", &opts(usize::MAX, Some(after))).unwrap();
        let want: Vec<_> = full.iter().filter(|kv| kv.key.as_str() > after).cloned().collect();
        assert_eq!(page.kvs, want, "after {after}");
        assert!(!page.more);
        assert_eq!(page.count, 9);
    }
}

#[test]
fn list_after_past_the_end_of_the_range_is_an_empty_page() {
    // A page token is client input: one at or past the end of the subtree must give an
    // empty last page, not a panic.
    let s = listing_store();
    for after in ["/l0", "/l0/x", "/lx", "/m", "\u{10FFFF}"] {
        let page = s.list("/l", &opts(10, Some(after))).unwrap();
        assert!(page.kvs.is_empty(), "after {after}: {page:?}");
        assert!(!page.more, "after {after}");
        assert_eq!(page.count, 9, "after {after}");
    }
    let page = s.list("/", &opts(10, Some("0"))).unwrap();
    assert!(page.kvs.is_empty());
}

#[test]
fn max_bytes_stops_a_page_but_returns_at_least_one_key() {
    let mut s = Store::new();
    put(&mut s, "/m/a", "12345"); // 4 + 5 = 9 bytes
    put(&mut s, "/m/b", "12345"); // 9
    put(&mut s, "/m/c", "1"); // 5
    put(&mut s, "/m/d", &"x".repeat(100)); // 104
    let page = |max_bytes: usize, after: Option<&str>, keys_only: bool| {
        s.list("/m", &ListOptions { max_bytes, keys_only, ..opts(usize::MAX, after) }).unwrap()
    };
    for max in [0, 1, 8, 9] {
        let p = page(max, None, false);
        assert_eq!(keys(&p.kvs), ["/m/a"], "max_bytes {max}");
        assert!(p.more);
        assert_eq!(p.count, 4);
    }
    let p = page(10, None, false);
    assert_eq!(keys(&p.kvs), ["/m/a", "/m/b"]);
    assert!(p.more);
    let p = page(23, None, false);
    assert_eq!(keys(&p.kvs), ["/m/a", "/m/b", "/m/c"]);
    assert!(p.more);
    let p = page(24, None, false);
    assert_eq!(keys(&p.kvs), ["/m/a", "/m/b", "/m/c", "/m/d"]);
    assert!(!p.more);
    // A value larger than the budget still comes back, alone.
    let p = page(10, Some("/m/c"), false);
    assert_eq!(keys(&p.kvs), ["/m/d"]);
    assert_eq!(p.kvs[0].value.len(), 100);
    assert!(!p.more);
    // max_bytes 1: one key per page, all keys reached.
    let mut after = None::<String>;
    let mut got = Vec::new();
    loop {
        let p = page(1, after.as_deref(), false);
        assert_eq!(p.kvs.len(), 1);
        got.push(p.kvs[0].key.clone());
        if !p.more {
            break;
        }
        after = Some(p.kvs[0].key.clone());
    }
    assert_eq!(got, ["/m/a", "/m/b", "/m/c", "/m/d"]);
    // limit and max_bytes together: whichever stops first.
    let p = s.list("/m", &ListOptions { max_bytes: 1000, ..opts(2, None) }).unwrap();
    assert_eq!(keys(&p.kvs), ["/m/a", "/m/b"]);
    assert!(p.more);
}

#[test]
fn keys_only_empties_values_and_keeps_the_rest() {
    let s = listing_store();
    let full = s.list("/l", &opts(usize::MAX, None)).unwrap();
    let ko = s.list("/l", &ListOptions { keys_only: true, ..opts(usize::MAX, None) }).unwrap();
    assert_eq!(ko.count, full.count);
    assert_eq!(ko.more, full.more);
    assert_eq!(ko.kvs.len(), full.kvs.len());
    assert!(full.kvs.iter().all(|kv| !kv.value.is_empty()));
    for (a, b) in ko.kvs.iter().zip(&full.kvs) {
        assert!(a.value.is_empty(), "{a:?}");
        assert_eq!(KeyValue { value: Vec::new(), ..b.clone() }, *a);
    }
    // And it pages the same way.
    let p = s.list("/l", &ListOptions { keys_only: true, ..opts(3, Some("/l/a")) }).unwrap();
    assert_eq!(keys(&p.kvs), ["/l/a-", "/l/a.b", "/l/a/b"]);
    assert!(p.kvs.iter().all(|kv| kv.value.is_empty()));
    assert!(p.more);
}

// ---------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------

fn children_store() -> Store {
    store_with(&["/p", "/p/a", "/p/a.b", "/p/a/x", "/p/b/c/d", "/pq", "/p.z", "/p0", "/o/p"])
}

#[test]
fn children_are_the_direct_names_with_has_children_and_own_kv() {
    let s = children_store();
    let page = s.children("/p", None, None, usize::MAX).unwrap();
    assert_eq!(page.revision, s.revision());
    assert!(!page.more);
    assert_eq!(
        page.children,
        vec![
            Child {
                name: "a".into(),
                key: "/p/a".into(),
                has_children: true,
                kv: Some(kv("/p/a", "v/p/a", 2, 2, 1)),
            },
            Child {
                name: "a.b".into(),
                key: "/p/a.b".into(),
                has_children: false,
                kv: Some(kv("/p/a.b", "v/p/a.b", 3, 3, 1)),
            },
            Child { name: "b".into(), key: "/p/b".into(), has_children: true, kv: None },
        ]
    );
    let b = s.children("/p/b", None, None, usize::MAX).unwrap();
    assert_eq!(names(&b), ["c"]);
    assert!(b.children[0].has_children && b.children[0].kv.is_none());
    let c = s.children("/p/b/c", None, None, usize::MAX).unwrap();
    assert_eq!(names(&c), ["d"]);
    assert!(!c.children[0].has_children && c.children[0].kv.is_some());
}

#[test]
fn children_limit_sets_more() {
    let s = children_store();
    let p = s.children("/p", None, None, 2).unwrap();
    assert_eq!(names(&p), ["a", "a.b"]);
    assert!(p.more);
    let p = s.children("/p", None, None, 3).unwrap();
    assert_eq!(names(&p), ["a", "a.b", "b"]);
    assert!(!p.more);
}

#[test]
fn children_paging_with_after() {
    let s = children_store();
    let p = s.children("/p", None, Some("a"), usize::MAX).unwrap();
    assert_eq!(names(&p), ["a.b", "b"], "children of /p after \"a\"");
    let p = s.children("/p", None, Some("a.b"), usize::MAX).unwrap();
    assert_eq!(names(&p), ["b"]);
    let p = s.children("/p", None, Some("b"), usize::MAX).unwrap();
    assert!(p.children.is_empty() && !p.more);
    let p = s.children("/p", None, Some(""), usize::MAX).unwrap();
    assert_eq!(names(&p), ["a", "a.b", "b"]);

    // One child per page reassembles the full list.
    let full = s.children("/p", None, None, usize::MAX).unwrap().children;
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let p = s.children("/p", None, after.as_deref(), 1).unwrap();
        got.extend(p.children.iter().cloned());
        if !p.more {
            break;
        }
        after = Some(p.children.last().unwrap().name.clone());
    }
    assert_eq!(got, full);
}

#[test]
fn children_after_a_name_keeps_leaf_names_that_extend_it() {
    // Names that sort right after `after`: "a0" (a leaf) and "a-" (before "a/" bytewise).
    let s = store_with(&["/q/a", "/q/a/x", "/q/a-", "/q/a0", "/q/a00/y", "/q/b"]);
    let full = s.children("/q", None, None, usize::MAX).unwrap();
    assert_eq!(names(&full), ["a", "a-", "a0", "a00", "b"]);
    let p = s.children("/q", None, Some("a"), usize::MAX).unwrap();
    assert_eq!(names(&p), ["a-", "a0", "a00", "b"]);
    let p = s.children("/q", None, Some("a-"), usize::MAX).unwrap();
    assert_eq!(names(&p), ["a0", "a00", "b"]);
    let p = s.children("/q", None, Some("a0"), usize::MAX).unwrap();
    assert_eq!(names(&p), ["a00", "b"]);
}

#[test]
fn children_of_the_root() {
    let mut s = store_with(&["/a", "/a/b", "/b.c", "/z/y/x", "/gone"]);
    del(&mut s, "/gone", false);
    let p = s.children("/", None, None, usize::MAX).unwrap();
    assert_eq!(names(&p), ["a", "b.c", "z"]);
    let keys: Vec<&str> = p.children.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["/a", "/b.c", "/z"]);
    let flags: Vec<(bool, bool)> = p.children.iter().map(|c| (c.has_children, c.kv.is_some())).collect();
    assert_eq!(flags, [(true, true), (false, true), (true, false)]);
    let p = s.children("/", None, None, 1).unwrap();
    assert_eq!(names(&p), ["a"]);
    assert!(p.more);
}

#[test]
fn children_of_a_path_with_nothing_below_are_empty() {
    let mut s = children_store();
    for path in ["/p/a.b", "/p/a/x", "/pq", "/nothing", "/p/b/c/d", "/p/zz"] {
        let p = s.children(path, None, None, usize::MAX).unwrap();
        assert!(p.children.is_empty() && !p.more, "{path}: {p:?}");
    }
    // A subtree whose keys were all deleted has no children now, but had them before.
    let rev = s.revision();
    del(&mut s, "/p/b/c/d", false);
    assert!(s.children("/p/b", None, None, usize::MAX).unwrap().children.is_empty());
    assert_eq!(names(&s.children("/p/b", Some(rev), None, usize::MAX).unwrap()), ["c"]);
    assert_eq!(names(&s.children("/p", None, None, usize::MAX).unwrap()), ["a", "a.b"]);
    assert!(Store::new().children("/", None, None, 10).unwrap().children.is_empty());
}

// ---------------------------------------------------------------------------------------
// Snapshot round trip
// ---------------------------------------------------------------------------------------

#[test]
fn serde_json_round_trip_is_an_equal_store() {
    let mut s = Store::new();
    assert_eq!(serde_json::from_str::<Store>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
    for i in 0..30u8 {
        let k = format!("/r/{}/{}", i % 4, i % 3);
        s.apply(&put_cmd(&k, &[i, 0xff, 0, b'"', b'\\'], Condition::default(), false));
    }
    put(&mut s, "/r/utf8/ü", "日本");
    put(&mut s, "/empty", "");
    del(&mut s, "/r/1", true);
    del(&mut s, "/r/2/0", false);
    put(&mut s, "/r/2/0", "again");

    let json = serde_json::to_string(&s).unwrap();
    let back: Store = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert_eq!(serde_json::to_string(&back).unwrap(), json, "byte for byte");
    assert_eq!(back.revision(), s.revision());
    assert_eq!(back.live_keys(), s.live_keys());
    assert_eq!(back.bytes(), s.bytes());
    for rev in 0..=s.revision() {
        let o = ListOptions { revision: Some(rev), ..opts(usize::MAX, None) };
        assert_eq!(back.list("/", &o), s.list("/", &o), "rev {rev}");
    }
    // The restored store goes on exactly like the original.
    let mut a = s.clone();
    let mut b = back;
    for cmd in [
        put_cmd("/r/0/0", b"x", Condition::default(), true),
        del_cmd("/r", true, Condition::default(), true),
        put_cmd("/r/3/1", b"y", Condition { if_version: Some(0), ..Default::default() }, true),
    ] {
        assert_eq!(a.apply(&cmd), b.apply(&cmd));
        assert_eq!(a, b);
    }

    // Also through serde_json::Value (how a snapshot may be embedded in another document).
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(serde_json::from_value::<Store>(v).unwrap(), a);
}

// ---------------------------------------------------------------------------------------
// Randomized comparison against a naive model
// ---------------------------------------------------------------------------------------

mod model {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::super::{sequential_key, Child, ChildrenPage, ListOptions, ListPage, ReadError, Store};
    use crate::store::{
        Command, Compare, CompareOp, CompareTarget, Condition, KeyValue, Outcome, Txn, TxnOp, TxnResult,
    };

    /// Keys that are written.
    const WRITE_KEYS: &[&str] = &[
        "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/b.c", "/a/b0", "/a.b", "/a.b/c", "/a-", "/a0", "/ab", "/b",
        "/b/x", "/b/x/y", "/b/y", "/b/x.y", "/c d", "/c d/e",
    ];
    /// Paths that are read (and deleted), besides the written keys.
    const EXTRA_PATHS: &[&str] = &["/", "/a/b/c/d/e", "/z", "/b/x/y/z", "/a/c", "/c"];
    /// Arbitrary list cursors besides keys.
    const EXTRA_AFTERS: &[&str] = &["/", "/0", "/a/", "/a/b/", "/zzz", "\u{10FFFF}"];
    /// Arbitrary children cursors.
    const NAMES: &[&str] = &["", "a", "a-", "a.b", "a0", "ab", "b", "b.c", "b0", "c", "x", "y", "zz"];
    const VALUES: &[&[u8]] = &[b"", b"v1", b"v2", b"v3", b"a longer value 0123456789", &[0xff, 0, 0xfe]];

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct ModelKv {
        value: Vec<u8>,
        create_revision: u64,
        mod_revision: u64,
        version: u64,
    }

    type Snapshot = BTreeMap<String, ModelKv>;
    /// One change of a key: its revision, and the value put (None: deleted).
    type Change = (u64, Option<Vec<u8>>);

    struct Model {
        cur: Snapshot,
        /// `history[r]` is the state after revision `r`.
        history: Vec<Snapshot>,
        revision: u64,
        /// Every change of every key: (revision, value or None for a delete).
        events: BTreeMap<String, Vec<Change>>,
        /// Revisions below this cannot be read.
        floor: u64,
        /// Last sequence number per parent.
        seqs: BTreeMap<String, u64>,
    }

    fn to_kv(k: &str, m: &ModelKv) -> KeyValue {
        KeyValue {
            key: k.to_string(),
            value: m.value.clone(),
            create_revision: m.create_revision,
            mod_revision: m.mod_revision,
            version: m.version,
            lease: None,
        }
    }

    /// Whether `k` is `path` or lies below it (written without the store's key helpers).
    fn in_subtree(path: &str, k: &str) -> bool {
        if path == "/" {
            return true;
        }
        k == path || (k.len() > path.len() && k.starts_with(path) && k.as_bytes()[path.len()] == b'/')
    }

    fn holds(cond: &Condition, cur: Option<&ModelKv>) -> bool {
        let num_ok = |want: Option<u64>, have: Option<u64>| match (want, have) {
            (None, _) => true,
            (Some(0), None) => true,
            (Some(_), None) => false,
            (Some(w), Some(h)) => w == h,
        };
        num_ok(cond.if_version, cur.map(|c| c.version))
            && num_ok(cond.if_mod_revision, cur.map(|c| c.mod_revision))
            && match &cond.if_value {
                None => true,
                Some(want) => cur.is_some_and(|c| &c.value == want),
            }
    }

    impl Model {
        fn new() -> Self {
            Model {
                cur: BTreeMap::new(),
                history: vec![BTreeMap::new()],
                revision: 0,
                events: BTreeMap::new(),
                floor: 0,
                seqs: BTreeMap::new(),
            }
        }

        fn commit(&mut self) {
            self.revision += 1;
            self.history.push(self.cur.clone());
            assert_eq!(self.history.len() as u64, self.revision + 1);
        }

        /// What the quota counts, by definition: every change after the floor; of those
        /// at or before it, the newest when it is a put or a delete at the floor itself;
        /// plus 8 bytes and the name of every parent with a sequence.
        fn bytes(&self) -> u64 {
            let mut total = 0u64;
            for (k, evs) in &self.events {
                let upto = evs.iter().filter(|(r, _)| *r <= self.floor).count();
                for (i, (r, v)) in evs.iter().enumerate() {
                    let newest_upto = i + 1 == upto;
                    if *r > self.floor || (newest_upto && (v.is_some() || *r == self.floor)) {
                        total += (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
                    }
                }
            }
            total + self.seqs.keys().map(|p| p.len() as u64 + 8).sum::<u64>()
        }

        /// Writes `key` in the working state at revision `rev` (not committed).
        fn put_at(&mut self, key: &str, value: &[u8], rev: u64) -> (KeyValue, Option<KeyValue>) {
            let prev = self.cur.get(key).cloned();
            let new = ModelKv {
                value: value.to_vec(),
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
            };
            self.events.entry(key.to_string()).or_default().push((rev, Some(value.to_vec())));
            self.cur.insert(key.to_string(), new.clone());
            (to_kv(key, &new), prev.map(|p| to_kv(key, &p)))
        }

        fn put_sequential_at(&mut self, parent: &str, value: &[u8], rev: u64) -> KeyValue {
            let mut n = self.seqs.get(parent).copied().unwrap_or(0);
            let key = loop {
                n += 1;
                let k = sequential_key(parent, n);
                if !self.cur.contains_key(&k) {
                    break k;
                }
            };
            self.seqs.insert(parent.to_string(), n);
            self.put_at(&key, value, rev).0
        }

        fn delete_at(&mut self, key: &str, recursive: bool, rev: u64) -> Vec<KeyValue> {
            let targets: Vec<String> = self
                .cur
                .keys()
                .filter(|k| if recursive { in_subtree(key, k) } else { *k == key })
                .cloned()
                .collect();
            let mut prev_kvs = Vec::new();
            for k in &targets {
                let old = self.cur.remove(k).expect("target exists");
                self.events.entry(k.clone()).or_default().push((rev, None));
                prev_kvs.push(to_kv(k, &old));
            }
            prev_kvs
        }

        fn compare(&self, c: &Compare) -> bool {
            let cur = self.cur.get(&c.key);
            let op = |a: u64, b: u64| match c.op {
                CompareOp::Eq => a == b,
                CompareOp::Ne => a != b,
                CompareOp::Lt => a < b,
                CompareOp::Gt => a > b,
            };
            match &c.target {
                CompareTarget::Value(want) => cur.is_some_and(|m| match c.op {
                    CompareOp::Eq => &m.value == want,
                    CompareOp::Ne => &m.value != want,
                    CompareOp::Lt => &m.value < want,
                    CompareOp::Gt => &m.value > want,
                }),
                CompareTarget::Version(n) => op(cur.map_or(0, |m| m.version), *n),
                CompareTarget::CreateRevision(n) => op(cur.map_or(0, |m| m.create_revision), *n),
                CompareTarget::ModRevision(n) => op(cur.map_or(0, |m| m.mod_revision), *n),
                CompareTarget::Lease(n) => op(0, *n),
                // The store alone knows no lock holders.
                CompareTarget::Fence(_) => false,
            }
        }

        fn apply_txn(&mut self, txn: &Txn) -> Outcome {
            let succeeded = txn.compare.iter().all(|c| self.compare(c));
            let ops = if succeeded { &txn.success } else { &txn.failure };
            let rev = self.revision + 1;
            let mut changed = false;
            let mut budget = txn.max_read_bytes as usize;
            let mut results = Vec::new();
            for op in ops {
                results.push(match op {
                    TxnOp::Put { key, value, sequential: true, .. } => {
                        changed = true;
                        let kv = self.put_sequential_at(key, value, rev);
                        TxnResult::Put { revision: rev, kv, prev_kv: None }
                    }
                    TxnOp::Put { key, value, prev_kv, .. } => {
                        changed = true;
                        let (kv, prev) = self.put_at(key, value, rev);
                        TxnResult::Put { revision: rev, kv, prev_kv: if *prev_kv { prev } else { None } }
                    }
                    TxnOp::Delete { key, recursive, prev_kv } => {
                        let gone = self.delete_at(key, *recursive, rev);
                        changed |= !gone.is_empty();
                        TxnResult::Delete {
                            deleted: gone.len() as u64,
                            prev_kvs: if *prev_kv { gone } else { Vec::new() },
                        }
                    }
                    TxnOp::Get { key, recursive, limit, keys_only } => {
                        let limit = limit.unwrap_or(txn.default_get_limit);
                        let mut kvs: Vec<KeyValue> = self
                            .cur
                            .iter()
                            .filter(|(k, _)| if *recursive { in_subtree(key, k) } else { *k == key })
                            .map(|(k, m)| to_kv(k, m))
                            .collect();
                        if *keys_only {
                            kvs.iter_mut().for_each(|kv| kv.value.clear());
                        }
                        let mut more = false;
                        if *recursive && kvs.len() as u64 > limit {
                            kvs.truncate(limit as usize);
                            more = true;
                        }
                        // The read budget is hard, over all gets of the branch.
                        let mut used = 0;
                        let fit = kvs
                            .iter()
                            .take_while(|kv| {
                                used += kv.key.len() + kv.value.len();
                                used <= budget
                            })
                            .count();
                        if fit < kvs.len() {
                            kvs.truncate(fit);
                            more = true;
                        }
                        budget -= kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum::<usize>();
                        TxnResult::Get { kvs, more }
                    }
                });
            }
            if changed {
                self.commit();
            }
            Outcome::Txn { revision: self.revision, succeeded, results }
        }

        fn apply(&mut self, cmd: &Command) -> Outcome {
            match cmd {
                Command::Put { key, value, sequential: true, .. } => {
                    let kv = self.put_sequential_at(key, value, self.revision + 1);
                    self.commit();
                    Outcome::Put { revision: self.revision, kv, prev_kv: None }
                }
                Command::Put { key, value, cond, prev_kv, .. } => {
                    let prev = self.cur.get(key).cloned();
                    if !holds(cond, prev.as_ref()) {
                        return Outcome::ConditionFailed {
                            revision: self.revision,
                            current: prev.map(|p| to_kv(key, &p)),
                        };
                    }
                    let (kv, prev) = self.put_at(key, value, self.revision + 1);
                    self.commit();
                    Outcome::Put { revision: self.revision, kv, prev_kv: if *prev_kv { prev } else { None } }
                }
                Command::Delete { key, recursive, cond, prev_kv } => {
                    let current = self.cur.get(key);
                    if !holds(cond, current) {
                        return Outcome::ConditionFailed {
                            revision: self.revision,
                            current: current.map(|p| to_kv(key, p)),
                        };
                    }
                    let prev_kvs = self.delete_at(key, *recursive, self.revision + 1);
                    if !prev_kvs.is_empty() {
                        self.commit();
                    }
                    Outcome::Deleted {
                        revision: self.revision,
                        deleted: prev_kvs.len() as u64,
                        prev_kvs: if *prev_kv { prev_kvs } else { Vec::new() },
                    }
                }
                Command::Txn(txn) => self.apply_txn(txn),
                Command::Compact { revision } if *revision > self.revision => {
                    Outcome::FutureRevision { revision: self.revision }
                }
                Command::Compact { revision } => {
                    let r = (*revision).min(self.revision);
                    let compacted = r > self.floor;
                    if compacted {
                        self.floor = r;
                    }
                    Outcome::Compacted { revision: self.revision, compact_revision: self.floor, compacted }
                }
                Command::Idempotent { cmd, .. } | Command::As { cmd, .. } => self.apply(cmd),
                // Leases are the state root's; the store alone does nothing with them.
                Command::LeaseGrant { .. }
                | Command::LeaseRevoke { .. }
                | Command::LeaseClock { .. }
                | Command::LeaseExpire { .. }
                | Command::LockAcquire { .. }
                | Command::LockRelease { .. }
                | Command::LockCancel { .. }
                | Command::Proclaim { .. } => Outcome::Nothing { revision: self.revision },
                Command::Batch { cmds } => {
                    let outcomes = cmds
                        .iter()
                        .map(|c| match c {
                            Command::Batch { .. } => {
                                Outcome::Batch { revision: self.revision, outcomes: Vec::new() }
                            }
                            c => self.apply(c),
                        })
                        .collect();
                    Outcome::Batch { revision: self.revision, outcomes }
                }
            }
        }

        fn at(&self, rev: u64) -> &Snapshot {
            &self.history[rev as usize]
        }

        fn get(&self, k: &str, rev: u64) -> Option<KeyValue> {
            self.at(rev).get(k).map(|m| to_kv(k, m))
        }

        fn count(&self, path: &str, rev: u64) -> u64 {
            self.at(rev).keys().filter(|k| in_subtree(path, k)).count() as u64
        }

        fn range(&self, path: &str, rev: u64) -> Vec<KeyValue> {
            self.at(rev).iter().filter(|(k, _)| in_subtree(path, k)).map(|(k, m)| to_kv(k, m)).collect()
        }

        fn list_page(&self, path: &str, o: &ListOptions) -> ListPage {
            let rev = o.revision.unwrap_or(self.revision);
            let range = self.range(path, rev);
            let count = range.len() as u64;
            let mut rest = range
                .into_iter()
                .filter(|kv| o.after.as_ref().is_none_or(|a| kv.key.as_str() > a.as_str()))
                .peekable();
            let mut kvs = Vec::new();
            let mut bytes = 0;
            while rest.peek().is_some() && kvs.len() < o.limit && (kvs.is_empty() || bytes < o.max_bytes) {
                let mut kv = rest.next().unwrap();
                if o.keys_only {
                    kv.value.clear();
                }
                bytes += kv.key.len() + kv.value.len();
                kvs.push(kv);
            }
            let more = rest.peek().is_some();
            ListPage { revision: rev, kvs, count, more }
        }

        fn children_page(&self, path: &str, rev: u64, after: Option<&str>, limit: usize) -> ChildrenPage {
            let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
            let mut found: BTreeMap<String, Child> = BTreeMap::new();
            for (k, m) in self.at(rev) {
                let Some(rest) = k.strip_prefix(&prefix) else {
                    continue;
                };
                let (name, below) = match rest.split_once('/') {
                    Some((n, _)) => (n, true),
                    None => (rest, false),
                };
                let c = found.entry(name.to_string()).or_insert_with(|| Child {
                    name: name.to_string(),
                    key: format!("{prefix}{name}"),
                    has_children: false,
                    kv: None,
                });
                if below {
                    c.has_children = true;
                } else {
                    c.kv = Some(to_kv(k, m));
                }
            }
            let all: Vec<Child> =
                found.into_values().filter(|c| after.is_none_or(|a| c.name.as_str() > a)).collect();
            let more = all.len() > limit;
            ChildrenPage { revision: rev, children: all.into_iter().take(limit).collect(), more }
        }
    }

    fn pick<'a, T: ?Sized>(rng: &mut StdRng, xs: &[&'a T]) -> &'a T {
        xs.choose(rng).expect("non-empty")
    }

    fn random_cond(rng: &mut StdRng, model: &Model, key: &str) -> Condition {
        if rng.gen_bool(0.5) {
            return Condition::default();
        }
        let cur = model.cur.get(key);
        let mut c = Condition::default();
        if rng.gen_bool(0.4) {
            let v = cur.map_or(0, |c| c.version);
            c.if_version = Some(match rng.gen_range(0..4) {
                0 => 0,
                1 | 2 => v,
                _ => rng.gen_range(0..=v + 1),
            });
        }
        if rng.gen_bool(0.4) {
            let r = cur.map_or(0, |c| c.mod_revision);
            c.if_mod_revision = Some(match rng.gen_range(0..4) {
                0 => 0,
                1 | 2 => r,
                _ => rng.gen_range(0..=model.revision + 1),
            });
        }
        if rng.gen_bool(0.3) {
            c.if_value = Some(match (cur, rng.gen_bool(0.6)) {
                (Some(c), true) => c.value.clone(),
                _ => pick(rng, VALUES).to_vec(),
            });
        }
        c
    }

    fn random_command(rng: &mut StdRng, model: &Model) -> Command {
        if rng.gen_bool(0.1) {
            // A proposal batch: independent commands applied in order, one revision each.
            let n = rng.gen_range(0..4);
            let mut cmds: Vec<Command> = (0..n).map(|_| random_single(rng, model)).collect();
            if rng.gen_bool(0.1) {
                cmds.push(Command::Batch { cmds: vec![random_single(rng, model)] });
            }
            return Command::Batch { cmds };
        }
        random_single(rng, model)
    }

    fn random_single(rng: &mut StdRng, model: &Model) -> Command {
        match rng.gen_range(0..100) {
            0..15 => return random_txn(rng, model),
            15..19 => {
                let revision = rng.gen_range(0..=model.revision + 2);
                return Command::Compact { revision };
            }
            19..24 => {
                return Command::Put {
                    key: pick(rng, PARENTS).to_string(),
                    value: pick(rng, VALUES).to_vec(),
                    lease: None,
                    sequential: true,
                    cond: Condition::default(),
                    prev_kv: false,
                }
            }
            _ => {}
        }
        if rng.gen_bool(0.6) {
            let key = pick(rng, WRITE_KEYS);
            Command::Put {
                lease: None,
                sequential: false,
                key: key.to_string(),
                value: pick(rng, VALUES).to_vec(),
                cond: random_cond(rng, model, key),
                prev_kv: rng.gen(),
            }
        } else {
            // Deletes of non-keys too; never of the root (it cannot be written).
            let key = if rng.gen_bool(0.85) { pick(rng, WRITE_KEYS) } else { pick(rng, &EXTRA_PATHS[1..]) };
            Command::Delete {
                key: key.to_string(),
                recursive: rng.gen_bool(0.4),
                cond: random_cond(rng, model, key),
                prev_kv: rng.gen(),
            }
        }
    }

    fn all_paths() -> Vec<&'static str> {
        WRITE_KEYS.iter().chain(EXTRA_PATHS).copied().collect()
    }

    fn random_rev(rng: &mut StdRng, model: &Model) -> Option<u64> {
        if rng.gen_bool(0.5) {
            None
        } else {
            Some(rng.gen_range(model.floor..=model.revision))
        }
    }

    const PARENTS: &[&str] = &["/q", "/a", "/"];

    fn random_compare(rng: &mut StdRng, model: &Model) -> Compare {
        let key = pick(rng, WRITE_KEYS).to_string();
        let cur = model.cur.get(&key);
        let op = *[CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Gt].choose(rng).unwrap();
        let near = |rng: &mut StdRng, n: u64| if rng.gen_bool(0.5) { n } else { rng.gen_range(0..=n + 1) };
        let target = match rng.gen_range(0..5) {
            0 => CompareTarget::Value(match (cur, rng.gen_bool(0.6)) {
                (Some(c), true) => c.value.clone(),
                _ => pick(rng, VALUES).to_vec(),
            }),
            1 => CompareTarget::Version(near(rng, cur.map_or(0, |c| c.version))),
            2 => CompareTarget::CreateRevision(near(rng, cur.map_or(0, |c| c.create_revision))),
            3 => CompareTarget::ModRevision(near(rng, cur.map_or(0, |c| c.mod_revision))),
            _ => CompareTarget::Lease(rng.gen_range(0..2)),
        };
        Compare { key, op, target }
    }

    fn random_op(rng: &mut StdRng) -> TxnOp {
        match rng.gen_range(0..6) {
            0 | 1 => TxnOp::Put {
                key: pick(rng, WRITE_KEYS).to_string(),
                value: pick(rng, VALUES).to_vec(),
                lease: None,
                sequential: false,
                prev_kv: rng.gen(),
            },
            2 => TxnOp::Put {
                key: pick(rng, PARENTS).to_string(),
                value: pick(rng, VALUES).to_vec(),
                lease: None,
                sequential: true,
                prev_kv: false,
            },
            3 => TxnOp::Delete {
                key: pick(rng, WRITE_KEYS).to_string(),
                recursive: rng.gen_bool(0.3),
                prev_kv: rng.gen(),
            },
            _ => {
                let paths = all_paths();
                let recursive = rng.gen_bool(0.5);
                let key = if recursive { pick(rng, &paths) } else { pick(rng, WRITE_KEYS) };
                TxnOp::Get {
                    key: key.to_string(),
                    recursive,
                    limit: if recursive && rng.gen_bool(0.7) { Some(rng.gen_range(1..=6)) } else { None },
                    keys_only: rng.gen_bool(0.2),
                }
            }
        }
    }

    fn random_txn(rng: &mut StdRng, model: &Model) -> Command {
        let compare = (0..rng.gen_range(0..=3)).map(|_| random_compare(rng, model)).collect();
        let success = (0..rng.gen_range(0..=4)).map(|_| random_op(rng)).collect();
        let failure = (0..rng.gen_range(0..=3)).map(|_| random_op(rng)).collect();
        let max_read_bytes = *[u64::MAX, 0, 10, 60].choose(rng).unwrap();
        let default_get_limit = rng.gen_range(1..=6);
        Command::Txn(Txn { compare, success, failure, max_read_bytes, default_get_limit })
    }

    fn check_list(rng: &mut StdRng, store: &Store, model: &Model, ctx: &str) {
        let paths = all_paths();
        let path = pick(rng, &paths);
        let revision = random_rev(rng, model);
        let limit = if rng.gen_bool(0.2) { usize::MAX } else { rng.gen_range(1..=5) };
        let max_bytes = *[usize::MAX, usize::MAX, 0, 1, 7, 16, 40].choose(rng).unwrap();
        let keys_only = rng.gen_bool(0.3);
        let start: Option<String> = if rng.gen_bool(0.8) {
            None
        } else if rng.gen_bool(0.5) {
            Some(pick(rng, &paths).to_string())
        } else {
            Some(pick(rng, EXTRA_AFTERS).to_string())
        };
        let mut o = ListOptions { revision, after: start.clone(), limit, max_bytes, keys_only };
        let what = format!("{ctx}\n  list {path} {o:?}");
        let mut got = Vec::new();
        for _ in 0..10_000 {
            let page = store.list(path, &o).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let want = model.list_page(path, &o);
            assert_eq!(page, want, "{what}");
            got.extend(page.kvs.iter().cloned());
            if !page.more {
                let want_all = model.list_page(
                    path,
                    &ListOptions { after: start, limit: usize::MAX, max_bytes: usize::MAX, ..o },
                );
                assert!(!want_all.more);
                assert_eq!(got, want_all.kvs, "{what}: pages reassembled");
                return;
            }
            o.after = Some(page.kvs.last().expect("a page with more is not empty").key.clone());
        }
        panic!("{what}: paging did not end");
    }

    fn check_children(rng: &mut StdRng, store: &Store, model: &Model, ctx: &str) {
        let paths = all_paths();
        let path = pick(rng, &paths);
        let rev = random_rev(rng, model);
        let limit = if rng.gen_bool(0.3) { usize::MAX } else { rng.gen_range(1..=3) };
        let start: Option<String> = if rng.gen_bool(0.7) { None } else { Some(pick(rng, NAMES).to_string()) };
        let r = rev.unwrap_or(model.revision);
        let mut after = start.clone();
        let mut got = Vec::new();
        for _ in 0..10_000 {
            let what = format!("{ctx}\n  children {path} rev {rev:?} after {after:?} limit {limit}");
            let page = store
                .children(path, rev, after.as_deref(), limit)
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(page, model.children_page(path, r, after.as_deref(), limit), "{what}");
            got.extend(page.children.iter().cloned());
            if !page.more {
                let want = model.children_page(path, r, start.as_deref(), usize::MAX);
                assert_eq!(got, want.children, "{what}: pages reassembled");
                return;
            }
            after = Some(page.children.last().expect("more means not empty").name.clone());
        }
        panic!("{ctx}: children paging of {path} did not end");
    }

    /// A watch from a random revision at or above the floor, read through `next_change`
    /// and `events` with random budgets, sees exactly the model's changes of the keys it
    /// selects, revision by revision, each whole and once; below the floor it is refused.
    fn check_watch(rng: &mut StdRng, store: &Store, model: &Model, ctx: &str) {
        use crate::store::events::{Event, NextChange, Selector};
        let paths = all_paths();
        let sel = Selector { key: pick(rng, &paths).to_string(), recursive: rng.gen_bool(0.6) };
        let from = rng.gen_range(model.floor.max(1)..=model.revision + 1);
        let what = format!("{ctx}\n  watch {sel:?} from {from}");
        // Per revision: (key, value put or None for a delete).
        type Changes = BTreeMap<u64, Vec<(String, Option<Vec<u8>>)>>;
        let mut want: Changes = BTreeMap::new();
        for (k, changes) in &model.events {
            for (r, v) in changes.iter().filter(|(r, _)| *r >= from && sel.matches(k)) {
                want.entry(*r).or_default().push((k.clone(), v.clone()));
            }
        }
        let mut got: Changes = BTreeMap::new();
        let mut at = from;
        loop {
            match store.next_change(&sel, at, rng.gen_range(1..5)).unwrap_or_else(|e| panic!("{what}: {e:?}"))
            {
                NextChange::At(r) => {
                    assert!(r >= at && !got.contains_key(&r), "{what}: found {r} scanning from {at}");
                    let mut pos = 0;
                    loop {
                        let page = store
                            .events(&sel, r, pos, rng.gen_range(1..400), rng.gen_bool(0.5))
                            .unwrap_or_else(|e| panic!("{what}: events at {r}: {e:?}"));
                        for e in page.events {
                            let (key, value) = match e {
                                Event::Put { kv, .. } => (kv.key, Some(kv.value)),
                                Event::Delete { key, mod_revision, .. } => {
                                    assert_eq!(mod_revision, r, "{what}");
                                    (key, None)
                                }
                            };
                            got.entry(r).or_default().push((key, value));
                        }
                        match page.next {
                            Some(n) => pos = n,
                            None => break,
                        }
                    }
                    at = r + 1;
                }
                NextChange::NoneThrough(r) => {
                    if r >= store.revision() {
                        break;
                    }
                    at = r + 1;
                }
            }
        }
        for evs in want.values_mut().chain(got.values_mut()) {
            evs.sort();
        }
        assert_eq!(got, want, "{what}");
        if model.floor > 1 {
            let gone = ReadError::Compacted { compact_revision: model.floor };
            let below = rng.gen_range(1..model.floor);
            assert_eq!(store.next_change(&sel, below, 10), Err(gone.clone()), "{what}: below the floor");
            assert_eq!(store.events(&sel, below, 0, 10, false).map(|_| ()), Err(gone), "{what}");
        }
    }

    fn check(rng: &mut StdRng, store: &Store, model: &Model, ctx: &str) {
        check_watch(rng, store, model, ctx);
        if rng.gen_bool(0.1) {
            // The revision index rebuilt from a serialised image is the one kept live.
            let loaded: Store = serde_json::from_slice(&serde_json::to_vec(store).unwrap()).unwrap();
            assert!(&loaded == store, "{ctx}: the store read back from its image differs");
        }
        let rev = model.revision;
        assert_eq!(store.revision(), rev, "{ctx}: revision");
        assert_eq!(store.live_keys(), model.cur.len() as u64, "{ctx}: live keys");
        assert_eq!(store.bytes(), model.bytes(), "{ctx}: bytes");
        assert_eq!(store.compact_revision(), model.floor, "{ctx}: compaction floor");
        let old = rng.gen_range(model.floor..=rev);
        if model.floor > 0 {
            let below = rng.gen_range(0..model.floor);
            let gone = ReadError::Compacted { compact_revision: model.floor };
            assert_eq!(
                store.get(pick(rng, &all_paths()), Some(below)),
                Err(gone),
                "{ctx}: read below the floor"
            );
        }
        let paths = all_paths();
        for path in &paths {
            assert_eq!(store.get(path, None), Ok((rev, model.get(path, rev))), "{ctx}: get {path}");
            assert_eq!(
                store.get(path, Some(old)),
                Ok((old, model.get(path, old))),
                "{ctx}: get {path} at {old}"
            );
            assert_eq!(store.count(path, None), Ok(model.count(path, rev)), "{ctx}: count {path}");
        }
        for path in paths.choose_multiple(rng, 4) {
            assert_eq!(store.current(path), model.get(path, rev), "{ctx}: current {path}");
            assert_eq!(
                store.count(path, Some(old)),
                Ok(model.count(path, old)),
                "{ctx}: count {path} at {old}"
            );
        }
        // Invariants over everything that exists now.
        for kv in store
            .list(
                "/",
                &ListOptions {
                    revision: None,
                    after: None,
                    limit: usize::MAX,
                    max_bytes: usize::MAX,
                    keys_only: false,
                },
            )
            .unwrap()
            .kvs
        {
            assert!(kv.mod_revision <= rev, "{ctx}: {kv:?} newer than the store");
            assert!(kv.create_revision <= kv.mod_revision, "{ctx}: {kv:?}");
            assert!(kv.create_revision >= 1 && kv.version >= 1, "{ctx}: {kv:?}");
        }
        // The future.
        let future = ReadError::FutureRevision { revision: rev };
        let path = pick(rng, &all_paths());
        assert_eq!(store.get(path, Some(rev + 1)), Err(future.clone()), "{ctx}: future get");
        assert_eq!(store.count(path, Some(rev + 1)), Err(future.clone()), "{ctx}: future count");
        assert_eq!(
            store.children(path, Some(rev + 1), None, 10),
            Err(future.clone()),
            "{ctx}: future children"
        );
        let o = ListOptions {
            revision: Some(rev + 1),
            after: None,
            limit: 10,
            max_bytes: usize::MAX,
            keys_only: false,
        };
        assert_eq!(store.list(path, &o), Err(future), "{ctx}: future list");

        for _ in 0..1 {
            check_list(rng, store, model, ctx);
            check_children(rng, store, model, ctx);
        }
    }

    fn run(seed: u64, ops: usize) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store = Store::new();
        let mut model = Model::new();
        for i in 0..ops {
            let cmd = random_command(&mut rng, &model);
            let ctx = format!("seed {seed} (replay: PALISADE_SEED={seed}), op #{i}: {cmd:?}");
            // A panic inside the store carries no context of its own: name the op.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let before = store.revision();
                let want = model.apply(&cmd);
                // Only an outcome without a new revision needs the old store to compare with.
                let untouched = (want.revision() == before).then(|| store.clone());
                let got = store.apply(&cmd);
                assert_eq!(got, want, "{ctx}: outcome");
                assert_eq!(got.revision(), store.revision(), "{ctx}: outcome revision");
                let after = store.revision();
                let most = match &cmd {
                    Command::Batch { cmds } => cmds.len() as u64,
                    _ => 1,
                };
                // Compaction changes the store without a revision of its own.
                let compacts = |c: &Command| matches!(c, Command::Compact { .. });
                let untouched = match &cmd {
                    Command::Batch { cmds } if cmds.iter().any(compacts) => None,
                    c if compacts(c) => None,
                    _ => untouched,
                };
                assert!(after >= before && after <= before + most, "{ctx}: revision {before} -> {after}");
                if let Some(untouched) = untouched.filter(|_| after == before) {
                    assert_eq!(store, untouched, "{ctx}: no new revision, yet the store changed");
                }
                check(&mut rng, &store, &model, &ctx);
            }));
            if let Err(panic) = step {
                eprintln!("failed at {ctx}");
                std::panic::resume_unwind(panic);
            }
        }
    }

    #[test]
    fn store_matches_a_naive_model() {
        const OPS: usize = 300;
        if let Ok(s) = std::env::var("PALISADE_SEED") {
            let seed: u64 = s.trim().parse().expect("PALISADE_SEED must be a u64");
            println!("replaying seed {seed}");
            run(seed, OPS);
            return;
        }
        let seeds: u64 = std::env::var("PALISADE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
        for i in 0..seeds {
            let seed = 0x5EED_0000 + i;
            println!("seed {seed}");
            run(seed, OPS);
        }
    }
}
