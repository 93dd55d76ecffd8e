//! Error types: configuration/setup errors ([`LoadError`]) and per-iteration failures ([`Fail`]),
//! which are counted by [`FailKind`] instead of aborting a run.

use std::fmt;
use std::io;

/// Fatal errors: bad arguments, a target that cannot be started, a report that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid argument: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("worker thread panicked")]
    WorkerPanicked,
}

impl LoadError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        LoadError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why one iteration (or tunnel, or datagram) failed. Counted per [`FailKind`].
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error("SOCKS5 reply {0:#04x} ({name})", name = socks5_reply_name(*.0))]
    Socks5Reply(u8),
    #[error("SOCKS4 reply {0:#04x} ({name})", name = socks4_reply_name(*.0))]
    Socks4Reply(u8),
    #[error("SOCKS6 operation reply {0:#04x} ({name})", name = socks6_reply_name(*.0))]
    Socks6Reply(u8),
    #[error("proxy refused socks6 (version mismatch reply, other version, or closed)")]
    Socks6Refused,
    #[error("SOCKS6 authentication failed (authentication reply type {0:#04x})")]
    Socks6AuthFailed(u8),
    #[error("username/password authentication rejected (status {0:#04x})")]
    AuthRejected(u8),
    #[error("SOCKS5 server accepted none of the offered methods (answered {0:#04x})")]
    NoAcceptableMethod(u8),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("timed out")]
    Timeout,
    #[error("byte count mismatch: {0}")]
    Mismatch(String),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// The key an error is counted under in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailKind {
    /// SOCKS5 reply code != 0.
    Socks5Reply(u8),
    /// SOCKS4 reply code != 0x5a.
    Socks4Reply(u8),
    /// SOCKS6 operation reply code != 0.
    Socks6Reply(u8),
    /// The proxy does not speak SOCKS 6.
    Socks6Refused,
    Auth,
    Protocol,
    ConnectRefused,
    ConnectError,
    Reset,
    Eof,
    Timeout,
    Mismatch,
    Unsupported,
    Io,
}

impl Fail {
    pub fn kind(&self) -> FailKind {
        match self {
            Fail::Socks5Reply(c) => FailKind::Socks5Reply(*c),
            Fail::Socks4Reply(c) => FailKind::Socks4Reply(*c),
            Fail::Socks6Reply(c) => FailKind::Socks6Reply(*c),
            Fail::Socks6Refused => FailKind::Socks6Refused,
            Fail::AuthRejected(_) | Fail::NoAcceptableMethod(_) | Fail::Socks6AuthFailed(_) => {
                FailKind::Auth
            }
            Fail::Protocol(_) => FailKind::Protocol,
            Fail::Connect(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => FailKind::ConnectRefused,
                io::ErrorKind::TimedOut => FailKind::Timeout,
                _ => FailKind::ConnectError,
            },
            Fail::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => FailKind::Reset,
                io::ErrorKind::UnexpectedEof => FailKind::Eof,
                io::ErrorKind::TimedOut => FailKind::Timeout,
                _ => FailKind::Io,
            },
            Fail::Timeout => FailKind::Timeout,
            Fail::Mismatch(_) => FailKind::Mismatch,
            Fail::Unsupported(_) => FailKind::Unsupported,
        }
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

impl fmt::Display for FailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailKind::Socks5Reply(c) => write!(f, "socks5_reply_{c:02x}_{}", socks5_reply_name(*c)),
            FailKind::Socks4Reply(c) => write!(f, "socks4_reply_{c:02x}"),
            FailKind::Socks6Reply(c) => write!(f, "socks6_reply_{c:02x}_{}", socks6_reply_name(*c)),
            FailKind::Socks6Refused => f.write_str("socks6_refused"),
            FailKind::Auth => f.write_str("auth"),
            FailKind::Protocol => f.write_str("protocol"),
            FailKind::ConnectRefused => f.write_str("connect_refused"),
            FailKind::ConnectError => f.write_str("connect_error"),
            FailKind::Reset => f.write_str("reset"),
            FailKind::Eof => f.write_str("eof"),
            FailKind::Timeout => f.write_str("timeout"),
            FailKind::Mismatch => f.write_str("byte_mismatch"),
            FailKind::Unsupported => f.write_str("unsupported"),
            FailKind::Io => f.write_str("io_error"),
        }
    }
}

/// RFC 1928 reply names, short and snake_case for report keys.
pub fn socks5_reply_name(code: u8) -> &'static str {
    match code {
        0x00 => "succeeded",
        0x01 => "general_failure",
        0x02 => "not_allowed",
        0x03 => "network_unreachable",
        0x04 => "host_unreachable",
        0x05 => "connection_refused",
        0x06 => "ttl_expired",
        0x07 => "command_not_supported",
        0x08 => "address_type_not_supported",
        _ => "unassigned",
    }
}

/// SOCKS 6 Operation Reply codes: SOCKS 5's, plus 0x09 "connection attempt timed out".
pub fn socks6_reply_name(code: u8) -> &'static str {
    match code {
        0x09 => "timed_out",
        c => socks5_reply_name(c),
    }
}

pub fn socks4_reply_name(code: u8) -> &'static str {
    match code {
        0x5a => "granted",
        0x5b => "rejected_or_failed",
        0x5c => "identd_unreachable",
        0x5d => "identd_mismatch",
        _ => "unassigned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds() {
        let reset = Fail::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(reset.kind(), FailKind::Reset);
        let eof = Fail::from(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(eof.kind(), FailKind::Eof);
        let refused = Fail::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.kind(), FailKind::ConnectRefused);
        assert_eq!(
            Fail::Socks5Reply(5).kind().to_string(),
            "socks5_reply_05_connection_refused"
        );
        assert_eq!(
            Fail::Socks6Reply(9).kind().to_string(),
            "socks6_reply_09_timed_out"
        );
        assert_eq!(Fail::Socks6Refused.kind().to_string(), "socks6_refused");
    }
}
