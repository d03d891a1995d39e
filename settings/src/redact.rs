//! URLs for messages and logs, without the credentials they may carry.

use url::Url;

/// A URL for logs and errors: without user name, password or query string, any of which may
/// carry credentials (a token is often given as the user name).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() {
        let _ = u.set_username("REDACTED");
    }
    if u.password().is_some() {
        let _ = u.set_password(Some("REDACTED"));
    }
    if u.query().is_some() {
        u.set_query(Some("REDACTED"));
    }
    u.to_string()
}

/// A database or Redis URL for messages: without its password.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable database URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        let u = Url::parse("https://tok:pw@cache.example/x?sig=1").expect("url");
        assert_eq!(
            redact(&u),
            "https://REDACTED:REDACTED@cache.example/x?REDACTED"
        );
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:REDACTED@db:5432/x"
        );
        assert_eq!(redact_url("not a url"), "(unparsable database URL)");
    }
}
