//! Routes: which CONNECT requests go through a parent proxy, and which one. Ordered, first
//! match wins, with the same conditions as access rules (client, user, destination, port);
//! a request no route matches goes to `--upstream` if one is set, else direct. Routes are
//! read with the rest of the SIGHUP snapshot.
//!
//! A destination given as a name is matched by host and `.suffix` entries only: it is not
//! resolved here to pick a route, because the parent resolves it (its network may see other
//! addresses than ours). Network entries match destinations given as addresses.
//!
//! BIND and UDP ASSOCIATE are never routed: they go direct.

use std::sync::Arc;

use serde::Deserialize;

use crate::proto::upstream::{UpstreamKind, UpstreamUrl};
use crate::proto::Command;
use crate::rules::{AccessConfig, Action, Query, RuleConfig, Rules};

/// One `[[route]]` of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name for logs (default: `route N`).
    pub name: Option<String>,
    /// Client networks.
    pub client: Option<Vec<String>>,
    /// Users.
    pub user: Option<Vec<String>>,
    /// Destinations: networks, host names, `.example.com` suffixes.
    pub dest: Option<Vec<String>>,
    /// Destination ports: `443` or `8000-8999`.
    pub port: Option<Vec<String>>,
    /// `socks5://…`, `socks5+tls://…`, `http://…`, or `direct`.
    pub via: String,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Via {
    /// Straight to the destination.
    Direct,
    /// Through a parent proxy.
    Parent(Arc<Parent>),
}

/// A parent proxy and, for one reached over TLS, its client configuration.
#[derive(Debug)]
pub struct Parent {
    /// The parent's address, protocol and credentials.
    pub url: UpstreamUrl,
    /// TLS to the parent: the configuration and the name its certificate must carry.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Parent {
    /// Prepares a parent from its URL (loading the CA file of a TLS one).
    pub fn new(url: UpstreamUrl) -> Result<Parent, String> {
        let tls = match url.kind {
            UpstreamKind::Socks5Tls => {
                let config = crate::tls::client_config(url.ca.as_deref())
                    .map_err(|e| format!("{url}: {e}"))?;
                let name = crate::tls::server_name(&url.host, url.sni.as_deref())
                    .map_err(|e| format!("{url}: server name {e}"))?;
                Some((config, name))
            }
            _ => None,
        };
        Ok(Parent { url, tls })
    }
}

/// Compiled routes.
#[derive(Debug, Clone)]
pub struct Routes {
    matcher: Rules,
    names: Vec<String>,
    via: Vec<Via>,
    default: Via,
}

impl Default for Routes {
    /// Everything direct.
    fn default() -> Self {
        Routes {
            matcher: Rules::default(),
            names: Vec::new(),
            via: Vec::new(),
            default: Via::Direct,
        }
    }
}

impl Routes {
    /// Compiles `[[route]]` tables and the default parent (`--upstream`). Errors name the
    /// route and the bad value (never a password).
    pub fn compile(routes: &[RouteConfig], default: Option<&str>) -> Result<Routes, String> {
        let mut rules = Vec::with_capacity(routes.len());
        let mut names = Vec::with_capacity(routes.len());
        let mut via = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("route {}", i + 1));
            via.push(parse_via(&r.via).map_err(|e| format!("route {name:?}: {e}"))?);
            rules.push(RuleConfig {
                name: Some(name.clone()),
                action: Action::Pass,
                client: r.client.clone(),
                user: r.user.clone(),
                command: None,
                dest: r.dest.clone(),
                port: r.port.clone(),
                log: false,
                line: None,
            });
            names.push(name);
        }
        let matcher = Rules::compile(&AccessConfig {
            default: Some(Action::Block),
            preset: None,
            rules,
        })
        .map_err(|e| e.replacen("access rule", "route", 1))?;
        let default = match default {
            Some(url) => parse_via(url).map_err(|e| format!("--upstream: {e}"))?,
            None => Via::Direct,
        };
        Ok(Routes {
            matcher,
            names,
            via,
            default,
        })
    }

    /// Whether every request goes direct.
    pub fn is_direct(&self) -> bool {
        matches!(self.default, Via::Direct) && self.via.iter().all(|v| matches!(v, Via::Direct))
    }

    /// Where a request goes, and the deciding route's name (`"default"` when none matched).
    pub fn choose(&self, q: &Query<'_>) -> (&Via, &str) {
        if q.command != Command::Connect {
            return (&Via::Direct, "default");
        }
        match self.matcher.position(q) {
            Some(i) => (&self.via[i], &self.names[i]),
            None => (&self.default, "default"),
        }
    }
}

fn parse_via(s: &str) -> Result<Via, String> {
    if s == "direct" {
        return Ok(Via::Direct);
    }
    let url: UpstreamUrl = s.parse().map_err(|e| format!("{e}"))?;
    Ok(Via::Parent(Arc::new(Parent::new(url)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TargetAddr;

    fn route(dest: &[&str], via: &str) -> RouteConfig {
        RouteConfig {
            name: None,
            client: None,
            user: None,
            dest: Some(dest.iter().map(|s| s.to_string()).collect()),
            port: None,
            via: via.into(),
        }
    }

    fn choose<'a>(r: &'a Routes, cmd: Command, target: &TargetAddr) -> (String, &'a str) {
        let q = Query::for_target("192.0.2.1".parse().unwrap(), None, cmd, target);
        let (via, name) = r.choose(&q);
        let via = match via {
            Via::Direct => "direct".to_string(),
            Via::Parent(p) => p.url.to_string(),
        };
        (via, name)
    }

    #[test]
    fn first_match_wins_and_the_default_is_upstream_or_direct() {
        let routes = [
            route(&["10.0.0.0/8", ".corp.example"], "socks5://parent:1080"),
            route(&["intranet.example"], "http://u:secret@web-proxy:3128"),
            route(&[".example"], "direct"),
        ];
        let r = Routes::compile(&routes, Some("socks5://fallback:1080")).unwrap();
        let name = |h: &str| TargetAddr::Domain(h.into(), 443);
        let c = Command::Connect;
        assert_eq!(
            choose(&r, c, &name("db.corp.example")),
            ("socks5://parent:1080".into(), "route 1")
        );
        assert_eq!(
            choose(&r, c, &TargetAddr::Ip("10.1.2.3:22".parse().unwrap())),
            ("socks5://parent:1080".into(), "route 1")
        );
        // The password never shows in what is logged.
        assert_eq!(
            choose(&r, c, &name("intranet.example")),
            ("http://u:***@web-proxy:3128".into(), "route 2")
        );
        assert_eq!(
            choose(&r, c, &name("www.example")),
            ("direct".into(), "route 3")
        );
        assert_eq!(
            choose(&r, c, &name("elsewhere.org")),
            ("socks5://fallback:1080".into(), "default")
        );
        // BIND and UDP go direct.
        assert_eq!(
            choose(&r, Command::Bind, &name("db.corp.example")).0,
            "direct"
        );
        let direct = Routes::compile(&routes[2..], None).unwrap();
        assert_eq!(choose(&direct, c, &name("x.org")).0, "direct");
        assert!(!r.is_direct());
        assert!(Routes::default().is_direct());
    }

    #[test]
    fn a_name_is_not_matched_by_a_network() {
        let r = Routes::compile(&[route(&["10.0.0.0/8"], "socks5://p:1080")], None).unwrap();
        let t = TargetAddr::Domain("ten.example".into(), 80);
        assert_eq!(choose(&r, Command::Connect, &t).0, "direct");
    }

    #[test]
    fn errors_name_the_route_and_hide_passwords() {
        let e = Routes::compile(&[route(&["10.0.0.0/33"], "direct")], None).unwrap_err();
        assert!(e.contains("route \"route 1\""), "{e}");
        let e = Routes::compile(&[route(&["x"], "gopher://a:1")], None).unwrap_err();
        assert!(e.contains("route \"route 1\""), "{e}");
        let e = Routes::compile(&[], Some("socks5://u:hunter2@:1")).unwrap_err();
        assert!(e.starts_with("--upstream"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Routes::compile(&[], Some("socks5+tls://h:1?ca=/nonexistent.pem")).unwrap_err();
        assert!(e.contains("/nonexistent.pem"), "{e}");
    }
}
