//! Writing NARs (Nix ARchives) of a single regular file, as `nix-store --dump` writes them: used to
//! make test and benchmark data. Reading NARs is not needed: nixcache treats them as opaque bytes
//! checked by hash.

/// The NAR of one regular, non-executable file with these contents.
pub fn regular_file(contents: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }
    let mut out = Vec::with_capacity(contents.len() + 128);
    for part in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        string(&mut out, part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::Sha256Hash;

    #[test]
    fn matches_nix() {
        // `echo dependency > f; nix-store --dump f | sha256sum`, as NarHash of the test
        // fixture's `dep` path (testdata/dep.narinfo) shows it.
        let nar = regular_file(b"dependency\n");
        assert_eq!(nar.len(), 128);
        assert_eq!(
            Sha256Hash::digest(&nar).to_string(),
            "sha256:13w19wwvpfqyfq1fixzqjphj7dil4vlv9gada02f9kpl04qnmkw4"
        );
    }
}
