//! A small SOCKS4/4a/5 client, written independently of the ringsocks server on purpose:
//! the load generator must not share protocol bugs with the thing it measures.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
}

/// A parsed `socks5://[user:pass@]host:port`, `socks4://host:port`, `socks4a://host:port` or `direct`.
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
            .ok_or_else(|| bad("expected socks5://, socks4://, socks4a:// or direct"))?;
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" | "socks5+pipe" => {
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
                let pipeline = scheme.eq_ignore_ascii_case("socks5+pipe");
                ProxyKind::Socks5 { auth, pipeline }
            }
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
    match (&proxy.kind, proxy.addr) {
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
                ProxyKind::Direct => {}
            }
            Ok(s)
        }
    }
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

/// Encode a SOCKS5 address (ATYP, address, port).
pub fn encode_socks5_addr(buf: &mut Vec<u8>, dest: &Dest) -> Result<(), Fail> {
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            buf.push(1);
            buf.extend_from_slice(&a.ip().octets());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            buf.push(4);
            buf.extend_from_slice(&a.ip().octets());
        }
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
}
