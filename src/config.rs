//! Settings: the `serve` command line, the TOML config file, and the resolved [`Config`].
//!
//! Every setting can come from either place; a flag given on the command line wins over the
//! file, and the file wins over the built-in default. Defaults are the safe ones: listen on
//! 127.0.0.1:1080 only, and refuse to run an open proxy on a non-loopback address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{Users, UsersError};
use crate::proto::TargetAddr;
use crate::route::{RouteConfig, Routes};
use crate::rules::{AccessConfig, Cidr, Rules};
use crate::server::bandwidth::parse_rate;
use crate::tls::TlsFiles;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1080";

/// Which I/O runtime the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring (tokio-uring); fail if unavailable.
    Uring,
    /// epoll (tokio).
    Epoll,
}

/// How tunnels move bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayChoice {
    /// The recommended mode (splice; chosen from measurements, see loadtest/README.md).
    Auto,
    /// socket -> pipe -> socket in the kernel, no copy through user space.
    Splice,
    /// Per direction: copy small messages, splice bulk data.
    Adaptive,
    /// Through pooled user-space buffers.
    Copy,
}

/// Kernel TLS offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KtlsChoice {
    /// When the kernel has the tls module and takes the negotiated cipher.
    Auto,
    /// Never: TLS in user space.
    Off,
}

/// `ringsocks serve` flags. Every flag is optional so that the config file can supply it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (repeatable; IPv4 or IPv6, e.g. `[::1]:1080`) [default: 127.0.0.1:1080]
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads, each pinned to a core with its own listener and runtime [default: usable CPUs]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Listen backlog per worker listener [default: 4096]
    #[arg(long)]
    pub backlog: Option<u32>,
    /// A user as NAME:PASSWORD (repeatable); with users, SOCKS5 requires RFC 1929 auth
    #[arg(short, long = "user", value_name = "NAME:PASS")]
    pub user: Vec<String>,
    /// File of NAME:PASSWORD lines ('#' starts a comment)
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// TOML config file with the same settings (command-line flags win)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Serve without authentication on a non-loopback address
    #[arg(long)]
    pub allow_open: bool,
    /// Accept SOCKS4/4a (no password) even when users are configured
    #[arg(long)]
    pub allow_socks4: bool,
    /// I/O runtime [default: auto]
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeChoice>,
    /// Time a client has to finish the SOCKS handshake (e.g. 10s, 500ms) [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Time to connect to a destination, all addresses together [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Close a tunnel with no traffic either way for this long; 0 disables [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, let tunnels finish for this long before closing them [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Source address for outbound connections (uses IP_BIND_ADDRESS_NO_PORT)
    #[arg(long, value_name = "IP")]
    pub egress_ip: Option<IpAddr>,
    /// TCP Fast Open on direct outbound connects: after a SOCKS4/5 CONNECT the success reply
    /// is sent before the destination has answered, and the client's first bytes ride in the
    /// SYN (SOCKS 6 initial data uses Fast Open whenever the host allows it, without this flag)
    #[arg(long)]
    pub upstream_fastopen: bool,
    /// Accept TCP Fast Open on the listeners, with this many pending Fast Open requests per
    /// socket: a client's first message may ride in its SYN (SYN data can be replayed by the
    /// network: a replayed request opens a second tunnel) [default: 0, off]
    #[arg(long, value_name = "QUEUE")]
    pub listen_fastopen: Option<u32>,
    /// Answer SOCKS 6 (draft-olteanu-intarea-socks-6-11) requests with a version mismatch
    /// instead of serving them
    #[arg(long)]
    pub no_socks6: bool,
    /// How tunnels move bytes: auto (= splice), splice, copy or adaptive [default: auto]
    #[arg(long, value_enum)]
    pub relay: Option<RelayChoice>,
    /// Copy-relay buffer size, in bytes; buffers are pooled per worker and held only while
    /// bytes move [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub buffer_size: Option<usize>,
    /// Splice-relay pipe size, in bytes (F_SETPIPE_SZ; capped by fs.pipe-max-size) [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub pipe_size: Option<usize>,
    /// Happy Eyeballs connection attempt delay (RFC 8305) [default: 250ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub happy_eyeballs_delay: Option<Duration>,
    /// Address to put in UDP ASSOCIATE replies instead of the UDP relay socket's own (for a
    /// proxy behind NAT): `IP` for every listener, or `LISTEN=IP` (e.g. `0.0.0.0:1080=203.0.113.7`)
    /// for one listener (repeatable)
    #[arg(long, value_name = "[LISTEN=]IP", value_parser = parse_advertise)]
    pub udp_advertise: Vec<UdpAdvertise>,
    /// Time a BIND waits for its inbound connection [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub bind_timeout: Option<Duration>,
    /// Most tunnels (and UDP associations, BINDs) open at once; 0 = no limit [default: 0]
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<usize>,
    /// Most tunnels open at once from one client address; 0 = no limit [default: 0]
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_client: Option<usize>,
    /// Most tunnels open at once for one user; 0 = no limit [default: 0]
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_user: Option<usize>,
    /// Failed logins from one client address before its logins are refused for the rest of
    /// --auth-failure-window; 0 = no limit [default: 10]
    #[arg(long, value_name = "N")]
    pub max_auth_failures: Option<u32>,
    /// Window for --max-auth-failures [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub auth_failure_window: Option<Duration>,
    /// Bandwidth limit for each user, each way, in bytes/s (k, M, G = 10^3, 10^6, 10^9), shared
    /// by all of that user's tunnels; 0 = none. Per-user values go in the file's
    /// `[user_bandwidth]` table [default: 0]
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bandwidth_per_user: Option<u64>,
    /// Address to listen on for connections from a load balancer that start with a PROXY
    /// protocol v1 or v2 header (repeatable); the header's client address drives rules,
    /// limits and logs
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: Vec<SocketAddr>,
    /// Networks allowed to connect to --proxy-listen addresses (repeatable; the balancers)
    /// [default: loopback only]
    #[arg(long, value_name = "CIDR")]
    pub proxy_from: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9180)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// After binding the listeners, drop privileges to this user (and its groups)
    #[arg(long, value_name = "USER")]
    pub setuid: Option<String>,
    /// Address to listen on for SOCKS over TLS (repeatable). Without it, --tls-cert makes
    /// every --listen address a TLS listener
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate chain for TLS listeners (PEM, leaf first); read again on SIGHUP
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for TLS listeners (PEM: PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): TLS clients must present a certificate one of them signed, and
    /// its subject common name is the client's user for access rules and limits
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Send CONNECT requests through this parent proxy unless a `[[route]]` says otherwise:
    /// `socks5://[USER:PASS@]HOST:PORT`, `socks5+tls://…[?ca=FILE&sni=NAME]` or
    /// `http://[USER:PASS@]HOST:PORT` (HTTP CONNECT). From the environment, it stays out of `ps`
    #[arg(
        long,
        value_name = "URL",
        env = "RINGSOCKS_UPSTREAM",
        hide_env_values = true
    )]
    pub upstream: Option<String>,
    /// Kernel TLS for TLS tunnels (listeners and parents): after the handshake the kernel
    /// encrypts, and the relay splices [default: auto]
    #[arg(long, value_name = "MODE")]
    pub ktls: Option<KtlsChoice>,
    /// A static port map: every connection to LISTEN is relayed to DEST, like `ssh -L`, under
    /// the access rules, limits and routes (`--upstream`) of a CONNECT to DEST (repeatable):
    /// `tcp:127.0.0.1:8080=internal.example:80`; `udp:` maps datagrams, one flow per client
    /// address
    #[arg(long = "map", value_name = "tcp|udp:LISTEN=DEST", value_parser = parse_map)]
    pub maps: Vec<PortMap>,
    /// A UDP port map's flow (one per client address) ends after this long without a
    /// datagram either way [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub udp_map_idle: Option<Duration>,
}

/// One `--map`: a listener whose connections all go to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// TCP connections or UDP datagram flows.
    pub udp: bool,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where every connection goes.
    pub target: TargetAddr,
}

/// Parses `tcp:LISTEN=HOST:PORT` or `udp:LISTEN=HOST:PORT` (IPv6 addresses in brackets).
pub fn parse_map(s: &str) -> Result<PortMap, String> {
    const FORM: &str = "expected tcp:LISTEN=HOST:PORT or udp:LISTEN=HOST:PORT";
    let (proto, rest) = s.split_once(':').ok_or(FORM)?;
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        other => return Err(format!("unknown protocol {other:?} (expected tcp or udp)")),
    };
    let (listen, dest) = rest.split_once('=').ok_or(FORM)?;
    let listen = listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("listen address {listen:?}: {e}"))?;
    let (host, port) = dest
        .rsplit_once(':')
        .ok_or_else(|| format!("destination {dest:?}: expected HOST:PORT"))?;
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("destination {dest:?}: bad port")),
    };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let target = match (bare.unwrap_or(host).parse::<IpAddr>(), bare) {
        (Ok(ip), _) => TargetAddr::Ip(SocketAddr::new(ip, port)),
        (Err(_), Some(_)) => return Err(format!("destination {dest:?}: bad IPv6 address")),
        (Err(_), None)
            if (1..=255).contains(&host.len()) && !host.contains(['/', ' ', ':', '[', ']']) =>
        {
            TargetAddr::Domain(host.to_owned(), port)
        }
        (Err(_), None) => return Err(format!("destination {dest:?}: bad host name")),
    };
    Ok(PortMap {
        udp,
        listen,
        target,
    })
}

/// One `--udp-advertise` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpAdvertise {
    /// The listener it applies to; `None` for every listener.
    pub listener: Option<SocketAddr>,
    /// The address clients are told to send their datagrams to.
    pub ip: IpAddr,
}

impl UdpAdvertise {
    /// Whether this entry applies to a connection accepted at `local` (the control
    /// connection's local address).
    fn matches(&self, local: SocketAddr) -> bool {
        match self.listener {
            None => true,
            Some(l) => {
                l.port() == local.port()
                    && (l.ip().is_unspecified()
                        || l.ip().to_canonical() == local.ip().to_canonical())
            }
        }
    }
}

/// Parses `IP` or `LISTEN=IP`.
pub fn parse_advertise(s: &str) -> Result<UdpAdvertise, String> {
    let (listener, ip) = match s.split_once('=') {
        Some((l, ip)) => (
            Some(
                l.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("listener {l:?}: {e}"))?,
            ),
            ip,
        ),
        None => (None, s),
    };
    let ip = ip
        .trim()
        .parse::<IpAddr>()
        .map_err(|e| format!("address {ip:?}: {e}"))?;
    Ok(UdpAdvertise { listener, ip })
}

/// The TOML file. Keys match the long flags with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<Vec<SocketAddr>>,
    threads: Option<usize>,
    backlog: Option<u32>,
    /// `users = { alice = "secret" }`
    users: Option<std::collections::BTreeMap<String, Password>>,
    users_file: Option<PathBuf>,
    log_level: Option<String>,
    allow_open: Option<bool>,
    allow_socks4: Option<bool>,
    runtime: Option<RuntimeChoice>,
    handshake_timeout: Option<DurationValue>,
    connect_timeout: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    drain_timeout: Option<DurationValue>,
    egress_ip: Option<IpAddr>,
    upstream_fastopen: Option<bool>,
    listen_fastopen: Option<u32>,
    socks6: Option<bool>,
    udp_map_idle: Option<DurationValue>,
    relay: Option<RelayChoice>,
    buffer_size: Option<usize>,
    pipe_size: Option<usize>,
    happy_eyeballs_delay: Option<DurationValue>,
    /// `udp_advertise = ["203.0.113.7"]` or `["0.0.0.0:1080=203.0.113.7"]`
    udp_advertise: Option<Vec<String>>,
    bind_timeout: Option<DurationValue>,
    max_tunnels: Option<usize>,
    max_tunnels_per_client: Option<usize>,
    max_tunnels_per_user: Option<usize>,
    max_auth_failures: Option<u32>,
    auth_failure_window: Option<DurationValue>,
    bandwidth_per_user: Option<RateValue>,
    proxy_listen: Option<Vec<SocketAddr>>,
    proxy_from: Option<Vec<String>>,
    metrics: Option<SocketAddr>,
    setuid: Option<String>,
    /// Access rules (`[access]`, `[[access.rule]]`).
    access: Option<AccessConfig>,
    /// Default parent proxy (`--upstream`).
    upstream: Option<String>,
    /// `map = ["tcp:127.0.0.1:8080=internal.example:80"]`
    map: Option<Vec<String>>,
    ktls: Option<KtlsChoice>,
    /// `[tls]`: SOCKS over TLS listeners.
    tls: Option<FileTls>,
    /// `[[route]]`: requests sent through parent proxies.
    route: Option<Vec<RouteConfig>>,
    /// `[user_bandwidth]`: `alice = "1M"` (bytes/s each way; 0 exempts a user from the
    /// default).
    user_bandwidth: Option<std::collections::BTreeMap<String, RateValue>>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    listen: Option<Vec<SocketAddr>>,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// A TLS listener's certificate and the configuration built from it.
#[derive(Clone)]
pub struct TlsListen {
    /// Where the certificate, key and client CA are read from.
    pub files: TlsFiles,
    /// The rustls configuration.
    pub server: Arc<rustls::ServerConfig>,
    /// Problems worth a warning (an expired certificate).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for TlsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListen")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// A rate in the file: bytes per second as a number, or a string like "10M".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "toml::Value")]
struct RateValue(u64);

impl TryFrom<toml::Value> for RateValue {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) if n >= 0 => Ok(RateValue(n as u64)),
            toml::Value::String(s) => parse_rate(&s).map(RateValue),
            other => Err(format!(
                "expected bytes per second like 1000000 or \"10M\", got {other}"
            )),
        }
    }
}

/// A password in the `[users]` table. Its errors never show the value, however the table was
/// written (found by fuzzing: `users.a = 123` made the parser's message quote the number).
#[derive(Clone)]
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Password;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a password string (value not shown)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Password, E> {
                Ok(Password(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Password, E> {
                Ok(Password(v))
            }
        }
        d.deserialize_any(V).map_err(|_: D::Error| {
            serde::de::Error::custom("a password must be a string (value not shown)")
        })
    }
}

/// A duration in the file: a number of seconds or a string with a unit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "toml::Value")]
struct DurationValue(Duration);

impl TryFrom<toml::Value> for DurationValue {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(s) if s >= 0 => Ok(DurationValue(Duration::from_secs(s as u64))),
            toml::Value::Float(s) if s >= 0.0 => Duration::try_from_secs_f64(s)
                .map(DurationValue)
                .map_err(|_| format!("duration {s} s is out of range")),
            toml::Value::String(s) => parse_duration(&s).map(DurationValue),
            other => Err(format!(
                "expected a duration like 10 or \"10s\", got {other}"
            )),
        }
    }
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads.
    pub threads: usize,
    /// Backlog of each listener.
    pub backlog: u32,
    /// Users; empty means no authentication.
    pub users: Users,
    /// Log filter.
    pub log_level: String,
    /// Open proxy on a public address explicitly allowed.
    pub allow_open: bool,
    /// SOCKS4 accepted even with users configured.
    pub allow_socks4: bool,
    /// Runtime choice.
    pub runtime: RuntimeChoice,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Connect deadline (all addresses).
    pub connect_timeout: Duration,
    /// Idle deadline; `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Shutdown drain deadline.
    pub drain_timeout: Duration,
    /// Outbound source address.
    pub egress_ip: Option<IpAddr>,
    /// TCP Fast Open on direct outbound connects, reply first (`--upstream-fastopen`).
    pub upstream_fastopen: bool,
    /// TCP_FASTOPEN queue length on listeners; 0 is off.
    pub listen_fastopen: u32,
    /// Serve SOCKS 6 requests (else answer them with a version mismatch).
    pub socks6: bool,
    /// Relay mode.
    pub relay: RelayChoice,
    /// Copy-relay buffer size.
    pub buffer_size: usize,
    /// Splice-relay pipe size.
    pub pipe_size: usize,
    /// RFC 8305 connection attempt delay.
    pub happy_eyeballs_delay: Duration,
    /// UDP ASSOCIATE reply addresses (most specific listener match first).
    pub udp_advertise: Vec<UdpAdvertise>,
    /// How long a BIND waits for its inbound connection.
    pub bind_timeout: Duration,
    /// Compiled access rules.
    pub rules: Rules,
    /// Concurrent tunnel limits (total, per client, per user); 0 = none.
    pub max_tunnels: (usize, usize, usize),
    /// Failed logins per client address and window before lockout (0 = none).
    pub max_auth_failures: (u32, Duration),
    /// Bandwidth per user and direction in bytes/s: the default (0 = none) and overrides.
    pub bandwidth: (u64, Vec<(String, u64)>),
    /// PROXY protocol listen addresses.
    pub proxy_listen: Vec<SocketAddr>,
    /// Networks allowed to connect to the PROXY protocol listeners.
    pub proxy_from: Vec<Cidr>,
    /// Metrics listener.
    pub metrics: Option<SocketAddr>,
    /// User to switch to after binding.
    pub setuid: Option<String>,
    /// Files a reload reads again (config file, users file, certificates).
    pub files: Vec<PathBuf>,
    /// SOCKS over TLS listen addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// Their certificate, when there are any.
    pub tls: Option<TlsListen>,
    /// Parent proxies and which requests go through them.
    pub routes: Routes,
    /// Kernel TLS offload.
    pub ktls: KtlsChoice,
    /// Static port maps.
    pub maps: Vec<PortMap>,
    /// Idle deadline of a UDP map's flow.
    pub udp_map_idle: Duration,
}

impl Config {
    /// The address to advertise in a UDP ASSOCIATE reply for a control connection accepted at
    /// `local`, if one is configured: a per-listener entry wins over a global one.
    pub fn udp_advertise_for(&self, local: SocketAddr) -> Option<IpAddr> {
        let per_listener = self
            .udp_advertise
            .iter()
            .find(|a| a.listener.is_some() && a.matches(local));
        per_listener
            .or_else(|| self.udp_advertise.iter().find(|a| a.listener.is_none()))
            .map(|a| a.ip)
    }
}

/// Why settings were rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A bad user entry.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
    /// An open proxy on a non-loopback address without `--allow-open`.
    #[error(
        "refusing to run an open proxy on {0}: without users anyone who can reach that address \
         can relay traffic through this host. Configure users (--user NAME:PASS or --users FILE), \
         listen on loopback, or pass --allow-open if an open proxy is really intended"
    )]
    OpenProxy(SocketAddr),
}

impl Config {
    /// Resolves flags, the config file they name (if any) and defaults.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    fn resolve(args: &ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let listen = if !args.listen.is_empty() {
            args.listen.clone()
        } else {
            file.listen
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("valid default")])
        };
        let proxy_listen = if !args.proxy_listen.is_empty() {
            args.proxy_listen.clone()
        } else {
            file.proxy_listen.clone().unwrap_or_default()
        };
        // Only --proxy-listen, --tls-listen or --map given: no plain SOCKS listener unless
        // asked for too.
        let tls_listen_given = !args.tls_listen.is_empty()
            || file.tls.as_ref().is_some_and(|t| t.listen.is_some())
            || !args.maps.is_empty()
            || file.map.is_some();
        let listen = if args.listen.is_empty()
            && file.listen.is_none()
            && (!proxy_listen.is_empty() || tls_listen_given)
        {
            Vec::new()
        } else {
            listen
        };
        let (listen, tls_listen, tls) = tls_settings(args, &file, listen)?;
        let maps = if !args.maps.is_empty() {
            args.maps.clone()
        } else {
            let specs = file.map.iter().flatten();
            specs
                .map(|m| parse_map(m).map_err(|e| ConfigError::Invalid(format!("map {m:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?
        };
        let taken: Vec<&SocketAddr> = listen
            .iter()
            .chain(&proxy_listen)
            .chain(&tls_listen)
            .collect();
        for (i, m) in maps.iter().enumerate() {
            let twice = maps[..i]
                .iter()
                .any(|o| o.listen == m.listen && o.udp == m.udp);
            if twice || (!m.udp && taken.contains(&&m.listen)) {
                return Err(ConfigError::Invalid(format!(
                    "map listen address {} is used twice",
                    m.listen
                )));
            }
        }
        let none = [&listen, &proxy_listen, &tls_listen]
            .iter()
            .all(|l| l.is_empty());
        if none && maps.is_empty() {
            return Err(ConfigError::Invalid("no listen address".into()));
        }
        let proxy_from = if !args.proxy_from.is_empty() {
            args.proxy_from.clone()
        } else {
            file.proxy_from
                .clone()
                .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1".into()])
        };
        let proxy_from = proxy_from
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| ConfigError::Invalid(format!("proxy_from: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;

        let mut users = Users::new();
        if let Some(map) = &file.users {
            for (name, Password(pass)) in map {
                users.add_entry(&format!("{name}:{pass}"), "config users")?;
            }
        }
        if let Some(path) = args.users.as_ref().or(file.users_file.as_ref()) {
            users.load_file(path)?;
        }
        for u in &args.user {
            users.add_entry(u, "--user")?;
        }

        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(default_threads);
        if threads == 0 || threads > 1024 {
            return Err(ConfigError::Invalid(format!(
                "threads must be between 1 and 1024, got {threads}"
            )));
        }
        let buffer_size = args.buffer_size.or(file.buffer_size).unwrap_or(64 * 1024);
        if !(512..=16 << 20).contains(&buffer_size) {
            return Err(ConfigError::Invalid(format!(
                "buffer_size must be between 512 bytes and 16 MiB, got {buffer_size}"
            )));
        }
        let pipe_size = args.pipe_size.or(file.pipe_size).unwrap_or(64 * 1024);
        if !(4096..=64 << 20).contains(&pipe_size) {
            return Err(ConfigError::Invalid(format!(
                "pipe_size must be between 4 KiB and 64 MiB, got {pipe_size}"
            )));
        }
        let dur = |a: Option<Duration>, f: Option<DurationValue>, d: Duration| {
            a.or(f.map(|v| v.0)).unwrap_or(d)
        };
        let handshake_timeout = dur(
            args.handshake_timeout,
            file.handshake_timeout,
            Duration::from_secs(10),
        );
        let connect_timeout = dur(
            args.connect_timeout,
            file.connect_timeout,
            Duration::from_secs(10),
        );
        for (name, d) in [
            ("handshake_timeout", handshake_timeout),
            ("connect_timeout", connect_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        let mut udp_advertise = args.udp_advertise.clone();
        if udp_advertise.is_empty() {
            for a in file.udp_advertise.iter().flatten() {
                udp_advertise.push(
                    parse_advertise(a)
                        .map_err(|e| ConfigError::Invalid(format!("udp_advertise {a:?}: {e}")))?,
                );
            }
        }
        let bind_timeout = dur(
            args.bind_timeout,
            file.bind_timeout,
            Duration::from_secs(60),
        );
        if bind_timeout.is_zero() {
            return Err(ConfigError::Invalid("bind_timeout must be positive".into()));
        }
        let idle = dur(
            args.idle_timeout,
            file.idle_timeout,
            Duration::from_secs(3600),
        );

        let bandwidth = (
            args.bandwidth_per_user
                .or(file.bandwidth_per_user.map(|r| r.0))
                .unwrap_or(0),
            file.user_bandwidth
                .iter()
                .flatten()
                .map(|(name, r)| (name.clone(), r.0))
                .collect(),
        );
        let config = Config {
            listen,
            threads,
            backlog: args.backlog.or(file.backlog).unwrap_or(4096).max(1),
            users,
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            allow_open: args.allow_open || file.allow_open.unwrap_or(false),
            allow_socks4: args.allow_socks4 || file.allow_socks4.unwrap_or(false),
            runtime: args.runtime.or(file.runtime).unwrap_or(RuntimeChoice::Auto),
            handshake_timeout,
            connect_timeout,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            drain_timeout: dur(
                args.drain_timeout,
                file.drain_timeout,
                Duration::from_secs(30),
            ),
            egress_ip: args.egress_ip.or(file.egress_ip),
            upstream_fastopen: args.upstream_fastopen || file.upstream_fastopen.unwrap_or(false),
            listen_fastopen: args.listen_fastopen.or(file.listen_fastopen).unwrap_or(0),
            socks6: !args.no_socks6 && file.socks6.unwrap_or(true),
            relay: args.relay.or(file.relay).unwrap_or(RelayChoice::Auto),
            buffer_size,
            pipe_size,
            happy_eyeballs_delay: dur(
                args.happy_eyeballs_delay,
                file.happy_eyeballs_delay,
                Duration::from_millis(250),
            ),
            udp_advertise,
            bind_timeout,
            rules: Rules::compile(&file.access.clone().unwrap_or_default())
                .map_err(ConfigError::Invalid)?,
            max_tunnels: (
                args.max_tunnels.or(file.max_tunnels).unwrap_or(0),
                args.max_tunnels_per_client
                    .or(file.max_tunnels_per_client)
                    .unwrap_or(0),
                args.max_tunnels_per_user
                    .or(file.max_tunnels_per_user)
                    .unwrap_or(0),
            ),
            max_auth_failures: (
                args.max_auth_failures
                    .or(file.max_auth_failures)
                    .unwrap_or(10),
                dur(
                    args.auth_failure_window,
                    file.auth_failure_window,
                    Duration::from_secs(60),
                ),
            ),
            bandwidth,
            proxy_listen,
            proxy_from,
            metrics: args.metrics.or(file.metrics),
            setuid: args.setuid.clone().or(file.setuid),
            files: args
                .config
                .iter()
                .chain(args.users.as_ref().or(file.users_file.as_ref()))
                .chain(tls.iter().flat_map(|t| {
                    [&t.files.cert, &t.files.key]
                        .into_iter()
                        .chain(t.files.client_ca.as_ref())
                }))
                .cloned()
                .collect(),
            tls_listen,
            tls,
            routes: Routes::compile(
                file.route.as_deref().unwrap_or_default(),
                args.upstream.as_deref().or(file.upstream.as_deref()),
            )
            .map_err(ConfigError::Invalid)?,
            ktls: args.ktls.or(file.ktls).unwrap_or(KtlsChoice::Auto),
            maps,
            udp_map_idle: dur(
                args.udp_map_idle,
                file.udp_map_idle,
                Duration::from_secs(60),
            ),
        };
        config.check_open_proxy()?;
        Ok(config)
    }

    /// An open proxy is only allowed on loopback unless explicitly requested.
    fn check_open_proxy(&self) -> Result<(), ConfigError> {
        // A PROXY listener's clients are whoever its header names: the same rule applies.
        // TLS listeners that require client certificates authenticate their clients.
        let mtls = self
            .tls
            .as_ref()
            .is_some_and(|t| t.files.client_ca.is_some());
        let tls_open = if mtls { &[][..] } else { &self.tls_listen[..] };
        let all: Vec<SocketAddr> = self
            .listen
            .iter()
            .chain(&self.proxy_listen)
            .chain(tls_open)
            .copied()
            .collect();
        self.check_open_proxy_on(&all)
    }

    /// The open-proxy rule for listeners at `addrs` (e.g. sockets passed by systemd).
    pub fn check_open_proxy_on(&self, addrs: &[SocketAddr]) -> Result<(), ConfigError> {
        if !self.users.is_empty() || self.allow_open {
            return Ok(());
        }
        match addrs.iter().find(|a| !is_loopback(a.ip())) {
            Some(a) => Err(ConfigError::OpenProxy(*a)),
            None => Ok(()),
        }
    }
}

/// Plain listen addresses, TLS listen addresses, and the TLS listeners' certificate.
type ListenSplit = (Vec<SocketAddr>, Vec<SocketAddr>, Option<TlsListen>);

/// The TLS listeners and their certificate, from the flags (which win) or the `[tls]` table.
/// With a certificate but no TLS listen address, the plain listen addresses serve TLS.
fn tls_settings(
    args: &ServeArgs,
    file: &FileConfig,
    listen: Vec<SocketAddr>,
) -> Result<ListenSplit, ConfigError> {
    let ft = file.tls.as_ref();
    let files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args
                .tls_client_ca
                .clone()
                .or_else(|| ft.and_then(|t| t.client_ca.clone())),
        }),
        _ => ft.map(|t| TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: args.tls_client_ca.clone().or_else(|| t.client_ca.clone()),
        }),
    };
    let mut tls_listen = if !args.tls_listen.is_empty() {
        args.tls_listen.clone()
    } else {
        ft.and_then(|t| t.listen.clone()).unwrap_or_default()
    };
    let Some(files) = files else {
        if !tls_listen.is_empty() {
            return Err(ConfigError::Invalid(
                "--tls-listen needs a certificate: --tls-cert FILE --tls-key FILE".into(),
            ));
        }
        return Ok((listen, tls_listen, None));
    };
    let mut listen = listen;
    if tls_listen.is_empty() {
        tls_listen = std::mem::take(&mut listen);
    }
    if let Some(a) = tls_listen.iter().find(|a| listen.contains(a)) {
        return Err(ConfigError::Invalid(format!(
            "{a} is both a plain and a TLS listen address"
        )));
    }
    let (server, warnings) =
        crate::tls::server_config(&files).map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?;
    let tls = TlsListen {
        files,
        server,
        warnings,
    };
    Ok((listen, tls_listen, Some(tls)))
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text; errors carry line and column.
    ///
    /// The error never quotes the file: the parser's own text shows the offending line,
    /// which may hold a password. Inside the `[users]` table the message is replaced too (it
    /// can quote the value).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e: toml::de::Error| {
            let Some(span) = e.span() else {
                return e.message().to_string();
            };
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let in_users = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .is_some_and(|h| h.trim_start_matches('[').trim_end_matches(']').trim() == "users");
            let message = if in_users {
                "invalid user entry (value not shown); expected NAME = \"PASSWORD\""
            } else {
                e.message()
            };
            format!("line {line}, column {column}: {message}")
        })?;
        if let Some(access) = &mut file.access {
            access.locate(text);
        }
        Ok(file)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// Usable CPUs: the affinity mask this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `10`, `10s`, `250ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = f64::from_str(num).map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn udp_advertise_per_listener_wins() {
        let file =
            FileConfig::parse(r#"udp_advertise = ["198.51.100.1", "0.0.0.0:1080=203.0.113.7"]"#)
                .unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        let at = |s: &str| c.udp_advertise_for(s.parse().unwrap());
        assert_eq!(at("10.0.0.5:1080"), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(at("10.0.0.5:1081"), Some("198.51.100.1".parse().unwrap()));
        assert!(parse_advertise("1080=1.2.3.4").is_err());
        assert!(parse_advertise("nat.example").is_err());
        let none = Config::resolve(&ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(
            none.udp_advertise_for("127.0.0.1:1080".parse().unwrap()),
            None
        );
        assert_eq!(none.bind_timeout, Duration::from_secs(60));
    }

    /// A self-signed certificate and key, written to temporary files.
    fn cert_files(tag: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let cert = dir.join(format!("ringsocks-config-{id}-{tag}.pem"));
        let key = dir.join(format!("ringsocks-config-{id}-{tag}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn tls_listeners() {
        let (cert, key) = cert_files("listeners");
        let tls = |listen: &[&str], tls_listen: &[&str]| ServeArgs {
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            tls_listen: tls_listen.iter().map(|a| a.parse().unwrap()).collect(),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..Default::default()
        };
        // A certificate alone: the listen addresses (here the default) serve TLS.
        let c = Config::resolve(&tls(&[], &[]), FileConfig::default()).unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(c.tls_listen, vec![DEFAULT_LISTEN.parse().unwrap()]);
        // --tls-listen alone: no plain listener besides.
        let c = Config::resolve(&tls(&[], &["127.0.0.1:1443"]), FileConfig::default()).unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(c.tls_listen, vec!["127.0.0.1:1443".parse().unwrap()]);
        // Both, asked for.
        let both = tls(&["127.0.0.1:1080"], &["127.0.0.1:1443"]);
        let c = Config::resolve(&both, FileConfig::default()).unwrap();
        assert_eq!((c.listen.len(), c.tls_listen.len()), (1, 1));
        let same = tls(&["127.0.0.1:1443"], &["127.0.0.1:1443"]);
        assert!(Config::resolve(&same, FileConfig::default()).is_err());
        // --tls-listen without a certificate.
        let bare = ServeArgs {
            tls_listen: vec!["127.0.0.1:1443".parse().unwrap()],
            ..Default::default()
        };
        let e = Config::resolve(&bare, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        // An open TLS proxy on a public address needs the flag, unless clients must present
        // certificates.
        let public = tls(&[], &["0.0.0.0:1443"]);
        let e = Config::resolve(&public, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::OpenProxy(_)), "{e}");
        let mtls = ServeArgs {
            tls_client_ca: Some(cert.clone()),
            ..public
        };
        assert!(Config::resolve(&mtls, FileConfig::default()).is_ok());
        // A key that is not the certificate's.
        let (_, other_key) = cert_files("other");
        let wrong = ServeArgs {
            tls_key: Some(other_key),
            ..tls(&[], &[])
        };
        let e = Config::resolve(&wrong, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        // The same from the file.
        let file = FileConfig::parse(&format!(
            "[tls]\nlisten = [\"127.0.0.1:2443\"]\ncert = {:?}\nkey = {:?}\n",
            cert, key
        ))
        .unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(c.tls_listen, vec!["127.0.0.1:2443".parse().unwrap()]);
        assert!(c.files.contains(&cert));
    }

    #[test]
    fn port_maps() {
        let m = parse_map("tcp:[::1]:2222=[2001:db8::7]:22").unwrap();
        assert_eq!(m.listen, "[::1]:2222".parse().unwrap());
        assert_eq!(
            m.target,
            TargetAddr::Ip("[2001:db8::7]:22".parse().unwrap())
        );
        let m = parse_map("tcp:127.0.0.1:8080=internal.example:80").unwrap();
        assert_eq!(m.target, TargetAddr::Domain("internal.example".into(), 80));
        let u = parse_map("udp:127.0.0.1:53=10.0.0.1:53").unwrap();
        assert!(u.udp && !m.udp);
        assert_eq!(u.target, TargetAddr::Ip("10.0.0.1:53".parse().unwrap()));
        assert!(parse_map("sctp:127.0.0.1:53=10.0.0.1:53")
            .unwrap_err()
            .contains("tcp or udp"));
        // Maps alone: no SOCKS listener besides; one address twice is refused.
        let a = ServeArgs {
            maps: vec![m.clone()],
            ..Default::default()
        };
        let c = Config::resolve(&a, FileConfig::default()).unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(c.maps, vec![m.clone()]);
        let twice = ServeArgs {
            maps: vec![m.clone(), m],
            ..Default::default()
        };
        assert!(Config::resolve(&twice, FileConfig::default()).is_err());
        let file = FileConfig::parse("map = [\"tcp:127.0.0.1:9000=10.0.0.1:9000\"]").unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        assert_eq!(c.maps[0].listen, "127.0.0.1:9000".parse().unwrap());
        assert!(FileConfig::parse("map = [\"tcp:nonsense\"]")
            .map(|f| Config::resolve(&ServeArgs::default(), f))
            .unwrap()
            .is_err());
    }

    #[test]
    fn routes_from_the_file_and_the_flag() {
        let file = FileConfig::parse(
            "upstream = \"socks5://u:p@198.51.100.9:1080\"\n[[route]]\ndest = [\".corp.example\"]\nvia = \"direct\"\n",
        )
        .unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        assert!(!c.routes.is_direct());
        let bad = ServeArgs {
            upstream: Some("socks5://u:hunter2@".into()),
            ..Default::default()
        };
        let e = Config::resolve(&bad, FileConfig::default()).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(FileConfig::parse("[[route]]\nvia = \"direct\"\nvai = 1\n").is_err());
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::resolve(&ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(
            c.listen,
            vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.backlog, 4096);
        assert!(c.users.is_empty());
    }

    #[test]
    fn open_proxy_on_public_address_needs_flag() {
        let mut a = ServeArgs {
            listen: vec!["0.0.0.0:1080".parse().unwrap()],
            ..Default::default()
        };
        let e = Config::resolve(&a, FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::OpenProxy(_)), "{e}");
        assert!(e.to_string().contains("--allow-open"));
        a.allow_open = true;
        assert!(Config::resolve(&a, FileConfig::default()).is_ok());
        a.allow_open = false;
        a.user = vec!["u:p".into()];
        assert!(Config::resolve(&a, FileConfig::default()).is_ok());
        let v6 = ServeArgs {
            listen: vec!["[::1]:1080".parse().unwrap()],
            ..Default::default()
        };
        assert!(Config::resolve(&v6, FileConfig::default()).is_ok());
    }

    #[test]
    fn file_values_and_flag_precedence() {
        let file = FileConfig::parse(
            r#"
            listen = ["127.0.0.1:2000", "[::1]:2000"]
            threads = 3
            handshake_timeout = "3s"
            idle_timeout = 0
            users = { alice = "pw" }
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            threads: Some(2),
            ..Default::default()
        };
        let c = Config::resolve(&args, file).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.threads, 2);
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, None);
        assert!(c.users.verify(b"alice", b"pw"));
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let file = FileConfig::parse(include_str!("../ringsocks.example.toml")).unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn shipped_edge_config_is_valid_and_blocks_internal_networks() {
        use crate::proto::{Command, TargetAddr};
        use crate::rules::Query;
        let file = FileConfig::parse(include_str!("../edge.example.toml")).unwrap();
        let c = Config::resolve(&ServeArgs::default(), file).unwrap();
        assert!(!c.users.is_empty(), "a public listener needs users");
        let client = "198.51.100.1".parse().unwrap();
        for (dst, blocked) in [
            ("169.254.169.254:80", true),
            ("10.0.0.1:443", true),
            ("[::1]:80", true),
            ("192.0.2.10:25", true),
            ("93.184.215.14:443", false),
        ] {
            let t = TargetAddr::Ip(dst.parse().unwrap());
            let q = Query::for_target(client, Some("alice"), Command::Connect, &t);
            assert_eq!(c.rules.check(&q).blocked(), blocked, "{dst}");
        }
    }

    #[test]
    fn file_errors_never_show_a_password() {
        for text in [
            "[users]\nalice = \"s3cret\n",
            "[users]\nalice = 12345678\n",
            "threads = 2\n[users]\nbob = \"ok\"\nalice = [\"s3cret\"]\n",
        ] {
            let e = FileConfig::parse(text).unwrap_err();
            assert!(!e.contains("s3cret") && !e.contains("12345678"), "{e}");
            assert!(e.contains("line"), "{e}");
        }
    }

    #[test]
    fn file_errors_name_the_line() {
        let e = FileConfig::parse("threads = 2\nlisen = []\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = FileConfig::parse("handshake_timeout = \"x\"\n").unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn fuzz_found_config_errors_neither_panic_nor_show_passwords() {
        // Found by fuzz/ (config target): each wrote the password into the error message.
        for text in [
            "users.a=12345678",
            "[users]#\na=12345678",
            "users={a=12345678}",
            "[\"users\"]\na=12345678",
            "[users]\na=12345678",
        ] {
            let e = FileConfig::parse(text).unwrap_err();
            assert!(!e.contains("12345678"), "{text:?}: {e}");
        }
        // Panicked in Duration::from_secs_f64.
        let e = FileConfig::parse("connect_timeout=1e20").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn rule_errors_name_the_rule_and_its_line() {
        let text = "[access]\ndefault = \"block\"\n\n[[access.rule]]\naction = \"pass\"\n\n  [[ access.rule ]]\nname = \"bad\"\naction = \"block\"\ndest = [\"10.0.0.0/33\"]\n";
        let file = FileConfig::parse(text).unwrap();
        let e = Config::resolve(&ServeArgs::default(), file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("access rule \"bad\" (line 7)"), "{e}");
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }
}
