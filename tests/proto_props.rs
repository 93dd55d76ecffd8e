//! Property tests of the SOCKS codec: encode/parse round trips, incremental parsing (every
//! strict prefix needs more; more input never changes a verdict), and arbitrary input fed to
//! every parser and to the handshake state machine in arbitrary chunks.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use ringsocks::proto::socks4::ReplyCode4;
use ringsocks::proto::{
    rfc1929, socks4, socks5, udp, AuthPolicy, Command, Event, Handshake, Parsed, ProtoError,
    ReplyCode, Request, TargetAddr, Version,
};

// ---------------------------------------------------------------------------------------------
// Strategies

fn ipv4() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::new(IpAddr::from(o), p))
}

fn ipv6() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        4 => any::<[u8; 16]>(),
        // IPv4-mapped addresses are written as IPv4: see `normalize`.
        1 => any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_ipv6_mapped().octets()),
    ]
    .prop_flat_map(|o| (Just(o), any::<u16>()))
    .prop_map(|(o, p)| SocketAddr::new(IpAddr::from(o), p))
}

/// Host names as the parsers accept them: 1 to 255 graphic ASCII bytes.
fn domain() -> impl Strategy<Value = String> {
    prop_oneof![vec(0x21u8..=0x7e, 1..=16), vec(0x21u8..=0x7e, 1..=255)]
        .prop_map(|v| String::from_utf8(v).unwrap())
}

fn target() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        ipv4().prop_map(TargetAddr::Ip),
        ipv6().prop_map(TargetAddr::Ip),
        (domain(), any::<u16>()).prop_map(|(d, p)| TargetAddr::Domain(d, p)),
    ]
}

/// SOCKS4 destinations: IPv4 (but not 0.0.0.x with x != 0, which means SOCKS4a) or a name.
fn target4() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        ipv4()
            .prop_filter("0.0.0.x means SOCKS4a", |a| {
                let IpAddr::V4(ip) = a.ip() else {
                    unreachable!()
                };
                let o = ip.octets();
                !(o[..3] == [0, 0, 0] && o[3] != 0)
            })
            .prop_map(TargetAddr::Ip),
        (domain(), any::<u16>()).prop_map(|(d, p)| TargetAddr::Domain(d, p)),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Connect),
        Just(Command::Bind),
        Just(Command::UdpAssociate)
    ]
}

fn command4() -> impl Strategy<Value = Command> {
    prop_oneof![Just(Command::Connect), Just(Command::Bind)]
}

fn reply_code() -> impl Strategy<Value = ReplyCode> {
    (0u8..=8).prop_map(|b| ReplyCode::from_u8(b).unwrap())
}

fn policy() -> impl Strategy<Value = AuthPolicy> {
    (any::<bool>(), any::<bool>()).prop_map(|(password_required, allow_socks4)| AuthPolicy {
        password_required,
        allow_socks4,
        allow_socks6: false,
    })
}

/// SOCKS4 USERID bytes: anything but NUL.
fn userid() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(1u8..=255, 0..=8), vec(1u8..=255, 0..=255)]
}

/// A fragment of plausible protocol traffic: random bytes, interesting small values, or a
/// whole valid message of some kind. Concatenations of these reach deep into every parser.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let small = prop_oneof![
        Just(0u8),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(5),
        Just(0xFF)
    ];
    prop_oneof![
        vec(any::<u8>(), 0..8),
        vec(small, 1..4),
        vec(any::<u8>(), 1..=4).prop_map(|m| {
            let mut out = Vec::new();
            socks5::encode_greeting(&m, &mut out);
            out
        }),
        (vec(any::<u8>(), 0..6), vec(any::<u8>(), 0..6)).prop_map(|(u, p)| {
            let mut out = Vec::new();
            rfc1929::encode_request(&u, &p, &mut out);
            out
        }),
        (command(), target()).prop_map(|(c, t)| {
            let mut out = Vec::new();
            socks5::encode_request(c, &t, &mut out);
            out
        }),
        (command4(), target4(), userid()).prop_map(|(c, t, u)| {
            let mut out = Vec::new();
            socks4::encode_request(c, &t, &u, &mut out);
            out
        }),
        target().prop_map(|t| {
            let mut out = Vec::new();
            t.encode(&mut out);
            out
        }),
    ]
}

/// Arbitrary input: pure noise, or protocol-shaped soup with the odd byte changed.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..600),
        (vec(piece(), 0..6), vec((any::<Index>(), any::<u8>()), 0..3))
            .prop_map(|(pieces, flips)| mutate(pieces.concat(), &flips)),
    ]
}

/// Input for the handshake: garbage, garbage after a plausible version byte, or a valid
/// client transcript cut short at a random point and continued with garbage.
fn handshake_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => garbage(),
        1 => (prop_oneof![Just(4u8), Just(5)], garbage()).prop_map(|(v, rest)| {
            [&[v][..], &rest].concat()
        }),
        2 => (transcript(), any::<Index>(), vec(piece(), 0..4)).prop_map(
            |((_, bytes, _), cut, pieces)| {
                let cut = cut.index(bytes.len() + 1);
                [&bytes[..cut], &pieces.concat()].concat()
            }
        ),
    ]
}

fn mutate(mut bytes: Vec<u8>, flips: &[(Index, u8)]) -> Vec<u8> {
    if !bytes.is_empty() {
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
    }
    bytes
}

/// What a `TargetAddr` reads back as: IPv4-mapped IPv6 addresses are written as IPv4.
fn normalize(t: &TargetAddr) -> TargetAddr {
    match t {
        TargetAddr::Ip(SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
            Some(v4) => TargetAddr::Ip(SocketAddr::new(v4.into(), a.port())),
            None => t.clone(),
        },
        _ => t.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Generic checks

/// Incremental parsing is consistent: a prefix either needs more or gives exactly the verdict
/// of the whole buffer, once a prefix gives a verdict every longer one does, and a message never
/// claims more bytes than it was given.
fn check_incremental<T: PartialEq + Debug>(
    buf: &[u8],
    parse: impl Fn(&[u8]) -> Parsed<T>,
) -> Result<(), TestCaseError> {
    let full = parse(buf);
    let mut decided = false;
    for k in 0..=buf.len() {
        let r = parse(&buf[..k]);
        match &r {
            Ok(None) => prop_assert!(!decided, "verdict at a shorter prefix, none at {k}"),
            Ok(Some((_, n))) => {
                prop_assert!(*n > 0 && *n <= k, "consumed {n} of {k}");
                decided = true;
                prop_assert_eq!(&r, &full, "prefix {}", k);
            }
            Err(_) => {
                decided = true;
                prop_assert_eq!(&r, &full, "prefix {}", k);
            }
        }
    }
    Ok(())
}

/// `encoded` parses as exactly `expected`; every strict prefix needs more; trailing bytes are
/// left alone.
fn check_roundtrip<T: PartialEq + Debug>(
    encoded: &[u8],
    expected: T,
    parse: impl Fn(&[u8]) -> Parsed<T>,
) -> Result<(), TestCaseError> {
    for k in 0..encoded.len() {
        prop_assert_eq!(parse(&encoded[..k]), Ok(None), "prefix {}", k);
    }
    let got = parse(encoded);
    prop_assert_eq!(got, Ok(Some((expected, encoded.len()))));
    let mut longer = encoded.to_vec();
    longer.extend_from_slice(b"\x00\x05trailing");
    prop_assert_eq!(
        parse(&longer).map(|r| r.map(|(_, n)| n)),
        Ok(Some(encoded.len()))
    );
    Ok(())
}

/// `rfc1929::parse_request` with the borrowed fields copied out, so its result type does not
/// depend on the input's lifetime.
fn parse_auth(buf: &[u8]) -> Parsed<(Vec<u8>, Vec<u8>)> {
    rfc1929::parse_request(buf)
        .map(|r| r.map(|(a, n)| ((a.username.to_vec(), a.password.to_vec()), n)))
}

/// Every parser in the crate.
fn all_parsers(buf: &[u8]) -> Result<(), TestCaseError> {
    check_incremental(buf, TargetAddr::parse)?;
    check_incremental(buf, socks5::parse_greeting)?;
    check_incremental(buf, socks5::parse_method_selection)?;
    check_incremental(buf, socks5::parse_request)?;
    check_incremental(buf, socks5::parse_reply)?;
    check_incremental(buf, socks4::parse_request)?;
    check_incremental(buf, socks4::parse_reply)?;
    check_incremental(buf, parse_auth)?;
    check_incremental(buf, rfc1929::parse_response)?;
    check_incremental(buf, udp::parse_header)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A caller of `Handshake`

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    NeedMore,
    Request(Request),
    Err(ProtoError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    /// Everything written to the client.
    out: Vec<u8>,
    /// What the last call (`advance` or `authenticated`) appended.
    last: Vec<u8>,
    outcome: Outcome,
    /// Input consumed; not reported (so 0 here) when the handshake fails.
    consumed: usize,
}

fn check_creds(user: &[u8], pass: &[u8]) -> bool {
    user == b"alice" && pass == b"s3cret"
}

/// Appends each chunk to a buffer and advances over the unconsumed part, answering
/// `Authenticate` with [`check_creds`], until the request, an error, or the end of the chunks.
fn drive<'c>(
    policy: AuthPolicy,
    chunks: impl IntoIterator<Item = &'c [u8]>,
) -> Result<Run, TestCaseError> {
    let mut hs = Handshake::new(policy);
    let mut buf = Vec::new();
    let mut run = Run {
        out: Vec::new(),
        last: Vec::new(),
        outcome: Outcome::NeedMore,
        consumed: 0,
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let avail = buf.len() - run.consumed;
            let before = run.out.len();
            let step = hs.advance(&buf[run.consumed..], &mut run.out);
            run.last = run.out[before..].to_vec();
            let (event, n) = match step {
                Ok(x) => x,
                Err(e) => {
                    run.consumed = 0;
                    run.outcome = Outcome::Err(e);
                    return Ok(run);
                }
            };
            prop_assert!(n <= avail, "consumed {} of {}", n, avail);
            run.consumed += n;
            match event {
                Event::NeedMore => break,
                Event::Authenticate(c) => {
                    let ok = check_creds(c.username, c.password);
                    let before = run.out.len();
                    let verdict = hs.authenticated(ok, &mut run.out);
                    run.last = run.out[before..].to_vec();
                    prop_assert_eq!(&run.last, &[1, u8::from(!ok)]);
                    if let Err(e) = verdict {
                        prop_assert!(!ok);
                        run.consumed = 0;
                        run.outcome = Outcome::Err(e);
                        return Ok(run);
                    }
                }
                Event::Request(r) => {
                    run.outcome = Outcome::Request(r);
                    return Ok(run);
                }
            }
        }
    }
    Ok(run)
}

/// Splits `input` into chunks of the given sizes (cycled), the last one taking the rest.
fn chunked<'a>(input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = input;
    for &s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(s.min(rest.len()));
        chunks.push(a);
        rest = b;
    }
    chunks
}

/// The bytes `err.reply()` prescribes for a client that spoke `version`. `WireReply` is not
/// exported from `proto`, so it is told apart by its `Debug` form.
fn prescribed(err: &ProtoError, version: Version) -> Vec<u8> {
    let reply = format!("{:?}", err.reply());
    match reply.as_str() {
        "None" => Vec::new(),
        "NoAcceptableMethods" => vec![5, 0xFF],
        "AuthFailure" => vec![1, 1],
        "VersionMismatch" => vec![6],
        _ => {
            let code = (0u8..=8)
                .map(|b| ReplyCode::from_u8(b).unwrap())
                .find(|c| reply == format!("Reply({c:?})"))
                .unwrap_or_else(|| panic!("unexpected wire reply {reply}"));
            match version {
                Version::V5 => vec![5, code as u8, 0, 1, 0, 0, 0, 0, 0, 0],
                Version::V4 => vec![0, ReplyCode4::from(code) as u8, 0, 0, 0, 0, 0, 0],
                Version::V6 => unreachable!("SOCKS 6 is off"),
            }
        }
    }
}

/// What a run on `input` must look like, whatever the bytes were.
fn check_run(policy: AuthPolicy, input: &[u8], run: &Run) -> Result<(), TestCaseError> {
    let version = if input.first() == Some(&4) {
        Version::V4
    } else {
        Version::V5
    };
    match &run.outcome {
        Outcome::NeedMore => prop_assert!(run.consumed <= input.len()),
        Outcome::Request(r) => {
            prop_assert!(run.consumed <= input.len());
            prop_assert_eq!(r.version, version);
            match version {
                Version::V4 => {
                    prop_assert!(run.out.is_empty());
                    prop_assert!(!policy.password_required || policy.allow_socks4);
                    prop_assert!(r.command != Command::UdpAssociate);
                }
                Version::V5 => {
                    let ok: &[&[u8]] = if policy.password_required {
                        &[&[5, 2, 1, 0]]
                    } else {
                        &[&[5, 0], &[5, 2, 1, 0]]
                    };
                    prop_assert!(ok.contains(&run.out.as_slice()), "out {:?}", run.out);
                    prop_assert!(r.userid.is_none());
                }
                Version::V6 => prop_assert!(false, "SOCKS 6 is off"),
            }
        }
        Outcome::Err(e) => {
            let expected = prescribed(e, version);
            // The failing call may have accepted a greeting first, in which case the method
            // selection precedes the error's reply in the same write.
            let with_selection = run.last.len() == expected.len() + 2
                && run.last[0] == 5
                && [0, 2].contains(&run.last[1])
                && run.last[2..] == expected[..];
            prop_assert!(
                run.last == expected || with_selection,
                "{:?}: appended {:?}, prescribed {:?}",
                e,
                run.last,
                expected
            );
            prop_assert!(run.out.ends_with(&expected));
            match e {
                ProtoError::UnsupportedVersion(b) => {
                    prop_assert_eq!(Some(b), input.first());
                    prop_assert!(*b != 4 && *b != 5);
                    prop_assert!(run.out.is_empty());
                }
                ProtoError::NoMethods | ProtoError::NoAcceptableMethod => {
                    prop_assert_eq!(&run.out, &[5, 0xFF]);
                }
                ProtoError::Socks4NotAllowed => {
                    prop_assert!(policy.password_required && !policy.allow_socks4);
                    prop_assert_eq!(&run.out, &[0, 0x5B, 0, 0, 0, 0, 0, 0]);
                }
                ProtoError::BadAuthVersion(_) | ProtoError::EmptyUsername => {
                    prop_assert_eq!(&run.out, &[5, 2, 1, 1]);
                }
                ProtoError::AuthFailed => prop_assert_eq!(&run.out, &[5, 2, 1, 1]),
                ProtoError::Fragmented(_) | ProtoError::BadReply => {
                    prop_assert!(false, "{:?} from the server handshake", e)
                }
                _ => {
                    // Request errors: a reply in the client's version.
                    match version {
                        Version::V4 => prop_assert_eq!(run.out[..2].to_vec(), vec![0, 0x5B]),
                        Version::V5 => prop_assert_eq!(run.out[run.out.len() - 10], 5),
                        Version::V6 => prop_assert!(false, "SOCKS 6 is off"),
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Valid client transcripts

/// A valid handshake from a client, a policy that accepts it, and the request it makes.
fn transcript() -> impl Strategy<Value = (AuthPolicy, Vec<u8>, Request)> {
    let open = AuthPolicy::default();
    let users = AuthPolicy {
        password_required: true,
        allow_socks4: false,
        allow_socks6: false,
    };
    let socks5_noauth = (command(), target(), vec(any::<u8>(), 0..4)).prop_map(
        move |(command, target, mut methods)| {
            methods.push(socks5::METHOD_NO_AUTH);
            let mut bytes = Vec::new();
            socks5::encode_greeting(&methods, &mut bytes);
            socks5::encode_request(command, &target, &mut bytes);
            let req = Request {
                version: Version::V5,
                command,
                target: normalize(&target),
                userid: None,
                initial_data: 0,
                fast_open: false,
            };
            (open, bytes, req)
        },
    );
    let socks5_userpass = (command(), target(), vec(any::<u8>(), 0..4)).prop_map(
        move |(command, target, mut methods)| {
            methods.insert(0, socks5::METHOD_USERPASS);
            let mut bytes = Vec::new();
            socks5::encode_greeting(&methods, &mut bytes);
            rfc1929::encode_request(b"alice", b"s3cret", &mut bytes);
            socks5::encode_request(command, &target, &mut bytes);
            let req = Request {
                version: Version::V5,
                command,
                target: normalize(&target),
                userid: None,
                initial_data: 0,
                fast_open: false,
            };
            (users, bytes, req)
        },
    );
    let socks4 = (command4(), target4(), userid(), any::<bool>()).prop_map(
        |(command, target, user, allow_socks4)| {
            let mut bytes = Vec::new();
            socks4::encode_request(command, &target, &user, &mut bytes);
            let userid =
                Some(String::from_utf8_lossy(&user).into_owned()).filter(|u| !u.is_empty());
            let policy = AuthPolicy {
                password_required: allow_socks4,
                allow_socks4,
                allow_socks6: false,
            };
            let req = Request {
                version: Version::V4,
                command,
                target,
                userid,
                initial_data: 0,
                fast_open: false,
            };
            (policy, bytes, req)
        },
    );
    prop_oneof![socks5_noauth, socks5_userpass, socks4]
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn target_addr_roundtrip(t in target()) {
        let mut out = Vec::new();
        t.encode(&mut out);
        prop_assert_eq!(out.len(), t.encoded_len());
        check_roundtrip(&out, normalize(&t), TargetAddr::parse)?;
        // Display of a parsed address is what one would type.
        let back = TargetAddr::parse(&out).unwrap().unwrap().0;
        prop_assert_eq!(back.port(), t.port());
    }

    #[test]
    fn socks5_greeting_roundtrip(methods in vec(any::<u8>(), 1..=255)) {
        let mut out = Vec::new();
        socks5::encode_greeting(&methods, &mut out);
        let mut expected = socks5::Methods::default();
        for &m in &methods {
            expected.insert(m);
        }
        check_roundtrip(&out, expected, socks5::parse_greeting)?;
        for m in 0..=255u8 {
            prop_assert_eq!(expected.contains(m), methods.contains(&m));
        }
    }

    #[test]
    fn socks5_method_selection_roundtrip(m in any::<u8>()) {
        let mut out = Vec::new();
        socks5::encode_method_selection(m, &mut out);
        check_roundtrip(&out, m, socks5::parse_method_selection)?;
    }

    #[test]
    fn socks5_request_roundtrip(c in command(), t in target()) {
        let mut out = Vec::new();
        socks5::encode_request(c, &t, &mut out);
        let expected = socks5::Request { command: c, target: normalize(&t) };
        check_roundtrip(&out, expected, socks5::parse_request)?;
    }

    #[test]
    fn socks5_reply_roundtrip(code in reply_code(), bound in proptest::option::of(prop_oneof![ipv4(), ipv6()])) {
        let mut out = Vec::new();
        socks5::encode_reply(code, bound, &mut out);
        let bound = TargetAddr::Ip(bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
        let expected = socks5::Reply { code, bound: normalize(&bound) };
        check_roundtrip(&out, expected, socks5::parse_reply)?;
    }

    #[test]
    fn socks4_request_roundtrip(c in command4(), t in target4(), user in userid()) {
        let mut out = Vec::new();
        socks4::encode_request(c, &t, &user, &mut out);
        let userid = String::from_utf8_lossy(&user).into_owned();
        let expected = socks4::Request { command: c, target: t, userid };
        check_roundtrip(&out, expected, socks4::parse_request)?;
    }

    #[test]
    fn socks4_reply_roundtrip(code in reply_code(), ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let bound = SocketAddrV4::new(ip.into(), port);
        let mut out = Vec::new();
        socks4::encode_reply(code.into(), Some(SocketAddr::V4(bound)), &mut out);
        let expected = socks4::Reply { code: code.into(), bound };
        check_roundtrip(&out, expected, socks4::parse_reply)?;
    }

    #[test]
    fn rfc1929_roundtrip(user in vec(any::<u8>(), 1..=255), pass in vec(any::<u8>(), 0..=255), ok in any::<bool>()) {
        let mut out = Vec::new();
        rfc1929::encode_request(&user, &pass, &mut out);
        let (r, _) = rfc1929::parse_request(&out).unwrap().unwrap();
        prop_assert_eq!(r, rfc1929::AuthRequest { username: &user, password: &pass });
        check_roundtrip(&out, (user.clone(), pass.clone()), parse_auth)?;
        out.clear();
        rfc1929::encode_response(ok, &mut out);
        check_roundtrip(&out, ok, rfc1929::parse_response)?;
    }

    #[test]
    fn udp_header_roundtrip(t in target(), payload in vec(any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        udp::encode_header(&t, &mut out);
        let header_len = out.len();
        let expected = udp::UdpHeader { frag: 0, addr: normalize(&t) };
        check_roundtrip(&out, expected.clone(), udp::parse_header)?;
        out.extend_from_slice(&payload);
        prop_assert_eq!(udp::parse_header(&out), Ok(Some((expected, header_len))));
    }

    #[test]
    fn parsers_never_panic_and_stay_consistent(buf in garbage()) {
        all_parsers(&buf)?;
    }

    #[test]
    fn handshake_on_garbage(
        policy in policy(),
        input in handshake_input(),
        sizes in vec(1usize..24, 1..16),
    ) {
        let whole = drive(policy, [input.as_slice()])?;
        check_run(policy, &input, &whole)?;
        let split = drive(policy, chunked(&input, &sizes))?;
        check_run(policy, &input, &split)?;
        // Nothing depends on how the input was split, except which call wrote what.
        prop_assert_eq!(
            (&split.out, &split.outcome, split.consumed),
            (&whole.out, &whole.outcome, whole.consumed)
        );
    }

    #[test]
    fn handshake_on_mutated_transcripts(
        (policy, bytes, _) in transcript(),
        other_policy in policy(),
        flips in vec((any::<Index>(), any::<u8>()), 1..3),
        sizes in vec(1usize..8, 1..8),
    ) {
        let input = mutate(bytes, &flips);
        for policy in [policy, other_policy] {
            let whole = drive(policy, [input.as_slice()])?;
            check_run(policy, &input, &whole)?;
            let split = drive(policy, chunked(&input, &sizes))?;
            prop_assert_eq!(
                (&split.out, &split.outcome, split.consumed),
                (&whole.out, &whole.outcome, whole.consumed)
            );
        }
    }

    #[test]
    fn handshake_accepts_valid_transcripts(
        (policy, bytes, expected) in transcript(),
        payload in vec(any::<u8>(), 0..32),
        sizes in vec(1usize..8, 1..8),
    ) {
        let input = [bytes.as_slice(), payload.as_slice()].concat();
        for run in [
            drive(policy, [input.as_slice()])?,
            drive(policy, chunked(&input, &sizes))?,
            drive(policy, input.chunks(1))?,
        ] {
            check_run(policy, &input, &run)?;
            prop_assert_eq!(&run.outcome, &Outcome::Request(expected.clone()));
            prop_assert_eq!(run.consumed, bytes.len());
        }
        // Every strict prefix leaves the handshake waiting, never failing.
        for k in 0..bytes.len() {
            let run = drive(policy, [&bytes[..k]])?;
            prop_assert_eq!(&run.outcome, &Outcome::NeedMore, "prefix {}", k);
        }
    }
}
