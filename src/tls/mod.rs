//! TLS settings: certificates and keys read from PEM files, and the rustls configurations
//! built from them, for SOCKS5-over-TLS listeners ([`server_config`]) and for parent proxies
//! reached over TLS ([`client_config`]). Nothing here does I/O on sockets: the connection is
//! driven by the worker (`server::tls`).
//!
//! Choices, and why:
//! - The `ring` provider, named explicitly, so a second provider elsewhere in the dependency
//!   graph can never make the choice ambiguous at run time.
//! - TLS 1.2 and 1.3 with rustls's default (AEAD-only) cipher suites.
//! - No session resumption on listeners: rustls's session cache and ticket rotator are shared
//!   behind locks, and every worker would contend on them during handshakes. A SOCKS client
//!   keeps few, long connections, so a full handshake costs little.

mod x509;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use x509::CertInfo;

/// Where a TLS listener's certificate, key and (for client certificates) CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM: when set, clients must present a certificate signed by one of
    /// them, and the certificate's subject common name is the client's user name.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A file holds no PEM item of the kind needed.
    #[error("{}: no {what} found (expected PEM)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A PEM file could not be parsed.
    #[error("{}: {why}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        why: String,
    },
    /// rustls refused the certificate, key or CA (for example a key that does not match the
    /// certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// Which setting.
        what: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The client CA file could not make a verifier.
    #[error("{}: {why}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// A listener's TLS configuration, built from `files`. The certificate's validity is checked
/// against the clock: an expired or not-yet-valid certificate is reported in `warnings`
/// (clients will refuse it; the operator must hear of it, but a listener that keeps running
/// can be fixed with a SIGHUP).
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Vec<String>), TlsError> {
    let chain = certs(&files.cert)?;
    let key = private_key(&files.key)?;
    let mut warnings = Vec::new();
    if let Ok(info) = CertInfo::parse(&chain[0]) {
        if let Some(w) = info.validity_warning(SystemTime::now()) {
            warnings.push(format!("{}: {w}", files.cert.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_error("TLS versions", e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = roots(path)?;
            if roots.len() > 10 {
                warnings.push(format!(
                    "{}: {} client CAs (a public CA bundle?): any client certificate one of them signed gets in, its CN as the user; use a CA of your own",
                    path.display(),
                    roots.len()
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        let what = format!("{} with {}", files.cert.display(), files.key.display());
        rustls_error(&what, e)
    })?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // Kernel TLS takes the traffic secrets once the handshake is done.
    config.enable_secret_extraction = true;
    Ok((Arc::new(config), warnings))
}

/// A parent proxy's TLS client configuration: trusting the CA certificates in `ca`, or the
/// system's bundle when `ca` is `None`.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => roots(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_error("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name a parent proxy's certificate must carry: `sni` when given, else its host.
pub fn server_name(host: &str, sni: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = sni.unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|e| format!("{name:?}: {e}"))
}

/// The user a verified client certificate names: its subject common name.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    CertInfo::parse(cert).ok()?.common_name
}

fn rustls_error(what: &str, source: rustls::Error) -> TlsError {
    TlsError::Rustls {
        what: what.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        },
        e => TlsError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        },
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| rustls_error(&path.display().to_string(), e))?;
    }
    Ok(store)
}

/// The system's CA bundle (Debian's and Fedora's locations).
fn system_roots() -> Result<RootCertStore, TlsError> {
    const BUNDLES: [&str; 3] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    let found = BUNDLES.iter().map(Path::new).find(|p| p.exists());
    let Some(path) = found else {
        return Err(TlsError::Missing {
            path: PathBuf::from(BUNDLES[0]),
            what: "system CA bundle (give the parent's CA with ?ca=FILE)",
        });
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs(path)?);
    if added == 0 {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "usable CA certificate",
        });
    }
    Ok(store)
}
