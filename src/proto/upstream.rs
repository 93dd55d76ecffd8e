//! The client side of the protocols ringsocks speaks to a parent (upstream) proxy: the
//! `socks5://`, `socks5+tls://` and `http://` URL that names the parent ([`UpstreamUrl`]), a
//! SOCKS5 CONNECT handshake (RFC 1928, with RFC 1929 username/password) as a sans-I/O state
//! machine ([`Socks5Connect`]), and an HTTP CONNECT request and response (RFC 9110 section
//! 9.3.6, Basic credentials per RFC 7617).
//!
//! Failures are [`UpstreamError`]s; [`UpstreamError::reply_code`] says what ringsocks answers
//! its own client, so the mapping lives in one place.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use super::{rfc1929, socks5, Command, ProtoError, ReplyCode, TargetAddr};

/// The protocol a parent proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// `socks5://` (or its alias `socks5h://`): SOCKS5 over TCP. Names are always sent to the
    /// parent unresolved (ATYP X'03'), so both schemes behave like curl's `socks5h`.
    Socks5,
    /// `socks5+tls://`: SOCKS5 inside a TLS connection.
    Socks5Tls,
    /// `http://`: an HTTP proxy that tunnels with CONNECT.
    HttpConnect,
}

/// A parent proxy as configured: `socks5://[user:pass@]host:port`,
/// `socks5+tls://[user:pass@]host:port[?ca=/path/ca.pem&sni=name]` or
/// `http://[user:pass@]host:port`. `Display` and `Debug` print the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// The scheme.
    pub kind: UpstreamKind,
    /// A host name, an IPv4 literal or an IPv6 literal (without brackets).
    pub host: String,
    /// The parent's port (required, never 0).
    pub port: u16,
    /// Percent-decoded user and password, each 1 to 255 bytes (RFC 1929 section 2). Never log
    /// the password.
    pub auth: Option<(String, String)>,
    /// `ca=`: a PEM file of roots to trust instead of the system's (`socks5+tls` only).
    pub ca: Option<PathBuf>,
    /// `sni=`: the TLS server name, when it is not `host` (`socks5+tls` only).
    pub sni: Option<String>,
}

impl UpstreamUrl {
    /// The name to verify the parent's certificate against: `sni` if given, else `host`.
    pub fn server_name(&self) -> &str {
        self.sni.as_deref().unwrap_or(&self.host)
    }
}

/// Why an upstream URL was rejected. No variant carries the password (or anything that could
/// hold it), so these are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("missing scheme: expected socks5://, socks5h://, socks5+tls:// or http://")]
    MissingScheme,
    /// A scheme other than `socks5`, `socks5h`, `socks5+tls` or `http` (named only when it
    /// looks like a scheme).
    #[error("unsupported scheme {0:?}: expected socks5, socks5h, socks5+tls or http")]
    UnsupportedScheme(String),
    /// `user@` without `:password`.
    #[error("credentials need both a user and a password (user:password@)")]
    MissingPassword,
    /// `:password@` with an empty user.
    #[error("empty user name")]
    EmptyUser,
    /// `user:@` with an empty password.
    #[error("empty password")]
    EmptyPassword,
    /// The user or the password is longer than 255 bytes after decoding (RFC 1929 limit).
    #[error("{0} is longer than 255 bytes")]
    TooLong(&'static str),
    /// A `%` not followed by two hex digits, in the named field.
    #[error("bad percent-encoding in {0}")]
    BadPercent(&'static str),
    /// The named field does not decode to UTF-8.
    #[error("{0} is not UTF-8 after percent-decoding")]
    NotUtf8(&'static str),
    /// Nothing between `@` (or `://`) and `:port`.
    #[error("missing host")]
    MissingHost,
    /// A host that is not a name, an IPv4 literal or a bracketed IPv6 literal.
    #[error("invalid host: expected a name, an IPv4 address or a bracketed IPv6 address")]
    BadHost,
    /// No `:port`.
    #[error("missing port")]
    MissingPort,
    /// A port that is not a decimal number from 1 to 65535.
    #[error("invalid port: expected 1 to 65535")]
    BadPort,
    /// A path other than `/`, or a fragment. Reserved characters in credentials must be
    /// percent-encoded, or they end the authority early.
    #[error("unexpected path or fragment (percent-encode '/', '?', '#' and '@' in credentials)")]
    Trailing,
    /// A query on a scheme other than `socks5+tls`.
    #[error("query parameters are only allowed with socks5+tls://")]
    QueryNotAllowed,
    /// A query parameter other than `ca` and `sni` (named only when it looks like a name).
    #[error("unknown query parameter {0:?}: expected ca or sni")]
    UnknownParam(String),
    /// A query parameter given twice.
    #[error("query parameter {0} given twice")]
    DuplicateParam(&'static str),
    /// A query parameter with an empty value.
    #[error("query parameter {0} is empty")]
    EmptyParam(&'static str),
    /// An `sni` that is not a host name.
    #[error("invalid sni: expected a host name")]
    BadServerName,
}

impl FromStr for UpstreamUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = s.split_once("://").ok_or(UrlError::MissingScheme)?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => UpstreamKind::Socks5,
            "socks5+tls" => UpstreamKind::Socks5Tls,
            "http" => UpstreamKind::HttpConnect,
            _ => return Err(UrlError::UnsupportedScheme(token(scheme))),
        };
        // RFC 3986 section 3.2: the authority ends at the first '/', '?' or '#'.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        if !(path.is_empty() || path == "/") || query.is_some_and(|q| q.contains('#')) {
            return Err(UrlError::Trailing);
        }
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => (Some(credentials(userinfo)?), hp),
            None => (None, authority),
        };
        let (host, port) = host_port(hostport)?;
        let mut url = UpstreamUrl {
            kind,
            host,
            port,
            auth,
            ca: None,
            sni: None,
        };
        if let Some(q) = query {
            if kind != UpstreamKind::Socks5Tls {
                return Err(UrlError::QueryNotAllowed);
            }
            url.parse_query(q)?;
        }
        Ok(url)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            UpstreamKind::Socks5 => "socks5",
            UpstreamKind::Socks5Tls => "socks5+tls",
            UpstreamKind::HttpConnect => "http",
        };
        write!(f, "{scheme}://")?;
        if let Some((user, _)) = &self.auth {
            write!(f, "{}:***@", Escaped(user, false))?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        let mut sep = '?';
        if let Some(ca) = &self.ca {
            write!(f, "{sep}ca={}", Escaped(&ca.to_string_lossy(), true))?;
            sep = '&';
        }
        if let Some(sni) = &self.sni {
            write!(f, "{sep}sni={}", Escaped(sni, false))?;
        }
        Ok(())
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamUrl")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "***")))
            .field("ca", &self.ca)
            .field("sni", &self.sni)
            .finish()
    }
}

/// Why a parent proxy did not open the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The SOCKS5 parent answered the CONNECT with a non-zero REP (unassigned codes are read
    /// as X'01' general failure).
    #[error("parent proxy refused the connection: {}", .0.as_str())]
    Refused(ReplyCode),
    /// The SOCKS5 parent accepts none of the offered methods (X'FF').
    #[error("parent proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// The SOCKS5 parent rejected the credentials (RFC 1929 STATUS non-zero).
    #[error("parent proxy rejected the credentials")]
    AuthFailed,
    /// The SOCKS5 parent chose username/password, but none are configured.
    #[error("parent proxy requires a username and password")]
    AuthRequired,
    /// The SOCKS5 parent chose a method that was not offered.
    #[error("parent proxy chose method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    /// The SOCKS5 parent's bytes break RFC 1928/1929 (version, reserved byte, ATYP, ...).
    #[error("malformed reply from parent proxy: {0}")]
    Malformed(&'static str),
    /// The HTTP parent answered CONNECT with a status other than 2xx.
    #[error("parent proxy answered CONNECT with HTTP status {0}")]
    Http(u16),
    /// The HTTP parent's status line is not `HTTP/1.0` or `HTTP/1.1`, a code and a reason.
    #[error("malformed HTTP response from parent proxy: {0}")]
    HttpMalformed(&'static str),
    /// No end of the HTTP response header within [`MAX_HTTP_HEADER`] bytes.
    #[error("parent proxy's HTTP response header exceeds {MAX_HTTP_HEADER} bytes")]
    HeaderTooLong,
}

impl UpstreamError {
    /// The reply ringsocks sends its own client. A parent's refusal is passed through; a
    /// parent that rejects ringsocks's credentials or speaks broken protocol is a general
    /// failure, since nothing the client sends can fix it. HTTP statuses map to the reply a
    /// direct connect failing the same way would get (see [`ReplyCode::from_io_error`]):
    /// 403 (denied by the parent's rules) is X'02'; 404, 502, 503 and 504 (unknown host, could
    /// not connect, Squid's connect and DNS failures, timeout) are X'04' host unreachable;
    /// everything else, including 401/407, is X'01'.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Self::Refused(code) => *code,
            Self::Http(403) => ReplyCode::NotAllowed,
            Self::Http(404 | 502 | 503 | 504) => ReplyCode::HostUnreachable,
            Self::NoAcceptableMethod
            | Self::AuthFailed
            | Self::AuthRequired
            | Self::UnexpectedMethod(_)
            | Self::Malformed(_)
            | Self::Http(_)
            | Self::HttpMalformed(_)
            | Self::HeaderTooLong => ReplyCode::GeneralFailure,
        }
    }

    /// Short stable name used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Refused(_) => "parent-refused",
            Self::NoAcceptableMethod => "parent-no-acceptable-method",
            Self::AuthFailed => "parent-auth-failed",
            Self::AuthRequired => "parent-auth-required",
            Self::UnexpectedMethod(_) => "parent-unexpected-method",
            Self::Malformed(_) => "parent-malformed",
            Self::Http(_) => "parent-http-status",
            Self::HttpMalformed(_) => "parent-http-malformed",
            Self::HeaderTooLong => "parent-header-too-long",
        }
    }
}

/// A SOCKS5 CONNECT through a parent, client side.
///
/// Contract: call [`start`](Self::start) once and send what it appended. Then, each time bytes
/// arrive, call [`advance`](Self::advance) with every byte received and not yet consumed;
/// remove the `consumed` bytes from the front of the buffer, send whatever was appended to
/// `out`, and on [`Step::NeedMore`] read more. On [`Step::Done`] the tunnel is open and any
/// bytes after `consumed` are already tunnel data. After `Done` or an error, the handshake is
/// over and `advance` returns [`UpstreamError::Malformed`].
pub struct Socks5Connect {
    command: Command,
    target: TargetAddr,
    auth: Option<(Vec<u8>, Vec<u8>)>,
    state: State,
}

/// What [`Socks5Connect::advance`] reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The handshake needs more bytes from the parent.
    NeedMore {
        /// Bytes of the input that were used up.
        consumed: usize,
    },
    /// The parent connected to the target.
    Done {
        /// Bytes of the input that were used up; the rest is tunnel data.
        consumed: usize,
        /// BND.ADDR and BND.PORT of the reply.
        bound: TargetAddr,
    },
}

/// One step of [`Socks5Connect`]: `None` until a message is complete, then its length and,
/// for the final reply, the bound address.
type Message = Option<(usize, Option<TargetAddr>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Method,
    Auth,
    Reply,
    Over,
}

impl Socks5Connect {
    /// A handshake that will CONNECT to `target`, authenticating with `auth` (user, password)
    /// if the parent asks for it. Fields longer than 255 bytes are truncated on the wire
    /// ([`UpstreamUrl`] never yields those).
    pub fn new(target: &TargetAddr, auth: Option<(&[u8], &[u8])>) -> Self {
        Self::with_command(Command::Connect, target, auth)
    }

    /// The same handshake for another command: UDP ASSOCIATE (with the address the client
    /// will send from, or 0.0.0.0:0), whose reply names the parent's UDP relay.
    pub fn with_command(
        command: Command,
        target: &TargetAddr,
        auth: Option<(&[u8], &[u8])>,
    ) -> Self {
        Self {
            command,
            target: target.clone(),
            auth: auth.map(|(u, p)| (u.to_vec(), p.to_vec())),
            state: State::Idle,
        }
    }

    /// Appends the greeting: method X'00', plus X'02' when credentials are configured. The
    /// request waits for the method selection, since it cannot precede the sub-negotiation.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        let methods: &[u8] = match self.auth {
            Some(_) => &[socks5::METHOD_NO_AUTH, socks5::METHOD_USERPASS],
            None => &[socks5::METHOD_NO_AUTH],
        };
        socks5::encode_greeting(methods, out);
        self.state = State::Method;
    }

    /// Consumes the parent's bytes, appending the next messages to `out` (see the type's
    /// contract). Every complete message in `input` is processed.
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, UpstreamError> {
        let mut consumed = 0;
        loop {
            match self.step(&input[consumed..], out) {
                Err(e) => {
                    self.state = State::Over;
                    return Err(e);
                }
                Ok(None) => return Ok(Step::NeedMore { consumed }),
                Ok(Some((n, None))) => consumed += n,
                Ok(Some((n, Some(bound)))) => {
                    self.state = State::Over;
                    let consumed = consumed + n;
                    return Ok(Step::Done { consumed, bound });
                }
            }
        }
    }

    /// Reads one message and appends the answer it calls for.
    fn step(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<Message, UpstreamError> {
        use UpstreamError::Malformed;
        match self.state {
            State::Idle => Err(Malformed("advance called before start")),
            State::Over => Err(Malformed("handshake already finished")),
            State::Method => {
                let Some(&[ver, method]) = buf.get(..2) else {
                    return Ok(None);
                };
                if ver != socks5::VERSION {
                    return Err(Malformed("method selection version is not 5"));
                }
                match (method, &self.auth) {
                    (socks5::METHOD_NO_AUTH, _) => self.request(out),
                    (socks5::METHOD_USERPASS, Some((user, pass))) => {
                        rfc1929::encode_request(user, pass, out);
                        self.state = State::Auth;
                    }
                    (socks5::METHOD_USERPASS, None) => return Err(UpstreamError::AuthRequired),
                    (socks5::METHOD_NONE_ACCEPTABLE, _) => {
                        return Err(UpstreamError::NoAcceptableMethod)
                    }
                    (m, _) => return Err(UpstreamError::UnexpectedMethod(m)),
                }
                Ok(Some((2, None)))
            }
            State::Auth => {
                let Some(&[ver, status]) = buf.get(..2) else {
                    return Ok(None);
                };
                if ver != rfc1929::VERSION {
                    return Err(Malformed("auth status version is not 1"));
                }
                if status != rfc1929::STATUS_SUCCESS {
                    return Err(UpstreamError::AuthFailed);
                }
                self.request(out);
                Ok(Some((2, None)))
            }
            State::Reply => {
                // A refusal is reported as soon as REP arrives; its address is meaningless.
                match buf.first() {
                    None => return Ok(None),
                    Some(&v) if v != socks5::VERSION => {
                        return Err(Malformed("reply version is not 5"))
                    }
                    Some(_) => {}
                }
                match buf.get(1) {
                    None => return Ok(None),
                    Some(0x00) => {}
                    Some(&rep) => {
                        let code = ReplyCode::from_u8(rep).unwrap_or(ReplyCode::GeneralFailure);
                        return Err(UpstreamError::Refused(code));
                    }
                }
                match buf.get(2) {
                    None => return Ok(None),
                    Some(0x00) => {}
                    Some(_) => return Err(Malformed("reply reserved byte is not 0")),
                }
                match TargetAddr::parse(&buf[3..]) {
                    Ok(None) => Ok(None),
                    Ok(Some((bound, n))) => Ok(Some((3 + n, Some(bound)))),
                    Err(ProtoError::UnknownAddressType(_)) => {
                        Err(Malformed("reply address type is unknown"))
                    }
                    Err(_) => Err(Malformed("reply bound domain is invalid")),
                }
            }
        }
    }

    fn request(&mut self, out: &mut Vec<u8>) {
        socks5::encode_request(self.command, &self.target, out);
        self.state = State::Reply;
    }
}

impl fmt::Debug for Socks5Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.auth.as_ref().map(|(u, _)| String::from_utf8_lossy(u));
        f.debug_struct("Socks5Connect")
            .field("target", &self.target)
            .field("auth", &user.as_ref().map(|u| (u, "***")))
            .field("state", &self.state)
            .finish()
    }
}

/// The longest HTTP response header [`parse_http_connect_response`] waits for.
pub const MAX_HTTP_HEADER: usize = 8192;

/// Appends `CONNECT host:port HTTP/1.1`, `Host` and, with credentials, `Proxy-Authorization:
/// Basic` (RFC 7617; the user must not contain ':'). An IPv6 target is bracketed. A domain
/// byte that is not printable ASCII (the SOCKS parsers never produce one) is written as '?',
/// so a name can never inject a header line.
pub fn http_connect_request(target: &TargetAddr, auth: Option<(&str, &str)>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"CONNECT ");
    push_authority(target, out);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    push_authority(target, out);
    out.extend_from_slice(b"\r\n");
    if let Some((user, pass)) = auth {
        let userpass = [user.as_bytes(), b":", pass.as_bytes()].concat();
        out.extend_from_slice(b"Proxy-Authorization: Basic ");
        base64(&userpass, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads the parent's answer to CONNECT: `Ok(Some(len))` once a 2xx header is complete, where
/// `len` runs through the blank line and any later bytes are tunnel data. The status line is
/// checked as it arrives, so garbage or a non-2xx status fails without waiting for the rest.
/// Header fields are ignored (a 2xx answer to CONNECT has no body, RFC 9110 section 9.3.6);
/// lines must end in CRLF. Interim 1xx responses are not expected and fail as `Http`.
pub fn parse_http_connect_response(input: &[u8]) -> Result<Option<usize>, UpstreamError> {
    let window = &input[..input.len().min(MAX_HTTP_HEADER)];
    let line_end = find(window, b"\r\n");
    let line = &window[..line_end.unwrap_or(window.len())];
    if let Some(code) = status_line(line, line_end.is_some())? {
        if !(200..300).contains(&code) {
            return Err(UpstreamError::Http(code));
        }
    }
    match find(window, b"\r\n\r\n") {
        Some(i) => Ok(Some(i + 4)),
        None if input.len() >= MAX_HTTP_HEADER => Err(UpstreamError::HeaderTooLong),
        None => Ok(None),
    }
}

/// Checks `HTTP/1.x NNN[ reason]` as far as it has arrived; the code once `complete`.
fn status_line(line: &[u8], complete: bool) -> Result<Option<u16>, UpstreamError> {
    use UpstreamError::HttpMalformed;
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = line.len().min(PREFIX.len());
    if line[..n] != PREFIX[..n] {
        return Err(HttpMalformed("not an HTTP/1.x status line"));
    }
    if line.get(7).is_some_and(|&v| v != b'0' && v != b'1') {
        return Err(HttpMalformed("HTTP version is not 1.0 or 1.1"));
    }
    let digits = line.get(9..line.len().min(12)).unwrap_or_default();
    if line.get(8).is_some_and(|&b| b != b' ')
        || !digits.iter().all(u8::is_ascii_digit)
        || line.get(12).is_some_and(|&b| b != b' ')
    {
        return Err(HttpMalformed("bad status code"));
    }
    if line.contains(&b'\n') {
        return Err(HttpMalformed("bare LF in status line"));
    }
    if !complete {
        return Ok(None);
    }
    if digits.len() < 3 {
        return Err(HttpMalformed("status line too short"));
    }
    Ok(Some(
        digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')),
    ))
}

fn push_authority(target: &TargetAddr, out: &mut Vec<u8>) {
    match target {
        TargetAddr::Domain(name, port) => {
            let safe = |b: u8| if b.is_ascii_graphic() { b } else { b'?' };
            out.extend(name.bytes().map(safe));
            out.extend_from_slice(format!(":{port}").as_bytes());
        }
        TargetAddr::Ip(SocketAddr::V4(a)) => out.extend_from_slice(a.to_string().as_bytes()),
        TargetAddr::Ip(SocketAddr::V6(a)) => {
            out.extend_from_slice(format!("[{}]:{}", a.ip(), a.port()).as_bytes())
        }
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(input: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        let keep = chunk.len() + 1;
        for i in 0..4 {
            let c = ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize];
            out.push(if i < keep { c } else { b'=' });
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `user:password`, percent-decoded and checked against RFC 1929's limits.
fn credentials(userinfo: &str) -> Result<(String, String), UrlError> {
    let (user, pass) = userinfo.split_once(':').ok_or(UrlError::MissingPassword)?;
    let (user, pass) = (pct_decode(user, "user")?, pct_decode(pass, "password")?);
    if user.is_empty() {
        return Err(UrlError::EmptyUser);
    }
    if pass.is_empty() {
        return Err(UrlError::EmptyPassword);
    }
    if user.len() > 255 {
        return Err(UrlError::TooLong("user"));
    }
    if pass.len() > 255 {
        return Err(UrlError::TooLong("password"));
    }
    Ok((user, pass))
}

fn host_port(hp: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = hp.strip_prefix('[') {
        let (ip, after) = bracketed.split_once(']').ok_or(UrlError::BadHost)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| UrlError::BadHost)?;
        match after {
            "" => return Err(UrlError::MissingPort),
            a => (
                ip.to_string(),
                a.strip_prefix(':').ok_or(UrlError::BadHost)?,
            ),
        }
    } else {
        let (host, port) = hp.rsplit_once(':').ok_or(UrlError::MissingPort)?;
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        if !is_host_name(host) {
            return Err(UrlError::BadHost);
        }
        (host.to_owned(), port)
    };
    if port.is_empty() {
        return Err(UrlError::MissingPort);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(UrlError::BadPort),
    }
}

impl UpstreamUrl {
    fn parse_query(&mut self, query: &str) -> Result<(), UrlError> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = match key {
                "ca" => "ca",
                "sni" => "sni",
                other => return Err(UrlError::UnknownParam(token(other))),
            };
            let value = pct_decode(value, name)?;
            if value.is_empty() {
                return Err(UrlError::EmptyParam(name));
            }
            let taken = match name {
                "ca" => self.ca.replace(value.into()).is_some(),
                _ if !is_host_name(&value) => return Err(UrlError::BadServerName),
                _ => self.sni.replace(value).is_some(),
            };
            if taken {
                return Err(UrlError::DuplicateParam(name));
            }
        }
        Ok(())
    }
}

/// Letters, digits, '-', '.' and '_' (which IPv4 literals satisfy), at most 255 bytes: what a
/// SOCKS5 domain field can carry.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `s` if it looks like a scheme or parameter name, else a placeholder: error messages must
/// not echo arbitrary input, which could be a misplaced password.
fn token(s: &str) -> String {
    let ok = s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'));
    if ok { s } else { "(unprintable)" }.to_owned()
}

fn pct_decode(s: &str, field: &'static str) -> Result<String, UrlError> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        match (bytes.next().and_then(hex), bytes.next().and_then(hex)) {
            (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
            _ => return Err(UrlError::BadPercent(field)),
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::NotUtf8(field))
}

/// Percent-encodes all but RFC 3986 unreserved characters (and '/' in paths) for `Display`.
struct Escaped<'a>(&'a str, bool);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                write!(f, "{}", b as char)?;
            } else if self.1 && b == b'/' {
                f.write_str("/")?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> UpstreamUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn auth(u: &str, p: &str) -> Option<(String, String)> {
        Some((u.to_owned(), p.to_owned()))
    }

    #[test]
    fn url_schemes() {
        use UpstreamKind::*;
        let table = [
            (
                "socks5://proxy.example:1080",
                Socks5,
                "proxy.example",
                1080,
                None,
            ),
            ("SOCKS5H://10.0.0.1:1080/", Socks5, "10.0.0.1", 1080, None),
            ("socks5://a:b@h:1", Socks5, "h", 1, auth("a", "b")),
            (
                "socks5+tls://u:p@tls.example:443",
                Socks5Tls,
                "tls.example",
                443,
                auth("u", "p"),
            ),
            ("http://squid:3128", HttpConnect, "squid", 3128, None),
            (
                "http://u:p@[2001:db8::1]:8080/",
                HttpConnect,
                "2001:db8::1",
                8080,
                auth("u", "p"),
            ),
            ("socks5://[::1]:65535", Socks5, "::1", 65535, None),
        ];
        for (s, kind, host, port, creds) in table {
            let u = url(s);
            assert_eq!((u.kind, u.host.as_str(), u.port), (kind, host, port), "{s}");
            assert_eq!((u.auth, u.ca, u.sni), (creds, None, None), "{s}");
        }
    }

    #[test]
    fn url_percent_decoding_and_limits() {
        let u = url("socks5://al%69ce:p%40ss%3Aw%2F%c3%a9@h:1");
        assert_eq!(u.auth, auth("alice", "p@ss:w/é"));
        // An unencoded '@' in the password: the last '@' ends the userinfo.
        assert_eq!(url("socks5://u:a@b@h:1").auth, auth("u", "a@b"));
        let max = "x".repeat(255);
        let u = url(&format!("socks5://{max}:{max}@h:1"));
        assert_eq!(u.auth, Some((max.clone(), max.clone())));
        let long = "x".repeat(256);
        let e = |s: String| s.parse::<UpstreamUrl>().unwrap_err();
        assert_eq!(
            e(format!("socks5://{long}:p@h:1")),
            UrlError::TooLong("user")
        );
        assert_eq!(
            e(format!("socks5://u:{long}@h:1")),
            UrlError::TooLong("password")
        );
        // 86 three-byte escapes decode to 258 bytes.
        let escaped = "%E2%82%AC".repeat(86);
        assert_eq!(
            e(format!("socks5://u:{escaped}@h:1")),
            UrlError::TooLong("password")
        );
    }

    #[test]
    fn url_tls_query() {
        let u = url("socks5+tls://h.example:443/?ca=/etc/ssl/my%20ca.pem&sni=front.example");
        assert_eq!(u.ca, Some(PathBuf::from("/etc/ssl/my ca.pem")));
        assert_eq!(u.sni.as_deref(), Some("front.example"));
        assert_eq!(u.server_name(), "front.example");
        let u = url("socks5+tls://h.example:443?ca=/ca.pem");
        assert_eq!((u.ca.is_some(), u.server_name()), (true, "h.example"));
        assert_eq!(url("socks5+tls://h:1?").ca, None);
    }

    #[test]
    fn url_errors() {
        use UrlError::*;
        let table = [
            ("h:1080", MissingScheme),
            ("ftp://h:21", UnsupportedScheme("ftp".into())),
            ("a b://h:1", UnsupportedScheme("(unprintable)".into())),
            ("socks5://u@h:1", MissingPassword),
            ("socks5://:p@h:1", EmptyUser),
            ("socks5://u:@h:1", EmptyPassword),
            ("socks5://u:p%4@h:1", BadPercent("password")),
            ("socks5://u%zz:p@h:1", BadPercent("user")),
            ("socks5://u:%ff@h:1", NotUtf8("password")),
            ("socks5://:1", MissingHost),
            ("socks5://u:p@:1", MissingHost),
            ("socks5://", MissingPort),
            ("socks5://h", MissingPort),
            ("socks5://h:", MissingPort),
            ("socks5://[::1]", MissingPort),
            ("socks5://[::1]x:1", BadHost),
            ("socks5://[zz]:1", BadHost),
            ("socks5://::1:1080", BadHost),
            ("socks5://h*st:1", BadHost),
            ("socks5://h:0", BadPort),
            ("socks5://h:65536", BadPort),
            ("socks5://h:+80", BadPort),
            ("socks5://h:x", BadPort),
            ("socks5://h:1/path", Trailing),
            ("socks5://h:1#frag", Trailing),
            ("socks5+tls://h:1?sni=a#b", Trailing),
            ("socks5://h:1?ca=/x", QueryNotAllowed),
            ("http://h:1/?sni=x", QueryNotAllowed),
            ("socks5+tls://h:1?verify=no", UnknownParam("verify".into())),
            ("socks5+tls://h:1?ca=/a&ca=/b", DuplicateParam("ca")),
            ("socks5+tls://h:1?sni=a&sni=b", DuplicateParam("sni")),
            ("socks5+tls://h:1?ca=", EmptyParam("ca")),
            ("socks5+tls://h:1?sni", EmptyParam("sni")),
            ("socks5+tls://h:1?sni=a%20b", BadServerName),
        ];
        for (s, want) in table {
            assert_eq!(s.parse::<UpstreamUrl>(), Err(want), "{s}");
        }
    }

    #[test]
    fn password_never_printed() {
        let secret = "hunter2";
        for s in [
            "socks5://alice:hunter2@h:1080",
            "socks5+tls://alice:hunter2@h:1?ca=/ca.pem&sni=x",
            "http://alice:hunter2@[::1]:3128/",
        ] {
            let u = url(s);
            assert_eq!(u.auth.as_ref().unwrap().1, secret);
            for shown in [u.to_string(), format!("{u:?}"), format!("{u:#?}")] {
                assert!(!shown.contains(secret) && shown.contains("***"), "{shown}");
            }
        }
        for s in [
            "socks5://alice:hunter2@h:0",
            "socks5://alice:hunter2@h",
            "socks5://alice:hunter2@h*:1",
            "socks5://alice:hunter2@:1",
            "socks5://alice:hunter2",
            "socks5://alice:hunter2:1",
            "socks5://hunter2@h:1",
            "socks5://alice:hunter2%@h:1",
            "socks5://alice:hun/ter2@h:1",
            "socks5://alice:hunter2@h:1?ca=x",
            "alice:hunter2@h:1",
        ] {
            let e = s.parse::<UpstreamUrl>().unwrap_err();
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains(secret), "{s}: {shown}");
            }
        }
        let c = Socks5Connect::new(
            &TargetAddr::Domain("t".into(), 1),
            Some((b"alice", b"hunter2")),
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(secret) && shown.contains("alice"),
            "{shown}"
        );
    }

    #[test]
    fn url_display() {
        let table = [
            ("socks5h://h:1080/", "socks5://h:1080"),
            (
                "socks5://a%40b:pw@10.0.0.1:1080",
                "socks5://a%40b:***@10.0.0.1:1080",
            ),
            (
                "http://u:p@[2001:DB8::1]:3128",
                "http://u:***@[2001:db8::1]:3128",
            ),
            (
                "socks5+tls://u:p@h:443?sni=s.example&ca=/etc/my%20ca.pem",
                "socks5+tls://u:***@h:443?ca=/etc/my%20ca.pem&sni=s.example",
            ),
        ];
        for (input, shown) in table {
            let u = url(input);
            assert_eq!(u.to_string(), shown);
            let again = url(shown);
            assert_eq!(
                (again.kind, again.host, again.port),
                (u.kind, u.host, u.port)
            );
        }
    }

    /// The handshake's result (bound address and tunnel bytes) and the bytes sent.
    type Outcome = (Result<(TargetAddr, Vec<u8>), UpstreamError>, Vec<u8>);
    type Creds<'a> = Option<(&'a [u8], &'a [u8])>;

    /// What a caller loop does: feed everything unconsumed, drain, send, read more.
    fn drive(c: &mut Socks5Connect, server: &[u8], chunk: usize) -> Outcome {
        let (mut sent, mut buf) = (Vec::new(), Vec::new());
        c.start(&mut sent);
        let mut fed = 0;
        while fed < server.len() {
            let end = (fed + chunk).min(server.len());
            buf.extend_from_slice(&server[fed..end]);
            fed = end;
            match c.advance(&buf, &mut sent) {
                Err(e) => return (Err(e), sent),
                Ok(Step::NeedMore { consumed }) => {
                    buf.drain(..consumed);
                }
                Ok(Step::Done { consumed, bound }) => {
                    buf.drain(..consumed);
                    buf.extend_from_slice(&server[fed..]);
                    return (Ok((bound, buf)), sent);
                }
            }
        }
        (Err(UpstreamError::Malformed("test: parent stopped")), sent)
    }

    #[test]
    fn udp_associate_asks_for_a_relay() {
        let any = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
        let mut c = Socks5Connect::with_command(Command::UdpAssociate, &any, None);
        // Method selection X'00', then a success reply naming the relay 10.0.0.9:4000.
        let server = [5, 0, 5, 0, 0, 1, 10, 0, 0, 9, 0x0f, 0xa0];
        let (r, sent) = drive(&mut c, &server, 1);
        assert_eq!(sent, [5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let (bound, rest) = r.unwrap();
        assert_eq!(bound, TargetAddr::Ip("10.0.0.9:4000".parse().unwrap()));
        assert!(rest.is_empty());
    }

    /// Runs `server` whole and byte by byte (and in 3-byte pieces); all must agree.
    fn handshake(target: &TargetAddr, creds: Creds, server: &[u8]) -> Outcome {
        let whole = drive(&mut Socks5Connect::new(target, creds), server, server.len());
        for chunk in [1, 3] {
            let split = drive(&mut Socks5Connect::new(target, creds), server, chunk);
            assert_eq!(split, whole, "chunk {chunk}");
        }
        whole
    }

    const OK_V4: [u8; 10] = [5, 0, 0, 1, 192, 0, 2, 1, 0x04, 0x38];

    #[test]
    fn socks5_no_auth() {
        let target = TargetAddr::Domain("example.com".into(), 443);
        let server = [&[5, 0][..], &OK_V4, b"tunnel"].concat();
        let (res, sent) = handshake(&target, None, &server);
        let bound = TargetAddr::Ip("192.0.2.1:1080".parse().unwrap());
        assert_eq!(res, Ok((bound, b"tunnel".to_vec())));
        let want = [
            &[5, 1, 0, 5, 1, 0, 3, 11][..],
            b"example.com",
            &[0x01, 0xbb],
        ]
        .concat();
        assert_eq!(sent, want);
    }

    #[test]
    fn socks5_with_auth() {
        let target = TargetAddr::Ip("10.1.2.3:80".parse().unwrap());
        let creds: Creds = Some((b"alice", b"s3cret"));
        let server = [&[5, 2, 1, 0][..], &OK_V4].concat();
        let (res, sent) = handshake(&target, creds, &server);
        assert!(res.is_ok());
        let want = [
            &[5, 2, 0, 2][..],
            b"\x01\x05alice\x06s3cret",
            &[5, 1, 0, 1, 10, 1, 2, 3, 0, 80],
        ];
        assert_eq!(sent, want.concat());
        // Offered X'02', but the parent needs no authentication: straight to the request.
        let (res, sent) = handshake(&target, creds, &[&[5, 0][..], &OK_V4].concat());
        assert!(res.is_ok());
        assert_eq!(sent, [5, 2, 0, 2, 5, 1, 0, 1, 10, 1, 2, 3, 0, 80]);
    }

    #[test]
    fn socks5_failures() {
        use UpstreamError::*;
        let t = TargetAddr::Ip("[2001:db8::2]:22".parse().unwrap());
        let creds: Creds = Some((b"u", b"p"));
        let table: [(Creds, &[u8], UpstreamError); 12] = [
            (
                None,
                &[5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0],
                Refused(ReplyCode::ConnectionRefused),
            ),
            (None, &[5, 0, 5, 2], Refused(ReplyCode::NotAllowed)),
            (
                None,
                &[5, 0, 5, 0x42, 0],
                Refused(ReplyCode::GeneralFailure),
            ),
            (None, &[5, 0xff], NoAcceptableMethod),
            (creds, &[5, 0xff], NoAcceptableMethod),
            (None, &[5, 2], AuthRequired),
            (creds, &[5, 2, 1, 1], AuthFailed),
            (creds, &[5, 1], UnexpectedMethod(1)),
            (
                None,
                &[4, 0],
                Malformed("method selection version is not 5"),
            ),
            (
                creds,
                &[5, 2, 5, 0],
                Malformed("auth status version is not 1"),
            ),
            (
                None,
                &[5, 0, 4, 0, 0, 1],
                Malformed("reply version is not 5"),
            ),
            (
                None,
                &[5, 0, 5, 0, 0, 9, 0, 0],
                Malformed("reply address type is unknown"),
            ),
        ];
        for (creds, server, want) in table {
            assert_eq!(
                handshake(&t, creds, server).0,
                Err(want.clone()),
                "{server:?}"
            );
        }
        let (res, _) = handshake(&t, None, &[5, 0, 5, 0, 1, 1]);
        assert_eq!(res, Err(Malformed("reply reserved byte is not 0")));
        let (res, _) = handshake(&t, None, &[5, 0, 5, 0, 0, 3, 0, 0, 0]);
        assert_eq!(res, Err(Malformed("reply bound domain is invalid")));
    }

    #[test]
    fn socks5_bound_address_types() {
        let t = TargetAddr::Ip("[2001:db8::2]:22".parse().unwrap());
        let mut v6 = vec![5, 0, 5, 0, 0, 4];
        v6.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 7]);
        let domain = [
            &[5, 0, 5, 0, 0, 3, 6][..],
            b"parent",
            &[0x1f, 0x90],
            b"\x00x",
        ]
        .concat();
        let table = [
            (
                v6,
                TargetAddr::Ip("[2001:db8::9]:7".parse().unwrap()),
                &b""[..],
            ),
            (
                domain,
                TargetAddr::Domain("parent".into(), 8080),
                &b"\x00x"[..],
            ),
        ];
        for (server, bound, tunnel) in table {
            let (res, sent) = handshake(&t, None, &server);
            assert_eq!(res, Ok((bound, tunnel.to_vec())));
            assert_eq!(&sent[3..7], &[5, 1, 0, 4]);
        }
    }

    #[test]
    fn socks5_misuse() {
        let mut c = Socks5Connect::new(&TargetAddr::Domain("t".into(), 1), None);
        let mut out = Vec::new();
        assert!(matches!(
            c.advance(&[5, 0], &mut out),
            Err(UpstreamError::Malformed(_))
        ));
        let mut c = Socks5Connect::new(&TargetAddr::Domain("t".into(), 1), None);
        c.start(&mut out);
        assert_eq!(c.advance(&[], &mut out), Ok(Step::NeedMore { consumed: 0 }));
        assert_eq!(
            c.advance(&[5], &mut out),
            Ok(Step::NeedMore { consumed: 0 })
        );
        assert_eq!(
            c.advance(&[5, 0, 5], &mut out),
            Ok(Step::NeedMore { consumed: 2 })
        );
        let done = c.advance(&OK_V4, &mut out).unwrap();
        assert!(matches!(done, Step::Done { consumed: 10, .. }));
        let again = c.advance(&OK_V4, &mut out);
        assert_eq!(
            again,
            Err(UpstreamError::Malformed("handshake already finished"))
        );
    }

    #[test]
    fn error_replies_and_names() {
        use ReplyCode as R;
        use UpstreamError::*;
        let table = [
            (Refused(R::TtlExpired), R::TtlExpired, "parent-refused"),
            (
                NoAcceptableMethod,
                R::GeneralFailure,
                "parent-no-acceptable-method",
            ),
            (AuthFailed, R::GeneralFailure, "parent-auth-failed"),
            (AuthRequired, R::GeneralFailure, "parent-auth-required"),
            (
                UnexpectedMethod(1),
                R::GeneralFailure,
                "parent-unexpected-method",
            ),
            (Malformed("x"), R::GeneralFailure, "parent-malformed"),
            (Http(403), R::NotAllowed, "parent-http-status"),
            (Http(404), R::HostUnreachable, "parent-http-status"),
            (Http(502), R::HostUnreachable, "parent-http-status"),
            (Http(503), R::HostUnreachable, "parent-http-status"),
            (Http(504), R::HostUnreachable, "parent-http-status"),
            (Http(407), R::GeneralFailure, "parent-http-status"),
            (Http(401), R::GeneralFailure, "parent-http-status"),
            (Http(500), R::GeneralFailure, "parent-http-status"),
            (
                HttpMalformed("x"),
                R::GeneralFailure,
                "parent-http-malformed",
            ),
            (HeaderTooLong, R::GeneralFailure, "parent-header-too-long"),
        ];
        for (e, code, name) in table {
            assert_eq!((e.reply_code(), e.as_str()), (code, name), "{e}");
        }
        assert_eq!(
            Http(407).to_string(),
            "parent proxy answered CONNECT with HTTP status 407"
        );
    }

    #[test]
    fn base64_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64(plain.as_bytes(), &mut out);
            assert_eq!(out, enc.as_bytes());
        }
    }

    #[test]
    fn http_connect_request_bytes() {
        let cases = [
            (
                TargetAddr::Domain("example.com".into(), 443),
                "example.com:443",
            ),
            (
                TargetAddr::Ip("192.0.2.7:80".parse().unwrap()),
                "192.0.2.7:80",
            ),
            (
                TargetAddr::Ip("[2001:db8::1]:8443".parse().unwrap()),
                "[2001:db8::1]:8443",
            ),
            (TargetAddr::Domain("evil\r\nX: y".into(), 1), "evil??X:?y:1"),
        ];
        for (target, authority) in cases {
            let mut out = Vec::new();
            http_connect_request(&target, None, &mut out);
            let want = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let mut out = b"prefix".to_vec();
        let t = TargetAddr::Domain("h".into(), 1);
        http_connect_request(&t, Some(("Aladdin", "open sesame")), &mut out);
        let want = "prefixCONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\
                    Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn http_connect_response() {
        let ok = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\nSSH-2.0-x";
        assert_eq!(parse_http_connect_response(ok), Ok(Some(ok.len() - 9)));
        for n in 0..ok.len() - 9 {
            assert_eq!(
                parse_http_connect_response(&ok[..n]),
                Ok(None),
                "prefix {n}"
            );
        }
        let short = b"HTTP/1.0 204\r\n\r\n";
        assert_eq!(parse_http_connect_response(short), Ok(Some(short.len())));
        let denied = b"HTTP/1.1 407 Proxy Authentication Required\r\n";
        assert_eq!(
            parse_http_connect_response(denied),
            Err(UpstreamError::Http(407))
        );
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.resize(MAX_HTTP_HEADER - 1, b'a');
        assert_eq!(parse_http_connect_response(&long), Ok(None));
        long.push(b'a');
        assert_eq!(
            parse_http_connect_response(&long),
            Err(UpstreamError::HeaderTooLong)
        );
        long.truncate(MAX_HTTP_HEADER - 4);
        long.extend_from_slice(b"\r\n\r\nrest");
        assert_eq!(
            parse_http_connect_response(&long),
            Ok(Some(MAX_HTTP_HEADER))
        );
        for garbage in [
            &b"SSH-2.0"[..],
            b"\x05\x00",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.2 200",
            b"HTTP/1.1  200",
            b"HTTP/1.1 2x0",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 20\r\n\r\n",
            b"HTTP/1.1 200 OK\nVia: x\n\n",
        ] {
            let r = parse_http_connect_response(garbage);
            assert!(
                matches!(r, Err(UpstreamError::HttpMalformed(_))),
                "{garbage:?}: {r:?}"
            );
        }
    }
}
