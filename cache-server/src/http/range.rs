//! The `Range` request header, single ranges only (RFC 9110 §14.2). Anything else — several ranges,
//! other units, bad syntax — is ignored and the whole object sent, as the RFC allows.

use crate::storage::ByteRange;

pub fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if start.trim().is_empty() {
        return Some(ByteRange::Suffix(num(end)?));
    }
    let start = num(start)?;
    if end.trim().is_empty() {
        return Some(ByteRange::From { start, end: None });
    }
    let end = num(end)?;
    (end >= start).then_some(ByteRange::From {
        start,
        end: Some(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_ranges() {
        assert_eq!(
            parse("bytes=0-99"),
            Some(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            parse("bytes=100-"),
            Some(ByteRange::From {
                start: 100,
                end: None
            })
        );
        assert_eq!(parse("bytes=-5"), Some(ByteRange::Suffix(5)));
    }

    #[test]
    fn ignores_what_it_does_not_support() {
        for h in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse(h), None, "{h}");
        }
    }
}
