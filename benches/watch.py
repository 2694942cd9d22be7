#!/usr/bin/env python3
"""benches/watch.py: the watch clients of benches/run.sh (stdlib only, one thread each).

  watch.py latency palisade|etcd PUT_URL WATCH_URL N PREFIX SAMPLES WARM [GAP_MS]
        One watcher on WATCH_URL (a recursive watch of PREFIX) and one putter on its own
        connection to PUT_URL, which writes WARM + N fresh keys PREFIXk000000000000,
        PREFIXk000000000001, ... one at a time, each after the previous one's ack (and a
        pause of GAP_MS, 0 by default: run.sh does not pause; a pause shows whether a
        follower learns of a commit only from the next write). For each
        of the last N keys it appends "send_to_event_us ack_to_event_us put_us" to SAMPLES
        (t_send: just before the request is written; t_ack: its answer read in full;
        t_event: the watch stream's bytes carrying its event read). Prints one line
        "WATCHLAT n=.. received=.. missing=.. puts_per_s=.. client_cpu_s=.." (exit 1 if an
        event is missing).
  watch.py idle palisade|etcd URL N
        Opens N watches, each on its own HTTP connection and on its own key w/00000,
        w/00001, ... (no one writes them), at most OPENING at a time; prints "IDLE ready ..."
        once every one is established (or failed), then reads whatever comes (Palisade's
        progress messages) until SIGTERM, and prints "IDLE end ..." (how many are still
        open, how many the server closed, the bytes received in all and after the watches
        were established).
  watch.py groups palisade|etcd URL N
        The watchers of the mixed part: N watches, each on its own HTTP connection, watch i
        a recursive watch of group i of the wrk scripts' BENCH_GROUPS=N key space (Palisade
        `/g<i>?recursive`, etcd the prefix `g<i>/`), so that together they see every write,
        opened as `idle` opens its watches ("GROUPS ready ..." once all are established).
        Then it reads everything that comes on every one of them, decoding the chunked
        stream into its lines (messages) and counting their events (each `"kv":` of a
        message: one per key a revision wrote, as neither product is asked for prev_kv);
        on SIGUSR1 it prints "GROUPS count events=.. messages=.. bytes=.." (the totals so
        far), on SIGTERM "GROUPS end still_open=.. closed_by_server=.. events=..
        messages=.. bytes=.. later_bytes=..".
  watch.py stall palisade|etcd URL PREFIX
        Opens one recursive watch of PREFIX, reads its answer head and first message, then
        never reads its socket again; prints "STALL ready", and on SIGTERM "STALL end
        bytes=.. eof=0|1": what it finds in the socket then (what the server had written
        into the kernel's buffers) and whether the server had closed it.
  watch.py follow palisade|etcd URL PREFIX
        The same watch, read as fast as it comes (the bytes are counted, not parsed);
        "FOLLOW ready", and on SIGTERM "FOLLOW end bytes=.. eof=0|1".

The watch requests: Palisade `GET /v1/watch/<key>[?recursive]` with
`Accept: application/x-ndjson` (established once its first message, a progress, comes);
etcd `POST /v3/watch` (JSON gateway) with `create_request` {key, range_end}
(established once its `created` message comes). Puts: Palisade `PUT /v1/kv/<key>`, etcd
`POST /v3/kv/put`. Timestamps are time.perf_counter_ns().
"""

import base64
import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time
import urllib.parse

VALUE = "0123456789abcdef" * 4  # the 64 bytes of benches/common.lua
OPENING = 256  # idle watches being opened at once
now = time.perf_counter_ns


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    """etcd's range_end for every key starting with p (p is ASCII and not all 0xff)."""
    return p[:-1] + chr(ord(p[-1]) + 1)


def addr(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def request(method, path, host, body=None, headers=()):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host[0]}:{host[1]}"] + list(headers)
    data = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def watch_request(product, host, key, recursive):
    if product == "palisade":
        path = "/v1/watch/" + urllib.parse.quote(key.lstrip("/")) + ("?recursive" if recursive else "")
        return request("GET", path, host, headers=["Accept: application/x-ndjson"])
    create = {"key": b64(key)}
    if recursive:
        create["range_end"] = b64(prefix_end(key))
    return request("POST", "/v3/watch", host, body={"create_request": create})


def put_request(product, host, key):
    if product == "palisade":
        return request("PUT", "/v1/kv/" + urllib.parse.quote(key), host, body={"value": VALUE})
    return request("POST", "/v3/kv/put", host, body={"key": b64(key), "value": b64(VALUE)})


class Response:
    """An HTTP/1.1 response read incrementally: feed() bytes as they come; the status, and
    the body decoded (Content-Length or chunked) into `body` as far as it has come."""

    def __init__(self):
        self.raw = b""
        self.status = None
        self.body = bytearray()
        self.done = False
        self.left = 0  # bytes left of the body (Content-Length) or of the current chunk
        self.state = "head"  # head, length, size (a chunk's size line), data, crlf (after a chunk)

    def feed(self, data):
        self.raw += data
        while not self.done:
            if self.state == "head":
                end = self.raw.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.raw = self.raw[:end].decode("latin-1"), self.raw[end + 4:]
                lines = head.split("\r\n")
                self.status = int(lines[0].split()[1])
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    self.state = "size"
                else:
                    self.state, self.left = "length", int(hdrs.get("content-length", "0"))
                    self.done = self.left == 0
            elif self.state in ("length", "data"):
                if not self.raw:
                    return
                take, self.raw = self.raw[:self.left], self.raw[self.left:]
                self.body += take
                self.left -= len(take)
                if self.left == 0:
                    self.done = self.state == "length"
                    self.state = "crlf"
            elif self.state == "size":
                end = self.raw.find(b"\r\n")
                if end < 0:
                    return
                self.left = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2:]
                self.state = "data"
                self.done = self.left == 0
            else:  # crlf
                if len(self.raw) < 2:
                    return
                self.raw = self.raw[2:]
                self.state = "size"

    def lines(self):
        """The complete lines of the body so far (removed from it)."""
        end = self.body.rfind(b"\n")
        if end < 0:
            return []
        out = bytes(self.body[:end]).split(b"\n")
        del self.body[:end + 1]
        return [ln for ln in out if ln.strip()]


def established(product, msg):
    """Whether a watch message says the watch is in place."""
    if product == "palisade":
        return "progress" in msg
    if "error" in msg:
        raise RuntimeError(f"watch error: {msg['error']}")
    return bool(msg.get("result", {}).get("created"))


def put_keys(product, msg):
    """The keys of the put events in a watch message."""
    if product == "palisade":
        return [e["kv"]["key"] for e in msg.get("events", ()) if e.get("type") == "put"]
    evs = msg.get("result", {}).get("events", ())
    return [base64.b64decode(e["kv"]["key"]).decode() for e in evs if e.get("type", "PUT") == "PUT"]


def open_watch(product, url, key, recursive, timeout=10.0):
    """A blocking connection with an established watch, and its Response."""
    host = addr(url)
    s = socket.create_connection(host, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(watch_request(product, host, key, recursive))
    r = Response()
    while True:
        data = s.recv(65536)
        if not data:
            raise RuntimeError("the server closed the watch before it was established")
        r.feed(data)
        if r.status is not None and r.status != 200:
            raise RuntimeError(f"watch: HTTP {r.status} {bytes(r.body[:200])!r}")
        for ln in r.lines():
            if established(product, json.loads(ln)):
                return s, r


def cmd_latency(product, put_url, watch_url, n, prefix, samples_path, warm, gap_ms="0"):
    n, warm, gap = int(n), int(warm), float(gap_ms) / 1e3
    sess = "/" if product == "palisade" else ""
    watch_key = sess + prefix.rstrip("/") if product == "palisade" else prefix
    ws, wr = open_watch(product, watch_url, watch_key, True)
    ws.setblocking(False)
    host = addr(put_url)
    ps = socket.create_connection(host, timeout=10)
    ps.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ps.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ws, selectors.EVENT_READ, "watch")
    sel.register(ps, selectors.EVENT_READ, "put")
    keys = [f"{prefix}k{i:012d}" for i in range(warm + n)]
    want = {sess + k: i for i, k in enumerate(keys)}
    t_send, t_ack, t_event = [0] * len(keys), [0] * len(keys), [0] * len(keys)
    wall0 = time.monotonic()

    def on_watch():
        data = ws.recv(1 << 20)
        t = now()
        if not data:
            raise RuntimeError("the server closed the watch")
        wr.feed(data)
        for ln in wr.lines():
            for k in put_keys(product, json.loads(ln)):
                i = want.get(k)
                if i is not None and not t_event[i]:
                    t_event[i] = t

    for i, k in enumerate(keys):
        req = put_request(product, host, k)
        pr = Response()
        t_send[i] = now()
        ps.sendall(req)
        while not pr.done:
            for sk, _ in sel.select(10):
                if sk.data == "watch":
                    on_watch()
                else:
                    data = ps.recv(65536)
                    t = now()
                    if not data:
                        raise RuntimeError("the server closed the put connection")
                    pr.feed(data)
                    if pr.done:
                        t_ack[i] = t
        if pr.status != 200:
            raise RuntimeError(f"put {k}: HTTP {pr.status} {bytes(pr.body[:200])!r}")
        end = time.monotonic() + gap
        while gap and time.monotonic() < end:  # a pause, still reading the watch
            for sk, _ in sel.select(max(0.0, end - time.monotonic())):
                if sk.data == "watch":
                    on_watch()
    puts_s = time.monotonic() - wall0
    deadline = time.monotonic() + 10
    while not all(t_event[warm:]) and time.monotonic() < deadline:
        for sk, _ in sel.select(0.5):
            if sk.data == "watch":
                on_watch()
    ws.close()
    ps.close()
    got = [i for i in range(warm, len(keys)) if t_event[i]]
    with open(samples_path, "a") as f:
        for i in got:
            f.write(f"{(t_event[i] - t_send[i]) / 1e3:.1f} {(t_event[i] - t_ack[i]) / 1e3:.1f} "
                    f"{(t_ack[i] - t_send[i]) / 1e3:.1f}\n")
    missing = n - len(got)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"WATCHLAT n={n} received={len(got)} missing={missing} puts_per_s={(warm + n) / puts_s:.0f} "
          f"client_cpu_s={ru.ru_utime + ru.ru_stime:.2f}")
    return 1 if missing else 0


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SystemExit(f"the open-file limit ({soft}, hard {hard}) is below the {need} this needs")


stop = False


def on_term(*_):
    global stop
    stop = True


class Idle:
    """One idle watch being opened, then held."""

    __slots__ = ("sock", "resp", "state", "sent")

    def __init__(self, sock):
        self.sock, self.resp, self.state, self.sent = sock, Response(), "connecting", 0


def cmd_idle(product, url, n):
    return hold(product, url, int(n), "IDLE", lambda i: f"w/{i:05d}", False)


def cmd_groups(product, url, n):
    if product == "palisade":
        return hold(product, url, int(n), "GROUPS", lambda i: f"/g{i}", True)
    return hold(product, url, int(n), "GROUPS", lambda i: f"g{i}/", True)


def hold(product, url, n, what, key_of, recursive):
    """Opens n watches (watch i of key_of(i), recursive or not), each on its own connection,
    and holds them until SIGTERM (cmd_idle, cmd_groups). Recursive ones (the mixed part's)
    have what comes decoded into messages and their events counted; the others' bytes are
    only counted."""
    raise_nofile(n + 64)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    host = addr(url)
    sel = selectors.DefaultSelector()
    todo = list(range(n))
    todo.reverse()
    opening, opened, failed, closed_by_server, nbytes, later, first_error = 0, 0, 0, 0, 0, 0, None
    counts = {"events": 0, "messages": 0}
    t0 = time.monotonic()
    ready_printed = False

    def on_usr1(*_):
        print(f"{what} count events={counts['events']} messages={counts['messages']} bytes={nbytes}", flush=True)

    if recursive:
        signal.signal(signal.SIGUSR1, on_usr1)

    def start_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(host)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, "connect")
        w = Idle(s)
        w.sent = watch_request(product, host, key_of(i), recursive)
        sel.register(s, selectors.EVENT_WRITE, w)

    def fail(w, why):
        nonlocal failed, opening, first_error
        failed += 1
        opening -= 1
        first_error = first_error or why
        sel.unregister(w.sock)
        w.sock.close()

    while not stop:
        while todo and opening < OPENING:
            start_one(todo.pop())
            opening += 1
        if not ready_printed and not todo and opening == 0:
            ready_printed = True
            print(f"{what} ready watchers={n} opened={opened} failed={failed} "
                  f"open_s={time.monotonic() - t0:.2f}"
                  + (f" first_error={first_error!r}" if first_error else ""), flush=True)
        try:
            ready = sel.select(1.0)
        except InterruptedError:
            continue
        for sk, mask in ready:
            w = sk.data
            if w.state == "connecting":
                err = w.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(w, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                w.sock.send(w.sent)  # a few hundred bytes into an empty socket buffer
                w.state = "waiting"
                sel.modify(w.sock, selectors.EVENT_READ, w)
                continue
            try:
                data = w.sock.recv(65536)
            except OSError as e:
                data, why = None, str(e)
            if not data:
                if w.state == "waiting":
                    fail(w, "closed before established" if data is not None else why)
                else:
                    closed_by_server += 1
                    sel.unregister(w.sock)
                    w.sock.close()
                continue
            nbytes += len(data)
            if w.state == "open":
                later += len(data)
                if recursive:  # the messages in full: count their events
                    w.resp.feed(data)
                    for ln in w.resp.lines():
                        counts["messages"] += 1
                        counts["events"] += ln.count(b'"kv":')
                continue
            w.resp.feed(data)
            if w.resp.status is not None and w.resp.status != 200:
                fail(w, f"HTTP {w.resp.status} {bytes(w.resp.body[:120])!r}")
                continue
            lines = w.resp.lines()
            at = next((j for j, ln in enumerate(lines) if established(product, json.loads(ln))), None)
            if at is not None:
                w.state = "open"
                if recursive:  # anything after the message that established it
                    for ln in lines[at + 1:]:
                        counts["messages"] += 1
                        counts["events"] += ln.count(b'"kv":')
                else:
                    w.resp = None
                opened += 1
                opening -= 1
    still = sum(1 for sk in sel.get_map().values() if sk.data.state == "open")
    print(f"{what} end still_open={still} closed_by_server={closed_by_server} "
          + (f"events={counts['events']} messages={counts['messages']} " if recursive else "")
          + f"bytes={nbytes} later_bytes={later}", flush=True)
    return 0


def cmd_stall(product, url, prefix, read=False):
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    key = "/" + prefix.rstrip("/") if product == "palisade" else prefix
    s, _ = open_watch(product, url, key, True)
    what = "FOLLOW" if read else "STALL"
    print(f"{what} ready", flush=True)
    nbytes, eof = 0, 0
    if read:  # read (and count) everything as it comes
        s.settimeout(0.2)
        while not stop and not eof:
            try:
                data = s.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                eof = 1
                break
            eof = int(not data)
            nbytes += len(data)
    else:
        while not stop:
            time.sleep(0.2)
    s.setblocking(False)
    while not eof:  # what is left in the socket
        try:
            data = s.recv(1 << 20)
        except BlockingIOError:
            break
        except OSError:
            eof = 1
            break
        eof = int(not data)
        nbytes += len(data)
    print(f"{what} end bytes={nbytes} eof={eof}", flush=True)
    return 0


def cmd_follow(product, url, prefix):
    return cmd_stall(product, url, prefix, read=True)


def main():
    cmds = {"latency": cmd_latency, "idle": cmd_idle, "groups": cmd_groups, "stall": cmd_stall,
            "follow": cmd_follow}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
