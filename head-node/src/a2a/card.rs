//! Agent cards: the cluster's at `/.well-known/agent-card.json` (its agents as skills) and
//! each agent's at `/a2a/{agent}/.well-known/agent-card.json`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::A2a;
use crate::cluster::AgentInfo;

/// How long clients may reuse a card before asking again (then cheaply: 304 when its ETag
/// still matches). Short, because registering an agent again changes its card.
const CARD_MAX_AGE_S: u32 = 60;

/// A card as JSON with an ETag (a hash of the body) and caching headers; 304 without a
/// body when the client's `If-None-Match` names the current ETag. Cards name the host the
/// client used and fit its A2A version, hence `Vary: Host, X-Forwarded-Proto, A2A-Version`.
/// `Last-Modified` is when the newest agent on the card was last registered or changed
/// (or restored at the head's start). It is informational: `If-Modified-Since` alone gets
/// the card, since what a card shows also changes with the reader's host and version.
fn card_response(
    card: &Value,
    headers: &HeaderMap,
    modified: Option<std::time::SystemTime>,
) -> Response {
    use axum::http::{HeaderValue, header};
    use std::hash::{DefaultHasher, Hash, Hasher};
    let body = card.to_string();
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(cache) = HeaderValue::from_str(&format!("public, max-age={CARD_MAX_AGE_S}")) {
        headers.insert(header::CACHE_CONTROL, cache);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Host, X-Forwarded-Proto, A2A-Version"));
    if let Some(modified) = modified
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
    {
        headers.insert(header::LAST_MODIFIED, date);
    }
    response
}

/// `scheme://host:port` as the client reached us (cards carry absolute URLs): `https` when
/// the head serves TLS or a TLS-terminating proxy in front says so (`X-Forwarded-Proto`).
pub fn base_url(a2a: &A2a, headers: &HeaderMap) -> String {
    let host =
        headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let proxied_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let scheme = if a2a.tls || proxied_tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn skill(agent: &AgentInfo) -> Value {
    let spec = &agent.spec;
    json!({
        "id": spec.name,
        "name": spec.name,
        "description": agent.description(),
        "tags": [spec.model],
        "examples": [],
    })
}

/// The fields only A2A 0.3 readers know. A 1.0 card must not carry them (the 1.0 schema
/// refuses unknown fields), so they are served only to readers without `A2A-Version: 1.x`,
/// which the spec says to treat as 0.3.
pub(crate) const V03_ONLY: &[&str] = &[
    "url",
    "preferredTransport",
    "protocolVersion",
    "supportsAuthenticatedExtendedCard",
    "security",
];

/// Shapes a card for its reader: a 1.0 reader gets a pure 1.0 card.
fn for_reader(mut card: Value, headers: &HeaderMap) -> Value {
    let v1 = headers
        .get("a2a-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1" || v.trim().starts_with("1."));
    if v1 && let Some(fields) = card.as_object_mut() {
        for key in V03_ONLY {
            fields.remove(*key);
        }
    }
    card
}

fn security(a2a: &A2a, card: &mut Value) {
    if a2a.clients.required() {
        card["securitySchemes"] = json!({"apiKey": {"httpAuthSecurityScheme": {"scheme": "Bearer", "description": "the head's client token or API key"}}});
        card["securityRequirements"] = json!([{"schemes": {"apiKey": {"list": []}}}]);
        // 0.3 readers.
        card["security"] = json!([{"apiKey": []}]);
    }
}

/// What an agent takes: a model reads text (text files too, in its prompt); a Python
/// agent's code, or a model's tool that takes files, takes files of any type.
fn input_modes(a2a: &A2a, spec: &fleet_proto::AgentSpec) -> Value {
    if a2a.cluster.takes_files(&spec.name) {
        json!(["text/plain", "application/json", "*/*"])
    } else {
        json!(["text/plain", "application/json", "text/*"])
    }
}

/// What an agent answers: text (data under an output schema); a Python agent's code may
/// also return files.
fn output_modes(spec: &fleet_proto::AgentSpec) -> Value {
    if spec.model.starts_with(fleet_proto::PYTHON_PREFIX) {
        json!(["text/plain", "application/json", "*/*"])
    } else {
        json!(["text/plain", "application/json"])
    }
}

/// The card of one agent of the head at `base` (`scheme://host:port`): the JSON bindings
/// under `/a2a/{agent}`, the gRPC binding at `base` with the agent as its tenant.
pub fn agent_card_json(a2a: &A2a, agent: &AgentInfo, base: &str) -> Value {
    let spec = &agent.spec;
    let url = &format!("{base}/a2a/{}", spec.name);
    let description = if spec.description.is_empty() {
        format!("agentfleet agent {} ({})", spec.name, spec.model)
    } else {
        spec.description.clone()
    };
    let mut card = json!({
        "name": spec.name,
        "description": description,
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": base, "protocolBinding": "GRPC", "tenant": spec.name, "protocolVersion": "1.0"},
        ],
        "provider": {"organization": "agentfleet", "url": "https://github.com/agentfleet"},
        "capabilities": {"streaming": true, "pushNotifications": true, "extendedAgentCard": a2a.clients.required()},
        "defaultInputModes": input_modes(a2a, spec),
        "defaultOutputModes": output_modes(spec),
        "skills": [skill(agent)],
        "supportsAuthenticatedExtendedCard": a2a.clients.required(),
        // A2A 0.3 fields, for older clients.
        "url": url,
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
    });
    security(a2a, &mut card);
    card
}

/// The agents a card's reader sees: with a client credential, those its principal may run
/// (on a head without credentials, every one); without, the agents marked public.
fn readable(a2a: &A2a, headers: &HeaderMap) -> Vec<AgentInfo> {
    match a2a.clients.resolve_http(headers) {
        Some(who) => a2a.cluster.agents(&who),
        None => a2a.cluster.public_agents(),
    }
}

fn find(a2a: &A2a, agent: &str, headers: &HeaderMap) -> Result<AgentInfo, Box<Response>> {
    let found = match a2a.clients.resolve_http(headers) {
        Some(who) => a2a.cluster.agent(&who, agent),
        // Without a key: shared agents' own cards (an A2A client reads the card before it
        // calls, and learns from it that a key is needed) and public agents'; a tenant's
        // other agents are not there for strangers.
        None => {
            a2a.cluster.agent(&a2a.who, agent).filter(|a| a.spec.public || a.spec.tenant.is_empty())
        }
    };
    found.ok_or_else(|| {
        let message = format!("no agent named {agent:?} on this cluster");
        let body = json!({"error": {"code": 404, "status": "NOT_FOUND", "message": message}});
        Box::new((StatusCode::NOT_FOUND, Json(body)).into_response())
    })
}

/// An agent's card as served: with `only_v03`, without the 1.0 interfaces.
fn serve_card(a2a: &A2a, agent: &str, headers: &HeaderMap, only_v03: bool) -> Response {
    let info = match find(a2a, agent, headers) {
        Ok(info) => info,
        Err(response) => return *response,
    };
    let mut card = agent_card_json(a2a, &info, &base_url(a2a, headers));
    if only_v03 && let Some(obj) = card.as_object_mut() {
        // Not signed: a signature covers the 1.0 card, which this one is not.
        obj.remove("supportedInterfaces");
    } else {
        card = for_reader(card, headers);
        sign(a2a, &mut card, headers);
    }
    card_response(&card, headers, Some(info.changed_at))
}

pub async fn agent_card(
    State(a2a): State<A2a>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_card(&a2a, &agent, &headers, false)
}

/// The same agent's card in A2A 0.3 form only (no `supportedInterfaces`), for clients that
/// should speak 0.3 to the same JSON-RPC endpoint.
pub async fn agent_card_v03(
    State(a2a): State<A2a>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_card(&a2a, &agent, &headers, true)
}

/// The cluster's card: one skill per agent, each agent's own card URL in its skill tags. The
/// head's `model:` agents are not listed: they serve models named in OpenAI requests, and
/// their names are the requests' choice.
pub async fn cluster_card(State(a2a): State<A2a>, headers: HeaderMap) -> Response {
    let base = base_url(&a2a, &headers);
    let mut agents = readable(&a2a, &headers);
    agents.retain(|a| !a.spec.name.starts_with(crate::agents::MODEL_AGENT_PREFIX));
    let skills: Vec<Value> = agents
        .iter()
        .map(|a| {
            let mut s = skill(a);
            if let Some(tags) = s["tags"].as_array_mut() {
                tags.push(json!(format!("{base}/a2a/{}", a.spec.name)));
            }
            s
        })
        .collect();
    let first = agents.first().map(|a| a.spec.name.clone());
    let url = match &first {
        Some(name) => format!("{base}/a2a/{name}"),
        None => format!("{base}/a2a"),
    };
    let mut interfaces =
        vec![json!({"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"})];
    if let Some(name) = &first {
        interfaces.push(json!({"url": base, "protocolBinding": "GRPC", "tenant": name, "protocolVersion": "1.0"}));
    }
    let mut card = json!({
        "name": "agentfleet",
        "description": "an agentfleet cluster: each skill is an agent, reachable at /a2a/{agent}",
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": interfaces,
        "capabilities": {"streaming": true, "pushNotifications": true, "extendedAgentCard": false},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain"],
        "skills": skills,
        "url": url,
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
    });
    security(&a2a, &mut card);
    let mut card = for_reader(card, &headers);
    sign(&a2a, &mut card, &headers);
    card_response(&card, &headers, agents.iter().map(|a| a.changed_at).max())
}

/// Adds the operator's signature to a card (its 1.0 fields; a 0.3 reader's card carries
/// more, which 1.0 clients drop before they check). A card that cannot be signed goes out
/// unsigned, and the log says why.
fn sign(a2a: &A2a, card: &mut Value, headers: &HeaderMap) {
    let Some(signer) = &a2a.signer else { return };
    let jku = format!("{}/.well-known/jwks.json", base_url(a2a, headers));
    match signer.sign(card, &jku) {
        Ok(signature) => card["signatures"] = json!([signature]),
        Err(e) => tracing::warn!(error = %e, "an agent card went out unsigned"),
    }
}

/// `/.well-known/jwks.json`: the public key that signs cards (404 when cards are not signed).
pub async fn jwks(State(a2a): State<A2a>) -> Response {
    match &a2a.signer {
        Some(signer) => Json(signer.jwks()).into_response(),
        None => {
            let message = "this head does not sign agent cards (fleet-head --card-signing-key)";
            let body = json!({"error": {"code": 404, "status": "NOT_FOUND", "message": message}});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// The extended card, for clients that presented the API key: the public card plus what the
/// agent is built from (model, instructions, retry policy). Without an API key configured
/// there is no authenticated audience, so there is no extended card either.
pub fn extended_card_json(
    a2a: &A2a,
    agent: &str,
    headers: &HeaderMap,
) -> Result<Value, super::errors::A2aError> {
    if !a2a.clients.required() {
        return Err(super::errors::A2aError::extended_card_not_configured());
    }
    let info = find(a2a, agent, headers).map_err(|_| {
        super::errors::A2aError::invalid_request(format!("no agent named {agent:?}"))
    })?;
    let mut card = agent_card_json(a2a, &info, &base_url(a2a, headers));
    let spec = &info.spec;
    card["skills"][0]["description"] = json!(format!(
        "{}; model {}; max_retries {}; instructions: {}",
        card["skills"][0]["description"].as_str().unwrap_or_default(),
        spec.model,
        spec.max_retries,
        spec.instructions.chars().take(500).collect::<String>()
    ));
    let mut card = for_reader(card, headers);
    sign(a2a, &mut card, headers);
    Ok(card)
}
