//! A small SOCKS4/4a/5/6 client, written independently of the ringsocks server on purpose:
//! the load generator must not share protocol bugs with the thing it measures.
//!
//! SOCKS 6 follows draft-olteanu-intarea-socks-6-11: one Request (with an Authentication Method
//! Advertisement option carrying the Initial Data Length, and an Authentication Data option for
//! username/password) written together with the initial data, then the Authentication Reply and
//! the Operation Reply. No slow (method-specific, multi-round-trip) authentication, no sessions,
//! no idempotence tokens.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Fail, LoadError};

/// How to reach the target: through which kind of proxy, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// No proxy: connect to the target directly (the physical-limit baseline).
    Direct,
    Socks4,
    Socks4a,
    Socks5 {
        auth: Option<(String, String)>,
        /// `socks5+pipe://`: send the greeting, the login and the request in one write, without
        /// waiting for the method selection (one round trip whatever the method; the proxy
        /// must read ahead, as ringsocks does), so that an auth/no-auth comparison measures
        /// the proxy's work rather than RFC 1929's extra round trip.
        pipeline: bool,
    },
    /// `socks6://`: the scenario's first payload, when known at connect time, goes out as
    /// initial data in the same write as the request.
    Socks6 {
        auth: Option<(String, String)>,
    },
}

/// A parsed `socks5://[user:pass@]host:port`, `socks6://[user:pass@]host:port`,
/// `socks4://host:port`, `socks4a://host:port` or `direct`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    /// Resolved proxy address; `None` for [`ProxyKind::Direct`].
    pub addr: Option<SocketAddr>,
}

impl Proxy {
    pub fn direct() -> Self {
        Proxy {
            kind: ProxyKind::Direct,
            addr: None,
        }
    }

    pub fn is_direct(&self) -> bool {
        self.kind == ProxyKind::Direct
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, user) = match &self.kind {
            ProxyKind::Direct => return f.write_str("direct"),
            ProxyKind::Socks4 => ("socks4", None),
            ProxyKind::Socks4a => ("socks4a", None),
            ProxyKind::Socks5 { auth, pipeline } => (
                if *pipeline { "socks5+pipe" } else { "socks5" },
                auth.as_ref().map(|(u, _)| u.as_str()),
            ),
            ProxyKind::Socks6 { auth } => ("socks6", auth.as_ref().map(|(u, _)| u.as_str())),
        };
        write!(f, "{scheme}://")?;
        if let Some(u) = user {
            write!(f, "{u}:***@")?;
        }
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Proxy {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("direct") || s.eq_ignore_ascii_case("none") {
            return Ok(Proxy::direct());
        }
        let bad = |why: &str| LoadError::Config(format!("proxy URL {s:?}: {why}"));
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("expected socks5://, socks6://, socks4://, socks4a:// or direct"))?;
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let auth = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                if user.len() > 255 || pass.len() > 255 {
                    return Err(bad("user and password must be at most 255 bytes"));
                }
                Some((user.to_string(), pass.to_string()))
            }
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" | "socks5+pipe" => {
                let pipeline = scheme.eq_ignore_ascii_case("socks5+pipe");
                ProxyKind::Socks5 { auth, pipeline }
            }
            "socks6" => ProxyKind::Socks6 { auth },
            "socks4" | "socks4a" if userinfo.is_some() => {
                return Err(bad("SOCKS4 has no password authentication"))
            }
            "socks4" => ProxyKind::Socks4,
            "socks4a" => ProxyKind::Socks4a,
            _ => return Err(bad("unknown scheme")),
        };
        let addr = resolve(hostport).map_err(|e| bad(&e))?;
        Ok(Proxy {
            kind,
            addr: Some(addr),
        })
    }
}

/// Resolve `host:port` (IPv6 in brackets), preferring the first address.
pub fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{hostport:?} resolves to no address"))
}

/// The destination a tunnel is opened to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Addr(SocketAddr),
    /// A host name the proxy resolves (SOCKS4a/SOCKS5 domain address type).
    Name(String, u16),
}

impl Dest {
    pub fn port(&self) -> u16 {
        match self {
            Dest::Addr(a) => a.port(),
            Dest::Name(_, p) => *p,
        }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "{a}"),
            Dest::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Connect a TCP socket to `addr`, mapping failures to [`Fail::Connect`].
pub async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, Fail> {
    let s = TcpStream::connect(addr).await.map_err(Fail::Connect)?;
    s.set_nodelay(true).map_err(Fail::Io)?;
    Ok(s)
}

/// Open a tunnel to `dest`: TCP connect (to the proxy, or to `dest` itself when direct) and, for
/// proxies, the SOCKS handshake up to and including the success reply.
pub async fn open_tunnel(proxy: &Proxy, dest: &Dest) -> Result<TcpStream, Fail> {
    open_tunnel_early(proxy, dest, &[]).await.map(|(s, _)| s)
}

/// [`open_tunnel`] for a caller whose first payload is `early`. SOCKS 6 sends (up to
/// [`SOCKS6_MAX_INITIAL_DATA`] bytes of) it as initial data in the same write as the request;
/// the other kinds send none of it. Returns the tunnel and how many bytes of `early` have been
/// sent: the caller sends the rest.
pub async fn open_tunnel_early(
    proxy: &Proxy,
    dest: &Dest,
    early: &[u8],
) -> Result<(TcpStream, usize), Fail> {
    if let (ProxyKind::Socks6 { auth }, Some(paddr)) = (&proxy.kind, proxy.addr) {
        let mut s = tcp_connect(paddr).await?;
        let sent = socks6_connect(&mut s, auth.as_ref(), dest, early).await?;
        return Ok((s, sent));
    }
    let s = match (&proxy.kind, proxy.addr) {
        (ProxyKind::Direct, _) | (_, None) => match dest {
            Dest::Addr(a) => tcp_connect(*a).await,
            Dest::Name(h, p) => {
                let a = tokio::net::lookup_host((h.as_str(), *p))
                    .await
                    .map_err(Fail::Connect)?
                    .next()
                    .ok_or(Fail::Protocol("target name resolves to no address"))?;
                tcp_connect(a).await
            }
        },
        (kind, Some(paddr)) => {
            let mut s = tcp_connect(paddr).await?;
            match kind {
                ProxyKind::Socks5 {
                    auth,
                    pipeline: true,
                } => socks5_pipelined(&mut s, auth.as_ref(), dest).await?,
                ProxyKind::Socks5 { auth, .. } => {
                    socks5_negotiate(&mut s, auth.as_ref()).await?;
                    socks5_command(&mut s, CMD_CONNECT, dest).await?;
                }
                ProxyKind::Socks4 | ProxyKind::Socks4a => {
                    socks4_connect(&mut s, *kind == ProxyKind::Socks4a, dest).await?;
                }
                ProxyKind::Direct | ProxyKind::Socks6 { .. } => {}
            }
            Ok(s)
        }
    }?;
    Ok((s, 0))
}

pub const CMD_CONNECT: u8 = 1;
pub const CMD_UDP_ASSOCIATE: u8 = 3;

/// Method negotiation (and RFC 1929 user/password sub-negotiation when given credentials).
pub async fn socks5_negotiate(
    s: &mut TcpStream,
    auth: Option<&(String, String)>,
) -> Result<(), Fail> {
    let greeting: &[u8] = if auth.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    s.write_all(greeting).await?;
    match (read_method(s).await?, auth) {
        (0, _) => Ok(()),
        (2, Some((user, pass))) => {
            let mut req = Vec::with_capacity(3 + user.len() + pass.len());
            push_login(&mut req, user, pass)?;
            s.write_all(&req).await?;
            read_login_status(s).await
        }
        (m, _) => Err(Fail::NoAcceptableMethod(m)),
    }
}

/// An RFC 1929 login request.
fn push_login(buf: &mut Vec<u8>, user: &str, pass: &str) -> Result<(), Fail> {
    buf.push(1);
    push_len_prefixed(buf, user.as_bytes())?;
    push_len_prefixed(buf, pass.as_bytes())
}

/// The method selection: the method the proxy chose.
async fn read_method(s: &mut TcpStream) -> Result<u8, Fail> {
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await?;
    if reply[0] != 5 {
        return Err(Fail::Protocol("method reply version is not 5"));
    }
    Ok(reply[1])
}

/// The RFC 1929 status: Ok if the login was accepted.
async fn read_login_status(s: &mut TcpStream) -> Result<(), Fail> {
    let mut st = [0u8; 2];
    s.read_exact(&mut st).await?;
    if st[0] != 1 {
        return Err(Fail::Protocol("auth reply version is not 1"));
    }
    if st[1] != 0 {
        return Err(Fail::AuthRejected(st[1]));
    }
    Ok(())
}

/// A whole SOCKS5 reply; BND.ADDR:BND.PORT when it is a success.
async fn read_reply(s: &mut TcpStream) -> Result<Dest, Fail> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(Fail::Protocol("reply version is not 5"));
    }
    if head[1] != 0 {
        return Err(Fail::Socks5Reply(head[1]));
    }
    read_socks5_addr(s, head[3]).await
}

/// Greeting (offering only the method the credentials call for), login and CONNECT in one
/// write; then the method selection, the login status and the reply, in order.
async fn socks5_pipelined(
    s: &mut TcpStream,
    auth: Option<&(String, String)>,
    dest: &Dest,
) -> Result<(), Fail> {
    let method = if auth.is_some() { 2 } else { 0 };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[5, 1, method]);
    if let Some((user, pass)) = auth {
        push_login(&mut out, user, pass)?;
    }
    out.extend_from_slice(&[5, CMD_CONNECT, 0]);
    encode_socks5_addr(&mut out, dest)?;
    s.write_all(&out).await?;
    let chosen = read_method(s).await?;
    if chosen != method {
        return Err(Fail::NoAcceptableMethod(chosen));
    }
    if auth.is_some() {
        read_login_status(s).await?;
    }
    read_reply(s).await.map(drop)
}

fn push_len_prefixed(buf: &mut Vec<u8>, field: &[u8]) -> Result<(), Fail> {
    let len = u8::try_from(field.len()).map_err(|_| Fail::Protocol("field longer than 255"))?;
    buf.push(len);
    buf.extend_from_slice(field);
    Ok(())
}

/// ATYP and address of an IP destination (the same in SOCKS5 and SOCKS6).
fn push_ip(buf: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(a) => {
            buf.push(1);
            buf.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            buf.push(4);
            buf.extend_from_slice(&a.ip().octets());
        }
    }
}

/// Encode a SOCKS5 address (ATYP, address, port).
pub fn encode_socks5_addr(buf: &mut Vec<u8>, dest: &Dest) -> Result<(), Fail> {
    match dest {
        Dest::Addr(a) => push_ip(buf, a),
        Dest::Name(h, _) => {
            buf.push(3);
            push_len_prefixed(buf, h.as_bytes())?;
        }
    }
    buf.extend_from_slice(&dest.port().to_be_bytes());
    Ok(())
}

/// Send a SOCKS5 request and read the full reply; returns BND.ADDR:BND.PORT.
pub async fn socks5_command(s: &mut TcpStream, cmd: u8, dest: &Dest) -> Result<Dest, Fail> {
    let mut req = Vec::with_capacity(22);
    req.extend_from_slice(&[5, cmd, 0]);
    encode_socks5_addr(&mut req, dest)?;
    s.write_all(&req).await?;
    read_reply(s).await
}

async fn read_socks5_addr(s: &mut TcpStream, atyp: u8) -> Result<Dest, Fail> {
    match atyp {
        1 => {
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Dest::Addr(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[4], b[5]]),
            )))
        }
        4 => {
            let mut b = [0u8; 18];
            s.read_exact(&mut b).await?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            Ok(Dest::Addr(SocketAddr::new(
                IpAddr::from(o),
                u16::from_be_bytes([b[16], b[17]]),
            )))
        }
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            let mut b = vec![0u8; usize::from(l[0]) + 2];
            s.read_exact(&mut b).await?;
            let n = b.len() - 2;
            let port = u16::from_be_bytes([b[n], b[n + 1]]);
            let name = String::from_utf8_lossy(&b[..n]).into_owned();
            Ok(Dest::Name(name, port))
        }
        _ => Err(Fail::Protocol("unknown address type in reply")),
    }
}

// ---- SOCKS 6 (draft-olteanu-intarea-socks-6-11) ----

pub const SOCKS6_VERSION: u8 = 6;
/// The Initial Data Length field "MUST NOT be larger than 2^14".
pub const SOCKS6_MAX_INITIAL_DATA: usize = 1 << 14;
/// Option kinds (draft section "IANA Considerations").
pub const OPT_AUTH_METHOD_ADVERT: u16 = 2;
pub const OPT_AUTH_METHOD_SELECT: u16 = 3;
pub const OPT_AUTH_DATA: u16 = 4;
/// Authentication methods (IANA SOCKS methods, as in SOCKS 5).
pub const METHOD_NO_AUTH: u8 = 0;
pub const METHOD_USER_PASS: u8 = 2;

/// Append zeroes until `buf.len() - start` is a multiple of 4 (SOCKS 6 aligns every field).
fn pad4(buf: &mut Vec<u8>, start: usize) {
    while (buf.len() - start) % 4 != 0 {
        buf.push(0);
    }
}

/// One option: Kind (2), Length (2, the whole option, a multiple of 4), data, zero padding.
fn push_socks6_option(buf: &mut Vec<u8>, kind: u16, data: &[u8]) -> Result<(), Fail> {
    let len = (4 + data.len()).div_ceil(4) * 4;
    let len16 = u16::try_from(len).map_err(|_| Fail::Protocol("SOCKS6 option too long"))?;
    let start = buf.len();
    buf.extend_from_slice(&kind.to_be_bytes());
    buf.extend_from_slice(&len16.to_be_bytes());
    buf.extend_from_slice(data);
    pad4(buf, start);
    Ok(())
}

/// The options of a CONNECT request: the Authentication Method Advertisement (always, since it
/// carries the Initial Data Length; it advertises username/password when `auth` is given, and
/// never "no authentication", which is implied) and, with `auth`, an Authentication Data
/// option holding the RFC 1929 request.
pub fn encode_socks6_options(
    buf: &mut Vec<u8>,
    auth: Option<&(String, String)>,
    initial_len: usize,
) -> Result<(), Fail> {
    let idl = u16::try_from(initial_len)
        .ok()
        .filter(|&n| usize::from(n) <= SOCKS6_MAX_INITIAL_DATA)
        .ok_or(Fail::Protocol("SOCKS6 initial data longer than 16 KiB"))?;
    let mut advert = idl.to_be_bytes().to_vec();
    if auth.is_some() {
        advert.push(METHOD_USER_PASS);
    }
    push_socks6_option(buf, OPT_AUTH_METHOD_ADVERT, &advert)?;
    if let Some((user, pass)) = auth {
        let mut data = vec![METHOD_USER_PASS];
        push_login(&mut data, user, pass)?;
        push_socks6_option(buf, OPT_AUTH_DATA, &data)?;
    }
    Ok(())
}

/// A SOCKS 6 Request: Version, Command Code, Options Length, Port, Padding, Address Type,
/// Address (a domain name is its length byte and the name, zero-padded to 4 bytes), Options.
pub fn encode_socks6_request(
    buf: &mut Vec<u8>,
    cmd: u8,
    dest: &Dest,
    auth: Option<&(String, String)>,
    initial_len: usize,
) -> Result<(), Fail> {
    let head = buf.len();
    buf.extend_from_slice(&[SOCKS6_VERSION, cmd, 0, 0]);
    buf.extend_from_slice(&dest.port().to_be_bytes());
    buf.push(0);
    match dest {
        Dest::Addr(a) => push_ip(buf, a),
        Dest::Name(h, _) => {
            buf.push(3);
            let start = buf.len();
            push_len_prefixed(buf, h.as_bytes())?;
            pad4(buf, start);
        }
    }
    let opts = buf.len();
    encode_socks6_options(buf, auth, initial_len)?;
    let olen = u16::try_from(buf.len() - opts).map_err(|_| Fail::Protocol("options too long"))?;
    buf[head + 2..head + 4].copy_from_slice(&olen.to_be_bytes());
    Ok(())
}

/// What an Authentication Reply said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Socks6AuthReply {
    /// Type 0x00 (success) or 0x01 (failure).
    pub kind: u8,
    /// Authentication Method Selection: the method that must proceed.
    pub selected: Option<u8>,
    /// The RFC 1929 status from a username/password Authentication Data option.
    pub login_status: Option<u8>,
}

impl Socks6AuthReply {
    /// Ok if authentication succeeded; else the failure to count.
    pub fn check(&self) -> Result<(), Fail> {
        match (self.kind, self.login_status, self.selected) {
            (0, None | Some(0), _) => Ok(()),
            (_, Some(st), _) if st != 0 => Err(Fail::AuthRejected(st)),
            // A method-specific negotiation would have to follow: this client does none.
            (_, _, Some(m)) => Err(Fail::NoAcceptableMethod(m)),
            (k, ..) => Err(Fail::Socks6AuthFailed(k)),
        }
    }
}

/// Read a SOCKS 6 options block of `len` bytes and pick out the authentication options.
async fn read_socks6_options<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u16,
    out: &mut Socks6AuthReply,
) -> Result<(), Fail> {
    let mut b = vec![0u8; usize::from(len)];
    r.read_exact(&mut b).await?;
    let mut rest = &b[..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(Fail::Protocol("SOCKS6 option shorter than its header"));
        }
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let olen = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if olen < 4 || olen % 4 != 0 || olen > rest.len() {
            return Err(Fail::Protocol("SOCKS6 option length invalid"));
        }
        let data = &rest[4..olen];
        match (kind, data) {
            (OPT_AUTH_METHOD_SELECT, [m, ..]) => out.selected = Some(*m),
            // Username/Password Reply (RFC 1929): VER = 1, STATUS.
            (OPT_AUTH_DATA, [METHOD_USER_PASS, 1, st, ..]) => out.login_status = Some(*st),
            (OPT_AUTH_DATA, [METHOD_USER_PASS, ..]) => {
                return Err(Fail::Protocol("SOCKS6 username/password reply malformed"))
            }
            _ => {} // Unsupported options are ignored, as the draft requires.
        }
        rest = &rest[olen..];
    }
    Ok(())
}

/// Read an Authentication Reply (Version, Type, Options Length, Options). A proxy that does
/// not speak SOCKS 6 shows as [`Fail::Socks6Refused`]: it closes or resets before answering,
/// answers with another version, or sends the one-byte Version Mismatch Reply and closes.
pub async fn read_socks6_auth_reply<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Socks6AuthReply, Fail> {
    let refused = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => Fail::Socks6Refused,
        _ => Fail::Io(e),
    };
    let mut head = [0u8; 4];
    r.read_exact(&mut head[..1]).await.map_err(refused)?;
    if head[0] != SOCKS6_VERSION {
        return Err(Fail::Socks6Refused);
    }
    r.read_exact(&mut head[1..]).await.map_err(refused)?;
    let mut out = Socks6AuthReply {
        kind: head[1],
        ..Default::default()
    };
    read_socks6_options(r, u16::from_be_bytes([head[2], head[3]]), &mut out).await?;
    Ok(out)
}

/// Read an Operation Reply (Version, Reply Code, Options Length, Bind Port, Padding, Address
/// Type, Bind Address, Options); the bind address on success, else [`Fail::Socks6Reply`].
pub async fn read_socks6_op_reply<R: AsyncRead + Unpin>(r: &mut R) -> Result<Dest, Fail> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h).await?;
    if h[0] != SOCKS6_VERSION {
        return Err(Fail::Protocol("operation reply version is not 6"));
    }
    if h[1] != 0 {
        return Err(Fail::Socks6Reply(h[1]));
    }
    let olen = u16::from_be_bytes([h[2], h[3]]);
    let port = u16::from_be_bytes([h[4], h[5]]);
    let bind = match h[7] {
        1 => {
            let mut a = [0u8; 4];
            r.read_exact(&mut a).await?;
            Dest::Addr(SocketAddr::new(IpAddr::from(a), port))
        }
        4 => {
            let mut a = [0u8; 16];
            r.read_exact(&mut a).await?;
            Dest::Addr(SocketAddr::new(IpAddr::from(a), port))
        }
        3 => {
            let mut l = [0u8; 1];
            r.read_exact(&mut l).await?;
            let n = usize::from(l[0]);
            // The name and its padding: the address field is a multiple of 4 bytes.
            let mut b = vec![0u8; (1 + n).div_ceil(4) * 4 - 1];
            r.read_exact(&mut b).await?;
            Dest::Name(String::from_utf8_lossy(&b[..n]).into_owned(), port)
        }
        _ => return Err(Fail::Protocol("unknown address type in operation reply")),
    };
    // Options in an Operation Reply (stack options, session ids) mean nothing to this client.
    read_socks6_options(r, olen, &mut Socks6AuthReply::default()).await?;
    Ok(bind)
}

/// CONNECT through a SOCKS 6 proxy: the request and up to 16 KiB of `early` as initial data
/// in one write, then the Authentication Reply and the Operation Reply. Returns how many bytes
/// of `early` went out as initial data.
pub async fn socks6_connect(
    s: &mut TcpStream,
    auth: Option<&(String, String)>,
    dest: &Dest,
    early: &[u8],
) -> Result<usize, Fail> {
    let n = early.len().min(SOCKS6_MAX_INITIAL_DATA);
    let mut out = Vec::with_capacity(64 + n);
    encode_socks6_request(&mut out, CMD_CONNECT, dest, auth, n)?;
    out.extend_from_slice(&early[..n]);
    s.write_all(&out).await?;
    read_socks6_auth_reply(s).await?.check()?;
    read_socks6_op_reply(s).await?;
    Ok(n)
}

/// SOCKS4 / SOCKS4a CONNECT (empty user id).
pub async fn socks4_connect(s: &mut TcpStream, four_a: bool, dest: &Dest) -> Result<(), Fail> {
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&[4, CMD_CONNECT]);
    req.extend_from_slice(&dest.port().to_be_bytes());
    match (dest, four_a) {
        (Dest::Addr(SocketAddr::V4(a)), false) => {
            req.extend_from_slice(&a.ip().octets());
            req.push(0);
        }
        (Dest::Addr(SocketAddr::V6(_)), _) => {
            return Err(Fail::Unsupported("SOCKS4 cannot address IPv6 targets"))
        }
        (Dest::Name(..), false) => {
            return Err(Fail::Unsupported(
                "SOCKS4 cannot send host names (use socks4a)",
            ))
        }
        (d, true) => {
            // SOCKS4a: 0.0.0.x with x != 0, user id, then the host name (here: the IP as text).
            let host = match d {
                Dest::Addr(a) => a.ip().to_string(),
                Dest::Name(h, _) => h.clone(),
            };
            req.extend_from_slice(&[0, 0, 0, 1, 0]);
            req.extend_from_slice(host.as_bytes());
            req.push(0);
        }
    }
    s.write_all(&req).await?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).await?;
    if reply[0] != 0 {
        return Err(Fail::Protocol("SOCKS4 reply version is not 0"));
    }
    if reply[1] != 0x5a {
        return Err(Fail::Socks4Reply(reply[1]));
    }
    Ok(())
}

/// Prefix `payload` with a SOCKS5 UDP request header (RSV RSV FRAG=0 ATYP ADDR PORT).
pub fn encode_udp_header(buf: &mut Vec<u8>, dest: &Dest) -> Result<(), Fail> {
    buf.extend_from_slice(&[0, 0, 0]);
    encode_socks5_addr(buf, dest)
}

/// Length of the SOCKS5 UDP header at the start of `dgram`, checking it is unfragmented.
pub fn udp_header_len(dgram: &[u8]) -> Result<usize, Fail> {
    if dgram.len() < 4 {
        return Err(Fail::Protocol("UDP datagram shorter than its header"));
    }
    if dgram[2] != 0 {
        return Err(Fail::Protocol("fragmented UDP datagram"));
    }
    let len = match dgram[3] {
        1 => 4 + 4 + 2,
        4 => 4 + 16 + 2,
        3 => 4 + 1 + usize::from(*dgram.get(4).ok_or(Fail::Protocol("short UDP header"))?) + 2,
        _ => return Err(Fail::Protocol("unknown address type in UDP header")),
    };
    if dgram.len() < len {
        return Err(Fail::Protocol("UDP datagram shorter than its header"));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let p: Proxy = "socks5://u:p@127.0.0.1:1080".parse().unwrap();
        assert_eq!(
            p.kind,
            ProxyKind::Socks5 {
                auth: Some(("u".into(), "p".into())),
                pipeline: false,
            }
        );
        assert_eq!(p.addr, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(p.to_string(), "socks5://u:***@127.0.0.1:1080");
        let p: Proxy = "socks5+pipe://u:p@127.0.0.1:1080".parse().unwrap();
        assert!(matches!(p.kind, ProxyKind::Socks5 { pipeline: true, .. }));
        assert_eq!(p.to_string(), "socks5+pipe://u:***@127.0.0.1:1080");
        let p: Proxy = "socks4a://[::1]:9".parse().unwrap();
        assert_eq!(p.kind, ProxyKind::Socks4a);
        assert!("direct".parse::<Proxy>().unwrap().is_direct());
        assert!("http://127.0.0.1:1".parse::<Proxy>().is_err());
        assert!("socks4://u@127.0.0.1:1".parse::<Proxy>().is_err());
        assert!("socks5://127.0.0.1".parse::<Proxy>().is_err());
    }

    #[test]
    fn encodes_addresses() {
        let mut b = Vec::new();
        encode_socks5_addr(&mut b, &Dest::Addr("127.0.0.1:80".parse().unwrap())).unwrap();
        assert_eq!(b, [1, 127, 0, 0, 1, 0, 80]);
        b.clear();
        encode_socks5_addr(&mut b, &Dest::Name("ab".into(), 258)).unwrap();
        assert_eq!(b, [3, 2, b'a', b'b', 1, 2]);
        b.clear();
        encode_udp_header(&mut b, &Dest::Addr("[::1]:1".parse().unwrap())).unwrap();
        assert_eq!(udp_header_len(&b).unwrap(), b.len());
        assert!(udp_header_len(&[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(udp_header_len(&[0, 0, 0, 1, 0]).is_err());
    }
    // SOCKS 6 byte vectors, laid out by hand from the figures of draft-olteanu-intarea-socks-6-11
    // ("SOCKS 6 Request", "Authentication Method Advertisement Option", "Password
    // authentication via a SOCKS Option", "SOCKS 6 Authentication Reply", "SOCKS 6 Operation
    // Reply", "SOCKS 6 Version Mismatch Reply").

    #[test]
    fn parses_socks6_urls() {
        let p: Proxy = "socks6://u:p@127.0.0.1:1080".parse().unwrap();
        assert_eq!(
            p.kind,
            ProxyKind::Socks6 {
                auth: Some(("u".into(), "p".into()))
            }
        );
        assert_eq!(p.to_string(), "socks6://u:***@127.0.0.1:1080");
        let p: Proxy = "socks6://[::1]:1080".parse().unwrap();
        assert_eq!(p.kind, ProxyKind::Socks6 { auth: None });
        assert_eq!(p.to_string(), "socks6://[::1]:1080");
    }

    #[test]
    fn encodes_socks6_request_ipv4_no_auth_with_initial_data() {
        let mut b = Vec::new();
        let dest = Dest::Addr("127.0.0.1:80".parse().unwrap());
        encode_socks6_request(&mut b, CMD_CONNECT, &dest, None, 16).unwrap();
        #[rustfmt::skip]
        let want = [
            6, 1, 0, 8,             // Version 6, CONNECT, Options Length 8
            0, 80, 0, 1,            // Port 80, Padding, Address Type IPv4
            127, 0, 0, 1,           // Address
            0, 2, 0, 8,             // Auth Method Advertisement, Length 8
            0, 16, 0, 0,            // Initial Data Length 16, no methods, padding
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn encodes_socks6_request_domain_user_pass() {
        let mut b = Vec::new();
        let auth = ("u".to_string(), "pw".to_string());
        let dest = Dest::Name("ab".into(), 258);
        encode_socks6_request(&mut b, CMD_CONNECT, &dest, Some(&auth), 0).unwrap();
        #[rustfmt::skip]
        let want = [
            6, 1, 0, 20,            // Version 6, CONNECT, Options Length 8 + 12
            1, 2, 0, 3,             // Port 258, Padding, Address Type Domain Name
            2, b'a', b'b', 0,       // length 2, "ab", padded to 4
            0, 2, 0, 8,             // Auth Method Advertisement, Length 8
            0, 0, 2, 0,             // Initial Data Length 0, method 2 (username/password), padding
            0, 4, 0, 12,            // Authentication Data, Length 12
            2, 1, 1, b'u',          // method 2; RFC 1929: VER 1, ULEN 1, "u"
            2, b'p', b'w', 0,       // PLEN 2, "pw", padding
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn encodes_socks6_request_ipv6() {
        let mut b = Vec::new();
        let dest = Dest::Addr("[::1]:443".parse().unwrap());
        encode_socks6_request(&mut b, CMD_CONNECT, &dest, None, 0).unwrap();
        let mut want = vec![6, 1, 0, 8, 1, 187, 0, 4];
        want.extend_from_slice(&[0; 15]);
        want.push(1);
        want.extend_from_slice(&[0, 2, 0, 8, 0, 0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(b.len() % 4, 0);
        // A name whose length byte and text already fill 4 bytes gets no padding.
        b.clear();
        encode_socks6_request(&mut b, CMD_CONNECT, &Dest::Name("abc".into(), 1), None, 0).unwrap();
        assert_eq!(&b[8..12], &[3, b'a', b'b', b'c']);
        assert_eq!(&b[12..16], &[0, 2, 0, 8]);
        assert!(encode_socks6_options(&mut Vec::new(), None, SOCKS6_MAX_INITIAL_DATA + 1).is_err());
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn auth_reply(bytes: &[u8]) -> Result<Socks6AuthReply, Fail> {
        let mut r = bytes;
        rt().block_on(read_socks6_auth_reply(&mut r))
    }

    #[test]
    fn decodes_socks6_authentication_replies() {
        // Success, no options.
        let a = auth_reply(&[6, 0, 0, 0]).unwrap();
        assert_eq!(a, Socks6AuthReply::default());
        assert!(a.check().is_ok());
        // Success with the Username/Password Reply (VER 1, STATUS 0) in an Auth Data option.
        let a = auth_reply(&[6, 0, 0, 8, 0, 4, 0, 8, 2, 1, 0, 0]).unwrap();
        assert_eq!(a.login_status, Some(0));
        assert!(a.check().is_ok());
        // Failure: login rejected with status 1.
        let a = auth_reply(&[6, 1, 0, 8, 0, 4, 0, 8, 2, 1, 1, 0]).unwrap();
        assert!(matches!(a.check(), Err(Fail::AuthRejected(1))));
        // Failure with an Authentication Method Selection (username/password must proceed).
        let a = auth_reply(&[6, 1, 0, 8, 0, 3, 0, 8, 2, 0, 0, 0]).unwrap();
        assert_eq!(a.selected, Some(2));
        assert!(matches!(a.check(), Err(Fail::NoAcceptableMethod(2))));
        // Failure, nothing more said; unknown options are skipped.
        let a = auth_reply(&[6, 1, 0, 8, 0xfc, 0, 0, 8, 9, 9, 9, 9]).unwrap();
        assert!(matches!(a.check(), Err(Fail::Socks6AuthFailed(1))));
        // Malformed option lengths.
        assert!(matches!(
            auth_reply(&[6, 0, 0, 8, 0, 4, 0, 6, 2, 1, 0, 0]),
            Err(Fail::Protocol(_))
        ));
    }

    #[test]
    fn a_proxy_without_socks6_is_recognised() {
        // The Version Mismatch Reply is the single byte 6, then the proxy closes.
        assert!(matches!(auth_reply(&[6]), Err(Fail::Socks6Refused)));
        // A SOCKS 5 proxy's "no acceptable methods", or a plain close.
        assert!(matches!(auth_reply(&[5, 0xff]), Err(Fail::Socks6Refused)));
        assert!(matches!(auth_reply(&[]), Err(Fail::Socks6Refused)));
        assert_eq!(Fail::Socks6Refused.kind().to_string(), "socks6_refused");
    }

    #[test]
    fn decodes_socks6_operation_replies() {
        // Success, bound to 10.0.0.1:8080, followed by the target's first response bytes.
        let bytes = [6, 0, 0, 0, 0x1f, 0x90, 0, 1, 10, 0, 0, 1, b'X', b'Y'];
        let mut r = &bytes[..];
        let bind = rt().block_on(read_socks6_op_reply(&mut r)).unwrap();
        assert_eq!(bind, Dest::Addr("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(r, b"XY", "the reply is consumed exactly");
        // A domain bind address (no padding needed) and an option (a Stack option, ignored).
        #[rustfmt::skip]
        let bytes = [
            6, 0, 0, 8, 0, 80, 0, 3,
            3, b'a', b'b', b'c',
            0, 1, 0, 8, 0x41, 1, 0, 0,
            b'Z',
        ];
        let mut r = &bytes[..];
        let bind = rt().block_on(read_socks6_op_reply(&mut r)).unwrap();
        assert_eq!(bind, Dest::Name("abc".into(), 80));
        assert_eq!(r, b"Z");
        // A padded domain: length 1, "a", two bytes of padding.
        let bytes = [6, 0, 0, 0, 0, 80, 0, 3, 1, b'a', 0, 0, b'Z'];
        let mut r = &bytes[..];
        let bind = rt().block_on(read_socks6_op_reply(&mut r)).unwrap();
        assert_eq!(bind, Dest::Name("a".into(), 80));
        assert_eq!(r, b"Z");
        // Connection refused.
        let bytes = [6, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let err = rt()
            .block_on(read_socks6_op_reply(&mut &bytes[..]))
            .unwrap_err();
        assert!(matches!(err, Fail::Socks6Reply(5)));
        assert_eq!(err.kind().to_string(), "socks6_reply_05_connection_refused");
    }
}
