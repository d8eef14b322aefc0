//! What the HTTP doors refuse from web browsers before any handler runs.
//!
//! A web page the user opens can send requests to any address the user's machine reaches,
//! a head on `127.0.0.1` or on the office network included. A "simple" cross-site request
//! (a form's POST, or `fetch` with a `text/plain` body) goes out without a CORS preflight,
//! so the page could run tasks, or read answers after re-pointing its own name at the head's
//! address (DNS rebinding). Three checks close that, at every HTTP door (A2A, OpenAI, MCP,
//! the inspector, `/metrics`):
//!
//! - **Origin**: a request that carries `Origin` (browsers send it on every cross-site
//!   request and every POST) must come from the head's own origin or one the operator
//!   allowed (`--allowed-origin`); allowed origins get CORS answers, preflights included;
//! - **Host**, when the head listens on loopback: the name the browser asked for must be a
//!   loopback name or address (or `--allowed-host`), since a rebinding page asks for its own;
//! - **JSON only**: the doors that read JSON bodies take only JSON content types
//!   ([`is_json`]; each door answers in its protocol's shape: 415, A2A's -32005).
//!
//! Clients that are not browsers send no `Origin` and a `Host` of the address they dial, and
//! pass untouched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::HeadConfig;

/// The request headers a cross-origin page may send, named in preflight answers.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, a2a-version, a2a-extensions, mcp-protocol-version, \
     mcp-session-id, last-event-id, traceparent, tracestate";

/// What the checks compare against: the head's scheme, the origins and host names the
/// operator allowed, and whether it listens on loopback.
#[derive(Clone, Debug)]
pub struct Browsers {
    scheme: &'static str,
    allowed_origins: Arc<[Origin]>,
    allowed_hosts: Arc<[String]>,
    loopback: bool,
}

/// An origin as compared: scheme, lowercase host without a trailing dot, port (the scheme's
/// default when none is written).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(text: &str) -> Option<Self> {
        let url = url::Url::parse(text).ok()?;
        let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
        Some(Self { scheme: url.scheme().to_owned(), host, port: url.port_or_known_default() })
    }
}

impl Browsers {
    /// The checks for a head configured by `config` (listening where `config.listen` says);
    /// fails on an `--allowed-origin` that is not an origin URL.
    pub fn new(config: &HeadConfig) -> crate::Result<Self> {
        let allowed_origins = config
            .allowed_origins
            .iter()
            .map(|text| {
                Origin::parse(text).ok_or_else(|| {
                    crate::Error::InvalidConfig(format!(
                        "--allowed-origin {text:?} is not an origin: write it as a browser \
                         sends it, e.g. https://app.example.com or http://localhost:3000"
                    ))
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let advertised = config.advertise.as_deref().and_then(Origin::parse).map(|o| o.host);
        let allowed_hosts = config
            .allowed_hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .chain(advertised)
            .collect::<Vec<_>>();
        Ok(Self {
            scheme: if config.tls_cert.is_some() { "https" } else { "http" },
            allowed_origins: allowed_origins.into(),
            allowed_hosts: allowed_hosts.into(),
            loopback: config.listen.ip().is_loopback(),
        })
    }

    /// The name and port the request was sent to (`:authority` over HTTP/2, else `Host`).
    fn authority<B>(request: &axum::http::Request<B>) -> Option<(String, Option<u16>)> {
        let text = match request.uri().authority() {
            Some(authority) => authority.as_str().to_owned(),
            None => request.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
        };
        let authority: axum::http::uri::Authority = text.parse().ok()?;
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        Some((host, authority.port_u16()))
    }

    /// Why `host` is refused on a loopback listener, if it is.
    fn refused_host(&self, host: &str) -> Option<String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => bare == "localhost" || bare.ends_with(".localhost"),
        };
        if loopback || self.allowed_hosts.iter().any(|h| h == bare) {
            return None;
        }
        Some(format!(
            "Host {host:?} is not a name of this head: it listens on loopback, where a request \
             for another name is a web page that re-pointed its own name here (DNS \
             rebinding); if the name is yours, start the head with --allowed-host {bare}"
        ))
    }

    /// Whether `origin` is the head's own (the scheme it serves, the host and port the
    /// request was sent to).
    fn same_origin(&self, origin: &Origin, authority: Option<&(String, Option<u16>)>) -> bool {
        let Some((host, port)) = authority else { return false };
        let default = if self.scheme == "https" { 443 } else { 80 };
        origin.scheme == self.scheme
            && origin.host == *host
            && origin.port == Some(port.unwrap_or(default))
    }
}

/// What [`Browsers::judge`] decides for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same-origin, or not from a browser: on to the handler.
    Pass,
    /// Refused, saying why.
    Refuse(String),
    /// From an allowed origin: answered with CORS headers naming `origin` (a preflight is
    /// answered here, without the handler).
    Cors { origin: String, preflight: bool },
}

impl Browsers {
    /// The checks of the module docs on one request (its method, URI and headers).
    pub fn judge<B>(&self, request: &axum::http::Request<B>) -> Verdict {
        let authority = Self::authority(request);
        if self.loopback
            && let Some((host, _)) = &authority
            && let Some(why) = self.refused_host(host)
        {
            return Verdict::Refuse(why);
        }
        let Some(sent) = request.headers().get(header::ORIGIN) else {
            return Verdict::Pass;
        };
        let text = sent.to_str().unwrap_or_default().to_owned();
        let origin = Origin::parse(&text);
        if origin.as_ref().is_some_and(|o| self.same_origin(o, authority.as_ref())) {
            return Verdict::Pass;
        }
        if !origin.is_some_and(|o| self.allowed_origins.contains(&o)) {
            return Verdict::Refuse(format!(
                "requests from web pages at {text:?} are refused: the head serves pages of its \
                 own origin and those its operator allows (--allowed-origin {text})"
            ));
        }
        let preflight = request.method() == Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        Verdict::Cors { origin: text, preflight }
    }
}

/// The middleware: refuses what [`Browsers::judge`] refuses, answers allowed origins'
/// preflights, and adds CORS headers to their answers.
pub async fn guard(State(browsers): State<Browsers>, request: Request, next: Next) -> Response {
    let (origin, preflight) = match browsers.judge(&request) {
        Verdict::Pass => return next.run(request).await,
        Verdict::Refuse(why) => return refuse(&request, why),
        Verdict::Cors { origin, preflight } => (origin, preflight),
    };
    let mut response = if preflight {
        let mut answer = StatusCode::NO_CONTENT.into_response();
        let h = answer.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        answer
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, sent_origin(&origin));
    h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

fn sent_origin(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("null"))
}

/// A 403 saying why, logged with the path (never the request's credentials).
fn refuse(request: &Request, why: String) -> Response {
    tracing::warn!(path = request.uri().path(), reason = %why, "refused a browser's request");
    let body = serde_json::json!({
        "error": { "code": 403, "status": "PERMISSION_DENIED", "message": why }
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// Whether the request's body is declared JSON: `application/json` or a `+json` type
/// (`application/a2a+json`), parameters (`; charset=utf-8`) aside.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// What a JSON door says to a body that is not declared JSON.
pub fn not_json_message(headers: &HeaderMap) -> String {
    let sent = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match sent {
        Some(sent) => format!(
            "the body's Content-Type is {sent:?}: send it as application/json (web pages' \
             form and text/plain posts are refused)"
        ),
        None => "the body has no Content-Type: send it as application/json".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types_are_json() {
        let with = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            h
        };
        for yes in ["application/json", "Application/JSON; charset=utf-8", "application/a2a+json"] {
            assert!(is_json(&with(yes)), "{yes}");
        }
        for no in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""] {
            assert!(!is_json(&with(no)), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn loopback_names_pass_and_others_need_allowing() -> crate::Result<()> {
        let config =
            HeadConfig { allowed_hosts: vec!["Fleet.Example.".into()], ..HeadConfig::default() };
        let browsers = Browsers::new(&config)?;
        for host in
            ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "app.localhost", "fleet.example"]
        {
            assert!(browsers.refused_host(host).is_none(), "{host} refused");
        }
        for host in ["evil.example", "10.0.0.1", "[::ffff:7f00:1]", "localhost.evil.example"] {
            let why = browsers.refused_host(host).unwrap_or_default();
            assert!(why.contains("--allowed-host"), "{host}: {why}");
        }
        let bad = HeadConfig { allowed_origins: vec!["not an origin".into()], ..config };
        assert!(Browsers::new(&bad).is_err());
        Ok(())
    }
}
