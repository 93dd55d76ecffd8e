//! The SOCKS5 UDP request header, RFC 1928 section 7: RSV (2), FRAG, ATYP, DST.ADDR, DST.PORT,
//! then DATA.

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
