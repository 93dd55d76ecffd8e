//! What SIGHUP reloads: users, access rules, bandwidth limits, routes and TLS certificates,
//! as one immutable snapshot. Each worker holds
//! the current snapshot; a session takes it once when it starts and keeps it to its end, so a
//! reload applies to new sessions and never changes a live tunnel's rules halfway.

use std::sync::Arc;

use super::bandwidth::Bandwidth;
use crate::auth::Users;
use crate::config::Config;
use crate::proto::AuthPolicy;
use crate::route::Routes;
use crate::rules::Rules;

/// Users, rules and the handshake policy they imply.
#[derive(Debug, Clone)]
pub struct Access {
    /// RFC 1929 users; empty means no authentication.
    pub users: Users,
    /// Access rules.
    pub rules: Rules,
    /// What the handshake accepts.
    pub auth: AuthPolicy,
    /// Per-user bandwidth limits.
    pub bandwidth: Arc<Bandwidth>,
    /// Parent proxies and the routes to them.
    pub routes: Routes,
    /// TLS listeners' certificate (read again on SIGHUP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Access {
    /// The reloadable part of `config`.
    pub fn from_config(config: &Config) -> Access {
        Self::reloaded(config, None)
    }

    /// The same on a reload: bandwidth buckets whose rate is unchanged carry over from
    /// `previous`.
    pub fn reloaded(config: &Config, previous: Option<&Access>) -> Access {
        Access {
            users: config.users.clone(),
            rules: config.rules.clone(),
            auth: AuthPolicy {
                password_required: !config.users.is_empty(),
                allow_socks4: config.allow_socks4,
                allow_socks6: config.socks6,
            },
            bandwidth: Arc::new(Bandwidth::reusing(
                config.bandwidth.0,
                &config.bandwidth.1,
                previous.map(|p| &*p.bandwidth),
            )),
            tls: config.tls.as_ref().map(|t| t.server.clone()),
            routes: config.routes.clone(),
        }
    }
}
