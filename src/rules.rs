//! Access rules: which clients may reach which destinations, ports and commands, as users.
//! Ordered, first match wins, in the spirit of sockd's `socks pass/block`; a default action
//! when nothing matches. Sans-I/O: rules compile once at load into plain vectors of masks and
//! ranges, and matching allocates nothing.
//!
//! A destination given as a name is checked twice: as a name before it is resolved (exact
//! hosts and `.suffix` entries), and then every address it resolves to is checked as an
//! address (CIDR entries), so a name that resolves to a blocked network (DNS rebinding to
//! 127.0.0.1 or 169.254.169.254) is blocked too.
//!
//! The `egress` preset blocks destinations an egress gateway should never reach on a
//! client's behalf: loopback, link-local (and cloud metadata), private (RFC 1918, unique
//! local), carrier-grade NAT, "this network", multicast and reserved ranges. Its rules come
//! after the configured ones, so a configured `pass` for a specific internal network wins.

use std::net::IpAddr;

use serde::Deserialize;

use crate::proto::{Command, TargetAddr};

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Pass,
    /// Refuse it (SOCKS5 X'02', SOCKS4 91).
    Block,
}

/// The `[access]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Action when no rule matches [default: pass].
    pub default: Option<Action>,
    /// `"egress"`: append the egress block rules (see the module documentation).
    pub preset: Option<String>,
    /// The rules, in order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// One `[[access.rule]]`. Every field but `action` is optional; an absent field matches
/// anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name for logs (default: `rule N`, counting from 1).
    pub name: Option<String>,
    /// pass or block.
    pub action: Action,
    /// Client networks (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
    pub client: Option<Vec<String>>,
    /// Usernames (RFC 1929; SOCKS4 USERID is not a user).
    pub user: Option<Vec<String>>,
    /// `connect`, `bind`, `udp`.
    pub command: Option<Vec<String>>,
    /// Destinations: networks, exact host names, or `.example.com` for a domain and its
    /// subdomains.
    pub dest: Option<Vec<String>>,
    /// Destination ports: `443` or `8000-8999`.
    pub port: Option<Vec<String>>,
    /// Log every request this rule decides, at info level.
    #[serde(default)]
    pub log: bool,
    /// The line of its `[[access.rule]]` header in the config file, for error messages.
    #[serde(skip)]
    pub line: Option<usize>,
}

/// A network in the IPv6 space (IPv4 as v4-mapped), so one comparison serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let (bits, max) = match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let len: u32 = match len {
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
            None => max,
        };
        let len = if max == 32 { len + 96 } else { len };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Ok(Cidr {
            net: bits & mask,
            mask,
        })
    }

    fn contains(&self, ip: u128) -> bool {
        ip & self.mask == self.net
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.contains(ip_bits(ip))
    }
}

/// An address in the space [`Cidr`] uses.
fn ip_bits(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The IPv4 address an IPv6 address carries to an IPv4 host, in the [`Cidr`] space: NAT64
/// (64:ff9b::/96, RFC 6052), 6to4 (2002::/16) and IPv4-compatible (::/96, beyond :: and
/// ::1). A rule on an IPv4 network also applies to these, so 64:ff9b::a9fe:a9fe cannot reach
/// 169.254.169.254 past the egress preset through a NAT64 gateway.
fn embedded_v4(bits: u128) -> Option<u128> {
    const MAPPED: u128 = 0xffff_0000_0000;
    let v4 = if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        bits & 0xffff_ffff
    } else if bits >> 112 == 0x2002 {
        (bits >> 80) & 0xffff_ffff
    } else if bits >> 32 == 0 && bits > 1 {
        bits & 0xffff_ffff
    } else {
        return None;
    };
    Some(MAPPED | v4)
}

const CMD_CONNECT: u8 = 1;
const CMD_BIND: u8 = 2;
const CMD_UDP: u8 = 4;

fn command_bit(c: Command) -> u8 {
    match c {
        Command::Connect => CMD_CONNECT,
        Command::Bind => CMD_BIND,
        Command::UdpAssociate => CMD_UDP,
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    action: Action,
    log: bool,
    clients: Vec<Cidr>,
    users: Vec<String>,
    commands: u8,
    /// Destination networks; exact hosts; domain suffixes (stored with their leading dot).
    dest_nets: Vec<Cidr>,
    dest_hosts: Vec<String>,
    dest_suffixes: Vec<String>,
    ports: Vec<(u16, u16)>,
}

/// The destination being checked.
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    /// A name, before resolution.
    Name(&'a str),
    /// An address (given, or one a name resolved to).
    Ip(IpAddr),
    /// Not known yet (a UDP association before its first datagram, a BIND that names no
    /// peer): only rules without destination and port conditions can match.
    Unknown,
}

/// A request to check.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// The command.
    pub command: Command,
    /// The destination.
    pub dest: Dest<'a>,
    /// The destination port.
    pub port: u16,
}

impl<'a> Query<'a> {
    /// A query for a request's target, as given (a name or an address). The target of a
    /// UDP ASSOCIATE is where the client sends from, not a destination, and an unspecified
    /// BIND address names no peer: both are checked with an unknown destination. (A CONNECT
    /// to 0.0.0.0 or :: is a destination: on Linux it reaches the host itself.)
    pub fn for_target(
        client: IpAddr,
        user: Option<&'a str>,
        command: Command,
        target: &'a TargetAddr,
    ) -> Self {
        let (dest, port) = match target {
            _ if command == Command::UdpAssociate => (Dest::Unknown, 0),
            TargetAddr::Ip(a) if command == Command::Bind && a.ip().is_unspecified() => {
                (Dest::Unknown, a.port())
            }
            TargetAddr::Ip(a) => (Dest::Ip(a.ip()), a.port()),
            TargetAddr::Domain(h, p) => (Dest::Name(h), *p),
        };
        Query {
            client,
            user,
            command,
            dest,
            port,
        }
    }

    /// The same query for one resolved address.
    pub fn with_ip(self, ip: IpAddr) -> Self {
        Query {
            dest: Dest::Ip(ip),
            ..self
        }
    }
}

/// The decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'r> {
    /// Pass or block.
    pub action: Action,
    /// The deciding rule's name, or `"default"`.
    pub rule: &'r str,
    /// Whether the rule asks for a log line.
    pub log: bool,
}

impl Verdict<'_> {
    /// Whether the request is blocked.
    pub fn blocked(&self) -> bool {
        self.action == Action::Block
    }
}

/// Compiled access rules.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
}

impl Default for Rules {
    /// No rules: everything passes.
    fn default() -> Self {
        Rules {
            rules: Vec::new(),
            default: Action::Pass,
        }
    }
}

/// Destination networks the `egress` preset blocks.
pub const EGRESS_BLOCKED: &[&str] = &[
    "0.0.0.0/8",         // "this network"
    "10.0.0.0/8",        // RFC 1918
    "100.64.0.0/10",     // carrier-grade NAT
    "127.0.0.0/8",       // loopback
    "169.254.0.0/16",    // link-local, cloud metadata (169.254.169.254)
    "172.16.0.0/12",     // RFC 1918
    "192.0.0.0/24",      // IETF protocol assignments
    "192.168.0.0/16",    // RFC 1918
    "198.18.0.0/15",     // benchmarking
    "224.0.0.0/4",       // multicast
    "240.0.0.0/4",       // reserved, broadcast
    "::/128",            // unspecified
    "::1/128",           // loopback
    "64:ff9b:1::/48",    // local-use NAT64
    "fc00::/7",          // unique local
    "fe80::/10",         // link-local
    "fec0::/10",         // site-local (deprecated)
    "ff00::/8",          // multicast
    "fd00:ec2::254/128", // AWS metadata over IPv6 (inside fc00::/7; named for the log)
];

impl AccessConfig {
    /// Records each rule's line in `text` (the file it was parsed from), found by its
    /// `[[access.rule]]` header; left unset if the rules were written another way.
    pub fn locate(&mut self, text: &str) {
        let headers: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                l.starts_with("[[access.rule]]")
            })
            .map(|(i, _)| i + 1)
            .collect();
        if headers.len() == self.rules.len() {
            for (r, line) in self.rules.iter_mut().zip(headers) {
                r.line = Some(line);
            }
        }
    }
}

impl Rules {
    /// Compiles the `[access]` table. Errors name the rule and the bad value.
    pub fn compile(cfg: &AccessConfig) -> Result<Rules, String> {
        let mut rules = Vec::with_capacity(cfg.rules.len() + 1);
        for (i, r) in cfg.rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
            let at = r.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            rules.push(
                compile_rule(r, name.clone())
                    .map_err(|e| format!("access rule {name:?}{at}: {e}"))?,
            );
        }
        match cfg.preset.as_deref() {
            None => {}
            Some("egress") => {
                let dest = EGRESS_BLOCKED.iter().map(|s| s.to_string()).collect();
                let preset = RuleConfig {
                    name: Some("egress preset".into()),
                    action: Action::Block,
                    client: None,
                    user: None,
                    command: None,
                    dest: Some(dest),
                    port: None,
                    log: false,
                    line: None,
                };
                rules.push(compile_rule(&preset, "egress preset".into())?);
            }
            Some(other) => return Err(format!("unknown access preset {other:?} (known: egress)")),
        }
        Ok(Rules {
            rules,
            default: cfg.default.unwrap_or(Action::Pass),
        })
    }

    /// Number of compiled rules (the preset counts as one).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The action when no rule matches.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// Whether there is nothing to check (no rules, default pass).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default == Action::Pass
    }

    /// The verdict on one address a name resolved to, given the verdict on the name: a rule
    /// that matches the address decides (so a network rule or the egress preset can veto a
    /// name that passed); if none does, the name's verdict stands (so a name passed by a
    /// `.suffix` rule is not then refused by a `block` default).
    pub fn check_resolved<'r>(&'r self, by_name: Verdict<'r>, q: &Query<'_>) -> Verdict<'r> {
        match self.matching(q) {
            Some(v) => v,
            None => by_name,
        }
    }

    /// The first matching rule's verdict, or the default.
    pub fn check(&self, q: &Query<'_>) -> Verdict<'_> {
        self.matching(q).unwrap_or(Verdict {
            action: self.default,
            rule: "default",
            log: false,
        })
    }

    /// The index of the first rule that matches (routes use rules as their matchers).
    pub fn position(&self, q: &Query<'_>) -> Option<usize> {
        let client = ip_bits(q.client);
        let cmd = command_bit(q.command);
        self.rules.iter().position(|r| r.matches(client, cmd, q))
    }

    fn matching(&self, q: &Query<'_>) -> Option<Verdict<'_>> {
        let client = ip_bits(q.client);
        let cmd = command_bit(q.command);
        self.rules
            .iter()
            .find(|r| r.matches(client, cmd, q))
            .map(|r| Verdict {
                action: r.action,
                rule: &r.name,
                log: r.log,
            })
    }
}

impl Rule {
    fn matches(&self, client: u128, cmd: u8, q: &Query<'_>) -> bool {
        if self.commands & cmd == 0 {
            return false;
        }
        let has_dest = !(self.dest_nets.is_empty()
            && self.dest_hosts.is_empty()
            && self.dest_suffixes.is_empty());
        if matches!(q.dest, Dest::Unknown) && (has_dest || !self.ports.is_empty()) {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|&(a, b)| (a..=b).contains(&q.port)) {
            return false;
        }
        if !self.clients.is_empty() && !self.clients.iter().any(|c| c.contains(client)) {
            return false;
        }
        if !self.users.is_empty() {
            match q.user {
                Some(u) if self.users.iter().any(|x| x == u) => {}
                _ => return false,
            }
        }
        if !has_dest {
            return true;
        }
        match q.dest {
            Dest::Unknown => false,
            Dest::Ip(ip) => {
                let bits = ip_bits(ip);
                let inner = embedded_v4(bits);
                self.dest_nets
                    .iter()
                    .any(|c| c.contains(bits) || inner.is_some_and(|v4| c.contains(v4)))
            }
            Dest::Name(host) => {
                let host = host.strip_suffix('.').unwrap_or(host);
                self.dest_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                    || self.dest_suffixes.iter().any(|s| {
                        // ".example.com" matches example.com and any name under it.
                        host.eq_ignore_ascii_case(&s[1..])
                            || (host.len() > s.len()
                                && host.is_char_boundary(host.len() - s.len())
                                && host[host.len() - s.len()..].eq_ignore_ascii_case(s))
                    })
            }
        }
    }
}

fn compile_rule(r: &RuleConfig, name: String) -> Result<Rule, String> {
    let clients = r
        .client
        .iter()
        .flatten()
        .map(|s| Cidr::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut commands = 0u8;
    match &r.command {
        None => commands = CMD_CONNECT | CMD_BIND | CMD_UDP,
        Some(list) => {
            for c in list {
                commands |= match c.to_ascii_lowercase().as_str() {
                    "connect" => CMD_CONNECT,
                    "bind" => CMD_BIND,
                    "udp" | "udp-associate" | "udpassociate" => CMD_UDP,
                    other => return Err(format!("unknown command {other:?} (connect, bind, udp)")),
                };
            }
        }
    }
    let (mut dest_nets, mut dest_hosts, mut dest_suffixes) = (Vec::new(), Vec::new(), Vec::new());
    for d in r.dest.iter().flatten() {
        let d = d.trim();
        let d = d.strip_suffix('.').unwrap_or(d);
        if let Some(suffix) = d.strip_prefix('.') {
            if suffix.is_empty() || suffix.contains(['*', '[', ']', '/', ' ']) {
                return Err(format!("{d:?} is not a domain suffix like .example.com"));
            }
            dest_suffixes.push(format!(".{}", suffix.to_ascii_lowercase()));
        } else if d.parse::<IpAddr>().is_ok() || d.contains('/') {
            dest_nets.push(Cidr::parse(d)?);
        } else if d.is_empty() {
            return Err("empty destination".into());
        } else if !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!(
                "{d:?} is not a network, a host name or a .suffix (no brackets or wildcards)"
            ));
        } else {
            dest_hosts.push(d.to_ascii_lowercase());
        }
    }
    let ports = r
        .port
        .iter()
        .flatten()
        .map(|p| parse_ports(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        name,
        action: r.action,
        log: r.log,
        clients,
        users: r.user.clone().unwrap_or_default(),
        commands,
        dest_nets,
        dest_hosts,
        dest_suffixes,
        ports,
    })
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{p:?} is not a port or a range like 8000-8999");
    let (a, b) = match p.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (p.trim(), p.trim()),
    };
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Rules {
        let cfg: AccessConfig = toml::from_str(toml_text).unwrap();
        Rules::compile(&cfg).unwrap()
    }

    fn q<'a>(
        client: &str,
        user: Option<&'a str>,
        cmd: Command,
        dest: Dest<'a>,
        port: u16,
    ) -> Query<'a> {
        Query {
            client: client.parse().unwrap(),
            user,
            command: cmd,
            dest,
            port,
        }
    }

    fn ip(s: &str) -> Dest<'static> {
        Dest::Ip(s.parse().unwrap())
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let r = rules(
            r#"
            default = "block"
            [[rule]]
            name = "no smtp"
            action = "block"
            port = ["25"]
            [[rule]]
            action = "pass"
            client = ["10.0.0.0/8"]
            "#,
        );
        let v = r.check(&q("10.1.2.3", None, Command::Connect, ip("192.0.2.1"), 25));
        assert_eq!((v.action, v.rule), (Action::Block, "no smtp"));
        let v = r.check(&q("10.1.2.3", None, Command::Connect, ip("192.0.2.1"), 443));
        assert_eq!((v.action, v.rule), (Action::Pass, "rule 2"));
        let v = r.check(&q(
            "192.0.2.9",
            None,
            Command::Connect,
            ip("192.0.2.1"),
            443,
        ));
        assert_eq!((v.action, v.rule), (Action::Block, "default"));
    }

    #[test]
    fn every_rule_kind_matches() {
        let r = rules(
            r#"
            [[rule]]
            name = "suffix"
            action = "block"
            dest = [".blocked.example"]
            [[rule]]
            name = "host"
            action = "block"
            dest = ["exact.example"]
            [[rule]]
            name = "net6"
            action = "block"
            dest = ["2001:db8::/32"]
            [[rule]]
            name = "range"
            action = "block"
            port = ["6000-6010"]
            [[rule]]
            name = "bob udp"
            action = "block"
            user = ["bob"]
            command = ["udp"]
            "#,
        );
        let c = Command::Connect;
        let name = |s: &'static str| Dest::Name(s);
        let rule = |q: Query| r.check(&q).rule.to_string();
        assert_eq!(
            rule(q("1.1.1.1", None, c, name("a.b.Blocked.example."), 80)),
            "suffix"
        );
        assert_eq!(
            rule(q("1.1.1.1", None, c, name("blocked.example"), 80)),
            "suffix"
        );
        assert_eq!(
            rule(q("1.1.1.1", None, c, name("notblocked.example"), 80)),
            "default"
        );
        assert_eq!(
            rule(q("1.1.1.1", None, c, name("EXACT.example"), 80)),
            "host"
        );
        assert_eq!(
            rule(q("1.1.1.1", None, c, name("sub.exact.example"), 80)),
            "default"
        );
        assert_eq!(rule(q("1.1.1.1", None, c, ip("2001:db8::5"), 80)), "net6");
        assert_eq!(
            rule(q("1.1.1.1", None, c, ip("2001:db9::5"), 80)),
            "default"
        );
        assert_eq!(rule(q("1.1.1.1", None, c, ip("192.0.2.1"), 6005)), "range");
        assert_eq!(
            rule(q("1.1.1.1", None, c, ip("192.0.2.1"), 6011)),
            "default"
        );
        let udp = Command::UdpAssociate;
        assert_eq!(
            rule(q("1.1.1.1", Some("bob"), udp, ip("192.0.2.1"), 53)),
            "bob udp"
        );
        assert_eq!(
            rule(q("1.1.1.1", Some("alice"), udp, ip("192.0.2.1"), 53)),
            "default"
        );
        assert_eq!(
            rule(q("1.1.1.1", Some("bob"), c, ip("192.0.2.1"), 53)),
            "default"
        );
    }

    #[test]
    fn egress_preset_blocks_internal_networks_ipv4_mapped_too() {
        let r = rules(
            r#"
            preset = "egress"
            [[rule]]
            action = "pass"
            dest = ["10.20.0.0/16"]
            "#,
        );
        let c = Command::Connect;
        for blocked in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.1.1",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
        ] {
            assert!(
                r.check(&q("1.1.1.1", None, c, ip(blocked), 80)).blocked(),
                "{blocked}"
            );
        }
        for open in ["93.184.215.14", "2606:4700::1111", "10.20.3.4"] {
            assert!(
                !r.check(&q("1.1.1.1", None, c, ip(open), 80)).blocked(),
                "{open}"
            );
        }
        // A name is not blocked as a name; its addresses are checked after resolution.
        assert!(!r
            .check(&q("1.1.1.1", None, c, Dest::Name("localhost"), 80))
            .blocked());
    }

    #[test]
    fn bad_rules_are_rejected_with_their_name() {
        for (text, needle) in [
            (
                "[[rule]]\naction = \"block\"\ndest = [\"10.0.0.0/33\"]",
                "prefix length",
            ),
            (
                "[[rule]]\naction = \"block\"\nport = [\"9-1\"]",
                "not a port",
            ),
            (
                "[[rule]]\nname = \"x\"\naction = \"block\"\ncommand = [\"ping\"]",
                "\"x\"",
            ),
            ("preset = \"paranoid\"", "unknown access preset"),
        ] {
            let cfg: AccessConfig = toml::from_str(text).unwrap();
            let e = Rules::compile(&cfg).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(toml::from_str::<AccessConfig>("[[rule]]\naction = \"maybe\"").is_err());
    }

    #[test]
    fn unknown_destinations_match_only_rules_without_destination() {
        let r = rules(
            r#"
            preset = "egress"
            [[rule]]
            name = "no udp for guests"
            action = "block"
            command = ["udp"]
            client = ["192.0.2.0/24"]
            "#,
        );
        let any: TargetAddr = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        let guest: IpAddr = "192.0.2.1".parse().unwrap();
        let udp = Command::UdpAssociate;
        assert!(!r.check(&Query::for_target(c, None, udp, &any)).blocked());
        assert!(r
            .check(&Query::for_target(guest, None, udp, &any))
            .blocked());
        assert!(!r
            .check(&Query::for_target(c, None, Command::Bind, &any))
            .blocked());
    }

    #[test]
    fn review_bypasses_are_closed() {
        let r = rules("preset = \"egress\"\n");
        let c = Command::Connect;
        // CONNECT to the unspecified address reaches the host itself.
        for t in ["0.0.0.0:22", "[::]:22"] {
            let t = TargetAddr::Ip(t.parse().unwrap());
            let client: IpAddr = "1.1.1.1".parse().unwrap();
            assert!(
                r.check(&Query::for_target(client, None, c, &t)).blocked(),
                "{t}"
            );
        }
        // IPv4 carried in IPv6: NAT64, 6to4, IPv4-compatible; site-local.
        for a in [
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "::a00:1",
            "fec0::1",
        ] {
            assert!(r.check(&q("1.1.1.1", None, c, ip(a), 80)).blocked(), "{a}");
        }
        assert!(!r
            .check(&q("1.1.1.1", None, c, ip("64:ff9b::5db8:d70e"), 80))
            .blocked());
        // Trailing dots in the config; no wildcards or brackets.
        let r =
            rules("[[rule]]\naction = \"block\"\ndest = [\".corp.example.\", \"host.example.\"]\n");
        assert!(r
            .check(&q("1.1.1.1", None, c, Dest::Name("a.corp.example"), 80))
            .blocked());
        assert!(r
            .check(&q("1.1.1.1", None, c, Dest::Name("host.example."), 80))
            .blocked());
        for bad in ["*.x.com", "[::1]"] {
            let cfg: AccessConfig = toml::from_str(&format!(
                "[[rule]]\naction = \"block\"\ndest = [\"{bad}\"]\n"
            ))
            .unwrap();
            assert!(Rules::compile(&cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_passed_by_suffix_is_not_refused_by_the_default_after_resolution() {
        let r = rules(
            "default = \"block\"\npreset = \"egress\"\n[[rule]]\nname = \"ok\"\naction = \"pass\"\ndest = [\".example.com\"]\n",
        );
        let c = Command::Connect;
        let by_name = r.check(&q("1.1.1.1", None, c, Dest::Name("www.example.com"), 443));
        assert!(!by_name.blocked());
        let public = q("1.1.1.1", None, c, ip("93.184.215.14"), 443);
        assert!(!r.check_resolved(by_name, &public).blocked());
        let private = q("1.1.1.1", None, c, ip("10.0.0.1"), 443);
        assert_eq!(r.check_resolved(by_name, &private).rule, "egress preset");
    }

    #[test]
    fn cidr_edges() {
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip_bits("8.8.8.8".parse().unwrap())));
        assert!(!all4.contains(ip_bits("2001:db8::1".parse().unwrap())));
        let all6 = Cidr::parse("::/0").unwrap();
        assert!(all6.contains(ip_bits("2001:db8::1".parse().unwrap())));
        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains(ip_bits("192.0.2.7".parse().unwrap())));
        assert!(!host.contains(ip_bits("192.0.2.8".parse().unwrap())));
    }
}
