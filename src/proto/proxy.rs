//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), as a pure codec: no sockets,
//! no clock.
//!
//! A load balancer in front of the proxy (HAProxy, AWS NLB, GCP, ...) prepends one header to each
//! TCP connection naming the original client. [`parse`] reads that header from the start of the
//! connection's bytes and says how long it was; everything after it is the SOCKS handshake.
//! Specification: "The PROXY protocol, Versions 1 & 2",
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! Accepted (section numbers refer to that document):
//! - v1 (2.1): `PROXY TCP4 …` and `PROXY TCP6 …` ([`ProxyHeader::Proxied`]) and
//!   `PROXY UNKNOWN …` ([`ProxyHeader::Local`]), at most 107 bytes including the CRLF. The
//!   grammar is applied strictly: single spaces, addresses of the announced family (std's strict
//!   parsers: no leading zeros in IPv4 octets, no zone IDs or brackets in IPv6), ports in
//!   canonical decimal (`0` to `65535`, no sign, no leading zeros, so a header has one spelling),
//!   CRLF and never a bare LF.
//! - v2 (2.2): the LOCAL command with any family ([`ProxyHeader::Local`]); the PROXY command
//!   with TCP over IPv4 (0x11) or IPv6 (0x21) ([`ProxyHeader::Proxied`]), or with UNSPEC (0x00),
//!   which the receiver may accept using the real connection endpoints ([`ProxyHeader::Local`]).
//!   TLVs are skipped, but after a TCP address block their framing must be exact.
//!
//! Refused with an error, after which the connection must be closed (section 2: a receiver must
//! not guess whether a header is present, and one it does not understand must not reach the
//! application protocol):
//! - bytes that do not start like either signature, as soon as the first differing byte
//!   arrives, so a client that bypassed the balancer is turned away at once instead of at a
//!   timeout; likewise a v1 line is refused at the first byte that breaks its character set or
//!   field layout (addresses and ports are parsed once the CRLF arrives);
//! - v2 with the PROXY command over UDP (0x12, 0x22) or UNIX sockets (0x31, 0x32), since this
//!   is a TCP SOCKS listener, and family bytes the specification leaves undefined (which it
//!   says receivers must reject);
//! - v2 versions other than 2 and commands other than LOCAL and PROXY;
//! - headers longer than 107 bytes (v1) or [`MAX_HEADER_LEN`] (v2), so a peer can make a
//!   connection buffer only a bounded amount.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Longest header accepted, in bytes: the 16-byte v2 fixed part plus 1024 bytes of addresses and
/// TLVs. The largest TCP address block is 36 bytes (IPv6), and the TLVs that balancers send are
/// small (the AWS NLB VPC endpoint ID, GCP and Azure link IDs are under 64 bytes; HAProxy's
/// `PP2_TYPE_UNIQUE_ID` is at most 128), so 1 KiB leaves room for HAProxy's SSL TLVs while
/// bounding what a peer can make a connection buffer before its first SOCKS byte. A v1 header
/// (at most [`V1_MAX_LEN`] bytes) always fits, so a buffer of this size holds either version.
pub const MAX_HEADER_LEN: usize = 16 + 1024;

/// Longest v1 header including the CRLF (section 2.1).
pub const V1_MAX_LEN: usize = 107;

/// The v1 prefix: "PROXY" and a single space (section 2.1).
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The v2 signature (section 2.2): `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: &[u8; 12] = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A";

/// What the balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v2 LOCAL command (health checks from the balancer itself), v2 PROXY with the UNSPEC
    /// family, or v1 "PROXY UNKNOWN": use the connection's own addresses.
    Local,
    /// A proxied TCP connection: the original client (source) and the address it connected to
    /// (destination). IPv4-mapped IPv6 addresses are returned as sent.
    Proxied {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to (usually the balancer's listener).
        destination: SocketAddr,
    },
}

/// Why bytes at the start of a connection are not an acceptable PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes start like neither the v1 prefix nor the v2 signature (for example a client
    /// speaking SOCKS directly to a listener that expects a balancer in front).
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    /// A v2 header whose version nibble is not 2 (section 2.2, 13th byte).
    #[error("unsupported PROXY protocol v2 version {0}")]
    BadVersion(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1) (section 2.2, 13th byte).
    #[error("unknown PROXY protocol v2 command {0:#x}")]
    BadCommand(u8),
    /// A v2 PROXY command for a family this TCP listener cannot serve: UDP (0x12, 0x22) or UNIX
    /// sockets (0x31, 0x32).
    #[error("unsupported PROXY protocol v2 family/transport {0:#04x}")]
    UnsupportedFamily(u8),
    /// A v2 family/transport byte the specification does not define (section 2.2, 14th byte:
    /// receivers must reject them).
    #[error("undefined PROXY protocol v2 family/transport {0:#04x}")]
    BadFamily(u8),
    /// No CRLF within 107 bytes (v1), or a v2 length beyond [`MAX_HEADER_LEN`].
    #[error("PROXY protocol header too long")]
    TooLong,
    /// The header breaks the grammar; the text says where.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

impl ProxyError {
    /// A short stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotProxyProtocol => "not-proxy-protocol",
            Self::BadVersion(_) => "bad-version",
            Self::BadCommand(_) => "bad-command",
            Self::UnsupportedFamily(_) => "unsupported-family",
            Self::BadFamily(_) => "bad-family",
            Self::TooLong => "too-long",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Parses a PROXY header at the start of `buf`.
///
/// `Ok(None)`: need more bytes (the prefix so far is a valid beginning of a header).
/// `Ok(Some((header, n)))`: a complete header of `n` bytes; bytes after `n` belong to the
/// application protocol (SOCKS) and must be left untouched. `Err`: not a valid header; the
/// connection must be closed.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') if prefix(buf, V1_PREFIX)? => parse_v1(buf),
        Some(0x0D) if prefix(buf, V2_SIGNATURE)? => parse_v2(buf),
        Some(b'P' | 0x0D) => Ok(None),
        Some(_) => Err(ProxyError::NotProxyProtocol),
    }
}

/// Encodes a v1 header (section 2.1). Two IPv4 addresses give `TCP4`; otherwise `TCP6`, with
/// an IPv4 address written as IPv4-mapped IPv6. IPv6 flow info and scope IDs are not carried.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let line = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        (s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            v6(s.ip()),
            v6(d.ip()),
            s.port(),
            d.port()
        ),
    };
    line.into_bytes()
}

/// Encodes a v2 header without TLVs (section 2.2). [`ProxyHeader::Local`] becomes the LOCAL
/// command with family UNSPEC and length 0; [`ProxyHeader::Proxied`] the PROXY command with
/// TCP over IPv4 (0x11) when both addresses are IPv4, else TCP over IPv6 (0x21) with IPv4
/// addresses mapped.
pub fn encode_v2(header: &ProxyHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(V2_SIGNATURE);
    match *header {
        ProxyHeader::Local => out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]),
        ProxyHeader::Proxied {
            source,
            destination,
        } => {
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x21, FAMILY_TCP4, 0x00, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, FAMILY_TCP6, 0x00, 36]);
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
    out
}

/// v2 family/transport byte: TCP over IPv4.
const FAMILY_TCP4: u8 = 0x11;
/// v2 family/transport byte: TCP over IPv6.
const FAMILY_TCP6: u8 = 0x21;
/// v2 length field smaller than the address block its family needs.
const SHORT_BLOCK: &str = "length shorter than the address block";
/// Longest IPv4 address in dotted notation ("255.255.255.255").
const MAX_V4_TEXT: usize = 15;
/// Longest IPv6 address in text ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255").
const MAX_V6_TEXT: usize = 45;
/// Longest port ("65535").
const MAX_PORT_TEXT: usize = 5;

/// Checks `buf` against as much of `magic` as has arrived: `Ok(true)` when all of it has,
/// `Ok(false)` when a matching part has, `Err` at the first differing byte.
fn prefix(buf: &[u8], magic: &[u8]) -> Result<bool, ProxyError> {
    let n = buf.len().min(magic.len());
    if buf.get(..n) != magic.get(..n) {
        return Err(ProxyError::NotProxyProtocol);
    }
    Ok(n == magic.len())
}

/// IPv6 as is, IPv4 as IPv4-mapped IPv6 (for headers mixing the two families).
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The v1 protocol word.
#[derive(Clone, Copy, PartialEq, Eq)]
enum V1Proto {
    Tcp4,
    Tcp6,
    Unknown,
}

/// Protocol words with what must follow them ("UNKNOWN" may end the line, so its separator is
/// checked separately).
const V1_PROTOS: [(&[u8], V1Proto); 3] = [
    (b"TCP4 ", V1Proto::Tcp4),
    (b"TCP6 ", V1Proto::Tcp6),
    (b"UNKNOWN", V1Proto::Unknown),
];

/// `buf` starts with [`V1_PREFIX`].
fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = buf.get(..buf.len().min(V1_MAX_LEN)).unwrap_or(buf);
    // The line ends at the first CR, which must be followed by LF; a LF before any CR is a bare
    // LF, refused like any other deviation from the grammar.
    let (line, complete) = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        None => (window, false),
        Some(i) => {
            let line = window.get(..i).unwrap_or(window);
            match (window.get(i), window.get(i + 1)) {
                (Some(b'\n'), _) => return Err(ProxyError::Malformed("LF without CR")),
                (_, Some(b'\n')) => (line, true),
                (_, Some(_)) => return Err(ProxyError::Malformed("CR without LF")),
                (_, None) => (line, false),
            }
        }
    };
    // Checking what has arrived before waiting for more refuses garbage early; the checks are
    // the same the complete line passes, so a valid header's prefixes are never refused.
    let rest = line.get(V1_PREFIX.len()..).unwrap_or_default();
    let header = v1_line(rest, complete)?;
    match header {
        Some(header) => Ok(Some((header, line.len() + 2))),
        None if window.len() >= V1_MAX_LEN => Err(ProxyError::TooLong),
        None => Ok(None),
    }
}

/// Checks the text after "PROXY " (without the CRLF); `complete` says whether the CRLF has
/// arrived. `Ok(None)`: a valid beginning, needs more.
fn v1_line(rest: &[u8], complete: bool) -> Result<Option<ProxyHeader>, ProxyError> {
    let mut proto = None;
    for &(word, p) in &V1_PROTOS {
        if rest.starts_with(word) {
            proto = Some((p, rest.get(word.len()..).unwrap_or_default()));
        } else if !complete && word.starts_with(rest) {
            return Ok(None);
        }
    }
    let Some((proto, fields)) = proto else {
        return Err(ProxyError::Malformed("unknown protocol"));
    };
    let v6 = match proto {
        V1Proto::Tcp4 => false,
        V1Proto::Tcp6 => true,
        V1Proto::Unknown => {
            // Section 2.1: the receiver must ignore anything presented before the CRLF.
            return match fields.first() {
                None | Some(b' ') if complete => Ok(Some(ProxyHeader::Local)),
                None | Some(b' ') => Ok(None),
                Some(_) => Err(ProxyError::Malformed("unknown protocol")),
            };
        }
    };

    // Four fields separated by single spaces: source, destination, source port, dest port.
    // Before the CRLF arrives, the last field may still be empty (its first byte is pending).
    let count = fields.iter().filter(|&&b| b == b' ').count() + 1;
    if count > 4 {
        return Err(ProxyError::Malformed("too many fields"));
    }
    let mut field: [&[u8]; 4] = [&[]; 4];
    for ((i, part), (slot, what)) in fields
        .split(|&b| b == b' ')
        .enumerate()
        .zip(field.iter_mut().zip(FIELD_NAMES))
    {
        let (max, allowed): (usize, fn(&u8) -> bool) = match i {
            0 | 1 if v6 => (MAX_V6_TEXT, |b| {
                b.is_ascii_hexdigit() || *b == b':' || *b == b'.'
            }),
            0 | 1 => (MAX_V4_TEXT, |b| b.is_ascii_digit() || *b == b'.'),
            _ => (MAX_PORT_TEXT, u8::is_ascii_digit),
        };
        if part.len() > max || !part.iter().all(allowed) {
            return Err(ProxyError::Malformed(what));
        }
        if part.is_empty() && (complete || i + 1 != count) {
            return Err(ProxyError::Malformed("empty field or double space"));
        }
        *slot = part;
    }
    if !complete {
        return Ok(None);
    }
    if count != 4 {
        return Err(ProxyError::Malformed("missing field"));
    }
    let [src, dst, sport, dport] = field;
    let ip = |text: &[u8], what| match v6 {
        true => ip_text::<Ipv6Addr>(text, what).map(IpAddr::V6),
        false => ip_text::<Ipv4Addr>(text, what).map(IpAddr::V4),
    };
    let source = SocketAddr::new(ip(src, "source address")?, port(sport, "source port")?);
    let destination = SocketAddr::new(
        ip(dst, "destination address")?,
        port(dport, "destination port")?,
    );
    Ok(Some(ProxyHeader::Proxied {
        source,
        destination,
    }))
}

/// The v1 fields in order, as named in errors.
const FIELD_NAMES: [&str; 4] = [
    "source address",
    "destination address",
    "source port",
    "destination port",
];

/// Parses an address with std's strict parsers (no leading zeros in IPv4 octets, no zone IDs).
fn ip_text<T: FromStr>(text: &[u8], what: &'static str) -> Result<T, ProxyError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProxyError::Malformed(what))
}

/// Parses a port in canonical decimal: 1 to 5 digits, no sign, no leading zero unless "0".
fn port(text: &[u8], what: &'static str) -> Result<u16, ProxyError> {
    let canonical = match text {
        [] => false,
        [b'0', _, ..] => false,
        _ => text.len() <= MAX_PORT_TEXT && text.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return Err(ProxyError::Malformed(what));
    }
    let value = text
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::Malformed(what))
}

/// `buf` starts with [`V2_SIGNATURE`].
fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    // Each field is checked as soon as it arrives (section 2.2 layout: signature, ver_cmd,
    // fam, len, then `len` bytes of addresses and TLVs).
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(ProxyError::BadVersion(version));
    }
    let proxy = match ver_cmd & 0x0F {
        0x0 => false,
        0x1 => true,
        command => return Err(ProxyError::BadCommand(command)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    // LOCAL: the family is ignored (section 2.2). PROXY with UNSPEC: no addresses to read.
    let addr_len = match (proxy, family) {
        (false, _) | (true, 0x00) => 0,
        (true, FAMILY_TCP4) => 12,
        (true, FAMILY_TCP6) => 36,
        (true, 0x12 | 0x22 | 0x31 | 0x32) => return Err(ProxyError::UnsupportedFamily(family)),
        (true, _) => return Err(ProxyError::BadFamily(family)),
    };
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_HEADER_LEN - 16 {
        return Err(ProxyError::TooLong);
    }
    if len < addr_len {
        return Err(ProxyError::Malformed(SHORT_BLOCK));
    }
    let total = 16 + len;
    let Some(block) = buf.get(16..total) else {
        return Ok(None);
    };
    let header = match (proxy, family) {
        (true, FAMILY_TCP4) => {
            let Some((&[s0, s1, s2, s3, d0, d1, d2, d3, sp0, sp1, dp0, dp1], tlvs)) =
                block.split_first_chunk::<12>()
            else {
                return Err(ProxyError::Malformed(SHORT_BLOCK));
            };
            check_tlvs(tlvs)?;
            ProxyHeader::Proxied {
                source: SocketAddr::from((
                    Ipv4Addr::new(s0, s1, s2, s3),
                    u16::from_be_bytes([sp0, sp1]),
                )),
                destination: SocketAddr::from((
                    Ipv4Addr::new(d0, d1, d2, d3),
                    u16::from_be_bytes([dp0, dp1]),
                )),
            }
        }
        (true, FAMILY_TCP6) => {
            let too_short = ProxyError::Malformed(SHORT_BLOCK);
            let (src, rest) = block.split_first_chunk::<16>().ok_or(too_short)?;
            let (dst, rest) = rest.split_first_chunk::<16>().ok_or(too_short)?;
            let (sport, rest) = rest.split_first_chunk::<2>().ok_or(too_short)?;
            let (dport, tlvs) = rest.split_first_chunk::<2>().ok_or(too_short)?;
            check_tlvs(tlvs)?;
            ProxyHeader::Proxied {
                source: SocketAddr::from((Ipv6Addr::from(*src), u16::from_be_bytes(*sport))),
                destination: SocketAddr::from((Ipv6Addr::from(*dst), u16::from_be_bytes(*dport))),
            }
        }
        // LOCAL, or PROXY with UNSPEC: the block's layout is unknown, so it is skipped whole.
        _ => ProxyHeader::Local,
    };
    Ok(Some((header, total)))
}

/// Checks the framing of the TLVs after a TCP address block (section 2.2): each is a type
/// byte, a big-endian u16 length and that many bytes, and the last ends exactly at the end.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some((&[_kind, hi, lo], rest)) = tlvs.split_first_chunk::<3>() else {
            return Err(ProxyError::Malformed("truncated TLV"));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = rest
            .get(len..)
            .ok_or(ProxyError::Malformed("TLV runs past the header"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Parsed = Result<Option<(ProxyHeader, usize)>, ProxyError>;

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// Every strict prefix needs more; the whole header followed by SOCKS bytes parses to
    /// `expected` and leaves the SOCKS bytes alone.
    fn assert_header(bytes: &[u8], expected: ProxyHeader) {
        for i in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..i]),
                Ok(None),
                "prefix of {i} bytes of {bytes:02x?}"
            );
        }
        let mut with_socks = bytes.to_vec();
        with_socks.extend_from_slice(&[0x05, 0x01, 0x00]);
        assert_eq!(parse(&with_socks), Ok(Some((expected, bytes.len()))));
    }

    /// A v2 header with `tlvs` appended and the length field updated.
    fn with_tlvs(mut header: Vec<u8>, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        for (kind, value) in tlvs {
            header.push(*kind);
            header.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            header.extend_from_slice(value);
        }
        let len = u16::try_from(header.len() - 16).unwrap();
        header[14..16].copy_from_slice(&len.to_be_bytes());
        header
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, family]);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    const V4_BLOCK: [u8; 12] = [
        0xC0, 0x00, 0x02, 0x01, 0x0A, 0x00, 0x00, 0x01, 0xD4, 0x31, 0x04, 0x38,
    ];

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.0.2.1 10.0.0.1 54321 1080\r\n";
        assert_header(h, proxied("192.0.2.1:54321", "10.0.0.1:1080"));
        assert_header(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            proxied("0.0.0.0:0", "255.255.255.255:65535"),
        );
    }

    #[test]
    fn v1_tcp6() {
        assert_header(
            b"PROXY TCP6 2001:db8::1 ::1 443 1080\r\n",
            proxied("[2001:db8::1]:443", "[::1]:1080"),
        );
        assert_header(
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:DB8::2 1 2\r\n",
            proxied("[::ffff:192.0.2.1]:1", "[2001:db8::2]:2"),
        );
        // The longest valid v1 TCP header (section 2.1: 104 bytes).
        let max = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                    ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), 104);
        assert!(matches!(parse(max), Ok(Some((_, 104)))));
    }

    #[test]
    fn v1_unknown() {
        assert_header(b"PROXY UNKNOWN\r\n", ProxyHeader::Local);
        assert_header(
            b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n",
            ProxyHeader::Local,
        );
        // Worst case from section 2.1: exactly 107 bytes.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(V1_MAX_LEN - 2, b'x');
        max.extend_from_slice(b"\r\n");
        assert_header(&max, ProxyHeader::Local);
        assert_eq!(
            parse(b"PROXY UNKNOWNX\r\n"),
            Err(ProxyError::Malformed("unknown protocol"))
        );
    }

    #[test]
    fn v1_too_long() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 1, b'x');
        assert_eq!(parse(&long), Ok(None));
        // 107 bytes and no LF: the CRLF could only end at byte 108.
        long.push(b'\r');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        long.push(b'\n');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(500, b'x');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_malformed() {
        let cases: &[(&[u8], ProxyError)] = &[
            (
                b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\n",
                ProxyError::Malformed("LF without CR"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                ProxyError::Malformed("CR without LF"),
            ),
            (b"PROXY\n", ProxyError::NotProxyProtocol),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("unknown protocol"),
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("unknown protocol"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("unknown protocol"),
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("unknown protocol"),
            ),
            (b"PROXY TCP4\r\n", ProxyError::Malformed("unknown protocol")),
            (
                b"PROXY TCP4 \r\n",
                ProxyError::Malformed("empty field or double space"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                ProxyError::Malformed("missing field"),
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                ProxyError::Malformed("too many fields"),
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1\r\n",
                ProxyError::Malformed("empty field or double space"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                ProxyError::Malformed("too many fields"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                ProxyError::Malformed("too many fields"),
            ),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                ProxyError::Malformed("destination address"),
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
            (
                b"PROXY TCP6 ::1 [::1] 1 2\r\n",
                ProxyError::Malformed("destination address"),
            ),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                ProxyError::Malformed("source port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
                ProxyError::Malformed("source port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
                ProxyError::Malformed("source port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
                ProxyError::Malformed("destination port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n",
                ProxyError::Malformed("destination port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
                ProxyError::Malformed("source address"),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                parse(bytes),
                Err(*error),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn v1_garbage_refused_before_crlf() {
        // No need to wait for the line end (or 107 bytes) to see these are wrong.
        let cases: &[&[u8]] = &[
            b"PROXX",
            b"PROXY X",
            b"PROXY TCP4 1.2.3.4x",
            b"PROXY TCP4 1.2.3.4  ",
            b"PROXY TCP6 ::g",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 123456",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            b"PROXY TCP4 1234567890123456",
            b"PROXY UNKNOWNN",
            b"GET / HTTP/1.1\r\n",
        ];
        for bytes in cases {
            assert!(parse(bytes).is_err(), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn v2_local() {
        assert_header(&encode_v2(&ProxyHeader::Local), ProxyHeader::Local);
        assert_eq!(
            encode_v2(&ProxyHeader::Local),
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"
        );
        // The family and any address block are ignored and skipped (section 2.2).
        assert_header(&v2(0x20, 0x11, &V4_BLOCK), ProxyHeader::Local);
        assert_header(&v2(0x20, 0x12, &[0xAA; 7]), ProxyHeader::Local);
        assert_header(&v2(0x20, 0xFF, &[]), ProxyHeader::Local);
    }

    #[test]
    fn v2_ipv4() {
        let expected = proxied("192.0.2.1:54321", "10.0.0.1:1080");
        let h = v2(0x21, 0x11, &V4_BLOCK);
        assert_eq!(h, encode_v2(&expected));
        assert_header(&h, expected);
        // AWS NLB's VPC endpoint TLV and a NOOP TLV are skipped.
        let tlvs = [
            (0xEA, b"\x01vpce-0123456789abcdef0".to_vec()),
            (0x04, vec![]),
        ];
        assert_header(&with_tlvs(h.clone(), &tlvs), expected);
    }

    #[test]
    fn v2_ipv6() {
        let expected = proxied("[2001:db8::1]:443", "[::ffff:10.0.0.1]:1080");
        let h = encode_v2(&expected);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_header(&h, expected);
        assert_header(&with_tlvs(h, &[(0xE0, vec![0; 8])]), expected);
    }

    #[test]
    fn v2_unspec_is_local() {
        assert_header(&v2(0x21, 0x00, &[]), ProxyHeader::Local);
        assert_header(&v2(0x21, 0x00, &[1, 2, 3]), ProxyHeader::Local);
    }

    #[test]
    fn v2_refused() {
        let cases: &[(Vec<u8>, ProxyError)] = &[
            (
                v2(0x21, 0x12, &V4_BLOCK),
                ProxyError::UnsupportedFamily(0x12),
            ),
            (
                v2(0x21, 0x22, &[0; 36]),
                ProxyError::UnsupportedFamily(0x22),
            ),
            (
                v2(0x21, 0x31, &[0; 216]),
                ProxyError::UnsupportedFamily(0x31),
            ),
            (
                v2(0x21, 0x32, &[0; 216]),
                ProxyError::UnsupportedFamily(0x32),
            ),
            (v2(0x21, 0x10, &V4_BLOCK), ProxyError::BadFamily(0x10)),
            (v2(0x21, 0x13, &V4_BLOCK), ProxyError::BadFamily(0x13)),
            (v2(0x21, 0x41, &V4_BLOCK), ProxyError::BadFamily(0x41)),
            (v2(0x11, 0x11, &V4_BLOCK), ProxyError::BadVersion(1)),
            (v2(0x31, 0x11, &V4_BLOCK), ProxyError::BadVersion(3)),
            (v2(0x22, 0x11, &V4_BLOCK), ProxyError::BadCommand(2)),
            (v2(0x2F, 0x11, &V4_BLOCK), ProxyError::BadCommand(0xF)),
            (
                v2(0x21, 0x11, &V4_BLOCK[..11]),
                ProxyError::Malformed("length shorter than the address block"),
            ),
            (
                v2(0x21, 0x21, &V4_BLOCK),
                ProxyError::Malformed("length shorter than the address block"),
            ),
            (
                v2(0x21, 0x11, &[&V4_BLOCK[..], &[0x01, 0x00]].concat()),
                ProxyError::Malformed("truncated TLV"),
            ),
            (
                v2(
                    0x21,
                    0x11,
                    &[&V4_BLOCK[..], &[0x01, 0x00, 0x03, 0xAA]].concat(),
                ),
                ProxyError::Malformed("TLV runs past the header"),
            ),
            (
                v2(0x21, 0x11, &[0; MAX_HEADER_LEN - 16 + 1]),
                ProxyError::TooLong,
            ),
            (v2(0x20, 0x00, &[0; 0xFFFF]), ProxyError::TooLong),
        ];
        for (bytes, error) in cases {
            assert_eq!(parse(bytes), Err(*error), "{:02x?}", &bytes[12..16]);
        }
        // Refused as soon as the offending field arrives, without waiting for the block.
        assert_eq!(
            parse(&v2(0x21, 0x22, &[0; 36])[..14]),
            Err(ProxyError::UnsupportedFamily(0x22))
        );
        assert_eq!(
            parse(&v2(0x11, 0x11, &[])[..13]),
            Err(ProxyError::BadVersion(1))
        );
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 2000])[..16]),
            Err(ProxyError::TooLong)
        );
        // The largest accepted header.
        let max = v2(0x20, 0x00, &[0; MAX_HEADER_LEN - 16]);
        assert_eq!(parse(&max), Ok(Some((ProxyHeader::Local, MAX_HEADER_LEN))));
    }

    #[test]
    fn socks_clients_refused_at_first_byte() {
        for bytes in [
            &[0x05][..],
            &[0x05, 0x01, 0x00],
            &[0x04],
            &[0x04, 0x01, 0x04, 0x38, 1, 2, 3, 4, 0],
        ] {
            assert_eq!(parse(bytes), Err(ProxyError::NotProxyProtocol));
        }
        for first in 0..=u8::MAX {
            let expected = match first {
                b'P' | b'\r' => Ok(None),
                _ => Err(ProxyError::NotProxyProtocol),
            };
            assert_eq!(parse(&[first]), expected);
        }
        // A near miss of the v2 signature is refused at the differing byte.
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Err(ProxyError::NotProxyProtocol)
        );
        assert_eq!(parse(b"\r\n\r\n"), Ok(None));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn encode_v1_forms() {
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:2".parse().unwrap();
        assert_eq!(encode_v1(v4, v4), b"PROXY TCP4 192.0.2.1 192.0.2.1 1 1\r\n");
        assert_eq!(
            encode_v1(v4, v6),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1 2\r\n"
        );
        let mixed = encode_v2(&ProxyHeader::Proxied {
            source: v6,
            destination: v4,
        });
        assert_eq!(
            parse(&mixed),
            Ok(Some((
                proxied("[2001:db8::1]:2", "[::ffff:192.0.2.1]:1"),
                52
            )))
        );
    }

    #[test]
    fn labels() {
        let errors = [
            ProxyError::NotProxyProtocol,
            ProxyError::BadVersion(1),
            ProxyError::BadCommand(2),
            ProxyError::UnsupportedFamily(0x12),
            ProxyError::BadFamily(0x13),
            ProxyError::TooLong,
            ProxyError::Malformed("x"),
        ];
        let labels: Vec<_> = errors.iter().map(ProxyError::as_str).collect();
        assert_eq!(
            labels,
            [
                "not-proxy-protocol",
                "bad-version",
                "bad-command",
                "unsupported-family",
                "bad-family",
                "too-long",
                "malformed"
            ]
        );
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        let sparse_v6 = prop::array::uniform8(prop_oneof![Just(0u16), any::<u16>()]);
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
            (any::<u128>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
            (sparse_v6, any::<u16>())
                .prop_map(|(g, port)| SocketAddr::from((Ipv6Addr::from(g), port))),
            (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((
                Ipv4Addr::from(ip).to_ipv6_mapped(),
                port
            ))),
        ]
    }

    /// What a header for these addresses decodes to: both IPv4, or both IPv6 with IPv4 mapped.
    fn normalized(source: SocketAddr, destination: SocketAddr) -> ProxyHeader {
        match (source, destination) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => ProxyHeader::Proxied {
                source,
                destination,
            },
            _ => ProxyHeader::Proxied {
                source: SocketAddr::from((v6(source.ip()), source.port())),
                destination: SocketAddr::from((v6(destination.ip()), destination.port())),
            },
        }
    }

    fn tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)),
            0..8,
        )
    }

    /// Bytes that exercise the v1 field checks.
    fn v1_text() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEF.: \r\nTCPUNKOW".to_vec()),
            0..120,
        )
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_after_v1_prefix(
            kind in prop::sample::select(vec!["TCP4 ", "TCP6 ", "UNKNOWN", ""]),
            text in v1_text(),
        ) {
            let bytes = [V1_PREFIX.as_slice(), kind.as_bytes(), &text].concat();
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_after_v2_signature(
            head in prop::collection::vec(any::<u8>(), 0..5),
            len in 0u16..1100,
            rest in prop::collection::vec(any::<u8>(), 0..1100),
        ) {
            // Mostly valid version and length, so the address and TLV code is reached.
            let mut bytes = V2_SIGNATURE.to_vec();
            bytes.extend_from_slice(&head);
            bytes.truncate(14);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&rest);
            let r: Parsed = parse(&bytes);
            if let Ok(Some((_, n))) = r {
                prop_assert!(n <= bytes.len() && n <= MAX_HEADER_LEN);
            }
        }

        #[test]
        fn v1_round_trip(
            source in socket_addr(),
            destination in socket_addr(),
            trailing in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let header = encode_v1(source, destination);
            prop_assert!(header.len() <= V1_MAX_LEN);
            for i in 0..header.len() {
                prop_assert_eq!(parse(&header[..i]), Ok(None));
            }
            let bytes = [header.as_slice(), &trailing].concat();
            let expected = normalized(source, destination);
            prop_assert_eq!(parse(&bytes), Ok(Some((expected, header.len()))));
        }

        #[test]
        fn v1_unknown_round_trip(
            tail in prop::collection::vec(
                any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'),
                0..=V1_MAX_LEN - 16,
            ),
        ) {
            let header = [b"PROXY UNKNOWN ".as_slice(), &tail, b"\r\n"].concat();
            for i in 0..header.len() {
                prop_assert_eq!(parse(&header[..i]), Ok(None));
            }
            prop_assert_eq!(parse(&header), Ok(Some((ProxyHeader::Local, header.len()))));
        }

        #[test]
        fn v2_round_trip(
            source in socket_addr(),
            destination in socket_addr(),
            local in any::<bool>(),
            tlvs in tlvs(),
            trailing in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let (input, expected) = match local {
                true => (ProxyHeader::Local, ProxyHeader::Local),
                false => {
                    let input = ProxyHeader::Proxied { source, destination };
                    (input, normalized(source, destination))
                }
            };
            let header = with_tlvs(encode_v2(&input), &tlvs);
            prop_assert!(header.len() <= MAX_HEADER_LEN);
            for i in 0..header.len() {
                prop_assert_eq!(parse(&header[..i]), Ok(None));
            }
            let bytes = [header.as_slice(), &trailing].concat();
            prop_assert_eq!(parse(&bytes), Ok(Some((expected, header.len()))));
        }
    }
}
