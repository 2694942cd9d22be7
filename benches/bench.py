#!/usr/bin/env python3
"""benches/bench.py: the HTTP/JSON and reporting side of benches/run.sh (stdlib only).

  bench.py leader palisade|etcd URL...   print the leader's URL once every member is ready
                                         and all agree on one leader; exit 1 otherwise
  bench.py preload palisade|etcd URL N [PREFIX] [GROUPS]
                                         write keys PREFIXk000000000000000 .. N-1 (the wrk
                                         key space; BENCH_PREFIX of the wrk scripts); with
                                         GROUPS > 0, key i is PREFIXg<i mod GROUPS>/k... (their
                                         BENCH_GROUPS: the mixed part)
  bench.py bulkload palisade|etcd URL N [VALUE_BYTES] [BATCH]
                                         write keys /bulk/k... 0..N-1 in transactions of BATCH
                                         (100) puts of VALUE_BYTES (100) bytes
  bench.py revision palisade|etcd URL    print the revision the member at URL has applied
  bench.py catchup palisade|etcd URL REV TIMEOUT LEADER_PID NEW_PID
                                         wait until the member at URL has applied REV; print
                                         the time and the peak RSS of the new member and the
                                         leader meanwhile (the operations part)
  bench.py leases palisade|etcd URL N TTL FILE
                                         grant N leases of TTL s; their ids to FILE, one a line
                                         (the keepalive load's BENCH_LEASES)
  bench.py failover palisade|etcd TTL LEADER_URL LEADER_PID SURVIVOR_URL FILE TRIAL
                                         one failover trial on a running 3-node cluster: grant
                                         a lease of TTL s, put a key under it, keep it alive a
                                         few times, SIGKILL the leader, poll SURVIVOR_URL until
                                         the key is gone; append the times to FILE
  bench.py fsync DIR                     fdatasync latency of 4 KiB appends in DIR
  bench.py sample SECS FILE PRODUCT PID...
                                         append the RSS (VmRSS) of each PID to FILE now and
                                         every SECS s until terminated (the memory run)
  bench.py latsummary FILE               p50/p99 of a watch latency samples file (for the log)
  bench.py report WORKDIR OUT            BENCHMARKS.md from WORKDIR/{machine.txt,results.txt,
                                         putka.txt,failover.txt,rss.txt,rss-samples-*.txt,
                                         watchlat.txt,watchlat-*.txt,watchlatidle.txt,watchidle.txt,
                                         watchput.txt,lockpairs.txt,lockhandoff.txt,secure.txt,
                                         ops.txt,mixed.txt}
  bench.py splice FROM INTO [SECTION]    put the "## SECTION" (Watches; or Locks, Security,
                                         "Mixed workload", ...) of the
                                         report FROM into the report INTO, in place of its own
                                         if it has one, else before its memory run or machine
                                         section
"""

import base64
import http.client
import json
import os
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

VALUE = "0123456789abcdef" * 4  # the same 64 bytes as benches/common.lua


def b64(s):
    return base64.b64encode(s.encode()).decode()


def key(i, prefix="", groups=0):
    """Key i of the wrk scripts' key space (benches/common.lua, bench.name)."""
    return prefix + ("g%d/" % (i % groups) if groups else "") + "k%015d" % i


class Conn:
    """One HTTP/1.1 connection. An https URL is checked against the CA file BENCH_CA (the
    security part's self-signed certificate; unset: the system's CAs); BENCH_TOKEN, when
    set, goes with every request as `Authorization: Bearer` (Palisade with client auth on)."""

    def __init__(self, url, timeout=2.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=os.environ.get("BENCH_CA") or None)
            self.c = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=ctx)
        else:
            self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        token = os.environ.get("BENCH_TOKEN")
        self.auth = {"Authorization": "Bearer " + token} if token else {}

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.c.request(method, path, body=data, headers=headers)
        r = self.c.getresponse()
        payload = r.read()
        return r.status, payload


def member_view(product, url):
    """(own id, leader id or None) of one member, or raise if it is not ready."""
    c = Conn(url)
    if product == "palisade":
        st, _ = c.call("GET", "/readyz")
        if st != 200:
            raise RuntimeError("not ready")
        st, body = c.call("GET", "/v1/cluster")
        d = json.loads(body)
        if st != 200 or not all(m.get("client_url") for m in d["members"]):
            raise RuntimeError("no cluster view yet")
        return d["node_id"], d["leader"]
    st, body = c.call("GET", "/health")
    if st != 200 or json.loads(body).get("health") != "true":
        raise RuntimeError("not healthy")
    st, body = c.call("POST", "/v3/maintenance/status", {})
    d = json.loads(body)
    return d["header"]["member_id"], (d.get("leader") or None)


def cmd_leader(product, *urls):
    try:
        views = [member_view(product, u) for u in urls]
    except Exception:
        return 1
    leaders = {lead for _, lead in views}
    if len(leaders) != 1 or None in leaders:
        return 1
    for url, (me, lead) in zip(urls, views):
        if me == lead:
            print(url)
            return 0
    return 1


def in_parallel(url, n, one, conns=16):
    """one(conn, i) for i in 0..n-1 over `conns` connections to url; one returns an error
    text or None. The first error stops the work; returns it (or None)."""
    nxt, lock, failures = [0], threading.Lock(), []

    def worker():
        c = Conn(url, timeout=10)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n or failures:
                return
            try:
                err = one(c, i)
            except (OSError, http.client.HTTPException) as e:  # a thread's exception would be lost
                err = f"{i}: {type(e).__name__}: {e}"
            if err:
                failures.append(err)

    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures[0] if failures else None


def cmd_preload(product, url, n, prefix="", groups="0"):
    def one(c, i):
        k = key(i, prefix, int(groups))
        if product == "palisade":
            st, body = c.call("PUT", "/v1/kv/" + k, {"value": VALUE})
        else:
            st, body = c.call("POST", "/v3/kv/put", {"key": b64(k), "value": b64(VALUE)})
        return None if st == 200 else "%s: HTTP %d %s" % (k, st, body[:200])

    err = in_parallel(url, int(n), one)
    if err:
        print("preload failed: " + err, file=sys.stderr)
        return 1
    return 0


def cmd_bulkload(product, url, n, value_bytes="100", batch="100"):
    """Writes keys 0..n-1 (values of value_bytes bytes) in transactions of `batch` puts."""
    n, batch, value = int(n), int(batch), "v" * int(value_bytes)

    def one(c, b):
        keys = [key(i, "bulk/") for i in range(b * batch, min(n, (b + 1) * batch))]
        if product == "palisade":
            body = {"success": [{"put": {"key": "/" + k, "value": value}} for k in keys]}
            st, resp = c.call("POST", "/v1/txn", body)
        else:
            body = {"success": [{"requestPut": {"key": b64(k), "value": b64(value)}} for k in keys]}
            st, resp = c.call("POST", "/v3/kv/txn", body)
        return None if st == 200 else "batch %d: HTTP %d %s" % (b, st, resp[:200])

    err = in_parallel(url, (n + batch - 1) // batch, one)
    if err:
        print("bulk load failed: " + err, file=sys.stderr)
        return 1
    return 0


def revision_at(product, url):
    """The revision the member at url has applied (a local read), or None."""
    try:
        c = Conn(url, timeout=1.0)
        if product == "palisade":
            st, body = c.call("GET", "/v1/cluster")
            return json.loads(body)["revision"] if st == 200 else None
        st, body = c.call("POST", "/v3/maintenance/status", {})
        return int(json.loads(body)["header"]["revision"]) if st == 200 else None
    except Exception:
        return None


def cmd_revision(product, url):
    rev = revision_at(product, url)
    if rev is None:
        return 1
    print(rev)
    return 0


def cmd_catchup(product, url, target, timeout_s, leader_pid, new_pid):
    """Waits until the member at url has applied revision `target`, sampling the RSS of
    the leader and of the new member; prints one CATCHUP line."""
    t0, target = time.monotonic(), int(target)
    leader_peak = new_peak = 0
    while True:
        leader_peak = max(leader_peak, vm_kib(leader_pid, "VmRSS"))
        new_peak = max(new_peak, vm_kib(new_pid, "VmRSS"))
        rev = revision_at(product, url)
        if rev is not None and rev >= target:
            break
        if vm_kib(new_pid, "VmRSS") < 0:
            print("the new member exited", file=sys.stderr)
            return 1
        if time.monotonic() - t0 > float(timeout_s):
            print(f"not caught up after {timeout_s} s (at revision {rev} of {target})", file=sys.stderr)
            return 1
        time.sleep(0.05)
    secs = time.monotonic() - t0
    print(f"CATCHUP secs={secs:.2f} new_hwm_kib={vm_kib(new_pid, 'VmHWM')} new_peak_kib={new_peak} "
          f"leader_peak_kib={leader_peak}")
    return 0


def grant(c, product, ttl_s):
    """Grant one lease of ttl_s seconds; (id as a string, None) or (None, error text)."""
    if product == "palisade":
        st, body = c.call("POST", "/v1/leases", {"ttl": ttl_s})
        ok = st == 201
    else:
        st, body = c.call("POST", "/v3/lease/grant", {"TTL": ttl_s})
        ok = st == 200
    try:
        d = json.loads(body)
        lease = d["id"] if product == "palisade" else d["ID"]
        ttl = d["ttl_ms"] / 1000 if product == "palisade" else int(d["TTL"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok or ttl != ttl_s:
        return None, "grant: HTTP %d %s" % (st, body[:200])
    return str(lease), None


def keepalive(c, product, lease):
    """Keep lease alive once; the TTL it got again (s), or None if the answer is not a renewal."""
    try:
        if product == "palisade":
            st, body = c.call("POST", f"/v1/leases/{lease}/keepalive")
            return json.loads(body)["ttl_ms"] / 1000 if st == 200 else None
        st, body = c.call("POST", "/v3/lease/keepalive", {"ID": lease})
        return int(json.loads(body)["result"]["TTL"]) if st == 200 else None
    except (ValueError, KeyError, TypeError):
        return None


def cmd_leases(product, url, n, ttl_s, path):
    n, ttl_s = int(n), int(ttl_s)
    ids = [None] * n

    def one(c, i):
        ids[i], err = grant(c, product, ttl_s)
        return err

    err = in_parallel(url, n, one)
    if err:
        print("lease preload failed: " + err, file=sys.stderr)
        return 1
    with open(path, "w") as f:
        f.write("".join(i + "\n" for i in ids))
    return 0


FAILOVER_KEY = "failover"
FAILOVER_KEEPALIVES = 3  # keepalives before the kill, FAILOVER_GAP_S apart
FAILOVER_GAP_S = 0.2
FAILOVER_POLL_S = 0.02


def key_state(c, product):
    """Linearizable read of FAILOVER_KEY: "present", "gone", or None (no answer now)."""
    try:
        if product == "palisade":
            st, body = c.call("GET", "/v1/kv/" + FAILOVER_KEY)
            if st == 200:
                return "present"
            return "gone" if st == 404 and json.loads(body)["error"]["code"] == "key_not_found" else None
        st, body = c.call("POST", "/v3/kv/range", {"key": b64(FAILOVER_KEY)})
        d = json.loads(body)
        if st != 200 or "header" not in d:
            return None
        return "present" if d.get("kvs") else "gone"
    except (ValueError, KeyError, TypeError):
        return None


def time_left_ms(c, product, lease):
    """What the cluster says is left of lease (ms; etcd answers in whole seconds), or None."""
    try:
        if product == "palisade":
            st, body = c.call("GET", f"/v1/leases/{lease}")
            return json.loads(body)["remaining_ms"] if st == 200 else None
        st, body = c.call("POST", "/v3/lease/timetolive", {"ID": lease})
        return int(json.loads(body)["TTL"]) * 1000 if st == 200 else None
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        return None


def cmd_failover(product, ttl_s, leader_url, leader_pid, survivor_url, path, trial):
    ttl_s = int(ttl_s)
    lead = Conn(leader_url, timeout=5)
    lease, err = grant(lead, product, ttl_s)
    if err:
        print("failover: " + err, file=sys.stderr)
        return 1
    if product == "palisade":
        st, body = lead.call("PUT", "/v1/kv/" + FAILOVER_KEY, {"value": VALUE, "lease": int(lease)})
    else:
        st, body = lead.call("POST", "/v3/kv/put", {"key": b64(FAILOVER_KEY), "value": b64(VALUE), "lease": lease})
    if st != 200:
        print("failover: put under the lease: HTTP %d %s" % (st, body[:200]), file=sys.stderr)
        return 1
    for _ in range(FAILOVER_KEEPALIVES):
        time.sleep(FAILOVER_GAP_S)
        sent = time.monotonic()
        got = keepalive(lead, product, lease)
        acked = time.monotonic()
        if got != ttl_s:
            print(f"failover: keepalive of lease {lease} answered TTL {got}, not {ttl_s}", file=sys.stderr)
            return 1
    os.kill(int(leader_pid), signal.SIGKILL)
    killed = time.monotonic()
    # One request at a time, every FAILOVER_POLL_S; a request that hangs while there is no
    # leader is given up after 1 s and retried on a new connection.
    c, polls, errors, serving, left, gone = Conn(survivor_url, timeout=1), 0, 0, None, None, None
    deadline = killed + 3 * ttl_s + 30
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            state = key_state(c, product)
        except (OSError, http.client.HTTPException):
            state = None
            c = Conn(survivor_url, timeout=1)
        polls += 1
        now = time.monotonic()
        if state is None:
            errors += 1
        elif serving is None:
            serving = now
            if state == "present":
                left = time_left_ms(c, product, lease)
        if state == "gone":
            gone = now
            break
        time.sleep(max(0.0, t + FAILOVER_POLL_S - time.monotonic()))

    def span(a, b):
        return "-" if a is None or b is None else "%d" % round((b - a) * 1000)

    line = (f"target={product} trial={trial} ttl_ms={ttl_s * 1000} ack_to_gone_ms={span(acked, gone)} "
            f"sent_to_gone_ms={span(sent, gone)} kill_to_gone_ms={span(killed, gone)} "
            f"kill_to_serving_ms={span(killed, serving)} left_at_serving_ms={'-' if left is None else left} "
            f"polls={polls} poll_errors={errors}")
    with open(path, "a") as f:
        f.write(line + "\n")
    print(time.strftime("[%H:%M:%S] ") + f"{product} failover trial {trial}: key gone "
          + (f"{span(acked, gone)} ms after the last keepalive ack" if gone else "NEVER (gave up)")
          + f"; a survivor answered {span(killed, serving)} ms after the kill"
          + ("" if left is None else f", lease time left then {left} ms"), file=sys.stderr, flush=True)
    return 0 if gone else 1


def cmd_fsync(d, count=200, budget_s=3.0):
    lat = []
    fd, path = tempfile.mkstemp(prefix="fsync-", dir=d)
    try:
        block = b"\0" * 4096
        end = time.monotonic() + budget_s
        while len(lat) < count and (len(lat) < 10 or time.monotonic() < end):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print("median %.2f ms, p99 %.2f ms (%d appends of 4 KiB, each followed by fdatasync)"
          % (statistics.median(lat) * 1e3, p99 * 1e3, len(lat)))
    return 0


def vm_kib(pid, field):
    """A field of /proc/PID/status in KiB, or -1 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cmd_sample(secs, path, product, *pids):
    secs = float(secs)
    t0, k, last_log = time.monotonic(), 0, 0
    with open(path, "a") as f:
        while True:
            t = time.monotonic() - t0
            rss = [vm_kib(p, "VmRSS") for p in pids]
            for i, v in enumerate(rss, 1):
                f.write(f"target={product} t={t:.1f} member={i} rss_kib={v}\n")
            f.flush()
            if t - last_log >= 60:
                last_log = t
                print(time.strftime("[%H:%M:%S] ") + f"{product} after {t:.0f} s: RSS MiB "
                      + " ".join(str(v // 1024) for v in rss), file=sys.stderr, flush=True)
            k += 1
            time.sleep(max(0.0, t0 + k * secs - time.monotonic()))


# --- report ----------------------------------------------------------------------------

LOAD_TEXT = {
    "put": "write one key of the key space (Palisade `PUT /v1/kv/<key>`, etcd `POST /v3/kv/put`)",
    "get": "linearizable read of one key (Palisade `GET /v1/kv/<key>`, etcd `POST /v3/kv/range`)",
    "get-serializable": "serializable read from the member's own replica, no quorum round "
    "(Palisade `?consistency=serializable`, etcd `\"serializable\": true`)",
    "txn": "a transaction of 2 compares and 2 puts: `version > 0` on two random keys (always true, "
    "the preload wrote every key), then writes of two other random keys, one new revision "
    "(Palisade `POST /v1/txn`, etcd `POST /v3/kv/txn`); every transaction takes the success branch",
}

COLUMNS_TEXT = (
    "Columns: **req/s** completed requests per second; **p50/p99 ms** latency percentiles from wrk "
    "(with its coordinated-omission correction, so stalls show in p99); **peak RSS MiB** the largest "
    "peak resident set (`VmHWM`) of a member since its start, over the rounds, and for 3 nodes also "
    "the sum over the members; **server CPU %** CPU time of all server processes during the cell, "
    "100 = one core. Servers, the load generator and all members share the machine's cores and one "
    "disk, so a 3-node cluster here shows the cost of replication and quorum fsyncs, not of a network; "
    "writes are bound by the disk's fsync latency. Compare the products within one machine, not "
    "absolute numbers across machines.")

# Palisade's automatic compaction flags and their defaults (src/config.rs).
PALISADE_COMPACT = {"--auto-compact-retention-ms": "600000", "--auto-compact-max-revisions": "200000"}
ETCD_COMPACT = ("--auto-compaction-mode", "--auto-compaction-retention", "--quota-backend-bytes")


def kv_line(line):
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def fmt(v, nd=0):
    return "-" if v is None else f"{v:,.{nd}f}"


def cmd_report(workdir, out):
    meta = {}
    for line in open(os.path.join(workdir, "machine.txt")):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            meta[k] = v
    hz = float(meta["clk_tck"])
    rows = read_rows(os.path.join(workdir, "results.txt"))
    ka_rows = [r for r in rows if r["load"] == "keepalive"]
    rows = [r for r in rows if r["load"] != "keepalive"]
    putka_rows = read_rows(os.path.join(workdir, "putka.txt"))
    failover_rows = read_rows(os.path.join(workdir, "failover.txt"))
    rss_rows = read_rows(os.path.join(workdir, "rss.txt"))
    watch = [read_rows(os.path.join(workdir, f)) for f in ("watchlat.txt", "watchidle.txt", "watchput.txt")]
    locks = [read_rows(os.path.join(workdir, f)) for f in ("lockpairs.txt", "lockhandoff.txt")]
    secure_rows = read_rows(os.path.join(workdir, "secure.txt"))
    ops_rows = read_rows(os.path.join(workdir, "ops.txt"))
    mixed_rows = read_rows(os.path.join(workdir, "mixed.txt"))
    o = []
    o.append("# Benchmarks\n")
    o.append("Palisade and etcd on the same machine under the same closed-loop HTTP load "
             "([wrk](https://github.com/wg/wrk)), one product after the other. "
             "Regenerate this file with `make bench` (see `benches/run.sh` for the knobs).\n")
    # The goals and what was tried for them are written by hand, in benches/goals.md, and
    # go in as they are (the figures they quote come from the run named in them).
    goals = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goals.md")
    if os.path.exists(goals):
        o.append(open(goals).read().rstrip("\n") + "\n")
    targets = []
    if rows:
        targets += report_cells(meta, hz, rows, o)
    if ka_rows or putka_rows or failover_rows:
        targets += report_leases(meta, hz, ka_rows, putka_rows, failover_rows, o)
    if any(watch):
        alone = not (rows or ka_rows or putka_rows or failover_rows or rss_rows)
        targets += report_watches(meta, hz, workdir, *watch, o, alone,
                                  read_rows(os.path.join(workdir, "watchlatidle.txt")))
    if any(locks):
        alone = not (rows or ka_rows or putka_rows or failover_rows or rss_rows or any(watch))
        targets += report_locks(meta, hz, *locks, o, alone)
    if secure_rows:
        alone = not (rows or ka_rows or putka_rows or failover_rows or rss_rows or any(watch) or any(locks))
        targets += report_security(meta, hz, secure_rows, o, alone)
    if ops_rows:
        alone = not (rows or ka_rows or putka_rows or failover_rows or rss_rows or any(watch) or any(locks)
                     or secure_rows)
        targets += report_ops(meta, ops_rows, o, alone)
    if mixed_rows:
        alone = not (rows or ka_rows or putka_rows or failover_rows or rss_rows or any(watch) or any(locks)
                     or secure_rows or ops_rows)
        targets += report_mixed(meta, hz, mixed_rows, o, alone)
    if rss_rows:
        targets += report_rss(meta, hz, workdir, rss_rows, o)
    targets = list(dict.fromkeys(targets))
    o.append("## Machine and versions\n")
    for label, k in [("Date", "date"), ("Command", "command"), ("CPU", "cpu"), ("Cores", "cores"),
                     ("RAM", "ram"), ("OS", "os"), ("Kernel", "kernel"), ("Data directories", "disk"),
                     ("Disk fsync latency", "fsync")] + [(f"`{t} --version`", "version_" + t) for t in targets] + [
                        ("Load generator", "wrk")]:
        v = meta.get(k, "")
        if k == "command":
            v = f"`{v}`"
        o.append(f"- {label}: {v}")
    text = "\n".join(o) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 0


def read_rows(path):
    if not os.path.exists(path):
        return []
    return [kv_line(line) for line in open(path) if line.strip()]


def rate(r):
    d = float(r["duration_s"])
    return int(r["requests"]) / d if d > 0 else None


def med(g, f):
    vals = [f(r) for r in g]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cpu(hz, r, ticks):
    w = float(r["wall_s"])
    return 100.0 * int(ticks) / hz / w if w > 0 else None


def ms(us):
    return int(us) / 1e3


class Cells:
    """wrk results grouped into cells (nodes, load, conns, product), in report order, with
    each cell's table row (medians over the rounds) and the notes under the tables."""

    def __init__(self, meta, hz, rows):
        cells, order = {}, []
        for r in rows:
            k = (int(r["nodes"]), r["load"], int(r["conns"]), r["target"])
            if k not in cells:
                cells[k] = []
                order.append(k)
            cells[k].append(r)
        self.loads = list(dict.fromkeys(k[1] for k in order))
        self.targets = list(dict.fromkeys(k[3] for k in order))
        order.sort(key=lambda k: (k[0], self.loads.index(k[1]), k[2], self.targets.index(k[3])))
        self.rows = {}  # nodes -> table rows
        self.errors, self.others, self.client_bound = [], [], False

        def client(r):
            return 100.0 * float(r["client_cpu_s"]) / float(r["wall_s"])

        def other(r):
            return max(cpu(hz, r, r["busy_ticks"]) - cpu(hz, r, r["server_ticks"]) - client(r), 0.0)

        for k in order:
            g = cells[k]
            nodes, load, conns, target = k
            rss = fmt(max(int(r["rss_max_kib"]) for r in g) / 1024)
            if nodes > 1:
                rss += " / " + fmt(max(int(r["rss_sum_kib"]) for r in g) / 1024)
            name = f"{meta['desc_' + target]}, {nodes} node(s), {load}, {conns} conns"
            n_err = sum(int(r["errors"]) for r in g)
            if n_err:
                self.errors.append(f"{n_err} in {name}")
            self.others += [(other(r), name) for r in g]
            mark = ""
            if med(g, client) >= 90:
                mark, self.client_bound = " \\*", True
            self.rows.setdefault(nodes, []).append([
                load, str(conns), meta["desc_" + target],
                fmt(med(g, rate)) + mark,
                fmt(med(g, lambda r: ms(r["p50_us"])), 2),
                fmt(med(g, lambda r: ms(r["p99_us"])), 2),
                rss,
                fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))),
            ])

    def notes(self, o, what=""):
        """The notes under a table; what: "" for the load cells, " keepalive" for those."""
        if self.client_bound:
            o.append("\\* the load generator (one wrk thread) used 90% or more of a core in this cell, "
                     "so the figure is a lower bound of what the server can do.\n")
        o.append("Failed requests (socket errors, timeouts, HTTP errors)"
                 + (f" in the{what} cells: " if what else ": ")
                 + ("; ".join(self.errors) if self.errors else "none") + ".")
        if self.others:
            worst = max(self.others)
            o.append(f"Other processes on the machine used a median of "
                     f"{statistics.median(v for v, _ in self.others):.0f}% of a core during the{what} cells"
                     + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else "."))
        o.append("")


def report_cells(meta, hz, rows, o):
    """The load cells' sections into o (the keepalive load is in the lease section);
    returns the products."""
    cells = Cells(meta, hz, rows)
    rounds = max(int(r["round"]) for r in rows)
    o.append("## How to read it\n")
    o.append(
        f"Each cell is the **median over {rounds} round(s)**; the rounds interleave the products "
        "(every load group runs for Palisade, then for etcd, then the next group), so slow drift of "
        "the machine spreads over both. Every load group starts on freshly started servers with empty "
        f"data directories, writes the whole key space ({meta['keys']} keys of 16 bytes, 64-byte values), "
        f"warms up for {meta['warmup']} s with every answer checked, then runs each connection count for "
        f"{meta['duration']} s. Keys are picked at random from that fixed key space, so both products "
        "hold the same data. The load goes to the leader, over HTTP/JSON for both (etcd through its v3 JSON "
        "gateway). wrk is closed-loop: each connection sends its next request when the previous answer "
        "arrives, so `conns` is also the concurrency.\n")
    o.append("Loads:\n")
    for load in cells.loads:
        o.append(f"- **{load}**: {LOAD_TEXT.get(load, load)}.")
    o.append("")
    o.append(COLUMNS_TEXT + "\n")
    for nodes in sorted(cells.rows):
        o.append(f"## {nodes} node{'s' if nodes > 1 else ''}\n")
        hdr = ["load", "conns", "product", "req/s", "p50 ms", "p99 ms",
               "peak RSS MiB" + (" (max member / sum)" if nodes > 1 else ""), "server CPU %"]
        o.append("| " + " | ".join(hdr) + " |")
        o.append("|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|")
        for row in cells.rows[nodes]:
            o.append("| " + " | ".join(row) + " |")
        o.append("")
    cells.notes(o)
    return cells.targets


def pct(vals, q):
    """Nearest-rank percentile q (0-100) of vals."""
    vals = sorted(vals)
    return vals[max(0, min(len(vals) - 1, -(-len(vals) * q // 100) - 1))]


def change(new, old):
    return "-" if new is None or not old else f"{100.0 * (new / old - 1):+.0f}%"


# Each product's failover settings: (flag, default) of heartbeat, election timeout and (Palisade)
# the lease checkpoint; etcd has no lease checkpoint unless --experimental-enable-lease-checkpoint.
PALISADE_TIMERS = {"--heartbeat-ms": "100", "--election-timeout-ms": "1000", "--lease-checkpoint-ms": "500"}
ETCD_TIMERS = {"--heartbeat-interval": "100", "--election-timeout": "1000"}


def timers_text(target, meta):
    flags = meta.get("flags_" + target, "")
    if target == "palisade":
        got = {**PALISADE_TIMERS, **flag_values(flags, PALISADE_TIMERS)}
        e = int(got["--election-timeout-ms"])
        return (f"heartbeat {got['--heartbeat-ms']} ms, election timeout {e}-{2 * e} ms, "
                f"lease checkpoint {got['--lease-checkpoint-ms']} ms")
    got = {**ETCD_TIMERS, **flag_values(flags, ETCD_TIMERS)}
    e = int(got["--election-timeout"])
    checkpoint = "on" if "--experimental-enable-lease-checkpoint" in flags else "off"
    return (f"heartbeat {got['--heartbeat-interval']} ms, election timeout {e}-{2 * e} ms, "
            f"lease checkpointing {checkpoint}")


def report_leases(meta, hz, ka_rows, putka_rows, failover_rows, o):
    """The lease section into o: keepalive cells, put under keepalives, failover; returns
    the products."""
    targets = []
    o.append("## Leases\n")
    if ka_rows:
        cells = Cells(meta, hz, ka_rows)
        targets += cells.targets
        rounds = max(int(r["round"]) for r in ka_rows)
        o.append("### Keepalives\n")
        o.append(
            f"**keepalive**: each group starts fresh servers, grants {int(meta['leases']):,} leases of "
            f"{meta['lease_ttl']} s through the leader (none ends during the group), warms up for "
            f"{meta['warmup']} s with every answer checked (it must carry the lease's whole TTL again), "
            f"then runs each connection count for {meta['duration']} s. Each request keeps one of "
            "those leases, picked at random, alive: Palisade `POST /v1/leases/<id>/keepalive`, answered "
            "once the renewal is committed, so durable on a quorum (keepalives that wait together "
            "share one renewal entry, with up to 4 such entries in flight); etcd "
            "`POST /v3/lease/keepalive`, one message of a keepalive stream per HTTP request, renewed "
            "by the leader's lessor without a Raft entry. "
            f"Medians over {rounds} round(s); columns as in the load tables (req/s = keepalives/s).\n")
        hdr = ["nodes", "conns", "product", "keepalives/s", "p50 ms", "p99 ms",
               "peak RSS MiB (max member / sum)", "server CPU %"]
        o.append("| " + " | ".join(hdr) + " |")
        o.append("|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|")
        for nodes in sorted(cells.rows):
            for row in cells.rows[nodes]:
                o.append(f"| {nodes} | " + " | ".join(row[1:]) + " |")
        o.append("")
        cells.notes(o, " keepalive")
    if putka_rows:
        groups, order = {}, []
        for r in putka_rows:
            k = (int(r["nodes"]), r["target"], r["ka_rate"])
            if k not in groups:
                groups[k] = []
                order.append(k)
            groups[k].append(r)
        tgts = list(dict.fromkeys(k[1] for k in order))
        targets += tgts
        rates = list(dict.fromkeys(k[2] for k in order))
        order.sort(key=lambda k: (k[0], tgts.index(k[1]), rates.index(k[2])))
        conns = putka_rows[0]["conns"]
        ka_conns = next((r["ka_conns"] for r in putka_rows if "ka_conns" in r), "-")
        rounds = max(int(r["round"]) for r in putka_rows)
        o.append("### Put latency under a keepalive load\n")
        o.append(
            f"On the servers of each keepalive group, after its cells (so the key space and the "
            f"{int(meta['leases']):,} leases exist): **put** at {conns} connections for "
            f"{meta['duration']} s alone, then again while a second wrk keeps those leases alive over "
            f"{ka_conns} connections, either at a fixed rate (paced with wrk's `delay` hook: the same "
            "offered load for both products) or as fast as it goes (closed loop, so the faster product "
            "gets more keepalives). That load starts 1 s before the put and ends 1 s after it. "
            f"Medians over {rounds} round(s); **keepalives/s** what the second wrk completed; **p99 "
            "change** the put p99 against the put alone on the same servers; **server CPU %** counts "
            "both loads. Both loads, both wrk processes and all members share the machine's cores, so "
            "part of any change is plain CPU contention.\n")
        o.append("| nodes | product | beside the put | keepalives/s | put req/s | put p50 ms | put p99 ms "
                 "| p99 change | server CPU % |")
        o.append("|---|---|---|" + "|".join(["---:"] * 6) + "|")
        failed = []
        for k in order:
            nodes, target, ka_rate = k
            g = groups[k]
            alone = groups.get((nodes, target, "none"), [])
            p99 = med(g, lambda r: ms(r["p99_us"]))
            if ka_rate == "none":
                beside, ka = "nothing", "-"
            else:
                beside = "keepalives as fast as they go" if ka_rate == "0" else f"{int(ka_rate):,} keepalives/s"
                ka = fmt(med(g, lambda r: int(r["ka_requests"]) / float(r["ka_duration_s"])))
                n_err = sum(int(r["ka_errors"]) for r in g)
                if n_err:
                    failed.append(f"{n_err} keepalives in {meta['desc_' + target]}, {nodes} node(s), {beside}")
            n_err = sum(int(r["errors"]) for r in g)
            if n_err:
                failed.append(f"{n_err} puts in {meta['desc_' + target]}, {nodes} node(s), beside {beside}")
            o.append("| " + " | ".join([
                str(nodes), meta["desc_" + target], beside, ka, fmt(med(g, rate)),
                fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(p99, 2),
                "-" if ka_rate == "none" else change(p99, med(alone, lambda r: ms(r["p99_us"]))),
                fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"])))]) + " |")
        o.append("")
        o.append("Failed requests: " + ("; ".join(failed) if failed else "none") + ".\n")
    if failover_rows:
        tgts = list(dict.fromkeys(r["target"] for r in failover_rows))
        targets += tgts
        ttl_s = int(meta["failover_ttl"])
        o.append("### A lease after its leader is killed\n")
        o.append(
            "Each trial starts a fresh 3-node cluster (the products take turns), grants a lease of "
            f"{ttl_s} s through the leader, puts a key under it, keeps the lease alive 3 times 200 ms "
            "apart, then kills the leader (SIGKILL) as soon as the last keepalive is answered, and "
            "keeps it alive no more. Another member is asked for the key every 20 ms with a "
            "linearizable read (Palisade `GET /v1/kv/failover`, etcd `POST /v3/kv/range`) until it is "
            "gone. **key gone after the last ack**: from the answer to the last keepalive to the first "
            "answer saying the key is gone (p99 by nearest rank: under 100 trials, the largest); "
            "**earliest**: the shortest time from *sending* the last keepalive to the key "
            f"being gone, which must never be under the TTL ({ttl_s * 1000:,} ms); **leader change**: "
            "from the kill to that member's first answer (a linearizable read needs the new leader); "
            "**lease left then**: what the cluster said was left of the lease at that first answer "
            "(Palisade `GET /v1/leases/<id>`; etcd `POST /v3/lease/timetolive`, in whole seconds).\n")
        o.append("| product | timers | trials | leader change p50 ms | lease left then p50 ms "
                 "| key gone after the last ack: p50 ms | p99 ms | max ms | earliest ms |")
        o.append("|---|---|" + "|".join(["---:"] * 7) + "|")
        for t in tgts:
            g = [r for r in failover_rows if r["target"] == t]
            gone = [int(r["ack_to_gone_ms"]) for r in g if r["ack_to_gone_ms"] != "-"]
            sent = [int(r["sent_to_gone_ms"]) for r in g if r["sent_to_gone_ms"] != "-"]
            serving = [int(r["kill_to_serving_ms"]) for r in g if r["kill_to_serving_ms"] != "-"]
            left = [int(r["left_at_serving_ms"]) for r in g if r["left_at_serving_ms"] != "-"]
            o.append("| " + " | ".join([
                meta["desc_" + t], timers_text(t, meta), f"{len(gone)} of {len(g)}",
                fmt(statistics.median(serving)) if serving else "-",
                fmt(statistics.median(left)) if left else "-",
                fmt(statistics.median(gone)) if gone else "-",
                fmt(pct(gone, 99)) if gone else "-", fmt(max(gone)) if gone else "-",
                fmt(min(sent)) if sent else "-"]) + " |")
        o.append("")
        o.append(
            "How each product ends such a lease: etcd 3.4 with lease checkpointing off (its default) "
            "gives every lease its whole TTL again, plus one election timeout, when a new leader takes "
            "over, so the key lives about leader change + election timeout + TTL after the kill. "
            "Palisade's new leader counts the replicated lease clock on from when its last reading "
            "reached it, so the clock runs through the election: the key lives TTL after the last "
            "acknowledgement, or until the new leader is in place if that is later (here, with a TTL "
            "shorter than the leader change, the latter). Palisade's leader change is "
            "longer than its election timeout: openraft lets a follower that knew a leader stand for "
            "election only after the leader's lease (the longest election timeout) plus its own "
            "randomised election timeout have passed since the last heartbeat, 3-4 s with the "
            "defaults, against 1-2 s for etcd.\n")
        o.append("<details><summary>Every trial (ms)</summary>\n")
        o.append("| trial | product | key gone after the last ack | after the last keepalive was sent "
                 "| after the kill | leader change | lease left then | reads (failed) |")
        o.append("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in sorted(failover_rows, key=lambda r: (int(r["trial"]), tgts.index(r["target"]))):
            cols = [r[k] for k in ("ack_to_gone_ms", "sent_to_gone_ms", "kill_to_gone_ms",
                                   "kill_to_serving_ms", "left_at_serving_ms")]
            o.append(f"| {r['trial']} | {meta['desc_' + r['target']]} | "
                     + " | ".join("-" if v == "-" else fmt(int(v)) for v in cols)
                     + f" | {r['polls']} ({r['poll_errors']}) |")
        o.append("\n</details>\n")
    return targets


def flag_values(flags, names):
    """{name: value} for the --name=value / --name value flags in a flag string."""
    words, found = flags.split(), {}
    for i, w in enumerate(words):
        name, eq, val = w.partition("=")
        if name in names:
            found[name] = val if eq else (words[i + 1] if i + 1 < len(words) else "")
    return found


def compaction_text(target, meta):
    flags = meta.get("flags_" + target, "")
    if target == "palisade":
        got = flag_values(flags, PALISADE_COMPACT)
        parts = [f"`{k}={got.get(k, v)}`" for k, v in PALISADE_COMPACT.items()]
        if not got:
            return "automatic, its defaults: " + " ".join(parts)
        if got.get("--auto-compact-retention-ms") == "0":
            return "none (`--auto-compact-retention-ms=0`)"
        return "automatic: " + " ".join(parts)
    got = flag_values(flags, ETCD_COMPACT)
    if not got.get("--auto-compaction-retention") or got["--auto-compaction-retention"] in ("0", "0s"):
        text = "none, its default (`--auto-compaction-retention=0`)"
    else:
        text = ("automatic: `--auto-compaction-mode=" + got.get("--auto-compaction-mode", "periodic")
                + "` `--auto-compaction-retention=" + got["--auto-compaction-retention"] + "`")
    quota = got.get("--quota-backend-bytes")
    return text + (f"; backend quota `--quota-backend-bytes={quota}`" if quota
                   else "; backend quota 2 GiB (default)")


def secs_label(t):
    t = int(t)
    return f"{t // 60} min" if t % 60 == 0 and t > 0 else f"{t} s"


def report_rss(meta, hz, workdir, rss_rows, o):
    """The memory run's section into o; returns the products."""
    dur, interval = int(meta["rss_duration"]), float(meta["rss_interval"])
    marks = [int(m) for m in meta["rss_marks"].split() if 0 < int(m) < dur]
    targets = [r["target"] for r in rss_rows]
    samples = {}  # target -> {member: [(t, kib)]}
    for t in targets:
        path = os.path.join(workdir, f"rss-samples-{t}.txt")
        for r in read_rows(path):
            samples.setdefault(t, {}).setdefault(int(r["member"]), []).append(
                (float(r["t"]), int(r["rss_kib"])))

    def mib(kib):
        return "-" if kib is None or kib < 0 else fmt(kib / 1024)

    def at(series, mark):
        if not series:
            return None
        t, v = min(series, key=lambda s: abs(s[0] - mark))
        return v if abs(t - mark) <= interval / 2 + 1 else None

    nodes = int(rss_rows[0]["nodes"])
    o.append("## Memory under a long write run\n")
    o.append(
        f"**{meta['rss_load']}** at {meta['rss_conns']} connections for {secs_label(dur)} against a "
        f"{nodes}-node cluster of each product, one product after the other, each on freshly started "
        f"servers after the same preload ({meta['keys']} keys) and {meta['warmup']} s checked warm-up. "
        "The writer never stops, so the history of the key space grows all the time unless it is "
        "compacted: this shows whether memory stays flat. "
        f"The resident set (`VmRSS`) of every member is sampled every {interval:g} s from the start "
        "of the load (**start**: after the preload and warm-up, before the load); **end**: when the "
        "load stopped; **peak**: the member's peak resident set (`VmHWM`) since it started; "
        "**data dir MiB**: `du` of the member's data directory at the end (etcd preallocates "
        "64 MiB WAL files). The leader takes the load; the others are followers. req/s, p50 and p99 "
        "are wrk's figures over the whole run, server CPU % the CPU time of all members "
        "(100 = one core). Each product runs with the compaction settings in the table (their "
        "defaults unless `PALISADE_EXTRA_FLAGS` / `ETCD_EXTRA_FLAGS` say otherwise); an etcd that "
        "reaches its backend quota refuses writes, which count as failed requests.\n")
    o.append("| product | compaction | req/s | p50 ms | p99 ms | server CPU % | failed requests |")
    o.append("|---|---|---:|---:|---:|---:|---:|")
    for r in rss_rows:
        t = r["target"]
        o.append("| " + " | ".join([
            meta["desc_" + t], compaction_text(t, meta), fmt(rate(r)),
            fmt(int(r["p50_us"]) / 1e3, 2), fmt(int(r["p99_us"]) / 1e3, 2),
            fmt(100.0 * int(r["server_ticks"]) / hz / float(r["wall_s"])),
            fmt(int(r["errors"]))]) + " |")
    o.append("")
    cols = ["start"] + [secs_label(m) for m in marks] + [f"end ({secs_label(dur)})", "peak"]
    o.append("RSS MiB of each member over the run:\n")
    o.append("| product | member | " + " | ".join(cols) + " | data dir MiB |")
    o.append("|---|---|" + "|".join(["---:"] * (len(cols) + 1)) + "|")
    names = {}
    for r in rss_rows:
        t = r["target"]
        end, hwm, disk = ([int(x) for x in r[k].split(",")] for k in ("end_rss_kib", "hwm_kib", "disk_kib"))
        for i in range(len(end)):
            m = i + 1
            name = f"{m} (leader)" if m == int(r["leader"]) else str(m)
            names[(t, m)] = f"{meta['desc_' + t]} {name}"
            series = samples.get(t, {}).get(m, [])
            vals = [at(series, 0)] + [at(series, mk) for mk in marks] + [end[i], hwm[i]]
            o.append(f"| {meta['desc_' + t]} | {name} | " + " | ".join(mib(v) for v in vals)
                     + f" | {mib(disk[i])} |")
    o.append("")
    keys = [(t, m) for t in targets for m in sorted(samples.get(t, {}))]
    if keys:
        o.append(f"<details><summary>Every sample (RSS MiB, every {interval:g} s)</summary>\n")
        o.append("| s | " + " | ".join(names.get(k, f"{k[0]} {k[1]}") for k in keys) + " |")
        o.append("|" + "|".join(["---:"] * (len(keys) + 1)) + "|")
        steps = sorted({round(t / interval) for k in keys for t, _ in samples[k[0]][k[1]]})
        for step in steps:
            cells = []
            for t, m in keys:
                v = [kib for ts, kib in samples[t][m] if round(ts / interval) == step]
                cells.append(mib(v[0]) if v else "")
            o.append(f"| {step * interval:g} | " + " | ".join(cells) + " |")
        ends = {r["target"]: [int(x) for x in r["end_rss_kib"].split(",")] for r in rss_rows}
        o.append(f"| {dur} (end) | " + " | ".join(
            mib(ends[t][m - 1]) if m <= len(ends.get(t, [])) else "" for t, m in keys) + " |")
        o.append("\n</details>\n")
    return targets


# --- watches ---------------------------------------------------------------------------

def lat_samples(path):
    """(send_to_event, ack_to_event, put) lists in ms from a watch.py latency samples file."""
    cols = ([], [], [])
    if os.path.exists(path):
        for line in open(path):
            f = line.split()
            if len(f) == 3:
                for c, v in zip(cols, f):
                    c.append(float(v) / 1e3)
    return cols


def cmd_latsummary(path):
    e2s, e2a, put = lat_samples(path)
    if not e2s:
        print("no samples")
        return 0
    print(f"put->event p50 {pct(e2s, 50):.2f} p99 {pct(e2s, 99):.2f} ms, ack->event p50 "
          f"{pct(e2a, 50):.2f} p99 {pct(e2a, 99):.2f} ms, put p99 {pct(put, 99):.2f} ms ({len(e2s)} so far)")
    return 0


def other_cpu(hz, r, client_s=0.0):
    """% of a core the rest of the machine used during a run: busy minus the servers and
    the clients this script ran."""
    w = float(r["wall_s"])
    if w <= 0:
        return None
    return max(100.0 * (int(r["busy_ticks"]) - int(r["server_ticks"])) / hz / w - 100.0 * client_s / w, 0.0)


WATCH_GOAL_IDLE = 10000  # idle watchers on the node that the put->event goal is stated with
BESIDE = {"none": "nothing", "reading": "1 watcher reading every event", "stalled": "1 stalled watcher",
          "idle": "{n} idle watchers"}


def report_watches(meta, hz, workdir, lat_rows, idle_rows, put_rows, o, alone, latidle_rows=()):
    """The watch section into o: put->event latency (alone and beside idle watchers), the
    memory of idle watchers, put beside idle and stalled watchers; returns the products.
    alone: the report holds nothing else, so the section says when and how it ran (for
    `bench.py splice`). latidle_rows: how the idle watchers beside the latency runs fared."""
    targets, others = [], []
    n_idle = int(meta.get("watch_idle", "0"))
    o.append("## Watches\n")
    if alone:
        o.append(f"Run on {meta['date']} with `{meta['command']}` ({meta['cores']} cores, {meta['cpu']}; "
                 f"disk fsync: {meta['fsync'].split(' (')[0]}; {meta.get('version_palisade', '?')}, "
                 f"{meta.get('version_etcd', '')}).\n")
    if lat_rows:
        tgts = list(dict.fromkeys(r["target"] for r in lat_rows))
        targets += tgts

        def idle_of(r):
            return int(r.get("idle", "0"))

        cases = list(dict.fromkeys((int(r["nodes"]), r["watcher"], idle_of(r)) for r in lat_rows))
        cases.sort(key=lambda c: (c[0], c[1] != "leader", c[2]))
        idles = sorted({c[2] for c in cases if c[2]})
        runs = max(int(r["round"]) for r in lat_rows)
        o.append("### Put to event latency\n")
        o.append(
            "One watcher and one putter, each on its own HTTP/1.1 connection. The watcher holds a "
            "recursive watch of a prefix (Palisade `GET /v1/watch/<prefix>?recursive` with "
            "`Accept: application/x-ndjson`; etcd `POST /v3/watch` through its JSON gateway, with "
            "`key` and `range_end`; the gateway, inside the etcd process, passes requests and "
            "events on over a loopback gRPC connection, a hop its figures include), opened before "
            "the puts start. The putter always writes "
            f"through the leader: {int(meta['watch_warm'])} unmeasured puts, then "
            f"{int(meta['watch_n']):,} measured ones, each of a fresh key under that prefix with a "
            "64-byte value, one at a time, the next sent as soon as the previous one is "
            "acknowledged. Both sockets are served by one single-threaded client (Python, "
            "`selectors`), which records for each key t_send (just before the request is written), "
            "t_ack (its answer read in full) and t_event (the watch bytes carrying its event read). "
            "**put→event** is t_event - t_send: commit, apply and notification; **ack→event** is "
            "t_event - t_ack, how long after the writer's ack the watcher hears of the write "
            "(negative: before it); **put** is t_ack - t_send, the write's own latency. "
            f"{runs} run(s) per row on one cluster per product and size, the watcher on the "
            "leader and on a follower taking turns; percentiles (nearest rank) over the samples of "
            "all runs. On 3 nodes a watcher on a follower hears of a write once the follower has "
            "learnt it is committed and applied it. "
            + (f"**idle watchers**: the rows with {', '.join(f'{n:,}' for n in idles)} ran on a fresh "
               "cluster of their own per product and size, where one more client (Python, "
               "`selectors`, one thread) first opened that many idle watches on the leader, each "
               "on its own HTTP/1.1 connection and its own key, which nobody writes (as in *Idle "
               "watchers* below), and held them, reading whatever came, until the last run ended; "
               "the watcher of the runs was on the leader too, so that node had them all to "
               "consider on every write"
               + (f" (Palisade with `{meta.get('watch_flags_palisade', '')}`)" if "palisade" in tgts else "")
               + ". " if idles else "")
            + "**other CPU %**: what the rest of the machine "
            "used during the runs (median; busy CPU minus the servers and the client; 100 = one "
            "core): high values mean other work competed for the 2 cores.\n")
        o.append("| nodes | watcher on | idle watchers | product | samples | put→event p50 ms | p99 ms "
                 "| p99 of each run ms | max ms | ack→event p50 ms | p99 ms | put p50 ms | put p99 ms "
                 "| other CPU % |")
        o.append("|---:|---|---:|---|" + "|".join(["---:"] * 10) + "|")
        p99s, missing = {}, []
        for nodes, where, idle in cases:
            beside = f", beside {idle:,} idle watchers" if idle else ""
            for t in tgts:
                g = [r for r in lat_rows if r["target"] == t and int(r["nodes"]) == nodes and r["watcher"] == where
                     and idle_of(r) == idle]
                if not g:
                    continue
                e2s, e2a, put = lat_samples(os.path.join(
                    workdir, f"watchlat-{t}-{nodes}-{where}{'-idle' if idle else ''}.txt"))
                n_missing = sum(int(r["missing"]) for r in g)
                if n_missing:
                    missing.append(f"{n_missing} in {meta['desc_' + t]}, {nodes} node(s), watcher on the {where}"
                                   + beside)
                others += [(other_cpu(hz, r, float(r["client_cpu_s"])),
                            f"{meta['desc_' + t]}, {nodes} node(s), latency, watcher on the {where}{beside}")
                           for r in g]
                if not e2s:
                    continue
                p99s[(nodes, where, idle, t)] = pct(e2s, 99)
                each, at = [], 0  # the samples file holds the runs' samples in turn
                for r in sorted(g, key=lambda r: int(r["round"])):
                    part = e2s[at:at + int(r["received"])]
                    at += int(r["received"])
                    if part:
                        each.append(fmt(pct(part, 99), 2))
                o.append("| " + " | ".join([
                    str(nodes), where, fmt(idle) if idle else "-", meta["desc_" + t], fmt(len(e2s)),
                    fmt(pct(e2s, 50), 2), fmt(pct(e2s, 99), 2), " / ".join(each), fmt(max(e2s), 2),
                    fmt(pct(e2a, 50), 2), fmt(pct(e2a, 99), 2),
                    fmt(pct(put, 50), 2), fmt(pct(put, 99), 2),
                    fmt(med(g, lambda r: other_cpu(hz, r, float(r["client_cpu_s"]))))]) + " |")
        o.append("")
        o.append("Missing events (a put whose event never came within 10 s): "
                 + ("; ".join(missing) if missing else "none") + ".\n")
        held = []
        for r in latidle_rows:
            t, n = r["target"], int(r["watchers"])
            still = int(r.get("idle_still_open", "-1"))
            held.append(f"{meta['desc_' + t]}, {r['nodes']} node(s): {int(r['opened']):,} of {n:,} opened in "
                        f"{float(r['open_s']):.1f} s, the runs then took {float(r.get('runs_s', 'nan')):.1f} s, and "
                        "the idle watchers received "
                        f"{fmt(int(r.get('idle_later_bytes', 0)) / 1024)} KiB in all from being established "
                        "to the end of the last run; "
                        + ("all" if still == n else f"{still:,}") + " still open after the last run")
        if held:
            o.append("The idle watchers beside the latency runs: " + "; ".join(held) + ". Palisade sends an "
                     "idle watch a progress message (confirmed with a quorum first) about 10 s after it opened "
                     "(its default `progress`, less up to a tenth), and every 10 s after that: runs that "
                     "end sooner after the watchers opened did not meet them; etcd sends none unless asked.\n")

        def verdict(nodes, where, idle):
            mine, theirs = p99s.get((nodes, where, idle, "palisade")), p99s.get((nodes, where, idle, "etcd"))
            if mine is None:
                return None
            v = (f"{nodes} node(s), watcher on the {where}"
                 + (f" beside {idle:,} idle watchers" if idle else "") + f": p99 {mine:.2f} ms, "
                 + ("under 2 ms" if mine < 2 else "**not** under 2 ms"))
            if theirs is not None:
                v += ", " + ("below" if mine < theirs else "**not** below") + f" etcd's {theirs:.2f} ms"
            return v

        if idles:
            most = max(idles)
            verdicts = [v for v in (verdict(n, w, i) for n, w, i in cases if i == most) if v]
            if verdicts:
                o.append(f"Against the goal (Palisade's put→event p99 under 2 ms with {WATCH_GOAL_IDLE:,} idle "
                         "watchers on the node, and below etcd's"
                         + (f"; these runs had {most:,}, so they do not settle it" if most < WATCH_GOAL_IDLE else "")
                         + "): " + "; ".join(verdicts) + ".\n")
            rest = [v for v in (verdict(n, w, i) for n, w, i in cases if i == 0) if v]
            if rest:
                o.append("Without the idle watchers, for comparison: " + "; ".join(rest) + ".\n")
        else:
            verdicts = [v for v in (verdict(n, w, i) for n, w, i in cases) if v]
            if verdicts:
                o.append("Against the goal (Palisade's put→event p99 under 2 ms and below etcd's; "
                         "these runs had no idle watchers beside them, which the goal asks for): "
                         + "; ".join(verdicts) + ".\n")
    if idle_rows:
        tgts = list(dict.fromkeys(r["target"] for r in idle_rows))
        targets += tgts
        rounds = max(int(r["round"]) for r in idle_rows)
        o.append("### Idle watchers\n")
        o.append(
            f"A fresh single node per product and round, holding the {int(meta['keys']):,} keys of the "
            f"put load below. Its resident set (`VmRSS`) is read, then one client (Python, "
            f"`selectors`, one thread) opens {n_idle:,} watches, each on its own HTTP/1.1 connection and "
            "its own key (`w/00000`, `w/00001`, ...; nobody writes them; Palisade "
            "`GET /v1/watch/w/00000`, etcd `POST /v3/watch` with that `key`), at most 256 being "
            "opened at a time, and waits until each is established (Palisade: its first message, a "
            "progress; etcd: its `created` message); 2 s later the resident set is read again. "
            "**KiB per watcher** is the difference over the number of watchers: the server's own "
            "memory for a connection and its watch, not the kernel's socket buffers, which `VmRSS` "
            f"does not count. Each watcher here is an HTTP/1.1 connection of its own, so the figure "
            "is that of a connection and its watch together (for etcd also the gateway's gRPC "
            "stream to its server per watch). Palisade ran with "
            f"`{meta.get('watch_flags_palisade', '')}` (its default cap on client connections, "
            "10,000, would refuse some of them); the open-file limit was "
            f"{meta.get('nofile', '?')} for the servers and the client. Medians over {rounds} "
            "round(s); **opened in s** the time to open and establish them all.\n")
        o.append("| product | watchers | opened in s | RSS before MiB | RSS after MiB | KiB per watcher "
                 "| failed to open |")
        o.append("|---|" + "|".join(["---:"] * 6) + "|")
        for t in tgts:
            g = [r for r in idle_rows if r["target"] == t]
            per = med(g, lambda r: (int(r["rss_after_kib"]) - int(r["rss_before_kib"])) / int(r["watchers"]))
            o.append("| " + " | ".join([
                meta["desc_" + t], fmt(int(g[0]["watchers"])), fmt(med(g, lambda r: float(r["open_s"])), 1),
                fmt(med(g, lambda r: int(r["rss_before_kib"]) / 1024)),
                fmt(med(g, lambda r: int(r["rss_after_kib"]) / 1024)), fmt(per, 1),
                fmt(sum(int(r["failed"]) for r in g))]) + " |")
        o.append("")
    if put_rows:
        tgts = list(dict.fromkeys(r["target"] for r in put_rows))
        targets += tgts
        rounds = max(int(r["round"]) for r in put_rows)
        conns = put_rows[0]["conns"]
        o.append("### Writes beside idle and stalled watchers\n")
        o.append(
            f"**put** as in the load tables (keys under `load/`) at {conns} connections for "
            f"{meta['duration']} s on a single node: alone; beside one **watcher reading every event**, "
            "a recursive watch of `load/` (so every put is an event for it) whose client reads "
            "(and counts, without parsing) all that comes; beside one **stalled watcher** of `load/`, "
            "whose client reads its answer head and first message and then never reads its socket "
            "again (until its socket buffers fill, the server writes to it as to a reading one); and "
            "beside the "
            f"**{n_idle:,} idle watchers** of the table above, open from before the warm-up to the end. "
            f"Each run has a fresh node of its own with the same {int(meta['keys']):,} keys and a "
            f"{meta['warmup']} s checked warm-up, so the history one run leaves behind does not weigh on "
            "the next; the rounds take the four in turn, and the products in turn within each. "
            f"Medians over {rounds} round(s); **change** against the put alone; **server CPU %** of the "
            "node (100 = one core); **other CPU %** the rest of the machine, less wrk and the watch "
            "client; **RSS at end** the node's resident set when the put ended. The client holding "
            "the watchers, wrk and the server share the machine's cores.\n")
        o.append("| product | beside the put | put req/s | change | p50 ms | p99 ms | p99 change "
                 "| server CPU % | other CPU % | RSS at end MiB |")
        o.append("|---|---|" + "|".join(["---:"] * 8) + "|")
        failed, notes, verdicts = [], [], []
        for t in tgts:
            base = [r for r in put_rows if r["target"] == t and r["beside"] == "none"]
            base_rate, base_p99 = med(base, rate), med(base, lambda r: ms(r["p99_us"]))
            for beside in BESIDE:
                g = [r for r in put_rows if r["target"] == t and r["beside"] == beside]
                if not g:
                    continue
                what = BESIDE[beside].format(n=f"{n_idle:,}")
                r_rate, p99 = med(g, rate), med(g, lambda r: ms(r["p99_us"]))
                o.append("| " + " | ".join([
                    meta["desc_" + t], what, fmt(r_rate),
                    "-" if beside == "none" else change(r_rate, base_rate),
                    fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(p99, 2),
                    "-" if beside == "none" else change(p99, base_p99),
                    fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))),
                    fmt(med(g, lambda r: other_cpu(hz, r, float(r["client_cpu_s"])
                                                   + float(r.get("watch_client_cpu_s", 0))))),
                    fmt(med(g, lambda r: int(r["rss_end_kib"]) / 1024))]) + " |")
                n_err = sum(int(r["errors"]) for r in g)
                if n_err:
                    failed.append(f"{n_err} in {meta['desc_' + t]}, beside {what}")
                others += [(other_cpu(hz, r, float(r["client_cpu_s"]) + float(r.get("watch_client_cpu_s", 0))),
                            f"{meta['desc_' + t]}, put beside {what}") for r in g]
                if beside == "none" and len(g) > 1:
                    rates, p99s = [rate(r) for r in g], [ms(r["p99_us"]) for r in g]
                    notes.append(f"{meta['desc_' + t]} alone ranged over the rounds from {fmt(min(rates))} to "
                                 f"{fmt(max(rates))} req/s and from {fmt(min(p99s), 2)} to {fmt(max(p99s), 2)} ms "
                                 "p99: the noise to read the changes against.")
                if beside == "reading":
                    kib = med(g, lambda r: int(r["reading_bytes"]) / 1024)
                    notes.append(f"{meta['desc_' + t]}'s reading watcher received {fmt(kib)} KiB (median).")
                if beside == "stalled":
                    kib = med(g, lambda r: int(r["stalled_bytes"]) / 1024)
                    closed = sum(int(r["stalled_eof"]) for r in g)
                    notes.append(
                        f"{meta['desc_' + t]}'s stalled watcher found {fmt(kib)} KiB waiting in its socket "
                        "when the put ended (median; what the server wrote before the kernel's buffers "
                        "filled), and its connection was "
                        + ("open in every round" if not closed else f"closed by the server in {closed} round(s)")
                        + ".")
                if beside == "idle":
                    still = min(int(r["idle_still_open"]) for r in g)
                    later = med(g, lambda r: int(r["idle_later_bytes"]) / 1024)
                    notes.append(f"{meta['desc_' + t]}: at least {fmt(still)} of the {n_idle:,} idle watches "
                                 f"were still open when the put ended; they received {fmt(later)} KiB in all "
                                 "once established (median).")
                if t == "palisade" and beside == "idle" and base_p99:
                    verdicts.append(f"put p99 beside {n_idle:,} idle watchers {change(p99, base_p99)} against "
                                    "alone (goal: within 10%" + (", met" if p99 <= 1.1 * base_p99 else ", **not met**")
                                    + ")")
                if t == "palisade" and beside == "stalled" and base_rate:
                    verdicts.append(f"put req/s beside a stalled watcher {change(r_rate, base_rate)} (goal: "
                                    "unchanged)")
        o.append("")
        o.append("Failed requests: " + ("; ".join(failed) if failed else "none") + ".")
        o.append(" ".join(notes) + "\n")
        o.append("Palisade sends an idle watch a progress message 10 s after its last message (its "
                 "default `progress`), so the idle watchers, opened together, each get one within about "
                 "10 s of opening, which falls in or near the put run; etcd sends none unless asked.\n")
        if verdicts:
            o.append("Palisade against the goals: " + "; ".join(verdicts) + ".\n")
    vals = [v for v, _ in others if v is not None]
    if vals:
        worst = max((x for x in others if x[0] is not None), key=lambda x: x[0])
        o.append(f"Other processes on the machine used a median of {statistics.median(vals):.0f}% of a "
                 "core during these runs" + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else ".")
                 + "\n")
    return targets


# --- locks -----------------------------------------------------------------------------

def client_cpu(r):
    w = float(r["wall_s"])
    return 100.0 * float(r["client_cpu_s"]) / w if w > 0 else None


def report_locks(meta, hz, pair_rows, handoff_rows, o, alone):
    """The lock section into o: uncontended acquire+release pairs, contended hand-off;
    returns the products. alone: the report holds nothing else (for `bench.py splice`)."""
    targets, others, client_bound = [], [], False
    o.append("## Locks\n")
    if alone:
        o.append(f"Run on {meta['date']} with `{meta['command']}` ({meta['cores']} cores, {meta['cpu']}; "
                 f"disk fsync: {meta['fsync'].split(' (')[0]}; {meta.get('version_palisade', '?')}, "
                 f"{meta.get('version_etcd', '')}).\n")
    rounds = max(int(r["round"]) for r in pair_rows + handoff_rows)
    o.append(
        "Each round starts fresh servers for every cluster size and product in turn (the products "
        "take turns within a round) and runs the uncontended pairs at each client count, then the "
        "contended hand-off, all through the leader. The client is one Python process "
        f"({meta.get('python', 'python3')}, `benches/lock.py`, stdlib only): one thread serving "
        "every client's own persistent HTTP/1.1 connection through one selector, requests built by "
        "hand, every answer read by the same incremental parser, JSON-decoded and checked (status, "
        "name, lease, key; Palisade's fencing tokens grow with each grant; in the hand-off run no "
        "grant comes while another client holds the lock): a wrong answer fails the run. The same "
        "client code serves both products, so its overhead is the same for both. Each client has a "
        "lease of its own, granted once before the run with a TTL longer than the run (so no "
        "keepalive is needed) and revoked after it. Each run measures "
        f"{meta.get('lock_secs', '?')} s after 1 s unmeasured. Palisade: `POST /v1/locks/<name>` "
        "`{\"lease\": ID}` (answered once granted), `DELETE /v1/locks/<name>?owner=<owner>`. etcd "
        "(v3 JSON gateway): `POST /v3/lock/lock` `{name, lease}` (answered once granted: its lock "
        "service puts a key `<name>/<lease>` under the lease and waits for the keys created before "
        "it to go), `POST /v3/lock/unlock` `{key}` (deletes that key). "
        f"Figures are medians over {rounds} round(s); **server CPU %** the CPU time of all members "
        "over the measured window (100 = one core), **client CPU %** that of the client.\n")
    if pair_rows:
        tgts = list(dict.fromkeys(r["target"] for r in pair_rows))
        targets += tgts
        cells = {}
        for r in pair_rows:
            cells.setdefault((int(r["nodes"]), int(r["clients"]), r["target"]), []).append(r)

        def pairs_s(r):
            return int(r["pairs"]) / float(r["window_s"])

        o.append("### Uncontended acquire and release\n")
        o.append(
            "Each of **clients** clients loops on a lock name of its own: acquire, then release as "
            "soon as the grant is read, then acquire again. **pairs/s**: acquire+release pairs whose "
            "release answer came within the window; **p50/p99/max ms**: the pair's latency, from "
            "writing the acquire to reading the release's answer (two writes committed one after "
            "the other; percentiles by nearest rank within each round, then the median over the "
            "rounds; max the largest of any round); **vs etcd**: Palisade's pairs/s over etcd's.\n")
        o.append("| nodes | clients | product | pairs/s | vs etcd | p50 ms | p99 ms | max ms | server CPU % "
                 "| client CPU % |")
        o.append("|---:|---:|---|" + "|".join(["---:"] * 7) + "|")
        verdicts = []
        for k in sorted(cells, key=lambda k: (k[0], k[1], tgts.index(k[2]))):
            nodes, n, t = k
            g = cells[k]
            mine = med(g, pairs_s)
            theirs = med(cells.get((nodes, n, "etcd"), []), pairs_s)
            ratio = "-"
            if t == "palisade" and theirs:
                ratio = f"{mine / theirs:.1f}x"
                verdicts.append(f"{nodes} node(s), {n} client(s): {mine / theirs:.1f}x"
                                + ("" if mine >= 3 * theirs else " (**not met**)"))
            mark = ""
            if med(g, client_cpu) >= 90:
                mark, client_bound = " \\*", True
            others += [(other_cpu(hz, r, float(r["client_cpu_s"])),
                        f"{meta['desc_' + t]}, {nodes} node(s), pairs, {n} client(s)") for r in g]
            o.append("| " + " | ".join([
                str(nodes), str(n), meta["desc_" + t], fmt(mine) + mark, ratio,
                fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(med(g, lambda r: ms(r["p99_us"])), 2),
                fmt(max(ms(r["max_us"]) for r in g), 2),
                fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))), fmt(med(g, client_cpu))]) + " |")
        o.append("")
        if verdicts:
            o.append("Against the goal (Palisade's pairs/s at least 3x etcd's): " + "; ".join(verdicts) + ".\n")
    if handoff_rows:
        tgts = list(dict.fromkeys(r["target"] for r in handoff_rows))
        targets += tgts
        cells = {}
        for r in handoff_rows:
            cells.setdefault((int(r["nodes"]), r["target"]), []).append(r)
        waiters = handoff_rows[0]["clients"]
        hold = handoff_rows[0].get("hold_ms", meta.get("lock_hold_ms", "?"))
        o.append("### Contended hand-off\n")
        o.append(
            f"{waiters} clients on ONE lock name, each with its own lease and connection. Each asks for "
            f"the lock, holds it {hold} ms (at least: the selector wakes in whole ms) once its grant is "
            "read, releases it, and asks again once "
            "the release is answered (so it joins the back of the queue): the lock passes from "
            f"client to client with {int(waiters) - 2} or {int(waiters) - 1} others waiting. A "
            "**hand-off** is a grant that follows a release: **release→grant** runs from writing the "
            "holder's release request to reading the next holder's acquire answer in full (commit "
            "of the release, the grant, and its answer to the waiting request); **ack→grant** from "
            "reading the release's own answer to reading that grant (negative: the next holder "
            "heard first). Both requests are served by the same client thread, so the two moments "
            "are on one clock. **hand-offs/s** hand-offs (grants read) within the window; "
            "percentiles by nearest rank within each round, then the median over the rounds "
            "(**p99 of each round** lists them; max the largest of any round).\n")
        o.append("| nodes | product | hand-offs/s | release→grant p50 ms | p99 ms | p99 of each round ms "
                 "| max ms | ack→grant p50 ms | ack→grant p99 ms | server CPU % | client CPU % |")
        o.append("|---:|---|" + "|".join(["---:"] * 9) + "|")
        verdicts = []
        for k in sorted(cells, key=lambda k: (k[0], tgts.index(k[1]))):
            nodes, t = k
            g = sorted(cells[k], key=lambda r: int(r["round"]))
            others += [(other_cpu(hz, r, float(r["client_cpu_s"])),
                        f"{meta['desc_' + t]}, {nodes} node(s), hand-off") for r in g]
            p99 = med(g, lambda r: ms(r["p99_us"]))
            mark = ""
            if med(g, client_cpu) >= 90:
                mark, client_bound = " \\*", True
            o.append("| " + " | ".join([
                str(nodes), meta["desc_" + t],
                fmt(med(g, lambda r: int(r["handoffs"]) / float(r["window_s"]))) + mark,
                fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(p99, 2),
                " / ".join(fmt(ms(r["p99_us"]), 2) for r in g), fmt(max(ms(r["max_us"]) for r in g), 2),
                fmt(med(g, lambda r: ms(r["ack_p50_us"])), 2), fmt(med(g, lambda r: ms(r["ack_p99_us"])), 2),
                fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))), fmt(med(g, client_cpu))]) + " |")
            if t == "palisade" and (nodes, "etcd") in cells:
                theirs = med(cells[(nodes, "etcd")], lambda r: ms(r["p99_us"]))
                verdicts.append(f"{nodes} node(s): p99 {p99:.2f} ms, "
                                + ("below" if p99 < theirs else "**not** below") + f" etcd's {theirs:.2f} ms")
        o.append("")
        if verdicts:
            o.append("Against the goal (Palisade's release→grant p99 below etcd's): " + "; ".join(verdicts) + ".\n")
    if client_bound:
        o.append("\\* the client used 90% or more of a core during this run, so the figure is a lower "
                 "bound of what the server can do.\n")
    vals = [v for v, _ in others if v is not None]
    if vals:
        worst = max((x for x in others if x[0] is not None), key=lambda x: x[0])
        o.append(f"Other processes on the machine used a median of {statistics.median(vals):.0f}% of a "
                 "core during these runs" + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else ".")
                 + "\n")
    return targets


CONFIG_TEXT = {"plain": "plain", "tls": "TLS", "hs256": "JWT HS256", "es256": "JWT ES256"}
SECURE_GOAL = 15.0  # most throughput (%) a JWT configuration may cost against plain


def config_label(config):
    return " + ".join(CONFIG_TEXT.get(p, p) for p in config.split("-"))


def has_jwt(config):
    return any(p in ("hs256", "es256") for p in config.split("-"))


def report_security(meta, hz, rows, o, alone):
    """The security section into o: get and put in each configuration (plain, TLS, JWT HS256,
    JWT ES256, TLS + ES256, ...) against plain; returns the products. alone: the report holds
    nothing else (for `bench.py splice`)."""
    o.append("## Security\n")
    if alone:
        versions = ", ".join(v for v in (meta.get("version_palisade"), meta.get("version_etcd")) if v)
        o.append(f"Run on {meta['date']} with `{meta['command']}` ({meta['cores']} cores, {meta['cpu']}; "
                 f"disk fsync: {meta['fsync'].split(' (')[0]}; {versions}).\n")
    rounds = max(int(r["round"]) for r in rows)
    conns = meta.get("secure_conns", rows[0]["conns"])
    loads = list(dict.fromkeys(r["load"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    sess = sorted({(r["target"], r["tls_version"], r["tls_cipher"]) for r in rows if "tls_version" in r},
                  key=lambda x: targets.index(x[0]))
    tb = {k: meta.get("secure_token_bytes_" + k, "?") for k in ("hs256", "es256")}
    o.append(
        "The cost of TLS and of client authentication. Each round starts fresh servers for every "
        "cluster size, product and configuration in turn (so the configurations take turns and slow "
        f"drift of the machine spreads over all of them), writes the {meta['keys']} keys of the load "
        f"tables through the leader, warms up each load for {meta['warmup']} s with every answer checked "
        f"(a refused token fails the run), then runs each load at {conns} connections for "
        f"{meta['duration']} s against the leader with {meta.get('wrk', 'wrk')}; "
        + ", ".join(f"**{ld}** {LOAD_TEXT.get(ld, ld).split(' (')[0]}" for ld in loads) + ". "
        "Configurations: **plain** HTTP, no auth; **TLS** on the client listener "
        "(`--tls-cert-file`/`--tls-key-file`, a self-signed EC P-256 certificate for 127.0.0.1 made "
        f"with {meta.get('openssl', 'openssl')}; wrk over https, each connection handshakes once and "
        "then keeps it"
        + (": " + "; ".join(f"{meta['desc_' + t]} {v} with {c}" for t, v, c in sess) if sess else "")
        + "); **JWT HS256** client auth with a 32-byte secret (`--auth-jwt-secret-file`); "
        "**JWT ES256** with an EC P-256 public key (`--auth-jwt-public-keys`); and combinations. "
        "The token comes from `palisade auth token` (sub `bench`, read and write `/`) and goes with "
        f"every request as `Authorization: Bearer` ({tb['hs256']} bytes for HS256, {tb['es256']} "
        "for ES256). The server keeps a verified token in a cache keyed by its SHA-256, so a "
        "reused token costs a hash and a map probe per request, not a signature check: "
        "these runs, one token per configuration, measure that path; the first request of each "
        "server verifies it. etcd, for comparison, runs plain and with TLS only (its client auth "
        f"is not JWT over HTTP). Figures are medians over {rounds} round(s); **vs plain** the "
        "throughput against the same product, cluster size and load without TLS or auth; "
        "**server CPU µs/req** CPU time of all members per request; **client CPU %** wrk's, "
        "**other CPU %** the rest of the machine (100 = one core): wrk, the servers and anything "
        "else share the machine's cores, so a high other CPU % means the run was disturbed.\n")
    cells = {}
    for r in rows:
        cells.setdefault((int(r["nodes"]), r["load"], r["target"], r["config"]), []).append(r)
    ok = {k: [r for r in g if r.get("wrk_https") != "no"] for k, g in cells.items()}
    o.append("| nodes | load | product | configuration | req/s | vs plain | p50 ms | p99 ms "
             "| server CPU µs/req | server CPU % | client CPU % | other CPU % |")
    o.append("|---:|---|---|---|" + "|".join(["---:"] * 8) + "|")
    errors, others, verdicts, client_bound, no_https = [], [], [], False, []

    def us_req(r):
        n = int(r["requests"])
        return 1e6 * int(r["server_ticks"]) / hz / n if n else None

    def rate_of(k):
        return med(ok.get(k, []), rate)

    for k in sorted(cells, key=lambda k: (k[0], loads.index(k[1]), targets.index(k[2]), configs.index(k[3]))):
        nodes, load, t, config = k
        name = f"{meta['desc_' + t]}, {nodes} node(s), {load}, {config_label(config)}"
        g = ok[k]
        if not g:
            no_https.append(name)
            o.append("| " + " | ".join([str(nodes), load, meta["desc_" + t], config_label(config),
                                        "wrk: no https", "-", "-", "-", "-", "-", "-", "-"]) + " |")
            continue
        mine = med(g, rate)
        plain = rate_of((nodes, load, t, "plain"))
        vs = "-" if config == "plain" else change(mine, plain)
        n_err = sum(int(r["errors"]) + int(r["bad"]) for r in g)
        if n_err:
            errors.append(f"{n_err} in {name}")
        others += [(other_cpu(hz, r, float(r["client_cpu_s"])), name) for r in g]
        mark = ""
        if med(g, client_cpu) >= 90:
            mark, client_bound = " \\*", True
        o.append("| " + " | ".join([
            str(nodes), load, meta["desc_" + t], config_label(config), fmt(mine) + mark, vs,
            fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(med(g, lambda r: ms(r["p99_us"])), 2),
            fmt(med(g, us_req)), fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))),
            fmt(med(g, client_cpu)), fmt(med(g, lambda r: other_cpu(hz, r, float(r["client_cpu_s"]))))]) + " |")
        if t == "palisade" and has_jwt(config) and plain:
            cost = 100.0 * (1 - mine / plain)
            verdicts.append(f"{nodes} node(s), {load}, {config_label(config)}: "
                            + (f"{cost:.0f}% less" if cost >= 0.5 else
                               f"{-cost:.0f}% more" if cost <= -0.5 else "the same")
                            + ("" if cost <= SECURE_GOAL else " (**not met**)"))
    o.append("")
    if verdicts:
        o.append(f"Against the goal (JWT, alone or with TLS, costs at most {SECURE_GOAL:.0f}% of plain's "
                 "throughput): " + "; ".join(verdicts) + ".\n")
    # The reading: what each layer adds per request on Palisade, from the CPU time per request
    # (less noisy than throughput when the machine is shared).
    reading = []
    for nodes in sorted({k[0] for k in cells}):
        for load in loads:
            base = med(ok.get((nodes, load, "palisade", "plain"), []), us_req)
            if not base:
                continue
            parts = []
            for config in configs:
                g = ok.get((nodes, load, "palisade", config), [])
                if config == "plain" or not g:
                    continue
                parts.append(f"{config_label(config)} {med(g, us_req) - base:+.0f} µs")
            if parts:
                reading.append(f"{nodes} node(s), {load} (plain {base:.0f} µs): " + ", ".join(parts))
    if reading:
        o.append("Server CPU per request on Palisade, against plain: " + "; ".join(reading) + ". "
                 "With the token cache, HS256 and ES256 should cost the same (one SHA-256 of the token "
                 "and a probe per request); an ES256 signature check per request would instead add "
                 "tens of µs over HS256. TLS adds the record encryption of every request and answer. "
                 "Differences of a few µs, or a few % of req/s, are within the noise of short runs on "
                 "a shared machine: compare them with the other CPU % column and the spread over "
                 "rounds.\n")
    if no_https:
        o.append("wrk got no good answer over https in: " + "; ".join(no_https) + " (bench.py's https "
                 "client did, so the server's TLS worked): this wrk cannot measure TLS, and those rows "
                 "have no figures.\n")
    if client_bound:
        o.append("\\* wrk (one thread) used 90% or more of a core in this run, so the figure is a lower "
                 "bound of what the server can do.\n")
    o.append("Failed requests (socket errors, timeouts, HTTP errors, wrong answers): "
             + ("; ".join(errors) if errors else "none") + ".")
    vals = [v for v, _ in others if v is not None]
    if vals:
        worst = max((x for x in others if x[0] is not None), key=lambda x: x[0])
        o.append(f"Other processes on the machine used a median of {statistics.median(vals):.0f}% of a "
                 "core during these runs" + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else "."))
    o.append("")
    return targets


def report_ops(meta, rows, o, alone):
    """The operations section into o: backups, a member's catch-up, put during a membership
    change; returns the products. alone: the report holds nothing else."""
    o.append("## Operations\n")
    if alone:
        versions = ", ".join(v for v in (meta.get("version_palisade"), meta.get("version_etcd")) if v)
        o.append(f"Run on {meta['date']} with `{meta['command']}` ({meta['cores']} cores, {meta['cpu']}; "
                 f"disk fsync: {meta['fsync'].split(' (')[0]}; {versions}).\n")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    rounds = max(int(r["round"]) for r in rows)
    r0 = rows[0]
    snaps = sorted(k for k in r0 if k.startswith("snapshot") and k.endswith("_s"))
    o.append(
        f"Each round starts a fresh 3-node cluster of each product and writes {int(r0['keys']):,} keys "
        f"of 100 bytes (in transactions of 100 puts) plus the {meta['keys']} keys of the load tables. "
        f"**Backup**: {len(snaps)} backups of the whole store in a row, `palisade snapshot save` "
        "(a linearizable snapshot streamed by the leader, checked against its SHA-256 and fsynced) "
        "against `etcdctl snapshot save`, the same way; the median time, and the file size. "
        "**Catch-up**: a 4th member started (Palisade: `serve --join`, which adds it as a learner and "
        "promotes it once caught up; etcd: `etcdctl member add --learner`, then the new etcd) and "
        "timed from its start until it has applied the store's revision; its peak RSS (VmHWM) and the "
        "leader's highest RSS meanwhile. **Put during a membership change**: put at "
        f"{meta.get('ops_conns', '16')} connections for {meta.get('ops_secs', '10')} s alone, then "
        "again while, 1 s in, member 4 is removed and a 5th added (which catches up under the load). "
        f"Medians over {rounds} round(s).\n")
    o.append("| | store | backup file | backup time | backup MB/s | catch-up | new member peak RSS "
             "| leader RSS during catch-up | put req/s alone | put p99 alone | put req/s during change "
             "| put p99 during change | errors during change |")
    o.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    mib = lambda k: (lambda r: int(r[k]) / 1024)
    figs = {}
    for t in targets:
        g = [r for r in rows if r["target"] == t]
        snap_s = med(g, lambda r: statistics.median(float(r[k]) for k in snaps))
        size = med(g, lambda r: int(r["snapshot_bytes"]))
        mbs = size / 1e6 / snap_s if snap_s else None
        figs[t] = {"mbs": mbs, "catchup": med(g, lambda r: float(r["secs"])),
                   "rss": med(g, mib("new_hwm_kib")), "p99": med(g, lambda r: ms(r["change_p99_us"]))}
        o.append("| " + " | ".join([
            meta.get("desc_" + t, t), f"{int(r0['keys']):,} keys",
            f"{size / 1e6:.1f} MB", f"{snap_s:.2f} s", fmt(mbs, 1),
            f"{figs[t]['catchup']:.2f} s", f"{figs[t]['rss']:.0f} MiB",
            f"{med(g, mib('leader_peak_kib')):.0f} MiB",
            fmt(med(g, lambda r: int(r["alone_requests"]) / float(r["alone_duration_s"]))),
            f"{med(g, lambda r: ms(r['alone_p99_us'])):.2f} ms",
            fmt(med(g, lambda r: int(r["change_requests"]) / float(r["change_duration_s"]))),
            f"{figs[t]['p99']:.2f} ms", fmt(med(g, lambda r: int(r["change_errors"])))]) + " |")
    o.append("")
    if "palisade" in figs and "etcd" in figs:
        p, e = figs["palisade"], figs["etcd"]
        o.append(f"Palisade against etcd: backups at {p['mbs'] / e['mbs']:.2f}x etcd's MB/s; a new member "
                 f"caught up in {p['catchup'] / e['catchup']:.2f}x etcd's time with "
                 f"{p['rss'] / e['rss']:.2f}x its peak RSS; put p99 during the change "
                 f"{p['p99']:.2f} ms against etcd's {e['p99']:.2f} ms.\n")
    return targets


MIX_KINDS = ("get", "put", "txn", "keepalive")  # benches/common.lua, bench.MIX: 70 20 5 5
MIXED_GOAL = 3.0  # Palisade's req/s over etcd's that the goal asks for


def report_mixed(meta, hz, rows, o, alone):
    """The mixed workload's section into o; returns the products. alone: the report holds
    nothing else (for `bench.py splice`)."""
    o.append("## Mixed workload\n")
    if alone:
        versions = ", ".join(v for v in (meta.get("version_palisade"), meta.get("version_etcd")) if v)
        o.append(f"Run on {meta['date']} with `{meta['command']}` ({meta['cores']} cores, {meta['cpu']}; "
                 f"disk fsync: {meta['fsync'].split(' (')[0]}; {versions}).\n")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    rounds = max(int(r["round"]) for r in rows)
    watchers = int(rows[0]["watchers"])
    keys, leases = int(meta["keys"]), int(meta["leases"])
    o.append(
        "Reads, writes, transactions and keepalives together, with watchers. Each cell (cluster "
        "size, connections, product) runs on freshly started servers; each round takes the cells "
        "in turn, and the products in turn within each. Through the leader: "
        f"the {keys:,} keys of the load tables are written (64-byte values), here in {watchers:,} "
        f"groups, key i under `g<i mod {watchers}>/` (so `g7/k000000000000007`), and "
        f"{leases:,} leases of {meta['lease_ttl']} s are granted (as the keepalive load's). Then "
        f"one client (Python, `selectors`, one thread, `benches/watch.py`) opens {watchers:,} "
        "watchers on the leader, each on its own HTTP/1.1 connection: a recursive watch of one "
        "group (Palisade `GET /v1/watch/g7?recursive` with `Accept: application/x-ndjson`; etcd "
        "`POST /v3/watch` with the prefix `g7/` as `key` and `range_end`), so every key written "
        "is an event for exactly one of them, and the server fans the writes out over all of "
        "them"
        + (f" (Palisade with `--max-client-connections {watchers + 1000} --max-watchers {watchers + 1000}`)"
           if watchers + 1000 > 10000 else "")
        + ". The client reads everything that comes on every watch and counts the events. "
        f"A {meta['warmup']} s warm-up at 16 connections checks every answer (a wrong one fails "
        f"the run), then wrk ({meta.get('wrk', 'wrk')}) runs the mix for {meta['duration']} s at "
        "the given connections: each request picked at random, **70% get** (a linearizable read "
        "of a random key: Palisade `GET /v1/kv/<key>`, etcd `POST /v3/kv/range`), **20% put** of "
        "a random key, **5% txn** (the txn load's transaction: 2 compares, 2 puts of random "
        "keys) and **5% keepalive** of a random one of the leases (Palisade "
        "`POST /v1/leases/<id>/keepalive`, etcd `POST /v3/lease/keepalive`): "
        "`benches/<product>/mixed.lua` sends the very requests of the single-load scripts. wrk keeps one latency "
        "histogram for a run, so **p50/p99** are over all the requests of the mix, not per "
        "kind, and **req/s** counts them all. wrk's answer hook does not say which request an "
        "answer belongs to, so the warm-up tells the kind of each answer by its shape (the "
        "kinds' own checks, the most particular first; Palisade answers a put with the key, as "
        "a get) and also fails when more answers of a kind come than requests of it were sent. "
        f"Medians over {rounds} round(s); **vs etcd** Palisade's req/s over etcd's; **peak RSS** "
        "the largest `VmHWM` of a member (and for 3 nodes the sum over the members), the "
        "watchers' connections included; **server CPU %** all members (100 = one core); "
        "**watch events** the events the watchers received from the start of the run until "
        "they stopped coming after it (none for 0.5 s), and **of keys written** that against "
        "the keys the run wrote (puts + 2 per txn sent), so 100% means every write reached its "
        "watcher; writes still in flight when the warm-up ended can commit in the run's window, "
        "so a little over 100% is possible.\n")
    cells = {}
    for r in rows:
        cells.setdefault((int(r["nodes"]), int(r["conns"]), r["target"]), []).append(r)

    def written(r):
        return int(r.get("sent_put", 0)) + 2 * int(r.get("sent_txn", 0))

    def share(r):
        w = written(r)
        return 100.0 * int(r["events"]) / w if w else None

    o.append("| nodes | conns | product | req/s | vs etcd | p50 ms | p99 ms | peak RSS MiB (max member / sum) "
             "| server CPU % | watch events | of keys written |")
    o.append("|---:|---:|---|" + "|".join(["---:"] * 8) + "|")
    errors, others, verdicts, client_bound, lagging = [], [], [], False, []
    for k in sorted(cells, key=lambda k: (k[0], k[1], targets.index(k[2]))):
        nodes, conns, t = k
        g = cells[k]
        name = f"{meta['desc_' + t]}, {nodes} node(s), {conns} conns"
        mine = med(g, rate)
        theirs = med(cells.get((nodes, conns, "etcd"), []), rate)
        ratio = "-"
        if t == "palisade" and theirs:
            x = mine / theirs
            ratio = f"{x:.2f}x" if f"{x:.1f}" == f"{MIXED_GOAL:.1f}" else f"{x:.1f}x"  # 2.97x is not 3.0x
            p99, their_p99 = med(g, lambda r: ms(r["p99_us"])), med(cells[(nodes, conns, "etcd")],
                                                                   lambda r: ms(r["p99_us"]))
            verdicts.append(f"{nodes} node(s), {conns} conns: {ratio} etcd's req/s"
                            + ("" if mine >= MIXED_GOAL * theirs else " (**not met**)")
                            + f", p99 {p99:.2f} ms against etcd's {their_p99:.2f} ms"
                            + ("" if p99 < their_p99 else " (**not met**)"))
        n_err = sum(int(r["errors"]) for r in g)
        if n_err:
            errors.append(f"{n_err} in {name}")
        others += [(other_cpu(hz, r, float(r["client_cpu_s"]) + float(r["watch_client_cpu_s"])), name) for r in g]
        mark = ""
        if med(g, client_cpu) >= 90:
            mark, client_bound = " \\*", True
        rss = fmt(max(int(r["rss_max_kib"]) for r in g) / 1024)
        if nodes > 1:
            rss += " / " + fmt(max(int(r["rss_sum_kib"]) for r in g) / 1024)
        sh = med(g, share)
        if sh is not None and sh < 99:
            lagging.append(name)
        o.append("| " + " | ".join([
            str(nodes), str(conns), meta["desc_" + t], fmt(mine) + mark, ratio,
            fmt(med(g, lambda r: ms(r["p50_us"])), 2), fmt(med(g, lambda r: ms(r["p99_us"])), 2), rss,
            fmt(med(g, lambda r: cpu(hz, r, r["server_ticks"]))), fmt(med(g, lambda r: int(r["events"]))),
            "-" if sh is None else f"{sh:.0f}%"]) + " |")
    o.append("")
    sent = {kind: sum(int(r.get("sent_" + kind, 0)) for r in rows) for kind in MIX_KINDS}
    total = sum(sent.values())
    if total:
        o.append("The mix wrk sent, all runs together: " + ", ".join(
            f"{kind} {100.0 * n / total:.1f}%" for kind, n in sent.items()) + f" of {total:,} requests.\n")
    if verdicts:
        o.append(f"Against the goal (≥ {MIXED_GOAL:.0f}x etcd's throughput and a lower p99): "
                 + "; ".join(verdicts) + ".\n")
    watch_cpu = [(100.0 * float(r["watch_client_cpu_s"]) / float(r["wall_s"]),
                  f"{meta['desc_' + r['target']]}, {r['nodes']} node(s), {r['conns']} conns") for r in rows]
    worst = max(watch_cpu)
    o.append(f"The watchers' client used a median of {statistics.median(v for v, _ in watch_cpu):.0f}% of a "
             f"core during the runs (at most {worst[0]:.0f}%, during {worst[1]}); it shares the "
             "machine's cores with wrk and the servers. "
             + ("Every watcher was still open at the end of every run." if all(
                 int(r.get("watchers_still_open", -1)) == int(r["watchers"]) for r in rows)
                else "Not every watcher was still open at the end of every run: "
                + "; ".join(f"{meta['desc_' + r['target']]}, {r['nodes']} node(s), {r['conns']} conns, "
                            f"round {r['round']}: {r.get('watchers_still_open', '?')} of {r['watchers']} "
                            f"({r.get('watchers_closed_by_server', '?')} closed by the server)"
                            for r in rows if int(r.get("watchers_still_open", -1)) != int(r["watchers"])) + ".")
             + ("" if not lagging else " The watchers received fewer events than the keys written in: "
                + "; ".join(lagging) + " (events still queued, or lost).")
             + "\n")
    if client_bound:
        o.append("\\* wrk (one thread) used 90% or more of a core in this run, so the figure is a lower "
                 "bound of what the server can do.\n")
    o.append("Failed requests (socket errors, timeouts, HTTP errors): "
             + ("; ".join(errors) if errors else "none") + ".")
    vals = [v for v, _ in others if v is not None]
    if vals:
        worst = max((x for x in others if x[0] is not None), key=lambda x: x[0])
        o.append(f"Other processes on the machine used a median of {statistics.median(vals):.0f}% of a "
                 "core during these runs" + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else "."))
    o.append("")
    return targets


def cmd_splice(src, dst, section="Watches"):
    """Put the "## section" of the report src into the report dst."""
    def split(text):
        head, parts = [], []
        for line in text.splitlines(keepends=True):
            if line.startswith("## "):
                parts.append([line])
            elif parts:
                parts[-1].append(line)
            else:
                head.append(line)
        return head, parts

    _, src_parts = split(open(src).read())
    mine = [p for p in src_parts if p[0].strip() == "## " + section]
    if not mine:
        print(f"{src} has no section '## {section}'", file=sys.stderr)
        return 1
    head, parts = split(open(dst).read())
    at = next((i for i, p in enumerate(parts) if p[0].strip() == "## " + section), None)
    if at is not None:
        parts[at] = mine[0]
    else:
        at = next((i for i, p in enumerate(parts) if p[0].startswith(("## Memory", "## Machine"))), len(parts))
        parts.insert(at, mine[0])
    with open(dst, "w") as f:
        f.write("".join(head) + "".join("".join(p) for p in parts))
    print(f"put the section '## {section}' of {src} into {dst}")
    return 0


def main():
    cmds = ("leader", "preload", "bulkload", "revision", "catchup", "leases", "failover", "fsync", "sample",
            "latsummary", "report", "splice")
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return globals()["cmd_" + sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
