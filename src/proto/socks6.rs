//! SOCKS 6 messages, draft-olteanu-intarea-socks-6-11: the Request (section 4), the Version
//! Mismatch Reply (section 5), the Authentication Reply (section 6), the Operation Reply
//! (section 7) and the options they carry (section 8). Server- and client-side encoders and
//! parsers for each.
//!
//! Every message is aligned to 4 bytes: a domain name is its length byte, the name, and NUL
//! padding up to a multiple of 4; every option's Length (which counts its 4-byte Kind/Length
//! header) is a multiple of 4. A Request carries the whole handshake in one message, and a
//! CONNECT may be followed at once by up to 16 KiB of initial data (its length is announced in
//! the Authentication Method Advertisement option).
//!
//! Options, as the server reads them from a Request:
//! - Authentication Method Advertisement (kind 2): the methods and the Initial Data Length
//!   (at most 2^14). At most one.
//! - Authentication Data (kind 4) for method X'02': an RFC 1929 request, NUL-padded. At most one
//!   per method; other methods' data is ignored.
//! - Stack (kind 1), TCP level, code 1: TCP Fast Open, with the leg and the Payload Size. At most
//!   one. Other stack options are unsupported and ignored, as section 8.1 requires.
//! - Everything else is ignored, as section 8 requires of unsupported options: Authentication
//!   Method Selection (a reply option), the Session options (sessions are not implemented; a
//!   Session Request is declined silently as section 8.4 allows, and with no session the
//!   Idempotence options must be ignored too, section 8.5) and unknown or vendor kinds.
//!
//! Every option is still framed-checked: Length at least 4, a multiple of 4, inside the Options
//! field, and a known option's fixed length and zero padding are checked. The Options Length
//! may not exceed 16 KiB. Malformed input is a [`ProtoError`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::addr::{domain, encode_ip, TargetAddr, ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6};
use super::socks5::Methods;
use super::{rfc1929, Command, Parsed, ProtoError, ReplyCode};

/// Protocol version byte.
pub const VERSION: u8 = 0x06;
/// Largest Options Length a message may carry (sections 4, 6 and 7: "MUST NOT exceed 16KB").
pub const MAX_OPTIONS_LEN: usize = 1 << 14;
/// Largest Initial Data Length (section 8.2: "MUST NOT be larger than 2^14").
pub const MAX_INITIAL_DATA: u16 = 1 << 14;

/// Command Code X'00': NOOP.
pub const CMD_NOOP: u8 = 0x00;
/// Command Code X'01': CONNECT.
pub const CMD_CONNECT: u8 = 0x01;
/// Command Code X'02': BIND.
pub const CMD_BIND: u8 = 0x02;
/// Command Code X'03': UDP ASSOCIATE.
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;

/// Option kind 1: Stack.
pub const OPT_STACK: u16 = 0x0001;
/// Option kind 2: Authentication Method Advertisement.
pub const OPT_AUTH_METHOD_ADVERTISEMENT: u16 = 0x0002;
/// Option kind 3: Authentication Method Selection.
pub const OPT_AUTH_METHOD_SELECTION: u16 = 0x0003;
/// Option kind 4: Authentication Data.
pub const OPT_AUTH_DATA: u16 = 0x0004;

/// Authentication method X'00': no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Authentication method X'02': username/password (RFC 1929, draft section 9).
pub const METHOD_USERPASS: u8 = 0x02;
/// Authentication method X'FF': no acceptable methods.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// Stack option level 4: TCP.
pub const STACK_LEVEL_TCP: u8 = 4;
/// Stack option code 1 at the TCP level: TCP Fast Open.
pub const STACK_CODE_TFO: u8 = 1;

/// Authentication Reply Type X'00': success.
pub const AUTH_SUCCESS: u8 = 0x00;
/// Authentication Reply Type X'01': failure.
pub const AUTH_FAILURE: u8 = 0x01;

/// The Command Code of a Request (section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command6 {
    /// NOOP (X'00'): no operation; answered with an Operation Reply, then the client closes.
    Noop,
    /// CONNECT, BIND or UDP ASSOCIATE.
    Op(Command),
}

/// The leg of a Stack option (section 8.1): which of the proxy's connections it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// 1: client-proxy.
    ClientProxy = 1,
    /// 2: proxy-remote.
    ProxyRemote = 2,
    /// 3: both.
    Both = 3,
}

impl Leg {
    /// Whether the option applies to the proxy-remote connection.
    pub fn proxy_remote(self) -> bool {
        matches!(self, Leg::ProxyRemote | Leg::Both)
    }
}

/// A TCP Fast Open stack option (section 8.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastOpen {
    /// The leg the client asked TFO for (the draft's figure fixes it to proxy-remote).
    pub leg: Leg,
    /// The largest SYN payload the client wants; 0 leaves it to the proxy.
    pub payload_size: u16,
}

/// A parsed Request with the options this server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request6<'a> {
    /// The command.
    pub command: Command6,
    /// Address and Port (for NOOP, 0.0.0.0:0 or [::]:0).
    pub target: TargetAddr,
    /// Initial Data Length from the Authentication Method Advertisement option (0 without it).
    /// For CONNECT, that many bytes follow the Request.
    pub initial_data: u16,
    /// The advertised methods. "No authentication required" is always included (section 8.2:
    /// clients must support it and should not advertise it).
    pub methods: Methods,
    /// Username/password from an Authentication Data option for method X'02'.
    pub auth: Option<rfc1929::AuthRequest<'a>>,
    /// The TCP Fast Open stack option, if the client sent one.
    pub fast_open: Option<FastOpen>,
}

/// Parses a Request (section 4): Version, Command Code, Options Length, Port, Padding, Address
/// Type, Address, Options. The fixed fields are checked as soon as they arrive; the options once
/// the whole message is there.
pub fn parse_request(buf: &[u8]) -> Parsed<Request6<'_>> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::BadRequestVersion(ver));
    }
    let Some(&cmd) = buf.get(1) else {
        return Ok(None);
    };
    let command = match cmd {
        CMD_NOOP => Command6::Noop,
        CMD_CONNECT => Command6::Op(Command::Connect),
        CMD_BIND => Command6::Op(Command::Bind),
        CMD_UDP_ASSOCIATE => Command6::Op(Command::UdpAssociate),
        other => return Err(ProtoError::UnknownCommand(other)),
    };
    let Some(opts_len) = options_len(buf)? else {
        return Ok(None);
    };
    let Some((target, addr_end)) = parse_address(buf)? else {
        return Ok(None);
    };
    if command == Command6::Noop && !is_unspecified(&target) {
        // Section 4: for NOOP the Address Type is IPv4 or IPv6 and Address and Port are 0.
        return Err(ProtoError::BadNoop);
    }
    let end = addr_end + opts_len;
    let Some(options) = buf.get(addr_end..end) else {
        return Ok(None);
    };
    let mut req = Request6 {
        command,
        target,
        initial_data: 0,
        methods: Methods::default(),
        auth: None,
        fast_open: None,
    };
    req.methods.insert(METHOD_NO_AUTH);
    let mut advertised = false;
    for option in Options(options) {
        let (kind, data) = option?;
        match kind {
            OPT_AUTH_METHOD_ADVERTISEMENT => {
                if advertised {
                    return Err(ProtoError::DuplicateOption(kind));
                }
                advertised = true;
                // Initial Data Length, then one byte per method; the zero padding reads as
                // method X'00', which is implied anyway.
                let [hi, lo, methods @ ..] = data else {
                    return Err(ProtoError::BadOption(kind));
                };
                let idl = u16::from_be_bytes([*hi, *lo]);
                if idl > MAX_INITIAL_DATA {
                    return Err(ProtoError::InitialDataTooLong(idl));
                }
                req.initial_data = idl;
                for &m in methods {
                    req.methods.insert(m);
                }
            }
            OPT_AUTH_DATA => {
                let [method, rest @ ..] = data else {
                    return Err(ProtoError::BadOption(kind));
                };
                if *method != METHOD_USERPASS {
                    continue;
                }
                if req.auth.is_some() {
                    return Err(ProtoError::DuplicateOption(kind));
                }
                let Some((auth, n)) = rfc1929::parse_request(rest)? else {
                    return Err(ProtoError::BadOption(kind));
                };
                check_padding(&rest[n..], 1 + n)?;
                req.auth = Some(auth);
            }
            OPT_STACK => {
                let [leg_level, code, rest @ ..] = data else {
                    return Err(ProtoError::BadOption(kind));
                };
                let (leg, level) = (leg_level >> 6, leg_level & 0x3F);
                if level != STACK_LEVEL_TCP || *code != STACK_CODE_TFO {
                    continue;
                }
                let leg = match leg {
                    1 => Leg::ClientProxy,
                    2 => Leg::ProxyRemote,
                    3 => Leg::Both,
                    _ => continue,
                };
                let &[hi, lo] = rest else {
                    return Err(ProtoError::BadOption(kind));
                };
                if req.fast_open.is_some() {
                    return Err(ProtoError::DuplicateOption(kind));
                }
                req.fast_open = Some(FastOpen {
                    leg,
                    payload_size: u16::from_be_bytes([hi, lo]),
                });
            }
            _ => {}
        }
    }
    Ok(Some((req, end)))
}

/// What a client puts in its Request besides the command and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestOptions<'a> {
    /// Bytes of initial data that will follow a CONNECT Request (at most 2^14).
    pub initial_data: u16,
    /// Methods to advertise besides the implied "no authentication required".
    pub methods: &'a [u8],
    /// Username and password for an Authentication Data option (each at most 255 bytes).
    pub userpass: Option<(&'a [u8], &'a [u8])>,
    /// Ask for TCP Fast Open on the proxy-remote leg, with this SYN payload size (0: any).
    pub fast_open: Option<u16>,
}

/// Appends a Request (client side). The Authentication Method Advertisement option is sent
/// when there is initial data or a method to advertise.
pub fn encode_request(
    command: Command6,
    target: &TargetAddr,
    opts: &RequestOptions<'_>,
    out: &mut Vec<u8>,
) {
    let cmd = match command {
        Command6::Noop => CMD_NOOP,
        Command6::Op(Command::Connect) => CMD_CONNECT,
        Command6::Op(Command::Bind) => CMD_BIND,
        Command6::Op(Command::UdpAssociate) => CMD_UDP_ASSOCIATE,
    };
    out.extend_from_slice(&[VERSION, cmd]);
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    encode_address(target, out);
    let start = out.len();
    if let Some(size) = opts.fast_open {
        let mut data = vec![
            (Leg::ProxyRemote as u8) << 6 | STACK_LEVEL_TCP,
            STACK_CODE_TFO,
        ];
        data.extend_from_slice(&size.to_be_bytes());
        encode_option(OPT_STACK, &data, out);
    }
    if opts.initial_data > 0 || !opts.methods.is_empty() {
        let mut data = opts.initial_data.to_be_bytes().to_vec();
        data.extend_from_slice(opts.methods);
        encode_option(OPT_AUTH_METHOD_ADVERTISEMENT, &data, out);
    }
    if let Some((user, pass)) = opts.userpass {
        let mut data = vec![METHOD_USERPASS];
        rfc1929::encode_request(user, pass, &mut data);
        encode_option(OPT_AUTH_DATA, &data, out);
    }
    let opts_len = (out.len() - start) as u16;
    out[len_at..len_at + 2].copy_from_slice(&opts_len.to_be_bytes());
}

/// Appends the Version Mismatch Reply (section 5): the single byte X'06', after which the
/// client closes. A SOCKS 6 server sends it to a request of another version.
pub fn encode_version_mismatch(out: &mut Vec<u8>) {
    out.push(VERSION);
}

/// What an Authentication Reply says (section 6 and the options it may carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthReply {
    /// Type X'00' (success) or X'01' (failure).
    pub success: bool,
    /// Authentication Method Selection option: the method that must proceed, or X'FF'.
    pub selected: Option<u8>,
    /// Authentication Data option for method X'02': the RFC 1929 status (`true`: success).
    pub password_ok: Option<bool>,
}

/// Appends an Authentication Reply with the given Type and options.
pub fn encode_auth_reply(reply: &AuthReply, out: &mut Vec<u8>) {
    let ty = if reply.success {
        AUTH_SUCCESS
    } else {
        AUTH_FAILURE
    };
    out.extend_from_slice(&[VERSION, ty]);
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let start = out.len();
    if let Some(method) = reply.selected {
        encode_option(OPT_AUTH_METHOD_SELECTION, &[method], out);
    }
    if let Some(ok) = reply.password_ok {
        // Section 9: the RFC 1929 reply, VER and STATUS, in an Authentication Data option.
        let mut data = vec![METHOD_USERPASS];
        rfc1929::encode_response(ok, &mut data);
        encode_option(OPT_AUTH_DATA, &data, out);
    }
    let opts_len = (out.len() - start) as u16;
    out[len_at..len_at + 2].copy_from_slice(&opts_len.to_be_bytes());
}

/// Parses an Authentication Reply (client side). Options other than Authentication Method
/// Selection and username/password Authentication Data are ignored.
pub fn parse_auth_reply(buf: &[u8]) -> Parsed<AuthReply> {
    let Some(head) = buf.get(..4) else {
        return match buf {
            [v, ..] if *v != VERSION => Err(ProtoError::BadReply),
            [_, t, ..] if *t > AUTH_FAILURE => Err(ProtoError::BadReply),
            _ => Ok(None),
        };
    };
    if head[0] != VERSION || head[1] > AUTH_FAILURE {
        return Err(ProtoError::BadReply);
    }
    let opts_len = u16::from_be_bytes([head[2], head[3]]) as usize;
    if opts_len > MAX_OPTIONS_LEN || opts_len % 4 != 0 {
        return Err(ProtoError::BadOptionsLength(opts_len));
    }
    let Some(options) = buf.get(4..4 + opts_len) else {
        return Ok(None);
    };
    let mut reply = AuthReply {
        success: head[1] == AUTH_SUCCESS,
        selected: None,
        password_ok: None,
    };
    for option in Options(options) {
        let (kind, data) = option?;
        match (kind, data) {
            (OPT_AUTH_METHOD_SELECTION, [method, 0, 0, 0]) => reply.selected = Some(*method),
            (OPT_AUTH_METHOD_SELECTION, _) => return Err(ProtoError::BadOption(kind)),
            (OPT_AUTH_DATA, [METHOD_USERPASS, rest @ ..]) => {
                let Some((ok, n)) = rfc1929::parse_response(rest)? else {
                    return Err(ProtoError::BadOption(kind));
                };
                check_padding(&rest[n..], 1 + n)?;
                reply.password_ok = Some(ok);
            }
            _ => {}
        }
    }
    Ok(Some((reply, 4 + opts_len)))
}

/// Operation Reply codes (section 7): the SOCKS5 ones plus X'09'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode6 {
    /// X'00' success.
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
    /// X'09' connection attempt timed out.
    TimedOut = 0x09,
}

impl ReplyCode6 {
    /// Decodes a Reply Code; unassigned values are `None`.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x09 => Self::TimedOut,
            b => ReplyCode::from_u8(b)?.into(),
        })
    }
}

impl From<ReplyCode> for ReplyCode6 {
    /// The SOCKS5 codes keep their values.
    fn from(c: ReplyCode) -> Self {
        match c {
            ReplyCode::Succeeded => Self::Succeeded,
            ReplyCode::GeneralFailure => Self::GeneralFailure,
            ReplyCode::NotAllowed => Self::NotAllowed,
            ReplyCode::NetworkUnreachable => Self::NetworkUnreachable,
            ReplyCode::HostUnreachable => Self::HostUnreachable,
            ReplyCode::ConnectionRefused => Self::ConnectionRefused,
            ReplyCode::TtlExpired => Self::TtlExpired,
            ReplyCode::CommandNotSupported => Self::CommandNotSupported,
            ReplyCode::AddressTypeNotSupported => Self::AddressTypeNotSupported,
        }
    }
}

/// Appends an Operation Reply (section 7). Without a bound address (failures, NOOP) it is
/// 0.0.0.0:0. `fast_open` is the TFO stack option to echo (section 8.1: a proxy reports every
/// supported stack option the client sent): the payload size used, on the proxy-remote leg.
pub fn encode_operation_reply(
    code: ReplyCode6,
    bound: Option<SocketAddr>,
    fast_open: Option<u16>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&[VERSION, code as u8]);
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    encode_address(&TargetAddr::Ip(bound), out);
    let start = out.len();
    if let Some(size) = fast_open {
        let mut data = vec![
            (Leg::ProxyRemote as u8) << 6 | STACK_LEVEL_TCP,
            STACK_CODE_TFO,
        ];
        data.extend_from_slice(&size.to_be_bytes());
        encode_option(OPT_STACK, &data, out);
    }
    let opts_len = (out.len() - start) as u16;
    out[len_at..len_at + 2].copy_from_slice(&opts_len.to_be_bytes());
}

/// An Operation Reply as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationReply {
    /// Reply Code.
    pub code: ReplyCode6,
    /// Bind Address and Bind Port.
    pub bound: TargetAddr,
    /// The TFO stack option, if the proxy reported one.
    pub fast_open: Option<FastOpen>,
}

/// Parses an Operation Reply (client side). Options other than the TFO stack option are
/// ignored.
pub fn parse_operation_reply(buf: &[u8]) -> Parsed<OperationReply> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(ProtoError::BadReply);
    }
    let Some(&code) = buf.get(1) else {
        return Ok(None);
    };
    let code = ReplyCode6::from_u8(code).ok_or(ProtoError::BadReply)?;
    let Some(opts_len) = options_len(buf)? else {
        return Ok(None);
    };
    let Some((bound, addr_end)) = parse_address(buf)? else {
        return Ok(None);
    };
    let end = addr_end + opts_len;
    let Some(options) = buf.get(addr_end..end) else {
        return Ok(None);
    };
    let mut fast_open = None;
    for option in Options(options) {
        let (kind, data) = option?;
        if let (OPT_STACK, &[leg_level, STACK_CODE_TFO, hi, lo]) = (kind, data) {
            if leg_level & 0x3F == STACK_LEVEL_TCP {
                let leg = match leg_level >> 6 {
                    1 => Leg::ClientProxy,
                    2 => Leg::ProxyRemote,
                    3 => Leg::Both,
                    _ => continue,
                };
                let payload_size = u16::from_be_bytes([hi, lo]);
                fast_open = Some(FastOpen { leg, payload_size });
            }
        }
    }
    Ok(Some((
        OperationReply {
            code,
            bound,
            fast_open,
        },
        end,
    )))
}

/// Options Length (bytes 2-3 of a Request or Operation Reply), checked against the limit.
fn options_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some(b) = buf.get(2..4) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([b[0], b[1]]) as usize;
    if len > MAX_OPTIONS_LEN || len % 4 != 0 {
        return Err(ProtoError::BadOptionsLength(len));
    }
    Ok(Some(len))
}

/// Port, Padding, Address Type and Address (bytes 4 onwards of a Request or Operation Reply):
/// the address and the offset just past it.
fn parse_address(buf: &[u8]) -> Parsed<TargetAddr> {
    let Some(head) = buf.get(4..8) else {
        // Check what has arrived so a bad message is refused at once.
        if let Some(&pad) = buf.get(6) {
            if pad != 0 {
                return Err(ProtoError::BadPadding);
            }
        }
        return Ok(None);
    };
    let port = u16::from_be_bytes([head[0], head[1]]);
    if head[2] != 0 {
        return Err(ProtoError::BadPadding);
    }
    let ip =
        |ip: IpAddr, len: usize| Ok(Some((TargetAddr::Ip(SocketAddr::new(ip, port)), 8 + len)));
    match head[3] {
        ATYP_IPV4 => match buf.get(8..12) {
            None => Ok(None),
            Some(b) => ip(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), 4),
        },
        ATYP_IPV6 => match buf.get(8..24) {
            None => Ok(None),
            Some(b) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(b);
                ip(Ipv6Addr::from(octets).into(), 16)
            }
        },
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(8) else {
                return Ok(None);
            };
            let len = len as usize;
            if len == 0 {
                return Err(ProtoError::BadDomain);
            }
            // The length byte and the name, NUL-padded to a multiple of 4.
            let field = (1 + len).next_multiple_of(4);
            let Some(b) = buf.get(9..8 + field) else {
                return Ok(None);
            };
            let name = domain(&b[..len])?;
            check_padding(&b[len..], 1 + len)?;
            Ok(Some((TargetAddr::Domain(name, port), 8 + field)))
        }
        other => Err(ProtoError::UnknownAddressType(other)),
    }
}

/// Appends Port, Padding, Address Type and Address. An IPv4-mapped IPv6 address is written as
/// IPv4, as the SOCKS5 encoder does; a domain longer than 255 bytes is truncated.
fn encode_address(target: &TargetAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&target.port().to_be_bytes());
    out.push(0);
    match target {
        TargetAddr::Ip(a) => encode_ip(a.ip(), out),
        TargetAddr::Domain(d, _) => {
            let d = &d.as_bytes()[..d.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(d.len() as u8);
            out.extend_from_slice(d);
            out.resize(out.len() + pad_len(1 + d.len()), 0);
        }
    }
}

/// Appends an option: Kind, Length, the data and the zero padding that makes Length a multiple
/// of 4. `data` is short enough (the options here are at most a few hundred bytes).
fn encode_option(kind: u16, data: &[u8], out: &mut Vec<u8>) {
    let len = 4 + data.len() + pad_len(data.len());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + pad_len(data.len()), 0);
}

/// Zero bytes that bring `n` to a multiple of 4.
fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Padding must be zeroes, and minimal: `pad` follows `used` bytes of an option's data or of an
/// address field, and brings them to a multiple of 4.
fn check_padding(pad: &[u8], used: usize) -> Result<(), ProtoError> {
    if pad.len() != pad_len(used) || pad.iter().any(|&b| b != 0) {
        return Err(ProtoError::BadPadding);
    }
    Ok(())
}

/// Whether a NOOP's address is the all-zero IPv4 or IPv6 address and port 0.
fn is_unspecified(t: &TargetAddr) -> bool {
    matches!(t, TargetAddr::Ip(a) if a.ip().is_unspecified() && a.port() == 0)
}

/// Iterates over the options of an Options field: `(kind, data)` with the 4-byte header
/// stripped, or an error (and then nothing more) for a badly framed option.
struct Options<'a>(&'a [u8]);

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u16, &'a [u8]), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let buf = std::mem::take(&mut self.0);
        let Some(head) = buf.get(..4) else {
            return Some(Err(ProtoError::BadOptionsLength(buf.len())));
        };
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        if len < 4 || len % 4 != 0 || len > buf.len() {
            return Some(Err(ProtoError::BadOption(kind)));
        }
        self.0 = &buf[len..];
        Some(Ok((kind, &buf[4..len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn ip(s: &str) -> TargetAddr {
        TargetAddr::Ip(s.parse().unwrap())
    }

    /// Section 4, figure 2: a CONNECT to 192.0.2.1:443 without options.
    const CONNECT_V4: &[u8] = &[
        0x06, 0x01, 0x00, 0x00, // Version, Command Code, Options Length
        0x01, 0xBB, 0x00, 0x01, // Port, Padding, Address Type
        0xC0, 0x00, 0x02, 0x01, // Address
    ];

    /// Section 4: a domain is its length, the name and NUL padding to a multiple of 4.
    const CONNECT_DOMAIN: &[u8] = &[
        0x06, 0x01, 0x00, 0x00, 0x00, 0x50, 0x00, 0x03, //
        0x04, b'a', b'.', b'i', b'o', 0x00, 0x00, 0x00,
    ];

    /// Sections 8.1.4, 8.2, 8.3 and 9: a CONNECT with a TFO stack option, an Authentication
    /// Method Advertisement (100 bytes of initial data, method 2) and username/password
    /// Authentication Data.
    fn connect_with_options() -> Vec<u8> {
        let mut v = vec![
            0x06, 0x01, 0x00, 0x24, 0x01, 0xBB, 0x00, 0x01, 0xC0, 0x00, 0x02, 0x01,
        ];
        // Stack: Kind 1, Length 8, Leg 2 | Level 4 (TCP), Code 1 (TFO), Payload Size 0.
        v.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x84, 0x01, 0x00, 0x00]);
        // Kind 2, Length 8, Initial Data Length 100, method 2, one byte of padding.
        v.extend_from_slice(&[0x00, 0x02, 0x00, 0x08, 0x00, 0x64, 0x02, 0x00]);
        // Kind 4, Length 20, method 2, RFC 1929 request, one byte of padding.
        v.extend_from_slice(&[0x00, 0x04, 0x00, 0x14, 0x02]);
        v.extend_from_slice(b"\x01\x05alice\x06s3cret\x00");
        v
    }

    #[test]
    fn request_vectors() {
        let (r, n) = parse_request(CONNECT_V4).unwrap().unwrap();
        assert_eq!(n, 12);
        assert_eq!(r.command, Command6::Op(Command::Connect));
        assert_eq!(r.target, ip("192.0.2.1:443"));
        assert_eq!((r.initial_data, r.auth, r.fast_open), (0, None, None));
        assert!(r.methods.contains(METHOD_NO_AUTH) && !r.methods.contains(METHOD_USERPASS));

        let (r, n) = parse_request(CONNECT_DOMAIN).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(r.target, TargetAddr::Domain("a.io".into(), 80));

        let req = connect_with_options();
        let (r, n) = parse_request(&req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(r.initial_data, 100);
        assert!(r.methods.contains(METHOD_USERPASS));
        let auth = r.auth.unwrap();
        assert_eq!(
            (auth.username, auth.password),
            (&b"alice"[..], &b"s3cret"[..])
        );
        let tfo = FastOpen {
            leg: Leg::ProxyRemote,
            payload_size: 0,
        };
        assert_eq!(r.fast_open, Some(tfo));

        // The client encoder writes the same bytes.
        let mut out = Vec::new();
        let opts = RequestOptions {
            initial_data: 100,
            methods: &[METHOD_USERPASS],
            userpass: Some((b"alice", b"s3cret")),
            fast_open: Some(0),
        };
        encode_request(
            Command6::Op(Command::Connect),
            &ip("192.0.2.1:443"),
            &opts,
            &mut out,
        );
        assert_eq!(out, req);
        for k in 0..req.len() {
            assert_eq!(parse_request(&req[..k]), Ok(None), "prefix {k}");
        }
        // Bytes after the request (initial data) are not consumed.
        let mut more = req.clone();
        more.extend_from_slice(b"GET /");
        assert_eq!(parse_request(&more).unwrap().unwrap().1, req.len());
    }

    #[test]
    fn noop_and_other_commands() {
        let noop = [6, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let (r, _) = parse_request(&noop).unwrap().unwrap();
        assert_eq!(r.command, Command6::Noop);
        let mut v6 = vec![6, 0, 0, 0, 0, 0, 0, 4];
        v6.extend_from_slice(&[0; 16]);
        assert!(parse_request(&v6).unwrap().is_some());
        // Section 4: a NOOP's Address and Port are 0.
        let bad = [6, 0, 0, 0, 0, 80, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse_request(&bad), Err(ProtoError::BadNoop));
        let mut out = Vec::new();
        encode_request(
            Command6::Noop,
            &ip("0.0.0.0:0"),
            &Default::default(),
            &mut out,
        );
        assert_eq!(out, noop);
        for (cmd, c) in [(2, Command::Bind), (3, Command::UdpAssociate)] {
            let mut req = CONNECT_V4.to_vec();
            req[1] = cmd;
            assert_eq!(
                parse_request(&req).unwrap().unwrap().0.command,
                Command6::Op(c)
            );
        }
    }

    #[test]
    fn request_errors() {
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = connect_with_options();
            f(&mut v);
            parse_request(&v).map(|o| o.map(|(_, n)| n))
        };
        let cases: &[(&[u8], ProtoError)] = &[
            (&[5, 1], ProtoError::BadRequestVersion(5)),
            (&[6, 4], ProtoError::UnknownCommand(4)),
            (&[6, 1, 0, 2], ProtoError::BadOptionsLength(2)),
            (&[6, 1, 0x40, 0x04], ProtoError::BadOptionsLength(0x4004)),
            (&[6, 1, 0, 0, 0, 80, 1], ProtoError::BadPadding),
            (
                &[6, 1, 0, 0, 0, 80, 0, 2],
                ProtoError::UnknownAddressType(2),
            ),
            (&[6, 1, 0, 0, 0, 80, 0, 3, 0], ProtoError::BadDomain),
            (
                b"\x06\x01\x00\x00\x00\x50\x00\x03\x02a b\x00",
                ProtoError::BadDomain,
            ),
            (
                b"\x06\x01\x00\x00\x00\x50\x00\x03\x02ab\x01",
                ProtoError::BadPadding,
            ),
        ];
        for (input, err) in cases {
            assert_eq!(parse_request(input), Err(err.clone()), "{input:?}");
        }
        // Option framing: Length 6 (not a multiple of 4), Length 2, past the end.
        assert_eq!(with(&|v| v[15] = 6), Err(ProtoError::BadOption(1)));
        assert_eq!(with(&|v| v[15] = 2), Err(ProtoError::BadOption(1)));
        assert_eq!(with(&|v| v[31] = 0x18), Err(ProtoError::BadOption(4)));
        // TFO of the wrong length; Initial Data Length over 2^14; non-zero padding.
        assert_eq!(
            with(&|v| {
                v[3] = 0x28;
                v[15] = 12;
                v.splice(20..20, [0; 4]);
            }),
            Err(ProtoError::BadOption(1))
        );
        assert_eq!(
            with(&|v| v[24] = 0x40 | 0x01),
            Err(ProtoError::InitialDataTooLong(0x4164))
        );
        assert_eq!(
            with(&|v| *v.last_mut().unwrap() = 1),
            Err(ProtoError::BadPadding)
        );
        // Bad RFC 1929 inside the option.
        assert_eq!(with(&|v| v[33] = 5), Err(ProtoError::BadAuthVersion(5)));
        // Twice the same option.
        let twice = |range: std::ops::Range<usize>, kind| {
            let mut v = connect_with_options();
            let opt = v[range].to_vec();
            v.extend_from_slice(&opt);
            v[3] += opt.len() as u8;
            assert_eq!(parse_request(&v), Err(ProtoError::DuplicateOption(kind)));
        };
        twice(12..20, OPT_STACK);
        twice(20..28, OPT_AUTH_METHOD_ADVERTISEMENT);
        twice(28..48, OPT_AUTH_DATA);
    }

    #[test]
    fn unsupported_options_are_ignored() {
        let mut v = CONNECT_V4.to_vec();
        let opts: &[&[u8]] = &[
            // Session Request (kind 5), Idempotence Request (kind 11), a vendor option.
            &[0x00, 0x05, 0x00, 0x04],
            &[0x00, 0x0B, 0x00, 0x08, 0, 0, 0, 16],
            &[0xFC, 0x00, 0x00, 0x08, 1, 2, 3, 4],
            // Authentication Data for GSSAPI; Method Selection (a reply option).
            &[0x00, 0x04, 0x00, 0x08, 0x01, 9, 9, 9],
            &[0x00, 0x03, 0x00, 0x08, 0x02, 0, 0, 0],
            // Stack: IP TOS (level 1 code 1), TFO with leg 0.
            &[0x00, 0x01, 0x00, 0x08, 0x81, 0x01, 0x10, 0x00],
            &[0x00, 0x01, 0x00, 0x08, 0x04, 0x01, 0x00, 0x00],
        ];
        let opts = opts.concat();
        v[3] = opts.len() as u8;
        v.extend_from_slice(&opts);
        let (r, n) = parse_request(&v).unwrap().unwrap();
        assert_eq!(n, v.len());
        assert_eq!((r.initial_data, r.auth, r.fast_open), (0, None, None));
    }

    #[test]
    fn auth_reply_vectors() {
        // Section 6: success without options; section 9: the RFC 1929 status in an
        // Authentication Data option; section 8.2: "no acceptable methods" selected.
        let cases: [(AuthReply, &[u8]); 3] = [
            (
                AuthReply {
                    success: true,
                    selected: None,
                    password_ok: None,
                },
                &[6, 0, 0, 0],
            ),
            (
                AuthReply {
                    success: true,
                    selected: None,
                    password_ok: Some(true),
                },
                &[6, 0, 0, 8, 0, 4, 0, 8, 2, 1, 0, 0],
            ),
            (
                AuthReply {
                    success: false,
                    selected: Some(METHOD_NONE_ACCEPTABLE),
                    password_ok: Some(false),
                },
                &[
                    6, 1, 0, 16, 0, 3, 0, 8, 0xFF, 0, 0, 0, 0, 4, 0, 8, 2, 1, 1, 0,
                ],
            ),
        ];
        for (reply, bytes) in cases {
            let mut out = Vec::new();
            encode_auth_reply(&reply, &mut out);
            assert_eq!(out, bytes);
            assert_eq!(parse_auth_reply(bytes), Ok(Some((reply, bytes.len()))));
            for k in 0..bytes.len() {
                assert_eq!(parse_auth_reply(&bytes[..k]), Ok(None), "prefix {k}");
            }
        }
        assert_eq!(parse_auth_reply(&[5]), Err(ProtoError::BadReply));
        assert_eq!(parse_auth_reply(&[6, 2]), Err(ProtoError::BadReply));
        assert_eq!(
            parse_auth_reply(&[6, 0, 0, 6]),
            Err(ProtoError::BadOptionsLength(6))
        );
        // The version mismatch reply, section 5.
        let mut out = Vec::new();
        encode_version_mismatch(&mut out);
        assert_eq!(out, [6]);
    }

    #[test]
    fn operation_reply_vectors() {
        // Section 7 with the TFO option of section 8.1.4 echoed.
        let bytes: &[u8] = &[
            0x06, 0x00, 0x00, 0x08, 0x04, 0x38, 0x00, 0x01, 0xC0, 0x00, 0x02, 0x01, //
            0x00, 0x01, 0x00, 0x08, 0x84, 0x01, 0x00, 0x00,
        ];
        let mut out = Vec::new();
        let bound = "192.0.2.1:1080".parse().unwrap();
        encode_operation_reply(ReplyCode6::Succeeded, Some(bound), Some(0), &mut out);
        assert_eq!(out, bytes);
        let (r, n) = parse_operation_reply(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(r.code, ReplyCode6::Succeeded);
        assert_eq!(r.bound, TargetAddr::Ip(bound));
        assert_eq!(r.fast_open.map(|f| f.leg), Some(Leg::ProxyRemote));
        for k in 0..bytes.len() {
            assert_eq!(parse_operation_reply(&bytes[..k]), Ok(None), "prefix {k}");
        }
        out.clear();
        encode_operation_reply(ReplyCode6::TimedOut, None, None, &mut out);
        assert_eq!(out, [6, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(parse_operation_reply(&[6, 10]), Err(ProtoError::BadReply));
        for b in 0..=9u8 {
            assert_eq!(ReplyCode6::from_u8(b).map(|c| c as u8), Some(b));
        }
        assert_eq!(ReplyCode6::from_u8(10), None);
        assert_eq!(
            ReplyCode6::from(ReplyCode::AddressTypeNotSupported) as u8,
            0x08
        );
    }

    // ---- Properties ----

    fn target() -> impl Strategy<Value = TargetAddr> {
        let name = vec(0x21u8..=0x7e, 1..=255).prop_map(|v| String::from_utf8(v).unwrap());
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(o, p)| TargetAddr::Ip(SocketAddr::new(o.into(), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(o, p)| TargetAddr::Ip(SocketAddr::new(o.into(), p))),
            (name, any::<u16>()).prop_map(|(d, p)| TargetAddr::Domain(d, p)),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Connect),
            Just(Command::Bind),
            Just(Command::UdpAssociate)
        ]
    }

    /// What the parser makes of an encoded address (IPv4-mapped IPv6 is written as IPv4).
    fn canonical(t: &TargetAddr) -> TargetAddr {
        match t {
            TargetAddr::Ip(a) => match a.ip() {
                IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                    Some(v4) => TargetAddr::Ip(SocketAddr::new(v4.into(), a.port())),
                    None => t.clone(),
                },
                _ => t.clone(),
            },
            _ => t.clone(),
        }
    }

    /// Prefix consistency for a parser: shorter input needs more or fails the same way.
    fn check_prefixes<T: PartialEq + std::fmt::Debug>(
        buf: &[u8],
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Result<(), TestCaseError> {
        let whole = parse(buf);
        if let Ok(Some((_, n))) = &whole {
            prop_assert!(*n <= buf.len());
        }
        for k in 0..buf.len() {
            match parse(&buf[..k]) {
                Ok(None) => {}
                Ok(Some((m, n))) => {
                    prop_assert!(n <= k);
                    // A message complete at a prefix is the same message with more bytes.
                    prop_assert_eq!(&parse(buf), &Ok(Some((m, n))));
                }
                Err(e) => prop_assert_eq!(&whole, &Err(e)),
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn request_roundtrip(
            command in command(),
            target in target(),
            initial_data in 0u16..=MAX_INITIAL_DATA,
            methods in vec(1u8..=0xFE, 0..6),
            user in vec(any::<u8>(), 1..=255),
            pass in vec(any::<u8>(), 0..=255),
            with_auth in any::<bool>(),
            fast_open in proptest::option::of(any::<u16>()),
        ) {
            let opts = RequestOptions {
                initial_data,
                methods: &methods,
                userpass: with_auth.then_some((&user[..], &pass[..])),
                fast_open,
            };
            let mut out = Vec::new();
            encode_request(Command6::Op(command), &target, &opts, &mut out);
            prop_assert_eq!(out.len() % 4, 0);
            let (r, n) = parse_request(&out).unwrap().unwrap();
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(r.command, Command6::Op(command));
            prop_assert_eq!(r.target, canonical(&target));
            prop_assert_eq!(r.initial_data, initial_data);
            for m in &methods {
                prop_assert!(r.methods.contains(*m));
            }
            let auth = r.auth.map(|a| (a.username.to_vec(), a.password.to_vec()));
            prop_assert_eq!(auth, with_auth.then(|| (user.clone(), pass.clone())));
            prop_assert_eq!(r.fast_open.map(|f| f.payload_size), fast_open);
            for k in 0..out.len() {
                prop_assert_eq!(parse_request(&out[..k]), Ok(None));
            }
        }

        #[test]
        fn replies_roundtrip(
            code in 0u8..=9,
            bound in proptest::option::of(target().prop_filter_map("an address", |t| match t {
                TargetAddr::Ip(a) => Some(a),
                _ => None,
            })),
            fast_open in proptest::option::of(any::<u16>()),
            success in any::<bool>(),
            selected in proptest::option::of(any::<u8>()),
            password_ok in proptest::option::of(any::<bool>()),
        ) {
            let code = ReplyCode6::from_u8(code).unwrap();
            let mut out = Vec::new();
            encode_operation_reply(code, bound, fast_open, &mut out);
            let (r, n) = parse_operation_reply(&out).unwrap().unwrap();
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(r.code, code);
            let expected = canonical(&TargetAddr::Ip(bound.unwrap_or(([0, 0, 0, 0], 0).into())));
            prop_assert_eq!(r.bound, expected);
            prop_assert_eq!(r.fast_open.map(|f| f.payload_size), fast_open);
            let reply = AuthReply { success, selected, password_ok };
            out.clear();
            encode_auth_reply(&reply, &mut out);
            prop_assert_eq!(parse_auth_reply(&out), Ok(Some((reply, out.len()))));
        }

        /// Arbitrary bytes, and valid messages with arbitrary bytes spliced in: no parser
        /// panics, and every one is consistent over prefixes.
        #[test]
        fn arbitrary_bytes(
            raw in vec(any::<u8>(), 0..64),
            target in target(),
            at in any::<proptest::sample::Index>(),
            junk in vec(any::<u8>(), 1..4),
        ) {
            let mut msg = Vec::new();
            let opts = RequestOptions {
                initial_data: 3,
                methods: &[2],
                userpass: Some((b"u", b"p")),
                fast_open: Some(1),
            };
            encode_request(Command6::Op(Command::Connect), &target, &opts, &mut msg);
            let i = at.index(msg.len());
            let end = (i + junk.len()).min(msg.len());
            msg.splice(i..end, junk);
            for buf in [&raw[..], &msg[..], &[&[6u8][..], &raw[..]].concat()[..]] {
                let owned = |b: &[u8]| parse_request(b).map(|o| o.map(|(r, n)| (format!("{r:?}"), n)));
                check_prefixes(buf, owned)?;
                check_prefixes(buf, parse_auth_reply)?;
                check_prefixes(buf, parse_operation_reply)?;
            }
        }
    }
}
