#!/usr/bin/env python3
"""A toy storage service that honours fencing tokens, and a client that writes to it.

The service keeps the highest fencing token it has seen and refuses a write that carries
an older one: a lock holder that was paused (a long GC, a stopped VM, a partition) and woke
up after its lock passed to someone else cannot overwrite the newer holder's work. With
--palisade it also asks Palisade (POST /v1/fence/check) whether a token it has not seen
beaten yet is still the current holder's, so a stale holder is refused even before the
new holder's first write arrives.

    resource.py serve --port N [--palisade URL --lock NAME]
    resource.py write --url URL --writer A --data TEXT [--pid-file F --then-wait-for G --done-file H]
    resource.py wait-ready URL
    resource.py summary --url URL --stale A --current B

`write` takes the token from PALISADE_FENCING_TOKEN, which `palisade lock NAME -- CMD`
sets. Python 3 standard library only.
"""

import argparse
import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request


def post_json(url, body, timeout=5):
    """POSTs JSON; returns (status, parsed reply)."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Store:
    """The resource's state: the highest token seen and what happened to each write."""

    def __init__(self, palisade, lock):
        self.lock = threading.Lock()
        self.highest = 0
        self.accepted = []
        self.refused = []
        self.palisade = palisade
        self.lock_name = lock

    def write(self, writer, token, data):
        with self.lock:
            if token < self.highest:
                reason = f"token {token} is older than token {self.highest}, seen already"
            else:
                reason = self.palisade_says_stale(token)
            entry = {"writer": writer, "token": token, "data": data}
            if reason:
                entry["reason"] = reason
                self.refused.append(entry)
                log(f"refused the write of {writer} (token {token}): {reason}")
                return False, reason
            self.highest = token
            self.accepted.append(entry)
            log(f"accepted the write of {writer} (token {token}): {data!r}")
            return True, None

    def palisade_says_stale(self, token):
        """None when Palisade says the token is the current holder's (or is not asked)."""
        if not self.palisade:
            return None
        status, reply = post_json(
            f"{self.palisade}/v1/fence/check", {"name": self.lock_name, "token": token}
        )
        if status == 200 and reply.get("valid"):
            return None
        if status == 409:
            current = reply.get("current_token")
            return f"Palisade says token {token} is stale (the current token is {current})"
        return f"the fencing check failed (HTTP {status}): {reply}"


def log(line):
    print(f"resource: {line}", flush=True)


def serve(args):
    store = Store(args.palisade, args.lock)

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != "/state":
                return self.reply(404, {"error": "no such path"})
            with store.lock:
                state = {"highest": store.highest, "accepted": store.accepted, "refused": store.refused}
            self.reply(200, state)

        def do_POST(self):
            if self.path != "/write":
                return self.reply(404, {"error": "no such path"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            ok, reason = store.write(str(body.get("writer")), int(body.get("token", 0)), body.get("data"))
            if ok:
                self.reply(200, {"accepted": True})
            else:
                self.reply(409, {"accepted": False, "reason": reason})

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    log(f"listening on 127.0.0.1:{args.port}")
    server.serve_forever()


def write_once(args, token, data):
    status, reply = post_json(f"{args.url}/write", {"writer": args.writer, "token": token, "data": data})
    if status == 200:
        print(f"{args.writer}: write accepted (token {token})", flush=True)
        return True
    print(f"{args.writer}: write REFUSED (token {token}): {reply.get('reason')}", flush=True)
    return False


def write(args):
    token = int(os.environ["PALISADE_FENCING_TOKEN"])
    print(f"{args.writer}: holding the lock with fencing token {token}", flush=True)
    if not write_once(args, token, args.data):
        return 1
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(args.pid_file + ".tmp", args.pid_file)
    if args.then_wait_for:
        while not os.path.exists(args.then_wait_for):
            time.sleep(0.05)
        ok = write_once(args, token, args.data + " (again)")
        if args.done_file:
            open(args.done_file, "w").close()
        if not ok:
            return 1
    return 0


def wait_ready(args):
    deadline = time.monotonic() + args.within
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=1) as resp:
                if resp.status == 200:
                    return 0
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            print(f"{args.url} is not ready after {args.within} s", file=sys.stderr)
            return 1
        time.sleep(0.1)


def summary(args):
    """Says whether the stale writer was fenced off and the current one got through."""
    state = get_json(f"{args.url}/state")
    current = [w for w in state["accepted"] if w["writer"] == args.current]
    stale_refused = [w for w in state["refused"] if w["writer"] == args.stale]
    ok = True
    if current:
        print(f"RESULT: {args.current}'s write was accepted (token {current[-1]['token']})")
    else:
        print(f"RESULT: {args.current}'s write was NOT accepted")
        ok = False
    if stale_refused:
        w = stale_refused[-1]
        print(f"RESULT: {args.stale} was fenced off: its write with token {w['token']} was refused ({w['reason']})")
    else:
        print(f"RESULT: {args.stale} was NOT fenced off")
        ok = False
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the resource")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--palisade", help="a Palisade endpoint to check tokens with")
    s.add_argument("--lock", default="demo", help="the lock whose tokens are checked")
    w = sub.add_parser("write", help="write once (token from PALISADE_FENCING_TOKEN)")
    w.add_argument("--url", required=True)
    w.add_argument("--writer", required=True)
    w.add_argument("--data", default="")
    w.add_argument("--pid-file", help="after the first write, write this process's pid here")
    w.add_argument("--then-wait-for", help="then wait for this file to exist and write again")
    w.add_argument("--done-file", help="with --then-wait-for: create this file after the second write")
    r = sub.add_parser("wait-ready", help="wait until a URL answers 200")
    r.add_argument("url")
    r.add_argument("--within", type=float, default=20)
    m = sub.add_parser("summary", help="say who was fenced off")
    m.add_argument("--url", required=True)
    m.add_argument("--stale", required=True)
    m.add_argument("--current", required=True)
    args = p.parse_args()
    return {"serve": serve, "write": write, "wait-ready": wait_ready, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
