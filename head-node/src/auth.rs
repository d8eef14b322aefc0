//! The cluster token check shared by every gRPC service, and the API key check of the HTTP
//! APIs (A2A, OpenAI).

use std::sync::Arc;

use fleet_proto::TOKEN_METADATA_KEY;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tracing::warn;

/// Rejects requests without the configured cluster token; accepts all when none is set.
#[derive(Clone, Debug)]
pub struct TokenCheck {
    expected: Option<Arc<str>>,
}

impl TokenCheck {
    pub fn new(token: Option<&str>) -> Self {
        Self { expected: token.map(|t| Arc::from(format!("Bearer {t}"))) }
    }

    /// Whether `presented` (the full header value) carries the token.
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match (&self.expected, presented) {
            (None, _) => true,
            (Some(expected), Some(got)) => bool::from(expected.as_bytes().ct_eq(got)),
            (Some(_), None) => false,
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get(TOKEN_METADATA_KEY).map(|v| v.as_bytes());
        if self.accepts(presented) {
            return Ok(request);
        }
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        warn!(
            peer,
            token_present = presented.is_some(),
            "rejected a request without the cluster token"
        );
        Err(Status::unauthenticated(
            "missing or wrong cluster token: pass the head's token (--token or FLEET_TOKEN)",
        ))
    }
}

/// Whether HTTP request headers carry the API key (`Authorization: Bearer KEY` or
/// `X-API-Key: KEY`); every request passes when no key is set.
pub fn api_key_accepted(api_key: Option<&str>, headers: &axum::http::HeaderMap) -> bool {
    let Some(key) = api_key else { return true };
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    [bearer, x_api_key]
        .into_iter()
        .flatten()
        .any(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let check = TokenCheck::new(Some("s3cret"));
        assert!(check.accepts(Some(b"Bearer s3cret")));
        assert!(!check.accepts(Some(b"Bearer s3cre")));
        assert!(!check.accepts(Some(b"s3cret")));
        assert!(!check.accepts(None));
        assert!(TokenCheck::new(None).accepts(None));
    }

    #[test]
    fn the_api_key_comes_as_bearer_or_x_api_key() {
        use axum::http::{HeaderMap, HeaderValue};
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        assert!(api_key_accepted(Some("k"), &with("authorization", "Bearer k")));
        assert!(api_key_accepted(Some("k"), &with("x-api-key", "k")));
        assert!(!api_key_accepted(Some("k"), &with("authorization", "Bearer x")));
        assert!(!api_key_accepted(Some("k"), &HeaderMap::new()));
        assert!(api_key_accepted(None, &HeaderMap::new()));
    }
}
