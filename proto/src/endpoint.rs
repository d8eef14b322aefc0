//! The one way to reach a head over the network, shared by the SDK and workers: `http://`
//! in clear, or `https://` verified against the system's roots, or only against the CA
//! certificates in a PEM file when one is given (as curl's `--cacert` does).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Why a head address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid head address {0:?}: expected e.g. http://10.0.0.1:7070 or https://head:7070")]
    InvalidUrl(String),
    #[error("cannot read the CA file {}: {source}", path.display())]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("a CA file is for https:// heads; {0:?} is not one (use https:// or drop the CA)")]
    CaWithoutTls(String),
    #[error("cannot set up TLS for {url}: {message}")]
    Tls { url: String, message: String },
}

/// An endpoint for the head at `url` with the settings every connection to a head wants:
/// no Nagle delay, and flow-control windows sized for streams of many small events.
pub fn head_endpoint(url: &str, tls_ca: Option<&Path>) -> Result<Endpoint, EndpointError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|_| EndpointError::InvalidUrl(url.to_owned()))?
        .tcp_nodelay(true)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(4 << 20);
    let https = endpoint.uri().scheme_str() == Some("https");
    let tls = match (https, tls_ca) {
        (false, None) => return Ok(endpoint),
        (false, Some(_)) => return Err(EndpointError::CaWithoutTls(url.to_owned())),
        (true, None) => ClientTlsConfig::new().with_native_roots(),
        (true, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|source| EndpointError::CaFile { path: path.to_owned(), source })?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
    };
    endpoint
        .tls_config(tls)
        .map_err(|e| EndpointError::Tls { url: url.to_owned(), message: e.to_string() })
}

/// An error with its causes, `outer: inner: ...`: tonic's transport errors say only
/// "transport error" and keep what happened (refused, unknown CA, ...) in their sources.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_addresses() {
        assert!(head_endpoint("http://127.0.0.1:7070", None).is_ok());
        assert!(matches!(head_endpoint("not a url", None), Err(EndpointError::InvalidUrl(_))));
        let ca = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            head_endpoint("http://127.0.0.1:7070", Some(ca)),
            Err(EndpointError::CaWithoutTls(_))
        ));
        let missing = head_endpoint("https://127.0.0.1:7070", Some(ca));
        assert!(matches!(missing, Err(EndpointError::CaFile { .. })), "{missing:?}");
    }
}
