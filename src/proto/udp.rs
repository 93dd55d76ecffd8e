//! The SOCKS5 UDP request header, RFC 1928 section 7: RSV (2), FRAG, ATYP, DST.ADDR, DST.PORT,
//! then DATA.

use std::net::SocketAddr;

use super::{Parsed, ProtoError, TargetAddr};

/// A parsed UDP header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    /// FRAG: 0 for a standalone datagram.
    pub frag: u8,
    /// Where the datagram goes (client to server) or came from (server to client).
    pub addr: TargetAddr,
}

/// Parses the header at the front of a datagram; the payload starts at the returned offset.
/// A datagram is complete or it is nothing, so "need more" means the datagram is truncated.
/// A non-zero FRAG is reported as [`ProtoError::Fragmented`]: this server does not reassemble.
pub fn parse_header(buf: &[u8]) -> Parsed<UdpHeader> {
    let Some(head) = buf.get(..3) else {
        return Ok(None);
    };
    if head[0] != 0 || head[1] != 0 {
        return Err(ProtoError::BadReserved(head[0] | head[1]));
    }
    let frag = head[2];
    if frag != 0 {
        return Err(ProtoError::Fragmented(frag));
    }
    match TargetAddr::parse(&buf[3..])? {
        None => Ok(None),
        Some((addr, n)) => Ok(Some((UdpHeader { frag, addr }, 3 + n))),
    }
}

/// Length of the header [`write_ip_header`] writes for `addr`: 10 for IPv4, 22 for IPv6.
pub fn ip_header_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 10,
        SocketAddr::V6(_) => 22,
    }
}

/// The longest header [`write_ip_header`] writes.
pub const MAX_IP_HEADER: usize = 22;

/// Writes a header with FRAG 0 naming `addr` at the start of `out`, which must hold
/// [`ip_header_len`] bytes, and returns its length. For the reply path, which receives a
/// datagram after [`MAX_IP_HEADER`] bytes of room and writes the header just before it,
/// without allocating.
pub fn write_ip_header(addr: &SocketAddr, out: &mut [u8]) -> usize {
    out[..3].fill(0);
    let n = match addr {
        SocketAddr::V4(a) => {
            out[3] = 1;
            out[4..8].copy_from_slice(&a.ip().octets());
            8
        }
        SocketAddr::V6(a) => {
            out[3] = 4;
            out[4..20].copy_from_slice(&a.ip().octets());
            20
        }
    };
    out[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    n + 2
}

/// Appends a header with FRAG 0 naming `addr`.
pub fn encode_header(addr: &TargetAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    addr.encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for a in [
            TargetAddr::Ip("8.8.8.8:53".parse().unwrap()),
            TargetAddr::Ip("[2001:4860::8888]:53".parse().unwrap()),
            TargetAddr::Domain("dns.example".into(), 53),
        ] {
            let mut out = Vec::new();
            encode_header(&a, &mut out);
            out.extend_from_slice(b"payload");
            let (h, n) = parse_header(&out).unwrap().unwrap();
            assert_eq!(h.addr, a);
            assert_eq!(&out[n..], b"payload");
            assert_eq!(parse_header(&out[..n - 1]), Ok(None));
        }
    }

    #[test]
    fn ip_header_in_place_matches_encoder() {
        for a in ["192.0.2.1:5353", "[2001:db8::7]:443"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut expect = Vec::new();
            encode_header(&TargetAddr::Ip(a), &mut expect);
            let mut buf = [0xffu8; MAX_IP_HEADER];
            let n = write_ip_header(&a, &mut buf);
            assert_eq!(n, ip_header_len(&a));
            assert_eq!(&buf[..n], &expect[..]);
        }
    }

    #[test]
    fn fragments_and_reserved_rejected() {
        assert_eq!(
            parse_header(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 53]),
            Err(ProtoError::Fragmented(1))
        );
        assert_eq!(parse_header(&[0, 1, 0]), Err(ProtoError::BadReserved(1)));
        assert_eq!(parse_header(&[2, 0, 0]), Err(ProtoError::BadReserved(2)));
    }

    #[test]
    fn truncated_and_malformed_addresses() {
        let mut out = Vec::new();
        encode_header(&TargetAddr::Domain("dns.example".into(), 53), &mut out);
        for n in 0..out.len() {
            assert_eq!(parse_header(&out[..n]), Ok(None), "prefix {n}");
        }
        assert_eq!(
            parse_header(&[0, 0, 0, 9, 1, 2]),
            Err(ProtoError::UnknownAddressType(9))
        );
        assert_eq!(parse_header(&[0, 0, 0, 3, 0]), Err(ProtoError::BadDomain));
        // An empty payload is still a datagram.
        assert_eq!(
            parse_header(&[0, 0, 0, 1, 1, 2, 3, 4, 0, 53]),
            Ok(Some((
                UdpHeader {
                    frag: 0,
                    addr: TargetAddr::Ip("1.2.3.4:53".parse().unwrap())
                },
                10
            )))
        );
    }
}
