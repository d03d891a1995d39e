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

/// Whether `path` is a store path of `store_dir` as Nix writes them: `<dir>/<hash>-<name>`, a
/// 32-character nix32 hash and a name of the characters Nix allows.
pub fn is_store_path(store_dir: &str, path: &str) -> bool {
    let Some(base) = path
        .strip_prefix(store_dir)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return false;
    };
    let Some((hash, name)) = base.split_at_checked(32) else {
        return false;
    };
    let name = name.strip_prefix('-').unwrap_or_default();
    hash.bytes()
        .all(|c| b"0123456789abcdfghijklmnpqrsvwxyz".contains(&c))
        && !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths() {
        let ok = "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-hello-2.12";
        assert!(is_store_path("/nix/store", ok));
        for bad in [
            "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx",
            "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-",
            "/nix/store/e404n8pan3pvrll7pci95yg83idrvkdx-x",
            "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-a/b",
            "/nix/storex/p404n8pan3pvrll7pci95yg83idrvkdx-a",
            "/other/p404n8pan3pvrll7pci95yg83idrvkdx-a",
        ] {
            assert!(!is_store_path("/nix/store", bad), "{bad}");
        }
    }
}
