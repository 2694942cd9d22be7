# shellcheck shell=bash disable=SC2034 # TARGET_* are read by lib/harness.sh
# benches/palisade/target.sh: start/stop Palisade (1..3 members) on 127.0.0.1 for the
# shared harness in ../shared/bench. Sourced by lib/harness.sh in a per-target subshell.
#
# Knobs (environment):
#   PALISADE_BIN           the server binary (default: palisade from PATH; benches/run.sh
#                          puts target/release first on PATH)
#   PALISADE_CLIENT_PORTS  client ports, one per member (default "7379 17379 27379")
#   PALISADE_PEER_PORTS    peer ports, one per member   (default "7380 17380 27380")
#   PALISADE_TARGET        member wrk talks to: leader (default) | follower | 0..N-1
#   PALISADE_EXTRA_FLAGS   extra flags for every member

: "${PALISADE_BIN:=palisade}"
: "${PALISADE_CLIENT_PORTS:=7379 17379 27379}"
: "${PALISADE_PEER_PORTS:=7380 17380 27380}"
: "${PALISADE_TARGET:=leader}"
: "${PALISADE_EXTRA_FLAGS:=}"

bench_require "$PALISADE_BIN" curl python3 wrk
TARGET_DESC="palisade $("$PALISADE_BIN" --version | awk '{print $2}')"
PALISADE_URLS=()

target_start() {
  local nodes=$1 workdir=$2 i cluster=""
  PALISADE_URLS=()
  local -a cps pps
  read -r -a cps <<<"$PALISADE_CLIENT_PORTS"
  read -r -a pps <<<"$PALISADE_PEER_PORTS"
  ((nodes >= 1 && nodes <= ${#cps[@]} && nodes <= ${#pps[@]})) ||
    bench_die "palisade: nodes must be 1..${#cps[@]}"
  for ((i = 0; i < nodes; i++)); do
    bench_port_free "${cps[i]}"
    bench_port_free "${pps[i]}"
    cluster+="${cluster:+,}$((i + 1))=http://127.0.0.1:${pps[i]}"
  done
  for ((i = 0; i < nodes; i++)); do
    # shellcheck disable=SC2086 # PALISADE_EXTRA_FLAGS is a word list on purpose
    "$PALISADE_BIN" serve --node-id "$((i + 1))" --data-dir "$workdir/n$i" \
      --listen-client "127.0.0.1:${cps[i]}" --listen-peer "127.0.0.1:${pps[i]}" \
      --initial-cluster "$cluster" --log-level warn $PALISADE_EXTRA_FLAGS \
      >"$workdir/n$i.log" 2>&1 </dev/null &
    bench_track_pid "$!"
    PALISADE_URLS+=("http://127.0.0.1:${cps[i]}")
  done
}

target_ready() {
  local u pid leader="" lead_i=-1 fol_i=-1 i=0 st
  for pid in "${BENCH_PIDS[@]}"; do
    _bench_alive "$pid" || bench_die "palisade PID $pid exited during start-up (see the n*.log files; KEEP_DATA=1 keeps them)"
  done
  for u in "${PALISADE_URLS[@]}"; do
    curl -sf -m 2 "$u/readyz" >/dev/null || return 1
  done
  for u in "${PALISADE_URLS[@]}"; do
    st=$(curl -sf -m 2 "$u/v1/cluster" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["node_id"], d["leader"] or 0, sum(1 for m in d["members"] if m["client_url"]))') || return 1
    read -r -a st <<<"$st"
    [[ ${st[1]} != 0 ]] || return 1
    [[ ${st[2]} == "${#PALISADE_URLS[@]}" ]] || return 1 # client URLs published
    [[ -z $leader || $leader == "${st[1]}" ]] || return 1
    leader=${st[1]}
    if [[ ${st[0]} == "${st[1]}" ]]; then lead_i=$i; elif ((fol_i < 0)); then fol_i=$i; fi
    i=$((i + 1))
  done
  ((lead_i >= 0)) || return 1
  case $PALISADE_TARGET in
    leader) TARGET_URL=${PALISADE_URLS[lead_i]} ;;
    follower) ((fol_i >= 0)) || bench_die "PALISADE_TARGET=follower needs more than one member"
              TARGET_URL=${PALISADE_URLS[fol_i]} ;;
    *) TARGET_URL=${PALISADE_URLS[PALISADE_TARGET]} ;;
  esac
  TARGET_WATCH_URL=$TARGET_URL
  bench_log "palisade leader is node $((lead_i + 1)); wrk -> $TARGET_URL"
  return 0
}
