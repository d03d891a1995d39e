//! Small helpers shared by several modules.

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random hex name for temporary files (24 hex digits).
pub fn unique_name() -> String {
    let mut n = [0u8; 12];
    // Randomness only makes the name unique; fall back to the clock if the OS has none.
    if getrandom::fill(&mut n).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        n[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
        n[8..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    n.iter().map(|b| format!("{b:02x}")).collect()
}
