//! Watch streams: what each watcher received, checked against the committed write log.
//!
//! A [`WatchStream`] is one watch (`GET /v1/watch/{key}`, optionally `?recursive`) from
//! `start_revision` (inclusive) on, with every message it received in arrival order. The
//! [`CommittedLog`] is the ground truth: the changes that committed, by revision. It can
//! be built from acknowledged writes plus a final linearizable dump
//! ([`CommittedLog::from_history`]), or by hand.
//!
//! # What [`check_watches`] verifies
//!
//! For each stream, message by message (a key matches a stream if it equals
//! `key_or_prefix`, or, with `recursive`, lies below it; `/` recursive matches every key):
//! 1. after a `Compacted` message nothing more arrives, and `Compacted{C}` is sent only
//!    when the next revision the stream needs is below `C` (history below `C` is gone);
//! 2. change messages arrive in strictly increasing revision order, none at or below a
//!    revision a previous progress message claimed, none below `start_revision`, none
//!    above the log's `head`; a revision delivered twice is reported as a *split revision*
//!    when the two messages' events are disjoint, else as a *duplicate*;
//! 3. a change message has at least one event, every event has `mod_revision` equal to the
//!    message's revision and a key the stream watches;
//! 4. when the log knows the revision (or is `complete`), the message's events equal
//!    exactly (as a multiset of key, type, value) the committed changes of that revision on
//!    matching keys: an extra event "never committed"; a missing one is a *split revision*
//!    if a later message of the same revision carries it, else an incomplete revision;
//! 5. no gaps: every revision of the log with a change on a matching key, from
//!    `start_revision` up to the revision of a change message, or up to and including the
//!    revision of a progress message, was delivered before that message;
//! 6. progress revisions never go backwards, never fall below a delivered revision, and
//!    never exceed `head`;
//! 7. every acknowledged write `(key, revision)` on a matching key with
//!    `revision >= start_revision` is delivered (an event on that key in the message of that
//!    revision), unless the stream ended with `Compacted` before reaching that revision.
//!
//! Then, across streams ("same history on every node"): for any revision R that one stream
//! delivered and another stream covers (R >= its start and R <= the last revision it
//! delivered or was told by progress), the two agree on the events of R for every key both
//! watch. This also checks revisions the log does not know when it is not `complete`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::history::{Call, History, Outcome};

/// Put or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Put,
    Delete,
}

/// One event of a change message (the API's `{"type", "kv": {key, value, mod_revision}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The event's `type`.
    pub kind: EventType,
    pub key: String,
    /// The new value of a put; `None` for a delete.
    pub value: Option<String>,
    pub mod_revision: u64,
}

impl WatchEvent {
    pub fn put(key: &str, value: &str, mod_revision: u64) -> WatchEvent {
        WatchEvent { kind: EventType::Put, key: key.into(), value: Some(value.into()), mod_revision }
    }
    pub fn delete(key: &str, mod_revision: u64) -> WatchEvent {
        WatchEvent { kind: EventType::Delete, key: key.into(), value: None, mod_revision }
    }
    fn triple(&self) -> (String, EventType, Option<String>) {
        (self.key.clone(), self.kind, if self.kind == EventType::Delete { None } else { self.value.clone() })
    }
}

/// One message of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// All events of one revision.
    Change { revision: u64, events: Vec<WatchEvent> },
    /// "Up to date through `revision`."
    Progress { revision: u64 },
    /// History the stream needs is gone; the stream ends.
    Compacted { compact_revision: u64 },
}

impl WatchMessage {
    pub fn change(revision: u64, events: Vec<WatchEvent>) -> WatchMessage {
        WatchMessage::Change { revision, events }
    }

    /// Parses one message in the API's JSON shape: `{"revision", "events": [{"type",
    /// "kv": {"key", "value" | "value_base64", "mod_revision"}}]}`, `{"progress":
    /// {"revision"}}` or `{"compacted": {"compact_revision"}}`. A `value_base64` becomes
    /// the value `base64:<text>`.
    pub fn from_json(v: &serde_json::Value) -> Result<WatchMessage, String> {
        if let Some(p) = v.get("progress") {
            let revision = p["revision"].as_u64().ok_or_else(|| format!("progress without revision: {v}"))?;
            return Ok(WatchMessage::Progress { revision });
        }
        if let Some(c) = v.get("compacted") {
            let compact_revision = c["compact_revision"]
                .as_u64()
                .ok_or_else(|| format!("compacted without compact_revision: {v}"))?;
            return Ok(WatchMessage::Compacted { compact_revision });
        }
        let revision = v["revision"].as_u64().ok_or_else(|| format!("change without revision: {v}"))?;
        let evs = v["events"].as_array().ok_or_else(|| format!("change without events: {v}"))?;
        let mut events = Vec::new();
        for e in evs {
            let kind = match e["type"].as_str() {
                Some("put") => EventType::Put,
                Some("delete") => EventType::Delete,
                _ => return Err(format!("event with bad type: {e}")),
            };
            let kv = &e["kv"];
            let key = kv["key"].as_str().ok_or_else(|| format!("event without kv.key: {e}"))?.to_string();
            let value = match (kv["value"].as_str(), kv["value_base64"].as_str()) {
                (Some(s), _) => Some(s.to_string()),
                (None, Some(b)) => Some(format!("base64:{b}")),
                _ => None,
            };
            let mod_revision =
                kv["mod_revision"].as_u64().ok_or_else(|| format!("event without mod_revision: {e}"))?;
            events.push(WatchEvent { kind, key, value, mod_revision });
        }
        Ok(WatchMessage::Change { revision, events })
    }
}

impl fmt::Display for WatchMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchMessage::Change { revision, events } => {
                write!(f, "change rev {revision}: [")?;
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match e.kind {
                        EventType::Put => {
                            write!(f, "put {} = {:?}", e.key, e.value.as_deref().unwrap_or(""))?
                        }
                        EventType::Delete => write!(f, "delete {}", e.key)?,
                    }
                    if e.mod_revision != *revision {
                        write!(f, " (mod_revision {})", e.mod_revision)?;
                    }
                }
                f.write_str("]")
            }
            WatchMessage::Progress { revision } => write!(f, "progress rev {revision}"),
            WatchMessage::Compacted { compact_revision } => {
                write!(f, "compacted (compact_revision {compact_revision})")
            }
        }
    }
}

/// What one watcher received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStream {
    /// A name for messages (e.g. "w3@node2").
    pub id: String,
    pub key_or_prefix: String,
    pub recursive: bool,
    /// The first revision the stream is responsible for (inclusive), as `?start_revision`.
    /// For a watch "from now", record the revision the server reported at creation plus 1.
    pub start_revision: u64,
    /// In arrival order.
    pub messages: Vec<WatchMessage>,
}

impl WatchStream {
    /// Whether the stream watches `key`.
    pub fn matches(&self, key: &str) -> bool {
        key_matches(&self.key_or_prefix, self.recursive, key)
    }
}

fn key_matches(prefix: &str, recursive: bool, key: &str) -> bool {
    if key == prefix {
        return true;
    }
    if !recursive {
        return false;
    }
    if prefix == "/" {
        return key.starts_with('/');
    }
    key.len() > prefix.len() && key.starts_with(prefix) && key.as_bytes()[prefix.len()] == b'/'
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(String),
    Delete,
}

/// A change that committed at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedChange {
    pub revision: u64,
    pub key: String,
    pub change: Change,
}

impl CommittedChange {
    fn triple(&self) -> (String, EventType, Option<String>) {
        match &self.change {
            Change::Put(v) => (self.key.clone(), EventType::Put, Some(v.clone())),
            Change::Delete => (self.key.clone(), EventType::Delete, None),
        }
    }
}

impl fmt::Display for CommittedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.change {
            Change::Put(v) => write!(f, "rev {}: put {} = {v:?}", self.revision, self.key),
            Change::Delete => write!(f, "rev {}: delete {}", self.revision, self.key),
        }
    }
}

/// The ground truth: changes that committed.
///
/// A revision that appears in `changes` is taken to be listed in full (all its changes).
/// Revisions up to `head` that do not appear either committed no key change (lock, lease
/// or election changes take revisions too) or, when `complete` is false, are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommittedLog {
    pub changes: Vec<CommittedChange>,
    /// The store revision at the end of the run: nothing committed above it.
    pub head: u64,
    /// Every key change at every revision up to `head` is in `changes`.
    pub complete: bool,
}

impl CommittedLog {
    /// An empty, complete log.
    pub fn new(head: u64) -> CommittedLog {
        CommittedLog { changes: Vec::new(), head, complete: true }
    }
    pub fn put(mut self, revision: u64, key: &str, value: &str) -> CommittedLog {
        self.changes.push(CommittedChange { revision, key: key.into(), change: Change::Put(value.into()) });
        self
    }
    pub fn delete(mut self, revision: u64, key: &str) -> CommittedLog {
        self.changes.push(CommittedChange { revision, key: key.into(), change: Change::Delete });
        self
    }

    /// From the acknowledged writes of a register history (`Ok` writes and CAS with a
    /// revision) plus a final linearizable dump `(key, value, mod_revision)` taken at
    /// revision `head`. The log is `complete` only if the history has no `Unknown` write or
    /// CAS (one of those may have committed and been overwritten unseen). Fails if the two
    /// sources disagree about a (revision, key).
    pub fn from_history(
        h: &History,
        dump: &[(String, String, u64)],
        head: u64,
    ) -> Result<CommittedLog, String> {
        let mut seen: HashMap<(u64, String), String> = HashMap::new();
        let mut log = CommittedLog::new(head);
        let mut add = |rev: u64, key: &str, value: &str, log: &mut CommittedLog| -> Result<(), String> {
            match seen.get(&(rev, key.to_string())) {
                Some(v) if v == value => Ok(()),
                Some(v) => Err(format!("revision {rev} on {key}: acknowledged {v:?} but also {value:?}")),
                None => {
                    seen.insert((rev, key.to_string()), value.to_string());
                    log.changes.push(CommittedChange {
                        revision: rev,
                        key: key.into(),
                        change: Change::Put(value.into()),
                    });
                    Ok(())
                }
            }
        };
        for op in &h.ops {
            let value = match &op.call {
                Call::Write { value } | Call::Cas { value, .. } => value,
                Call::Read => continue,
            };
            match op.outcome {
                Outcome::Ok { revision: Some(r), .. } => add(r, &op.key, value, &mut log)?,
                Outcome::Unknown => log.complete = false,
                _ => {}
            }
        }
        for (key, value, rev) in dump {
            add(*rev, key, value, &mut log)?;
        }
        log.changes.sort_by_key(|c| c.revision);
        Ok(log)
    }
}

/// Which rule a stream broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    MessageAfterCompacted,
    UnneededCompaction,
    DuplicateRevision,
    SplitRevision,
    OutOfOrder,
    BeforeStart,
    BeyondHead,
    AfterProgress,
    EmptyChange,
    WrongModRevision,
    UnwatchedKey,
    NeverCommitted,
    IncompleteRevision,
    Gap,
    ProgressBackwards,
    AcknowledgedNotSeen,
    StreamsDisagree,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::MessageAfterCompacted => "message after compacted",
            ViolationKind::UnneededCompaction => "compacted although history was available",
            ViolationKind::DuplicateRevision => "duplicate revision",
            ViolationKind::SplitRevision => "split revision",
            ViolationKind::OutOfOrder => "out-of-order revision",
            ViolationKind::BeforeStart => "revision before start_revision",
            ViolationKind::BeyondHead => "revision beyond the head of the log",
            ViolationKind::AfterProgress => "change at or below a progress revision",
            ViolationKind::EmptyChange => "change message without events",
            ViolationKind::WrongModRevision => "event mod_revision differs from its message's revision",
            ViolationKind::UnwatchedKey => "event for a key the stream does not watch",
            ViolationKind::NeverCommitted => "event that never committed",
            ViolationKind::IncompleteRevision => "revision delivered without all its events",
            ViolationKind::Gap => "gap (missing revision)",
            ViolationKind::ProgressBackwards => "progress went backwards",
            ViolationKind::AcknowledgedNotSeen => "acknowledged write never seen",
            ViolationKind::StreamsDisagree => "streams disagree on a revision",
        })
    }
}

/// A broken rule: which stream, why, and the messages around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub stream: String,
    pub reason: String,
    pub context: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "watch {}: {}: {}", self.stream, self.kind, self.reason)?;
        f.write_str(&self.context)
    }
}

impl std::error::Error for Violation {}

/// What a successful check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub streams: usize,
    pub messages: usize,
    pub changes: usize,
    pub events: usize,
    pub progress: usize,
    pub compacted: usize,
    /// (stream, acknowledged write) pairs verified as delivered.
    pub acknowledged_seen: usize,
    /// Revisions compared between two streams.
    pub cross_checked: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} streams, {} messages ({} changes, {} events, {} progress, {} compacted), {} acknowledged deliveries, {} cross-checks",
            self.streams,
            self.messages,
            self.changes,
            self.events,
            self.progress,
            self.compacted,
            self.acknowledged_seen,
            self.cross_checked
        )
    }
}

/// Per-stream outcome used by the cross-stream check.
struct Coverage {
    /// Delivered revision -> events.
    delivered: BTreeMap<u64, Vec<WatchEvent>>,
    /// Every revision in `start..=covered` is accounted for.
    covered: u64,
}

type Triple = (String, EventType, Option<String>);

fn sorted(mut v: Vec<Triple>) -> Vec<Triple> {
    v.sort();
    v
}

/// `a - b` as multisets.
fn minus(a: &[Triple], b: &[Triple]) -> Vec<Triple> {
    let mut rest = b.to_vec();
    let mut out = Vec::new();
    for x in a {
        match rest.iter().position(|y| y == x) {
            Some(p) => {
                rest.swap_remove(p);
            }
            None => out.push(x.clone()),
        }
    }
    out
}

fn show_triples(t: &[Triple]) -> String {
    t.iter()
        .map(|(k, kind, v)| match kind {
            EventType::Put => format!("put {k} = {:?}", v.as_deref().unwrap_or("")),
            EventType::Delete => format!("delete {k}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks every stream against the log and the acknowledged writes, then the streams
/// against each other. See the module documentation for the rules.
pub fn check_watches(
    streams: &[WatchStream],
    committed: &CommittedLog,
    acknowledged: &[(String, u64)],
) -> Result<Report, Violation> {
    let mut by_rev: BTreeMap<u64, Vec<&CommittedChange>> = BTreeMap::new();
    for c in &committed.changes {
        by_rev.entry(c.revision).or_default().push(c);
    }
    let mut report = Report { streams: streams.len(), ..Default::default() };
    let mut coverage = Vec::new();
    for s in streams {
        coverage.push(check_stream(s, committed, &by_rev, acknowledged, &mut report)?);
    }
    cross_check(streams, &coverage, &mut report)?;
    Ok(report)
}

fn context(
    s: &WatchStream,
    at: usize,
    log: &BTreeMap<u64, Vec<&CommittedChange>>,
    rev: Option<u64>,
) -> String {
    let mut out = format!(
        "Stream {} (watching {}{}, from revision {}), messages {}..{} of {}:\n",
        s.id,
        s.key_or_prefix,
        if s.recursive { " recursively" } else { "" },
        s.start_revision,
        at.saturating_sub(4),
        (at + 3).min(s.messages.len()),
        s.messages.len()
    );
    for i in at.saturating_sub(4)..(at + 3).min(s.messages.len()) {
        out.push_str(&format!("  {} [{i}] {}\n", if i == at { ">>" } else { "  " }, s.messages[i]));
    }
    if let Some(r) = rev {
        let near: Vec<&&CommittedChange> = log
            .range(r.saturating_sub(3)..=r.saturating_add(3))
            .flat_map(|(_, cs)| cs.iter())
            .filter(|c| s.matches(&c.key))
            .collect();
        out.push_str(&format!("Committed changes on watched keys near revision {r}:\n"));
        if near.is_empty() {
            out.push_str("  (none)\n");
        }
        for c in near {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out
}

fn check_stream(
    s: &WatchStream,
    log: &CommittedLog,
    by_rev: &BTreeMap<u64, Vec<&CommittedChange>>,
    acknowledged: &[(String, u64)],
    report: &mut Report,
) -> Result<Coverage, Violation> {
    let fail = |kind, at: usize, rev: Option<u64>, reason: String| Violation {
        kind,
        stream: s.id.clone(),
        reason,
        context: context(s, at, by_rev, rev),
    };
    // The log's revisions with a change on a watched key, from the start on.
    let relevant: Vec<u64> = by_rev
        .range(s.start_revision..)
        .filter(|(_, cs)| cs.iter().any(|c| s.matches(&c.key)))
        .map(|(&r, _)| r)
        .collect();
    let expected_at = |r: u64| -> Vec<Triple> {
        sorted(
            by_rev
                .get(&r)
                .map(|cs| cs.iter().filter(|c| s.matches(&c.key)).map(|c| c.triple()).collect())
                .unwrap_or_default(),
        )
    };
    let missing_between = |from_excl: u64, to_incl: u64| -> Option<u64> {
        if to_incl <= from_excl {
            return None;
        }
        let i = relevant.partition_point(|&r| r <= from_excl);
        relevant.get(i).copied().filter(|&r| r <= to_incl)
    };

    let mut covered = s.start_revision.saturating_sub(1);
    let mut last_change: Option<u64> = None;
    let mut last_progress: Option<u64> = None;
    let mut delivered: BTreeMap<u64, (usize, Vec<WatchEvent>)> = BTreeMap::new();
    let mut ended: Option<(usize, u64)> = None;

    for (i, msg) in s.messages.iter().enumerate() {
        report.messages += 1;
        if let Some((j, c)) = ended {
            return Err(fail(
                ViolationKind::MessageAfterCompacted,
                i,
                None,
                format!("message [{i}] arrived after the stream ended with compacted (compact_revision {c}) at [{j}]"),
            ));
        }
        match msg {
            WatchMessage::Change { revision: r, events } => {
                let r = *r;
                report.changes += 1;
                report.events += events.len();
                let got: Vec<Triple> = sorted(events.iter().map(WatchEvent::triple).collect());
                if let Some((j, prev)) = delivered.get(&r) {
                    let prev: Vec<Triple> = sorted(prev.iter().map(WatchEvent::triple).collect());
                    let overlap = minus(&got, &minus(&got, &prev));
                    let kind = if overlap.is_empty() {
                        ViolationKind::SplitRevision
                    } else {
                        ViolationKind::DuplicateRevision
                    };
                    let what = if overlap.is_empty() {
                        "the events of one revision were split across two messages"
                    } else {
                        "the revision was delivered twice"
                    };
                    return Err(fail(
                        kind,
                        i,
                        Some(r),
                        format!("revision {r} arrived in message [{j}] and again in message [{i}]: {what}"),
                    ));
                }
                if let Some(l) = last_change {
                    if r < l {
                        return Err(fail(
                            ViolationKind::OutOfOrder,
                            i,
                            Some(r),
                            format!("revision {r} arrived after revision {l}; changes must arrive in revision order"),
                        ));
                    }
                }
                if let Some(p) = last_progress {
                    if r <= p {
                        return Err(fail(
                            ViolationKind::AfterProgress,
                            i,
                            Some(r),
                            format!("revision {r} arrived after a progress message claimed the stream up to date through {p}"),
                        ));
                    }
                }
                if r < s.start_revision {
                    return Err(fail(
                        ViolationKind::BeforeStart,
                        i,
                        Some(r),
                        format!("revision {r} is below the stream's start_revision {}", s.start_revision),
                    ));
                }
                if r > log.head {
                    return Err(fail(
                        ViolationKind::BeyondHead,
                        i,
                        Some(r),
                        format!(
                            "revision {r} is above the last revision of the run ({}): it never committed",
                            log.head
                        ),
                    ));
                }
                if events.is_empty() {
                    return Err(fail(
                        ViolationKind::EmptyChange,
                        i,
                        Some(r),
                        format!("revision {r} came with no events"),
                    ));
                }
                for e in events {
                    if e.mod_revision != r {
                        return Err(fail(
                            ViolationKind::WrongModRevision,
                            i,
                            Some(r),
                            format!(
                                "the event on {} has mod_revision {} in the message of revision {r}",
                                e.key, e.mod_revision
                            ),
                        ));
                    }
                    if !s.matches(&e.key) {
                        return Err(fail(
                            ViolationKind::UnwatchedKey,
                            i,
                            Some(r),
                            format!(
                                "revision {r} carries an event on {}, which the stream does not watch",
                                e.key
                            ),
                        ));
                    }
                }
                if let Some(g) = missing_between(covered, r - 1) {
                    let later = s.messages[i + 1..]
                        .iter()
                        .position(|m| matches!(m, WatchMessage::Change { revision, .. } if *revision == g));
                    if let Some(p) = later {
                        return Err(fail(
                            ViolationKind::OutOfOrder,
                            i,
                            Some(g),
                            format!(
                                "revision {r} arrived in message [{i}] before revision {g}, which came later in message [{}]",
                                i + 1 + p
                            ),
                        ));
                    }
                    return Err(fail(
                        ViolationKind::Gap,
                        i,
                        Some(g),
                        format!(
                            "revision {g} ({}) was never delivered, but revision {r} was",
                            show_triples(&expected_at(g))
                        ),
                    ));
                }
                if log.complete || by_rev.contains_key(&r) {
                    let want = expected_at(r);
                    let extra = minus(&got, &want);
                    if !extra.is_empty() {
                        let reason = if want.is_empty() {
                            format!(
                                "revision {r} delivered {}, but it committed no change to a watched key",
                                show_triples(&extra)
                            )
                        } else {
                            format!(
                                "revision {r} delivered {} which did not commit (committed at {r}: {})",
                                show_triples(&extra),
                                show_triples(&want)
                            )
                        };
                        return Err(fail(ViolationKind::NeverCommitted, i, Some(r), reason));
                    }
                    let missing = minus(&want, &got);
                    if !missing.is_empty() {
                        let later = s.messages[i + 1..].iter().position(
                            |m| matches!(m, WatchMessage::Change { revision, .. } if *revision == r),
                        );
                        return Err(match later {
                            Some(p) => fail(
                                ViolationKind::SplitRevision,
                                i,
                                Some(r),
                                format!(
                                    "revision {r} is split: message [{i}] lacks {} which arrived in message [{}]; every event of one revision must arrive together",
                                    show_triples(&missing),
                                    i + 1 + p
                                ),
                            ),
                            None => fail(
                                ViolationKind::IncompleteRevision,
                                i,
                                Some(r),
                                format!("revision {r} was delivered without {}", show_triples(&missing)),
                            ),
                        });
                    }
                }
                covered = covered.max(r);
                last_change = Some(r);
                delivered.insert(r, (i, events.clone()));
            }
            WatchMessage::Progress { revision: p } => {
                let p = *p;
                report.progress += 1;
                if let Some(l) = last_change {
                    if p < l {
                        return Err(fail(
                            ViolationKind::ProgressBackwards,
                            i,
                            Some(p),
                            format!("progress {p} is below revision {l}, which was already delivered"),
                        ));
                    }
                }
                if let Some(q) = last_progress {
                    if p < q {
                        return Err(fail(
                            ViolationKind::ProgressBackwards,
                            i,
                            Some(p),
                            format!("progress {p} came after progress {q}"),
                        ));
                    }
                }
                if p > log.head {
                    return Err(fail(
                        ViolationKind::BeyondHead,
                        i,
                        Some(p),
                        format!("progress {p} is above the last revision of the run ({})", log.head),
                    ));
                }
                if let Some(g) = missing_between(covered, p) {
                    return Err(fail(
                        ViolationKind::Gap,
                        i,
                        Some(g),
                        format!(
                            "progress {p} claims the stream up to date, but revision {g} ({}) was never delivered",
                            show_triples(&expected_at(g))
                        ),
                    ));
                }
                covered = covered.max(p);
                last_progress = Some(p);
            }
            WatchMessage::Compacted { compact_revision: c } => {
                let c = *c;
                report.compacted += 1;
                let next = covered + 1;
                if next >= c {
                    return Err(fail(
                        ViolationKind::UnneededCompaction,
                        i,
                        None,
                        format!(
                            "compacted with compact_revision {c}, but the next revision the stream needs, {next}, is not below it (still available)"
                        ),
                    ));
                }
                ended = Some((i, c));
            }
        }
    }

    for (key, rev) in acknowledged {
        if !s.matches(key) || *rev < s.start_revision {
            continue;
        }
        let seen = delivered.get(rev).is_some_and(|(_, evs)| evs.iter().any(|e| &e.key == key));
        if seen {
            report.acknowledged_seen += 1;
            continue;
        }
        if ended.is_some() && *rev > covered {
            continue;
        }
        let at = s.messages.len().saturating_sub(1);
        let how = if *rev <= covered {
            "although the stream covered that revision".to_string()
        } else if covered < s.start_revision {
            "the stream delivered nothing, and did not end compacted".to_string()
        } else {
            format!("the stream covered revisions only up to {covered}, and did not end compacted")
        };
        return Err(fail(
            ViolationKind::AcknowledgedNotSeen,
            at,
            Some(*rev),
            format!("the acknowledged write to {key} at revision {rev} was never delivered ({how})"),
        ));
    }

    Ok(Coverage { delivered: delivered.into_iter().map(|(r, (_, e))| (r, e)).collect(), covered })
}

fn cross_check(streams: &[WatchStream], cov: &[Coverage], report: &mut Report) -> Result<(), Violation> {
    for a in 0..streams.len() {
        for b in 0..streams.len() {
            if a == b {
                continue;
            }
            let (sa, sb) = (&streams[a], &streams[b]);
            for (&r, evs) in &cov[a].delivered {
                if r < sb.start_revision || r > cov[b].covered {
                    continue;
                }
                // Only a's events on keys b watches; b's events on keys a watches.
                let ea: Vec<Triple> =
                    sorted(evs.iter().filter(|e| sb.matches(&e.key)).map(WatchEvent::triple).collect());
                if ea.is_empty() {
                    continue;
                }
                let eb: Vec<Triple> = sorted(
                    cov[b]
                        .delivered
                        .get(&r)
                        .map(|v| v.iter().filter(|e| sa.matches(&e.key)).map(WatchEvent::triple).collect())
                        .unwrap_or_default(),
                );
                report.cross_checked += 1;
                if ea != eb {
                    let at = sb
                        .messages
                        .iter()
                        .position(|m| match m {
                            WatchMessage::Change { revision, .. } => *revision >= r,
                            WatchMessage::Progress { revision } => *revision >= r,
                            WatchMessage::Compacted { .. } => true,
                        })
                        .unwrap_or(sb.messages.len().saturating_sub(1));
                    let mut context =
                        format!("Stream {} delivered at revision {r}: {}\n", sa.id, show_triples(&ea));
                    context.push_str(&format!(
                        "Stream {} (covering revision {r}) delivered: {}\n",
                        sb.id,
                        if eb.is_empty() { "nothing".to_string() } else { show_triples(&eb) }
                    ));
                    let empty = BTreeMap::new();
                    context.push_str(&self::context(sb, at, &empty, None));
                    return Err(Violation {
                        kind: ViolationKind::StreamsDisagree,
                        stream: sb.id.clone(),
                        reason: format!(
                            "streams {} and {} disagree on revision {r} for keys both watch (every node must serve the same history)",
                            sa.id, sb.id
                        ),
                        context,
                    });
                }
            }
        }
    }
    Ok(())
}
