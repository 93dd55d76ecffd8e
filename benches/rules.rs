//! Access-rule matching cost: 1000 rules that never match (each a different /24 network, with
//! a port and a user condition), then the egress preset, then the default, so every check
//! walks the whole list: the worst case of first-match evaluation. Also a name through 1000
//! domain-suffix rules. Run with `cargo bench --bench rules`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use ringsocks::proto::Command;
use ringsocks::rules::{AccessConfig, Dest, Query, Rules};

fn thousand_rules(kind: &str) -> Rules {
    let mut text = String::from("preset = \"egress\"\n");
    for i in 0..1000u32 {
        let dest = match kind {
            "net" => format!("\"10.{}.{}.0/24\"", 100 + i / 256, i % 256),
            _ => format!("\".zone{i}.example\""),
        };
        text.push_str(&format!(
            "[[rule]]\naction = \"block\"\ndest = [{dest}]\nport = [\"1-1000\"]\n"
        ));
    }
    let cfg: AccessConfig = toml::from_str(&text).unwrap();
    Rules::compile(&cfg).unwrap()
}

fn bench(c: &mut Criterion) {
    let client: IpAddr = "198.51.100.7".parse().unwrap();
    let nets = thousand_rules("net");
    let q = Query {
        client,
        user: Some("alice"),
        command: Command::Connect,
        dest: Dest::Ip("93.184.215.14".parse().unwrap()),
        port: 443,
    };
    assert!(!nets.check(&q).blocked());
    let q_in_range = Query { port: 80, ..q };
    c.bench_function("rules/1000 network rules, no match (port differs)", |b| {
        b.iter(|| black_box(nets.check(black_box(&q))))
    });
    c.bench_function("rules/1000 network rules, no match (port in range)", |b| {
        b.iter(|| black_box(nets.check(black_box(&q_in_range))))
    });
    let names = thousand_rules("suffix");
    let qn = Query {
        dest: Dest::Name("www.public.example.org"),
        port: 80,
        ..q
    };
    assert!(!names.check(&qn).blocked());
    c.bench_function("rules/1000 suffix rules, name, no match", |b| {
        b.iter(|| black_box(names.check(black_box(&qn))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
