# Palisade: make targets. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
SEED ?=
DURATION ?= 300

.PHONY: build test verify fix run cluster image chart bench bench-rss bench-lease bench-watch bench-lock bench-secure bench-ops bench-mixed soak fuzz clean

build:
	$(CARGO) build --release

# Read-only gate: formatting, lints, layering, docs, every test.
test verify:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@# The state machine stays pure: no runtime, consensus, HTTP or clock in src/store/.
	@if grep -rnE '(tokio|openraft|axum|reqwest)::|SystemTime|Instant|std::(fs|net|thread)' src/store/ --include='*.rs' \
		| grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then \
		echo 'src/store/ must stay pure: no runtime, consensus, HTTP, clock or I/O (see src/store/mod.rs)'; exit 1; fi
	@# The WAL stores opaque bytes and needs no runtime: no openraft, tokio or HTTP in src/wal/.
	@if grep -rnE '(tokio|openraft|axum|reqwest)::' src/wal/ --include='*.rs' \
		| grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then \
		echo 'src/wal/ must stay free of openraft and the async runtime (see src/wal/mod.rs)'; exit 1; fi
	@# openraft stays behind src/raft/ (Replica is the door), axum inside src/http/.
	@if grep -rnE 'openraft::|use openraft' src/ --include='*.rs' | grep -v '^src/raft/' \
		| grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then \
		echo 'only src/raft/ may use openraft (see src/raft/mod.rs)'; exit 1; fi
	@if grep -rnE 'axum::|use axum' src/ --include='*.rs' | grep -v '^src/http/' \
		| grep -vE '^[^:]+:[0-9]+:[[:space:]]*//'; then \
		echo 'only src/http/ may use axum (see src/http/mod.rs)'; exit 1; fi
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet
	$(CARGO) build --bin palisade
	./tests/fuzz/run.sh
	./tests/chart/run.sh
	$(CARGO) test --all-targets -- --test-threads=2
	@# Heavy (both cores for about two minutes): alone, so the others' timing is their own.
	$(CARGO) test --test it -- --ignored --exact ops_process::a_learner_joins_a_store_of_500k_keys_with_bounded_memory

# Schemathesis against one local node, from api/openapi.yaml (about a minute; part of
# `make test`). Installs schemathesis into target/fuzz-venv. FUZZ_MAX_TIME=300 for longer.
fuzz:
	./tests/fuzz/run.sh

# The Helm chart's checks alone (part of `make test`; about 2 minutes): helm lint, templates
# with several value sets validated against Kubernetes 1.29 and the newest schemas, the
# golden file, bad values refused, and the chart-to-process test. Installs helm and
# kubernetes-validate into target/chart-tools. GOLDEN=update rewrites the golden file.
chart:
	./tests/chart/run.sh

# The container image (Dockerfile) as the chart's default image, with docker, podman or
# buildah, whichever is there and working. IMAGE= names another.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE ?= ghcr.io/palisade-db/palisade:$(VERSION)
image:
	@if docker info >/dev/null 2>&1; then docker build -t $(IMAGE) .; \
	elif command -v podman >/dev/null; then podman build -t $(IMAGE) .; \
	elif command -v buildah >/dev/null; then buildah bud -t $(IMAGE) .; \
	else echo 'make image: no image builder here (a running docker daemon, podman or buildah)'; exit 1; fi

fix:
	$(CARGO) fmt --all
	$(CARGO) clippy --all-targets --fix --allow-dirty --allow-staged -- -D warnings

# One node with the defaults (data in ./palisade-data).
run:
	$(CARGO) run --release -- serve

# Three local nodes (client ports 7379, 17379, 27379; peer ports 7380, 17380, 27380);
# Ctrl-C stops them all. Data and logs go under ./palisade-cluster/.
cluster: build
	./scripts/cluster.sh

# Palisade and etcd side by side under the same wrk load; writes BENCHMARKS.md. Builds
# Palisade and installs wrk and etcd when missing (apt-get, as root). Runs the load cells
# (put, get, get-serializable, txn, keepalive, and put under keepalives; ~40 min), the
# lease failover trials (~3 min), the watch part (~7 min), the lock part (~10 min), the
# security part (~21 min), the operations part (~8 min), the mixed workload (~10 min) and
# then the 10-minute memory run of each product (~21 min): about 122 minutes in all. Knobs
# in benches/run.sh, e.g. `DURATION=2 ROUNDS=1 RSS_RUN=0 FAILOVER_TRIALS=2 WATCH_ROUNDS=1
# LOCK_ROUNDS=1 LOCK_SECS=2 SECURE_ROUNDS=1 MIXED_ROUNDS=1 make bench` for a quick look.
bench:
	./benches/run.sh

# Only the memory run (put at 64 connections for 10 min against 3 nodes of each product,
# RSS of every member every 10 s; ~21 min); writes BENCHMARKS-rss.md unless OUT is set.
bench-rss:
	RSS_RUN=only ./benches/run.sh

# Only the lease parts (keepalive load, put under keepalives, failover; ~15 min); writes
# BENCHMARKS-lease.md unless OUT is set.
bench-lease:
	LOADS=keepalive RSS_RUN=0 WATCH=0 LOCK=0 SECURE=0 OPS=0 MIXED=0 ./benches/run.sh

# Only the watch part (~7 min): put->event latency on 1 and 3 nodes (watcher on the leader
# and on a follower, and on the leader beside 10,000 idle watchers on that node), the memory
# of 10,000 idle watchers, and put beside them and beside a stalled watcher; writes
# BENCHMARKS-watch.md unless OUT is set. Knobs: WATCH_N,
# WATCH_ROUNDS, WATCH_IDLE, WATCH_CONNS, WATCH_NODES, DURATION (see benches/run.sh).
# `python3 benches/bench.py splice BENCHMARKS-watch.md BENCHMARKS.md` then puts its
# Watches section into BENCHMARKS.md.
bench-watch:
	WATCH=only ./benches/run.sh

# Only the lock part (~10 min): uncontended acquire+release pairs/s at 1, 16 and 64
# clients (each its own lock name and lease) and the contended hand-off latency (8 clients
# on one name: release sent -> next holder's grant read), on 1 and 3 nodes of each
# product, through benches/lock.py; writes BENCHMARKS-lock.md unless OUT is set. Knobs:
# LOCK_ROUNDS, LOCK_SECS, LOCK_CONNS, LOCK_NODES, LOCK_WAITERS, LOCK_HOLD_MS (see
# benches/run.sh), e.g. `LOCK_ROUNDS=1 LOCK_SECS=3 make bench-lock` for a quick look.
# `python3 benches/bench.py splice BENCHMARKS-lock.md BENCHMARKS.md Locks` then puts its
# Locks section into BENCHMARKS.md.
bench-lock:
	LOCK=only ./benches/run.sh

# Only the security part (~21 min): get and put at 64 connections on 1 and 3 nodes, each
# configuration on fresh servers: plain, TLS on the client listener (wrk over https), JWT
# client auth with an HS256 secret, with an ES256 public key, and TLS + ES256 (etcd: plain
# and TLS), with the throughput cost of each against plain; certificate and keys from
# openssl (installed with apt-get when missing, as root), tokens from `palisade auth
# token`. Writes BENCHMARKS-secure.md unless OUT is set. Knobs: SECURE_ROUNDS,
# SECURE_NODES, SECURE_CONNS, SECURE_CONFIGS, SECURE_LOADS, DURATION, WARMUP (see
# benches/run.sh), e.g. `SECURE_ROUNDS=1 DURATION=4 SECURE_NODES=1 make bench-secure` for
# a quick look. `python3 benches/bench.py splice BENCHMARKS-secure.md BENCHMARKS.md
# Security` then puts its Security section into BENCHMARKS.md.
bench-secure:
	SECURE=only ./benches/run.sh

# Only the operations part (~8 min): on a 3-node cluster of each product holding 500,000
# keys, backups timed (`palisade snapshot save` against `etcdctl snapshot save`, installed
# with apt-get when missing, as root), a 4th member added and timed until it has applied
# everything (its peak RSS and the leader's), and put at 16 connections alone and while
# a member is removed and another added. Writes BENCHMARKS-ops.md unless OUT is set.
# Knobs: OPS_ROUNDS, OPS_KEYS, OPS_SNAPSHOTS, OPS_CONNS, OPS_SECS (see benches/run.sh),
# e.g. `OPS_KEYS=50000 make bench-ops` for a quick look. `python3 benches/bench.py splice
# BENCHMARKS-ops.md BENCHMARKS.md Operations` then puts its Operations section into
# BENCHMARKS.md.
bench-ops:
	OPS=only ./benches/run.sh

# Only the mixed workload (~10 min): on 1 and 3 nodes of each product, each cell on fresh
# servers holding the 10,000 keys (in 1,000 groups) and 10,000 leases, with 1,000 watchers
# on the leader (one recursive watch per group, each its own connection, every event read
# and counted), wrk at 16 and 64 connections sending 70% linearizable gets, 20% puts, 5%
# transactions (2 compares, 2 puts) and 5% lease keepalives, picked at random
# (benches/<product>/mixed.lua); req/s against etcd's, p50/p99 over the mix, memory, CPU
# and the events the watchers received. Writes BENCHMARKS-mixed.md unless OUT is set.
# Knobs: MIXED_ROUNDS, MIXED_NODES, MIXED_CONNS, MIXED_WATCHERS, DURATION, WARMUP, KEYS,
# LEASES (see benches/run.sh), e.g. `MIXED_ROUNDS=1 DURATION=3 MIXED_NODES=1 make
# bench-mixed` for a quick look. `python3 benches/bench.py splice BENCHMARKS-mixed.md
# BENCHMARKS.md "Mixed workload"` then puts its Mixed workload section into BENCHMARKS.md.
bench-mixed:
	MIXED=only ./benches/run.sh

# Long seeded fault-injection runs (every nemesis, in-process and real processes); a
# failure prints its seed, and SEED= replays the same schedule.
soak:
	$(if $(SEED),PALISADE_SEED=$(SEED) PALISADE_SOAK_SEED=$(SEED),) PALISADE_SOAK_SECS=$(DURATION) \
		$(CARGO) test --release --test it soak -- --ignored --nocapture --test-threads=1

clean:
	$(CARGO) clean
