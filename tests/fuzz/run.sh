#!/usr/bin/env bash
# Fuzzes the client API from api/openapi.yaml with schemathesis (`make fuzz`, part of
# `make test`): one `palisade serve` on free loopback ports with a temp data dir, then
# schemathesis with the checks not_a_server_error, status_code_conformance,
# response_schema_conformance and positive_data_acceptance (tests/fuzz/schemathesis.toml
# says which refusals of valid data the spec documents). The server is stopped and the
# data removed on exit, failure included.
#
# Streams and long-polls: a watch never ends while it is live and a long-poll waits up to
# its timeout (30 s by default), while schemathesis reads every reply whole; hooks.py starts
# every watch below the compaction floor (raised to $floor below), so its stream is one
# `compacted` message and ends, gives every long-poll a timeout of at most 50 ms, and every
# lock acquire and campaign a `wait` of at most 50 ms. An election's observe stream never
# ends at all, so it is left out here. Live streams are checked against the spec by
# tests/it/openapi_sync.rs.
#
# Positive data only: with negative data, hypothesis under CPython 3.11.7 (the Python of
# this project's machines) fails about every other run with "SystemError: AST constructor
# recursion depth mismatch" while describing a strategy, an interpreter bug and not a
# finding. Refusals of invalid input are covered by tests/it/openapi_sync.rs.
#
# Knobs: FUZZ_MAX_TIME (seconds for the whole run, default 60: the fuzzing phase repeats
# until it is spent), FUZZ_EXAMPLES (examples per operation and round, default 20),
# FUZZ_SEED (replay a run: its seed is printed), PALISADE_BIN (default: the dev build).
# `run.sh --install` only installs schemathesis (into the target dir) and exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
version=4.32.5
venv=$target/fuzz-venv
bin=${PALISADE_BIN:-$target/debug/palisade}
examples=${FUZZ_EXAMPLES:-20}
max_time=${FUZZ_MAX_TIME:-60}
seed_keys=20
seed_leases=10
# The compaction floor before fuzzing: every fuzzed watch starts below it (hooks.py), so its
# stream is one `compacted` message and ends instead of going on live.
floor=5

if [[ ! -x $venv/bin/schemathesis ]] || [[ $("$venv/bin/schemathesis" --version 2>/dev/null) != *" $version" ]]; then
  echo "fuzz: installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
[[ ${1:-} != --install ]] || exit 0
[[ -n ${PALISADE_BIN:-} ]] || cargo build --quiet --bin palisade

work=$(mktemp -d /tmp/palisade-fuzz.XXXXXX)
pid=
cleanup() {
  if [[ -n $pid ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

read -r client peer < <("$venv/bin/python" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
url=http://127.0.0.1:$client
"$bin" serve --data-dir "$work/data" --listen-client "127.0.0.1:$client" --listen-peer "127.0.0.1:$peer" \
  --log-level warn >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log"; echo "fuzz: the server died"; exit 1; }
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || { cat "$work/server.log"; echo "fuzz: the server never got ready"; exit 1; }
# Revisions 1..seed_keys exist from here on (tests/fuzz/hooks.py folds larger ones into them);
# those below the floor are compacted at once (reading them is 410, a documented reply).
for i in $(seq 1 $seed_keys); do
  curl -fsS -X PUT "$url/v1/kv/fuzz/seed/$i" -d '{"value":"seed"}' >/dev/null
done
curl -fsS -X POST "$url/v1/maintenance/compact" -d "{\"revision\":$floor}" >/dev/null
# Leases 1..seed_leases exist (until the fuzzer revokes them); hooks.py folds lease ids
# into 1..2 x seed_leases, so about half name one.
for i in $(seq 1 $seed_leases); do
  curl -fsS -X POST "$url/v1/leases" -d "{\"ttl\":\"1h\",\"id\":$i}" >/dev/null
done

echo "fuzz: schemathesis $version against $url (up to $examples examples per operation and phase)"
start=$(date +%s)
status=0
# Run from target/fuzz-run, where schemathesis keeps its crash cache (`st replay ID` there).
mkdir -p "$target/fuzz-run"
(cd "$target/fuzz-run" && PALISADE_FUZZ_REVISION=$seed_keys PALISADE_FUZZ_LEASES=$seed_leases PALISADE_FUZZ_FLOOR=$floor SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$root/tests/fuzz" \
  "$venv/bin/schemathesis" --config-file "$root/tests/fuzz/schemathesis.toml" run "$root/api/openapi.yaml" \
  --url "$url" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,positive_data_acceptance \
  --phases examples,coverage,fuzzing \
  --mode positive \
  --max-examples "$examples" \
  --max-time "$max_time" \
  --exclude-path '/v1/elections/{name}/observe' \
  --workers 2 \
  --generation-database none \
  ${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
  --no-color) || status=$?
echo "fuzz: $(( $(date +%s) - start )) s"
if ! kill -0 "$pid" 2>/dev/null; then
  cat "$work/server.log"
  echo "fuzz: the server died during the run"
  exit 1
fi
if grep -qiE 'panicked|internal error' "$work/server.log"; then
  grep -iE 'panicked|internal error' "$work/server.log" | head -20
  echo "fuzz: the server logged a panic or an internal error"
  exit 1
fi
exit $status
