//! SOCKS4 and SOCKS4a (the protocols as published by NEC, "SOCKS: A protocol for TCP proxy
//! across firewalls" and "SOCKS 4A: A Simple Extension to SOCKS 4 Protocol").
//!
//! Request: VN=4, CD, DSTPORT (2), DSTIP (4), USERID, NUL. SOCKS4a: DSTIP = 0.0.0.x with x != 0,
//! then the host name and NUL follow the USERID. Reply: VN=0, CD (90 to 93), DSTPORT, DSTIP.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::addr::domain;
use super::{Command, Parsed, ProtoError, ReplyCode, TargetAddr};

/// Request version byte.
pub const VERSION: u8 = 0x04;
/// Reply version byte (VN of a reply is 0).
pub const REPLY_VERSION: u8 = 0x00;
/// Longest USERID or SOCKS4a host name accepted (bytes before the NUL). Longer ones are
/// rejected so an endless field cannot make the server buffer without bound.
pub const MAX_FIELD: usize = 255;

/// SOCKS4 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode4 {
    /// 90: request granted.
    Granted = 0x5A,
    /// 91: request rejected or failed.
    Rejected = 0x5B,
    /// 92: rejected because the server cannot connect to identd on the client.
    NoIdentd = 0x5C,
    /// 93: rejected because identd reported a different user-id.
    IdentMismatch = 0x5D,
}

impl ReplyCode4 {
    /// Decodes a reply byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x5A => Self::Granted,
            0x5B => Self::Rejected,
            0x5C => Self::NoIdentd,
            0x5D => Self::IdentMismatch,
            _ => return None,
        })
    }
}

impl From<ReplyCode> for ReplyCode4 {
    /// SOCKS4 has a single failure code for everything SOCKS5 distinguishes.
    fn from(c: ReplyCode) -> Self {
        match c {
            ReplyCode::Succeeded => Self::Granted,
            _ => Self::Rejected,
        }
    }
}

/// A parsed SOCKS4/4a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CONNECT or BIND.
    pub command: Command,
    /// DSTIP/DSTPORT, or the SOCKS4a host name and DSTPORT.
    pub target: TargetAddr,
    /// USERID (may be empty). SOCKS4 carries no password.
    pub userid: String,
}

/// Parses a request whose first byte is 4.
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(head) = buf.get(..8) else {
        if let (Some(&v), Some(&cd)) = (buf.first(), buf.get(1)) {
            check_head(v, cd)?;
        }
        return Ok(None);
    };
    let command = check_head(head[0], head[1])?;
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = Ipv4Addr::new(head[4], head[5], head[6], head[7]);

    let (user, after_user) = match nul_terminated(&buf[8..])? {
        None => return Ok(None),
        Some((field, n)) => (field, 8 + n),
    };
    // USERID is decoded (and allocated) only once the whole request is here, so a SOCKS4a
    // request trickling in allocates nothing on the attempts that return `None`.

    // SOCKS4a: 0.0.0.x with x non-zero means "a host name follows".
    let o = ip.octets();
    if o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0 {
        return match nul_terminated(&buf[after_user..])? {
            None => Ok(None),
            Some((host, n)) => {
                let host = domain(host)?;
                let target = TargetAddr::Domain(host, port);
                let userid = String::from_utf8_lossy(user).into_owned();
                Ok(Some((
                    Request {
                        command,
                        target,
                        userid,
                    },
                    after_user + n,
                )))
            }
        };
    }
    let target = TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port)));
    let userid = String::from_utf8_lossy(user).into_owned();
    Ok(Some((
        Request {
            command,
            target,
            userid,
        },
        after_user,
    )))
}

fn check_head(version: u8, cd: u8) -> Result<Command, ProtoError> {
    if version != VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    match cd {
        0x01 => Ok(Command::Connect),
        0x02 => Ok(Command::Bind),
        other => Err(ProtoError::UnknownCommand(other)),
    }
}

/// A NUL-terminated field of at most [`MAX_FIELD`] bytes: the field and the bytes taken
/// including the NUL.
fn nul_terminated(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtoError> {
    let window = &buf[..buf.len().min(MAX_FIELD + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(i) => Ok(Some((&buf[..i], i + 1))),
        None if window.len() > MAX_FIELD => Err(ProtoError::FieldTooLong(MAX_FIELD)),
        None => Ok(None),
    }
}

/// Appends a request (client side). A domain target produces SOCKS4a; an IPv6 target cannot be
/// expressed in SOCKS4 and is written as 0.0.0.0, which a server rejects.
pub fn encode_request(command: Command, target: &TargetAddr, userid: &[u8], out: &mut Vec<u8>) {
    let cd = match command {
        Command::Bind => 0x02,
        _ => 0x01,
    };
    out.extend_from_slice(&[VERSION, cd]);
    out.extend_from_slice(&target.port().to_be_bytes());
    match target {
        TargetAddr::Ip(SocketAddr::V4(a)) => out.extend_from_slice(&a.ip().octets()),
        TargetAddr::Ip(SocketAddr::V6(_)) => out.extend_from_slice(&[0, 0, 0, 0]),
        TargetAddr::Domain(..) => out.extend_from_slice(&[0, 0, 0, 1]),
    }
    out.extend_from_slice(&userid[..userid.len().min(MAX_FIELD)]);
    out.push(0);
    if let TargetAddr::Domain(d, _) = target {
        out.extend_from_slice(&d.as_bytes()[..d.len().min(MAX_FIELD)]);
        out.push(0);
    }
}

/// Appends a reply: VN=0, CD, DSTPORT, DSTIP. For a granted CONNECT the address is the
/// server's bound address when it is IPv4 (clients ignore it; BIND clients need it).
pub fn encode_reply(code: ReplyCode4, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    let (ip, port) = match bound {
        Some(SocketAddr::V4(a)) => (a.ip().octets(), a.port()),
        Some(SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => (v4.octets(), a.port()),
            None => ([0; 4], a.port()),
        },
        None => ([0; 4], 0),
    };
    out.extend_from_slice(&[REPLY_VERSION, code as u8]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&ip);
}

/// A reply as a client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// CD.
    pub code: ReplyCode4,
    /// DSTIP and DSTPORT.
    pub bound: SocketAddrV4,
}

/// Parses a reply (client side).
pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    let Some(b) = buf.get(..8) else {
        return Ok(None);
    };
    if b[0] != REPLY_VERSION {
        return Err(ProtoError::BadReply);
    }
    let code = ReplyCode4::from_u8(b[1]).ok_or(ProtoError::BadReply)?;
    let port = u16::from_be_bytes([b[2], b[3]]);
    let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    Ok(Some((
        Reply {
            code,
            bound: SocketAddrV4::new(ip, port),
        },
        8,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks4_connect_with_userid() {
        let req = b"\x04\x01\x00\x50\x0a\x00\x00\x01bob\x00";
        for k in 0..req.len() {
            assert_eq!(parse_request(&req[..k]), Ok(None), "prefix {k}");
        }
        let (r, n) = parse_request(req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(r.command, Command::Connect);
        assert_eq!(r.target, TargetAddr::Ip("10.0.0.1:80".parse().unwrap()));
        assert_eq!(r.userid, "bob");
    }

    #[test]
    fn socks4a_domain() {
        let req = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00trailing";
        let (r, n) = parse_request(req).unwrap().unwrap();
        assert_eq!(n, req.len() - b"trailing".len());
        assert_eq!(r.target, TargetAddr::Domain("example.com".into(), 443));
        assert_eq!(r.userid, "");
        assert_eq!(parse_request(&req[..n - 1]), Ok(None));
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"),
            Err(ProtoError::BadDomain)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_request(b"\x04\x03"),
            Err(ProtoError::UnknownCommand(3))
        );
        assert_eq!(
            parse_request(b"\x05\x01"),
            Err(ProtoError::UnsupportedVersion(5))
        );
        let mut long = b"\x04\x01\x00\x50\x01\x02\x03\x04".to_vec();
        long.extend(std::iter::repeat(b'a').take(MAX_FIELD));
        assert_eq!(parse_request(&long), Ok(None));
        long.push(b'a');
        assert_eq!(
            parse_request(&long),
            Err(ProtoError::FieldTooLong(MAX_FIELD))
        );
    }

    #[test]
    fn socks4a_limits_and_non_utf8_userid() {
        // A 255-byte host name is accepted; one byte more is too long.
        let mut req = b"\x04\x01\x00\x50\x00\x00\x00\x01\xff\xfe\x00".to_vec();
        req.extend(std::iter::repeat(b'h').take(MAX_FIELD));
        assert_eq!(parse_request(&req), Ok(None));
        let mut ok = req.clone();
        ok.push(0);
        let (r, n) = parse_request(&ok).unwrap().unwrap();
        assert_eq!(n, ok.len());
        assert_eq!(r.userid, "\u{fffd}\u{fffd}");
        req.push(b'h');
        assert_eq!(
            parse_request(&req),
            Err(ProtoError::FieldTooLong(MAX_FIELD))
        );
        // 0.0.0.0 is not SOCKS4a: it is an (unusable) IPv4 destination.
        let (r, _) = parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x00\x00")
            .unwrap()
            .unwrap();
        assert_eq!(r.target, TargetAddr::Ip("0.0.0.0:80".parse().unwrap()));
    }

    #[test]
    fn roundtrips() {
        for t in [
            TargetAddr::Ip("1.2.3.4:5".parse().unwrap()),
            TargetAddr::Domain("a.example".into(), 22),
        ] {
            let mut out = Vec::new();
            encode_request(Command::Bind, &t, b"u", &mut out);
            let (r, n) = parse_request(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(
                (r.command, r.target, r.userid.as_str()),
                (Command::Bind, t, "u")
            );
        }
        for code in [
            ReplyCode4::Granted,
            ReplyCode4::Rejected,
            ReplyCode4::NoIdentd,
            ReplyCode4::IdentMismatch,
        ] {
            let mut out = Vec::new();
            encode_reply(code, Some("9.8.7.6:1080".parse().unwrap()), &mut out);
            assert_eq!(out, [0, code as u8, 0x04, 0x38, 9, 8, 7, 6]);
            let (r, _) = parse_reply(&out).unwrap().unwrap();
            assert_eq!(r.code, code);
        }
        assert_eq!(parse_reply(&[0, 0x5A, 0, 0, 0, 0, 0]), Ok(None));
        assert_eq!(
            parse_reply(&[4, 0x5A, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::BadReply)
        );
        assert_eq!(
            parse_reply(&[0, 0x5E, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::BadReply)
        );
        assert_eq!(ReplyCode4::from(ReplyCode::Succeeded), ReplyCode4::Granted);
        assert_eq!(
            ReplyCode4::from(ReplyCode::ConnectionRefused),
            ReplyCode4::Rejected
        );
    }
}
