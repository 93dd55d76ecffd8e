//! Name resolution that never blocks a worker: getaddrinfo(3) (so /etc/hosts and nsswitch apply
//! as operators expect) runs on the runtime's blocking-thread pool, with a per-worker cap on
//! lookups in flight so a flood of names cannot spawn unbounded threads.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::sync::Semaphore;

/// Lookups a worker runs at once; more wait their turn (within the connect timeout).
pub const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// A worker's resolver.
pub struct Resolver {
    permits: Semaphore,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            permits: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }
}

impl Resolver {
    /// Resolves `host` to its addresses in the order getaddrinfo prefers (RFC 6724), then
    /// interleaved by family for Happy Eyeballs (RFC 8305 section 4).
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| io::Error::other("resolver closed"))?;
        // A name that does not resolve is "host unreachable" (X'04') to the client, whatever
        // getaddrinfo's own error code was.
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("resolving {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "name has no addresses",
            ));
        }
        Ok(interleave(addrs))
    }
}

/// Removes duplicates and alternates address families, starting with the family of the first
/// (most preferred) address: RFC 8305 section 4 with a First Address Family Count of 1.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !seen.contains(&a) {
            seen.push(a);
        }
    }
    let Some(first) = seen.first() else {
        return seen;
    };
    let first_v6 = first.is_ipv6();
    let (mut a, mut b): (Vec<_>, Vec<_>) = seen.into_iter().partition(|x| x.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(a.len() + b.len());
    a.reverse();
    b.reverse();
    loop {
        match (a.pop(), b.pop()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    #[test]
    fn interleaves_families_from_the_first() {
        let got = interleave(vec![
            s("[::1]:1"),
            s("[::2]:1"),
            s("[::3]:1"),
            s("1.1.1.1:1"),
            s("[::1]:1"),
        ]);
        assert_eq!(
            got,
            vec![s("[::1]:1"), s("1.1.1.1:1"), s("[::2]:1"), s("[::3]:1")]
        );
        let got = interleave(vec![s("1.1.1.1:1"), s("2.2.2.2:1"), s("[::1]:1")]);
        assert_eq!(got, vec![s("1.1.1.1:1"), s("[::1]:1"), s("2.2.2.2:1")]);
        assert!(interleave(vec![]).is_empty());
    }
}
