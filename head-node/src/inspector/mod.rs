//! The inspector: the cluster live in a browser, at `/ui` on the head's address (`/`
//! redirects there).
//!
//! The page is a small single-page app (`assets/`: plain HTML, CSS and JavaScript built
//! into the binary, so neither `cargo build` nor the page needs Node, a CDN or the
//! network). It reads JSON snapshots ([`views`]) and follows changes over server-sent
//! events ([`live`]): a task's page streams the task's event log as the cluster stores it
//! (resuming after `Last-Event-ID`); the cluster, agent and task lists are sent again when
//! they change, a few times a second at most, so an open page costs the head one snapshot
//! per tick and never a polling storm.
//!
//! The client credential guards it like every other door: `Authorization: Bearer` or
//! `X-API-Key`, or the `fleet_ui` cookie of a session `POST /ui/login` opens when the token
//! typed into the login page is right ([`sessions`]: a random id, 12 hours, ended by
//! logout; HttpOnly, SameSite=Strict, Secure over TLS). A POST must also carry
//! `X-Fleet-UI: 1`, which a form on another site cannot send.

mod live;
mod pictures;
mod sessions;
mod views;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, Principals};
use crate::cluster::Cluster;

/// The cookie the login page sets: a session's id.
const COOKIE: &str = "fleet_ui";
/// The header every POST of the page carries (see the module docs).
const CSRF_HEADER: &str = "x-fleet-ui";
/// Nothing from anywhere but the head; no inline script or style; no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
                   data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the inspector's handlers share.
#[derive(Clone)]
pub struct Inspector {
    pub cluster: Arc<Cluster>,
    pub clients: Principals,
    /// Who the request is from (a handler's state acts as the request's principal).
    pub who: Principal,
    /// Served over TLS: the cookie is `Secure`.
    pub tls: bool,
    /// Ends the live streams when the head stops (they would hold its shutdown open).
    pub shutdown: CancellationToken,
    /// Open logins and recent failed ones.
    pub sessions: sessions::Sessions,
    /// What the open pages' looks may still take of the head's time, all pages together.
    pub looks: live::Looks,
}

impl Inspector {
    /// Who the request is from: a client credential in a header, or the cookie's session.
    fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        self.clients
            .resolve_http(headers)
            .or_else(|| cookie(headers).and_then(|id| self.sessions.principal(&id)))
    }
}

impl crate::auth::ActsAs for Inspector {
    fn acting_as(&self, who: Principal) -> Self {
        Self { who, ..self.clone() }
    }
}

/// The inspector's state acting as the request's principal.
pub(crate) type Caller = crate::auth::Caller<Inspector>;

/// The session id in the `fleet_ui` cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The address a request came from, where the listener tells it.
fn peer(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref)
    });
    tcp.and_then(TcpConnectInfo::remote_addr).map(|a| a.ip())
}

/// The inspector's routes: the pages, their assets and `/ui/api/*`.
pub fn router(inspector: Inspector) -> Router {
    let api = Router::new()
        .route("/ui/api/cluster", get(views::cluster))
        .route("/ui/api/cluster/live", get(live::cluster))
        .route("/ui/api/agents", get(views::agents))
        .route("/ui/api/agents/live", get(live::agents))
        .route("/ui/api/tasks", get(views::tasks))
        .route("/ui/api/tasks/live", get(live::tasks))
        .route("/ui/api/tasks/{id}", get(views::task))
        .route("/ui/api/tasks/{id}/live", get(live::task))
        .route("/ui/api/tasks/{id}/cancel", post(views::cancel))
        .route("/ui/api/tasks/{id}/graph", get(pictures::graph))
        .route("/ui/api/timeline", get(pictures::timeline))
        .route("/ui/api/timeline/live", get(live::timeline))
        .route("/ui/api/charts", get(pictures::chart))
        .route("/ui/api/charts/live", get(live::charts))
        .route("/ui/api/topics", get(views::topics))
        .route("/ui/api/conversations", get(views::conversations))
        .route("/ui/api/conversations/{agent}/{context}", get(views::conversation))
        .route("/ui/api/topics/{name}/live", get(live::topic))
        .route_layer(axum::middleware::from_fn_with_state(inspector.clone(), guard_api));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        .merge(api)
        .with_state(inspector)
}

/// The credential on every `/ui/api` request, and the CSRF header on its POSTs.
async fn guard_api(State(ui): State<Inspector>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let Some(who) = ui.principal(headers) else {
        tracing::warn!(
            door = "inspector",
            path = request.uri().path(),
            "refused a request without a valid credential or session"
        );
        return error(StatusCode::UNAUTHORIZED, "log in at /ui/login, or send a client token");
    };
    let headers = request.headers();
    if request.method() == axum::http::Method::POST && !headers.contains_key(CSRF_HEADER) {
        return error(StatusCode::FORBIDDEN, "the inspector's POSTs carry X-Fleet-UI: 1");
    }
    request.extensions_mut().insert(who);
    let mut response = next.run(request).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON error body, `{"error": ...}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A request refused: its status and what to fix (small, unlike a `Response`).
pub(super) struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

impl From<crate::Error> for Refused {
    fn from(e: crate::Error) -> Self {
        Self(e.http_status(), e.to_string())
    }
}

/// An HTML page with the headers every page gets.
fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Not `no-referrer`: under it browsers send `Origin: null` with the page's own
            // form posts (the login), which `crate::browsers` refuses as any page's would be.
            // Same-origin requests say where they come from; others get nothing.
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The app; without a credential, the login page instead.
async fn index(State(ui): State<Inspector>, headers: HeaderMap) -> Response {
    if ui.principal(&headers).is_some() {
        page(INDEX_HTML)
    } else {
        Redirect::to("/ui/login").into_response()
    }
}

async fn login_page(State(ui): State<Inspector>) -> Response {
    if ui.clients.required() { page(LOGIN_HTML) } else { Redirect::to("/ui/").into_response() }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Takes the token typed into the login page: a right one opens a session, whose id is the
/// cookie. An address that sent too many wrong tokens this minute is refused (429).
async fn login(
    State(ui): State<Inspector>,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let from = peer(&extensions);
    if !ui.sessions.may_try(from) {
        tracing::warn!(door = "inspector", peer = ?from, "refused a login: too many wrong tokens");
        let mut refused = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens from this address: try again in a minute",
        );
        refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return refused;
    }
    let token = form.token.trim();
    let Some(who) = ui.clients.resolve(Some(token.as_bytes())) else {
        ui.sessions.failed(from);
        tracing::warn!(door = "inspector", peer = ?from, "refused a login with a wrong token");
        return Redirect::to("/ui/login?failed=1").into_response();
    };
    let secure = if ui.tls { "; Secure" } else { "" };
    let (id, ttl) = (ui.sessions.open(who), sessions::SESSION_TTL.as_secs());
    let cookie =
        format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response()
}

/// Ends the session (its id no longer admits anyone) and clears the cookie.
async fn logout(State(ui): State<Inspector>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        ui.sessions.close(&id);
    }
    let cookie = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}

/// The page's script and style (nothing secret: served without a credential, so that the
/// login page has its style).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return error(StatusCode::NOT_FOUND, "no such asset"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Built into the binary: a new head may serve new ones under the same name.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `?agent=&state=&worker=&context=&q=&after=&limit=` of the task lists: `q` is a search
/// ([`crate::tasks::TaskEntry::matches`]), `after` the number of the last task of the page
/// before (the `next_after` of its answer).
#[derive(Debug, Default, Deserialize)]
struct TaskQuery {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    worker: String,
    /// A conversation's context id (within the caller's tenant).
    #[serde(default)]
    context: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// Tasks a list shows when the page asks for no number; the most it may ask for.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 500;

impl TaskQuery {
    fn filter(&self) -> Result<crate::cluster::TaskFilter, Refused> {
        let state = match self.state.as_str() {
            "" => None,
            name => Some(
                fleet_proto::TaskState::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(
                    || Refused(StatusCode::BAD_REQUEST, format!("no task state {name:?}")),
                )?,
            ),
        };
        let search = words(&self.q)?;
        Ok(crate::cluster::TaskFilter {
            agent: (!self.agent.is_empty()).then(|| self.agent.clone()),
            state,
            worker: (!self.worker.is_empty()).then(|| self.worker.clone()),
            context_id: (!self.context.is_empty()).then(|| self.context.clone()),
            search,
            page_size: self.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST),
            after: self.after,
            newest_first: true,
            ..Default::default()
        })
    }
}

/// A route's query as axum parsed it (or why it could not).
pub(super) type Asked<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// The query, or its 400 with what to fix.
pub(super) fn asked<T>(query: Asked<T>) -> Result<T, Refused> {
    query.map(|Query(q)| q).map_err(|e| Refused(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A search's words, or its 400.
fn words(text: &str) -> Result<crate::search::Words, Refused> {
    crate::search::Words::parse(text).map_err(|e| Refused(StatusCode::BAD_REQUEST, e))
}

/// The query of a list route.
type Listing = Asked<TaskQuery>;

fn listing(query: Listing) -> Result<crate::cluster::TaskFilter, Refused> {
    asked(query)?.filter()
}

/// `?q=&group=&sort=&offset=&limit=` of the cluster view's workers: `q` a search
/// (`cluster::roster`), `group` `host`, `label` or `model`, `sort` `name`, `busiest` or
/// `silent`.
#[derive(Debug, Default, Deserialize)]
struct WorkerListing {
    #[serde(default)]
    q: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Workers a page lists when it asks for no number; the most it may ask for; the most
/// groups of its summary.
const DEFAULT_WORKERS: usize = 100;
const MAX_WORKERS: usize = 500;
const MAX_GROUPS: usize = 100;

impl WorkerListing {
    fn query(&self) -> Result<crate::cluster::WorkerQuery, Refused> {
        use crate::cluster::{WorkerGroups, WorkerOrder};
        let bad = |what: &str, value: &str, choices: &str| {
            Refused(StatusCode::BAD_REQUEST, format!("no {what} {value:?}: one of {choices}"))
        };
        let groups = match self.group.as_str() {
            "" | "host" => WorkerGroups::Host,
            "label" => WorkerGroups::Label,
            "model" => WorkerGroups::Model,
            other => return Err(bad("group", other, "host, label, model")),
        };
        let order = match self.sort.as_str() {
            "" | "name" => WorkerOrder::Name,
            "busiest" => WorkerOrder::Busiest,
            "silent" => WorkerOrder::Silent,
            other => return Err(bad("sort", other, "name, busiest, silent")),
        };
        Ok(crate::cluster::WorkerQuery {
            search: words(&self.q)?,
            groups,
            order,
            offset: self.offset,
            limit: self.limit.unwrap_or(DEFAULT_WORKERS).clamp(1, MAX_WORKERS),
            max_groups: MAX_GROUPS,
        })
    }
}

/// The query of the cluster view.
type Workers = Asked<WorkerListing>;

fn workers(query: Workers) -> Result<crate::cluster::WorkerQuery, Refused> {
    asked(query)?.query()
}
