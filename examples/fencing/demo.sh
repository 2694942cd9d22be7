#!/bin/sh
# Fencing tokens at work: a lock holder that is paused past its lease is refused by the
# resource it writes to, once the lock has passed to the next holder.
#
#  1. A single Palisade node starts in a temporary directory, and a toy resource
#     (resource.py) that keeps the highest fencing token it has seen.
#  2. A takes the lock with a 2 s lease (`palisade lock demo-db --ttl 2s -- ...`) and writes.
#  3. A is paused with SIGSTOP (palisade and its command): nothing renews its lease.
#  4. B waits for the lock, gets it once A's lease has ended, with a higher token, and writes.
#  5. A wakes up, unaware, and writes again with its old token: the resource refuses it.
#
# Usage: examples/fencing/demo.sh   (after `cargo build`; PALISADE=/path/to/palisade to
# use another binary). Needs python3. Cleans up after itself.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
PALISADE=${PALISADE:-$here/../../target/debug/palisade}
if [ ! -x "$PALISADE" ]; then
    echo "demo: no palisade binary at $PALISADE: run cargo build, or set PALISADE" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "demo: python3 is needed" >&2; exit 2; }
resource="python3 $here/resource.py"

work=$(mktemp -d "${TMPDIR:-/tmp}/palisade-fencing.XXXXXX")
pids=""
cleanup() {
    for p in $pids; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "demo: $*"; }

# Three free ports: Palisade's client and peer listeners, and the resource.
set -- $(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
client_port=$1 peer_port=$2 resource_port=$3
export PALISADE_ENDPOINTS="http://127.0.0.1:$client_port"
res="http://127.0.0.1:$resource_port"

"$PALISADE" serve --data-dir "$work/data" --listen-client "127.0.0.1:$client_port" \
    --listen-peer "127.0.0.1:$peer_port" --log-level warn >"$work/node.log" 2>&1 &
pids="$pids $!"
$resource wait-ready "$PALISADE_ENDPOINTS/readyz" || { cat "$work/node.log" >&2; exit 1; }
say "palisade is up at $PALISADE_ENDPOINTS"

$resource serve --port "$resource_port" --palisade "$PALISADE_ENDPOINTS" --lock demo-db &
pids="$pids $!"
$resource wait-ready "$res/state"

say "A takes the lock demo-db (2 s lease) and writes"
"$PALISADE" lock demo-db --ttl 2s -- $resource write --url "$res" --writer A --data "A's update" \
    --pid-file "$work/a.pid" --then-wait-for "$work/a.go" --done-file "$work/a.done" &
a=$!
pids="$pids $a"
while [ ! -s "$work/a.pid" ]; do
    kill -0 "$a" 2>/dev/null || { say "A stopped early"; exit 1; }
    sleep 0.1
done
a_cmd=$(cat "$work/a.pid")

say "A is paused (SIGSTOP): nothing renews its lease now"
kill -STOP "$a" "$a_cmd"

say "B asks for the lock; it is granted once A's lease has ended"
"$PALISADE" lock demo-db --ttl 2s --wait 30s -- $resource write --url "$res" --writer B --data "B's update"
say "B is done and has released the lock"

say "A wakes up and, unaware that its lock is gone, writes again with its old token"
touch "$work/a.go"
# A's command resumes first (as a process whose pause ended before its supervisor
# noticed anything would), then palisade, which finds the lease gone.
kill -CONT "$a_cmd"
i=0
while [ ! -e "$work/a.done" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
kill -CONT "$a"
a_status=0
wait "$a" || a_status=$?
say "A's palisade has exited (status $a_status): its lock was lost"

$resource summary --url "$res" --stale A --current B
