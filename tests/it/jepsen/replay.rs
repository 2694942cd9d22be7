//! Seeds and replays for fault runs: where a run's seed comes from, the command that runs
//! the same schedule again, and a guard that prints both when a test fails anywhere.

/// The seed of a run: `PALISADE_SEED`, else `PALISADE_SOAK_SEED` (which `make soak`
/// sets), else `default`. An empty variable counts as unset.
pub fn seed_or(default: u64) -> u64 {
    for var in ["PALISADE_SEED", "PALISADE_SOAK_SEED"] {
        if let Ok(s) = std::env::var(var) {
            let s = s.trim();
            if !s.is_empty() {
                return s.parse().unwrap_or_else(|_| panic!("{var}={s:?} is not a u64"));
            }
        }
    }
    default
}

/// How long a soak runs: `PALISADE_SOAK_SECS`, else `default` seconds.
pub fn soak_secs(default: u64) -> u64 {
    match std::env::var("PALISADE_SOAK_SECS") {
        Ok(s) if !s.trim().is_empty() => {
            s.trim().parse().unwrap_or_else(|_| panic!("PALISADE_SOAK_SECS={s:?} is not a number"))
        }
        _ => default,
    }
}

/// The command that runs test `name` of module `binary` (of the `it` test binary) again with `seed`; soak
/// tests are ignored by default and run in release.
pub fn replay_command(binary: &str, name: &str, seed: u64, soak: bool) -> String {
    if soak {
        let secs = std::env::var("PALISADE_SOAK_SECS").unwrap_or_else(|_| "60".into());
        format!(
            "PALISADE_SEED={seed} PALISADE_SOAK_SECS={secs} cargo test --release --test it {binary}::{name} -- --exact --ignored --nocapture"
        )
    } else {
        format!("PALISADE_SEED={seed} cargo test --test it {binary}::{name} -- --exact --nocapture")
    }
}

/// Prints the seed and the replay command if the test panics anywhere while this guard
/// lives (a violation, a node that does not restart, a convergence timeout).
pub struct ReplayHint {
    pub binary: &'static str,
    pub name: &'static str,
    pub seed: u64,
    pub soak: bool,
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n[{}] {} FAILED with seed {}; replay: {}\n",
                self.binary,
                self.name,
                self.seed,
                replay_command(self.binary, self.name, self.seed, self.soak)
            );
        }
    }
}
