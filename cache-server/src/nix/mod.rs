//! The Nix binary cache formats: pure types and functions, no I/O.
//!
//! Everything here follows Nix's own libstore (nar-info.cc, path-info.cc, local-keys.cc) so that
//! what nixcache writes is read by the real Nix client exactly as Nix itself would write it.

pub mod base32;
pub mod cache_info;
pub mod hash;
pub mod nar;
pub mod nar_file;
pub mod narinfo;
pub mod store_path;

pub use cache_info::CacheInfo;
pub use hash::Sha256Hash;
pub use nar_file::{Compression, NarFile};
pub use narinfo::NarInfo;
pub use nixcache_settings::keys as signing;
pub use signing::{PublicKey, SecretKey};
pub use store_path::{StoreHash, StorePath};
