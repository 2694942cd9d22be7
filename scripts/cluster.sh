#!/usr/bin/env bash
# Starts a 3-node Palisade cluster on 127.0.0.1 and stops it on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release/palisade
dir=./palisade-cluster
mkdir -p "$dir"
cluster="1=http://127.0.0.1:7380,2=http://127.0.0.1:17380,3=http://127.0.0.1:27380"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  p=$(( (i - 1) * 10000 ))
  "$bin" serve --node-id "$i" --data-dir "$dir/n$i" \
    --listen-client "127.0.0.1:$((7379 + p))" --listen-peer "127.0.0.1:$((7380 + p))" \
    --initial-cluster "$cluster" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
echo "3 nodes: http://127.0.0.1:7379 http://127.0.0.1:17379 http://127.0.0.1:27379 (logs in $dir/); Ctrl-C stops them"
wait
