//! Where an upstream can send nixcache. A narinfo's `URL` is not covered by its signatures and a
//! redirect is the upstream's to choose, so neither may turn nixcache into a client of some other
//! host on the upstream's behalf:
//! - a NAR URL must resolve under the upstream's base URL: same scheme, host and port, and a path
//!   under the base path ([`under_base`]);
//! - redirects stay at the upstream's origin, unless the upstream is configured to allow others
//!   (real caches send NARs to a CDN or to presigned S3 URLs). Even then they never lead to
//!   loopback, link-local (cloud metadata included) or unspecified addresses — neither as a
//!   literal nor through a name that resolves there — unless the upstream itself is on such an
//!   address, which is then where its NARs are expected to be.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use prometheus::IntCounter;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};
use reqwest::Url;
use url::Host;

/// Redirects followed for one request, as Nix does.
const MAX_REDIRECTS: usize = 10;

/// Whether `url` is under `base`: same scheme, host and port, and its path inside the base path.
pub fn under_base(base: &Url, url: &Url) -> bool {
    let dir = base.path().trim_end_matches('/');
    url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
        && url
            .path()
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Addresses nothing outside this host or link should send nixcache to: loopback, link-local
/// (169.254.169.254, the cloud metadata service, is one), unspecified, and the metadata services
/// that live elsewhere (AWS's IPv6 `fd00:ec2::254`, Alibaba's `100.100.100.200`).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback()
        || v4.is_link_local()
        || v4.octets()[0] == 0
        || v4.is_broadcast()
        || v4 == Ipv4Addr::new(100, 100, 100, 200)
}

/// Whether a URL's host is internal as written: an internal address, or `localhost`.
pub fn host_is_internal(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(v4)) => is_internal(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => is_internal(IpAddr::V6(v6)),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    }
}

/// The redirect policy of one upstream's client. Refusals are counted in `refused`.
pub fn redirect_policy(base: &Url, cross_origin: bool, refused: IntCounter) -> Policy {
    let origin = base.origin();
    let upstream_internal = host_is_internal(base);
    Policy::custom(move |attempt: Attempt<'_>| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let to = attempt.url();
        if to.origin() == origin {
            return attempt.follow();
        }
        let host = to.host_str().unwrap_or_default().to_string();
        if !cross_origin {
            refused.inc();
            return attempt.error(format!(
                "redirect to another origin ({host}) refused (the upstream option \
                 cross-origin-redirects allows it)"
            ));
        }
        if !upstream_internal && host_is_internal(to) {
            refused.inc();
            return attempt.error(format!("redirect to an internal address ({host}) refused"));
        }
        attempt.follow()
    })
}

/// Whether an upstream's client needs [`GuardedResolver`]: it follows redirects to other hosts,
/// and is not itself on an internal address.
pub fn needs_guarded_resolver(base: &Url, cross_origin: bool) -> bool {
    cross_origin && !host_is_internal(base)
}

/// Name resolution for an upstream that may redirect elsewhere: names other than the upstream's
/// own never resolve to internal addresses (so a redirect to a name pointing at 127.0.0.1 or the
/// metadata service fails to connect).
pub struct GuardedResolver {
    own_host: String,
}

impl GuardedResolver {
    pub fn new(base: &Url) -> Self {
        Self {
            own_host: base.host_str().unwrap_or_default().to_ascii_lowercase(),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let own = host == self.own_host;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| own || !is_internal(a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(
                    format!("{host} resolves to no address an upstream may send to").into(),
                );
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn nar_urls_must_stay_under_the_base() {
        let base = url("https://cache.example/sub/");
        let join = |rel: &str| base.join(rel).expect("join");
        assert!(under_base(&base, &join("nar/x.nar.xz")));
        assert!(under_base(&base, &join("nar/x.nar.xz?sig=abc")));
        assert!(under_base(&base, &join("/sub/nar/x.nar")));
        assert!(under_base(
            &base,
            &join("https://cache.example:443/sub/nar/x")
        ));
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "//127.0.0.1:8080/admin",
            "https://cache.example.evil/sub/nar/x",
            "https://cache.example:8443/sub/nar/x",
            "http://cache.example/sub/nar/x",
            "../nar/x",
            "/subway/nar/x",
            "/sub",
            "%2e%2e/nar/x",
            "/sub/%2e%2e/other",
        ] {
            assert!(!under_base(&base, &join(bad)), "{bad}");
        }
        // A base without a trailing slash means the same directory.
        assert!(under_base(&url("http://h/sub"), &url("http://h/sub/nar/x")));
        assert!(under_base(&url("http://h"), &url("http://h/nar/x")));
    }

    #[test]
    fn internal_addresses() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = internal.parse().expect("ip");
            assert!(is_internal(ip), "{internal}");
        }
        for external in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db8::1",
            "fd00::1",
        ] {
            let ip: IpAddr = external.parse().expect("ip");
            assert!(!is_internal(ip), "{external}");
        }
        assert!(host_is_internal(&url("http://localhost:8080/")));
        assert!(host_is_internal(&url("http://a.localhost/")));
        assert!(host_is_internal(&url("http://[::1]:80/")));
        assert!(!host_is_internal(&url("http://cdn.example/")));
    }

    #[tokio::test]
    async fn the_guarded_resolver_keeps_internal_addresses_for_the_upstream_only() {
        let r = GuardedResolver::new(&url("http://localhost:1/"));
        let own: Vec<_> = r
            .resolve("localhost".parse().expect("name"))
            .await
            .expect("the upstream's own name")
            .collect();
        assert!(own.iter().all(|a| a.ip().is_loopback()) && !own.is_empty());
        let other = GuardedResolver::new(&url("http://cache.example/"));
        assert!(other
            .resolve("localhost".parse().expect("name"))
            .await
            .is_err());
    }
}
