//! The hot handshake path: bytes in, `Handshake::advance` (and `authenticated`), the request
//! out, the reply encoded. One iteration is one whole client handshake on a fresh `Handshake`,
//! with the reply buffer reused as the server reuses it.
//!
//! Run with `cargo bench --bench proto`. Before measuring, the bench counts the heap
//! allocations of one handshake per scenario (with the production allocator, mimalloc) and
//! prints them: the design goal is none beyond the request itself (the domain name `String`,
//! the SOCKS4 USERID `String`).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringsocks::proto::{
    rfc1929, socks4, socks5, AuthPolicy, Command, Event, Handshake, ReplyCode, TargetAddr,
};

/// mimalloc, counting allocations (one relaxed atomic add each; uncontended here).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        mimalloc::MiMalloc.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

struct Scenario {
    name: &'static str,
    policy: AuthPolicy,
    /// Everything the client sends before the reply, in one buffer (a pipelining client).
    input: Vec<u8>,
}

fn scenarios() -> Vec<Scenario> {
    let ipv4 = TargetAddr::Ip("93.184.216.34:443".parse().unwrap());
    let domain = TargetAddr::Domain("www.example.com".into(), 443);
    let mut v = Vec::new();

    let mut input = Vec::new();
    socks5::encode_greeting(&[socks5::METHOD_NO_AUTH], &mut input);
    socks5::encode_request(Command::Connect, &ipv4, &mut input);
    v.push(Scenario {
        name: "socks5_noauth_ipv4",
        policy: OPEN,
        input,
    });

    let mut input = Vec::new();
    socks5::encode_greeting(&[socks5::METHOD_NO_AUTH], &mut input);
    socks5::encode_request(Command::Connect, &domain, &mut input);
    v.push(Scenario {
        name: "socks5_noauth_domain",
        policy: OPEN,
        input,
    });

    let mut input = Vec::new();
    socks5::encode_greeting(
        &[socks5::METHOD_NO_AUTH, socks5::METHOD_USERPASS],
        &mut input,
    );
    rfc1929::encode_request(b"alice", b"correct horse battery staple", &mut input);
    socks5::encode_request(Command::Connect, &domain, &mut input);
    v.push(Scenario {
        name: "socks5_userpass_domain",
        policy: USERS,
        input,
    });

    let mut input = Vec::new();
    socks4::encode_request(Command::Connect, &ipv4, b"", &mut input);
    v.push(Scenario {
        name: "socks4_ipv4",
        policy: OPEN,
        input,
    });

    let mut input = Vec::new();
    socks4::encode_request(Command::Connect, &domain, b"alice", &mut input);
    v.push(Scenario {
        name: "socks4a_domain",
        policy: OPEN,
        input,
    });
    v
}

/// One server-side handshake over `input`, answered with success; returns the bytes consumed.
/// `out` is the caller's reused reply buffer.
fn handshake(policy: AuthPolicy, input: &[u8], bound: SocketAddr, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut hs = Handshake::new(policy);
    let mut consumed = 0;
    loop {
        let (event, n) = hs
            .advance(&input[consumed..], out)
            .expect("valid handshake");
        consumed += n;
        match event {
            Event::NeedMore => panic!("incomplete handshake"),
            Event::Authenticate(c) => {
                // Stand-in for the constant-time user table lookup (not part of the codec).
                let ok = c.username == b"alice" && c.password == b"correct horse battery staple";
                hs.authenticated(ok, out).expect("credentials accepted");
            }
            Event::Request(req) => {
                black_box(&req);
                hs.reply(ReplyCode::Succeeded, Some(bound), out);
                return consumed;
            }
        }
    }
}

/// Prints the heap allocations of one handshake per scenario (after a warm-up run, with the
/// reply buffer already sized).
fn report_allocations(scenarios: &[Scenario], bound: SocketAddr) {
    let mut out = Vec::with_capacity(64);
    for s in scenarios {
        handshake(s.policy, &s.input, bound, &mut out);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let n = handshake(s.policy, &s.input, bound, &mut out);
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(n, s.input.len());
        println!(
            "proto/{}: {} input bytes, {} reply bytes, {} heap allocation(s) per handshake",
            s.name,
            s.input.len(),
            out.len(),
            allocs
        );
    }
}

fn bench_handshakes(c: &mut Criterion) {
    let bound: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let scenarios = scenarios();
    report_allocations(&scenarios, bound);
    let mut group = c.benchmark_group("proto");
    group.throughput(Throughput::Elements(1));
    for s in &scenarios {
        let mut out = Vec::with_capacity(64);
        group.bench_function(s.name, |b| {
            b.iter(|| {
                handshake(
                    black_box(s.policy),
                    black_box(&s.input),
                    bound,
                    black_box(&mut out),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handshakes);
criterion_main!(benches);
