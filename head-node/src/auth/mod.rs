//! Who may come in, and as whom: one layer every front door goes through. Clients present
//! a key (gRPC metadata, `Authorization: Bearer`, `X-API-Key`); [`Principals`] resolves it
//! to a [`Principal`] that the request carries in its extensions, and every operation on
//! the cluster is done as that principal (tenants and roles are checked there, at the
//! resources). Workers present a separate join token ([`JoinToken`]), so that a client's
//! key can never register a worker (which would receive task inputs and join every
//! worker's mesh allow list). Refusals are errors of the one table, rendered by each door.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleet_proto::TOKEN_METADATA_KEY;
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::Error;
use crate::config::HeadConfig;

mod principal;

pub use principal::{
    DEFAULT_TENANT, Principal, PrincipalKey, PrincipalTable, Principals, Role, key_sha256,
};

impl Principals {
    /// The head's client credentials: `--token` and `--api-key` (admins of the default
    /// tenant) and the config file's `[[principal]]` keys.
    pub fn of(config: &HeadConfig) -> Self {
        let secrets = [&config.token, &config.api_key].into_iter().flatten();
        Self::new(secrets.map(|s| s.as_str().into()).collect(), config.principals.clone())
    }
}

/// What to say to a client that presented no valid key.
pub fn unauthenticated() -> Error {
    Error::Unauthenticated(
        "missing or wrong client token: send the credential as Authorization: Bearer KEY \
         (or X-API-Key: KEY; the gRPC metadata authorization), KEY being the head's --token \
         or --api-key (env FLEET_TOKEN for clients) or the key of one of its [[principal]]s"
            .into(),
    )
}

/// The principal a request carries (put there by the auth layer); a request that somehow
/// has none is the least trusted caller there is: refused.
pub fn principal_of(extensions: &axum::http::Extensions) -> Result<Principal, Error> {
    extensions.get::<Principal>().cloned().ok_or_else(unauthenticated)
}

/// How one HTTP door renders a refusal (each speaks its protocol's error shape; the codes
/// come from the one table).
pub type Render = fn(Error) -> Response;

/// The auth layer of an HTTP door: resolves the request's principal into its extensions,
/// or refuses it with `render`.
#[derive(Clone)]
pub struct HttpAuth {
    pub principals: Principals,
    pub door: &'static str,
    pub render: Render,
}

/// `axum::middleware::from_fn_with_state(HttpAuth { .. }, auth::http)`.
pub async fn http(State(auth): State<HttpAuth>, mut request: Request, next: Next) -> Response {
    match auth.principals.resolve_http(request.headers()) {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => {
            let headers = request.headers();
            warn!(
                door = auth.door,
                path = request.uri().path(),
                credential_present = headers.contains_key(axum::http::header::AUTHORIZATION)
                    || headers.contains_key("x-api-key"),
                "refused a request without a client credential"
            );
            let mut response = (auth.render)(unauthenticated());
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// A door's handler state that acts as a principal: [`Caller`] gives handlers the state
/// acting as the request's.
pub trait ActsAs: Clone + Send + Sync + 'static {
    fn acting_as(&self, who: Principal) -> Self;
}

/// Handler state acting as the request's principal, which the auth layer resolved.
pub struct Caller<S>(pub S);

impl<S: ActsAs> axum::extract::FromRequestParts<S> for Caller<S> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match parts.extensions.get::<Principal>() {
            Some(who) => Ok(Self(state.acting_as(who.clone()))),
            // A route outside the auth layer: a bug of ours, refused rather than trusted.
            None => Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        }
    }
}

/// The gRPC client API's auth layer: the principal goes into the request's extensions.
impl tonic::service::Interceptor for Principals {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match self.resolve(presented) {
            Some(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            None => {
                let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
                warn!(
                    peer,
                    token_present = presented.is_some(),
                    "refused a client without a credential"
                );
                Err(unauthenticated().into())
            }
        }
    }
}

/// The join token workers present; with none configured every worker may join.
#[derive(Clone, Debug)]
pub struct JoinToken {
    secret: Option<Arc<str>>,
}

impl JoinToken {
    pub fn of(config: &HeadConfig) -> Self {
        Self { secret: config.join_token.as_deref().map(Into::into) }
    }

    /// Whether `given` is the join token, compared in constant time.
    pub fn accepts(&self, given: Option<&[u8]>) -> bool {
        match (&self.secret, given) {
            (None, _) => true,
            (Some(secret), Some(given)) => secret.as_bytes().ct_eq(given).into(),
            (Some(_), None) => false,
        }
    }
}

impl tonic::service::Interceptor for JoinToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if self.accepts(presented) {
            return Ok(request);
        }
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        warn!(peer, token_present = presented.is_some(), "refused a worker without the join token");
        Err(tonic::Status::unauthenticated(
            "missing or wrong join token: start the worker with the head's --join-token \
             (FLEET_JOIN_TOKEN); a client's key cannot join as a worker",
        ))
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
        let clients = Principals::of(&config(Some("s3cret"), Some("k3y"), Some("j0in")));
        assert!(clients.resolve(Some(b"s3cret")).is_some());
        assert!(clients.resolve(Some(b"k3y")).is_some());
        assert!(clients.resolve(Some(b"s3cre")).is_none());
        assert!(clients.resolve(Some(b"j0in")).is_none(), "the join token is not a client key");
        assert!(clients.resolve(None).is_none());
        let workers = JoinToken::of(&config(Some("s3cret"), None, Some("j0in")));
        assert!(workers.accepts(Some(b"j0in")));
        assert!(!workers.accepts(Some(b"s3cret")), "a client token must not join a worker");
        assert!(Principals::of(&HeadConfig::default()).resolve(None).is_some());
    }

    #[test]
    fn http_callers_present_bearer_or_x_api_key() {
        use axum::http::{HeaderMap, HeaderValue};
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        let clients = Principals::of(&config(Some("t"), Some("k"), Some("j")));
        assert!(clients.resolve_http(&with("authorization", "Bearer k")).is_some());
        assert!(clients.resolve_http(&with("authorization", "Bearer t")).is_some());
        assert!(clients.resolve_http(&with("x-api-key", "k")).is_some());
        assert!(clients.resolve_http(&with("authorization", "Bearer x")).is_none());
        assert!(clients.resolve_http(&with("authorization", "k")).is_none());
        assert!(clients.resolve_http(&with("authorization", "Bearer j")).is_none());
        assert!(clients.resolve_http(&HeaderMap::new()).is_none());
        assert!(Principals::of(&HeadConfig::default()).resolve_http(&HeaderMap::new()).is_some());
    }
}
