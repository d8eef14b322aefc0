//! The cluster token check shared by every gRPC service (and later the HTTP APIs).

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
}
