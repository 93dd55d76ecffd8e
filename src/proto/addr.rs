//! The SOCKS5 address field (RFC 1928 section 5): ATYP, then an IPv4 address, a length-prefixed
//! domain name or an IPv6 address, then a port in network order.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Parsed, ProtoError};

/// ATYP X'01': IPv4 address.
pub const ATYP_IPV4: u8 = 0x01;
/// ATYP X'03': domain name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// ATYP X'04': IPv6 address.
pub const ATYP_IPV6: u8 = 0x04;

/// A destination as a client names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// A literal IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A domain name (1 to 255 bytes) and port, resolved by the server.
    Domain(String, u16),
}

impl TargetAddr {
    /// The port part.
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    /// Bytes this address takes when encoded (ATYP through port).
    pub fn encoded_len(&self) -> usize {
        match self {
            TargetAddr::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            // Written as IPv4 by `encode_socket_addr`.
            TargetAddr::Ip(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some() => 1 + 4 + 2,
            TargetAddr::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            // Truncated to 255 bytes by `encode`.
            TargetAddr::Domain(d, _) => 1 + 1 + d.len().min(255) + 2,
        }
    }

    /// Appends ATYP, address and port. A domain longer than 255 bytes cannot be encoded; it is
    /// truncated to 255 bytes, which the parsers never produce.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TargetAddr::Ip(a) => encode_socket_addr(a, out),
            TargetAddr::Domain(d, port) => {
                let d = &d.as_bytes()[..d.len().min(255)];
                out.push(ATYP_DOMAIN);
                out.push(d.len() as u8);
                out.extend_from_slice(d);
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
    }

    /// Parses ATYP, address and port from the front of `buf`.
    pub fn parse(buf: &[u8]) -> Parsed<TargetAddr> {
        let Some(&atyp) = buf.first() else {
            return Ok(None);
        };
        match atyp {
            ATYP_IPV4 => {
                let Some(b) = buf.get(1..7) else {
                    return Ok(None);
                };
                let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let port = u16::from_be_bytes([b[4], b[5]]);
                Ok(Some((TargetAddr::Ip(SocketAddr::new(ip.into(), port)), 7)))
            }
            ATYP_IPV6 => {
                let Some(b) = buf.get(1..19) else {
                    return Ok(None);
                };
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[..16]);
                let port = u16::from_be_bytes([b[16], b[17]]);
                let ip = Ipv6Addr::from(octets);
                Ok(Some((TargetAddr::Ip(SocketAddr::new(ip.into(), port)), 19)))
            }
            ATYP_DOMAIN => {
                let Some(&len) = buf.get(1) else {
                    return Ok(None);
                };
                let len = len as usize;
                if len == 0 {
                    return Err(ProtoError::BadDomain);
                }
                let Some(b) = buf.get(2..2 + len + 2) else {
                    return Ok(None);
                };
                let name = domain(&b[..len])?;
                let port = u16::from_be_bytes([b[len], b[len + 1]]);
                Ok(Some((TargetAddr::Domain(name, port), 2 + len + 2)))
            }
            other => Err(ProtoError::UnknownAddressType(other)),
        }
    }
}

/// Appends a SOCKS5 address field for a socket address. An IPv4-mapped IPv6 address is written
/// as IPv4, which is what a client of a dual-stack listener expects to see.
pub fn encode_socket_addr(a: &SocketAddr, out: &mut Vec<u8>) {
    encode_ip(a.ip(), out);
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Appends an address type and an IP address (the layout SOCKS5 and SOCKS 6 share), an
/// IPv4-mapped IPv6 address as IPv4.
pub(super) fn encode_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&v4.octets());
            }
            None => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&ip.octets());
            }
        },
    }
}

/// Validates a domain name from the wire: printable ASCII without spaces or NULs. A name that
/// could never resolve is rejected here rather than handed to the resolver.
pub(crate) fn domain(bytes: &[u8]) -> Result<String, ProtoError> {
    if bytes.is_empty() || !bytes.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(ProtoError::BadDomain);
    }
    // Checked above: every byte is ASCII, so this cannot fail.
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| ProtoError::BadDomain)
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

impl From<SocketAddr> for TargetAddr {
    fn from(a: SocketAddr) -> Self {
        TargetAddr::Ip(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_roundtrip_and_partial() {
        let a = TargetAddr::Ip("1.2.3.4:80".parse().unwrap());
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(out, [0x01, 1, 2, 3, 4, 0x00, 0x50]);
        assert_eq!(out.len(), a.encoded_len());
        for n in 0..out.len() {
            assert_eq!(TargetAddr::parse(&out[..n]), Ok(None), "prefix {n}");
        }
        assert_eq!(TargetAddr::parse(&out), Ok(Some((a, 7))));
    }

    #[test]
    fn ipv6_roundtrip() {
        let a = TargetAddr::Ip("[2001:db8::1]:443".parse().unwrap());
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(out[0], 0x04);
        assert_eq!(out.len(), 19);
        assert_eq!(TargetAddr::parse(&out), Ok(Some((a, 19))));
    }

    #[test]
    fn domain_roundtrip_and_errors() {
        let a = TargetAddr::Domain("example.com".into(), 8080);
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(&out[..2], &[0x03, 11]);
        assert_eq!(TargetAddr::parse(&out), Ok(Some((a, 15))));
        assert_eq!(
            TargetAddr::parse(&[0x03, 0, 0, 80]),
            Err(ProtoError::BadDomain)
        );
        assert_eq!(
            TargetAddr::parse(&[0x03, 2, b'a', 0, 0, 80]),
            Err(ProtoError::BadDomain)
        );
        assert_eq!(
            TargetAddr::parse(&[0x05, 0, 0]),
            Err(ProtoError::UnknownAddressType(0x05))
        );
    }

    #[test]
    fn mapped_v6_is_written_as_v4() {
        let mut out = Vec::new();
        encode_socket_addr(&"[::ffff:10.0.0.1]:5".parse().unwrap(), &mut out);
        assert_eq!(out, [0x01, 10, 0, 0, 1, 0, 5]);
    }

    /// Regression: `encoded_len` said 19 for an IPv4-mapped IPv6 address (written as 7 bytes)
    /// and counted the untruncated length of an over-long domain.
    #[test]
    fn encoded_len_matches_encode() {
        let long = "a".repeat(300);
        for a in [
            TargetAddr::Ip("[::ffff:10.0.0.1]:5".parse().unwrap()),
            TargetAddr::Ip("[::1]:5".parse().unwrap()),
            TargetAddr::Ip("10.0.0.1:5".parse().unwrap()),
            TargetAddr::Domain("x".into(), 1),
            TargetAddr::Domain(long, 1),
        ] {
            let mut out = Vec::new();
            a.encode(&mut out);
            assert_eq!(out.len(), a.encoded_len(), "{a}");
        }
    }

    #[test]
    fn port_display_and_from() {
        let a = TargetAddr::from("[::1]:8080".parse::<SocketAddr>().unwrap());
        assert_eq!((a.port(), a.to_string()), (8080, "[::1]:8080".to_string()));
        let d = TargetAddr::Domain("example.com".into(), 443);
        assert_eq!(
            (d.port(), d.to_string()),
            (443, "example.com:443".to_string())
        );
    }

    #[test]
    fn domain_partial_and_validation() {
        let enc = b"\x03\x0bexample.com\x01\xbb";
        for n in 0..enc.len() {
            assert_eq!(TargetAddr::parse(&enc[..n]), Ok(None), "prefix {n}");
        }
        // Control bytes, spaces, DEL and non-ASCII are rejected; the whole field is awaited.
        for bad in [b' ', 0x7f, 0x80, 0xff, b'\n'] {
            let buf = [0x03, 3, b'a', bad, b'b', 0, 80];
            assert_eq!(TargetAddr::parse(&buf[..6]), Ok(None));
            assert_eq!(TargetAddr::parse(&buf), Err(ProtoError::BadDomain));
        }
        let mut max = vec![0x03, 255];
        max.extend(std::iter::repeat(b'z').take(255));
        max.extend_from_slice(&[0, 80]);
        assert_eq!(TargetAddr::parse(&max).unwrap().unwrap().1, 259);
    }
}
