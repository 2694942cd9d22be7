#!/usr/bin/env python3
"""benches/lock.py: the lock clients of benches/run.sh (stdlib only, one thread each).

  lock.py pairs palisade|etcd URL CLIENTS SECS PID...
        Uncontended acquire+release pairs: CLIENTS clients, each on its own HTTP/1.1
        connection, its own lock name and its own lease (granted once, before the run),
        each looping acquire -> release as fast as the answers come. After LEAD_IN_S
        unmeasured seconds, counts for SECS s the pairs whose release answer arrives in
        that window and their latencies (acquire sent -> release answer read). Prints
        "LOCKPAIRS clients=.. pairs=.. window_s=.. p50_us=.. p99_us=.. max_us=.. ..."
        with the CPU time of the server processes PID... (ticks), of the machine (busy
        ticks) and of this client over the window.
  lock.py handoff palisade|etcd URL CLIENTS SECS HOLD_MS PID...
        Contended hand-off: CLIENTS clients, each on its own connection and lease, all on
        ONE lock name. Each asks for the lock, holds it HOLD_MS ms once granted, releases
        it, and once that release is answered asks again (so it joins the back of the
        queue). A hand-off is one grant after a release: its latency is from the moment
        the holder's release request is written to its socket (t_release_sent) to the
        moment the next holder's acquire answer has been read in full (t_granted);
        "ack->grant" is t_granted minus the moment the release's own answer was read
        (negative: the next holder heard first). Prints "LOCKHANDOFF clients=..
        handoffs=.. window_s=.. p50_us=.. p99_us=.. max_us=.. ack_p50_us=.. ack_p99_us=.."
        and the CPU figures as above.

Both products get the same client: requests are built by hand and every answer is read
by the same incremental HTTP/1.1 reader (Reply: Content-Length answers; any other, such as
etcd's chunked error answers, through watch.py's Response) and JSON-decoded; one selector
serves every connection. Timestamps are time.perf_counter_ns().

  Palisade: POST /v1/leases {"ttl"} -> 201 {id}; POST /v1/locks/NAME {"lease": ID} -> 200
  {name, owner, lease, fencing_token, revision}; DELETE /v1/locks/NAME?owner=OWNER -> 200
  {revision, released: true}; DELETE /v1/leases/ID at the end.
  etcd (v3 JSON gateway): POST /v3/lease/grant {"TTL"} -> {ID, TTL}; POST /v3/lock/lock
  {name: base64, lease: ID} -> {header, key} (key = NAME/<lease in hex>); POST
  /v3/lock/unlock {key} -> {header}; POST /v3/lease/revoke {ID} at the end.

Every answer is checked (status, and that it is the grant or release asked for: the name,
the lease, the key; Palisade's fencing tokens grow with every grant of a name; in the
hand-off run no grant comes while another client of this run holds the lock); a wrong
answer, a closed connection or an answer that takes more than STALL_S fails the run
(exit 1, the reason on stderr).
"""

import json
import os
import re
import resource
import selectors
import socket
import sys
import time
import urllib.parse

from watch import Response, addr, b64, request

LEAD_IN_S = 1.0  # unmeasured seconds at the start of each run
STALL_S = 10.0  # longest wait for an answer before the run fails
now = time.perf_counter_ns


class Fail(Exception):
    pass


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)


class Reply:
    """One HTTP/1.1 answer read incrementally: feed() bytes as they come until `done`; then
    `status` and `body`. A lean path for answers with a Content-Length (every answer the run
    expects); any other (chunked) is handed to watch.py's Response."""

    __slots__ = ("raw", "status", "body", "done", "start", "end", "slow")

    def __init__(self):
        self.raw, self.status, self.body, self.done, self.slow = b"", None, b"", False, None
        self.start = self.end = -1

    def feed(self, data):
        if self.slow is not None:
            self.slow.feed(data)
            self._slow_done()
            return
        self.raw += data
        if self.end < 0:
            head_end = self.raw.find(b"\r\n\r\n")
            if head_end < 0:
                return
            m = CONTENT_LENGTH.search(self.raw, 0, head_end + 2)
            if m is None:
                self.slow = Response()
                self.slow.feed(self.raw)
                self._slow_done()
                return
            self.status = int(self.raw[9:12])
            self.end = head_end + 4 + int(m.group(1))
            self.start = head_end + 4
        if len(self.raw) >= self.end:
            if len(self.raw) > self.end:
                raise Fail(f"more bytes than the answer: {self.raw[:300]!r}")
            self.body, self.done = self.raw[self.start:], True

    def _slow_done(self):
        self.status = self.slow.status
        if self.slow.done:
            self.body, self.done = bytes(self.slow.body), True


# --- the two products -----------------------------------------------------------------------


def decode(resp, what):
    try:
        return json.loads(bytes(resp.body))
    except ValueError:
        raise Fail(f"{what}: HTTP {resp.status}, not JSON: {bytes(resp.body[:200])!r}") from None


class Palisade:
    def __init__(self, host):
        self.host = host

    def grant_req(self, ttl_s):
        return request("POST", "/v1/leases", self.host, {"ttl": ttl_s})

    def granted(self, resp):
        d = decode(resp, "lease grant")
        if resp.status != 201 or not isinstance(d.get("id"), int):
            raise Fail(f"lease grant: HTTP {resp.status} {d}")
        return d["id"]

    def revoke_req(self, lease):
        return request("DELETE", f"/v1/leases/{lease}", self.host)

    def revoked(self, resp):
        if resp.status != 200:
            raise Fail(f"lease revoke: HTTP {resp.status} {bytes(resp.body[:200])!r}")

    def acquire_req(self, name, lease):
        return request("POST", "/v1/locks/" + name, self.host, {"lease": lease})

    def acquired(self, resp, name, lease):
        """The handle to release with and the grant's token (growing with each grant of name)."""
        d = decode(resp, "acquire")
        if (resp.status != 200 or d.get("name") != name or d.get("lease") != lease
                or not isinstance(d.get("owner"), str) or not isinstance(d.get("fencing_token"), int)):
            raise Fail(f"acquire {name}: HTTP {resp.status} {d}")
        return d["owner"], d["fencing_token"]

    def release_req(self, name, owner):
        return request("DELETE", f"/v1/locks/{name}?owner={urllib.parse.quote(owner)}", self.host)

    def released(self, resp, name):
        d = decode(resp, "release")
        if resp.status != 200 or d.get("released") is not True:
            raise Fail(f"release {name}: HTTP {resp.status} {d}")


class Etcd:
    def __init__(self, host):
        self.host = host

    def grant_req(self, ttl_s):
        return request("POST", "/v3/lease/grant", self.host, {"TTL": ttl_s})

    def granted(self, resp):
        d = decode(resp, "lease grant")
        if resp.status != 200 or "ID" not in d or d.get("error"):
            raise Fail(f"lease grant: HTTP {resp.status} {d}")
        return int(d["ID"])

    def revoke_req(self, lease):
        return request("POST", "/v3/lease/revoke", self.host, {"ID": str(lease)})

    def revoked(self, resp):
        d = decode(resp, "lease revoke")
        if resp.status != 200 or "header" not in d:
            raise Fail(f"lease revoke: HTTP {resp.status} {d}")

    def acquire_req(self, name, lease):
        return request("POST", "/v3/lock/lock", self.host, {"name": b64(name), "lease": str(lease)})

    def acquired(self, resp, name, lease):
        d = decode(resp, "lock")
        key = d.get("key")
        if resp.status != 200 or key != b64(f"{name}/{lease:x}") or "header" not in d:
            raise Fail(f"lock {name}: HTTP {resp.status} {d}")
        return key, int(d["header"]["revision"])

    def release_req(self, name, key):
        return request("POST", "/v3/lock/unlock", self.host, {"key": key})

    def released(self, resp, name):
        d = decode(resp, "unlock")
        if resp.status != 200 or "header" not in d:
            raise Fail(f"unlock {name}: HTTP {resp.status} {d}")


PRODUCTS = {"palisade": Palisade, "etcd": Etcd}


# --- connections and measuring ---------------------------------------------------------------


class Client:
    """One client: its connection, lease, lock name and the request in flight."""

    __slots__ = ("sock", "resp", "lease", "name", "state", "t0", "handle", "token", "sent_at", "done", "idx")

    def __init__(self, host, name):
        self.sock = socket.create_connection(host, timeout=STALL_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.resp, self.lease, self.name, self.state = None, None, name, "idle"
        self.t0 = self.sent_at = 0
        self.handle, self.token, self.done, self.idx = None, -1, False, 0

    def send(self, data, state):
        """Write a request (a few hundred bytes: the socket buffer takes it whole)."""
        self.resp, self.state = Reply(), state
        self.sent_at = now()
        if self.sock.send(data) != len(data):
            raise Fail("a request did not fit the socket buffer")

    def call(self, data):
        """A blocking request and its answer (the set-up and the clean-up)."""
        self.resp = Reply()
        self.sock.sendall(data)
        while not self.resp.done:
            got = self.sock.recv(65536)
            if not got:
                raise Fail("the server closed a connection")
            self.resp.feed(got)
        return self.resp

    def read(self):
        """Feed what the socket has; True once the answer is complete."""
        try:
            got = self.sock.recv(65536)
        except BlockingIOError:
            return False
        if not got:
            raise Fail(f"the server closed the connection of {self.name} ({self.state} in flight)")
        self.resp.feed(got)
        return self.resp.done


def ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6]


def cpu_now(pids):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ticks(pids), busy_ticks(), ru.ru_utime + ru.ru_stime, time.monotonic()


def cpu_fields(a, b):
    return (f"server_ticks={b[0] - a[0]} busy_ticks={b[1] - a[1]} client_cpu_s={b[2] - a[2]:.2f} "
            f"wall_s={b[3] - a[3]:.3f}")


def pct(vals, q):
    """Nearest-rank percentile q (0-100) of sorted vals, in us."""
    if not vals:
        return 0
    return int(vals[max(0, min(len(vals) - 1, -(-len(vals) * q // 100) - 1))] / 1000)


def setup(product, url, n, names, ttl_s):
    host = addr(url)
    p = PRODUCTS[product](host)
    clients = []
    for name in names:
        c = Client(host, name)
        c.lease = p.granted(c.call(p.grant_req(ttl_s)))
        c.sock.setblocking(False)
        clients.append(c)
    return p, clients


def clean_up(p, clients):
    """Revoke the leases (each client's connection is idle by now)."""
    for c in clients:
        c.sock.settimeout(STALL_S)
        p.revoked(c.call(p.revoke_req(c.lease)))
        c.sock.close()


def loop(sel, on_ready, until, timeout_of=lambda: 1.0):
    """Serve the selector until until() is true; a client whose answer takes more than
    STALL_S fails the run."""
    while not until():
        events = sel.select(timeout_of())
        for sk, _ in events:
            c = sk.data
            if c.read():
                on_ready(c, now())
        if not events:
            t = now()
            late = [c for c in (sk.data for sk in sel.get_map().values())
                    if c.state != "idle" and t - c.sent_at > STALL_S * 1e9]
            if late:
                raise Fail(f"no answer to the {late[0].state} of {late[0].name} within {STALL_S:.0f} s")


def lease_ttl(secs):
    return int(LEAD_IN_S + secs) + 60  # outlives the run: no keepalive needed


def cmd_pairs(product, url, n, secs, *pids):
    n, secs = int(n), float(secs)
    tag = f"{os.getpid():x}{time.time_ns() // 1000000 % 1000000:x}"
    p, clients = setup(product, url, n, [f"bench-u-{tag}-{i}" for i in range(n)], lease_ttl(secs))
    sel = selectors.DefaultSelector()
    t_start = now() + int(LEAD_IN_S * 1e9)
    t_end = t_start + int(secs * 1e9)
    lat, marks, active = [], [], [n]

    def on_ready(c, t):
        if c.state == "acquire":
            c.handle, token = p.acquired(c.resp, c.name, c.lease)
            if token <= c.token:
                raise Fail(f"{c.name}: a grant with token {token} after one with {c.token}")
            c.token = token
            c.send(p.release_req(c.name, c.handle), "release")
            return
        p.released(c.resp, c.name)
        if t_start <= t <= t_end:
            lat.append(t - c.t0)
        if t >= t_end:
            c.state = "idle"
            sel.unregister(c.sock)
            active[0] -= 1
            return
        c.t0 = now()
        c.send(p.acquire_req(c.name, c.lease), "acquire")

    def mark():
        t = now()
        if not marks and t >= t_start:
            marks.append(cpu_now(pids))
        elif len(marks) == 1 and t >= t_end:
            marks.append(cpu_now(pids))
        return active[0] == 0

    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.t0 = now()
        c.send(p.acquire_req(c.name, c.lease), "acquire")
    loop(sel, on_ready, mark, lambda: 0.05)
    if len(marks) < 2:
        marks.append(cpu_now(pids))
    clean_up(p, clients)
    lat.sort()
    print(f"LOCKPAIRS clients={n} pairs={len(lat)} window_s={secs:.3f} p50_us={pct(lat, 50)} "
          f"p99_us={pct(lat, 99)} max_us={pct(lat, 100)} {cpu_fields(*marks)}")
    return 0 if lat else 1


def cmd_handoff(product, url, n, secs, hold_ms, *pids):
    n, secs, hold = int(n), float(secs), int(float(hold_ms) * 1e6)
    if n < 2:
        raise Fail("a hand-off needs at least 2 clients")
    name = f"bench-h-{os.getpid():x}{time.time_ns() // 1000000 % 1000000:x}"
    p, clients = setup(product, url, n, [name] * n, lease_ttl(secs))
    sel = selectors.DefaultSelector()
    t_start = now() + int(LEAD_IN_S * 1e9)
    t_end = t_start + int(secs * 1e9)
    grants, releases = [], []  # (t_granted,) and [t_release_sent, t_release_answered], in turn
    st = {"holder": None, "due": None, "last_token": -1, "active": n, "marks": []}

    def release(c):
        st["due"] = None
        st["holder"] = None
        c.send(p.release_req(name, c.handle), "release")
        c.idx = len(releases)
        releases.append([c.sent_at, None])

    def on_ready(c, t):
        if c.state == "acquire":
            c.handle, token = p.acquired(c.resp, name, c.lease)
            if st["holder"] is not None:
                raise Fail(f"{name}: granted to lease {c.lease} while lease {st['holder'].lease} holds it")
            if product == "palisade" and token <= st["last_token"]:
                raise Fail(f"{name}: a grant with token {token} after one with {st['last_token']}")
            st["last_token"] = token
            st["holder"] = c
            grants.append(t)
            if len(grants) != len(releases) + 1:
                raise Fail(f"{name}: {len(grants)} grants after {len(releases)} releases")
            if hold:
                c.state = "holding"
                st["due"] = (t + hold, c)
            else:
                release(c)
            return
        p.released(c.resp, name)
        releases[c.idx][1] = t
        if now() >= t_end:
            c.state, c.done = "idle", True
            st["active"] -= 1
            return
        c.send(p.acquire_req(name, c.lease), "acquire")

    def until():
        t = now()
        due = st["due"]
        if due is not None and t >= due[0]:
            release(due[1])
        marks = st["marks"]
        if not marks and t >= t_start:
            marks.append(cpu_now(pids))
        elif len(marks) == 1 and t >= t_end:
            marks.append(cpu_now(pids))
        return st["active"] == 0

    def timeout_of():
        due = st["due"]
        return 0.05 if due is None else max(0.0, min(0.05, (due[0] - now()) / 1e9))

    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.send(p.acquire_req(name, c.lease), "acquire")
    loop(sel, on_ready, until, timeout_of)
    marks = st["marks"]
    if len(marks) < 2:
        marks.append(cpu_now(pids))
    clean_up(p, clients)
    sent, acked = [], []
    for i in range(1, len(grants)):
        if t_start <= grants[i] <= t_end:
            r_sent, r_ack = releases[i - 1]
            sent.append(grants[i] - r_sent)
            acked.append(grants[i] - r_ack)
    sent.sort()
    acked.sort()
    print(f"LOCKHANDOFF clients={n} handoffs={len(sent)} window_s={secs:.3f} hold_ms={hold / 1e6:g} "
          f"p50_us={pct(sent, 50)} p99_us={pct(sent, 99)} max_us={pct(sent, 100)} "
          f"ack_p50_us={pct(acked, 50)} ack_p99_us={pct(acked, 99)} {cpu_fields(*marks)}")
    return 0 if sent else 1


def main():
    cmds = {"pairs": cmd_pairs, "handoff": cmd_handoff}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or sys.argv[2] not in PRODUCTS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return cmds[sys.argv[1]](*sys.argv[2:])
    except (Fail, OSError) as e:
        print(f"lock.py {sys.argv[1]} {sys.argv[2]}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
