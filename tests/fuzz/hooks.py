"""Schemathesis hooks for tests/fuzz/run.sh: the rules api/openapi.yaml states in prose
because no schema can (they depend on the store, or span list items). Each hook keeps
generated data inside one such rule, so that a refusal the fuzzer reports is a real
disagreement between the spec and the server.

- `revision` (GET query, compact body) must not be above the current revision (else 400
  `future_revision`). run.sh writes PALISADE_FUZZ_REVISION keys first, so revisions up to
  that always exist; larger ones are folded into 1..that.
- `after` is a page token the server issued; a made-up one is 400. It is left out (the
  paging itself is covered by tests/it/openapi_sync.rs).
- Schemathesis decodes `%XX` in a generated path parameter before encoding it; `%` is
  pre-encoded so the key sent is the key generated.
- Each Idempotency-Key gets a counter appended, so a write is not a 422 for reusing the
  key of another request (replays and conflicts are covered by tests/it/openapi_sync.rs).
- A transaction branch may write each key once (no key twice, no key and a recursive
  delete above it), with at most 128 operations in both branches together: operations
  past either rule are dropped.
- A lease TTL must come to a whole number of milliseconds within the node's bounds
  (`--lease-min-ttl-ms`, `--lease-max-ttl-ms`; run.sh leaves them at their defaults, 2 s
  and 24 h): a TTL outside them is replaced by a valid one of the same spelling (a string
  with a unit, or a number of seconds).
- Lease ids (in lease paths, and the `lease` of puts and of transaction puts) are folded
  into 1..2 x PALISADE_FUZZ_LEASES: run.sh grants the leases 1..PALISADE_FUZZ_LEASES
  first, so about half of the ids name a lease that exists (until the fuzzer revokes it),
  and keepalives, reads, revokes and puts under leases get past 404.
- A long-poll (`GET /v1/kv/{key}?wait`) waits up to its `timeout` (30 s by default) for a
  change: every long-poll gets a `timeout` of 1 to 50 ms (in the spelling generated: with
  a unit, or a bare number of seconds), so it answers `changed: false` quickly when
  nothing changed. Its `after_revision` is folded like `revision` (it must not be above
  the current revision; below the floor it is 410, a documented reply). The bounds of
  `timeout` (1 ms to 10 min) are checked by tests/it/openapi_sync.rs.
- A watch (`GET /v1/watch/{key}`) never ends while it is live, and a fuzzer reads every
  reply whole: every watch starts below the compaction floor, which run.sh raises to
  PALISADE_FUZZ_FLOOR before fuzzing (the fuzzer's own compactions only raise it), so its
  stream is one `compacted` message and ends. `start_revision` is folded into
  1..PALISADE_FUZZ_FLOOR - 1 (and set when absent: a watch from now would never end), and a
  `Last-Event-ID` (which wins over it) into 0..PALISADE_FUZZ_FLOOR - 2. So the fuzzer covers
  every parameter's acceptance, both framings (every other watch asks for NDJSON), the
  headers and the `compacted` message, not live streams: those, and the refusals, are
  covered by tests/it/openapi_sync.rs and tests/it/http_api/watch.rs. A `progress`
  interval outside 100 ms to 1 h is replaced by a valid one of the same spelling.
- An integer in a body from 2^53 up must be spelled with digits only (src/wire/whole.rs:
  a float spelling may already have been rounded to another integer, and is refused, as
  api/openapi.yaml says in prose): a whole float from 2^53 up anywhere in a body is sent as
  the integer it is.
- A lock acquire or an election campaign waits up to its `wait` (30 s by default, up to
  10 min) when the lock is held: every one gets a `wait` of 0 to 50 ms (in the spelling
  generated). Its `ttl` is fitted like a lease's, and its `lease` folded like the ids
  above. (An election's observe stream never ends: run.sh leaves it out.)
- A member's URLs (adding or moving a member) must be `http(s)://host:port`, and a peer URL
  must have the scheme of the node's peer listener (`http://` here): a generated string that
  is not such a URL is replaced by one (a private address that nothing listens on, so an
  added learner never answers). The server's URL rules and refusals are covered by
  tests/it/membership_process.rs. A member id in a path generated as a whole float is
  sent with digits.
"""

import math
import os
import re

import schemathesis

MAX_REVISION = int(os.environ.get("PALISADE_FUZZ_REVISION", "1"))
# run.sh compacts to this revision before fuzzing: every watch starts below it.
FLOOR = int(os.environ.get("PALISADE_FUZZ_FLOOR", "2"))
LEASES = int(os.environ.get("PALISADE_FUZZ_LEASES", "0"))
# The lease TTL bounds of `palisade serve` by default (--lease-min-ttl-ms, --lease-max-ttl-ms).
MIN_TTL_MS, MAX_TTL_MS = 2_000, 86_400_000
_counter = 0


def fold(revision, most=None):
    """A number above `most` (default MAX_REVISION) folded into 1..most, in the same
    spelling (an int, a whole float such as `153.0`, or the digits of a query value)."""
    most = MAX_REVISION if most is None else most
    if isinstance(revision, bool):
        return revision
    if isinstance(revision, str) and revision.isdigit() and int(revision) > most:
        return str(1 + int(revision) % most)
    if isinstance(revision, float) and revision.is_integer() and revision > most:
        return float(1 + int(revision) % most)
    if isinstance(revision, int) and revision > most:
        return 1 + revision % most
    return revision


def _fold_lease(lease):
    return fold(lease, 2 * LEASES) if LEASES else lease


_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


# A watch's NDJSON stream is one JSON object per line; in this fuzz setup every watch ends
# after its one `compacted` message (see `_fit_watch`), so the stream is that message,
# which the media type's schema (one item) describes. More lines are reported as a failure
# to deserialize.
@schemathesis.deserializer("application/x-ndjson")
def _ndjson(ctx, response):
    import json

    lines = response.content.decode("utf-8").split("\n")
    if lines[-1] != "" or len(lines) != 2:
        raise ValueError(f"expected one NDJSON line ending with a newline, got {response.content!r}")
    return json.loads(lines[0])


def _ttl_ms(ttl):
    """The milliseconds a TTL comes to, computed as the server does (src/wire/lease.rs:
    the same IEEE operations), or None when it refuses the spelling or the value."""
    if isinstance(ttl, bool):
        return None
    if isinstance(ttl, (int, float)):
        number, unit = float(ttl), 1000.0
    elif isinstance(ttl, str):
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", ttl)
        if not m:
            return None
        number, unit = float(m.group(1)), _UNIT_MS[m.group(2)]
    else:
        return None
    ms = number * unit
    if not math.isfinite(ms) or ms < 0:
        return None
    whole = math.floor(ms + 0.5)
    if abs(ms - whole) > 1e-6:
        return None
    return whole


def _query_ms(value):
    """The milliseconds a query duration (`progress`, `timeout`) comes to, computed as the
    server does (src/http/query.rs: a bare number is seconds, else as a TTL), or None."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value):
        return _ttl_ms(float(value))
    return _ttl_ms(value)


def _next():
    global _counter
    _counter += 1
    return _counter


def _fit_progress(progress):
    """`progress` when the node takes it (100 ms to 1 h), else a valid one of the same
    spelling."""
    ms = _query_ms(progress)
    if ms is not None and 100 <= ms <= 3_600_000:
        return progress
    ms = 100 + sum(map(ord, str(progress))) % 3000
    return f"{ms / 1000}" if re.fullmatch(r"[0-9.]+", str(progress)) else f"{ms}ms"


def _short_timeout(timeout):
    """A long-poll timeout of 1 to 50 ms, spelled as `timeout` was (a bare number of
    seconds, or with a unit)."""
    ms = 1 + _next() % 50
    if isinstance(timeout, str) and re.fullmatch(r"[0-9.]+", timeout):
        return f"0.{ms:03d}"
    return f"{ms}ms"


def _truthy(flag):
    return flag is True or (isinstance(flag, str) and flag.lower() in ("", "true", "1"))


def _below_floor(value, room):
    """A whole number in 0..room - 1, from `value` (whatever was generated), in its spelling."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = _next()
    n = abs(n) % room
    return str(n) if isinstance(value, str) else n


def _fit_watch(case):
    query = case.query if isinstance(case.query, dict) else {}
    case.query = query
    # Below the floor: 1..FLOOR - 1.
    start = query.get("start_revision")
    n = 1 + int(_below_floor(_next() if start is None else start, FLOOR - 1))
    query["start_revision"] = str(n) if isinstance(start, str) else n
    if "progress" in query:
        query["progress"] = _fit_progress(query["progress"])
    headers = case.headers if isinstance(case.headers, dict) else {}
    case.headers = headers
    for name in [h for h in headers if h.lower() == "last-event-id"]:
        # It resumes at the revision after it: 0..FLOOR - 2 starts below the floor too.
        headers[name] = str(_below_floor(headers[name], FLOOR - 1))
    if _next() % 2:
        headers["Accept"] = "application/x-ndjson"


def _fit_ttl(ttl):
    """`ttl` when the node takes it, else a valid TTL of the same spelling."""
    ms = _ttl_ms(ttl)
    if ms is not None and MIN_TTL_MS <= ms <= MAX_TTL_MS:
        return ttl
    seconds = MIN_TTL_MS // 1000 + sum(map(ord, str(ttl))) % 3600
    return f"{seconds}s" if isinstance(ttl, str) else seconds


def _short_wait(wait):
    """A lock wait of 0 to 50 ms, spelled as `wait` was (a number of seconds, or a string
    with a unit)."""
    ms = _next() % 51
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        return ms / 1000
    return f"{ms}ms"


def _fit_acquire(body):
    if not isinstance(body, dict):
        return
    body["wait"] = _short_wait(body.get("wait"))
    if body.get("ttl") is not None:
        body["ttl"] = _fit_ttl(body["ttl"])
    if body.get("lease") is not None:
        body["lease"] = _fold_lease(body["lease"])


def _exact_integers(value):
    """`value` with every whole float from 2^53 up spelled as an integer, recursively."""
    if isinstance(value, float) and value.is_integer() and value >= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _exact_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact_integers(v) for v in value]
    return value


def _fit_put(body):
    if isinstance(body, dict) and "lease" in body:
        body["lease"] = _fold_lease(body["lease"])


def _fold_query(query):
    # The reads' parameters are one exploded object parameter (`read`): the query may hold
    # it as is or spread out.
    for q in (query, query.get("read")):
        if isinstance(q, dict):
            q.pop("after", None)
            if "revision" in q:
                q["revision"] = fold(q["revision"])
            if "after_revision" in q:
                q["after_revision"] = fold(q["after_revision"])
            if _truthy(q.get("wait", False)):
                q["timeout"] = _short_timeout(q.get("timeout"))


def _within(key, root):
    return key == root or key.startswith(root.rstrip("/") + "/")


def _overlap(a, b):
    (ka, kinda), (kb, kindb) = a, b
    if kinda == "child" and kindb == "child":
        return False
    if kinda == "child":
        return kindb == "tree" and _within(ka, kb)
    if kindb == "child":
        return kinda == "tree" and _within(kb, ka)
    if kinda == "key" and kindb == "key":
        return ka == kb
    if kinda == "tree" and kindb == "tree":
        return _within(ka, kb) or _within(kb, ka)
    tree, key = (ka, kb) if kinda == "tree" else (kb, ka)
    return _within(key, tree)


def _targets(branch):
    for op in branch:
        if not isinstance(op, dict):
            continue
        if isinstance(op.get("put"), dict):
            put = op["put"]
            yield (put.get("key"), "child" if put.get("sequential") else "key")
        elif isinstance(op.get("delete"), dict):
            delete = op["delete"]
            yield (delete.get("key"), "tree" if delete.get("recursive") else "key")


def _fit_txn(body):
    """Drops the operations that break the branch rule (or pass the 128 in all)."""
    budget = 128
    for name in ("success", "failure"):
        branch = body.get(name)
        if not isinstance(branch, list):
            continue
        kept, seen = [], []
        for op in branch:
            target = next(_targets([op]), None)
            if target is not None and isinstance(target[0], str):
                if any(_overlap(target, other) for other in seen):
                    continue
                seen.append(target)
            if budget == 0:
                break
            if isinstance(op, dict):
                _fit_put(op.get("put"))
            kept.append(op)
            budget -= 1
        body[name] = kept


def _fit_member_urls(body):
    """Each of a member change's URLs that the server would refuse, replaced by a valid one."""
    import urllib.parse

    for name, scheme, port in (("peer_url", "http", 7380), ("client_url", "http", 7379)):
        v = body.get(name)
        if not isinstance(v, str):
            continue
        try:
            u = urllib.parse.urlsplit(v)
            ok = (u.scheme == scheme and u.hostname and re.fullmatch(r"[A-Za-z0-9.-]+", u.hostname)
                  and u.port is not None and 0 < u.port < 65536 and u.path in ("", "/")
                  and not (u.query or u.fragment or u.username or u.password))
        except ValueError:
            ok = False
        if not ok:
            body[name] = f"{scheme}://10.9.{sum(map(ord, v)) % 250 + 1}.1:{port}"


# `before_call` runs in every phase (the coverage phase does not use the map/filter hooks),
# on the case about to be sent.
@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method, path = case.operation.method.upper(), case.operation.path
    # Schemathesis percent-decodes a path parameter before encoding it (so a generated key
    # holding `%08` would reach the server as U+0008): spell `%` as `%25`, which it decodes
    # back to `%` and then encodes, so the server sees the key that was generated.
    # Hypothesis draws short Idempotency-Keys again and again, so most writes would be 422
    # replays of another request; a counter makes each one new (keeping it 1-128 printable).
    headers = case.headers or {}
    for name in [n for n in headers if n.lower() == "idempotency-key"]:
        if isinstance(headers[name], str):
            global _counter
            _counter += 1
            headers[name] = f"{headers[name][:100]}-{_counter}"
    if isinstance(case.body, (dict, list)):
        case.body = _exact_integers(case.body)
    key = (case.path_parameters or {}).get("key")
    if isinstance(key, str):
        case.path_parameters["key"] = key.replace("%", "%25")
    if "id" in (case.path_parameters or {}) and path.startswith("/v1/leases/"):
        case.path_parameters["id"] = _fold_lease(case.path_parameters["id"])
    if method == "GET" and path == "/v1/kv/{key}" and isinstance(case.query, dict):
        _fold_query(case.query)
    elif method == "GET" and path == "/v1/watch/{key}":
        _fit_watch(case)
    elif method in ("PUT", "POST") and path == "/v1/kv/{key}":
        _fit_put(case.body)
    elif method == "POST" and path == "/v1/leases" and isinstance(case.body, dict):
        if "ttl" in case.body:
            case.body["ttl"] = _fit_ttl(case.body["ttl"])
    elif method == "POST" and path == "/v1/maintenance/compact" and isinstance(case.body, dict):
        if "revision" in case.body:
            case.body["revision"] = fold(case.body["revision"])
    elif method == "POST" and path == "/v1/txn" and isinstance(case.body, dict):
        _fit_txn(case.body)
    elif method == "POST" and path in ("/v1/locks/{name}", "/v1/elections/{name}/campaign"):
        _fit_acquire(case.body)
    elif method in ("POST", "PUT") and path in ("/v1/cluster/members", "/v1/cluster/members/{id}"):
        if isinstance(case.body, dict):
            _fit_member_urls(case.body)
    if path.startswith("/v1/cluster/members/") and isinstance((case.path_parameters or {}).get("id"), float):
        # A member id in a path is spelled with digits (a float spelling of a large integer
        # may already be another integer).
        if case.path_parameters["id"].is_integer():
            case.path_parameters["id"] = int(case.path_parameters["id"])
