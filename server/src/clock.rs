//! The wall clock, for timestamps that leave the process (message `ts`, events).

/// Microseconds since the Unix epoch (wall clock; message `ts` fields). 0 if the clock
/// reads before 1970.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
