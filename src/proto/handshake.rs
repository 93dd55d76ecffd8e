//! The server side of a SOCKS4/4a/5/6 handshake as a sans-I/O state machine.
//!
//! The caller reads bytes from the client into a buffer, calls [`Handshake::advance`] with the
//! unconsumed part, writes whatever was appended to `out`, and acts on the [`Event`]:
//! read more, check credentials ([`Handshake::authenticated`]), or carry out the request and
//! answer it with [`Handshake::reply`]. Replies are only appended, never written here, so the
//! caller can coalesce the method selection and the request reply of a pipelining client into
//! one write. On error, the reply the error deserves is already in `out`.
//!
//! SOCKS 6 (draft-olteanu-intarea-socks-6-11) puts the whole handshake in one Request:
//! - Username/password in the Request's Authentication Data option gives
//!   [`Event::Authenticate`]; [`Handshake::authenticated`] then appends the Authentication Reply
//!   (success or failure, carrying the RFC 1929 status in an Authentication Data option) and
//!   the next `advance` returns the request without consuming anything.
//! - Without credentials, an open server appends a successful Authentication Reply when it
//!   returns the request; one with users answers a failed Authentication Reply selecting "no
//!   acceptable methods" ([`ProtoError::NoAcceptableMethod`]). The draft's multi-round
//!   authentication (a method selected in a failed reply, then negotiated) is not offered.
//! - [`Request::initial_data`] bytes of a CONNECT follow the Request: they are not consumed
//!   here. [`Request::fast_open`] says the client asked for TCP Fast Open towards the target.
//! - A NOOP is answered at once (a successful Authentication Reply and Operation Reply) and
//!   reported as [`ProtoError::Noop`]: write `out` and close, as the client will.
//! - With [`AuthPolicy::allow_socks6`] on, a first byte other than 4, 5 or 6 gets the Version
//!   Mismatch Reply X'06' ([`ProtoError::VersionMismatch`], draft section 5). With it off, the
//!   server is a SOCKS4/5 server: a SOCKS 6 request is an unsupported version, closed without a
//!   reply as before (the draft prescribes nothing for servers that do not speak SOCKS 6).

use std::net::SocketAddr;

use super::error::WireReply;
use super::socks6::{self, AuthReply, Command6};
use super::{rfc1929, socks4, socks5, Command, ProtoError, ReplyCode, TargetAddr, Version};

/// What the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthPolicy {
    /// Users are configured: SOCKS5 clients must authenticate with RFC 1929.
    pub password_required: bool,
    /// Accept SOCKS4/4a (which carries no password) even when users are configured.
    pub allow_socks4: bool,
    /// Speak SOCKS 6 (draft-olteanu-intarea-socks-6-11); when off, version 6 is unsupported.
    pub allow_socks6: bool,
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
    /// SOCKS4 (incl. 4a), SOCKS5 or SOCKS 6.
    pub version: Version,
    /// What the client asks for.
    pub command: Command,
    /// DST.ADDR and DST.PORT.
    pub target: TargetAddr,
    /// The SOCKS4 USERID (unauthenticated), if any.
    pub userid: Option<String>,
    /// SOCKS 6 CONNECT: bytes of initial data that follow the request (at most 2^14), to read
    /// before connecting and send in the first segment to the target. 0 otherwise.
    pub initial_data: u16,
    /// SOCKS 6: the client asked for TCP Fast Open on the proxy-remote leg. Report whether it
    /// was used with [`Handshake::reply_fast_open`].
    pub fast_open: bool,
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
    /// The first byte was 4 but the SOCKS4 request is incomplete (nothing consumed yet).
    Socks4,
    /// The first byte was 6 but the SOCKS 6 request is incomplete (nothing consumed yet).
    Socks6,
    /// SOCKS 6 credentials handed to the caller; the request waits in `pending`.
    AuthPending6,
    /// SOCKS 6 credentials accepted: the next `advance` returns the request in `pending`.
    Ready6,
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
    /// A SOCKS 6 request parsed along with its credentials, until they are judged.
    pending: Option<Pending6>,
}

/// The owned parts of a SOCKS 6 request that outlive the input buffer.
#[derive(Debug, Clone)]
struct Pending6 {
    command: Command6,
    target: TargetAddr,
    initial_data: u16,
    fast_open: bool,
}

impl Handshake {
    /// A fresh handshake for one client connection.
    pub fn new(policy: AuthPolicy) -> Self {
        Handshake {
            policy,
            state: State::Start,
            pending: None,
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
                State::Start | State::Socks4 | State::Socks6 => self.start(rest, out),
                State::Ready6 => match self.pending.take() {
                    Some(p) => self.finish6(p, 0, out),
                    None => return Ok((Event::NeedMore, used)),
                },
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
                State::AuthPending | State::AuthPending6 => {
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
                            initial_data: 0,
                            fast_open: false,
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
                Ok(Some(Step::Authenticate(creds, n))) => {
                    return Ok((Event::Authenticate(creds), used + n))
                }
                Err(e) => {
                    self.fail(&e, out);
                    return Err(e);
                }
            }
        }
    }

    /// Reports the verdict on the credentials of the last [`Event::Authenticate`] and appends
    /// the RFC 1929 status (SOCKS 6: the Authentication Reply). On failure the connection must
    /// be closed after `out` is written.
    pub fn authenticated(&mut self, ok: bool, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        if self.state == State::AuthPending6 {
            let reply = AuthReply {
                success: ok,
                selected: None,
                password_ok: Some(ok),
            };
            socks6::encode_auth_reply(&reply, out);
            if ok {
                self.state = State::Ready6;
                return Ok(());
            }
            self.pending = None;
            self.state = State::Done(Version::V6);
            return Err(ProtoError::AuthFailed);
        }
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

    /// [`Handshake::reply`], reporting to a SOCKS 6 client that TCP Fast Open was used towards
    /// the target with this SYN payload size (0: unspecified). SOCKS4/5 replies ignore it.
    pub fn reply_fast_open(
        &self,
        code: ReplyCode,
        bound: Option<SocketAddr>,
        fast_open: Option<u16>,
        out: &mut Vec<u8>,
    ) {
        match self.version() {
            Version::V6 => socks6::encode_operation_reply(code.into(), bound, fast_open, out),
            v => encode_reply(v, code, bound, out),
        }
    }

    /// The version the client spoke, once known (SOCKS5 before the first byte is assumed).
    pub fn version(&self) -> Version {
        match self.state {
            State::Done(v) => v,
            State::Socks4 => Version::V4,
            State::Socks6 | State::AuthPending6 | State::Ready6 => Version::V6,
            _ => Version::V5,
        }
    }

    /// Ends a SOCKS 6 request once authenticated: a NOOP is answered here (draft section 7),
    /// anything else goes to the caller. `n` is what the request took of the input.
    fn finish6<'a>(
        &mut self,
        p: Pending6,
        n: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<Step<'a>>, ProtoError> {
        self.state = State::Done(Version::V6);
        let command = match p.command {
            Command6::Op(c) => c,
            Command6::Noop => {
                socks6::encode_operation_reply(socks6::ReplyCode6::Succeeded, None, None, out);
                return Err(ProtoError::Noop);
            }
        };
        let request = Request {
            version: Version::V6,
            command,
            target: p.target,
            userid: None,
            // Only a CONNECT is followed by initial data (draft section 8.2).
            initial_data: if command == Command::Connect {
                p.initial_data
            } else {
                0
            },
            fast_open: p.fast_open,
        };
        Ok(Some(Step::Request(request, n)))
    }

    fn start<'a>(
        &mut self,
        rest: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Step<'a>>, ProtoError> {
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
                // Replies from here on are SOCKS4 replies, errors included.
                self.state = if matches!(parsed, Ok(None)) {
                    State::Socks4
                } else {
                    State::Done(Version::V4)
                };
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
                    initial_data: 0,
                    fast_open: false,
                };
                Ok(Some(Step::Request(request, n)))
            }
            socks6::VERSION if self.policy.allow_socks6 => {
                let parsed = socks6::parse_request(rest);
                // Replies from here on are SOCKS 6 replies, errors included.
                self.state = if matches!(parsed, Ok(None)) {
                    State::Socks6
                } else {
                    State::Done(Version::V6)
                };
                let Some((req, n)) = parsed? else {
                    return Ok(None);
                };
                let pending = Pending6 {
                    command: req.command,
                    target: req.target,
                    initial_data: req.initial_data,
                    fast_open: req.fast_open.is_some_and(|f| f.leg.proxy_remote()),
                };
                if let Some(auth) = req.auth {
                    // Checked whatever the policy, as an open SOCKS5 server checks the
                    // credentials of a client that insists on sending them.
                    self.pending = Some(pending);
                    self.state = State::AuthPending6;
                    let creds = Credentials {
                        username: auth.username,
                        password: auth.password,
                    };
                    return Ok(Some(Step::Authenticate(creds, n)));
                }
                if self.policy.password_required {
                    return Err(ProtoError::NoAcceptableMethod);
                }
                let reply = AuthReply {
                    success: true,
                    selected: None,
                    password_ok: None,
                };
                socks6::encode_auth_reply(&reply, out);
                self.finish6(pending, n, out)
            }
            other if self.policy.allow_socks6 && other != socks6::VERSION => {
                Err(ProtoError::VersionMismatch(other))
            }
            other => Err(ProtoError::UnsupportedVersion(other)),
        }
    }

    fn fail(&mut self, e: &ProtoError, out: &mut Vec<u8>) {
        let version = self.version();
        self.state = State::Done(version);
        if version == Version::V6 {
            // Errors come before the Authentication Reply; a failed one (without a method
            // to continue with) tells the client to close (draft section 6).
            let reply = match e.reply() {
                WireReply::None => return,
                WireReply::VersionMismatch => return socks6::encode_version_mismatch(out),
                WireReply::NoAcceptableMethods => AuthReply {
                    success: false,
                    selected: Some(socks6::METHOD_NONE_ACCEPTABLE),
                    password_ok: None,
                },
                WireReply::AuthFailure => AuthReply {
                    success: false,
                    selected: None,
                    password_ok: Some(false),
                },
                WireReply::Reply(_) => AuthReply {
                    success: false,
                    selected: None,
                    password_ok: None,
                },
            };
            return socks6::encode_auth_reply(&reply, out);
        }
        match e.reply() {
            WireReply::None => {}
            WireReply::VersionMismatch => socks6::encode_version_mismatch(out),
            WireReply::NoAcceptableMethods => {
                socks5::encode_method_selection(socks5::METHOD_NONE_ACCEPTABLE, out)
            }
            WireReply::AuthFailure => rfc1929::encode_response(false, out),
            WireReply::Reply(code) => encode_reply(version, code, None, out),
        }
    }
}

enum Step<'a> {
    Consumed(usize),
    Request(Request, usize),
    Authenticate(Credentials<'a>, usize),
}

/// Appends a request reply in the given protocol version.
pub fn encode_reply(
    version: Version,
    code: ReplyCode,
    bound: Option<SocketAddr>,
    out: &mut Vec<u8>,
) {
    match version {
        Version::V5 => socks5::encode_reply(code, bound, out),
        Version::V4 => socks4::encode_reply(code.into(), bound, out),
        Version::V6 => socks6::encode_operation_reply(code.into(), bound, None, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::socks4::ReplyCode4;

    const OPEN: AuthPolicy = AuthPolicy {
        password_required: false,
        allow_socks4: false,
        allow_socks6: false,
    };
    const USERS: AuthPolicy = AuthPolicy {
        password_required: true,
        allow_socks4: false,
        allow_socks6: false,
    };
    const USERS_AND_SOCKS4: AuthPolicy = AuthPolicy {
        password_required: true,
        allow_socks4: true,
        allow_socks6: false,
    };

    /// How a driven handshake ended.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        NeedMore,
        Request(Request),
        Err(ProtoError),
    }

    /// Everything a caller observes: bytes written, how it ended, input consumed, and the
    /// credentials it was asked to check.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Run {
        out: Vec<u8>,
        outcome: Outcome,
        consumed: usize,
        creds: Vec<(Vec<u8>, Vec<u8>)>,
    }

    /// The only account the tests' caller accepts.
    fn check(user: &[u8], pass: &[u8]) -> bool {
        user == b"alice" && pass == b"s3cret"
    }

    /// Plays the caller: appends each chunk to a buffer, advances over the unconsumed part,
    /// answers `Authenticate` with [`check`], and stops at the request or the first error.
    fn drive<'c>(policy: AuthPolicy, chunks: impl IntoIterator<Item = &'c [u8]>) -> Run {
        let mut hs = Handshake::new(policy);
        let mut buf = Vec::new();
        let mut run = Run {
            out: Vec::new(),
            outcome: Outcome::NeedMore,
            consumed: 0,
            creds: Vec::new(),
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let avail = buf.len() - run.consumed;
                let (event, n) = match hs.advance(&buf[run.consumed..], &mut run.out) {
                    Ok(x) => x,
                    Err(e) => {
                        // An error reports no count (the connection closes), so how much was
                        // consumed before it depends on how the input was split: not compared.
                        run.consumed = 0;
                        run.outcome = Outcome::Err(e);
                        return run;
                    }
                };
                assert!(n <= avail, "consumed {n} of {avail}");
                run.consumed += n;
                match event {
                    Event::NeedMore => break,
                    Event::Authenticate(c) => {
                        run.creds.push((c.username.to_vec(), c.password.to_vec()));
                        let ok = check(c.username, c.password);
                        if let Err(e) = hs.authenticated(ok, &mut run.out) {
                            run.consumed = 0;
                            run.outcome = Outcome::Err(e);
                            return run;
                        }
                    }
                    Event::Request(r) => {
                        run.outcome = Outcome::Request(r);
                        return run;
                    }
                }
            }
        }
        run
    }

    fn whole(policy: AuthPolicy, input: &[u8]) -> Run {
        drive(policy, [input])
    }

    fn bytewise(policy: AuthPolicy, input: &[u8]) -> Run {
        drive(policy, input.chunks(1))
    }

    fn v5_request(command: Command, target: &str) -> Request {
        Request {
            version: Version::V5,
            command,
            target: TargetAddr::Ip(target.parse().unwrap()),
            userid: None,
            initial_data: 0,
            fast_open: false,
        }
    }

    /// A SOCKS5 failure reply with an all-zero IPv4 BND.ADDR.
    fn v5_fail(code: u8) -> [u8; 10] {
        [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
    }

    const V4_REJECTED: [u8; 8] = [0, 0x5B, 0, 0, 0, 0, 0, 0];

    const GREET_NOAUTH: &[u8] = &[5, 1, 0];
    const GREET_USERPASS: &[u8] = &[5, 1, 2];
    const AUTH_GOOD: &[u8] = b"\x01\x05alice\x06s3cret";
    const AUTH_BAD: &[u8] = b"\x01\x05alice\x05wrong";
    const CONNECT_V4: &[u8] = &[5, 1, 0, 1, 127, 0, 0, 1, 0x00, 0x50];
    const CONNECT_DOMAIN: &[u8] = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb";

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    // ---- SOCKS5 without authentication ----

    #[test]
    fn socks5_no_auth_step_by_step() {
        let mut hs = Handshake::new(OPEN);
        let mut out = Vec::new();
        assert_eq!(hs.advance(&[], &mut out), Ok((Event::NeedMore, 0)));
        assert_eq!(hs.advance(&[5], &mut out), Ok((Event::NeedMore, 0)));
        assert_eq!(hs.advance(&[5, 2, 0], &mut out), Ok((Event::NeedMore, 0)));
        assert!(out.is_empty());
        assert_eq!(
            hs.advance(&[5, 2, 0, 2], &mut out),
            Ok((Event::NeedMore, 4))
        );
        assert_eq!(out, [5, 0]);
        out.clear();
        assert_eq!(
            hs.advance(&CONNECT_V4[..9], &mut out),
            Ok((Event::NeedMore, 0))
        );
        let expected = v5_request(Command::Connect, "127.0.0.1:80");
        assert_eq!(
            hs.advance(CONNECT_V4, &mut out),
            Ok((Event::Request(expected), CONNECT_V4.len()))
        );
        assert!(out.is_empty());
        assert_eq!(hs.version(), Version::V5);
        // Done: nothing more is consumed and nothing is written.
        assert_eq!(hs.advance(b"payload", &mut out), Ok((Event::NeedMore, 0)));
        assert!(out.is_empty());
        hs.reply(
            ReplyCode::Succeeded,
            Some("10.0.0.1:5000".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [5, 0, 0, 1, 10, 0, 0, 1, 0x13, 0x88]);
    }

    #[test]
    fn socks5_no_auth_ipv4_domain_ipv6_and_commands() {
        let run = whole(OPEN, &cat(&[GREET_NOAUTH, CONNECT_V4]));
        assert_eq!(run.out, [5, 0]);
        assert_eq!(run.consumed, 13);
        assert_eq!(
            run.outcome,
            Outcome::Request(v5_request(Command::Connect, "127.0.0.1:80"))
        );

        let run = whole(OPEN, &cat(&[GREET_NOAUTH, CONNECT_DOMAIN]));
        assert_eq!(run.out, [5, 0]);
        assert_eq!(run.consumed, 3 + CONNECT_DOMAIN.len());
        let Outcome::Request(r) = run.outcome else {
            panic!("{run:?}")
        };
        assert_eq!(r.target, TargetAddr::Domain("example.com".into(), 443));
        assert_eq!(
            (r.version, r.command, r.userid),
            (Version::V5, Command::Connect, None)
        );

        let mut v6 = vec![5, 2, 0, 4];
        v6.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0x1f, 0x90]);
        let run = whole(OPEN, &cat(&[GREET_NOAUTH, &v6]));
        assert_eq!(
            run.outcome,
            Outcome::Request(v5_request(Command::Bind, "[2001:db8::1]:8080"))
        );

        let udp = [5, 3, 0, 1, 0, 0, 0, 0, 0, 0];
        let run = whole(OPEN, &cat(&[GREET_NOAUTH, &udp]));
        assert_eq!(
            run.outcome,
            Outcome::Request(v5_request(Command::UdpAssociate, "0.0.0.0:0"))
        );
    }

    #[test]
    fn open_proxy_prefers_no_auth() {
        let run = whole(OPEN, &cat(&[&[5, 3, 1, 2, 0], CONNECT_V4]));
        assert_eq!(run.out, [5, 0]);
        assert!(matches!(run.outcome, Outcome::Request(_)));
    }

    #[test]
    fn open_proxy_accepts_client_offering_only_userpass() {
        // The caller decides what to do with the credentials (here: it checks them).
        let run = whole(OPEN, &cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_V4]));
        assert_eq!(run.out, [5, 2, 1, 0]);
        assert_eq!(run.creds, [(b"alice".to_vec(), b"s3cret".to_vec())]);
        assert!(matches!(run.outcome, Outcome::Request(_)));
    }

    // ---- SOCKS5 with username/password ----

    #[test]
    fn userpass_required_step_by_step() {
        let mut hs = Handshake::new(USERS);
        let mut out = Vec::new();
        // The client offers both; the server insists on username/password.
        assert_eq!(
            hs.advance(&[5, 2, 0, 2], &mut out),
            Ok((Event::NeedMore, 4))
        );
        assert_eq!(out, [5, 2]);
        out.clear();
        for k in 0..AUTH_GOOD.len() {
            assert_eq!(
                hs.advance(&AUTH_GOOD[..k], &mut out),
                Ok((Event::NeedMore, 0))
            );
        }
        let input = cat(&[AUTH_GOOD, CONNECT_V4]);
        let creds = Credentials {
            username: b"alice",
            password: b"s3cret",
        };
        assert_eq!(
            hs.advance(&input, &mut out),
            Ok((Event::Authenticate(creds), AUTH_GOOD.len()))
        );
        assert!(out.is_empty());
        // No verdict yet: nothing is consumed, even with the request already buffered.
        assert_eq!(
            hs.advance(&input[AUTH_GOOD.len()..], &mut out),
            Ok((Event::NeedMore, 0))
        );
        assert_eq!(hs.authenticated(true, &mut out), Ok(()));
        assert_eq!(out, [1, 0]);
        out.clear();
        assert_eq!(
            hs.advance(&input[AUTH_GOOD.len()..], &mut out),
            Ok((
                Event::Request(v5_request(Command::Connect, "127.0.0.1:80")),
                CONNECT_V4.len()
            ))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn userpass_wrong_password() {
        let mut hs = Handshake::new(USERS);
        let mut out = Vec::new();
        let input = cat(&[GREET_USERPASS, AUTH_BAD, CONNECT_V4]);
        let (event, n) = hs.advance(&input, &mut out).unwrap();
        assert!(matches!(event, Event::Authenticate(c) if c.password == b"wrong"));
        assert_eq!(n, 3 + AUTH_BAD.len());
        assert_eq!(
            hs.authenticated(false, &mut out),
            Err(ProtoError::AuthFailed)
        );
        assert_eq!(out, [5, 2, 1, 1]);
        assert_eq!(ProtoError::AuthFailed.reply(), WireReply::AuthFailure);
        // The handshake is over: the request that followed is not read.
        assert_eq!(hs.advance(&input[n..], &mut out), Ok((Event::NeedMore, 0)));
        assert_eq!(out, [5, 2, 1, 1]);

        let run = whole(USERS, &input);
        assert_eq!(run.out, [5, 2, 1, 1]);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::AuthFailed));
    }

    #[test]
    fn userpass_required_full_and_empty_password() {
        let run = whole(USERS, &cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_DOMAIN]));
        assert_eq!(run.out, [5, 2, 1, 0]);
        assert_eq!(run.consumed, 3 + AUTH_GOOD.len() + CONNECT_DOMAIN.len());
        assert!(matches!(run.outcome, Outcome::Request(_)));

        let run = whole(USERS, &cat(&[GREET_USERPASS, b"\x01\x01u\x00", CONNECT_V4]));
        assert_eq!(run.creds, [(b"u".to_vec(), Vec::new())]);
        assert_eq!(run.out, [5, 2, 1, 1]);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::AuthFailed));
    }

    #[test]
    fn bad_auth_messages_get_rfc1929_failure() {
        let run = whole(USERS, &cat(&[GREET_USERPASS, b"\x05\x01a\x01b"]));
        assert_eq!(run.outcome, Outcome::Err(ProtoError::BadAuthVersion(5)));
        assert_eq!(run.out, [5, 2, 1, 1]);
        assert!(run.creds.is_empty());

        let run = whole(USERS, &cat(&[GREET_USERPASS, b"\x01\x00\x03pwd"]));
        assert_eq!(run.outcome, Outcome::Err(ProtoError::EmptyUsername));
        assert_eq!(run.out, [5, 2, 1, 1]);
    }

    // ---- SOCKS5 rejections ----

    #[test]
    fn no_acceptable_method() {
        // Users configured, client offers only "no auth".
        let run = whole(USERS, &cat(&[GREET_NOAUTH, CONNECT_V4]));
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoAcceptableMethod));
        assert_eq!(run.out, [5, 0xFF]);
        assert_eq!(run.consumed, 0);
        // Open proxy, client offers only GSSAPI and private methods.
        let run = whole(OPEN, &[5, 3, 1, 0x80, 0xFE]);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoAcceptableMethod));
        assert_eq!(run.out, [5, 0xFF]);
        // Offering X'FF' itself is not offering anything acceptable.
        let run = whole(OPEN, &[5, 1, 0xFF]);
        assert_eq!(run.out, [5, 0xFF]);
    }

    #[test]
    fn zero_methods() {
        let run = whole(OPEN, &[5, 0]);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoMethods));
        assert_eq!(run.out, [5, 0xFF]);
        let run = whole(USERS, &[5, 0, 5, 1, 0]);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoMethods));
        assert_eq!(run.out, [5, 0xFF]);
    }

    #[test]
    fn wrong_version_byte_gets_no_reply() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            &[0],
            &[3, 1, 0],
            &[6, 1, 0],
            &[0xFF],
        ] {
            for policy in [OPEN, USERS, USERS_AND_SOCKS4] {
                let run = whole(policy, input);
                assert_eq!(
                    run.outcome,
                    Outcome::Err(ProtoError::UnsupportedVersion(input[0]))
                );
                assert!(run.out.is_empty(), "{input:?}");
                assert_eq!(run.consumed, 0);
            }
        }
    }

    #[test]
    fn request_errors_get_socks5_replies() {
        let cases: &[(&[u8], ProtoError, u8)] = &[
            (
                &[5, 7, 0, 1, 1, 2, 3, 4, 0, 80],
                ProtoError::UnknownCommand(7),
                0x07,
            ),
            (&[5, 0, 0, 1], ProtoError::UnknownCommand(0), 0x07),
            (
                &[5, 1, 0, 8, 1, 2, 3, 4, 0, 80],
                ProtoError::UnknownAddressType(8),
                0x08,
            ),
            (&[5, 1, 0, 2], ProtoError::UnknownAddressType(2), 0x08),
            (&[5, 1, 0, 3, 0, 0, 80], ProtoError::BadDomain, 0x04),
            (
                b"\x05\x01\x00\x03\x03a b\x00\x50",
                ProtoError::BadDomain,
                0x04,
            ),
            (&[5, 1, 1, 1], ProtoError::BadReserved(1), 0x01),
            (&[4, 1, 0, 1], ProtoError::BadRequestVersion(4), 0x01),
        ];
        for (req, err, code) in cases {
            for (policy, auth, selected) in [
                (OPEN, &[][..], &[5, 0][..]),
                (USERS, AUTH_GOOD, &[5, 2, 1, 0][..]),
            ] {
                let greeting = if policy == OPEN {
                    GREET_NOAUTH
                } else {
                    GREET_USERPASS
                };
                let run = whole(policy, &cat(&[greeting, auth, req]));
                assert_eq!(run.outcome, Outcome::Err(err.clone()), "{req:?}");
                assert_eq!(run.out, cat(&[selected, &v5_fail(*code)]), "{req:?}");
                assert_eq!(
                    err.reply(),
                    WireReply::Reply(ReplyCode::from_u8(*code).unwrap())
                );
            }
        }
    }

    #[test]
    fn unknown_command_is_rejected_before_the_address_arrives() {
        let mut hs = Handshake::new(OPEN);
        let mut out = Vec::new();
        assert_eq!(
            hs.advance(&[5, 1, 0, 5, 7], &mut out),
            Ok((Event::NeedMore, 3))
        );
        assert_eq!(
            hs.advance(&[5, 7, 0], &mut out),
            Err(ProtoError::UnknownCommand(7))
        );
        assert_eq!(out, cat(&[&[5, 0], &v5_fail(7)]));
    }

    // ---- SOCKS4 and SOCKS4a ----

    const S4_CONNECT: &[u8] = b"\x04\x01\x00\x50\x0a\x00\x00\x01bob\x00";
    const S4A_CONNECT: &[u8] = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00";

    #[test]
    fn socks4_connect() {
        let run = whole(OPEN, S4_CONNECT);
        assert!(run.out.is_empty());
        assert_eq!(run.consumed, S4_CONNECT.len());
        assert_eq!(
            run.outcome,
            Outcome::Request(Request {
                version: Version::V4,
                command: Command::Connect,
                target: TargetAddr::Ip("10.0.0.1:80".parse().unwrap()),
                userid: Some("bob".into()),
                initial_data: 0,
                fast_open: false,
            })
        );
        let run = whole(OPEN, b"\x04\x02\x00\x15\x01\x02\x03\x04\x00");
        assert_eq!(
            run.outcome,
            Outcome::Request(Request {
                version: Version::V4,
                command: Command::Bind,
                target: TargetAddr::Ip("1.2.3.4:21".parse().unwrap()),
                userid: None,
                initial_data: 0,
                fast_open: false,
            })
        );
    }

    #[test]
    fn socks4a_connect() {
        let run = whole(OPEN, S4A_CONNECT);
        assert!(run.out.is_empty());
        assert_eq!(run.consumed, S4A_CONNECT.len());
        assert_eq!(
            run.outcome,
            Outcome::Request(Request {
                version: Version::V4,
                command: Command::Connect,
                target: TargetAddr::Domain("example.com".into(), 443),
                userid: None,
                initial_data: 0,
                fast_open: false,
            })
        );
    }

    #[test]
    fn socks4_errors_get_reply_91() {
        let mut long_user = b"\x04\x01\x00\x50\x01\x02\x03\x04".to_vec();
        long_user.resize(8 + socks4::MAX_FIELD + 1, b'u');
        let cases: &[(&[u8], ProtoError)] = &[
            (b"\x04\x03", ProtoError::UnknownCommand(3)),
            (
                b"\x04\x00\x00\x50\x01\x02\x03\x04\x00",
                ProtoError::UnknownCommand(0),
            ),
            (
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00",
                ProtoError::BadDomain,
            ),
            (
                b"\x04\x01\x00\x50\x00\x00\x00\x01\x00bad host\x00",
                ProtoError::BadDomain,
            ),
            (&long_user, ProtoError::FieldTooLong(socks4::MAX_FIELD)),
        ];
        for (input, err) in cases {
            for policy in [OPEN, USERS, USERS_AND_SOCKS4] {
                let run = whole(policy, input);
                assert_eq!(run.outcome, Outcome::Err(err.clone()), "{input:?}");
                assert_eq!(run.out, V4_REJECTED, "{input:?}");
            }
        }
    }

    #[test]
    fn socks4_refused_when_users_configured() {
        for input in [S4_CONNECT, S4A_CONNECT] {
            let run = whole(USERS, input);
            assert_eq!(run.outcome, Outcome::Err(ProtoError::Socks4NotAllowed));
            assert_eq!(run.out, V4_REJECTED);
            assert_eq!(
                ProtoError::Socks4NotAllowed.reply(),
                WireReply::Reply(ReplyCode::NotAllowed)
            );
            for policy in [OPEN, USERS_AND_SOCKS4] {
                let run = whole(policy, input);
                assert!(matches!(run.outcome, Outcome::Request(_)), "{run:?}");
                assert!(run.out.is_empty());
            }
        }
    }

    #[test]
    fn version_is_v4_once_the_first_byte_says_so() {
        let mut hs = Handshake::new(OPEN);
        let mut out = Vec::new();
        assert_eq!(hs.version(), Version::V5);
        assert_eq!(
            hs.advance(&S4_CONNECT[..5], &mut out),
            Ok((Event::NeedMore, 0))
        );
        assert_eq!(hs.version(), Version::V4);
        // A caller giving up (say, at a timeout) answers in the client's protocol.
        hs.reply(ReplyCode::TtlExpired, None, &mut out);
        assert_eq!(out, V4_REJECTED);
        out.clear();
        let (event, n) = hs.advance(S4_CONNECT, &mut out).unwrap();
        assert!(matches!(event, Event::Request(_)));
        assert_eq!(n, S4_CONNECT.len());
        assert_eq!(hs.version(), Version::V4);
    }

    // ---- Pipelining and incremental input ----

    #[test]
    fn pipelined_consumption_stops_before_payload() {
        let payload: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let cases: &[(AuthPolicy, Vec<u8>)] = &[
            (OPEN, cat(&[GREET_NOAUTH, CONNECT_V4])),
            (OPEN, cat(&[GREET_NOAUTH, CONNECT_DOMAIN])),
            (USERS, cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_V4])),
            (OPEN, S4_CONNECT.to_vec()),
            (OPEN, S4A_CONNECT.to_vec()),
        ];
        for (policy, handshake) in cases {
            let input = cat(&[handshake, payload]);
            let run = whole(*policy, &input);
            assert!(matches!(run.outcome, Outcome::Request(_)), "{run:?}");
            assert_eq!(run.consumed, handshake.len());
            assert_eq!(&input[run.consumed..], payload);
            // Payload that happens to look like another SOCKS message is not touched either.
            let input = cat(&[handshake, GREET_NOAUTH, CONNECT_V4]);
            assert_eq!(whole(*policy, &input).consumed, handshake.len());
        }
    }

    #[test]
    fn pipelined_with_auth_returns_at_each_event() {
        let payload: &[u8] = b"\x16\x03\x01";
        let input = cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_V4, payload]);
        let mut hs = Handshake::new(USERS);
        let mut out = Vec::new();
        let (event, n) = hs.advance(&input, &mut out).unwrap();
        assert!(matches!(event, Event::Authenticate(_)));
        assert_eq!(n, 3 + AUTH_GOOD.len());
        hs.authenticated(true, &mut out).unwrap();
        let (event, m) = hs.advance(&input[n..], &mut out).unwrap();
        assert!(matches!(event, Event::Request(_)));
        assert_eq!(&input[n + m..], payload);
        // Method selection and auth status coalesce into one write.
        assert_eq!(out, [5, 2, 1, 0]);
    }

    /// Inputs covering every path above, with the policy they are meant for.
    fn transcripts() -> Vec<(AuthPolicy, Vec<u8>)> {
        let mut long_user = b"\x04\x01\x00\x50\x01\x02\x03\x04".to_vec();
        long_user.resize(8 + socks4::MAX_FIELD + 10, b'u');
        vec![
            (OPEN, cat(&[GREET_NOAUTH, CONNECT_V4, b"payload"])),
            (OPEN, cat(&[&[5, 2, 2, 0], CONNECT_DOMAIN])),
            (OPEN, cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_V4])),
            (
                USERS,
                cat(&[GREET_USERPASS, AUTH_GOOD, CONNECT_DOMAIN, b"x"]),
            ),
            (USERS, cat(&[GREET_USERPASS, AUTH_BAD, CONNECT_V4])),
            (USERS, cat(&[GREET_USERPASS, b"\x02\x01a\x01b"])),
            (USERS, cat(&[GREET_USERPASS, b"\x01\x00\x01b"])),
            (USERS, cat(&[GREET_NOAUTH, CONNECT_V4])),
            (OPEN, vec![5, 0]),
            (OPEN, b"GET /".to_vec()),
            (OPEN, cat(&[GREET_NOAUTH, &[5, 7, 0, 1, 1, 2, 3, 4, 0, 80]])),
            (OPEN, cat(&[GREET_NOAUTH, &[5, 1, 0, 8, 1, 2, 3, 4, 0, 80]])),
            (OPEN, cat(&[GREET_NOAUTH, &[5, 1, 0, 3, 0, 0, 80]])),
            (OPEN, cat(&[GREET_NOAUTH, &[5, 1, 9, 1]])),
            (OPEN, cat(&[S4_CONNECT, b"payload"])),
            (OPEN, cat(&[S4A_CONNECT, b"payload"])),
            (USERS, S4_CONNECT.to_vec()),
            (USERS_AND_SOCKS4, S4A_CONNECT.to_vec()),
            (OPEN, b"\x04\x05\x00\x50".to_vec()),
            (OPEN, long_user),
            // Incomplete: every one ends needing more.
            (OPEN, cat(&[GREET_NOAUTH, &CONNECT_DOMAIN[..8]])),
            (USERS, cat(&[GREET_USERPASS, &AUTH_GOOD[..4]])),
            (OPEN, S4A_CONNECT[..12].to_vec()),
        ]
    }

    #[test]
    fn byte_at_a_time_matches_whole_buffer() {
        for (policy, input) in transcripts() {
            let expected = whole(policy, &input);
            assert_eq!(bytewise(policy, &input), expected, "{input:?}");
            // And every split into two reads.
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(drive(policy, [a, b]), expected, "{input:?} split at {k}");
            }
        }
    }

    #[test]
    fn incomplete_transcripts_need_more() {
        let run = whole(OPEN, &cat(&[GREET_NOAUTH, &CONNECT_DOMAIN[..8]]));
        assert_eq!((run.outcome, run.consumed), (Outcome::NeedMore, 3));
        assert_eq!(run.out, [5, 0]);
        let run = whole(OPEN, &S4A_CONNECT[..12]);
        assert_eq!((run.outcome, run.consumed), (Outcome::NeedMore, 0));
        assert!(run.out.is_empty());
    }

    // ---- Replies ----

    #[test]
    fn reply_encoding_v5() {
        let mut hs = Handshake::new(OPEN);
        let mut out = Vec::new();
        hs.advance(&cat(&[GREET_NOAUTH, CONNECT_V4]), &mut out)
            .unwrap();
        out.clear();
        hs.reply(
            ReplyCode::Succeeded,
            Some("1.2.3.4:1080".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [5, 0, 0, 1, 1, 2, 3, 4, 0x04, 0x38]);
        out.clear();
        hs.reply(
            ReplyCode::Succeeded,
            Some("[2001:db8::2]:443".parse().unwrap()),
            &mut out,
        );
        let mut v6 = vec![5, 0, 0, 4];
        v6.extend_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&[0x01, 0xbb]);
        assert_eq!(out, v6);
        out.clear();
        hs.reply(
            ReplyCode::Succeeded,
            Some("[::ffff:9.8.7.6]:1".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [5, 0, 0, 1, 9, 8, 7, 6, 0, 1]);
        for code in 1..=8 {
            out.clear();
            hs.reply(ReplyCode::from_u8(code).unwrap(), None, &mut out);
            assert_eq!(out, v5_fail(code));
        }
    }

    #[test]
    fn reply_encoding_v4() {
        let mut hs = Handshake::new(OPEN);
        let mut out = Vec::new();
        hs.advance(S4_CONNECT, &mut out).unwrap();
        hs.reply(
            ReplyCode::Succeeded,
            Some("1.2.3.4:1080".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [0, 0x5A, 0x04, 0x38, 1, 2, 3, 4]);
        out.clear();
        hs.reply(
            ReplyCode::Succeeded,
            Some("[::ffff:9.8.7.6]:1".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [0, 0x5A, 0, 1, 9, 8, 7, 6]);
        out.clear();
        // SOCKS4 cannot carry an IPv6 address: the port survives, the address is zero.
        hs.reply(
            ReplyCode::Succeeded,
            Some("[2001:db8::2]:443".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, [0, 0x5A, 0x01, 0xbb, 0, 0, 0, 0]);
        for code in 1..=8 {
            out.clear();
            hs.reply(ReplyCode::from_u8(code).unwrap(), None, &mut out);
            assert_eq!(out, V4_REJECTED);
        }
        out.clear();
        encode_reply(Version::V4, ReplyCode::NotAllowed, None, &mut out);
        encode_reply(Version::V5, ReplyCode::NotAllowed, None, &mut out);
        assert_eq!(out, cat(&[&V4_REJECTED, &v5_fail(2)]));
    }

    // ---- A client and the server, in memory ----

    /// The client side uses only the client encoders and parsers.
    #[test]
    fn client_server_pair_socks5() {
        let targets = [
            TargetAddr::Ip("192.0.2.7:25".parse().unwrap()),
            TargetAddr::Ip("[2001:db8::7]:993".parse().unwrap()),
            TargetAddr::Domain("mail.example.net".into(), 587),
        ];
        let bound: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        for target in targets {
            for (policy, user, pass, ok) in [
                (OPEN, None, &b""[..], true),
                (USERS, Some(&b"alice"[..]), &b"s3cret"[..], true),
                (USERS, Some(&b"alice"[..]), &b"guess"[..], false),
            ] {
                // Client: greeting.
                let mut wire = Vec::new();
                let methods: &[u8] = if user.is_some() { &[0, 2] } else { &[0] };
                socks5::encode_greeting(methods, &mut wire);
                let mut hs = Handshake::new(policy);
                let mut back = Vec::new();
                let (event, n) = hs.advance(&wire, &mut back).unwrap();
                assert_eq!((event, n), (Event::NeedMore, wire.len()));
                let (method, m) = socks5::parse_method_selection(&back).unwrap().unwrap();
                back.drain(..m);
                if let Some(user) = user {
                    assert_eq!(method, socks5::METHOD_USERPASS);
                    wire.clear();
                    rfc1929::encode_request(user, pass, &mut wire);
                    let (event, n) = hs.advance(&wire, &mut back).unwrap();
                    assert_eq!(n, wire.len());
                    let Event::Authenticate(c) = event else {
                        panic!("{event:?}")
                    };
                    let verdict = hs.authenticated(check(c.username, c.password), &mut back);
                    assert_eq!(verdict.is_ok(), ok);
                    let (status, m) = rfc1929::parse_response(&back).unwrap().unwrap();
                    assert_eq!(status, ok);
                    back.drain(..m);
                    if !ok {
                        assert!(back.is_empty());
                        continue;
                    }
                } else {
                    assert_eq!(method, socks5::METHOD_NO_AUTH);
                }
                wire.clear();
                socks5::encode_request(Command::Connect, &target, &mut wire);
                let (event, n) = hs.advance(&wire, &mut back).unwrap();
                assert_eq!(n, wire.len());
                let Event::Request(req) = event else {
                    panic!("{event:?}")
                };
                assert_eq!(req.target, target);
                assert_eq!(req.version, Version::V5);
                hs.reply(ReplyCode::Succeeded, Some(bound), &mut back);
                let (reply, m) = socks5::parse_reply(&back).unwrap().unwrap();
                assert_eq!(m, back.len());
                assert_eq!(reply.code, ReplyCode::Succeeded);
                assert_eq!(reply.bound, TargetAddr::Ip(bound));
            }
        }
    }

    #[test]
    fn client_server_pair_socks4() {
        let bound: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        for (target, userid) in [
            (
                TargetAddr::Ip("192.0.2.7:25".parse().unwrap()),
                &b"carol"[..],
            ),
            (TargetAddr::Domain("mail.example.net".into(), 587), &b""[..]),
        ] {
            for (policy, code) in [(OPEN, ReplyCode::Succeeded), (USERS, ReplyCode::NotAllowed)] {
                let mut wire = Vec::new();
                socks4::encode_request(Command::Connect, &target, userid, &mut wire);
                let mut hs = Handshake::new(policy);
                let mut back = Vec::new();
                match hs.advance(&wire, &mut back) {
                    Ok((Event::Request(req), n)) => {
                        assert_eq!(n, wire.len());
                        assert_eq!(req.target, target);
                        assert_eq!(req.userid.as_deref().unwrap_or("").as_bytes(), userid);
                        hs.reply(code, Some(bound), &mut back);
                    }
                    Err(e) => assert_eq!(e, ProtoError::Socks4NotAllowed),
                    Ok(other) => panic!("{other:?}"),
                }
                let (reply, m) = socks4::parse_reply(&back).unwrap().unwrap();
                assert_eq!(m, back.len());
                assert_eq!(reply.code, ReplyCode4::from(code));
                if code == ReplyCode::Succeeded {
                    assert_eq!(SocketAddr::V4(reply.bound), bound);
                }
            }
        }
    }

    // ---- SOCKS 6 ----

    const OPEN6: AuthPolicy = AuthPolicy {
        password_required: false,
        allow_socks4: false,
        allow_socks6: true,
    };
    const USERS6: AuthPolicy = AuthPolicy {
        password_required: true,
        allow_socks4: false,
        allow_socks6: true,
    };

    /// Draft section 6: a successful Authentication Reply without options.
    const AUTH6_OK: &[u8] = &[6, 0, 0, 0];
    /// Section 9: the RFC 1929 status in an Authentication Data option.
    const AUTH6_PASSWORD_OK: &[u8] = &[6, 0, 0, 8, 0, 4, 0, 8, 2, 1, 0, 0];
    const AUTH6_PASSWORD_BAD: &[u8] = &[6, 1, 0, 8, 0, 4, 0, 8, 2, 1, 1, 0];
    /// Section 8.2: failed, "no acceptable methods" selected.
    const AUTH6_NO_METHOD: &[u8] = &[6, 1, 0, 8, 0, 3, 0, 8, 0xFF, 0, 0, 0];
    /// A failed Authentication Reply without options: the client closes.
    const AUTH6_FAILED: &[u8] = &[6, 1, 0, 0];

    fn v6_request(
        command: socks6::Command6,
        target: &str,
        user: Option<(&[u8], &[u8])>,
        initial_data: u16,
        fast_open: bool,
    ) -> Vec<u8> {
        let opts = socks6::RequestOptions {
            initial_data,
            methods: if user.is_some() { &[2] } else { &[] },
            userpass: user,
            fast_open: fast_open.then_some(0),
        };
        let mut out = Vec::new();
        let target = TargetAddr::Ip(target.parse().unwrap());
        socks6::encode_request(command, &target, &opts, &mut out);
        out
    }

    fn connect6(user: Option<(&[u8], &[u8])>, initial_data: u16, fast_open: bool) -> Vec<u8> {
        let c = Command6::Op(Command::Connect);
        v6_request(c, "192.0.2.1:443", user, initial_data, fast_open)
    }

    fn expected6(command: Command, initial_data: u16, fast_open: bool) -> Outcome {
        Outcome::Request(Request {
            version: Version::V6,
            command,
            target: TargetAddr::Ip("192.0.2.1:443".parse().unwrap()),
            userid: None,
            initial_data,
            fast_open,
        })
    }

    #[test]
    fn socks6_open_connect_with_initial_data() {
        let req = connect6(None, 5, true);
        let input = cat(&[&req, b"hello", b"more"]);
        let run = whole(OPEN6, &input);
        assert_eq!(run.outcome, expected6(Command::Connect, 5, true));
        assert_eq!(run.out, AUTH6_OK);
        // The initial data is left for the caller.
        assert_eq!(&input[run.consumed..], b"hellomore");
        assert_eq!(bytewise(OPEN6, &input), run);
    }

    #[test]
    fn socks6_password_in_the_request() {
        let good = connect6(Some((b"alice", b"s3cret")), 0, false);
        for policy in [USERS6, OPEN6] {
            let run = whole(policy, &good);
            assert_eq!(run.outcome, expected6(Command::Connect, 0, false));
            assert_eq!(run.out, AUTH6_PASSWORD_OK);
            assert_eq!(run.consumed, good.len());
            assert_eq!(run.creds, [(b"alice".to_vec(), b"s3cret".to_vec())]);
        }
        let bad = connect6(Some((b"alice", b"guess")), 0, false);
        let run = whole(USERS6, &bad);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::AuthFailed));
        assert_eq!(run.out, AUTH6_PASSWORD_BAD);
        // Users required, no credentials: nothing acceptable.
        let run = whole(USERS6, &connect6(None, 0, false));
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoAcceptableMethod));
        assert_eq!(run.out, AUTH6_NO_METHOD);
    }

    #[test]
    fn socks6_request_step_by_step_with_auth() {
        let req = connect6(Some((b"alice", b"s3cret")), 3, false);
        let input = cat(&[&req, b"abc"]);
        let mut hs = Handshake::new(USERS6);
        let mut out = Vec::new();
        assert_eq!(hs.advance(&input[..5], &mut out), Ok((Event::NeedMore, 0)));
        assert_eq!(hs.version(), Version::V6);
        let (event, n) = hs.advance(&input, &mut out).unwrap();
        assert!(matches!(event, Event::Authenticate(_)), "{event:?}");
        assert_eq!(n, req.len());
        assert!(out.is_empty());
        // Nothing moves until the verdict.
        assert_eq!(hs.advance(b"abc", &mut out), Ok((Event::NeedMore, 0)));
        hs.authenticated(true, &mut out).unwrap();
        let (event, m) = hs.advance(b"abc", &mut out).unwrap();
        assert_eq!(m, 0);
        let Event::Request(r) = event else {
            panic!("{event:?}")
        };
        assert_eq!((r.version, r.initial_data), (Version::V6, 3));
        assert_eq!(out, AUTH6_PASSWORD_OK);
        out.clear();
        let bound = "198.51.100.1:40000".parse().unwrap();
        hs.reply(ReplyCode::Succeeded, Some(bound), &mut out);
        let (reply, k) = socks6::parse_operation_reply(&out).unwrap().unwrap();
        assert_eq!(
            (k, reply.code, reply.fast_open),
            (out.len(), socks6::ReplyCode6::Succeeded, None)
        );
        assert_eq!(reply.bound, TargetAddr::Ip(bound));
        out.clear();
        hs.reply_fast_open(ReplyCode::Succeeded, Some(bound), Some(0), &mut out);
        let (reply, _) = socks6::parse_operation_reply(&out).unwrap().unwrap();
        assert!(reply.fast_open.is_some());
        out.clear();
        hs.reply(ReplyCode::ConnectionRefused, None, &mut out);
        assert_eq!(out, [6, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn socks6_noop_bind_and_udp() {
        let noop = v6_request(Command6::Noop, "0.0.0.0:0", None, 0, false);
        let run = whole(OPEN6, &noop);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::Noop));
        // Authentication Reply, then the Operation Reply (section 7): the client closes.
        assert_eq!(
            run.out,
            cat(&[AUTH6_OK, &[6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]])
        );
        let run = whole(USERS6, &noop);
        assert_eq!(run.outcome, Outcome::Err(ProtoError::NoAcceptableMethod));
        // Initial data only comes with a CONNECT.
        for (c, command) in [
            (Command6::Op(Command::Bind), Command::Bind),
            (Command6::Op(Command::UdpAssociate), Command::UdpAssociate),
        ] {
            let run = whole(OPEN6, &v6_request(c, "192.0.2.1:443", None, 9, false));
            assert_eq!(run.outcome, expected6(command, 0, false));
        }
    }

    #[test]
    fn socks6_errors_and_version_mismatch() {
        let mut bad_cmd = connect6(None, 0, false);
        bad_cmd[1] = 4;
        let mut bad_opts = connect6(None, 0, false);
        bad_opts[3] = 2;
        let bad_auth = connect6(Some((b"", b"x")), 0, false);
        let cases: &[(&[u8], ProtoError, &[u8])] = &[
            (&bad_cmd, ProtoError::UnknownCommand(4), AUTH6_FAILED),
            (&bad_opts, ProtoError::BadOptionsLength(2), AUTH6_FAILED),
            (&bad_auth, ProtoError::EmptyUsername, AUTH6_PASSWORD_BAD),
            (
                b"GET / HTTP/1.1\r\n",
                ProtoError::VersionMismatch(b'G'),
                &[6],
            ),
            (&[7, 1], ProtoError::VersionMismatch(7), &[6]),
        ];
        for (input, err, out) in cases {
            for policy in [OPEN6, USERS6] {
                let run = whole(policy, input);
                assert_eq!(run.outcome, Outcome::Err(err.clone()), "{input:?}");
                assert_eq!(run.out, *out, "{input:?}");
            }
        }
        // SOCKS4 and SOCKS5 are untouched by SOCKS 6 being on.
        let run = whole(OPEN6, &cat(&[GREET_NOAUTH, CONNECT_V4]));
        assert_eq!(
            run.outcome,
            Outcome::Request(v5_request(Command::Connect, "127.0.0.1:80"))
        );
        // Off: version 6 is unsupported, closed without a reply.
        let run = whole(OPEN, &connect6(None, 0, false));
        assert_eq!(run.outcome, Outcome::Err(ProtoError::UnsupportedVersion(6)));
        assert!(run.out.is_empty());
    }

    #[test]
    fn socks6_client_server_pair() {
        for (policy, user, ok) in [
            (OPEN6, None, true),
            (USERS6, Some((&b"alice"[..], &b"s3cret"[..])), true),
            (USERS6, Some((&b"alice"[..], &b"nope"[..])), false),
        ] {
            let wire = connect6(user, 0, true);
            let mut hs = Handshake::new(policy);
            let mut back = Vec::new();
            let (mut event, n) = hs.advance(&wire, &mut back).unwrap();
            assert_eq!(n, wire.len());
            if let Event::Authenticate(c) = event {
                let verdict = hs.authenticated(check(c.username, c.password), &mut back);
                assert_eq!(verdict.is_ok(), ok);
                let (reply, _) = socks6::parse_auth_reply(&back).unwrap().unwrap();
                assert_eq!((reply.success, reply.password_ok), (ok, Some(ok)));
                if !ok {
                    continue;
                }
                event = hs.advance(&[], &mut back).unwrap().0;
            }
            let Event::Request(req) = event else {
                panic!("{event:?}")
            };
            assert!(req.fast_open);
            let (auth, m) = socks6::parse_auth_reply(&back).unwrap().unwrap();
            assert!(auth.success);
            back.drain(..m);
            hs.reply_fast_open(ReplyCode::Succeeded, None, Some(0), &mut back);
            let (reply, k) = socks6::parse_operation_reply(&back).unwrap().unwrap();
            assert_eq!(k, back.len());
            assert_eq!(reply.code, socks6::ReplyCode6::Succeeded);
        }
    }

    /// SOCKS 6 inputs covering the paths above.
    fn transcripts6() -> Vec<(AuthPolicy, Vec<u8>)> {
        let user = Some((&b"alice"[..], &b"s3cret"[..]));
        let bad = Some((&b"alice"[..], &b"x"[..]));
        let noop = v6_request(Command6::Noop, "[::]:0", None, 0, false);
        let mut bad_pad = connect6(None, 0, false);
        bad_pad[6] = 1;
        vec![
            (OPEN6, cat(&[&connect6(None, 4, true), b"data"])),
            (USERS6, cat(&[&connect6(user, 2, false), b"hi"])),
            (USERS6, connect6(bad, 0, false)),
            (USERS6, connect6(None, 0, false)),
            (OPEN6, noop),
            (OPEN6, bad_pad),
            (OPEN6, b"\x07abc".to_vec()),
            (OPEN, connect6(None, 0, false)),
            (OPEN6, connect6(user, 0, true)[..20].to_vec()),
        ]
    }

    #[test]
    fn socks6_byte_at_a_time_matches_whole_buffer() {
        for (policy, input) in transcripts6() {
            let expected = whole(policy, &input);
            assert_eq!(bytewise(policy, &input), expected, "{input:?}");
            for k in 0..=input.len() {
                let (a, b) = input.split_at(k);
                assert_eq!(drive(policy, [a, b]), expected, "{input:?} split at {k}");
            }
        }
    }

    proptest::proptest! {
        /// Any bytes after a SOCKS 6 version byte: the outcome does not depend on how they
        /// arrive, and an error's reply is a SOCKS 6 Authentication Reply.
        #[test]
        fn socks6_arbitrary_input_split_anyhow(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            users in proptest::prelude::any::<bool>(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let policy = if users { USERS6 } else { OPEN6 };
            let input = cat(&[&[6], &body]);
            let expected = whole(policy, &input);
            proptest::prop_assert_eq!(&bytewise(policy, &input), &expected);
            let (a, b) = input.split_at(at.index(input.len() + 1));
            proptest::prop_assert_eq!(&drive(policy, [a, b]), &expected);
            if let Outcome::Err(e) = &expected.outcome {
                if *e != ProtoError::Noop {
                    proptest::prop_assert_eq!(expected.out.get(..2), Some(&[6, 1][..]));
                }
            }
        }
    }
}
