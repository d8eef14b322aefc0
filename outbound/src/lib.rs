//! Which addresses the cluster's outbound HTTP calls may reach.
//!
//! Anyone who can make a push config or register an agent picks a URL that the head or a
//! worker then calls. Unchecked, that is a way into the operator's network: loopback
//! services, the private network, a cloud metadata endpoint (169.254.169.254). One policy
//! ([`Policy`]) covers every such call, and checks the address that is connected to, not the
//! text of the URL:
//!
//! - URLs are read by the parser the HTTP client connects with (`url`, the WHATWG URL
//!   standard), so each spelling of an address (`2130706433`, `0x7f.1`, `127.1`,
//!   `0177.0.0.1`, a trailing dot) is checked as the address it is; [`Policy::check`] runs
//!   before every request, because the client connects to a literal address without
//!   resolving it;
//! - names are resolved by the policy's resolver, which hands the client only the addresses
//!   that pass: the address checked is the address connected to, on every connection, so a
//!   name cannot be pointed at a private address after it was accepted;
//! - addresses that embed an IPv4 address (IPv4-mapped and -compatible IPv6, NAT64, 6to4)
//!   are judged by the embedded one;
//! - clients from [`Policy::client`] follow no redirects and use no proxy (a proxy would
//!   resolve names itself, around the check).
//!
//! Operators who mean their cluster to call private addresses say so with a flag
//! ([`Policy::any_address`]); refusals name that flag.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Which targets outbound calls of one kind may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    allow_private: bool,
    /// The setting that allows private targets, named in every refusal (e.g. "the head's
    /// --allow-private-webhooks").
    allowed_by: &'static str,
}

/// A URL the policy will not call, with why and what allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Policy {
    /// Any address if `allow_private` (the operator's flag, named by `allowed_by`), else
    /// public addresses only.
    pub fn new(allow_private: bool, allowed_by: &'static str) -> Self {
        Self { allow_private, allowed_by }
    }

    /// Public addresses only; `allowed_by` names the setting that would allow private ones.
    pub fn public_only(allowed_by: &'static str) -> Self {
        Self { allow_private: false, allowed_by }
    }

    /// Any address (the operator allowed private targets).
    pub fn any_address(allowed_by: &'static str) -> Self {
        Self { allow_private: true, allowed_by }
    }

    /// Whether loopback, private and link-local targets are allowed.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// `url` parsed as the HTTP client will read it, if it is `http(s)` and its host is not
    /// a refused address (or `localhost`). Names pass here and are checked when resolved.
    pub fn check(&self, url: &str) -> Result<Url, Refused> {
        let parsed = Url::parse(url).map_err(|e| Refused(format!("url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused(format!("url {url:?} is not http:// or https://")));
        }
        if self.allow_private {
            return Ok(parsed);
        }
        let refused = match parsed.host() {
            Some(Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => is_localhost(name),
            None => return Err(Refused(format!("url {url:?} has no host"))),
        };
        if refused {
            let host = parsed.host_str().unwrap_or_default();
            return Err(Refused(format!(
                "url {url:?}: host {host} is a loopback, private or link-local address; only \
                 public addresses are called unless {} allows private ones",
                self.allowed_by
            )));
        }
        Ok(parsed)
    }

    /// A client builder that holds to the policy: no redirects, no proxy, and (unless
    /// private targets are allowed) names resolved to public addresses only. Callers still
    /// [`check`](Self::check) each URL: literal addresses are connected to unresolved.
    pub fn client(&self) -> reqwest::ClientBuilder {
        let builder =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy();
        if self.allow_private {
            builder
        } else {
            builder.dns_resolver(Arc::new(PublicOnly { allowed_by: self.allowed_by }))
        }
    }
}

/// `localhost` and its subdomains (RFC 6761: they resolve to loopback, whatever DNS says).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), unspecified, multicast, broadcast, reserved or for documentation. IPv6
/// addresses that carry an IPv4 address are judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b); // 100.64.0.0/10
    let benchmarking = a == 198 && (18..20).contains(&b); // 198.18.0.0/15
    let protocol_assignments = a == 192 && b == 0 && c == 0; // 192.0.0.0/24
    let reserved = a >= 240 || a == 0; // 240.0.0.0/4 and "this network"
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || shared
        || benchmarking
        || protocol_assignments
        || reserved)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), SIIT
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:AABB:CCDD::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let zeros = |range: std::ops::Range<usize>| s[range].iter().all(|&x| x == 0);
    if zeros(0..5) && (s[5] == 0xffff || s[5] == 0) && !(s[5] == 0 && s[6] == 0) {
        return Some(low); // mapped or compatible (`::` and `::1` are IPv6's own)
    }
    if zeros(0..4) && s[4] == 0xffff && s[5] == 0 {
        return Some(low); // SIIT
    }
    if s[0] == 0x64 && s[1] == 0xff9b && zeros(2..6) {
        return Some(low); // NAT64's well-known prefix
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d)); // 6to4
    }
    None
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let unique_local = s[0] & 0xfe00 == 0xfc00; // fc00::/7
    let link_local = s[0] & 0xffc0 == 0xfe80; // fe80::/10
    let site_local = s[0] & 0xffc0 == 0xfec0; // fec0::/10, deprecated but routed by some
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8; // 2001:db8::/32
    let teredo = s[0] == 0x2001 && s[1] == 0; // 2001::/32: tunnels to an IPv4 host
    let nat64_local = s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1; // 64:ff9b:1::/48
    let discard = s[0] == 0x100 && s[1..4].iter().all(|&x| x == 0); // 100::/64
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || site_local
        || documentation
        || teredo
        || nat64_local
        || discard)
}

/// A resolver that drops refused addresses, so the client connects only to public ones.
#[derive(Debug, Clone, Copy)]
struct PublicOnly {
    allowed_by: &'static str,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed_by = self.allowed_by;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let why = format!(
                    "{host} resolves only to loopback, private or link-local addresses \
                     ({all:?}); {allowed_by} allows calling them"
                );
                return Err(why.into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// An error and its sources, `: `-separated, each cause once: reqwest's and the TLS stack's
/// own messages leave the cause (connection refused, a certificate, DNS, no root
/// certificates) to their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// A short, printable summary of what a remote server said, for an error message: at most
/// `max_chars` characters, control characters (a terminal's escapes, line breaks that forge
/// log lines) replaced by spaces, runs of white space folded.
pub fn summary(said: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in said.chars() {
        let c = if c.is_control() || c.is_whitespace() { ' ' } else { c };
        if c == ' ' && (space || out.is_empty()) {
            continue;
        }
        space = c == ' ';
        if count == max_chars {
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: &str = "--allow-private-test";

    #[test]
    fn every_spelling_of_a_private_address_is_refused() {
        let policy = Policy::public_only(FLAG);
        for url in [
            "http://127.0.0.1:18080/",
            "http://2130706433:18080/",
            "http://127.1:18080/",
            "http://0x7f.1:18080/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.0.0.1./",
            "http://169.254.169.254./x",
            "http://169.254.169.254/latest/meta-data/",
            "http://0/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[::ffff:0:127.0.0.1]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "https://localhost/hook",
            "https://LOCALHOST./hook",
            "http://api.localhost:9/",
        ] {
            let refused = policy.check(url);
            assert!(refused.is_err(), "{url} accepted");
            let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(FLAG), "{url}: {message}");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        let policy = Policy::public_only(FLAG);
        for url in [
            "https://example.com/hook",
            "http://93.184.215.14/",
            "http://[2606:4700:4700::1111]/",
            "http://172.32.0.1/",
            "http://[64:ff9b::808:808]/",
            "http://[2002:808:808::]/",
        ] {
            assert!(policy.check(url).is_ok(), "{url} refused");
        }
        assert!(Policy::any_address(FLAG).check("http://127.0.0.1:9/").is_ok());
        for bad in ["ftp://example.com/", "file:///etc/passwd", "not a url"] {
            assert!(Policy::any_address(FLAG).check(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn addresses_are_classified() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "2001::1",
            "2001:db8::1",
            "64:ff9b:1::1",
            "::ffff:169.254.169.254",
        ];
        for ip in private {
            let parsed: Result<IpAddr, _> = ip.parse();
            assert!(parsed.is_ok_and(|ip| !is_public(ip)), "{ip} counted as public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"] {
            let parsed: Result<IpAddr, _> = ip.parse();
            assert!(parsed.is_ok_and(is_public), "{ip} counted as private");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_only_to_private_addresses_are_not_connected_to() {
        let resolver = PublicOnly { allowed_by: FLAG };
        let resolved = match "localhost".parse::<Name>() {
            Ok(name) => resolver.resolve(name).await.map(|a| a.count()),
            Err(e) => panic!("{e}"),
        };
        let error = resolved.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(FLAG), "{error}");
    }

    #[test]
    fn summaries_are_short_and_printable() {
        assert_eq!(summary("  a\r\nb\x1b[31m  c ", 100), "a b [31m c");
        assert_eq!(summary(&"x".repeat(50), 10), format!("{}…", "x".repeat(10)));
        assert_eq!(summary("", 10), "");
    }
}
