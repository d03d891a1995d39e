//! The signing key file: loaded, or generated on first start and written readable by its owner only.

use std::path::Path;

use super::{invalid, ConfigError, SigningKeySource};
use crate::keys::SecretKey;

/// Loads the signing key, generating and saving one (mode 0600) on first start.
pub fn load_signing_key(source: &SigningKeySource) -> Result<(SecretKey, bool), ConfigError> {
    match source {
        SigningKeySource::File(path) => Ok((read_key(path)?, false)),
        SigningKeySource::Generated { path, name } => {
            if path.exists() {
                return Ok((read_key(path)?, false));
            }
            let key = SecretKey::generate(name).map_err(|e| invalid("signing key", e))?;
            write_secret(path, &key.to_file_contents())
                .map_err(|e| invalid("signing key", format!("{}: {e}", path.display())))?;
            Ok((key, true))
        }
    }
}

pub(super) fn read_key(path: &Path) -> Result<SecretKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("signing-key-file", format!("{}: {e}", path.display())))?;
    SecretKey::parse(&text)
        .map_err(|e| invalid("signing-key-file", format!("{}: {e}", path.display())))
}

/// Writes a secret to a new file readable only by its owner; never replaces an existing file.
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}
