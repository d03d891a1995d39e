//! Stored files read through memory maps: a hit's bytes go from the page cache to the socket
//! without first being copied into a buffer of ours. The only `unsafe` code of the server.
//!
//! Why mapping a stored file is sound here: storage and the local tier write every file to a
//! staging directory and `rename(2)` it into place once complete, and never write to it or
//! truncate it afterwards; the names are content hashes, so a file under a name never changes.
//! GC and eviction `unlink(2)` files, which leaves an existing mapping valid (the inode lives
//! until the last mapping goes). What is left is a file truncated underneath by something else
//! (a person editing the storage directory by hand): reading the lost pages would raise SIGBUS,
//! as it would for any process mapping files it does not own. The map is populated when made
//! (on the blocking pool), so serving it does not fault on a runtime thread.

#![allow(unsafe_code)]

use bytes::Bytes;

/// The whole of `file` (of `len` bytes), mapped read-only and populated, as shareable bytes.
pub fn map(file: &std::fs::File, len: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: stored files are immutable once renamed into place (see the module's docs); the
    // mapping is read-only and owned by the returned `Bytes`, which unmaps it when the last
    // slice of it is dropped.
    let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(file)? };
    Ok(Bytes::from_owner(map))
}
