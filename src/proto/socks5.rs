//! SOCKS5 messages, RFC 1928: the greeting (section 3), method selection, requests (section 4)
//! and replies (section 6). Server- and client-side encoders and parsers for each.

use std::net::SocketAddr;

use super::addr::{encode_socket_addr, TargetAddr};
use super::{Command, Parsed, ProtoError, ReplyCode};

/// Protocol version byte.
pub const VERSION: u8 = 0x05;
/// Method X'00': no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method X'01': GSSAPI (not offered by this server).
pub const METHOD_GSSAPI: u8 = 0x01;
/// Method X'02': username/password, RFC 1929.
pub const METHOD_USERPASS: u8 = 0x02;
/// Method X'FF': no acceptable methods.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// CMD X'01'.
pub const CMD_CONNECT: u8 = 0x01;
/// CMD X'02'.
pub const CMD_BIND: u8 = 0x02;
/// CMD X'03'.
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;

/// The methods a client offers, as a bit set over the 256 possible method bytes (so parsing
/// allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods([u64; 4]);

impl Methods {
    /// Adds a method.
    pub fn insert(&mut self, m: u8) {
        self.0[(m >> 6) as usize] |= 1 << (m & 63);
    }

    /// Whether the client offered `m`.
    pub fn contains(&self, m: u8) -> bool {
        self.0[(m >> 6) as usize] & (1 << (m & 63)) != 0
    }
}

/// Parses the version identifier/method selection message: VER, NMETHODS, METHODS.
/// The version byte must already be known to be X'05'.
pub fn parse_greeting(buf: &[u8]) -> Parsed<Methods> {
    let (Some(&ver), Some(&n)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::UnsupportedVersion(ver));
    }
    if n == 0 {
        return Err(ProtoError::NoMethods);
    }
    let Some(list) = buf.get(2..2 + n as usize) else {
        return Ok(None);
    };
    let mut methods = Methods::default();
    for &m in list {
        methods.insert(m);
    }
    Ok(Some((methods, 2 + n as usize)))
}

/// Appends a greeting offering `methods` (client side).
pub fn encode_greeting(methods: &[u8], out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(methods.len().min(255) as u8);
    out.extend_from_slice(&methods[..methods.len().min(255)]);
}

/// Appends the server's method selection: VER, METHOD.
pub fn encode_method_selection(method: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, method]);
}

/// Parses the server's method selection (client side).
pub fn parse_method_selection(buf: &[u8]) -> Parsed<u8> {
    match buf.get(..2) {
        None => Ok(None),
        Some(&[VERSION, m]) => Ok(Some((m, 2))),
        Some(_) => Err(ProtoError::BadReply),
    }
}

/// A parsed SOCKS5 request: CMD and DST.ADDR/DST.PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// The destination (for UDP ASSOCIATE, the address the client will send from).
    pub target: TargetAddr,
}

/// Parses a request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(head) = buf.get(..3) else {
        return Ok(None);
    };
    if head[0] != VERSION {
        return Err(ProtoError::BadRequestVersion(head[0]));
    }
    // CMD, RSV and ATYP are checked before waiting for the rest of the address, so a bad
    // request is answered at once rather than at the handshake timeout.
    let command = match head[1] {
        CMD_CONNECT => Command::Connect,
        CMD_BIND => Command::Bind,
        CMD_UDP_ASSOCIATE => Command::UdpAssociate,
        other => return Err(ProtoError::UnknownCommand(other)),
    };
    if head[2] != 0x00 {
        return Err(ProtoError::BadReserved(head[2]));
    }
    match TargetAddr::parse(&buf[3..])? {
        None => Ok(None),
        Some((target, n)) => Ok(Some((Request { command, target }, 3 + n))),
    }
}

/// Appends a request (client side).
pub fn encode_request(command: Command, target: &TargetAddr, out: &mut Vec<u8>) {
    let cmd = match command {
        Command::Connect => CMD_CONNECT,
        Command::Bind => CMD_BIND,
        Command::UdpAssociate => CMD_UDP_ASSOCIATE,
    };
    out.extend_from_slice(&[VERSION, cmd, 0x00]);
    target.encode(out);
}

/// Appends a reply: VER, REP, RSV, ATYP, BND.ADDR, BND.PORT. Without a bound address (failure
/// replies) the address is 0.0.0.0:0, as RFC 1928 leaves it unspecified.
pub fn encode_reply(code: ReplyCode, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, code as u8, 0x00]);
    let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    encode_socket_addr(&bound, out);
}

/// A reply as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// REP.
    pub code: ReplyCode,
    /// BND.ADDR and BND.PORT.
    pub bound: TargetAddr,
}

/// Parses a reply (client side).
pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    let Some(head) = buf.get(..3) else {
        return Ok(None);
    };
    if head[0] != VERSION || head[2] != 0 {
        return Err(ProtoError::BadReply);
    }
    let code = ReplyCode::from_u8(head[1]).ok_or(ProtoError::BadReply)?;
    match TargetAddr::parse(&buf[3..])? {
        None => Ok(None),
        Some((bound, n)) => Ok(Some((Reply { code, bound }, 3 + n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_table() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(parse_greeting(&[5, 0]), Err(ProtoError::NoMethods));
        assert_eq!(
            parse_greeting(&[4, 1, 0]),
            Err(ProtoError::UnsupportedVersion(4))
        );
        let (m, n) = parse_greeting(&[5, 2, 0, 2, 0xAA]).unwrap().unwrap();
        assert_eq!(n, 4);
        assert!(m.contains(0) && m.contains(2) && !m.contains(1) && !m.contains(0xAA));
    }

    #[test]
    fn methods_bitset_covers_all_bytes() {
        let mut m = Methods::default();
        for b in [0u8, 63, 64, 127, 128, 255] {
            assert!(!m.contains(b));
            m.insert(b);
            assert!(m.contains(b));
        }
        assert!(!m.contains(1));
    }

    #[test]
    fn request_table() {
        let req = [5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90];
        let (r, n) = parse_request(&req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(r.command, Command::Connect);
        assert_eq!(r.target, TargetAddr::Ip("127.0.0.1:8080".parse().unwrap()));
        for k in 0..req.len() {
            assert_eq!(parse_request(&req[..k]), Ok(None));
        }
        assert_eq!(parse_request(&[5, 2, 0, 1]).unwrap(), None);
        assert_eq!(parse_request(&[5, 3, 0, 4]).unwrap(), None);
        assert_eq!(
            parse_request(&[5, 9, 0, 1]),
            Err(ProtoError::UnknownCommand(9))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 9]),
            Err(ProtoError::UnknownAddressType(9))
        );
        assert_eq!(parse_request(&[5, 1, 0, 3, 0]), Err(ProtoError::BadDomain));
        assert_eq!(
            parse_request(&[4, 1, 0, 1]),
            Err(ProtoError::BadRequestVersion(4))
        );
        assert_eq!(
            parse_request(&[5, 1, 7, 1]),
            Err(ProtoError::BadReserved(7))
        );
    }

    #[test]
    fn request_roundtrip_domain() {
        let t = TargetAddr::Domain("example.org".into(), 443);
        let mut out = Vec::new();
        encode_request(Command::UdpAssociate, &t, &mut out);
        let (r, n) = parse_request(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            r,
            Request {
                command: Command::UdpAssociate,
                target: t
            }
        );
    }

    #[test]
    fn reply_roundtrip_every_code() {
        for b in 0u8..=8 {
            let code = ReplyCode::from_u8(b).unwrap();
            let mut out = Vec::new();
            encode_reply(code, Some("[::1]:1080".parse().unwrap()), &mut out);
            assert_eq!(out[1], b);
            let (r, n) = parse_reply(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(r.code, code);
            assert_eq!(r.bound, TargetAddr::Ip("[::1]:1080".parse().unwrap()));
        }
        assert_eq!(ReplyCode::from_u8(9), None);
        let mut out = Vec::new();
        encode_reply(ReplyCode::GeneralFailure, None, &mut out);
        assert_eq!(out, [5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_reply(&[5, 9, 0, 1]), Err(ProtoError::BadReply));
        assert_eq!(parse_reply(&[4, 0, 0, 1]), Err(ProtoError::BadReply));
        assert_eq!(parse_reply(&[5, 0, 1, 1]), Err(ProtoError::BadReply));
        assert_eq!(
            parse_reply(&[5, 0, 0, 7]),
            Err(ProtoError::UnknownAddressType(7))
        );
        for n in 0..out.len() {
            assert_eq!(parse_reply(&out[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn greeting_limits() {
        let all: Vec<u8> = (0..=255).collect();
        let mut g = Vec::new();
        encode_greeting(&all, &mut g);
        assert_eq!(g.len(), 2 + 255);
        let (m, n) = parse_greeting(&g).unwrap().unwrap();
        assert_eq!(n, 257);
        assert!(m.contains(0) && m.contains(254) && !m.contains(255));
        for k in 0..g.len() {
            assert_eq!(parse_greeting(&g[..k]), Ok(None), "prefix {k}");
        }
    }

    #[test]
    fn method_selection() {
        let mut out = Vec::new();
        encode_method_selection(METHOD_USERPASS, &mut out);
        assert_eq!(out, [5, 2]);
        assert_eq!(parse_method_selection(&out), Ok(Some((2, 2))));
        assert_eq!(parse_method_selection(&[5]), Ok(None));
        assert_eq!(parse_method_selection(&[4, 0]), Err(ProtoError::BadReply));
        let mut g = Vec::new();
        encode_greeting(&[0, 2], &mut g);
        assert_eq!(g, [5, 2, 0, 2]);
    }
}
