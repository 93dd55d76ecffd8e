//! The server side of a SOCKS4/4a/5 handshake as a sans-I/O state machine.
//!
//! The caller reads bytes from the client into a buffer, calls [`Handshake::advance`] with the
//! unconsumed part, writes whatever was appended to `out`, and acts on the [`Event`]:
//! read more, check credentials ([`Handshake::authenticated`]), or carry out the request and
//! answer it with [`Handshake::reply`]. Replies are only appended, never written here, so the
//! caller can coalesce the method selection and the request reply of a pipelining client into
//! one write. On error, the reply the error deserves is already in `out`.

use std::net::SocketAddr;

use super::error::WireReply;
use super::{rfc1929, socks4, socks5, Command, ProtoError, ReplyCode, TargetAddr, Version};

/// What the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthPolicy {
    /// Users are configured: SOCKS5 clients must authenticate with RFC 1929.
    pub password_required: bool,
    /// Accept SOCKS4/4a (which carries no password) even when users are configured.
    pub allow_socks4: bool,
}

/// Credentials offered by a client, borrowed from the input buffer. Never log `password`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// RFC 1929 UNAME.
    pub username: &'a [u8],
    /// RFC 1929 PASSWD.
    pub password: &'a [u8],
}

/// A complete request, ready for the caller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// SOCKS4 (incl. 4a) or SOCKS5.
    pub version: Version,
    /// What the client asks for.
    pub command: Command,
    /// DST.ADDR and DST.PORT.
    pub target: TargetAddr,
    /// The SOCKS4 USERID (unauthenticated), if any.
    pub userid: Option<String>,
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Flush `out`, then read more bytes and call `advance` again.
    NeedMore,
    /// Check these credentials and report with [`Handshake::authenticated`] before advancing.
    Authenticate(Credentials<'a>),
    /// The request is complete; bytes after it (already consumed count excludes them) are
    /// payload for the destination.
    Request(Request),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: the first byte picks the version.
    Start,
    /// SOCKS5 method selection sent choosing username/password: expecting RFC 1929.
    Auth,
    /// Credentials handed to the caller; waiting for its verdict.
    AuthPending,
    /// SOCKS5 authenticated (or no auth): expecting the request.
    Request,
    /// A request was returned or an error occurred.
    Done(Version),
}

/// Server-side handshake state.
#[derive(Debug, Clone)]
pub struct Handshake {
    policy: AuthPolicy,
    state: State,
}

impl Handshake {
    /// A fresh handshake for one client connection.
    pub fn new(policy: AuthPolicy) -> Self {
        Handshake {
            policy,
            state: State::Start,
        }
    }

    /// Consumes as much of `input` as forms whole messages, appends replies to `out`, and says
    /// what to do next along with how many bytes of `input` were consumed. On error the
    /// connection must be closed after `out` is written.
    pub fn advance<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<(Event<'a>, usize), ProtoError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let step = match self.state {
                State::Start => self.start(rest, out),
                State::Auth => match rfc1929::parse_request(rest) {
                    Ok(None) => Ok(None),
                    Ok(Some((req, n))) => {
                        self.state = State::AuthPending;
                        let creds = Credentials {
                            username: req.username,
                            password: req.password,
                        };
                        return Ok((Event::Authenticate(creds), used + n));
                    }
                    Err(e) => Err(e),
                },
                State::AuthPending => {
                    // The caller must report the verdict first; nothing more is consumed.
                    return Ok((Event::NeedMore, used));
                }
                State::Request => match socks5::parse_request(rest) {
                    Ok(None) => Ok(None),
                    Ok(Some((req, n))) => {
                        self.state = State::Done(Version::V5);
                        let request = Request {
                            version: Version::V5,
                            command: req.command,
                            target: req.target,
                            userid: None,
                        };
                        return Ok((Event::Request(request), used + n));
                    }
                    Err(e) => Err(e),
                },
                State::Done(_) => return Ok((Event::NeedMore, used)),
            };
            match step {
                Ok(None) => return Ok((Event::NeedMore, used)),
                Ok(Some(Step::Consumed(n))) => used += n,
                Ok(Some(Step::Request(req, n))) => return Ok((Event::Request(req), used + n)),
                Err(e) => {
                    self.fail(&e, out);
                    return Err(e);
                }
            }
        }
    }

    /// Reports the verdict on the credentials of the last [`Event::Authenticate`] and appends
    /// the RFC 1929 status. On failure the connection must be closed after `out` is written.
    pub fn authenticated(&mut self, ok: bool, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        debug_assert_eq!(self.state, State::AuthPending);
        rfc1929::encode_response(ok, out);
        if ok {
            self.state = State::Request;
            Ok(())
        } else {
            self.state = State::Done(Version::V5);
            Err(ProtoError::AuthFailed)
        }
    }

    /// Appends the reply to the request in the client's protocol version. `bound` is BND.ADDR
    /// and BND.PORT (for CONNECT, the server's address on the outbound connection).
    pub fn reply(&self, code: ReplyCode, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
        encode_reply(self.version(), code, bound, out);
    }

    /// The version the client spoke, once known (SOCKS5 before the first byte is assumed).
    pub fn version(&self) -> Version {
        match self.state {
            State::Done(v) => v,
            _ => Version::V5,
        }
    }

    fn start(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Result<Option<Step>, ProtoError> {
        let Some(&ver) = rest.first() else {
            return Ok(None);
        };
        match ver {
            socks5::VERSION => {
                let Some((methods, n)) = socks5::parse_greeting(rest)? else {
                    return Ok(None);
                };
                let method = if self.policy.password_required {
                    methods
                        .contains(socks5::METHOD_USERPASS)
                        .then_some(socks5::METHOD_USERPASS)
                } else if methods.contains(socks5::METHOD_NO_AUTH) {
                    Some(socks5::METHOD_NO_AUTH)
                } else if methods.contains(socks5::METHOD_USERPASS) {
                    // An open proxy still serves clients that insist on sending credentials.
                    Some(socks5::METHOD_USERPASS)
                } else {
                    None
                };
                let Some(method) = method else {
                    return Err(ProtoError::NoAcceptableMethod);
                };
                socks5::encode_method_selection(method, out);
                self.state = if method == socks5::METHOD_USERPASS {
                    State::Auth
                } else {
                    State::Request
                };
                Ok(Some(Step::Consumed(n)))
            }
            socks4::VERSION => {
                let parsed = socks4::parse_request(rest);
                if !matches!(parsed, Ok(None)) {
                    // Replies from here on are SOCKS4 replies, errors included.
                    self.state = State::Done(Version::V4);
                }
                let Some((req, n)) = parsed? else {
                    return Ok(None);
                };
                if self.policy.password_required && !self.policy.allow_socks4 {
                    return Err(ProtoError::Socks4NotAllowed);
                }
                let request = Request {
                    version: Version::V4,
                    command: req.command,
                    target: req.target,
                    userid: Some(req.userid).filter(|u| !u.is_empty()),
                };
                Ok(Some(Step::Request(request, n)))
            }
            other => Err(ProtoError::UnsupportedVersion(other)),
        }
    }

    fn fail(&mut self, e: &ProtoError, out: &mut Vec<u8>) {
        let version = self.version();
        self.state = State::Done(version);
        match e.reply() {
            WireReply::None => {}
            WireReply::NoAcceptableMethods => {
                socks5::encode_method_selection(socks5::METHOD_NONE_ACCEPTABLE, out)
            }
            WireReply::AuthFailure => rfc1929::encode_response(false, out),
            WireReply::Reply(code) => encode_reply(version, code, None, out),
        }
    }
}

enum Step {
    Consumed(usize),
    Request(Request, usize),
}

/// Appends a request reply in the given protocol version.
pub fn encode_reply(version: Version, code: ReplyCode, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
    match version {
        Version::V5 => socks5::encode_reply(code, bound, out),
        Version::V4 => socks4::encode_reply(code.into(), bound, out),
    }
}
