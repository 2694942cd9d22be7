//! The wall clock, for what must carry real time: the leader's stamp on a proposal and the
//! time a peer request was signed. The state machine never reads it (time reaches apply
//! only inside a proposal).

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
