//! The one integration-test binary: every module below shares one build of the crate and
//! of the helpers (`support`, `sim`, `jepsen`), which keeps `make test` short on small
//! machines. Unit tests stay beside their code in `src/`.
//!
//! - `http_api`, `openapi_sync`, `cli`, `cli_lock`: the client API, its spec and the CLI
//!   (`cli_lock`: locks, elections and fencing, and the worked example in `examples/`).
//! - `cluster_sim`, `cluster_process`: replication in-process and with real processes.
//! - `checkers`, `fault_sim`, `fault_process`: the history checkers and the fault suites.
//! - `hostile_peer`, `disk_faults`: forged peer traffic; replaced, damaged and full disks.
//! - `peer_secret_process`: rotating the peer secret live, and a member left with the old one.
//! - `lease_process`: leases on real processes (followers, the failover rule across a
//!   leader kill, a partitioned old leader, a mass expiry).
//! - `lock_process`: locks and elections on real processes (contending holders through
//!   every node across leader kills, a holder paused past its lease, waiters whose lease
//!   ends, observers on every node), checked by `jepsen::fencing`.
//! - `watch_process`: watches on real processes (a leader killed, resumes on other nodes, a
//!   follower restarted, snapshot install and compaction, stalled watchers), checked by
//!   `jepsen::watch`.
//! - `backup_process`: `palisade snapshot save|status|restore` on real processes: a backup
//!   of a live cluster under a writer restored into a new cluster of three and of one, and
//!   damaged backups refused.
//! - `auth_process`: client auth on real processes (the CLI's tokens; lease ownership
//!   through followers).
//! - `tls_process`: TLS on both listeners, peers authenticated by mutual TLS, certificate
//!   rotation while serving, a would-be member with a foreign certificate, client certificates.
//! - `membership_process`: live membership changes on real processes (3 -> 5 -> 3 members
//!   under a recorded workload, `--join`, removing the leader, moving a member, bad input,
//!   `palisade member`).
//! - `ops_process`: a learner joining a store of 500,000 keys (memory bound, writes flowing).
//! - `hardening`: stuck and greedy clients against a real node (deadlines, caps, running
//!   out of file descriptors).

mod jepsen;
mod sim;
mod support;

mod auth_process;
mod backup_process;
mod checkers;
mod cli;
mod cli_lock;
mod cluster_process;
mod cluster_sim;
mod disk_faults;
mod fault_process;
mod fault_sim;
mod hardening;
mod hostile_peer;
mod http_api;
mod idempotency_process;
mod lease_process;
mod lock_process;
mod membership_process;
mod openapi_sync;
mod ops_process;
mod peer_secret_process;
mod tls_process;
mod watch_process;
