//! What a `--store postgres://…` URL names: the server, and how its connection is secured.
//! TLS follows libpq's `sslmode` so that a URL users already have means the same here:
//!
//! - `disable`: plain TCP;
//! - `prefer` (the default, as in libpq): TLS when the server offers it, else plain; the
//!   server's certificate is not checked;
//! - `require`: TLS or no connection; the certificate is not checked, unless `sslrootcert`
//!   is given (then as `verify-ca`, as libpq does);
//! - `verify-ca`: TLS, the certificate chain must lead to a trusted root;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host the URL names.
//!
//! `sslrootcert` names a PEM file of trusted roots, or `system` for the system's store; by
//! default `~/.postgresql/root.crt` where it exists (libpq's default), else the system's.
//! tokio-postgres knows only the first three modes and no `sslrootcert`: these two
//! parameters are taken out of the URL here and the driver is given `require` in place of
//! the verifying modes, with a rustls verifier that does the checking.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How the connection to PostgreSQL is secured (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres is given: it knows no verifying modes (the verifier checks).
    fn driver(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// A PostgreSQL server to connect to: the driver's settings and the TLS connector its
/// `sslmode` calls for.
#[derive(Clone)]
pub struct Target {
    pub config: postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("config", &self.config).field("mode", &self.mode).finish()
    }
}

/// Parses a URL (`postgres://…?sslmode=…`) or a keyword string (`host=… sslmode=…`); the
/// error says what to fix. Root certificates are read here, so a missing file is reported
/// when the head starts, not at its first write.
pub fn target(url: &str) -> Result<Target, String> {
    let (rest, ours) = take_tls_params(url);
    let mut mode = SslMode::Prefer;
    let mut roots = None;
    for (key, value) in ours {
        match key.as_str() {
            "sslmode" => mode = SslMode::parse(&value)?,
            "sslrootcert" => roots = Some(value),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(format!(
                    "{key}: client certificates are not supported; authenticate with a \
                     password (postgres://USER:PASSWORD@HOST/DB)"
                ));
            }
            _ => {}
        }
    }
    // libpq: `require` with a root certificate given verifies the chain.
    if mode == SslMode::Require && roots.is_some() {
        mode = SslMode::VerifyCa;
    }
    let rest = with_param(&rest, "sslmode", mode.driver());
    let config: postgres::Config = rest.parse().map_err(|e: postgres::Error| {
        format!(
            "not a PostgreSQL URL ({}): give postgres://USER:PASSWORD@HOST:PORT/DB",
            fleet_outbound::error_chain(&e)
        )
    })?;
    let tls = MakeRustlsConnect::new(client_config(mode, roots.as_deref())?);
    Ok(Target { config, tls, mode })
}

fn client_config(mode: SslMode, roots: Option<&str>) -> Result<ClientConfig, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let chain = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("sslrootcert: {e}"))?;
            Some((webpki, mode == SslMode::VerifyFull))
        }
    };
    let verifier = Arc::new(Verifier { provider: provider.clone(), chain });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The trusted roots: `sslrootcert`'s file, the system's store for `system`, else libpq's
/// default file where it exists, else the system's store.
fn root_store(given: Option<&str>) -> Result<RootCertStore, String> {
    let default = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
        .filter(|path| path.is_file());
    let file = match given {
        Some("system") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => default,
    };
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            for cert in pem_certificates(&path)? {
                store.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("sslmode verifies the server's certificate, but the system has no \
                            root certificates: give sslrootcert=PATH (a PEM file)"
                    .into());
            }
        }
    }
    Ok(store)
}

fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!("sslrootcert {}: cannot read PEM certificates: {e}", path.display())
        })?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert {}: no certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Takes `sslmode`, `sslrootcert` and the client-certificate parameters out of a URL's
/// query or a keyword string: what is left, and the pairs taken (values decoded).
fn take_tls_params(url: &str) -> (String, Vec<(String, String)>) {
    const OURS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OURS.contains(&key) {
                let value = percent_decode(value);
                taken.push((key.to_owned(), value));
            } else if !pair.is_empty() {
                kept.push(pair);
            }
        }
        let rest =
            if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, taken);
    }
    let mut kept = Vec::new();
    for word in keyword_pairs(url) {
        match word.split_once('=') {
            Some((key, value)) if OURS.contains(&key.trim()) => {
                taken.push((key.trim().to_owned(), unquote(value.trim())));
            }
            _ => kept.push(word),
        }
    }
    (kept.join(" "), taken)
}

/// Adds `key=value` to a URL's query or a keyword string.
fn with_param(url: &str, key: &str, value: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let joint = if url.contains('?') { '&' } else { '?' };
        format!("{url}{joint}{key}={value}")
    } else {
        format!("{url} {key}={value}")
    }
}

/// The `key=value` words of a keyword string; a quoted value ('…', with `\'` and `\\`)
/// may hold spaces, and `key = value` is one word.
fn keyword_pairs(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '\'' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                // `key = value`: the spaces around '=' do not end the word.
                let joins = word.ends_with('=') || chars.peek() == Some(&'=');
                if !joins && !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn unquote(value: &str) -> String {
    let inner = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

fn percent_decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Checks the server's certificate as `sslmode` says. Without a chain to check (`prefer`,
/// `require`) the session is encrypted and its handshake signed by the certificate's key,
/// but who holds the certificate is not checked (libpq's meaning of these modes; an active
/// man in the middle is not kept out). `verify-ca` checks the chain and not the name
/// (webpki checks the chain before the name, so a name error means the chain was good);
/// `verify-full` both. Handshake signatures are checked with the provider's algorithms
/// either way, as webpki's own verifier does.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// The chain's verifier, and whether the name is checked too.
    chain: Option<(Arc<WebPkiServerVerifier>, bool)>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((webpki, check_name)) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_leave_the_url_and_the_driver_gets_a_mode_it_knows() {
        let (rest, taken) = take_tls_params(
            "postgres://u:p@db:5432/fleet?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/fleet?application_name=x");
        assert_eq!(
            taken,
            [
                ("sslmode".into(), "verify-full".into()),
                ("sslrootcert".into(), "/etc/ca.pem".into())
            ]
        );
        assert_eq!(
            with_param(&rest, "sslmode", SslMode::VerifyFull.driver()),
            "postgres://u:p@db:5432/fleet?application_name=x&sslmode=require"
        );

        let (rest, taken) = take_tls_params(
            "host=db user=u sslmode = verify-ca sslrootcert='/a dir/ca.pem' dbname=fleet",
        );
        assert_eq!(rest, "host=db user=u dbname=fleet");
        assert_eq!(
            taken,
            [
                ("sslmode".into(), "verify-ca".into()),
                ("sslrootcert".into(), "/a dir/ca.pem".into())
            ]
        );
    }

    #[test]
    fn modes_parse_as_libpq_reads_them_and_errors_say_what_to_fix() {
        let t = target("postgres://u@db/fleet").map(|t| t.mode);
        assert_eq!(t, Ok(SslMode::Prefer));
        let t = target("postgres://u@db/fleet?sslmode=disable").map(|t| t.mode);
        assert_eq!(t, Ok(SslMode::Disable));
        let t = target("postgres://u@db/fleet?sslmode=verify-fully").map(|t| t.mode);
        assert!(matches!(&t, Err(e) if e.contains("verify-full")), "{t:?}");
        let t = target("postgres://u@db/fleet?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        assert!(matches!(&t, Err(e) if e.contains("/nonexistent/ca.pem")), "{t:?}");
        let t = target("postgres://u@db/fleet?sslcert=/c.pem").map(|t| t.mode);
        assert!(matches!(&t, Err(e) if e.contains("client certificates")), "{t:?}");
    }
}
