//! Typed protocol errors and the reply each one puts on the wire.

use super::ReplyCode;

/// Why a client's bytes were rejected. Each variant knows what, if anything, the server answers
/// before closing ([`ProtoError::reply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The first byte is not a SOCKS version this server speaks (4 or 5).
    #[error("unsupported SOCKS version {0:#04x}")]
    UnsupportedVersion(u8),
    /// A SOCKS5 greeting offering zero methods (RFC 1928 section 3 requires at least one).
    #[error("greeting offers no authentication methods")]
    NoMethods,
    /// None of the offered methods is acceptable; answered with X'FF'.
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// RFC 1929 sub-negotiation with a version other than X'01'.
    #[error("unsupported username/password sub-negotiation version {0:#04x}")]
    BadAuthVersion(u8),
    /// RFC 1929 credentials with a zero-length username.
    #[error("empty username")]
    EmptyUsername,
    /// Credentials did not match a configured user.
    #[error("authentication failed")]
    AuthFailed,
    /// A SOCKS5 request whose version byte is not X'05'.
    #[error("request version {0:#04x} is not 5")]
    BadRequestVersion(u8),
    /// A SOCKS5 request with a non-zero reserved byte.
    #[error("reserved byte {0:#04x} is not zero")]
    BadReserved(u8),
    /// Unknown command byte (SOCKS5 X'07', SOCKS4 91).
    #[error("unknown command {0:#04x}")]
    UnknownCommand(u8),
    /// Unknown SOCKS5 address type (X'08').
    #[error("unknown address type {0:#04x}")]
    UnknownAddressType(u8),
    /// A domain name of zero length, or one that is not a plausible host name.
    #[error("invalid domain name")]
    BadDomain,
    /// A SOCKS4 USERID or SOCKS4a host name longer than the server accepts.
    #[error("SOCKS4 field longer than {0} bytes")]
    FieldTooLong(usize),
    /// SOCKS4 request received while users are configured and SOCKS4 is not explicitly allowed.
    #[error("SOCKS4 carries no password and users are configured")]
    Socks4NotAllowed,
    /// A UDP request header with a non-zero FRAG field (fragmentation is not supported).
    #[error("fragmented UDP datagram (FRAG {0}) is not supported")]
    Fragmented(u8),
    /// A reply with an unexpected version or an unassigned code (client-side decoding).
    #[error("malformed reply")]
    BadReply,
}

/// What goes on the wire before the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireReply {
    /// Close without answering (the peer did not speak a protocol we can answer in).
    None,
    /// SOCKS5 method selection X'05 FF'.
    NoAcceptableMethods,
    /// RFC 1929 status X'01 01' (failure).
    AuthFailure,
    /// A SOCKS5 reply with this code (or the SOCKS4 equivalent for SOCKS4 clients).
    Reply(ReplyCode),
}

impl ProtoError {
    /// The answer this error deserves (RFC 1928 sections 3 and 6, RFC 1929 section 2).
    pub fn reply(&self) -> WireReply {
        match self {
            Self::UnsupportedVersion(_) | Self::BadReply | Self::Fragmented(_) => WireReply::None,
            Self::NoMethods | Self::NoAcceptableMethod => WireReply::NoAcceptableMethods,
            Self::BadAuthVersion(_) | Self::EmptyUsername | Self::AuthFailed => {
                WireReply::AuthFailure
            }
            Self::BadRequestVersion(_) | Self::BadReserved(_) | Self::FieldTooLong(_) => {
                WireReply::Reply(ReplyCode::GeneralFailure)
            }
            Self::UnknownCommand(_) => WireReply::Reply(ReplyCode::CommandNotSupported),
            Self::UnknownAddressType(_) => WireReply::Reply(ReplyCode::AddressTypeNotSupported),
            Self::BadDomain => WireReply::Reply(ReplyCode::HostUnreachable),
            Self::Socks4NotAllowed => WireReply::Reply(ReplyCode::NotAllowed),
        }
    }

    /// Short stable name used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UnsupportedVersion(_) => "bad-version",
            Self::NoMethods => "no-methods",
            Self::NoAcceptableMethod => "no-acceptable-method",
            Self::BadAuthVersion(_) => "bad-auth-version",
            Self::EmptyUsername => "empty-username",
            Self::AuthFailed => "auth-failed",
            Self::BadRequestVersion(_) => "bad-request-version",
            Self::BadReserved(_) => "bad-reserved",
            Self::UnknownCommand(_) => "unknown-command",
            Self::UnknownAddressType(_) => "unknown-address-type",
            Self::BadDomain => "bad-domain",
            Self::FieldTooLong(_) => "field-too-long",
            Self::Socks4NotAllowed => "socks4-not-allowed",
            Self::Fragmented(_) => "fragmented",
            Self::BadReply => "bad-reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_reply_and_name() {
        use ReplyCode as R;
        let table = [
            (
                ProtoError::UnsupportedVersion(6),
                WireReply::None,
                "bad-version",
            ),
            (
                ProtoError::NoMethods,
                WireReply::NoAcceptableMethods,
                "no-methods",
            ),
            (
                ProtoError::NoAcceptableMethod,
                WireReply::NoAcceptableMethods,
                "no-acceptable-method",
            ),
            (
                ProtoError::BadAuthVersion(5),
                WireReply::AuthFailure,
                "bad-auth-version",
            ),
            (
                ProtoError::EmptyUsername,
                WireReply::AuthFailure,
                "empty-username",
            ),
            (
                ProtoError::AuthFailed,
                WireReply::AuthFailure,
                "auth-failed",
            ),
            (
                ProtoError::BadRequestVersion(4),
                WireReply::Reply(R::GeneralFailure),
                "bad-request-version",
            ),
            (
                ProtoError::BadReserved(1),
                WireReply::Reply(R::GeneralFailure),
                "bad-reserved",
            ),
            (
                ProtoError::UnknownCommand(7),
                WireReply::Reply(R::CommandNotSupported),
                "unknown-command",
            ),
            (
                ProtoError::UnknownAddressType(8),
                WireReply::Reply(R::AddressTypeNotSupported),
                "unknown-address-type",
            ),
            (
                ProtoError::BadDomain,
                WireReply::Reply(R::HostUnreachable),
                "bad-domain",
            ),
            (
                ProtoError::FieldTooLong(255),
                WireReply::Reply(R::GeneralFailure),
                "field-too-long",
            ),
            (
                ProtoError::Socks4NotAllowed,
                WireReply::Reply(R::NotAllowed),
                "socks4-not-allowed",
            ),
            (ProtoError::Fragmented(1), WireReply::None, "fragmented"),
            (ProtoError::BadReply, WireReply::None, "bad-reply"),
        ];
        for (e, reply, name) in table {
            assert_eq!(e.reply(), reply, "{e}");
            assert_eq!(e.as_str(), name);
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            ProtoError::UnsupportedVersion(0x47).to_string(),
            "unsupported SOCKS version 0x47"
        );
    }
}
