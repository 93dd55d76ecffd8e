//! Username/password authentication for SOCKS5, RFC 1929 section 2.

use super::{Parsed, ProtoError};

/// Sub-negotiation version byte.
pub const VERSION: u8 = 0x01;
/// STATUS X'00': success. Any other value is failure.
pub const STATUS_SUCCESS: u8 = 0x00;
/// STATUS used for failures.
pub const STATUS_FAILURE: u8 = 0x01;

/// Borrowed credentials from the wire: UNAME and PASSWD (1 to 255 and 0 to 255 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRequest<'a> {
    /// UNAME.
    pub username: &'a [u8],
    /// PASSWD. Never log it.
    pub password: &'a [u8],
}

/// Parses VER, ULEN, UNAME, PLEN, PASSWD.
pub fn parse_request(buf: &[u8]) -> Parsed<AuthRequest<'_>> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::BadAuthVersion(ver));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    let ulen = ulen as usize;
    let Some(&plen) = buf.get(2 + ulen) else {
        return Ok(None);
    };
    let plen = plen as usize;
    let end = 3 + ulen + plen;
    if buf.len() < end {
        return Ok(None);
    }
    if ulen == 0 {
        return Err(ProtoError::EmptyUsername);
    }
    let req = AuthRequest {
        username: &buf[2..2 + ulen],
        password: &buf[3 + ulen..end],
    };
    Ok(Some((req, end)))
}

/// Appends a request (client side). Fields longer than 255 bytes are truncated.
pub fn encode_request(username: &[u8], password: &[u8], out: &mut Vec<u8>) {
    let u = &username[..username.len().min(255)];
    let p = &password[..password.len().min(255)];
    out.push(VERSION);
    out.push(u.len() as u8);
    out.extend_from_slice(u);
    out.push(p.len() as u8);
    out.extend_from_slice(p);
}

/// Appends the server's response: VER, STATUS.
pub fn encode_response(success: bool, out: &mut Vec<u8>) {
    let status = if success {
        STATUS_SUCCESS
    } else {
        STATUS_FAILURE
    };
    out.extend_from_slice(&[VERSION, status]);
}

/// Parses the server's response (client side): `true` on success.
pub fn parse_response(buf: &[u8]) -> Parsed<bool> {
    match buf.get(..2) {
        None => Ok(None),
        Some(&[VERSION, status]) => Ok(Some((status == STATUS_SUCCESS, 2))),
        Some(_) => Err(ProtoError::BadReply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_prefix() {
        let mut out = Vec::new();
        encode_request(b"alice", b"s3cret", &mut out);
        assert_eq!(out, b"\x01\x05alice\x06s3cret");
        for k in 0..out.len() {
            assert_eq!(parse_request(&out[..k]), Ok(None), "prefix {k}");
        }
        let (r, n) = parse_request(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(r.username, b"alice");
        assert_eq!(r.password, b"s3cret");
    }

    #[test]
    fn empty_password_is_allowed_empty_user_is_not() {
        let (r, _) = parse_request(b"\x01\x01a\x00").unwrap().unwrap();
        assert_eq!(r.password, b"");
        assert_eq!(
            parse_request(b"\x01\x00\x01p"),
            Err(ProtoError::EmptyUsername)
        );
        assert_eq!(
            parse_request(b"\x05\x01a\x00"),
            Err(ProtoError::BadAuthVersion(5))
        );
    }

    #[test]
    fn longest_fields_and_truncation() {
        let long = [b'x'; 300];
        let mut out = Vec::new();
        encode_request(&long, &long, &mut out);
        assert_eq!(out.len(), 3 + 255 + 255);
        let (r, n) = parse_request(&out).unwrap().unwrap();
        assert_eq!(
            (r.username.len(), r.password.len(), n),
            (255, 255, out.len())
        );
    }

    #[test]
    fn response() {
        let mut out = Vec::new();
        encode_response(true, &mut out);
        encode_response(false, &mut out);
        assert_eq!(out, [1, 0, 1, 1]);
        assert_eq!(parse_response(&out), Ok(Some((true, 2))));
        assert_eq!(parse_response(&out[2..]), Ok(Some((false, 2))));
        assert_eq!(parse_response(&[1]), Ok(None));
        assert_eq!(parse_response(&[5, 0]), Err(ProtoError::BadReply));
    }
}
