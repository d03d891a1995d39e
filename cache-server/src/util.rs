//! Small helpers shared by several modules.

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random hex name for temporary files (24 hex digits).
pub fn unique_name() -> String {
    random_hex::<12>()
}

/// `N` random bytes in hex (the clock and process id stand in if the OS has no randomness).
pub fn random_hex<const N: usize>() -> String {
    let mut n = [0u8; N];
    // Randomness only makes the name unique; fall back to the clock if the OS has none.
    if getrandom::fill(&mut n).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let fallback = [
            (t.as_nanos() as u64).to_le_bytes(),
            u64::from(std::process::id()).to_le_bytes(),
        ]
        .concat();
        for (b, f) in n.iter_mut().zip(fallback.iter().cycle()) {
            *b = *f;
        }
    }
    n.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request id: a random per-process prefix and a counter (24 hex digits): unique enough to
/// find a request's lines in the logs of many replicas, and cheap on the hot path.
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| unique_name()[..8].to_string());
    format!("{prefix}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
