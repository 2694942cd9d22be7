#!/usr/bin/env python3
"""benches/bench.py: the HTTP/JSON and reporting side of benches/run.sh (stdlib only).

  bench.py leader palisade|etcd URL...   print the leader's URL once every member is ready
                                         and all agree on one leader; exit 1 otherwise
  bench.py preload palisade|etcd URL N   write keys k000000000000000 .. N-1 (the wrk key space)
  bench.py fsync DIR                     fdatasync latency of 4 KiB appends in DIR
  bench.py sample SECS FILE PRODUCT PID...
                                         append the RSS (VmRSS) of each PID to FILE now and
                                         every SECS s until terminated (the memory run)
  bench.py report WORKDIR OUT            BENCHMARKS.md from WORKDIR/{machine.txt,results.txt,
                                         rss.txt,rss-samples-*.txt}
"""

import base64
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

VALUE = "0123456789abcdef" * 4  # the same 64 bytes as benches/common.lua


def b64(s):
    return base64.b64encode(s.encode()).decode()


def key(i):
    return "k%015d" % i


class Conn:
    def __init__(self, url, timeout=2.0):
        u = urllib.parse.urlsplit(url)
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
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


def cmd_preload(product, url, n, conns=16):
    n = int(n)
    nxt, lock, failures = [0], threading.Lock(), []

    def worker():
        c = Conn(url, timeout=10)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n or failures:
                return
            if product == "palisade":
                st, body = c.call("PUT", "/v1/kv/" + key(i), {"value": VALUE})
            else:
                st, body = c.call("POST", "/v3/kv/put", {"key": b64(key(i)), "value": b64(VALUE)})
            if st != 200:
                failures.append("%s: HTTP %d %s" % (key(i), st, body[:200]))

    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        print("preload failed: " + failures[0], file=sys.stderr)
        return 1
    return 0


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
    rss_rows = read_rows(os.path.join(workdir, "rss.txt"))
    o = []
    o.append("# Benchmarks\n")
    o.append("Palisade and etcd on the same machine under the same closed-loop HTTP load "
             "([wrk](https://github.com/wg/wrk)), one product after the other. "
             "Regenerate this file with `make bench` (see `benches/run.sh` for the knobs).\n")
    targets = []
    if rows:
        targets += report_cells(meta, hz, rows, o)
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


def report_cells(meta, hz, rows, o):
    """The load cells' sections into o; returns the products."""

    cells, order = {}, []
    for r in rows:
        k = (int(r["nodes"]), r["load"], int(r["conns"]), r["target"])
        if k not in cells:
            cells[k] = []
            order.append(k)
        cells[k].append(r)
    loads = list(dict.fromkeys(k[1] for k in order))
    targets = list(dict.fromkeys(k[3] for k in order))
    order.sort(key=lambda k: (k[0], loads.index(k[1]), k[2], targets.index(k[3])))

    def med(g, f):
        vals = [f(r) for r in g]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def cpu(r, ticks):
        w = float(r["wall_s"])
        return 100.0 * int(ticks) / hz / w if w > 0 else None

    def client(r):
        return 100.0 * float(r["client_cpu_s"]) / float(r["wall_s"])

    def other(r):
        return max(cpu(r, r["busy_ticks"]) - cpu(r, r["server_ticks"]) - client(r), 0.0)

    tables, errors, others, client_bound = {}, [], [], False
    for k in order:
        g = cells[k]
        nodes, load, conns, target = k
        rss_max = max(int(r["rss_max_kib"]) for r in g) / 1024
        rss = fmt(rss_max)
        if nodes > 1:
            rss += " / " + fmt(max(int(r["rss_sum_kib"]) for r in g) / 1024)
        n_err = sum(int(r["errors"]) for r in g)
        if n_err:
            errors.append(f"{n_err} in {meta['desc_' + target]}, {nodes} node(s), {load}, {conns} conns")
        name = f"{meta['desc_' + target]}, {nodes} node(s), {load}, {conns} conns"
        others += [(other(r), name) for r in g]
        mark = ""
        if med(g, client) >= 90:
            mark, client_bound = " \\*", True
        tables.setdefault(nodes, []).append([
            load, str(conns), meta["desc_" + target],
            fmt(med(g, rate)) + mark,
            fmt(med(g, lambda r: int(r["p50_us"]) / 1e3), 2),
            fmt(med(g, lambda r: int(r["p99_us"]) / 1e3), 2),
            rss,
            fmt(med(g, lambda r: cpu(r, r["server_ticks"]))),
        ])

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
    for load in loads:
        o.append(f"- **{load}**: {LOAD_TEXT.get(load, load)}.")
    o.append("")
    o.append(
        "Columns: **req/s** completed requests per second; **p50/p99 ms** latency percentiles from wrk "
        "(with its coordinated-omission correction, so stalls show in p99); **peak RSS MiB** the largest "
        "peak resident set (`VmHWM`) of a member since its start, over the rounds, and for 3 nodes also "
        "the sum over the members; **server CPU %** CPU time of all server processes during the cell, "
        "100 = one core. Servers, the load generator and all members share the machine's cores and one "
        "disk, so a 3-node cluster here shows the cost of replication and quorum fsyncs, not of a network; "
        "writes are bound by the disk's fsync latency. Compare the products within one machine, not "
        "absolute numbers across machines.\n")
    for nodes in sorted(tables):
        o.append(f"## {nodes} node{'s' if nodes > 1 else ''}\n")
        hdr = ["load", "conns", "product", "req/s", "p50 ms", "p99 ms",
               "peak RSS MiB" + (" (max member / sum)" if nodes > 1 else ""), "server CPU %"]
        o.append("| " + " | ".join(hdr) + " |")
        o.append("|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|")
        for row in tables[nodes]:
            o.append("| " + " | ".join(row) + " |")
        o.append("")
    if client_bound:
        o.append("\\* the load generator (one wrk thread) used 90% or more of a core in this cell, "
                 "so the figure is a lower bound of what the server can do.\n")
    o.append("Failed requests (socket errors, timeouts, HTTP errors): "
             + ("; ".join(errors) if errors else "none") + ".")
    if others:
        worst = max(others)
        o.append(f"Other processes on the machine used a median of "
                 f"{statistics.median(v for v, _ in others):.0f}% of a core during the cells"
                 + (f" (at most {worst[0]:.0f}%, during {worst[1]})." if worst[0] >= 1 else "."))
    o.append("")
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


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("leader", "preload", "fsync", "sample", "report"):
        print(__doc__, file=sys.stderr)
        return 2
    return globals()["cmd_" + sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
