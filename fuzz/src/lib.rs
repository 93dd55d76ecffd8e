//! The properties the fuzz targets check, one public function per target.
//!
//! Each function takes the raw fuzz input and panics when ringsocks breaks a property, so
//! libFuzzer saves the input as a crash. The regression replay (`fuzz/tests/regressions.rs`,
//! and `tests/fuzz_regressions.rs` at the repository root, which includes this file with
//! `#[path]`) feeds saved inputs through the same functions. For that reason this file uses
//! only std, `ringsocks`, `serde` and `toml` (all dependencies of the root crate) and has no
//! crate-level attributes.
//!
//! Properties shared by every "need more or a message" parser (see `ringsocks::proto`):
//! - a message never claims more bytes than it was given;
//! - prefix consistency: a prefix that already parses as a message parses the same with more
//!   bytes after it, a prefix that is already an error stays one, and input that needs more
//!   bytes needs more at every shorter length (so a peer that trickles bytes in sees the same
//!   outcome as one that sends them at once);
//! - round trip: what the matching encoder writes for a parsed value parses back to it.

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use ringsocks::config::{self, FileConfig};
use ringsocks::proto::{
    proxy, rfc1929, socks4, socks5, socks6, udp, AuthPolicy, Command, Event, Handshake, ProtoError,
    ReplyCode, Request, TargetAddr, Version,
};
use ringsocks::rules::{AccessConfig, Cidr, Query, Rules};
use serde::Deserialize;

/// A target's check: panics when a property fails for this input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its binary and its corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("handshake", handshake),
    ("socks_codecs", socks_codecs),
    ("udp_header", udp_header),
    ("proxy_protocol", proxy_protocol),
    ("config", config),
];

/// Runs every file in `dir/<target>/` (for each of [`TARGETS`]) through its target and returns
/// how many files ran and, for each one that panicked, its path and the panic message. Files
/// whose names start with `.` (such as `.gitkeep`) are skipped; a missing directory has no
/// files.
pub fn replay(dir: &Path) -> (usize, Vec<String>) {
    let mut ran = 0;
    let mut failures = Vec::new();
    for &(name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ran += 1;
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| target(&data))) {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    (ran, failures)
}

/// The server handshake state machine, fed the same client bytes whole and in pieces.
///
/// Input: a flags byte (bits 0-1: [`AuthPolicy`]; bits 2-3: how credentials are judged;
/// bits 4-7: how the bytes are split), a seed for the split sizes (its bit 0 also enables
/// SOCKS 6), then the client's bytes.
pub fn handshake(data: &[u8]) {
    let [flags, seed, stream @ ..] = data else {
        return;
    };
    let policy = AuthPolicy {
        password_required: flags & 0x01 != 0,
        allow_socks4: flags & 0x02 != 0,
        allow_socks6: seed & 0x01 != 0,
    };
    let judge = (flags >> 2) & 0x03;
    let whole = drive(policy, judge, stream, &[stream.len()]);
    let sizes = split_sizes(*seed, flags >> 4, stream.len());
    let pieces = drive(policy, judge, stream, &sizes);
    assert_eq!(
        pieces, whole,
        "the outcome depends on how the bytes were split ({sizes:?})"
    );
}

/// The SOCKS4/4a, SOCKS5, SOCKS 6 and RFC 1929 decoders (both sides) and the SOCKS5 address
/// field.
///
/// Input: a selector byte, then the bytes for the chosen decoder. Selectors 0xF0 to 0xF2 pick
/// the SOCKS 6 decoders; any other is taken modulo 10 (so older corpus files keep their
/// meaning).
pub fn socks_codecs(data: &[u8]) {
    let [selector, buf @ ..] = data else {
        return;
    };
    match selector {
        0xF0 => return socks6_request(buf),
        0xF1 => {
            if let Ok(Some((reply, n))) = check_parser(buf, socks6::parse_auth_reply, true) {
                let mut out = Vec::new();
                socks6::encode_auth_reply(&reply, &mut out);
                assert!(
                    out.len() <= n,
                    "options the parser ignores are not re-encoded"
                );
                assert_eq!(socks6::parse_auth_reply(&out), Ok(Some((reply, out.len()))));
            }
            return;
        }
        0xF2 => {
            if let Ok(Some((reply, _))) = check_parser(buf, socks6::parse_operation_reply, true) {
                if let TargetAddr::Ip(bound) = reply.bound {
                    let mut out = Vec::new();
                    let tfo = reply.fast_open.map(|f| f.payload_size);
                    socks6::encode_operation_reply(reply.code, Some(bound), tfo, &mut out);
                    let (back, n) = socks6::parse_operation_reply(&out)
                        .expect("an encoded reply parses")
                        .expect("an encoded reply is complete");
                    assert_eq!(n, out.len());
                    assert_eq!(back.code, reply.code);
                    assert_eq!(back.bound, canonical(&reply.bound));
                    assert_eq!(back.fast_open.map(|f| f.payload_size), tfo);
                }
            }
            return;
        }
        _ => {}
    }
    match selector % 10 {
        0 => {
            if let Ok(Some((req, _))) = check_parser(buf, socks4::parse_request, true) {
                socks4_request_round_trip(buf, &req);
            }
        }
        1 => {
            if let Ok(Some((reply, _))) = check_parser(buf, socks4::parse_reply, true) {
                let mut out = Vec::new();
                socks4::encode_reply(reply.code, Some(SocketAddr::V4(reply.bound)), &mut out);
                assert_eq!(socks4::parse_reply(&out), Ok(Some((reply, 8))));
            }
        }
        2 => {
            if let Ok(Some((methods, n))) = check_parser(buf, socks5::parse_greeting, true) {
                let offered: Vec<u8> = (0..=255u8).filter(|&m| methods.contains(m)).collect();
                assert!(!offered.is_empty() && offered.len() <= n - 2);
                let mut out = Vec::new();
                socks5::encode_greeting(&offered, &mut out);
                assert_eq!(
                    socks5::parse_greeting(&out),
                    Ok(Some((methods, 2 + offered.len())))
                );
            }
        }
        3 => {
            if let Ok(Some((m, _))) = check_parser(buf, socks5::parse_method_selection, true) {
                let mut out = Vec::new();
                socks5::encode_method_selection(m, &mut out);
                assert_eq!(socks5::parse_method_selection(&out), Ok(Some((m, 2))));
            }
        }
        4 => {
            if let Ok(Some((req, _))) = check_parser(buf, socks5::parse_request, true) {
                let mut out = Vec::new();
                socks5::encode_request(req.command, &req.target, &mut out);
                assert_eq!(out.len(), 3 + req.target.encoded_len());
                let (back, n) = socks5::parse_request(&out)
                    .expect("an encoded request parses")
                    .expect("an encoded request is complete");
                assert_eq!(n, out.len());
                assert_eq!(back.command, req.command);
                assert_eq!(back.target, canonical(&req.target));
            }
        }
        5 => {
            if let Ok(Some((reply, _))) = check_parser(buf, socks5::parse_reply, true) {
                if let TargetAddr::Ip(bound) = reply.bound {
                    let mut out = Vec::new();
                    socks5::encode_reply(reply.code, Some(bound), &mut out);
                    let (back, n) = socks5::parse_reply(&out)
                        .expect("an encoded reply parses")
                        .expect("an encoded reply is complete");
                    assert_eq!(n, out.len());
                    assert_eq!(back.code, reply.code);
                    assert_eq!(back.bound, canonical(&reply.bound));
                }
            }
        }
        6 => {
            if let Ok(Some((req, n))) = check_parser(buf, rfc1929::parse_request, true) {
                assert!(!req.username.is_empty());
                assert_eq!(n, 3 + req.username.len() + req.password.len());
                let mut out = Vec::new();
                rfc1929::encode_request(req.username, req.password, &mut out);
                assert_eq!(out, &buf[..n]);
            }
        }
        7 => {
            if let Ok(Some((ok, _))) = check_parser(buf, rfc1929::parse_response, true) {
                let mut out = Vec::new();
                rfc1929::encode_response(ok, &mut out);
                assert_eq!(rfc1929::parse_response(&out), Ok(Some((ok, 2))));
            }
        }
        8 => {
            if let Ok(Some((addr, n))) = check_parser(buf, TargetAddr::parse, true) {
                assert_eq!(n, wire_len(&addr));
                address_round_trip(&addr);
            }
        }
        _ => {
            // Every decoder on the same bytes: none may panic, whatever the first byte says.
            let _ = socks4::parse_request(buf);
            let _ = socks4::parse_reply(buf);
            let _ = socks5::parse_greeting(buf);
            let _ = socks5::parse_method_selection(buf);
            let _ = socks5::parse_request(buf);
            let _ = socks5::parse_reply(buf);
            let _ = rfc1929::parse_request(buf);
            let _ = rfc1929::parse_response(buf);
            let _ = TargetAddr::parse(buf);
            let _ = socks6::parse_request(buf);
            let _ = socks6::parse_auth_reply(buf);
            let _ = socks6::parse_operation_reply(buf);
        }
    }
}

/// The SOCKS5 UDP request header (RFC 1928 section 7) at the front of a datagram.
pub fn udp_header(data: &[u8]) {
    let Ok(Some((header, n))) = check_parser(data, udp::parse_header, true) else {
        return;
    };
    assert_eq!(header.frag, 0, "fragments are refused");
    assert_eq!(n, 3 + wire_len(&header.addr));
    let mut out = Vec::new();
    udp::encode_header(&header.addr, &mut out);
    let (back, m) = udp::parse_header(&out)
        .expect("an encoded header parses")
        .expect("an encoded header is complete");
    assert_eq!(m, out.len());
    assert_eq!(back.addr, canonical(&header.addr));
    // The allocation-free writer used on the reply path.
    if let TargetAddr::Ip(a) = header.addr {
        let mut raw = [0xAA; udp::MAX_IP_HEADER];
        let len = udp::write_ip_header(&a, &mut raw);
        assert_eq!(len, udp::ip_header_len(&a));
        let (back, m) = udp::parse_header(&raw[..len])
            .expect("a written header parses")
            .expect("a written header is complete");
        assert_eq!((back.addr, m), (TargetAddr::Ip(a), len));
    }
}

/// The HAProxy PROXY protocol header, v1 and v2.
pub fn proxy_protocol(data: &[u8]) {
    let result = check_parser(data, proxy::parse, false);
    match result {
        Ok(None) => {
            // A bounded amount of buffering decides: a v1 line within 107 bytes, anything
            // within MAX_HEADER_LEN.
            assert!(
                data.len() < proxy::MAX_HEADER_LEN,
                "still undecided after {} bytes",
                data.len()
            );
            if data.starts_with(proxy::V1_PREFIX) {
                assert!(data.len() < proxy::V1_MAX_LEN, "v1 line over 107 bytes");
            }
        }
        Ok(Some((header, n))) => {
            assert!(n <= proxy::MAX_HEADER_LEN);
            if data.starts_with(proxy::V1_PREFIX) {
                assert!(n <= proxy::V1_MAX_LEN);
                assert!(data[..n].ends_with(b"\r\n"));
            }
            let v2 = proxy::encode_v2(&header);
            assert_eq!(
                proxy::parse(&v2),
                Ok(Some((header, v2.len()))),
                "v2 re-encoding"
            );
            if let proxy::ProxyHeader::Proxied {
                source,
                destination,
            } = header
            {
                assert_eq!(
                    source.is_ipv4(),
                    destination.is_ipv4(),
                    "one family per header"
                );
                let v1 = proxy::encode_v1(source, destination);
                assert_eq!(
                    proxy::parse(&v1),
                    Ok(Some((header, v1.len()))),
                    "v1 re-encoding"
                );
            }
        }
        Err(e) => {
            let _ = e.as_str();
        }
    }
}

/// The TOML config file: [`FileConfig::parse`], the `[access]` rules compiled as the server
/// does, and the small value parsers, on arbitrary UTF-8. A parse error must not quote a
/// password (see [`check_no_password`]).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = FileConfig::parse(text);
    let generic = toml::from_str::<toml::Table>(text).ok();
    if let (Err(message), Some(table)) = (&parsed, &generic) {
        check_no_password(table, text, message);
    }
    if let Some(access) = generic.as_ref().and_then(|t| t.get("access")) {
        if let Ok(mut access) = AccessConfig::deserialize(access.clone()) {
            access.locate(text);
            if let Ok(rules) = Rules::compile(&access) {
                check_rules(&rules);
            }
        }
    }
    // The value parsers behind the flags and the file's strings.
    let _ = config::parse_duration(text);
    let _ = config::parse_advertise(text);
    let _ = Cidr::parse(text);
}

/// Checks the properties every incremental parser shares and returns its result on `buf`.
/// `same_error`: a prefix's error must be exactly the error of the whole input (the SOCKS
/// codecs decide each field once); otherwise only that it is an error.
fn check_parser<'a, T, E>(
    buf: &'a [u8],
    parse: impl Fn(&'a [u8]) -> Result<Option<(T, usize)>, E>,
    same_error: bool,
) -> Result<Option<(T, usize)>, E>
where
    T: PartialEq + Debug,
    E: PartialEq + Debug,
{
    let full = parse(buf);
    if let Ok(Some((value, n))) = &full {
        assert!(
            *n > 0 && *n <= buf.len(),
            "claims {n} of {} bytes",
            buf.len()
        );
        match parse(&buf[..*n]) {
            Ok(Some((alone, m))) => {
                assert_eq!(
                    (&alone, m),
                    (value, *n),
                    "the message alone parses differently"
                )
            }
            other => panic!("the message alone ({n} bytes) gives {other:?}"),
        }
    }
    for k in prefix_lengths(buf.len()) {
        match (parse(&buf[..k]), &full) {
            (Ok(None), _) => {}
            (Ok(Some(early)), Ok(Some(whole))) => {
                assert_eq!(&early, whole, "{k}-byte prefix parses differently")
            }
            (Err(early), Err(whole)) => {
                if same_error {
                    assert_eq!(&early, whole, "{k}-byte prefix fails differently")
                }
            }
            (early, whole) => panic!("{k}-byte prefix gives {early:?}, all bytes {whole:?}"),
        }
    }
    full
}

/// Prefix lengths to try: every one for short input, a spread for long input.
fn prefix_lengths(len: usize) -> impl Iterator<Item = usize> {
    let step = if len <= 256 { 1 } else { len / 128 };
    (0..len).filter(move |&k| k < 64 || k % step == 0 || k + 4 >= len)
}

/// An address as the encoders write it: an IPv4-mapped IPv6 address becomes IPv4.
fn canonical(addr: &TargetAddr) -> TargetAddr {
    match addr {
        TargetAddr::Ip(SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(v4, a.port()))),
            None => addr.clone(),
        },
        _ => addr.clone(),
    }
}

/// Bytes a parsed address took on the wire (an IPv4-mapped address sent as IPv6 took 19,
/// though [`TargetAddr::encoded_len`] counts the 7 its IPv4 encoding takes).
fn wire_len(addr: &TargetAddr) -> usize {
    match addr {
        TargetAddr::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
        TargetAddr::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
        TargetAddr::Domain(d, _) => 1 + 1 + d.len() + 2,
    }
}

/// A SOCKS 6 Request: the shared parser properties, then what it parsed re-encodes to a
/// Request that parses the same (the options the parser ignores aside).
fn socks6_request(buf: &[u8]) {
    let Ok(Some((req, n))) = check_parser(buf, socks6::parse_request, true) else {
        return;
    };
    assert_eq!(n % 4, 0, "SOCKS 6 messages are aligned");
    let methods: Vec<u8> = (1..=255u8).filter(|&m| req.methods.contains(m)).collect();
    let opts = socks6::RequestOptions {
        initial_data: req.initial_data,
        methods: &methods,
        userpass: req.auth.map(|a| (a.username, a.password)),
        fast_open: req.fast_open.map(|f| f.payload_size),
    };
    let mut out = Vec::new();
    socks6::encode_request(req.command, &req.target, &opts, &mut out);
    let (back, m) = socks6::parse_request(&out)
        .expect("an encoded request parses")
        .expect("an encoded request is complete");
    assert_eq!(m, out.len());
    assert_eq!(back.command, req.command);
    assert_eq!(back.target, canonical(&req.target));
    assert_eq!(back.initial_data, req.initial_data);
    assert_eq!(back.auth, req.auth);
    assert_eq!(back.methods, req.methods);
    assert_eq!(
        back.fast_open.map(|f| f.payload_size),
        req.fast_open.map(|f| f.payload_size)
    );
}

fn address_round_trip(addr: &TargetAddr) {
    let mut out = Vec::new();
    addr.encode(&mut out);
    assert_eq!(out.len(), addr.encoded_len());
    assert_eq!(
        TargetAddr::parse(&out),
        Ok(Some((canonical(addr), out.len())))
    );
}

fn socks4_request_round_trip(buf: &[u8], req: &socks4::Request) {
    let raw_userid = buf[8..].split(|&b| b == 0).next().unwrap_or_default();
    if std::str::from_utf8(raw_userid).is_err() {
        // USERID is decoded lossily; re-encoding writes the replacement characters.
        return;
    }
    let mut out = Vec::new();
    socks4::encode_request(req.command, &req.target, req.userid.as_bytes(), &mut out);
    assert_eq!(
        socks4::parse_request(&out),
        Ok(Some((req.clone(), out.len())))
    );
}

/// What a caller observes of one handshake.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    /// Everything the server wrote, including the reply to the request.
    out: Vec<u8>,
    end: End,
    /// Bytes consumed, unless it ended in an error.
    consumed: Option<usize>,
    /// Credentials it was asked to check.
    creds: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    NeedMore,
    Request(Request),
    Err(ProtoError),
}

/// Longest input a handshake may hold unconsumed while asking for more: a SOCKS4a request
/// with both fields at their limit. Anything longer means a peer can make it buffer without
/// bound.
const MAX_PENDING: usize = 8 + 2 * (socks4::MAX_FIELD + 1);

/// The same for SOCKS 6: the fixed header, the longest padded domain and the most options.
const MAX_PENDING6: usize = 8 + 256 + socks6::MAX_OPTIONS_LEN;

/// Plays the caller of [`Handshake`]: receive `sizes[i]` more bytes, advance, answer
/// credentials, until a request, an error, or the end of the stream.
fn drive(policy: AuthPolicy, judge: u8, stream: &[u8], sizes: &[usize]) -> Run {
    let mut hs = Handshake::new(policy);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut creds = Vec::new();
    let mut end = End::NeedMore;
    'feed: for &size in sizes {
        let size = size.min(stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + size]);
        fed += size;
        loop {
            let step = hs.advance(&pending, &mut out);
            let used = match &step {
                Ok((_, n)) => *n,
                Err(_) => 0,
            };
            assert!(
                used <= pending.len(),
                "consumed {used} of {}",
                pending.len()
            );
            match step {
                Ok((Event::NeedMore, _)) => {
                    pending.drain(..used);
                    consumed += used;
                    let max = match hs.version() {
                        Version::V6 => MAX_PENDING6,
                        _ => MAX_PENDING,
                    };
                    assert!(
                        pending.len() <= max,
                        "holds {} unconsumed bytes and wants more",
                        pending.len()
                    );
                    continue 'feed;
                }
                Ok((Event::Authenticate(c), _)) => {
                    assert!(!c.username.is_empty() && c.username.len() <= 255);
                    assert!(c.password.len() <= 255);
                    let ok = match judge {
                        0 => true,
                        1 => false,
                        2 => c.username == c.password,
                        _ => !c.password.is_empty(),
                    };
                    creds.push((c.username.to_vec(), c.password.to_vec()));
                    pending.drain(..used);
                    consumed += used;
                    let written = out.len();
                    let verdict = hs.authenticated(ok, &mut out);
                    if hs.version() == Version::V6 {
                        // An Authentication Reply carrying the RFC 1929 status in an option.
                        let status = u8::from(!ok);
                        assert_eq!(
                            out[written..],
                            [6, status, 0, 8, 0, 4, 0, 8, 2, 1, status, 0]
                        );
                    } else {
                        assert_eq!(out.len(), written + 2, "one RFC 1929 status");
                        assert_eq!(out[written..], [0x01, u8::from(!ok)]);
                    }
                    match verdict {
                        Ok(()) => assert!(ok),
                        Err(e) => {
                            assert!(!ok);
                            assert_eq!(e, ProtoError::AuthFailed);
                            end = End::Err(e);
                            break 'feed;
                        }
                    }
                }
                Ok((Event::Request(req), _)) => {
                    pending.drain(..used);
                    consumed += used;
                    check_request(policy, &hs, &req, &creds, &out);
                    let bound = SocketAddr::from(([192, 0, 2, 1], 0x1080));
                    let before = out.len();
                    hs.reply(ReplyCode::Succeeded, Some(bound), &mut out);
                    let expected = match req.version {
                        Version::V4 => 8,
                        Version::V5 => 10,
                        Version::V6 => 12,
                    };
                    assert_eq!(out.len() - before, expected);
                    end = End::Request(req);
                    break 'feed;
                }
                Err(e) => {
                    let _ = e.as_str();
                    end = End::Err(e);
                    break 'feed;
                }
            }
        }
    }
    if end != End::NeedMore {
        // Finished: nothing more is consumed or written, whatever arrives.
        pending.extend_from_slice(&stream[fed..]);
        pending.extend_from_slice(&[0x05, 0x01, 0x00, 0x04, 0x01, 0x00, 0x50]);
        let written = out.len();
        let again = hs.advance(&pending, &mut out);
        assert!(
            matches!(again, Ok((Event::NeedMore, 0))),
            "advanced after the end: {again:?}"
        );
        assert_eq!(out.len(), written, "wrote after the end");
    }
    // An error reports no count (the connection is closed), so the bytes consumed before it
    // depend on how they arrived.
    let consumed = match end {
        End::Err(_) => None,
        _ => Some(consumed),
    };
    Run {
        out,
        end,
        consumed,
        creds,
    }
}

/// What a request may be, given the policy and what happened before it.
fn check_request(
    policy: AuthPolicy,
    hs: &Handshake,
    req: &Request,
    creds: &[(Vec<u8>, Vec<u8>)],
    out: &[u8],
) {
    assert_eq!(hs.version(), req.version);
    if req.version != Version::V6 {
        assert_eq!((req.initial_data, req.fast_open), (0, false));
    }
    match req.version {
        Version::V4 => {
            assert!(!policy.password_required || policy.allow_socks4);
            assert!(out.is_empty(), "SOCKS4 has nothing to say before the reply");
            assert!(creds.is_empty());
            assert_ne!(req.command, Command::UdpAssociate);
            assert_ne!(req.userid.as_deref(), Some(""));
        }
        Version::V5 => {
            assert_eq!(out.first(), Some(&0x05), "method selection first");
            if policy.password_required {
                assert_eq!(out[..2], [0x05, 0x02], "password required");
                assert_eq!(creds.len(), 1);
            }
            assert!(req.userid.is_none());
        }
        Version::V6 => {
            assert!(policy.allow_socks6);
            // The last thing written is the successful Authentication Reply.
            assert_eq!(out.first(), Some(&0x06));
            if policy.password_required {
                assert_eq!(creds.len(), 1);
            }
            assert!(req.userid.is_none());
            assert!(req.initial_data <= 1 << 14);
            assert!(req.initial_data == 0 || req.command == Command::Connect);
        }
    }
}

/// Split sizes for the stream: byte by byte (`mode` 0) or pseudo-random sizes from 1 to
/// `4 * mode`, from a small xorshift so the input alone decides them.
fn split_sizes(seed: u8, mode: u8, len: usize) -> Vec<usize> {
    let mut state = u32::from(seed) | 0x100;
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < len {
        let size = if mode == 0 {
            1
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + (state as usize) % (4 * mode as usize)
        };
        sizes.push(size);
        total += size;
    }
    sizes
}

/// A compiled `[access]` table answers queries without panicking, and the name and the
/// address forms of a query agree for a target given as an address.
fn check_rules(rules: &Rules) {
    let _ = (
        rules.len(),
        rules.is_empty(),
        rules.default_action(),
        rules.is_open(),
    );
    let clients: [IpAddr; 3] = [
        [127, 0, 0, 1].into(),
        [198, 51, 100, 7].into(),
        "2001:db8::7".parse().expect("literal"),
    ];
    let targets = [
        TargetAddr::Ip(SocketAddr::from(([10, 0, 0, 1], 443))),
        TargetAddr::Ip(SocketAddr::from(([169, 254, 169, 254], 80))),
        TargetAddr::Ip("[::ffff:10.1.2.3]:25".parse().expect("literal")),
        TargetAddr::Domain("www.example.com".into(), 8080),
        TargetAddr::Domain("localhost".into(), 0),
    ];
    for client in clients {
        for target in &targets {
            for command in [Command::Connect, Command::Bind, Command::UdpAssociate] {
                for user in [None, Some("alice")] {
                    let q = Query::for_target(client, user, command, target);
                    let by_name = rules.check(&q);
                    let _ = rules.check_resolved(by_name, &q.with_ip(client));
                }
            }
        }
    }
}

/// A config error must not quote a password. Checked when the text is valid TOML (so which
/// values are passwords is known): every scalar under `users` that is distinctive enough to
/// be recognised (a string with "SECRET" in it, or an integer of 8 digits or more) and occurs
/// nowhere else in the document must not appear in the message.
pub fn check_no_password(table: &toml::Table, text: &str, message: &str) {
    let Some(toml::Value::Table(users)) = table.get("users") else {
        return;
    };
    let mut secrets = Vec::new();
    for value in users.values() {
        scalars(value, &mut secrets);
    }
    let mut everything = Vec::new();
    for (key, value) in table {
        everything.push(key.clone());
        scalars_and_keys(value, &mut everything);
    }
    for secret in secrets {
        let distinctive = secret.contains("SECRET")
            || (secret.len() >= 8
                && secret
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()));
        let unique = everything.iter().filter(|s| s.contains(&secret)).count() == 1
            && text.matches(&secret).count() <= 1;
        if distinctive && unique {
            assert!(
                !message.contains(&secret),
                "config error quotes the password {secret:?}: {message}"
            );
        }
    }
}

fn scalars(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Integer(i) => out.push(i.to_string()),
        toml::Value::Float(f) => out.push(f.to_string()),
        toml::Value::Boolean(_) => {}
        toml::Value::Datetime(d) => out.push(d.to_string()),
        toml::Value::Array(a) => a.iter().for_each(|v| scalars(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| scalars(v, out)),
    }
}

fn scalars_and_keys(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Array(a) => a.iter().for_each(|v| scalars_and_keys(v, out)),
        toml::Value::Table(t) => {
            for (k, v) in t {
                out.push(k.clone());
                scalars_and_keys(v, out);
            }
        }
        scalar => scalars(scalar, out),
    }
}
