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
"""

import os

import schemathesis

MAX_REVISION = int(os.environ.get("PALISADE_FUZZ_REVISION", "1"))
_counter = 0


def fold(revision):
    """A revision above MAX_REVISION folded into 1..MAX_REVISION, in the same spelling
    (an int, a whole float such as `153.0`, or the digits of a query value)."""
    if isinstance(revision, bool):
        return revision
    if isinstance(revision, str) and revision.isdigit() and int(revision) > MAX_REVISION:
        return str(1 + int(revision) % MAX_REVISION)
    if isinstance(revision, float) and revision.is_integer() and revision > MAX_REVISION:
        return float(1 + int(revision) % MAX_REVISION)
    if isinstance(revision, int) and revision > MAX_REVISION:
        return 1 + revision % MAX_REVISION
    return revision


def _fold_query(query):
    # The reads' parameters are one exploded object parameter (`read`): the query may hold
    # it as is or spread out.
    for q in (query, query.get("read")):
        if isinstance(q, dict):
            q.pop("after", None)
            if "revision" in q:
                q["revision"] = fold(q["revision"])


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
            kept.append(op)
            budget -= 1
        body[name] = kept


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
    key = (case.path_parameters or {}).get("key")
    if isinstance(key, str):
        case.path_parameters["key"] = key.replace("%", "%25")
    if method == "GET" and path == "/v1/kv/{key}" and isinstance(case.query, dict):
        _fold_query(case.query)
    elif method == "POST" and path == "/v1/maintenance/compact" and isinstance(case.body, dict):
        if "revision" in case.body:
            case.body["revision"] = fold(case.body["revision"])
    elif method == "POST" and path == "/v1/txn" and isinstance(case.body, dict):
        _fit_txn(case.body)
