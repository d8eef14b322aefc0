//! Which webhook targets the head calls. A push config's URL comes from any client, so
//! without a check the head would POST (with the config's credentials) to its own
//! loopback services, the private network or a cloud metadata endpoint
//! (169.254.169.254). Unless the operator allows private targets
//! (`--allow-private-webhooks`), such addresses are refused twice: when the config is made
//! (literal addresses, `localhost`) and when a name is resolved for a delivery, so that a
//! name cannot be pointed at a private address after it was accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), unspecified, multicast, broadcast or reserved for documentation.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b); // 100.64.0.0/10
    let benchmarking = a == 198 && (18..20).contains(&b); // 198.18.0.0/15
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
        || reserved)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00; // fc00::/7
    let link_local = first & 0xffc0 == 0xfe80; // fe80::/10
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || documentation)
}

/// Why the host of a webhook URL is refused at config time, if it is: a literal private
/// address or `localhost`. Names are checked again at delivery by [`PublicOnly`].
pub fn refused_host(host: &str) -> Option<String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let private = match bare.parse::<IpAddr>() {
        Ok(ip) => !is_public(ip),
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    private.then(|| {
        format!(
            "push notification url host {host} is a loopback, private or link-local address; \
             the head calls only public webhooks unless its operator starts it with \
             --allow-private-webhooks"
        )
    })
}

/// A resolver that drops private addresses, so a delivery connects only to public ones.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let why = format!(
                    "{host} resolves only to loopback, private or link-local addresses \
                     ({all:?}); start the head with --allow-private-webhooks to call them"
                );
                return Err(why.into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
        ];
        for ip in private {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(!is_public(parsed), "{ip} counted as public");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1"] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert!(is_public(parsed), "{ip} counted as private");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_only_to_private_addresses_are_not_connected_to() {
        let name = "localhost".parse::<Name>().map_err(|e| e.to_string());
        let resolved = match name {
            Ok(name) => PublicOnly.resolve(name).await.map(|a| a.count()),
            Err(e) => panic!("{e}"),
        };
        let error = resolved.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("--allow-private-webhooks"), "{error}");
    }

    #[test]
    fn literal_private_hosts_and_localhost_are_refused_at_config_time() {
        for host in ["127.0.0.1", "[::1]", "localhost", "LOCALHOST.", "api.localhost", "10.0.0.7"] {
            assert!(refused_host(host).is_some(), "{host} accepted");
        }
        for host in ["example.com", "93.184.215.14", "[2606:4700:4700::1111]"] {
            assert!(refused_host(host).is_none(), "{host} refused");
        }
    }
}
