//! The SOCKS wire protocols as a pure codec: no sockets, no clock.
//!
//! Every parser takes borrowed bytes and returns `Ok(None)` when it needs more input,
//! `Ok(Some((message, consumed)))` when a whole message was read, and `Err` when the bytes are
//! malformed. Encoders append to a buffer the caller owns. [`Handshake`] drives the server side
//! of SOCKS4, SOCKS4a, SOCKS5 (with RFC 1929 username/password) and SOCKS 6 on top of these
//! parsers and hands the parsed request back to the caller, which decides what to reply.

mod addr;
mod error;
mod handshake;
pub mod proxy;
pub mod rfc1929;
pub mod socks4;
pub mod socks5;
pub mod socks6;
pub mod udp;
pub mod upstream;

pub use addr::TargetAddr;
pub use error::{ProtoError, WireReply};
pub use handshake::{AuthPolicy, Credentials, Event, Handshake, Request};

/// The outcome of a parse: `None` when more bytes are needed, else the message and how many
/// bytes it took.
pub type Parsed<T> = Result<Option<(T, usize)>, ProtoError>;

/// The SOCKS protocol version a client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// SOCKS4 or SOCKS4a (the two share version byte 0x04).
    V4,
    /// SOCKS5, RFC 1928.
    V5,
    /// SOCKS 6, draft-olteanu-intarea-socks-6-11.
    V6,
}

/// The command of a request (RFC 1928 section 4; SOCKS4 has the first two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (0x01).
    Connect,
    /// BIND (0x02).
    Bind,
    /// UDP ASSOCIATE (0x03, SOCKS5 only).
    UdpAssociate,
}

impl Command {
    /// Name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp",
        }
    }
}

/// SOCKS5 reply codes, RFC 1928 section 6. SOCKS4 replies are derived from these in
/// [`socks4::ReplyCode::from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode {
    /// X'00' succeeded.
    Succeeded = 0x00,
    /// X'01' general SOCKS server failure.
    GeneralFailure = 0x01,
    /// X'02' connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// X'03' network unreachable.
    NetworkUnreachable = 0x03,
    /// X'04' host unreachable.
    HostUnreachable = 0x04,
    /// X'05' connection refused.
    ConnectionRefused = 0x05,
    /// X'06' TTL expired.
    TtlExpired = 0x06,
    /// X'07' command not supported.
    CommandNotSupported = 0x07,
    /// X'08' address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl ReplyCode {
    /// Decodes a reply byte; unassigned values (X'09' to X'FF') are `None`.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x00 => Self::Succeeded,
            0x01 => Self::GeneralFailure,
            0x02 => Self::NotAllowed,
            0x03 => Self::NetworkUnreachable,
            0x04 => Self::HostUnreachable,
            0x05 => Self::ConnectionRefused,
            0x06 => Self::TtlExpired,
            0x07 => Self::CommandNotSupported,
            0x08 => Self::AddressTypeNotSupported,
            _ => return None,
        })
    }

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::GeneralFailure => "general-failure",
            Self::NotAllowed => "not-allowed",
            Self::NetworkUnreachable => "network-unreachable",
            Self::HostUnreachable => "host-unreachable",
            Self::ConnectionRefused => "connection-refused",
            Self::TtlExpired => "ttl-expired",
            Self::CommandNotSupported => "command-not-supported",
            Self::AddressTypeNotSupported => "address-type-not-supported",
        }
    }

    /// The reply that best describes a failed outbound connect or resolve.
    pub fn from_io_error(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::ConnectionRefused,
            K::NetworkUnreachable => Self::NetworkUnreachable,
            K::HostUnreachable | K::TimedOut | K::NotFound => Self::HostUnreachable,
            K::PermissionDenied => Self::NotAllowed,
            _ => match e.raw_os_error() {
                Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => Self::NetworkUnreachable,
                Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) | Some(libc::ETIMEDOUT) => {
                    Self::HostUnreachable
                }
                Some(libc::ECONNREFUSED) => Self::ConnectionRefused,
                // The host cannot reach that address family at all.
                Some(libc::EAFNOSUPPORT) => Self::AddressTypeNotSupported,
                _ => Self::GeneralFailure,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn reply_code_bytes_and_names() {
        let mut names = std::collections::HashSet::new();
        for b in 0u8..=8 {
            let c = ReplyCode::from_u8(b).unwrap();
            assert_eq!(c as u8, b);
            assert!(names.insert(c.as_str()));
        }
        for b in 9u8..=255 {
            assert_eq!(ReplyCode::from_u8(b), None);
        }
        assert_eq!(Command::Connect.as_str(), "connect");
        assert_eq!(Command::Bind.as_str(), "bind");
        assert_eq!(Command::UdpAssociate.as_str(), "udp");
    }

    #[test]
    fn reply_code_from_io_error() {
        let cases = [
            (
                Error::from(ErrorKind::ConnectionRefused),
                ReplyCode::ConnectionRefused,
            ),
            (Error::from(ErrorKind::TimedOut), ReplyCode::HostUnreachable),
            (Error::from(ErrorKind::NotFound), ReplyCode::HostUnreachable),
            (
                Error::from(ErrorKind::PermissionDenied),
                ReplyCode::NotAllowed,
            ),
            (Error::from(ErrorKind::Other), ReplyCode::GeneralFailure),
            (
                Error::from_raw_os_error(libc::ECONNREFUSED),
                ReplyCode::ConnectionRefused,
            ),
            (
                Error::from_raw_os_error(libc::ENETUNREACH),
                ReplyCode::NetworkUnreachable,
            ),
            (
                Error::from_raw_os_error(libc::ENETDOWN),
                ReplyCode::NetworkUnreachable,
            ),
            (
                Error::from_raw_os_error(libc::EHOSTUNREACH),
                ReplyCode::HostUnreachable,
            ),
            (
                Error::from_raw_os_error(libc::EHOSTDOWN),
                ReplyCode::HostUnreachable,
            ),
            (
                Error::from_raw_os_error(libc::ETIMEDOUT),
                ReplyCode::HostUnreachable,
            ),
            (
                Error::from_raw_os_error(libc::EAFNOSUPPORT),
                ReplyCode::AddressTypeNotSupported,
            ),
            (
                // Ephemeral ports exhausted: a server-side failure, not the address's fault.
                Error::from_raw_os_error(libc::EADDRNOTAVAIL),
                ReplyCode::GeneralFailure,
            ),
            (
                Error::from_raw_os_error(libc::EMFILE),
                ReplyCode::GeneralFailure,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(ReplyCode::from_io_error(&e), code, "{e}");
        }
    }
}
