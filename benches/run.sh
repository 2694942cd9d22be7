#!/usr/bin/env bash
# benches/run.sh (`make bench`): Palisade and etcd under the same wrk load, one after
# the other, on 127.0.0.1; writes BENCHMARKS.md at the top of the repository.
#
# The parts, all on by default:
#   - the load cells: every load x cluster size x connection count, ROUNDS rounds;
#     with the defaults 60 groups of 26 s of load plus start-up, preload and shut-down
#     (5-15 s each), about 40 minutes. The keepalive load's groups grant LEASES leases
#     first; at the cluster sizes in PUT_KA they then measure put under keepalives on
#     the same servers (put at PUT_KA_CONNS connections alone, then beside a second wrk
#     sending keepalives at each rate of PUT_KA_RATES; about 35 s more per group);
#   - the failover trials (FAILOVER): FAILOVER_TRIALS fresh 3-node clusters of each
#     product, each keeping a lease of FAILOVER_TTL s alive, then killing the leader and
#     timing how long the lease's key outlives the last keepalive (about 10 s a trial,
#     3 minutes);
#   - the memory run (RSS_RUN): RSS_LOAD at RSS_CONNS connections for RSS_DURATION seconds
#     against an RSS_NODES-node cluster of each product, sampling the RSS of every member
#     every RSS_INTERVAL s; with the defaults (put, 64 conns, 600 s, 3 nodes) about
#     21 minutes (10 min per product plus start-up, preload and warm-up).
#   - the watch part (WATCH): put->event latency (one watcher, one putter writing WATCH_N
#     fresh keys one at a time) on WATCH_NODES-node clusters, the watcher on the leader
#     and, for 3 nodes, on a follower, WATCH_ROUNDS runs each; then the same with the
#     watcher on the leader of a fresh cluster of each size where WATCH_IDLE idle watchers
#     (each its own connection) are open on that leader; then WATCH_ROUNDS rounds of put
#     at WATCH_CONNS connections on 1 node alone, beside one watcher reading every event,
#     beside one that reads nothing, and beside WATCH_IDLE idle watchers (their memory is
#     measured first), each on a fresh node (about 4 minutes per product with the
#     defaults).
#   - the lock part (LOCK): LOCK_ROUNDS rounds of one group per LOCK_NODES cluster size and
#     product, each on fresh servers: uncontended acquire+release pairs at each client count
#     of LOCK_CONNS (each client its own lock name and lease, looping acquire -> release),
#     then the contended hand-off (LOCK_WAITERS clients on one name, each holding it
#     LOCK_HOLD_MS ms), LOCK_SECS s each after 1 s unmeasured (benches/lock.py; about
#     10 minutes with the defaults).
#   - the security part (SECURE): SECURE_ROUNDS rounds; in each, for every SECURE_NODES
#     cluster size, every configuration of SECURE_CONFIGS on fresh servers: plain, TLS on
#     the client listener (wrk over https), JWT client auth with an HS256 secret, with an
#     ES256 public key, and TLS + ES256 (etcd, when in TARGETS: plain and TLS only). Each
#     writes the KEYS keys, warms up every load of SECURE_LOADS (get put) for WARMUP s
#     with every answer checked, then runs each at SECURE_CONNS connections for DURATION
#     s. Certificate and keys are made with openssl in the work dir (a self-signed EC
#     P-256 certificate for IP 127.0.0.1; an EC P-256 key pair for ES256; a 32-byte
#     HS256 secret), tokens with `palisade auth token` (sub bench, read and write /),
#     sent by the wrk scripts as `Authorization: Bearer` (BENCH_TOKEN). About 21 minutes
#     with the defaults (42 groups of ~30 s).
#   - the operations part (OPS): OPS_ROUNDS rounds of one group per product: a fresh 3-node
#     cluster holding OPS_KEYS keys (100-byte values, written in transactions of 100 puts);
#     OPS_SNAPSHOTS backups timed (`palisade snapshot save`, `etcdctl snapshot save`); a 4th
#     member added (Palisade: `serve --join`; etcd: `etcdctl member add --learner`, then
#     promoted) and timed until it has applied the store's revision, with its peak RSS and
#     the leader's meanwhile; then put at OPS_CONNS connections for OPS_SECS s alone, and
#     again while, 1 s in, member 4 is removed and a 5th added (on PALISADE_OPS_PORTS /
#     ETCD_OPS_PORTS). About 4 minutes per product with the defaults.
#   - the mixed workload (MIXED): MIXED_ROUNDS rounds; in each, for every MIXED_NODES
#     cluster size and MIXED_CONNS connection count, each product on fresh servers: the
#     KEYS keys written through the leader in MIXED_WATCHERS groups (key i under
#     g<i mod MIXED_WATCHERS>/), LEASES leases of LEASE_TTL s granted, MIXED_WATCHERS
#     watchers opened on the leader by benches/watch.py (one recursive watch of each group,
#     each its own connection, every event read and counted, so every write is an event for
#     one of them), a checked warm-up of WARMUP s, then wrk with benches/<product>/mixed.lua
#     at that connection count for DURATION s: each request picked at random, 70% get
#     (linearizable) of a random key, 20% put of a random key, 5% the txn load's
#     transaction, 5% the keepalive load's keepalive of a random lease. About 10 minutes
#     with the defaults (24 cells of ~25 s).
# So `make bench` takes about 122 minutes, 12-15 of them for leases (the keepalive
# groups, put under keepalives, failover), about 7 for watches, about 10 for locks,
# about 21 for security, about 8 for operations and about 10 for the mixed workload; the
# script prints a (low) estimate when it starts.
#
#   make bench                                      # everything, as above (~122 min)
#   RSS_RUN=0 make bench                            # all but the memory run (~101 min)
#   make bench-rss                                  # only the memory run (~21 min), to
#                                                   # BENCHMARKS-rss.md unless OUT is set
#   make bench-lease                                # only the lease parts (~15 min):
#                                                   # LOADS=keepalive RSS_RUN=0 WATCH=0
#                                                   # LOCK=0 SECURE=0 OPS=0 MIXED=0, to
#                                                   # BENCHMARKS-lease.md unless OUT is set
#   make bench-watch                                # only the watch part (~7 min):
#                                                   # WATCH=only, to BENCHMARKS-watch.md
#                                                   # unless OUT is set
#   make bench-lock                                 # only the lock part (~10 min):
#                                                   # LOCK=only, to BENCHMARKS-lock.md
#                                                   # unless OUT is set
#   make bench-secure                               # only the security part (~21 min):
#                                                   # SECURE=only, to BENCHMARKS-secure.md
#                                                   # unless OUT is set
#   make bench-ops                                  # only the operations part (~8 min):
#                                                   # OPS=only, to BENCHMARKS-ops.md
#                                                   # unless OUT is set
#   make bench-mixed                                # only the mixed workload (~10 min):
#                                                   # MIXED=only, to BENCHMARKS-mixed.md
#                                                   # unless OUT is set
#   DURATION=2 ROUNDS=1 RSS_RUN=0 FAILOVER_TRIALS=2 WATCH_ROUNDS=1 LOCK_ROUNDS=1 LOCK_SECS=2 SECURE_ROUNDS=1 MIXED_ROUNDS=1 make bench
#                                                   # quick look
#   LOCK=only LOCK_ROUNDS=1 LOCK_SECS=3 LOCK_CONNS="1 16" LOCK_NODES=1 benches/run.sh
#                                                   # quick look at the lock part
#   SECURE=only SECURE_ROUNDS=1 DURATION=4 SECURE_NODES=1 benches/run.sh
#                                                   # quick look at the security part
#   MIXED=only MIXED_ROUNDS=1 DURATION=3 MIXED_NODES=1 MIXED_CONNS=16 benches/run.sh
#                                                   # quick look at the mixed workload
#   TARGETS=palisade NODES=3 LOADS=put CONNS=16 FAILOVER=0 benches/run.sh
#   RSS_RUN=only RSS_DURATION=30 OUT=/tmp/rss.md benches/run.sh   # quick look at the memory run
#   ROUNDS=0 RSS_RUN=0 WATCH=0 LOCK=0 SECURE=0 OPS=0 MIXED=0 OUT=/tmp/failover.md benches/run.sh
#                                                   # only the failover trials
#
# Knobs (environment):
#   TARGETS   products, in this order within a round  (palisade etcd)
#   NODES     cluster sizes                            (1 3)
#   LOADS     put get get-serializable txn keepalive (wrk scripts in benches/<product>/)
#   CONNS     connection counts                        (1 16 64)
#   DURATION  seconds per cell (8);  ROUNDS  rounds, each cell's figures are medians (3)
#   RSS_RUN   1 also does the memory run after the cells, 0 skips it, only: just the
#             memory run (1)
#   RSS_LOAD RSS_CONNS RSS_NODES RSS_DURATION  the memory run's load (put 64 3 600)
#   RSS_INTERVAL  seconds between RSS samples (10)
#   RSS_MARKS     sample times (s) the report's memory table shows (60 120 300 600)
#   WARMUP    seconds of checked load before each group's cells (2)
#   KEYS      size of the key space every load works on (10000)
#   LEASES    leases the keepalive load (and the mixed workload) renews, picked at random
#             (10000)
#   LEASE_TTL their TTL in s, long enough that none ends during a group (300)
#   PUT_KA    cluster sizes whose keepalive groups also measure put under keepalives
#             (3); 0: none
#   PUT_KA_CONNS     the put's connections there (16)
#   PUT_KA_KA_CONNS  the keepalive wrk's connections beside it (16)
#   PUT_KA_RATES     its keepalives per second, one put run per rate; 0 = as fast as
#             it goes, closed loop (2000: 10,000 leases each renewed every 5 s, as
#             clients of a 15 s TTL would; "2000 0" adds the flat-out case, ~1 min)
#   FAILOVER  1 runs the failover trials after the load cells, 0 skips them (1)
#   FAILOVER_TRIALS  trials per product (8);  FAILOVER_TTL  the lease's TTL in s (3)
#   WATCH     1 runs the watch part after the failover trials, 0 skips it, only: just the
#             watch part (1)
#   WATCH_NODES   cluster sizes of the latency runs (1 3)
#   WATCH_N       measured puts per latency run, after 100 unmeasured ones (1000)
#   WATCH_ROUNDS  latency runs per cluster size and watcher placement (and beside the idle
#             watchers), and rounds of the put runs beside idle and stalled watchers (3)
#   WATCH_IDLE    idle watchers (10000), beside the latency runs of their own clusters and
#             beside a put run; 0: no latency runs beside idle watchers. Palisade then runs
#             with --max-client-connections and --max-watchers of WATCH_IDLE + 1000, and the
#             open-file limit (soft) is raised to the hard limit, which must be at least
#             WATCH_IDLE + 1000
#   WATCH_CONNS   the put load's connections beside the watchers (16)
#   LOCK      1 runs the lock part after the watch part, 0 skips it, only: just the lock
#             part (1)
#   LOCK_NODES    cluster sizes of the lock groups (1 3)
#   LOCK_CONNS    client counts of the uncontended pair runs (1 16 64)
#   LOCK_SECS     measured seconds of each pair run and hand-off run (8)
#   LOCK_ROUNDS   rounds of the lock groups; the report gives medians over them (3)
#   LOCK_WAITERS  clients on the one name of the hand-off run (8)
#   LOCK_HOLD_MS  how long each of them holds the lock once granted, in ms (1)
#   SECURE    1 runs the security part after the lock part, 0 skips it, only: just the
#             security part (1)
#   SECURE_NODES    cluster sizes of the security groups (1 3)
#   SECURE_CONNS    wrk connections of each measured run (64)
#   SECURE_ROUNDS   rounds of the security groups; the report gives medians over them (3)
#   SECURE_CONFIGS  configurations, each a word of parts joined by "-": plain, or any of
#             tls, hs256, es256 (plain tls hs256 es256 tls-es256); etcd runs those
#             without a JWT part
#   SECURE_LOADS    loads of each configuration (get put; wrk scripts in
#             benches/<product>/)
#   OPS       1 runs the operations part after the security part, 0 skips it, only: just
#             the operations part (1)
#   OPS_ROUNDS OPS_KEYS OPS_SNAPSHOTS OPS_CONNS OPS_SECS  its rounds, store size, backups per
#             round, and the put runs' connections and seconds (1 500000 3 16 10)
#   PALISADE_OPS_PORTS, ETCD_OPS_PORTS  "client:peer" pairs of members 4 and 5
#   MIXED     1 runs the mixed workload after the operations part, 0 skips it, only: just
#             the mixed workload (1)
#   MIXED_NODES     cluster sizes of the mixed cells (1 3)
#   MIXED_CONNS     wrk connections of the mixed cells (16 64)
#   MIXED_ROUNDS    rounds of the mixed cells; the report gives medians over them (3)
#   MIXED_WATCHERS  watchers on the leader during the mixed load, and groups of the key
#             space, one watcher each (1000); the open-file limit (soft) is raised to the
#             hard limit, which must be at least MIXED_WATCHERS + 1000; above 9000, Palisade
#             runs with --max-client-connections and --max-watchers of MIXED_WATCHERS + 1000
#   OUT       the report (BENCHMARKS.md at the top of the repository; for RSS_RUN=only,
#             BENCHMARKS-rss.md, for LOADS=keepalive RSS_RUN=0 WATCH=0 LOCK=0 SECURE=0 OPS=0
#             MIXED=0, BENCHMARKS-lease.md, for WATCH=only, BENCHMARKS-watch.md, for
#             LOCK=only, BENCHMARKS-lock.md, for SECURE=only, BENCHMARKS-secure.md, for
#             OPS=only, BENCHMARKS-ops.md, and for MIXED=only, BENCHMARKS-mixed.md, so a
#             partial run does not replace the full report; `benches/bench.py splice` moves
#             a section into BENCHMARKS.md)
#   KEEP_DATA 1 keeps the work dir (data dirs, server and wrk logs)
#   PALISADE_BIN  skip the build and use this binary;  ETCD_BIN  (etcd)
#   PALISADE_PORTS, ETCD_PORTS  "client:peer" pairs, one per member
#   PALISADE_EXTRA_FLAGS, ETCD_EXTRA_FLAGS  more server flags for every member (also in
#             the memory run: with none, both run with their default compaction settings:
#             Palisade compacts automatically (10 min of history, at most 200,000
#             revisions), etcd does not; the report says which. The nearest etcd setting
#             is ETCD_EXTRA_FLAGS="--auto-compaction-mode=revision
#             --auto-compaction-retention=1000000"; etcd's periodic mode with 10m first
#             compacts after 10 minutes, so it would change nothing within a 600 s run)
#
# Needs cargo, python3, wrk and etcd 3.4+, and openssl for the security part (as root on
# Debian/Ubuntu it installs the last three with apt-get). Every group of cells and every failover trial starts fresh servers
# with empty data dirs; only processes this script started are ever signalled, and they
# are stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

knobs=(TARGETS NODES LOADS CONNS DURATION ROUNDS WARMUP KEYS OUT KEEP_DATA PALISADE_BIN ETCD_BIN
  PALISADE_PORTS ETCD_PORTS PALISADE_EXTRA_FLAGS ETCD_EXTRA_FLAGS
  LEASES LEASE_TTL PUT_KA PUT_KA_CONNS PUT_KA_KA_CONNS PUT_KA_RATES
  FAILOVER FAILOVER_TRIALS FAILOVER_TTL
  RSS_RUN RSS_LOAD RSS_CONNS RSS_NODES RSS_DURATION RSS_INTERVAL RSS_MARKS
  WATCH WATCH_NODES WATCH_N WATCH_ROUNDS WATCH_IDLE WATCH_CONNS
  LOCK LOCK_NODES LOCK_CONNS LOCK_SECS LOCK_ROUNDS LOCK_WAITERS LOCK_HOLD_MS
  SECURE SECURE_NODES SECURE_CONNS SECURE_ROUNDS SECURE_CONFIGS SECURE_LOADS
  OPS OPS_ROUNDS OPS_KEYS OPS_SNAPSHOTS OPS_CONNS OPS_SECS PALISADE_OPS_PORTS ETCD_OPS_PORTS
  MIXED MIXED_NODES MIXED_CONNS MIXED_ROUNDS MIXED_WATCHERS)
make_target=bench
if [[ -n ${MAKELEVEL:-} ]]; then
  [[ ${RSS_RUN:-} == only ]] && make_target=bench-rss
  [[ ${LOADS:-} == keepalive && ${RSS_RUN:-} == 0 && ${WATCH:-} == 0 && ${LOCK:-} == 0 &&
    ${SECURE:-} == 0 && ${OPS:-} == 0 && ${MIXED:-} == 0 ]] && make_target=bench-lease
  [[ ${WATCH:-} == only ]] && make_target=bench-watch
  [[ ${LOCK:-} == only ]] && make_target=bench-lock
  [[ ${SECURE:-} == only ]] && make_target=bench-secure
  [[ ${OPS:-} == only ]] && make_target=bench-ops
  [[ ${MIXED:-} == only ]] && make_target=bench-mixed
fi
set_knobs=""
for k in "${knobs[@]}"; do
  [[ $make_target == bench-rss && $k == RSS_RUN ]] && continue
  [[ $make_target == bench-lease && ($k == RSS_RUN || $k == LOADS || $k == WATCH || $k == LOCK ||
    $k == SECURE || $k == OPS || $k == MIXED) ]] && continue
  [[ $make_target == bench-watch && $k == WATCH ]] && continue
  [[ $make_target == bench-lock && $k == LOCK ]] && continue
  [[ $make_target == bench-secure && $k == SECURE ]] && continue
  [[ $make_target == bench-ops && $k == OPS ]] && continue
  [[ $make_target == bench-mixed && $k == MIXED ]] && continue
  v=${!k:-}
  if [[ $v == *[[:space:]]* ]]; then v="\"$v\""; fi
  if [[ -n $v ]]; then set_knobs+="$k=$v "; fi
done
: "${TARGETS:=palisade etcd}"
: "${NODES:=1 3}"
: "${LOADS:=put get get-serializable txn keepalive}"
: "${CONNS:=1 16 64}"
: "${DURATION:=8}"
: "${ROUNDS:=3}"
: "${WARMUP:=2}"
: "${KEYS:=10000}"
: "${LEASES:=10000}"
: "${LEASE_TTL:=300}"
: "${PUT_KA:=3}"
: "${PUT_KA_CONNS:=16}"
: "${PUT_KA_KA_CONNS:=16}"
: "${PUT_KA_RATES:=2000}"
: "${FAILOVER:=1}"
: "${FAILOVER_TRIALS:=8}"
: "${FAILOVER_TTL:=3}"
: "${RSS_RUN:=1}"
: "${RSS_LOAD:=put}"
: "${RSS_CONNS:=64}"
: "${RSS_NODES:=3}"
: "${RSS_DURATION:=600}"
: "${RSS_INTERVAL:=10}"
: "${RSS_MARKS:=60 120 300 600}"
: "${WATCH:=1}"
: "${WATCH_NODES:=1 3}"
: "${WATCH_N:=1000}"
: "${WATCH_ROUNDS:=3}"
: "${WATCH_IDLE:=10000}"
: "${WATCH_CONNS:=16}"
: "${LOCK:=1}"
: "${LOCK_NODES:=1 3}"
: "${LOCK_CONNS:=1 16 64}"
: "${LOCK_SECS:=8}"
: "${LOCK_ROUNDS:=3}"
: "${LOCK_WAITERS:=8}"
: "${LOCK_HOLD_MS:=1}"
: "${SECURE:=1}"
: "${SECURE_NODES:=1 3}"
: "${SECURE_CONNS:=64}"
: "${SECURE_ROUNDS:=3}"
: "${SECURE_CONFIGS:=plain tls hs256 es256 tls-es256}"
: "${SECURE_LOADS:=get put}"
: "${OPS:=1}"
: "${OPS_ROUNDS:=1}"
: "${OPS_KEYS:=500000}"
: "${OPS_SNAPSHOTS:=3}"
: "${OPS_CONNS:=16}"
: "${OPS_SECS:=10}"
: "${PALISADE_OPS_PORTS:=37379:37380 47379:47380}"
: "${ETCD_OPS_PORTS:=42379:42380 52379:52380}"
: "${MIXED:=1}"
: "${MIXED_NODES:=1 3}"
: "${MIXED_CONNS:=16 64}"
: "${MIXED_ROUNDS:=3}"
: "${MIXED_WATCHERS:=1000}"
WATCH_WARM=100 # unmeasured puts before each latency run's WATCH_N
# Each idle watcher is a connection and a watch: Palisade's caps go above their number.
WATCH_PALISADE_FLAGS="--max-client-connections $((WATCH_IDLE + 1000)) --max-watchers $((WATCH_IDLE + 1000))"
if [[ $RSS_RUN == only ]]; then
  : "${OUT:=$root/BENCHMARKS-rss.md}"
elif [[ $WATCH == only ]]; then
  : "${OUT:=$root/BENCHMARKS-watch.md}"
elif [[ $LOCK == only ]]; then
  : "${OUT:=$root/BENCHMARKS-lock.md}"
elif [[ $SECURE == only ]]; then
  : "${OUT:=$root/BENCHMARKS-secure.md}"
elif [[ $OPS == only ]]; then
  : "${OUT:=$root/BENCHMARKS-ops.md}"
elif [[ $MIXED == only ]]; then
  : "${OUT:=$root/BENCHMARKS-mixed.md}"
elif [[ $LOADS == keepalive && $RSS_RUN == 0 && $WATCH == 0 && $LOCK == 0 && $SECURE == 0 && $OPS == 0 &&
  $MIXED == 0 ]]; then
  : "${OUT:=$root/BENCHMARKS-lease.md}"
else
  : "${OUT:=$root/BENCHMARKS.md}"
fi
: "${KEEP_DATA:=0}"
: "${ETCD_BIN:=etcd}"
: "${PALISADE_PORTS:=7379:7380 17379:17380 27379:27380}"
: "${ETCD_PORTS:=2379:2380 22379:22380 32379:32380}"
: "${PALISADE_EXTRA_FLAGS:=}"
: "${ETCD_EXTRA_FLAGS:=}"
READY_TIMEOUT=30

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- tools ------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is needed (apt-get install -y python3)"
pkgs=()
command -v wrk >/dev/null || pkgs+=(wrk)
[[ " $TARGETS " != *" etcd "* ]] || command -v "$ETCD_BIN" >/dev/null || pkgs+=(etcd-server)
[[ $SECURE == 0 ]] || command -v openssl >/dev/null || pkgs+=(openssl)
[[ $OPS == 0 || " $TARGETS " != *" etcd "* ]] || command -v etcdctl >/dev/null || pkgs+=(etcd-client)
if ((${#pkgs[@]})); then
  if [[ $EUID == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${pkgs[@]}" >&2 || { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >&2; }
  else
    die "missing ${pkgs[*]}: install wrk, etcd 3.4 or newer and openssl (Debian/Ubuntu: sudo apt-get install -y wrk etcd-server openssl; elsewhere https://github.com/wg/wrk and https://github.com/etcd-io/etcd/releases, or set ETCD_BIN)"
  fi
fi
for t in $TARGETS; do
  [[ $t == palisade || $t == etcd ]] || die "TARGETS: unknown product $t (palisade, etcd)"
done
for n in $NODES; do
  [[ $n == 1 || $n == 3 ]] || die "NODES: $n (1 or 3)"
done
[[ $RSS_RUN == 0 || $RSS_RUN == 1 || $RSS_RUN == only ]] || die "RSS_RUN: $RSS_RUN (0, 1 or only)"
[[ $RSS_NODES == 1 || $RSS_NODES == 3 ]] || die "RSS_NODES: $RSS_NODES (1 or 3)"
for n in $PUT_KA; do
  [[ $n == 0 || $n == 1 || $n == 3 ]] || die "PUT_KA: $n (cluster sizes 1 and 3, or 0 for none)"
done
[[ $FAILOVER == 0 || $FAILOVER == 1 ]] || die "FAILOVER: $FAILOVER (0 or 1)"
[[ $WATCH == 0 || $WATCH == 1 || $WATCH == only ]] || die "WATCH: $WATCH (0, 1 or only)"
[[ $LOCK == 0 || $LOCK == 1 || $LOCK == only ]] || die "LOCK: $LOCK (0, 1 or only)"
[[ $SECURE == 0 || $SECURE == 1 || $SECURE == only ]] || die "SECURE: $SECURE (0, 1 or only)"
[[ $OPS == 0 || $OPS == 1 || $OPS == only ]] || die "OPS: $OPS (0, 1 or only)"
[[ $MIXED == 0 || $MIXED == 1 || $MIXED == only ]] || die "MIXED: $MIXED (0, 1 or only)"
for n in $MIXED_NODES; do
  [[ $n == 1 || $n == 3 ]] || die "MIXED_NODES: $n (1 or 3)"
done
for n in $MIXED_CONNS; do
  [[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || die "MIXED_CONNS: $n (a number of connections, 1 or more)"
done
for k in MIXED_ROUNDS MIXED_WATCHERS; do
  [[ ${!k} =~ ^[0-9]+$ ]] || die "$k: ${!k} (a number)"
done
((MIXED_WATCHERS >= 1)) || die "MIXED_WATCHERS: $MIXED_WATCHERS (1 or more)"
for k in OPS_ROUNDS OPS_KEYS OPS_SNAPSHOTS OPS_CONNS OPS_SECS; do
  [[ ${!k} =~ ^[0-9]+$ ]] || die "$k: ${!k} (a number)"
done
((OPS_SNAPSHOTS >= 1 && OPS_CONNS >= 1 && OPS_SECS >= 3)) || die "OPS_SNAPSHOTS, OPS_CONNS: 1 or more; OPS_SECS: 3 or more"
onlys=0
for k in RSS_RUN WATCH LOCK SECURE OPS MIXED; do [[ ${!k} != only ]] || onlys=$((onlys + 1)); done
((onlys <= 1)) || die "RSS_RUN=only, WATCH=only, LOCK=only, SECURE=only, OPS=only, MIXED=only: one part at a time"
# Before the open-file limit check below, which only the watch part and the mixed workload need.
[[ $LOCK != only && $SECURE != only && $OPS != only && $MIXED != only ]] || WATCH=0
[[ $WATCH != only && $LOCK != only && $SECURE != only && $OPS != only && $RSS_RUN != only ]] || MIXED=0
for n in $SECURE_NODES; do
  [[ $n == 1 || $n == 3 ]] || die "SECURE_NODES: $n (1 or 3)"
done
for k in SECURE_CONNS SECURE_ROUNDS; do
  [[ ${!k} =~ ^[0-9]+$ ]] || die "$k: ${!k} (a number)"
done
[[ $SECURE_CONNS -ge 1 ]] || die "SECURE_CONNS: $SECURE_CONNS (1 or more)"
for c in $SECURE_CONFIGS; do
  [[ $c == plain || $c =~ ^(tls|hs256|es256)(-(tls|hs256|es256))*$ ]] ||
    die "SECURE_CONFIGS: $c (plain, or parts tls, hs256, es256 joined by -)"
  [[ $c != *hs256*es256* && $c != *es256*hs256* ]] || die "SECURE_CONFIGS: $c (one JWT key kind per configuration)"
done
if [[ $SECURE != 0 ]]; then
  for t in $TARGETS; do
    for l in $SECURE_LOADS; do
      [[ $l != keepalive ]] || die "SECURE_LOADS: keepalive needs leases the security part does not grant"
      [[ -f $here/$t/$l.lua ]] || die "SECURE_LOADS: no benches/$t/$l.lua"
    done
  done
fi
for n in $LOCK_NODES; do
  [[ $n == 1 || $n == 3 ]] || die "LOCK_NODES: $n (1 or 3)"
done
for n in $LOCK_CONNS; do
  [[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || die "LOCK_CONNS: $n (a number of clients, 1 or more)"
done
for k in LOCK_SECS LOCK_ROUNDS LOCK_HOLD_MS; do
  [[ ${!k} =~ ^[0-9]+$ ]] || die "$k: ${!k} (a number)"
done
[[ $LOCK_SECS -ge 1 ]] || die "LOCK_SECS: $LOCK_SECS (1 or more)"
[[ $LOCK_WAITERS =~ ^[0-9]+$ && $LOCK_WAITERS -ge 2 ]] || die "LOCK_WAITERS: $LOCK_WAITERS (2 or more)"
for n in $WATCH_NODES; do
  [[ $n == 1 || $n == 3 ]] || die "WATCH_NODES: $n (1 or 3)"
done
for k in WATCH_N WATCH_ROUNDS WATCH_IDLE WATCH_CONNS; do
  [[ ${!k} =~ ^[0-9]+$ ]] || die "$k: ${!k} (a number)"
done
if [[ ($WATCH != 0 || $MIXED != 0) && $RSS_RUN != only ]]; then
  # Every watcher is a connection, in the client and in the server: both inherit this.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  nofile=$(ulimit -n)
  [[ $WATCH == 0 || $nofile == unlimited ]] || ((nofile >= WATCH_IDLE + 1000)) ||
    die "WATCH_IDLE=$WATCH_IDLE needs an open-file limit of at least $((WATCH_IDLE + 1000)) (ulimit -n: $nofile, and the hard limit is $(ulimit -Hn)); lower WATCH_IDLE or raise the hard limit"
  [[ $MIXED == 0 || $nofile == unlimited ]] || ((nofile >= MIXED_WATCHERS + 1000)) ||
    die "MIXED_WATCHERS=$MIXED_WATCHERS needs an open-file limit of at least $((MIXED_WATCHERS + 1000)) (ulimit -n: $nofile, and the hard limit is $(ulimit -Hn)); lower MIXED_WATCHERS or raise the hard limit"
fi
for r in $PUT_KA_RATES; do
  [[ $r =~ ^[0-9]+$ ]] || die "PUT_KA_RATES: $r (keepalives/s, 0 for as fast as they go)"
done
for t in $TARGETS; do
  for l in $LOADS; do
    [[ $l != mixed ]] || die "LOADS: mixed is the mixed workload's (MIXED=only runs it)"
    [[ -f $here/$t/$l.lua ]] || die "LOADS: no benches/$t/$l.lua"
  done
  [[ $RSS_RUN == 0 || -f $here/$t/$RSS_LOAD.lua ]] || die "RSS_LOAD: no benches/$t/$RSS_LOAD.lua"
done

if [[ -z ${PALISADE_BIN:-} ]]; then
  log "building Palisade (cargo build --release)"
  (cd "$root" && cargo build --release --bin palisade)
  PALISADE_BIN=${CARGO_TARGET_DIR:-$root/target}/release/palisade
fi

# --- processes and cleanup --------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/palisade-bench.XXXXXX")
PIDS=()     # every server process this script started and has not reaped yet
CLIENTS=()  # the watch clients (benches/watch.py) running in the background
CLIENT=""   # the one started last
END=""      # what end_client found
PALISADE_PART_FLAGS=""  # more Palisade flags for one part of the run (the watch part's limits)
ETCD_PART_FLAGS=""      # more etcd flags for one part of the run (the security part's TLS)
SCHEME=http             # the members' client URLs (https in the security part's TLS groups)
PART_ENV=()             # environment of bench.py and wrk for one part (its CA file and token)
URLS=()     # client URLs of the running members
SAMPLER=""  # the RSS sampler of the memory run while it runs

alive() { # running and not a zombie
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ ${st%% *} != Z ]]
}

stop_servers() { # [SIGNAL]: TERM (or SIGNAL), 10 s grace, then KILL; reap
  local pid i
  for pid in "${PIDS[@]}"; do kill "-${1:-TERM}" "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "PID $pid ignored TERM; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  URLS=()
}

stop_sampler() {
  [[ -n $SAMPLER ]] || return 0
  kill -TERM "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
}

stop_clients() {
  local pid
  for pid in "${CLIENTS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLIENTS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CLIENTS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_clients
  stop_sampler
  stop_servers
  if [[ $KEEP_DATA == 1 ]]; then
    log "kept $work"
  else
    ((rc == 0)) || log "deleted $work with the server and wrk logs (KEEP_DATA=1 keeps them)"
    rm -rf -- "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { # port_free PORT KNOB
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    local hint=""
    [[ $2 == ETCD_PORTS ]] && hint="; the etcd-server package may have started a system etcd"
    die "port $1 on 127.0.0.1 is in use by another process (set $2 to other ports$hint)"
  fi
}

# --- the products -----------------------------------------------------------------------

# The one place that knows how to start a Palisade member.
# palisade_member ID DATA_DIR CLIENT_PORT PEER_PORT INITIAL_CLUSTER LOG
palisade_member() {
  # shellcheck disable=SC2086 # PALISADE_EXTRA_FLAGS is a word list on purpose
  env -u BENCH_TOKEN "$PALISADE_BIN" serve --node-id "$1" --data-dir "$2" \
    --listen-client "127.0.0.1:$3" --listen-peer "127.0.0.1:$4" \
    --initial-cluster "$5" --log-level warn $PALISADE_EXTRA_FLAGS $PALISADE_PART_FLAGS \
    >"$6" 2>&1 </dev/null &
  PIDS+=("$!")
}

# etcd_member NAME DATA_DIR CLIENT_PORT PEER_PORT INITIAL_CLUSTER LOG
etcd_member() {
  # shellcheck disable=SC2086 # ETCD_EXTRA_FLAGS and ETCD_PART_FLAGS are word lists on purpose
  env -u BENCH_TOKEN "$ETCD_BIN" --name "$1" --data-dir "$2" \
    --listen-client-urls "$SCHEME://127.0.0.1:$3" --advertise-client-urls "$SCHEME://127.0.0.1:$3" \
    --listen-peer-urls "http://127.0.0.1:$4" --initial-advertise-peer-urls "http://127.0.0.1:$4" \
    --initial-cluster "$5" --initial-cluster-state new --initial-cluster-token "bench-$$" \
    --logger zap --log-outputs stderr --log-level warn $ETCD_EXTRA_FLAGS $ETCD_PART_FLAGS \
    >"$6" 2>&1 </dev/null &
  PIDS+=("$!")
}

# start PRODUCT NODES DIR: start the members (client URLs SCHEME://) and wait for a leader
# (asked through bench.py, with PART_ENV); sets LEADER_URL.
start() {
  local product=$1 nodes=$2 dir=$3 i cluster="" ports var=${1^^}_PORTS
  read -r -a ports <<<"${!var}"
  ((${#ports[@]} >= nodes)) || die "$var has fewer than $nodes client:peer pairs"
  for ((i = 0; i < nodes; i++)); do
    port_free "${ports[i]%:*}" "$var"
    port_free "${ports[i]#*:}" "$var"
    if [[ $product == palisade ]]; then
      cluster+="${cluster:+,}$((i + 1))=http://127.0.0.1:${ports[i]#*:}"
    else
      cluster+="${cluster:+,}m$((i + 1))=http://127.0.0.1:${ports[i]#*:}"
    fi
  done
  for ((i = 0; i < nodes; i++)); do
    if [[ $product == palisade ]]; then
      palisade_member "$((i + 1))" "$dir/n$((i + 1))" "${ports[i]%:*}" "${ports[i]#*:}" "$cluster" "$dir/n$((i + 1)).log"
    else
      etcd_member "m$((i + 1))" "$dir/n$((i + 1))" "${ports[i]%:*}" "${ports[i]#*:}" "$cluster" "$dir/n$((i + 1)).log"
    fi
    URLS+=("$SCHEME://127.0.0.1:${ports[i]%:*}")
  done
  local deadline=$((SECONDS + READY_TIMEOUT)) pid
  until LEADER_URL=$(env "${PART_ENV[@]}" python3 "$here/bench.py" leader "$product" "${URLS[@]}"); do
    for pid in "${PIDS[@]}"; do
      alive "$pid" || { tail -n 20 "$dir"/n*.log >&2; die "$product PID $pid exited during start-up"; }
    done
    ((SECONDS < deadline)) || { tail -n 20 "$dir"/n*.log >&2; die "$product: no leader after ${READY_TIMEOUT}s"; }
    sleep 0.2
  done
}

# --- measuring --------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # user+system ticks of the given PIDs
  local pid total=0 f
  for pid in "$@"; do
    read -r -a f <<<"$(sed 's/.*) //' "/proc/$pid/stat")"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8; exit}' /proc/stat; }

rss_kib() { # "max sum" of VmHWM (peak RSS) over the given PIDs
  local pid h max=0 sum=0
  for pid in "$@"; do
    h=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")
    ((h > max)) && max=$h
    sum=$((sum + h))
  done
  echo "rss_max_kib=$max rss_sum_kib=$sum"
}

# run_wrk PRODUCT LOAD CONNS SECONDS LOG [ENV=VALUE...]: one wrk run against LEADER_URL;
# prints its BENCHRESULT line plus server/client/machine CPU figures.
run_wrk() {
  local product=$1 load=$2 conns=$3 secs=$4 logf=$5 t0 t1 b0 b1 w0 w1 cu cs res
  shift 5
  t0=$(cpu_ticks "${PIDS[@]}")
  b0=$(busy_ticks)
  w0=$(date +%s.%N)
  local TIMEFORMAT='%U %S'
  { time env LUA_PATH="$here/?.lua;;" BENCH_KEYS="$KEYS" "$@" \
      wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/$product/$load.lua" "$LEADER_URL" \
      >"$logf" 2>&1; } 2>"$logf.time" || die "wrk failed (see $logf)"
  w1=$(date +%s.%N)
  b1=$(busy_ticks)
  t1=$(cpu_ticks "${PIDS[@]}")
  read -r cu cs <"$logf.time"
  res=$(grep '^BENCHRESULT' "$logf") || die "no result from wrk (see $logf)"
  echo "${res#BENCHRESULT } server_ticks=$((t1 - t0)) busy_ticks=$((b1 - b0))" \
    "client_cpu_s=$(awk -v a="$cu" -v b="$cs" 'BEGIN{print a+b}')" \
    "wall_s=$(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.3f", b-a}')"
}

bc_s() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; } # seconds from $1 to $2

field() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<<"$2"; }

# warm_up PRODUCT LOAD LOG [ENV=VALUE...]: WARMUP s of LOAD at 16 connections, every
# answer checked; dies on a wrong one.
warm_up() {
  local product=$1 load=$2 logf=$3 res
  shift 3
  res=$(run_wrk "$product" "$load" 16 "$WARMUP" "$logf" BENCH_VERIFY=1 "$@")
  [[ $(field requests "$res") -gt 0 && $(field errors "$res") == 0 && $(field bad "$res") == 0 ]] ||
    die "$product $load: warm-up got wrong answers ($res; see $logf)"
}

all_alive() { # all_alive PRODUCT DIR WHAT: dies if a member has exited
  local pid
  for pid in "${PIDS[@]}"; do
    alive "$pid" || { tail -n 20 "$2"/n*.log >&2; die "$1 PID $pid exited during $3"; }
  done
}

summary() { # summary RESULT: "req/s p50 p99" of a run_wrk result, for the log
  printf '%8.0f req/s  p50 %6.2f ms  p99 %7.2f ms' \
    "$(awk -v n="$(field requests "$1")" -v d="$(field duration_s "$1")" 'BEGIN{print n/d}')" \
    "$(awk -v u="$(field p50_us "$1")" 'BEGIN{print u/1000}')" "$(awk -v u="$(field p99_us "$1")" 'BEGIN{print u/1000}')"
}

# group ROUND PRODUCT NODES LOAD: fresh servers, preload, checked warm-up, every CONNS cell.
# The keepalive load preloads LEASES leases (and the keys only if PUT_KA has this cluster
# size: then put_ka measures put under keepalives on the same servers, after the cells).
group() {
  local round=$1 product=$2 nodes=$3 load=$4 conns res what="" with_put=0 env=()
  local dir="$work/r$round-$product-$nodes-$load"
  [[ $load != keepalive ]] || env=(BENCH_LEASES="$dir/leases.txt" BENCH_LEASE_TTL="$LEASE_TTL")
  mkdir -p "$dir"
  local t0=$EPOCHREALTIME t1
  start "$product" "$nodes" "$dir"
  t1=$EPOCHREALTIME
  [[ $load != keepalive || " $PUT_KA " != *" $nodes "* ]] || with_put=1
  if [[ $load != keepalive || $with_put == 1 ]]; then
    python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" || die "$product: preload failed"
    what="$KEYS keys"
  fi
  if [[ $load == keepalive ]]; then
    python3 "$here/bench.py" leases "$product" "$LEADER_URL" "$LEASES" "$LEASE_TTL" "$dir/leases.txt" ||
      die "$product: lease preload failed"
    what+="${what:+ and }$LEASES leases of $LEASE_TTL s"
  fi
  log "$product, $nodes node(s): leader $LEADER_URL after $(bc_s "$t0" "$t1") s, $what written in $(bc_s "$t1" "$EPOCHREALTIME") s"
  warm_up "$product" "$load" "$dir/warmup.log" "${env[@]}"
  for conns in $CONNS; do
    res=$(run_wrk "$product" "$load" "$conns" "$DURATION" "$dir/c$conns.log" "${env[@]}")
    all_alive "$product" "$dir" "the $load load"
    echo "round=$round target=$product nodes=$nodes load=$load conns=$conns $res $(rss_kib "${PIDS[@]}")" >>"$work/results.txt"
    log "$(printf '%-8s %s node(s) %-16s c=%-3s' "$product" "$nodes" "$load" "$conns") $(summary "$res")"
  done
  [[ $with_put == 0 ]] || put_ka "$round" "$product" "$nodes" "$dir"
  t0=$EPOCHREALTIME
  stop_servers
  log "$product, $nodes node(s): stopped in $(bc_s "$t0" "$EPOCHREALTIME") s"
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# put_ka ROUND PRODUCT NODES DIR: on a keepalive group's servers (KEYS keys, LEASES leases):
# a checked put warm-up, put at PUT_KA_CONNS connections alone, then again once per rate in
# PUT_KA_RATES while a second wrk keeps the leases alive at that rate (0: as fast as it
# goes) over PUT_KA_KA_CONNS connections, from 1 s before the put starts to 1 s after it
# ends. Appends to putka.txt.
put_ka() {
  local round=$1 product=$2 nodes=$3 dir=$4 rate res kres kpid
  local env=(BENCH_LEASES="$dir/leases.txt" BENCH_LEASE_TTL="$LEASE_TTL")
  local row="round=$round target=$product nodes=$nodes conns=$PUT_KA_CONNS"
  warm_up "$product" put "$dir/put-warmup.log"
  res=$(run_wrk "$product" put "$PUT_KA_CONNS" "$DURATION" "$dir/put-alone.log")
  all_alive "$product" "$dir" "the put load"
  echo "$row ka_rate=none $res" >>"$work/putka.txt"
  log "$(printf '%-8s %s node(s) put c=%-3s alone                 ' "$product" "$nodes" "$PUT_KA_CONNS") $(summary "$res")"
  for rate in $PUT_KA_RATES; do
    run_wrk "$product" keepalive "$PUT_KA_KA_CONNS" "$((DURATION + 2))" "$dir/ka-$rate.log" \
      "${env[@]}" BENCH_RATE="$rate" >"$dir/ka-$rate.txt" &
    kpid=$!
    sleep 1
    res=$(run_wrk "$product" put "$PUT_KA_CONNS" "$DURATION" "$dir/put-ka-$rate.log")
    wait "$kpid" || die "$product: the keepalive load beside the put failed (see $dir/ka-$rate.log)"
    kres=$(<"$dir/ka-$rate.txt")
    all_alive "$product" "$dir" "the put load under keepalives"
    echo "$row ka_rate=$rate ka_conns=$PUT_KA_KA_CONNS $res ka_requests=$(field requests "$kres")" \
      "ka_duration_s=$(field duration_s "$kres") ka_errors=$(field errors "$kres")" \
      "ka_p50_us=$(field p50_us "$kres") ka_p99_us=$(field p99_us "$kres")" >>"$work/putka.txt"
    log "$(printf '%-8s %s node(s) put c=%-3s + %6.0f keepalive/s' "$product" "$nodes" "$PUT_KA_CONNS" \
      "$(awk -v n="$(field requests "$kres")" -v d="$(field duration_s "$kres")" 'BEGIN{print n/d}')") $(summary "$res")"
  done
}

# failover TRIAL PRODUCT: a fresh 3-node cluster; bench.py grants a lease of FAILOVER_TTL s,
# puts a key under it, keeps it alive a few times, SIGKILLs the leader right after the last
# acknowledgement and polls another member until the key is gone. Appends to failover.txt.
failover() {
  local trial=$1 product=$2 i leader="" survivor=""
  local dir="$work/failover-$trial-$product"
  mkdir -p "$dir"
  start "$product" 3 "$dir"
  for i in "${!URLS[@]}"; do
    if [[ ${URLS[i]} == "$LEADER_URL" ]]; then
      leader=${PIDS[i]}
    elif [[ -z $survivor ]]; then
      survivor=${URLS[i]}
    fi
  done
  python3 "$here/bench.py" failover "$product" "$FAILOVER_TTL" "$LEADER_URL" "$leader" "$survivor" \
    "$work/failover.txt" "$trial" || { tail -n 20 "$dir"/n*.log >&2; die "$product: failover trial $trial failed"; }
  stop_servers KILL # nothing of this cluster is kept, and 3 etcd members take ~7 s to stop on TERM
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# rss_run PRODUCT: the memory run. Fresh servers, preload, checked warm-up, then
# RSS_LOAD at RSS_CONNS connections for RSS_DURATION s while bench.py samples the RSS of
# every member every RSS_INTERVAL s; a last sample, each member's peak (VmHWM) and data
# dir size when the load ends.
rss_run() {
  local product=$1 nodes=$RSS_NODES res i leader=0 hwm="" disk="" rss=""
  local dir="$work/rss-$product"
  mkdir -p "$dir"
  start "$product" "$nodes" "$dir"
  python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" || die "$product: preload failed"
  warm_up "$product" "$RSS_LOAD" "$dir/warmup.log"
  for i in "${!URLS[@]}"; do [[ ${URLS[i]} == "$LEADER_URL" ]] && leader=$((i + 1)); done
  log "$product, $nodes node(s): memory run, $RSS_LOAD at $RSS_CONNS conns for $RSS_DURATION s (leader: member $leader)"
  python3 "$here/bench.py" sample "$RSS_INTERVAL" "$work/rss-samples-$product.txt" "$product" "${PIDS[@]}" &
  SAMPLER=$!
  res=$(run_wrk "$product" "$RSS_LOAD" "$RSS_CONNS" "$RSS_DURATION" "$dir/wrk.log")
  stop_sampler
  all_alive "$product" "$dir" "the memory run"
  for i in "${!PIDS[@]}"; do
    rss+="${rss:+,}$(awk '/^VmRSS:/{print $2}' "/proc/${PIDS[i]}/status")"
    hwm+="${hwm:+,}$(awk '/^VmHWM:/{print $2}' "/proc/${PIDS[i]}/status")"
    disk+="${disk:+,}$(du -sk "$dir/n$((i + 1))" | awk '{print $1}')"
  done
  echo "target=$product nodes=$nodes load=$RSS_LOAD conns=$RSS_CONNS leader=$leader $res" \
    "end_rss_kib=$rss hwm_kib=$hwm disk_kib=$disk" >>"$work/rss.txt"
  log "$(printf '%-8s %s node(s) %s c=%s for %s s: %8.0f req/s  p99 %7.2f ms  RSS at end (MiB) %s  peak %s' \
    "$product" "$nodes" "$RSS_LOAD" "$RSS_CONNS" "$RSS_DURATION" \
    "$(awk -v n="$(field requests "$res")" -v d="$(field duration_s "$res")" 'BEGIN{print n/d}')" \
    "$(awk -v u="$(field p99_us "$res")" 'BEGIN{print u/1000}')" \
    "$(tr , '\n' <<<"$rss" | awk '{printf "%s%d", (NR > 1 ? " " : ""), $1 / 1024}')" \
    "$(tr , '\n' <<<"$hwm" | awk '{printf "%s%d", (NR > 1 ? " " : ""), $1 / 1024}')")"
  stop_servers
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- watches ----------------------------------------------------------------------------

vm_rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; } # KiB

# watch_client OUT WHAT ARGS...: benches/watch.py WHAT ARGS in the background, its output
# to OUT; waits until it prints its "ready" line (dies if it exits first). Sets CLIENT.
watch_client() {
  local out=$1 what=$2 i
  shift 2
  python3 "$here/watch.py" "$what" "$@" >"$out" 2>&1 &
  CLIENT=$!
  CLIENTS+=("$CLIENT")
  for ((i = 0; i < 1200; i++)); do
    grep -q ' ready' "$out" && return 0
    alive "$CLIENT" || break
    sleep 0.1
  done
  cat "$out" >&2
  die "watch.py $what did not get ready (see above)"
}

# end_client OUT PREFIX: SIGTERM the client started last and wait for it; sets END to the
# fields of its "end" line, each name with PREFIX before it.
end_client() {
  local pid left=()
  kill -TERM "$CLIENT" 2>/dev/null || true
  wait "$CLIENT" || die "watch.py failed (see $1)"
  for pid in "${CLIENTS[@]}"; do [[ $pid == "$CLIENT" ]] || left+=("$pid"); done
  CLIENTS=(${left[@]+"${left[@]}"})
  END=$(sed -n "s/^[A-Z]* end //p" "$1" | sed "s/\([a-z_]*=\)/$2\1/g")
}

# watch_latency PRODUCT NODES [idle]: a fresh cluster; WATCH_ROUNDS latency runs with the
# watcher on the leader and (3 nodes) as many on a follower, taking turns; the putter always
# writes through the leader. With idle: WATCH_IDLE idle watchers (benches/watch.py idle, as
# in watch_cell) are opened on the leader first and held to the end, and the watcher is only
# on the leader. Appends to watchlat.txt (idle=N), the samples to watchlat-*.txt, and with
# idle a row to watchlatidle.txt: how the idle watchers opened, how long the runs took after
# that, and how many were still open and what they received meanwhile.
watch_latency() {
  local product=$1 nodes=$2 idle=0 r where url follower="" res i t0 b0 w0 ready suffix="" places t_idle
  [[ ${3:-} != idle ]] || { idle=$WATCH_IDLE suffix=-idle; }
  local dir="$work/watchlat-$product-$nodes$suffix"
  mkdir -p "$dir"
  [[ $idle == 0 || $product != palisade ]] || PALISADE_PART_FLAGS=$WATCH_PALISADE_FLAGS
  start "$product" "$nodes" "$dir"
  PALISADE_PART_FLAGS=""
  places="leader follower"
  if ((idle)); then
    places=leader
    watch_client "$dir/idle.out" idle "$product" "$LEADER_URL" "$idle"
    ready=$(sed -n 's/^IDLE ready //p' "$dir/idle.out")
    all_alive "$product" "$dir" "the idle watchers"
    log "$(printf '%-8s %s node(s): %s idle watchers on the leader: %s' "$product" "$nodes" "$idle" "$ready")"
    [[ $(field opened "$ready") == "$idle" ]] || die "$product: not every idle watcher opened ($ready; see $dir/idle.out)"
    t_idle=$EPOCHREALTIME
  fi
  for i in "${!URLS[@]}"; do
    [[ ${URLS[i]} == "$LEADER_URL" || -n $follower ]] || follower=${URLS[i]}
  done
  for ((r = 1; r <= WATCH_ROUNDS; r++)); do
    for where in $places; do
      url=$LEADER_URL
      if [[ $where == follower ]]; then
        [[ -n $follower ]] || continue
        url=$follower
      fi
      t0=$(cpu_ticks "${PIDS[@]}")
      b0=$(busy_ticks)
      w0=$EPOCHREALTIME
      res=$(python3 "$here/watch.py" latency "$product" "$LEADER_URL" "$url" "$WATCH_N" "lat$r$where/" \
        "$work/watchlat-$product-$nodes-$where$suffix.txt" "$WATCH_WARM") ||
        { echo "$res" >&2; die "$product: watch latency run failed"; }
      all_alive "$product" "$dir" "the watch latency runs"
      echo "round=$r target=$product nodes=$nodes watcher=$where idle=$idle ${res#WATCHLAT }" \
        "server_ticks=$(($(cpu_ticks "${PIDS[@]}") - t0)) busy_ticks=$(($(busy_ticks) - b0))" \
        "wall_s=$(bc_s "$w0" "$EPOCHREALTIME")" >>"$work/watchlat.txt"
      log "$(printf '%-8s %s node(s) watcher on the %-8s' "$product" "$nodes" "$where")" \
        "$( ((idle == 0)) || echo "beside $idle idle watchers: ")$(python3 "$here/bench.py" latsummary \
          "$work/watchlat-$product-$nodes-$where$suffix.txt")"
    done
  done
  if ((idle)); then
    ready+=" runs_s=$(bc_s "$t_idle" "$EPOCHREALTIME")" # from the last idle watcher established to now
    end_client "$dir/idle.out" idle_
    echo "target=$product nodes=$nodes $ready $END" >>"$work/watchlatidle.txt"
  fi
  stop_servers KILL # nothing of this cluster is kept (3 etcd members take ~7 s to stop on TERM)
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# watch_put ROUND PRODUCT DIR BESIDE [CLIENT_PID]: put at WATCH_CONNS connections for
# DURATION s on the running node (beside the watch client CLIENT_PID, whose CPU time is
# counted); prints its row for watchput.txt.
watch_put() {
  local round=$1 product=$2 dir=$3 beside=$4 client=${5:-} res rss0 c0=0 c1=0
  rss0=$(vm_rss "${PIDS[0]}")
  [[ -z $client ]] || c0=$(cpu_ticks "$client")
  res=$(run_wrk "$product" put "$WATCH_CONNS" "$DURATION" "$dir/put-$beside.log" BENCH_PREFIX=load/)
  [[ -z $client ]] || c1=$(cpu_ticks "$client")
  all_alive "$product" "$dir" "the put load"
  echo "round=$round target=$product conns=$WATCH_CONNS beside=$beside $res rss_start_kib=$rss0" \
    "rss_end_kib=$(vm_rss "${PIDS[0]}")" \
    "watch_client_cpu_s=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", t/hz}')"
  log "$(printf '%-8s 1 node put c=%-3s beside %-10s' "$product" "$WATCH_CONNS" "$beside") $(summary "$res")"
}

# watch_cell ROUND PRODUCT BESIDE: a fresh node with the KEYS keys under load/, and put at
# WATCH_CONNS connections for DURATION s beside nothing (none), one watcher of load/ that
# reads every event (reading), one that reads nothing (stalled) or WATCH_IDLE idle
# watchers (idle). Every cell starts from the same state,
# so the history left by one run does not weigh on the next. The idle cell first measures
# the memory of its watchers: RSS before and 2 s after opening them, on the quiet node
# (watchidle.txt). Appends a row to watchput.txt.
watch_cell() {
  local round=$1 product=$2 beside=$3 rss0 rss1 ready row
  local dir="$work/watch-$round-$product-$beside"
  mkdir -p "$dir"
  [[ $product != palisade ]] || PALISADE_PART_FLAGS=$WATCH_PALISADE_FLAGS
  start "$product" 1 "$dir"
  PALISADE_PART_FLAGS=""
  python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" load/ || die "$product: preload failed"
  if [[ $beside == idle ]]; then
    sleep 1
    rss0=$(vm_rss "${PIDS[0]}")
    watch_client "$dir/idle.out" idle "$product" "$LEADER_URL" "$WATCH_IDLE"
    ready=$(sed -n 's/^IDLE ready //p' "$dir/idle.out")
    sleep 2
    rss1=$(vm_rss "${PIDS[0]}")
    all_alive "$product" "$dir" "the idle watchers"
    echo "round=$round target=$product $ready rss_before_kib=$rss0 rss_after_kib=$rss1" >>"$work/watchidle.txt"
    log "$(printf '%-8s 1 node %s idle watchers: %s; RSS %d -> %d MiB' "$product" "$WATCH_IDLE" "$ready" \
      $((rss0 / 1024)) $((rss1 / 1024)))"
    [[ $(field opened "$ready") == "$WATCH_IDLE" ]] || die "$product: not every idle watcher opened ($ready; see $dir/idle.out)"
  fi
  warm_up "$product" put "$dir/warmup.log" BENCH_PREFIX=load/
  if [[ $beside == stalled ]]; then
    watch_client "$dir/stalled.out" stall "$product" "$LEADER_URL" load/
  elif [[ $beside == reading ]]; then
    watch_client "$dir/reading.out" follow "$product" "$LEADER_URL" load/
  fi
  if [[ $beside == none ]]; then
    watch_put "$round" "$product" "$dir" "$beside" >>"$work/watchput.txt"
  else
    row=$(watch_put "$round" "$product" "$dir" "$beside" "$CLIENT")
    end_client "$dir/$beside.out" "${beside}_"
    echo "$row $END" >>"$work/watchput.txt"
  fi
  stop_servers KILL # nothing of this node is kept
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- the mixed workload -----------------------------------------------------------------

# watch_count OUT: the events the watch client started last (watch.py groups, writing to
# OUT) has counted so far, once none has come for 0.5 s: on SIGUSR1 it prints a "count" line.
watch_count() {
  local out=$1 n i last="" now
  for ((i = 0; i < 100; i++)); do
    n=$(grep -c ' count ' "$out" || true)
    kill -USR1 "$CLIENT" 2>/dev/null || die "the watch client has exited (see $out)"
    while (($(grep -c ' count ' "$out" || true) == n)); do
      alive "$CLIENT" || die "the watch client has exited (see $out)"
      sleep 0.02
    done
    now=$(grep ' count ' "$out" | tail -n 1 | sed -n 's/.* events=\([0-9]*\).*/\1/p')
    [[ $now != "$last" ]] || { echo "$now"; return 0; }
    last=$now
    sleep 0.5
  done
  die "the watchers' events did not stop coming in 50 s (see $out)"
}

# mixed_cell ROUND PRODUCT NODES CONNS: fresh servers; the KEYS keys in MIXED_WATCHERS groups
# (the wrk scripts' BENCH_GROUPS) and LEASES leases of LEASE_TTL s, written through the
# leader; MIXED_WATCHERS watchers on the leader (benches/watch.py groups: one recursive watch
# of each group, each on its own connection, reading and counting every event); a checked
# warm-up of the mixed load (benches/<product>/mixed.lua) for WARMUP s at 16 connections;
# then the mixed load at CONNS connections for DURATION s, and the events the watchers
# received from its start until they stop coming after it. Appends to mixed.txt.
mixed_cell() {
  local round=$1 product=$2 nodes=$3 conns=$4 res ready e0 e1 c0 c1 t0 t1 row
  local dir="$work/mixed-$round-$product-$nodes-$conns"
  local env=(BENCH_LEASES="$dir/leases.txt" BENCH_LEASE_TTL="$LEASE_TTL" BENCH_GROUPS="$MIXED_WATCHERS")
  mkdir -p "$dir"
  t0=$EPOCHREALTIME
  # Palisade's default caps (10,000 client connections, 20,000 watches) hold the defaults.
  [[ $product != palisade ]] || ((MIXED_WATCHERS + 1000 <= 10000)) ||
    PALISADE_PART_FLAGS="--max-client-connections $((MIXED_WATCHERS + 1000)) --max-watchers $((MIXED_WATCHERS + 1000))"
  start "$product" "$nodes" "$dir"
  PALISADE_PART_FLAGS=""
  t1=$EPOCHREALTIME
  python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" "" "$MIXED_WATCHERS" ||
    die "$product: preload failed"
  python3 "$here/bench.py" leases "$product" "$LEADER_URL" "$LEASES" "$LEASE_TTL" "$dir/leases.txt" ||
    die "$product: lease preload failed"
  watch_client "$dir/watchers.out" groups "$product" "$LEADER_URL" "$MIXED_WATCHERS"
  ready=$(sed -n 's/^GROUPS ready //p' "$dir/watchers.out")
  [[ $(field opened "$ready") == "$MIXED_WATCHERS" ]] ||
    die "$product: not every watcher opened ($ready; see $dir/watchers.out)"
  log "$product, $nodes node(s): leader $LEADER_URL after $(bc_s "$t0" "$t1") s; $KEYS keys, $LEASES leases" \
    "and $MIXED_WATCHERS watchers in $(bc_s "$t1" "$EPOCHREALTIME") s"
  warm_up "$product" mixed "$dir/warmup.log" "${env[@]}"
  e0=$(watch_count "$dir/watchers.out")
  c0=$(cpu_ticks "$CLIENT")
  res=$(run_wrk "$product" mixed "$conns" "$DURATION" "$dir/c$conns.log" "${env[@]}")
  c1=$(cpu_ticks "$CLIENT")
  all_alive "$product" "$dir" "the mixed load"
  row="round=$round target=$product nodes=$nodes conns=$conns watchers=$MIXED_WATCHERS $res $(rss_kib "${PIDS[@]}")"
  e1=$(watch_count "$dir/watchers.out")
  end_client "$dir/watchers.out" watchers_
  echo "$row events=$((e1 - e0)) watch_client_cpu_s=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", t/hz}')" \
    "$END" >>"$work/mixed.txt"
  log "$(printf '%-8s %s node(s) mixed c=%-3s' "$product" "$nodes" "$conns") $(summary "$res")" \
    " $((e1 - e0)) events to the watchers ($(field sent_put "$res") puts, $(field sent_txn "$res") txns sent)"
  stop_servers KILL # nothing of these servers is kept
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- locks -----------------------------------------------------------------------------

# lock_group ROUND PRODUCT NODES: a fresh cluster; benches/lock.py measures the uncontended
# pairs at each client count of LOCK_CONNS, then the contended hand-off, each for LOCK_SECS
# s (after 1 s unmeasured), through the leader, with the CPU time of all members over the
# measured window. Appends to lockpairs.txt and lockhandoff.txt.
lock_group() {
  local round=$1 product=$2 nodes=$3 conns res
  local dir="$work/lock-$round-$product-$nodes"
  mkdir -p "$dir"
  start "$product" "$nodes" "$dir"
  for conns in $LOCK_CONNS; do
    res=$(python3 "$here/lock.py" pairs "$product" "$LEADER_URL" "$conns" "$LOCK_SECS" "${PIDS[@]}") ||
      { echo "$res" >&2; die "$product: lock pair run ($conns clients) failed (see above)"; }
    all_alive "$product" "$dir" "the lock pair run"
    echo "round=$round target=$product nodes=$nodes ${res#LOCKPAIRS }" >>"$work/lockpairs.txt"
    log "$(printf '%-8s %s node(s) lock pairs c=%-3s %8.0f pairs/s  p50 %6.2f ms  p99 %7.2f ms  client CPU %3.0f%%' \
      "$product" "$nodes" "$conns" \
      "$(awk -v n="$(field pairs "$res")" -v d="$(field window_s "$res")" 'BEGIN{print n/d}')" \
      "$(awk -v u="$(field p50_us "$res")" 'BEGIN{print u/1000}')" \
      "$(awk -v u="$(field p99_us "$res")" 'BEGIN{print u/1000}')" \
      "$(awk -v c="$(field client_cpu_s "$res")" -v w="$(field wall_s "$res")" 'BEGIN{print 100*c/w}')")"
  done
  res=$(python3 "$here/lock.py" handoff "$product" "$LEADER_URL" "$LOCK_WAITERS" "$LOCK_SECS" "$LOCK_HOLD_MS" \
    "${PIDS[@]}") || { echo "$res" >&2; die "$product: lock hand-off run failed (see above)"; }
  all_alive "$product" "$dir" "the lock hand-off run"
  echo "round=$round target=$product nodes=$nodes ${res#LOCKHANDOFF }" >>"$work/lockhandoff.txt"
  log "$(printf '%-8s %s node(s) lock hand-off, %s clients: %6.0f hand-offs/s  release->grant p50 %6.2f ms  p99 %7.2f ms' \
    "$product" "$nodes" "$LOCK_WAITERS" \
    "$(awk -v n="$(field handoffs "$res")" -v d="$(field window_s "$res")" 'BEGIN{print n/d}')" \
    "$(awk -v u="$(field p50_us "$res")" 'BEGIN{print u/1000}')" \
    "$(awk -v u="$(field p99_us "$res")" 'BEGIN{print u/1000}')")"
  stop_servers KILL # nothing of this cluster is kept (3 etcd members take ~7 s to stop on TERM)
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- operations -------------------------------------------------------------------------

# ops_member PRODUCT N DIR: starts member N (4, 5, ...) of a running 3-node cluster on the
# next pair of OPS_PORTS: Palisade joins by itself (--join, learner, then promoted once
# caught up); etcd is added as a learner with etcdctl first. Sets NEW_PID and NEW_URL.
ops_member() {
  local product=$1 n=$2 dir=$3 ports var=${1^^}_OPS_PORTS cport pport i cluster=""
  read -r -a ports <<<"${!var}"
  ((${#ports[@]} >= n - 3)) || die "$var has fewer than $((n - 3)) client:peer pairs"
  cport=${ports[n - 4]%:*}
  pport=${ports[n - 4]#*:}
  port_free "$cport" "$var"
  port_free "$pport" "$var"
  if [[ $product == palisade ]]; then
    local join="" p
    read -r -a p <<<"$PALISADE_PORTS"
    for ((i = 0; i < 3; i++)); do join+="${join:+,}http://127.0.0.1:${p[i]#*:}"; done
    # shellcheck disable=SC2086 # PALISADE_EXTRA_FLAGS is a word list on purpose
    "$PALISADE_BIN" serve --node-id "$n" --data-dir "$dir/n$n" \
      --listen-client "127.0.0.1:$cport" --listen-peer "127.0.0.1:$pport" \
      --join "$join" --log-level warn $PALISADE_EXTRA_FLAGS >"$dir/n$n.log" 2>&1 </dev/null &
  else
    # etcd refuses a member change until every member has been connected for 5 s.
    for ((i = 0; i < 60; i++)); do
      ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" member add "m$n" --learner \
        --peer-urls "http://127.0.0.1:$pport" >"$dir/add-m$n.txt" 2>&1 && break
      grep -q "unhealthy cluster" "$dir/add-m$n.txt" || { cat "$dir/add-m$n.txt" >&2; die "etcd: member add m$n failed"; }
      sleep 0.5
    done
    ((i < 60)) || { cat "$dir/add-m$n.txt" >&2; die "etcd: member add m$n failed for 30 s"; }
    cluster=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' "$dir/add-m$n.txt")
    [[ -n $cluster ]] || die "etcd: member add printed no ETCD_INITIAL_CLUSTER (see $dir/add-m$n.txt)"
    # shellcheck disable=SC2086 # ETCD_EXTRA_FLAGS is a word list on purpose
    "$ETCD_BIN" --name "m$n" --data-dir "$dir/n$n" \
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "$cluster" --initial-cluster-state existing \
      --logger zap --log-outputs stderr --log-level warn $ETCD_EXTRA_FLAGS >"$dir/n$n.log" 2>&1 </dev/null &
  fi
  NEW_PID=$!
  PIDS+=("$NEW_PID")
  NEW_URL="http://127.0.0.1:$cport"
}

# ops_remove PRODUCT N: removes member N (its process stops by itself).
ops_remove() {
  if [[ $1 == palisade ]]; then
    "$PALISADE_BIN" member rm "$2" --endpoints "$LEADER_URL" >/dev/null || die "palisade: member rm $2 failed"
  else
    local id
    id=$(ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" member list | awk -F', ' -v n="m$2" '$3 == n {print $1}')
    [[ -n $id ]] || die "etcd: no member m$2 to remove"
    ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" member remove "$id" >/dev/null || die "etcd: member remove m$2 failed"
  fi
}

# wrk_p99 PRODUCT SECS LOG: put at OPS_CONNS connections against LEADER_URL; prints its
# BENCHRESULT fields (no CPU figures: members come and go meanwhile).
wrk_put() {
  env LUA_PATH="$here/?.lua;;" BENCH_KEYS="$KEYS" wrk -t1 -c"$OPS_CONNS" -d"$2s" --latency \
    -s "$here/$1/put.lua" "$LEADER_URL" >"$3" 2>&1 || die "wrk failed (see $3)"
  local res
  res=$(grep '^BENCHRESULT' "$3") || die "no result from wrk (see $3)"
  echo "${res#BENCHRESULT }"
}

# ops_group ROUND PRODUCT: a 3-node cluster holding OPS_KEYS keys: OPS_SNAPSHOTS backups
# (`palisade snapshot save`, `etcdctl snapshot save`), timed; a 4th member added and timed
# until it has applied everything (its peak RSS and the leader's meanwhile); then put at
# OPS_CONNS connections for OPS_SECS s alone, and again while member 4 is removed and a
# 5th added (catching up from a snapshot under the load). Appends to ops.txt.
ops_group() {
  local round=$1 product=$2 i t0 t1 bytes rev res leader_pid="" line
  local dir="$work/ops-$round-$product"
  mkdir -p "$dir"
  start "$product" 3 "$dir"
  for i in "${!URLS[@]}"; do [[ ${URLS[i]} != "$LEADER_URL" ]] || leader_pid=${PIDS[i]}; done
  t0=$(date +%s.%N)
  python3 "$here/bench.py" bulkload "$product" "$LEADER_URL" "$OPS_KEYS" || die "$product: bulk load failed"
  t1=$(date +%s.%N)
  python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" || die "$product: preload failed"
  rev=$(python3 "$here/bench.py" revision "$product" "$LEADER_URL") || die "$product: no revision"
  log "$product: $OPS_KEYS keys written in $(bc_s "$t0" "$t1") s (revision $rev)"
  line="round=$round target=$product keys=$OPS_KEYS revision=$rev"
  for ((i = 1; i <= OPS_SNAPSHOTS; i++)); do
    rm -f "$dir/backup.db"
    t0=$(date +%s.%N)
    if [[ $product == palisade ]]; then
      "$PALISADE_BIN" snapshot save "$dir/backup.db" --endpoints "$LEADER_URL" >"$dir/save.txt" 2>&1 ||
        { cat "$dir/save.txt" >&2; die "palisade snapshot save failed"; }
    else
      ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" snapshot save "$dir/backup.db" >"$dir/save.txt" 2>&1 ||
        { cat "$dir/save.txt" >&2; die "etcdctl snapshot save failed"; }
    fi
    t1=$(date +%s.%N)
    bytes=$(stat -c %s "$dir/backup.db")
    line+=" snapshot${i}_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') snapshot_bytes=$bytes"
    log "$(printf '%-8s backup %d: %.1f MB in %s s' "$product" "$i" "$(awk -v b="$bytes" 'BEGIN{print b/1e6}')" "$(bc_s "$t0" "$t1")")"
  done
  rm -f "$dir/backup.db"
  ops_member "$product" 4 "$dir"
  res=$(python3 "$here/bench.py" catchup "$product" "$NEW_URL" "$rev" 300 "$leader_pid" "$NEW_PID") ||
    { tail -n 20 "$dir"/n*.log >&2; die "$product: member 4 did not catch up"; }
  line+=" ${res#CATCHUP }"
  log "$product: member 4 caught up: ${res#CATCHUP }"
  if [[ $product == etcd ]]; then
    local id
    id=$(ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" member list | awk -F', ' '$3 == "m4" {print $1}')
    for ((i = 0; i < 50; i++)); do
      ETCDCTL_API=3 etcdctl --endpoints "$LEADER_URL" member promote "$id" >/dev/null 2>&1 && break
      sleep 0.2
    done
    ((i < 50)) || die "etcd: m4 was not promoted"
  fi
  res=$(wrk_put "$product" "$OPS_SECS" "$dir/wrk-alone.log")
  line+=" alone_requests=$(field requests "$res") alone_duration_s=$(field duration_s "$res") alone_p50_us=$(field p50_us "$res") alone_p99_us=$(field p99_us "$res") alone_errors=$(field errors "$res")"
  wrk_put "$product" "$OPS_SECS" "$dir/wrk-change.log" >"$dir/wrk-change.res" &
  local wrk_pid=$!
  sleep 1
  ops_remove "$product" 4
  ops_member "$product" 5 "$dir"
  wait "$wrk_pid" || die "$product: the put run during the membership change failed"
  res=$(cat "$dir/wrk-change.res")
  line+=" change_requests=$(field requests "$res") change_duration_s=$(field duration_s "$res") change_p50_us=$(field p50_us "$res") change_p99_us=$(field p99_us "$res") change_errors=$(field errors "$res")"
  echo "$line" >>"$work/ops.txt"
  log "$(printf '%-8s put c=%s p99 %.2f ms alone, %.2f ms while member 4 leaves and 5 joins' "$product" "$OPS_CONNS" \
    "$(awk -v u="$(field alone_p99_us "$line")" 'BEGIN{print u/1000}')" \
    "$(awk -v u="$(field change_p99_us "$line")" 'BEGIN{print u/1000}')")"
  stop_servers KILL
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- security ---------------------------------------------------------------------------
SEC=""  # the security part's certificate, keys and tokens (a directory of the work dir)

# secure_material: makes SEC with openssl: a self-signed EC P-256 certificate for IP
# 127.0.0.1 (tls.crt, tls.key), a 32-byte HS256 secret (hs256.secret), an EC P-256 key
# pair for ES256 (es256.key, es256.pub), and one token of each key (hs256.token,
# es256.token: sub bench, read and write /, valid 24 h) from `palisade auth token`.
secure_material() {
  SEC=$work/secure
  mkdir -p "$SEC"
  chmod 700 "$SEC"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$SEC/tls.key" 2>"$SEC/openssl.log" &&
    openssl req -x509 -new -key "$SEC/tls.key" -out "$SEC/tls.crt" -days 2 -subj "/CN=palisade-bench" \
      -addext "subjectAltName=IP:127.0.0.1" 2>>"$SEC/openssl.log" &&
    openssl rand -hex 32 >"$SEC/hs256.secret" 2>>"$SEC/openssl.log" &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$SEC/es256.key" 2>>"$SEC/openssl.log" &&
    openssl pkey -in "$SEC/es256.key" -pubout -out "$SEC/es256.pub" 2>>"$SEC/openssl.log" ||
    { cat "$SEC/openssl.log" >&2; die "openssl could not make the security part's certificate and keys"; }
  "$PALISADE_BIN" auth token --secret-file "$SEC/hs256.secret" --sub bench --read / --write / --ttl 24h \
    >"$SEC/hs256.token" || die "palisade auth token (HS256) failed"
  "$PALISADE_BIN" auth token --private-key "$SEC/es256.key" --sub bench --read / --write / --ttl 24h \
    >"$SEC/es256.token" || die "palisade auth token (ES256) failed"
}

# tls_session URL: "tls_version=V tls_cipher=C" of a handshake with the listener at URL
# (openssl s_client; "unknown" when it cannot tell).
tls_session() {
  local hp=${1#https://} line
  line=$(openssl s_client -connect "$hp" -servername 127.0.0.1 </dev/null 2>/dev/null | grep -m1 '^New, ') || true
  # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
  if [[ $line =~ ^New,\ ([^,]+),\ Cipher\ is\ ([^ ]+) ]]; then
    echo "tls_version=${BASH_REMATCH[1]} tls_cipher=${BASH_REMATCH[2]}"
  else
    echo "tls_version=unknown tls_cipher=unknown"
  fi
}

# secure_group ROUND PRODUCT NODES CONFIG: fresh servers in configuration CONFIG (plain, or
# parts joined by "-": tls, the client listener over TLS; hs256 / es256, client auth with
# that key and its token on every request); the KEYS keys written through the leader, a
# checked warm-up of WARMUP s for each load of SECURE_LOADS, then each at SECURE_CONNS
# connections for DURATION s. A TLS group first sees whether wrk gets good answers over
# https (1 s, 1 connection); if it does not, the group records that instead of figures.
# Appends to secure.txt.
secure_group() {
  local round=$1 product=$2 nodes=$3 config=$4 part tls=0 flags="" token="" load res sess=""
  local dir="$work/sec-$round-$product-$nodes-$config"
  local row="round=$round target=$product nodes=$nodes config=$config conns=$SECURE_CONNS"
  mkdir -p "$dir"
  for part in ${config//-/ }; do
    case $part in
      tls) tls=1 ;;
      hs256) flags+=" --auth-jwt-secret-file $SEC/hs256.secret" token=$SEC/hs256.token ;;
      es256) flags+=" --auth-jwt-public-keys $SEC/es256.pub" token=$SEC/es256.token ;;
    esac
  done
  PART_ENV=()
  if ((tls)); then
    SCHEME=https
    PART_ENV+=(BENCH_CA="$SEC/tls.crt")
    flags+=" --tls-cert-file $SEC/tls.crt --tls-key-file $SEC/tls.key"
    ETCD_PART_FLAGS="--cert-file $SEC/tls.crt --key-file $SEC/tls.key"
  fi
  # The token reaches bench.py and wrk through the environment, never a command line (which
  # ps shows); the members are started without it.
  if [[ -n $token ]]; then
    BENCH_TOKEN=$(<"$token")
    export BENCH_TOKEN
  fi
  PALISADE_PART_FLAGS=$flags
  start "$product" "$nodes" "$dir"
  PALISADE_PART_FLAGS="" ETCD_PART_FLAGS="" SCHEME=http
  env "${PART_ENV[@]}" python3 "$here/bench.py" preload "$product" "$LEADER_URL" "$KEYS" ||
    die "$product ($config): preload failed"
  if ((tls)); then
    sess=$(tls_session "$LEADER_URL")
    res=$(run_wrk "$product" "${SECURE_LOADS%% *}" 1 1 "$dir/https-probe.log" BENCH_VERIFY=1 "${PART_ENV[@]}" 2>&1) ||
      true
    if [[ $(field requests "$res") -lt 1 || $(field errors "$res") != 0 || $(field bad "$res") != 0 ]]; then
      log "$product, $nodes node(s), $config: wrk got no good answer over https, though bench.py did;" \
        "recording that instead of figures: $(tail -n 3 "$dir/https-probe.log" | tr '\n' ' ')"
      for load in $SECURE_LOADS; do echo "$row load=$load wrk_https=no" >>"$work/secure.txt"; done
      PART_ENV=()
      unset BENCH_TOKEN
      stop_servers KILL
      [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
      return 0
    fi
  fi
  for load in $SECURE_LOADS; do
    warm_up "$product" "$load" "$dir/warmup-$load.log" "${PART_ENV[@]}"
  done
  for load in $SECURE_LOADS; do
    res=$(run_wrk "$product" "$load" "$SECURE_CONNS" "$DURATION" "$dir/$load.log" "${PART_ENV[@]}")
    all_alive "$product" "$dir" "the $load load ($config)"
    echo "$row load=$load $res $sess" >>"$work/secure.txt"
    log "$(printf '%-8s %s node(s) %-10s %-4s c=%-3s' "$product" "$nodes" "$config" "$load" "$SECURE_CONNS")" \
      "$(summary "$res")"
  done
  PART_ENV=()
  unset BENCH_TOKEN
  stop_servers KILL # nothing of these servers is kept (3 etcd members take ~7 s to stop on TERM)
  [[ $KEEP_DATA == 1 ]] || rm -rf -- "$dir"
}

# --- machine, versions, the run ---------------------------------------------------------
command="${set_knobs}$([[ -n ${MAKELEVEL:-} ]] && echo "make $make_target" || echo "benches/run.sh")"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command=$command"
  echo "cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "cores=$(nproc)"
  echo "ram=$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)"
  echo "kernel=$(uname -sr)"
  echo "disk=$(df -PT "$work" | awk 'NR==2{print $2 " (" $1 ")"}'), under ${TMPDIR:-/tmp}"
  echo "fsync=$(python3 "$here/bench.py" fsync "$work")"
  echo "version_palisade=$("$PALISADE_BIN" --version)"
  [[ " $TARGETS " != *" etcd "* ]] || echo "version_etcd=$("$ETCD_BIN" --version | sed -n 's/^etcd Version: /etcd /p')"
  echo "desc_palisade=Palisade"
  echo "desc_etcd=etcd"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), 1 thread"
  echo "clk_tck=$CLK_TCK"
  echo "keys=$KEYS"
  echo "warmup=$WARMUP"
  echo "duration=$DURATION"
  echo "leases=$LEASES"
  echo "lease_ttl=$LEASE_TTL"
  echo "put_ka_ka_conns=$PUT_KA_KA_CONNS"
  echo "failover_ttl=$FAILOVER_TTL"
  echo "rss_load=$RSS_LOAD"
  echo "rss_conns=$RSS_CONNS"
  echo "rss_nodes=$RSS_NODES"
  echo "rss_duration=$RSS_DURATION"
  echo "rss_interval=$RSS_INTERVAL"
  echo "rss_marks=$RSS_MARKS"
  echo "flags_palisade=$PALISADE_EXTRA_FLAGS"
  echo "watch_n=$WATCH_N"
  echo "watch_warm=$WATCH_WARM"
  echo "watch_idle=$WATCH_IDLE"
  echo "watch_flags_palisade=$WATCH_PALISADE_FLAGS"
  echo "nofile=$(ulimit -n)"
  echo "flags_etcd=$ETCD_EXTRA_FLAGS"
  echo "lock_secs=$LOCK_SECS"
  echo "lock_waiters=$LOCK_WAITERS"
  echo "lock_hold_ms=$LOCK_HOLD_MS"
  echo "secure_conns=$SECURE_CONNS"
  echo "ops_conns=$OPS_CONNS"
  echo "ops_secs=$OPS_SECS"
  echo "secure_loads=$SECURE_LOADS"
  echo "mixed_watchers=$MIXED_WATCHERS"
  echo "python=$(python3 -c 'import platform; print(platform.python_implementation(), platform.python_version())')"
} >"$work/machine.txt"
log "$(grep -E '^(cpu|cores|fsync)=' "$work/machine.txt" | tr '\n' ' ')"

[[ $RSS_RUN != only ]] || { ROUNDS=0; FAILOVER=0; WATCH=0; LOCK=0; SECURE=0; OPS=0; MIXED=0; }
[[ $WATCH != only ]] || { ROUNDS=0; FAILOVER=0; RSS_RUN=0; LOCK=0; SECURE=0; OPS=0; MIXED=0; }
[[ $LOCK != only ]] || { ROUNDS=0; FAILOVER=0; RSS_RUN=0; WATCH=0; SECURE=0; OPS=0; MIXED=0; }
[[ $SECURE != only ]] || { ROUNDS=0; FAILOVER=0; RSS_RUN=0; WATCH=0; LOCK=0; OPS=0; MIXED=0; }
[[ $OPS != only ]] || { ROUNDS=0; FAILOVER=0; RSS_RUN=0; WATCH=0; LOCK=0; SECURE=0; MIXED=0; }
[[ $MIXED != only ]] || { ROUNDS=0; FAILOVER=0; RSS_RUN=0; WATCH=0; LOCK=0; SECURE=0; OPS=0; }
nt=$(wc -w <<<"$TARGETS")
ngroups=$(($(wc -w <<<"$NODES") * $(wc -w <<<"$LOADS") * nt))
est=$((ROUNDS * ngroups * ($(wc -w <<<"$CONNS") * DURATION + WARMUP + 8)))
if [[ " $LOADS " == *" keepalive "* ]]; then # the lease preloads, and put under keepalives
  est=$((est + ROUNDS * $(wc -w <<<"$NODES") * nt * (LEASES / 2000)))
  for n in $NODES; do
    [[ " $PUT_KA " != *" $n "* ]] ||
      est=$((est + ROUNDS * nt * (WARMUP + DURATION + 5 + $(wc -w <<<"$PUT_KA_RATES") * (DURATION + 2))))
  done
fi
failover_est=$((FAILOVER * FAILOVER_TRIALS * nt * (2 * FAILOVER_TTL + 8)))
rss_est=0
[[ $RSS_RUN == 0 ]] || rss_est=$((nt * (RSS_DURATION + WARMUP + 15)))
watch_est=0
if [[ $WATCH != 0 ]]; then # latency runs (~2 ms a put; then beside idle watchers), the idle/stalled groups
  for n in $WATCH_NODES; do
    watch_est=$((watch_est + nt * (5 + WATCH_ROUNDS * (n > 1 ? 2 : 1) * ((WATCH_N + WATCH_WARM) / 500 + 1))))
    ((WATCH_IDLE == 0)) ||
      watch_est=$((watch_est + nt * (5 + WATCH_IDLE / 2000 + WATCH_ROUNDS * ((WATCH_N + WATCH_WARM) / 500 + 1))))
  done
  watch_est=$((watch_est + WATCH_ROUNDS * nt * (4 * (DURATION + WARMUP + KEYS / 2000 + 3) + WATCH_IDLE / 2000 + 3)))
fi
lock_est=0
if [[ $LOCK != 0 ]]; then # per group: start-up and stop, then each run's lead-in, grants and clean-up
  lock_est=$((LOCK_ROUNDS * $(wc -w <<<"$LOCK_NODES") * nt * (8 + ($(wc -w <<<"$LOCK_CONNS") + 1) * (LOCK_SECS + 2))))
fi
secure_est=0
if [[ $SECURE != 0 ]]; then # per group: start-up, preload, a warm-up and a run per load, stop
  nsec=0
  for t in $TARGETS; do
    for c in $SECURE_CONFIGS; do
      [[ $t == palisade || $c == plain || $c == tls ]] && nsec=$((nsec + 1))
    done
  done
  secure_est=$((SECURE_ROUNDS * $(wc -w <<<"$SECURE_NODES") * nsec *
    (5 + KEYS / 2000 + $(wc -w <<<"$SECURE_LOADS") * (WARMUP + DURATION + 1))))
fi
ops_est=0
if [[ $OPS != 0 ]]; then # per group: start-up, bulk load (~10k keys/s), backups, catch-up, two put runs
  ops_est=$((OPS_ROUNDS * nt * (20 + OPS_KEYS / 5000 + OPS_SNAPSHOTS * 5 + 30 + 2 * OPS_SECS)))
fi
mixed_est=0
if [[ $MIXED != 0 ]]; then # per cell: start-up, keys, leases, watchers, warm-up, the run, stop
  mixed_est=$((MIXED_ROUNDS * $(wc -w <<<"$MIXED_NODES") * $(wc -w <<<"$MIXED_CONNS") * nt *
    (5 + KEYS / 2000 + LEASES / 2000 + MIXED_WATCHERS / 1000 + WARMUP + DURATION + 2)))
fi
plan="$ROUNDS round(s) of $ngroups load groups"
[[ $FAILOVER == 0 ]] || plan+=", $FAILOVER_TRIALS failover trials per product"
[[ $WATCH == 0 ]] || plan+=", the watch part"
[[ $LOCK == 0 ]] || plan+=", $LOCK_ROUNDS round(s) of the lock part"
[[ $SECURE == 0 ]] || plan+=", $SECURE_ROUNDS round(s) of the security part"
[[ $OPS == 0 ]] || plan+=", $OPS_ROUNDS round(s) of the operations part"
[[ $MIXED == 0 ]] || plan+=", $MIXED_ROUNDS round(s) of the mixed workload"
[[ $RSS_RUN == 0 ]] || plan+=", then a ${RSS_DURATION} s memory run per product"
[[ $RSS_RUN != only ]] || plan="only the memory run, ${RSS_DURATION} s per product"
[[ $WATCH != only ]] || plan="only the watch part"
[[ $LOCK != only ]] || plan="only the lock part, $LOCK_ROUNDS round(s)"
[[ $SECURE != only ]] || plan="only the security part, $SECURE_ROUNDS round(s)"
[[ $OPS != only ]] || plan="only the operations part, $OPS_ROUNDS round(s)"
[[ $MIXED != only ]] || plan="only the mixed workload, $MIXED_ROUNDS round(s)"
log "$plan; about $(((est + failover_est + watch_est + lock_est + secure_est + ops_est + mixed_est + rss_est) / 60 + 1)) min; work dir $work"
for ((round = 1; round <= ROUNDS; round++)); do
  for nodes in $NODES; do
    for load in $LOADS; do
      for product in $TARGETS; do
        group "$round" "$product" "$nodes" "$load"
      done
    done
  done
done

if [[ $FAILOVER == 1 ]]; then
  for ((trial = 1; trial <= FAILOVER_TRIALS; trial++)); do
    for product in $TARGETS; do
      failover "$trial" "$product"
    done
  done
fi

if [[ $WATCH != 0 ]]; then
  for nodes in $WATCH_NODES; do
    for product in $TARGETS; do
      watch_latency "$product" "$nodes"
    done
    if ((WATCH_IDLE > 0)); then
      for product in $TARGETS; do
        watch_latency "$product" "$nodes" idle
      done
    fi
  done
  for ((round = 1; round <= WATCH_ROUNDS; round++)); do
    for beside in none reading stalled idle; do
      for product in $TARGETS; do
        watch_cell "$round" "$product" "$beside"
      done
    done
  done
fi

if [[ $LOCK != 0 ]]; then
  for ((round = 1; round <= LOCK_ROUNDS; round++)); do
    for nodes in $LOCK_NODES; do
      for product in $TARGETS; do
        lock_group "$round" "$product" "$nodes"
      done
    done
  done
fi

if [[ $SECURE != 0 ]]; then
  secure_material
  {
    echo "secure_token_bytes_hs256=$(tr -d '\n' <"$SEC/hs256.token" | wc -c)"
    echo "secure_token_bytes_es256=$(tr -d '\n' <"$SEC/es256.token" | wc -c)"
    echo "openssl=$(openssl version | awk '{print $1, $2}')"
  } >>"$work/machine.txt"
  for ((round = 1; round <= SECURE_ROUNDS; round++)); do
    for nodes in $SECURE_NODES; do
      for product in $TARGETS; do
        for config in $SECURE_CONFIGS; do
          # etcd's client auth is not JWT over HTTP: it runs the configurations without one.
          [[ $product == palisade || $config == plain || $config == tls ]] || continue
          secure_group "$round" "$product" "$nodes" "$config"
        done
      done
    done
  done
fi

if [[ $OPS != 0 ]]; then
  for ((round = 1; round <= OPS_ROUNDS; round++)); do
    for product in $TARGETS; do
      ops_group "$round" "$product"
    done
  done
fi

if [[ $MIXED != 0 ]]; then
  for ((round = 1; round <= MIXED_ROUNDS; round++)); do
    for nodes in $MIXED_NODES; do
      for conns in $MIXED_CONNS; do
        for product in $TARGETS; do
          mixed_cell "$round" "$product" "$nodes" "$conns"
        done
      done
    done
  done
fi

if [[ $RSS_RUN != 0 ]]; then
  for product in $TARGETS; do
    rss_run "$product"
  done
fi

python3 "$here/bench.py" report "$work" "$OUT"
log "wrote $OUT"
