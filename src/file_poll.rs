//! [`poll_files`]: the one loop that re-reads configuration files while a node runs (TLS
//! certificates, JWT keys, the peer secret): every period, off the async workers (reading
//! and parsing files blocks), for as long as the value it serves is alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `check` on `target` every `every` in a blocking task, until the last `Arc` of
/// `target` is dropped. The first check comes one period after the call. Needs a Tokio
/// runtime.
pub fn poll_files<T, F>(target: &Arc<T>, every: Duration, check: F)
where
    T: Send + Sync + 'static,
    F: Fn(&Arc<T>) + Send + Sync + 'static,
{
    let weak: Weak<T> = Arc::downgrade(target);
    let check = Arc::new(check);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(target) = weak.upgrade() else { return };
            let check = check.clone();
            if tokio::task::spawn_blocking(move || check(&target)).await.is_err() {
                return;
            }
        }
    });
}
