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
    /// The first byte is not a SOCKS version this server speaks, and it speaks SOCKS 6:
    /// answered with the SOCKS 6 Version Mismatch Reply (draft section 5).
    #[error("unsupported SOCKS version {0:#04x}, SOCKS6 version mismatch reply sent")]
    VersionMismatch(u8),
    /// A SOCKS 6 Options Length above 16 KiB or not a multiple of 4 (draft section 4).
    #[error("SOCKS6 options length {0} is over 16 KiB or not a multiple of 4")]
    BadOptionsLength(usize),
    /// A SOCKS 6 option whose Length is under 4, not a multiple of 4, past the Options field,
    /// or wrong for its kind (draft section 8).
    #[error("malformed SOCKS6 option of kind {0}")]
    BadOption(u16),
    /// A SOCKS 6 option the draft allows once (or whose information must not repeat), twice.
    #[error("duplicate SOCKS6 option of kind {0}")]
    DuplicateOption(u16),
    /// Non-zero or non-minimal padding in a SOCKS 6 message.
    #[error("bad SOCKS6 padding")]
    BadPadding,
    /// A SOCKS 6 Initial Data Length above 2^14 (draft section 8.2).
    #[error("SOCKS6 initial data length {0} is over 16384")]
    InitialDataTooLong(u16),
    /// A SOCKS 6 NOOP whose address is not an all-zero IPv4 or IPv6 address and port.
    #[error("SOCKS6 NOOP with an address")]
    BadNoop,
    /// Not an error: a SOCKS 6 NOOP was answered (the replies are in the output) and the client
    /// closes the connection now (draft section 7).
    #[error("SOCKS6 NOOP answered")]
    Noop,
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
    /// A SOCKS5 reply with this code (or the SOCKS4 equivalent for SOCKS4 clients). A SOCKS 6
    /// client, whose request failed before authentication, gets a failed Authentication Reply.
    Reply(ReplyCode),
    /// The SOCKS 6 Version Mismatch Reply, the single byte X'06' (draft section 5).
    VersionMismatch,
}

impl ProtoError {
    /// The answer this error deserves (RFC 1928 sections 3 and 6, RFC 1929 section 2).
    pub fn reply(&self) -> WireReply {
        match self {
            Self::UnsupportedVersion(_) | Self::BadReply | Self::Fragmented(_) | Self::Noop => {
                WireReply::None
            }
            Self::VersionMismatch(_) => WireReply::VersionMismatch,
            Self::NoMethods | Self::NoAcceptableMethod => WireReply::NoAcceptableMethods,
            Self::BadAuthVersion(_) | Self::EmptyUsername | Self::AuthFailed => {
                WireReply::AuthFailure
            }
            Self::BadRequestVersion(_)
            | Self::BadReserved(_)
            | Self::FieldTooLong(_)
            | Self::BadOptionsLength(_)
            | Self::BadOption(_)
            | Self::DuplicateOption(_)
            | Self::BadPadding
            | Self::InitialDataTooLong(_)
            | Self::BadNoop => WireReply::Reply(ReplyCode::GeneralFailure),
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
            Self::VersionMismatch(_) => "version-mismatch",
            Self::BadOptionsLength(_) => "bad-options-length",
            Self::BadOption(_) => "bad-option",
            Self::DuplicateOption(_) => "duplicate-option",
            Self::BadPadding => "bad-padding",
            Self::InitialDataTooLong(_) => "initial-data-too-long",
            Self::BadNoop => "bad-noop",
            Self::Noop => "noop",
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
            (
                ProtoError::VersionMismatch(7),
                WireReply::VersionMismatch,
                "version-mismatch",
            ),
            (
                ProtoError::BadOptionsLength(5),
                WireReply::Reply(R::GeneralFailure),
                "bad-options-length",
            ),
            (
                ProtoError::BadOption(2),
                WireReply::Reply(R::GeneralFailure),
                "bad-option",
            ),
            (
                ProtoError::DuplicateOption(4),
                WireReply::Reply(R::GeneralFailure),
                "duplicate-option",
            ),
            (
                ProtoError::BadPadding,
                WireReply::Reply(R::GeneralFailure),
                "bad-padding",
            ),
            (
                ProtoError::InitialDataTooLong(20000),
                WireReply::Reply(R::GeneralFailure),
                "initial-data-too-long",
            ),
            (
                ProtoError::BadNoop,
                WireReply::Reply(R::GeneralFailure),
                "bad-noop",
            ),
            (ProtoError::Noop, WireReply::None, "noop"),
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
