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
    /// The first byte was 4 but the SOCKS4 request is incomplete (nothing consumed yet).
    Socks4,
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
                State::Start | State::Socks4 => self.start(rest, out),
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
            State::Socks4 => Version::V4,
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
pub fn encode_reply(
    version: Version,
    code: ReplyCode,
    bound: Option<SocketAddr>,
    out: &mut Vec<u8>,
) {
    match version {
        Version::V5 => socks5::encode_reply(code, bound, out),
        Version::V4 => socks4::encode_reply(code.into(), bound, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::socks4::ReplyCode4;

    const OPEN: AuthPolicy = AuthPolicy {
        password_required: false,
        allow_socks4: false,
    };
    const USERS: AuthPolicy = AuthPolicy {
        password_required: true,
        allow_socks4: false,
    };
    const USERS_AND_SOCKS4: AuthPolicy = AuthPolicy {
        password_required: true,
        allow_socks4: true,
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
}
