//! The store directory, as settings name it and paths are checked against.

/// Where Nix keeps store paths unless told otherwise.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// An absolute directory without empty, `.` or `..` components.
pub fn is_canonical_dir(dir: &str) -> bool {
    match dir.strip_prefix('/') {
        Some(rest) => rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".."),
        None => false,
    }
}
