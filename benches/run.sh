#!/usr/bin/env bash
# benches/run.sh: Palisade side by side with etcd under the shared wrk harness
# (../shared/bench), interleaved so machine drift spreads over both.
#
#   benches/run.sh                      # etcd:1 palisade:1 etcd:3 palisade:3, 3 interleaved rounds
#   SPECS="palisade:3" benches/run.sh   # just one
#   DURATION=5 ROUNDS=1 benches/run.sh  # quick look
# Needs wrk, etcd-server, curl, python3 (apt-get install -y wrk etcd-server curl).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$root/../shared/bench}
[[ -x $bench/run-target.sh ]] || { echo "no bench harness at $bench (set BENCH_DIR)" >&2; exit 2; }
[[ -x $root/target/release/palisade ]] || (cd "$root" && cargo build --release)
export PATH="$root/target/release:$PATH"
export BENCH_TARGETS_PATH="$here${BENCH_TARGETS_PATH:+:$BENCH_TARGETS_PATH}"
: "${ROUNDS:=3}"
: "${SPECS:=etcd:1 palisade:1 etcd:3 palisade:3}"
specs=()
for ((r = 0; r < ROUNDS; r++)); do
  for s in $SPECS; do specs+=("$s"); done
done
REPEATS=${REPEATS:-1} exec "$bench/run-target.sh" "${specs[@]}"
