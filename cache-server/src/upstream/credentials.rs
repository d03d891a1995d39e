//! An upstream's credentials: the `Authorization` header its requests carry, read from a file
//! and read again whenever the file changes (a rotated Kubernetes Secret is a new file behind the
//! same name), so a new token applies without a restart. The header is marked sensitive, and the
//! transport sends it to the upstream's own origin only (reqwest drops it from redirects to
//! other hosts).

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use reqwest::header::HeaderValue;
use url::Url;

use crate::config::UpstreamCredentials;

pub struct Credentials {
    source: UpstreamCredentials,
    /// The upstream's host, which a netrc entry must name.
    host: String,
    /// The header as last read, with the file's modification time and length then.
    read: Mutex<Option<(FileStamp, Option<HeaderValue>)>>,
}

type FileStamp = (Option<SystemTime>, u64);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The source names files only; what was read from them is not shown.
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(source: UpstreamCredentials, upstream: &Url) -> Self {
        Self {
            source,
            host: upstream.host_str().unwrap_or_default().to_string(),
            read: Mutex::new(None),
        }
    }

    fn path(&self) -> &Path {
        match &self.source {
            UpstreamCredentials::BearerTokenFile(p)
            | UpstreamCredentials::BasicAuthFile(p)
            | UpstreamCredentials::NetrcFile(p) => p,
        }
    }

    /// The `Authorization` value (none: a netrc file without an entry for this host), read again
    /// when the file has changed. The error names the file, never its contents.
    pub fn header(&self) -> Result<Option<HeaderValue>, String> {
        let path = self.path();
        let unreadable = |e: std::io::Error| format!("credentials {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let stamp = (meta.modified().ok(), meta.len());
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, header)) = read.as_ref() {
            if *at == stamp {
                return Ok(header.clone());
            }
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let header = self.header_from(&text)?;
        *read = Some((stamp, header.clone()));
        Ok(header)
    }

    fn header_from(&self, text: &str) -> Result<Option<HeaderValue>, String> {
        let path = self.path().display();
        let value = match &self.source {
            UpstreamCredentials::BearerTokenFile(_) => {
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!("credentials {path}: empty"));
                }
                format!("Bearer {token}")
            }
            UpstreamCredentials::BasicAuthFile(_) => {
                let pair = text.trim();
                if !pair.contains(':') {
                    return Err(format!("credentials {path}: not USER:PASSWORD"));
                }
                basic(pair)
            }
            UpstreamCredentials::NetrcFile(_) => {
                let netrc = netrc::Netrc::parse(text.as_bytes())
                    .map_err(|_| format!("credentials {path}: not a netrc file"))?;
                let entry = netrc
                    .hosts
                    .iter()
                    .find(|(machine, _)| machine.eq_ignore_ascii_case(&self.host))
                    .map(|(_, m)| m)
                    .or(netrc.default.as_ref());
                match entry {
                    Some(m) => basic(&format!(
                        "{}:{}",
                        m.login,
                        m.password.as_deref().unwrap_or_default()
                    )),
                    None => return Ok(None),
                }
            }
        };
        let mut header = HeaderValue::from_str(&value)
            .map_err(|_| format!("credentials {path}: not valid in a header"))?;
        header.set_sensitive(true);
        Ok(Some(header))
    }
}

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: UpstreamCredentials) -> Credentials {
        Credentials::new(
            source,
            &Url::parse("https://private.example:8443/cache").expect("url"),
        )
    }

    fn text(c: &Credentials) -> Option<String> {
        c.header()
            .expect("readable")
            .map(|h| h.to_str().expect("ascii").to_string())
    }

    #[test]
    fn a_bearer_token_is_read_again_when_its_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "first-token-0123456789\n").expect("write");
        let c = at(UpstreamCredentials::BearerTokenFile(file.clone()));
        assert_eq!(text(&c).as_deref(), Some("Bearer first-token-0123456789"));
        assert!(c.header().expect("header").expect("some").is_sensitive());
        // A rotated Secret: a new file in its place.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token-0123456789-longer\n").expect("write");
        std::fs::rename(&next, &file).expect("rename");
        assert_eq!(
            text(&c).as_deref(),
            Some("Bearer second-token-0123456789-longer")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("second-token"), "{shown}");
        std::fs::remove_file(&file).expect("rm");
        let e = c.header().expect_err("gone");
        assert!(e.contains("token") && !e.contains("second"), "{e}");
    }

    #[test]
    fn basic_auth_and_netrc_entries_by_host_or_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let basic_file = dir.path().join("basic");
        std::fs::write(&basic_file, "ci:s3cret\n").expect("write");
        let c = at(UpstreamCredentials::BasicAuthFile(basic_file));
        assert_eq!(text(&c).as_deref(), Some("Basic Y2k6czNjcmV0"));

        let netrc = dir.path().join("netrc");
        std::fs::write(
            &netrc,
            "machine other.example login o password x\n\
             machine private.example login nix password hunter2\n",
        )
        .expect("write");
        let c = at(UpstreamCredentials::NetrcFile(netrc.clone()));
        assert_eq!(text(&c), Some(basic("nix:hunter2")));
        std::fs::write(&netrc, "machine other.example login o password x\n").expect("write");
        assert_eq!(text(&c), None, "no entry for this host: nothing sent");
        std::fs::write(&netrc, "default login any password all\n").expect("write");
        assert_eq!(text(&c), Some(basic("any:all")));

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "no colon here").expect("write");
        let e = at(UpstreamCredentials::BasicAuthFile(bad))
            .header()
            .expect_err("not USER:PASSWORD");
        assert!(!e.contains("no colon"), "{e}");
    }
}
