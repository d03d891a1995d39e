//! A realistic binary cache, generated: signed narinfos and zstd/xz-compressed NARs with a spread
//! of sizes and compressibility, laid out as `nix copy --to file://` lays it out.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_compression::tokio::write::{XzEncoder, ZstdEncoder};
use nixcache::nix::{base32, Compression, NarFile, NarInfo, SecretKey, Sha256Hash, StorePath};
use tokio::io::AsyncWriteExt;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub paths: usize,
    /// Approximate total uncompressed NAR bytes.
    pub total_bytes: u64,
}

pub const QUICK: Profile = Profile {
    name: "quick",
    paths: 150,
    total_bytes: 300 << 20,
};
pub const FULL: Profile = Profile {
    name: "full",
    paths: 400,
    total_bytes: 1 << 30,
};

/// One path of the data set.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Store path hash part.
    pub hash: String,
    /// NAR URL relative to the cache root.
    pub nar_url: String,
    pub file_size: u64,
}

pub struct Dataset {
    pub cache_dir: PathBuf,
    pub public_key: String,
    pub entries: Vec<Entry>,
}

/// Deterministic filler bytes (xorshift64*): fast, reproducible, and good enough to defeat
/// compression where wanted. Not for anything that needs real randomness.
struct Filler(u64);

impl Filler {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill_random(&mut self, out: &mut Vec<u8>, n: usize) {
        let end = out.len() + n;
        while out.len() < end {
            let v = self.next().to_le_bytes();
            let take = (end - out.len()).min(8);
            out.extend_from_slice(&v[..take]);
        }
    }

    /// Text-like, compressible bytes.
    fn fill_text(&mut self, out: &mut Vec<u8>, n: usize) {
        const WORDS: [&str; 12] = [
            "lib",
            "share",
            "bin",
            "nix",
            "store",
            "glibc",
            "gcc",
            "include",
            "doc",
            "man",
            "locale",
            "pkgconfig",
        ];
        let end = out.len() + n;
        while out.len() < end {
            let w = WORDS[(self.next() % WORDS.len() as u64) as usize];
            let take = (end - out.len()).min(w.len() + 1);
            out.extend_from_slice(&format!("{w}/").as_bytes()[..take]);
        }
    }
}

/// Sizes spread over four orders of magnitude, like a real closure: many small paths, a few large.
fn sizes(profile: Profile) -> Vec<u64> {
    let mut f = Filler(0x9E37_79B9_7F4A_7C15);
    let (lo, hi) = ((2u64 << 10) as f64, (48u64 << 20) as f64);
    let raw: Vec<f64> = (0..profile.paths)
        .map(|_| {
            let u = (f.next() % 1_000_000) as f64 / 1_000_000.0;
            // Log-uniform, skewed towards small sizes.
            (lo.ln() + u * u * (hi.ln() - lo.ln())).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    let scale = profile.total_bytes as f64 / sum;
    raw.iter().map(|s| ((s * scale) as u64).max(1024)).collect()
}

async fn compress(data: &[u8], c: Compression) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2);
    match c {
        Compression::Zstd => {
            let mut e = ZstdEncoder::new(&mut out);
            e.write_all(data).await?;
            e.shutdown().await?;
        }
        Compression::Xz => {
            let mut e = XzEncoder::new(&mut out);
            e.write_all(data).await?;
            e.shutdown().await?;
        }
        _ => anyhow::bail!("unsupported compression {c}"),
    }
    Ok(out)
}

fn load(dir: &Path) -> anyhow::Result<Dataset> {
    let manifest = std::fs::read_to_string(dir.join("manifest")).context("manifest")?;
    let entries = manifest
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some(Entry {
                hash: p.next()?.into(),
                nar_url: p.next()?.into(),
                file_size: p.next()?.parse().ok()?,
            })
        })
        .collect();
    Ok(Dataset {
        cache_dir: dir.join("cache"),
        public_key: std::fs::read_to_string(dir.join("public.key"))?
            .trim()
            .to_string(),
        entries,
    })
}

/// The data set of `profile` under `root`, generated on first use and reused afterwards.
pub async fn ensure(root: &Path, profile: Profile) -> anyhow::Result<Dataset> {
    std::fs::create_dir_all(root)?;
    // Absolute: nginx resolves relative roots against its own prefix.
    let dir = std::fs::canonicalize(root)?.join(profile.name);
    if dir.join("manifest").exists() {
        return load(&dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    std::fs::create_dir_all(cache.join("nar"))?;
    std::fs::write(
        cache.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )?;
    let key = SecretKey::generate("bench-upstream-1")?;
    let mut manifest = String::new();
    let mut filler = Filler(0xD1B5_4A32_D192_ED03);
    let mut bases: Vec<String> = Vec::new();
    let sizes = sizes(profile);
    eprintln!(
        "generating {} paths, {} MiB of NARs in {}",
        sizes.len(),
        sizes.iter().sum::<u64>() >> 20,
        dir.display()
    );
    for (i, size) in sizes.iter().enumerate() {
        let mut contents = Vec::with_capacity(*size as usize);
        // Half compressible text, half incompressible bytes, in 64 KiB stretches.
        while (contents.len() as u64) < *size {
            let n = ((*size as usize) - contents.len()).min(64 << 10);
            if filler.next().is_multiple_of(2) {
                filler.fill_text(&mut contents, n)
            } else {
                filler.fill_random(&mut contents, n)
            }
        }
        let nar = nixcache::nix::nar::regular_file(&contents);
        let compression = if *size < (256 << 10) && i % 2 == 0 {
            Compression::Xz
        } else {
            Compression::Zstd
        };
        let file = compress(&nar, compression).await?;
        let file_hash = Sha256Hash::digest(&file);
        let nar_file = NarFile {
            hash: file_hash,
            compression,
        };
        let digest = Sha256Hash::digest(format!("bench-path-{}-{i}", profile.name).as_bytes());
        let hash = base32::encode(&digest.0[..20]);
        let store_path = StorePath::parse(&format!("/nix/store/{hash}-bench-{i}"))?;
        let mut refs: Vec<String> = (0..(filler.next() % 4) as usize)
            .filter(|_| !bases.is_empty())
            .map(|_| bases[(filler.next() % bases.len() as u64) as usize].clone())
            .collect();
        refs.sort();
        refs.dedup();
        let mut info = NarInfo {
            store_path: store_path.clone(),
            url: nar_file.url(),
            compression: Some(compression),
            file_hash: Some(file_hash),
            file_size: Some(file.len() as u64),
            nar_hash: Sha256Hash::digest(&nar),
            nar_size: nar.len() as u64,
            references: refs,
            deriver: None,
            sigs: Vec::new(),
            ca: None,
            extra: Vec::new(),
        };
        info.sign(&key);
        std::fs::write(cache.join(nar_file.url()), &file)?;
        std::fs::write(cache.join(format!("{hash}.narinfo")), info.to_text())?;
        manifest.push_str(&format!("{hash} {} {}\n", nar_file.url(), file.len()));
        bases.push(store_path.base_name());
    }
    std::fs::write(dir.join("public.key"), key.public_key().to_string())?;
    std::fs::write(dir.join("manifest"), manifest)?;
    load(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixcache::nix::PublicKey;

    #[tokio::test]
    async fn generated_cache_is_signed_and_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tiny = Profile {
            name: "tiny",
            paths: 12,
            total_bytes: 2 << 20,
        };
        let data = ensure(dir.path(), tiny).await.expect("generate");
        assert_eq!(data.entries.len(), 12);
        let key = PublicKey::parse(&data.public_key).expect("key");
        let mut sizes = Vec::new();
        for e in &data.entries {
            let text = std::fs::read_to_string(data.cache_dir.join(format!("{}.narinfo", e.hash)))
                .expect("narinfo");
            let info = NarInfo::parse(&text).expect("parses");
            assert!(
                info.verify(std::slice::from_ref(&key)),
                "{}",
                info.store_path
            );
            assert_eq!(info.url, e.nar_url);
            let file = std::fs::read(data.cache_dir.join(&e.nar_url)).expect("nar");
            assert_eq!(Some(Sha256Hash::digest(&file)), info.file_hash);
            assert_eq!(Some(file.len() as u64), info.file_size);
            sizes.push(info.nar_size);
        }
        sizes.sort();
        assert!(sizes[11] > 8 * sizes[0], "sizes are not spread: {sizes:?}");
        // A second call reuses what is there.
        let again = ensure(dir.path(), tiny).await.expect("reuse");
        assert_eq!(again.public_key, data.public_key);
    }
}
