//! Nix's base32: the alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no e, o, u, t), least
//! significant digit last. Encoding and decoding come from the `nix-base32` crate; this module adds
//! the length checks that crate leaves to its callers (it indexes out of bounds on some lengths).

/// The 32 characters of Nix's base32 alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Whether `c` is a digit of Nix's base32.
pub fn is_digit(c: u8) -> bool {
    ALPHABET.contains(&c)
}

/// Length of the Nix base32 encoding of `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Encodes bytes in Nix base32.
pub fn encode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    nix_base32::to_nix_base32(bytes)
}

/// Decodes a Nix base32 string that must encode exactly `len` bytes. `None` for a wrong length, a
/// character outside the alphabet, or non-zero padding bits.
pub fn decode_exact(s: &str, len: usize) -> Option<Vec<u8>> {
    if len == 0 || s.len() != encoded_len(len) || !s.bytes().all(is_digit) {
        return None;
    }
    let bytes = nix_base32::from_nix_base32(s)?;
    (bytes.len() == len).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_nix() {
        assert_eq!(encoded_len(20), 32); // store path hash part
        assert_eq!(encoded_len(32), 52); // sha256
    }

    #[test]
    fn round_trips_a_real_file_hash() {
        let s = "1pnl92y7rrkm7kn2ra0d98fc4c2kz383gk396jwinbx04ldmkdzb";
        let bytes = decode_exact(s, 32).expect("valid");
        assert_eq!(encode(&bytes), s);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for s in [
            "",
            "a",
            "e",
            "0000000000000000000000000000000e",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert!(decode_exact(s, 32).is_none(), "{s}");
            assert!(decode_exact(s, 20).is_none(), "{s}");
        }
        // 52 digits carry 260 bits; a leading digit above 1 sets bits past 256.
        assert!(decode_exact("2000000000000000000000000000000000000000000000000000", 32).is_none());
        assert!(decode_exact("1000000000000000000000000000000000000000000000000000", 32).is_some());
    }

    #[test]
    fn known_vector() {
        // sha256 of the empty string, as `nix hash to-base32` prints it
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        assert_eq!(
            encode(&bytes),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }
}
