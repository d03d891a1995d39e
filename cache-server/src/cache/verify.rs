//! Verification of a NAR file while it streams in: the SHA-256 and size of the file as downloaded
//! and, by decompressing on the fly, of the NAR inside it. Nothing is committed unless every
//! check that the narinfo allows passes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::write::{
    BrotliDecoder, BzDecoder, GzipDecoder, Lz4Decoder, XzDecoder, ZstdDecoder,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::nix::{Compression, NarInfo, Sha256Hash};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("file size {got} does not match FileSize {want}")]
    FileSize { got: u64, want: u64 },
    #[error("file hash {got} does not match FileHash {want}")]
    FileHash { got: Sha256Hash, want: Sha256Hash },
    #[error("NAR size {got} does not match NarSize {want}")]
    NarSize { got: u64, want: u64 },
    #[error("NAR hash {got} does not match NarHash {want}")]
    NarHash { got: Sha256Hash, want: Sha256Hash },
    #[error("NAR is larger than its NarSize {0}")]
    TooLarge(u64),
    #[error("cannot decompress: {0}")]
    Decompress(String),
    #[error("{0} NARs cannot be decompressed here to verify their NarHash")]
    Unverifiable(Compression),
}

/// Whether nixcache can decompress this compression to check NarHash: every one Nix writes but
/// lzip, for which no maintained Rust decoder exists.
pub fn can_decompress(c: Compression) -> bool {
    !matches!(c, Compression::Lzip)
}

/// Whether a NAR described by this narinfo can be verified before it is committed. Verified means
/// against NarHash, the field signatures cover: FileHash is not signed, so a file that matches
/// it proves nothing a client will accept, and a NAR nixcache cannot decompress is refused.
pub fn verifiable(info: &NarInfo) -> Result<(), VerifyError> {
    if can_decompress(info.compression()) {
        Ok(())
    } else {
        Err(VerifyError::Unverifiable(info.compression()))
    }
}

/// Hashes and counts what is written to it; fails once more than `limit` bytes arrive.
struct HashSink {
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.size += buf.len() as u64;
        if self.size > self.limit {
            return Poll::Ready(Err(io::Error::other("NAR larger than NarSize")));
        }
        self.hasher.update(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

enum NarSink {
    Plain(HashSink),
    Xz(XzDecoder<HashSink>),
    Zstd(ZstdDecoder<HashSink>),
    Bzip2(BzDecoder<HashSink>),
    Gzip(GzipDecoder<HashSink>),
    Brotli(BrotliDecoder<HashSink>),
    Lz4(Lz4Decoder<HashSink>),
}

impl NarSink {
    fn new(c: Compression, limit: u64) -> Option<Self> {
        let sink = HashSink {
            hasher: Sha256::new(),
            size: 0,
            limit,
        };
        Some(match c {
            Compression::None => Self::Plain(sink),
            Compression::Xz => Self::Xz(XzDecoder::new(sink)),
            Compression::Zstd => Self::Zstd(ZstdDecoder::new(sink)),
            Compression::Bzip2 => Self::Bzip2(BzDecoder::new(sink)),
            Compression::Gzip => Self::Gzip(GzipDecoder::new(sink)),
            Compression::Brotli => Self::Brotli(BrotliDecoder::new(sink)),
            Compression::Lz4 => Self::Lz4(Lz4Decoder::new(sink)),
            Compression::Lzip => return None,
        })
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(data).await,
            Self::Xz(s) => s.write_all(data).await,
            Self::Zstd(s) => s.write_all(data).await,
            Self::Bzip2(s) => s.write_all(data).await,
            Self::Gzip(s) => s.write_all(data).await,
            Self::Brotli(s) => s.write_all(data).await,
            Self::Lz4(s) => s.write_all(data).await,
        }
    }

    async fn finish(self) -> io::Result<HashSink> {
        Ok(match self {
            Self::Plain(s) => s,
            Self::Xz(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
            Self::Zstd(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
            Self::Bzip2(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
            Self::Gzip(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
            Self::Brotli(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
            Self::Lz4(mut s) => {
                s.shutdown().await?;
                s.into_inner()
            }
        })
    }
}

/// Checks a NAR file as it streams in against what its narinfo promises.
pub struct Verifier {
    file: Sha256,
    file_size: u64,
    nar: Option<NarSink>,
    want_file_hash: Option<Sha256Hash>,
    want_file_size: Option<u64>,
    want_nar_hash: Sha256Hash,
    want_nar_size: u64,
}

impl Verifier {
    pub fn new(info: &NarInfo) -> Result<Self, VerifyError> {
        verifiable(info)?;
        // FileSize is only trusted alongside FileHash: without FileHash the file may legitimately
        // differ from the one FileSize was measured on (nixcache may hold another compression run).
        let want_file_size = info.file_hash.and(info.file_size);
        Ok(Self {
            file: Sha256::new(),
            file_size: 0,
            nar: NarSink::new(info.compression(), info.nar_size),
            want_file_hash: info.file_hash,
            want_file_size,
            want_nar_hash: info.nar_hash,
            want_nar_size: info.nar_size,
        })
    }

    /// The largest file that can be right: FileSize when known, else a bound from NarSize that
    /// no compressor exceeds on real data (compressed output of incompressible input grows by
    /// well under 1%).
    pub fn max_file_size(&self) -> u64 {
        self.want_file_size.unwrap_or(
            self.want_nar_size
                .saturating_add(self.want_nar_size / 8)
                .saturating_add(1 << 20),
        )
    }

    pub fn expected_file_size(&self) -> Option<u64> {
        self.want_file_size
    }

    pub async fn update(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        self.file.update(data);
        self.file_size += data.len() as u64;
        if self.file_size > self.max_file_size() {
            return Err(VerifyError::TooLarge(self.want_nar_size));
        }
        if let Some(nar) = &mut self.nar {
            nar.write(data)
                .await
                .map_err(|e| decompress_error(e, self.want_nar_size))?;
        }
        Ok(())
    }

    /// Final checks; returns the file size.
    pub async fn finish(self) -> Result<u64, VerifyError> {
        if let Some(want) = self.want_file_size {
            if self.file_size != want {
                return Err(VerifyError::FileSize {
                    got: self.file_size,
                    want,
                });
            }
        }
        if let Some(want) = self.want_file_hash {
            let got = Sha256Hash(self.file.finalize().into());
            if got != want {
                return Err(VerifyError::FileHash { got, want });
            }
        }
        if let Some(nar) = self.nar {
            let sink = nar
                .finish()
                .await
                .map_err(|e| decompress_error(e, self.want_nar_size))?;
            if sink.size != self.want_nar_size {
                return Err(VerifyError::NarSize {
                    got: sink.size,
                    want: self.want_nar_size,
                });
            }
            let got = Sha256Hash(sink.hasher.finalize().into());
            if got != self.want_nar_hash {
                return Err(VerifyError::NarHash {
                    got,
                    want: self.want_nar_hash,
                });
            }
        }
        Ok(self.file_size)
    }
}

fn decompress_error(e: io::Error, nar_size: u64) -> VerifyError {
    if e.to_string().contains("larger than NarSize") {
        VerifyError::TooLarge(nar_size)
    } else {
        VerifyError::Decompress(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NAR of one regular file, laid out as `nix-store --dump` writes it.
    fn sample() -> (Vec<u8>, NarInfo) {
        let nar = crate::nix::nar::regular_file(b"hello nixcache\n");
        let info = NarInfo::parse(&format!(
            "StorePath: /nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-x\nURL: nar/x.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            Sha256Hash::digest(&nar),
            nar.len()
        ))
        .expect("narinfo");
        (nar, info)
    }

    async fn run(v: &mut Verifier, data: &[u8]) -> Result<(), VerifyError> {
        for chunk in data.chunks(7) {
            v.update(chunk).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn accepts_the_right_bytes_and_rejects_others() {
        let (nar, info) = sample();
        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &nar).await.expect("update");
        assert_eq!(v.finish().await, Ok(nar.len() as u64));

        let mut bad = nar.clone();
        bad[60] ^= 1;
        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &bad).await.expect("update");
        assert!(matches!(v.finish().await, Err(VerifyError::NarHash { .. })));

        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &nar[..nar.len() - 8]).await.expect("update");
        assert!(matches!(v.finish().await, Err(VerifyError::NarSize { .. })));

        let mut v = Verifier::new(&info).expect("verifiable");
        let mut long = nar.clone();
        long.extend_from_slice(&[0; 8]);
        assert_eq!(
            run(&mut v, &long).await,
            Err(VerifyError::TooLarge(nar.len() as u64))
        );
    }

    #[tokio::test]
    async fn checks_file_hash_and_compressed_nar() {
        let (nar, mut info) = sample();
        let mut xz = Vec::new();
        {
            let mut enc = async_compression::tokio::write::XzEncoder::new(&mut xz);
            enc.write_all(&nar).await.expect("compress");
            enc.shutdown().await.expect("finish");
        }
        info.compression = Some(Compression::Xz);
        // Without FileHash: decompression proves the content.
        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &xz).await.expect("update");
        assert_eq!(v.finish().await, Ok(xz.len() as u64));
        // With FileHash and FileSize.
        info.file_hash = Some(Sha256Hash::digest(&xz));
        info.file_size = Some(xz.len() as u64);
        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &xz).await.expect("update");
        assert_eq!(v.finish().await, Ok(xz.len() as u64));
        // Truncated xz: fails on size (and could not decompress either).
        let mut v = Verifier::new(&info).expect("verifiable");
        run(&mut v, &xz[..xz.len() / 2]).await.expect("update");
        assert!(v.finish().await.is_err());
        // Garbage that is not xz at all.
        let mut v = Verifier::new(&info).expect("verifiable");
        let r = run(&mut v, &vec![7u8; xz.len()]).await;
        assert!(r.is_err() || v.finish().await.is_err());
    }

    async fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        use async_compression::tokio::write::{BrotliEncoder, Lz4Encoder};
        let mut out = Vec::new();
        match c {
            Compression::Brotli => {
                let mut e = BrotliEncoder::new(&mut out);
                e.write_all(data).await.expect("compress");
                e.shutdown().await.expect("finish");
            }
            Compression::Lz4 => {
                let mut e = Lz4Encoder::new(&mut out);
                e.write_all(data).await.expect("compress");
                e.shutdown().await.expect("finish");
            }
            other => panic!("no encoder here for {other}"),
        }
        out
    }

    #[tokio::test]
    async fn brotli_and_lz4_nars_are_checked_against_nar_hash() {
        let (nar, info) = sample();
        let mut wrong = nar.clone();
        wrong[60] ^= 1;
        for c in [Compression::Brotli, Compression::Lz4] {
            let file = compress(c, &nar).await;
            let mut info = info.clone();
            info.compression = Some(c);
            let mut v = Verifier::new(&info).expect("verifiable");
            run(&mut v, &file).await.expect("update");
            assert_eq!(v.finish().await, Ok(file.len() as u64), "{c}");
            // A file that matches its (unsigned) FileHash but holds another NAR is refused.
            let bad = compress(c, &wrong).await;
            info.file_hash = Some(Sha256Hash::digest(&bad));
            info.file_size = Some(bad.len() as u64);
            let mut v = Verifier::new(&info).expect("verifiable");
            run(&mut v, &bad).await.expect("update");
            assert!(
                matches!(v.finish().await, Err(VerifyError::NarHash { .. })),
                "{c}"
            );
        }
    }

    #[test]
    fn lzip_is_unverifiable_even_with_file_hash() {
        let (_, mut info) = sample();
        info.compression = Some(Compression::Lzip);
        assert_eq!(
            verifiable(&info),
            Err(VerifyError::Unverifiable(Compression::Lzip))
        );
        info.file_hash = Some(Sha256Hash::digest(b""));
        assert_eq!(
            verifiable(&info),
            Err(VerifyError::Unverifiable(Compression::Lzip))
        );
        for c in [Compression::Brotli, Compression::Lz4, Compression::Xz] {
            info.compression = Some(c);
            assert_eq!(verifiable(&info), Ok(()));
        }
    }
}
