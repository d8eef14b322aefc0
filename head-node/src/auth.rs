//! Who may come in: one client credential check shared by every front door (the gRPC client
//! API, A2A, the OpenAI API) and a separate join token for workers, so that a client's
//! credential can never register a worker (which would receive task inputs and join every
//! worker's mesh allow list).

use std::sync::Arc;

use fleet_proto::TOKEN_METADATA_KEY;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tracing::warn;

use crate::config::HeadConfig;

/// Which kind of caller a check admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Clients: gRPC `FleetService`, A2A and the OpenAI API; `--token` or `--api-key`.
    Client,
    /// Workers joining over `WorkerService`; `--join-token`.
    Worker,
}

/// The secrets one kind of caller may present; with none configured everyone passes.
#[derive(Clone, Debug)]
pub struct Credentials {
    caller: Caller,
    secrets: Arc<[Box<str>]>,
}

impl Credentials {
    /// Client credentials: the cluster token and the API key, each accepted at every door.
    pub fn clients(config: &HeadConfig) -> Self {
        let secrets = [&config.token, &config.api_key].into_iter().flatten();
        Self::new(Caller::Client, secrets.map(|s| s.as_str().into()).collect())
    }

    /// The join token workers present.
    pub fn workers(config: &HeadConfig) -> Self {
        let secrets = config.join_token.iter().map(|s| s.as_str().into()).collect();
        Self::new(Caller::Worker, secrets)
    }

    fn new(caller: Caller, secrets: Arc<[Box<str>]>) -> Self {
        Self { caller, secrets }
    }

    /// Whether any credential is configured (else every caller passes).
    pub fn required(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Whether `given` is one of the secrets. Every secret is compared, in constant time, so
    /// that timing tells neither which secret nor how much of it matched.
    pub fn accepts(&self, given: Option<&[u8]>) -> bool {
        if !self.required() {
            return true;
        }
        let Some(given) = given else { return false };
        self.secrets.iter().fold(false, |found, s| found | bool::from(s.as_bytes().ct_eq(given)))
    }

    /// Whether HTTP headers carry a credential: `Authorization: Bearer SECRET` or
    /// `X-API-Key: SECRET`.
    pub fn accepts_http(&self, headers: &axum::http::HeaderMap) -> bool {
        if !self.required() {
            return true;
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let x_api_key = headers.get("x-api-key").map(|v| v.as_bytes());
        [bearer, x_api_key].into_iter().flatten().any(|given| self.accepts(Some(given)))
    }

    /// Logs a refused HTTP request (the door and path; never what was presented).
    pub fn log_refused_http(&self, door: &str, path: &str, headers: &axum::http::HeaderMap) {
        warn!(
            door,
            path,
            credential_present = headers.contains_key(axum::http::header::AUTHORIZATION)
                || headers.contains_key("x-api-key"),
            "refused a request without a client credential"
        );
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if self.accepts(presented) {
            return Ok(request);
        }
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let message = match self.caller {
            Caller::Client => {
                warn!(
                    peer,
                    token_present = presented.is_some(),
                    "refused a client without a credential"
                );
                "missing or wrong client token: pass the head's --token (FLEET_TOKEN)"
            }
            Caller::Worker => {
                warn!(
                    peer,
                    token_present = presented.is_some(),
                    "refused a worker without the join token"
                );
                "missing or wrong join token: start the worker with the head's --join-token \
                 (FLEET_JOIN_TOKEN); a client's token cannot join as a worker"
            }
        };
        Err(Status::unauthenticated(message))
    }
}

/// A fresh secret for clusters that make their own (embedded ones): 244 random bits from a
/// cryptographic generator, as 64 hex digits.
pub fn random_token() -> String {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    format!("{}{}", a.simple(), b.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: Option<&str>, api_key: Option<&str>, join: Option<&str>) -> HeadConfig {
        HeadConfig {
            token: token.map(Into::into),
            api_key: api_key.map(Into::into),
            join_token: join.map(Into::into),
            ..HeadConfig::default()
        }
    }

    #[test]
    fn only_an_exact_secret_passes() {
        let clients = Credentials::clients(&config(Some("s3cret"), Some("k3y"), Some("j0in")));
        assert!(clients.accepts(Some(b"s3cret")));
        assert!(clients.accepts(Some(b"k3y")));
        assert!(!clients.accepts(Some(b"s3cre")));
        assert!(!clients.accepts(Some(b"j0in")), "the join token is not a client credential");
        assert!(!clients.accepts(None));
        let workers = Credentials::workers(&config(Some("s3cret"), None, Some("j0in")));
        assert!(workers.accepts(Some(b"j0in")));
        assert!(!workers.accepts(Some(b"s3cret")), "a client token must not join a worker");
        assert!(Credentials::clients(&HeadConfig::default()).accepts(None));
    }

    #[test]
    fn http_callers_present_bearer_or_x_api_key() {
        use axum::http::{HeaderMap, HeaderValue};
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        let clients = Credentials::clients(&config(Some("t"), Some("k"), Some("j")));
        assert!(clients.accepts_http(&with("authorization", "Bearer k")));
        assert!(clients.accepts_http(&with("authorization", "Bearer t")));
        assert!(clients.accepts_http(&with("x-api-key", "k")));
        assert!(!clients.accepts_http(&with("authorization", "Bearer x")));
        assert!(!clients.accepts_http(&with("authorization", "k")));
        assert!(!clients.accepts_http(&with("authorization", "Bearer j")));
        assert!(!clients.accepts_http(&HeaderMap::new()));
        assert!(Credentials::clients(&HeadConfig::default()).accepts_http(&HeaderMap::new()));
    }
}
