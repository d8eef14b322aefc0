//! A2A push notifications: webhook configs per task (create, get, list, delete) and their
//! delivery. Each status change of a task with configs is POSTed to every webhook as a 1.0
//! StreamResponse JSON (`{"statusUpdate": ...}`, then `{"task": ...}` once it ends), with the
//! config's token in `X-A2A-Notification-Token` and its credentials in `Authorization`;
//! failed deliveries are retried with backoff. Webhooks are `http://` or `https://` (rustls,
//! the system's roots plus `--webhook-ca`). Loopback, private and link-local targets are
//! refused unless the operator allows them (`--allow-private-webhooks`): when a config is
//! made and again before every delivery, the address connected to, whatever the URL's
//! spelling (`fleet_outbound`); redirects are not followed. A task's configs go when
//! retention evicts the task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http;
use fleet_proto::{EventKind, pb};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::errors::A2aError;
use super::{A2a, Version, ops, render};
use crate::cluster::Exchange;

/// Configs per task at most. (Tasks with configs are bounded by the tasks the head keeps:
/// a task's configs go with it when retention evicts it; see [`WebhookPolicy::max_tasks`].)
const MAX_CONFIGS_PER_TASK: usize = 16;
/// Delivery attempts per notification, and the wait before the first retry (then x4).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest url, token, id, scheme or credentials a config may hold (each config is
/// kept, stored and sent with every notification).
const MAX_FIELD_BYTES: usize = 4096;
/// What allows private webhook targets, named when one is refused.
const ALLOWED_BY: &str = "the head's --allow-private-webhooks";

/// One webhook of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    pub id: String,
    pub task_id: String,
    pub url: String,
    pub token: String,
    pub scheme: String,
    pub credentials: String,
}

impl PushConfig {
    /// The config in either dialect: 1.0 TaskPushNotificationConfig, 0.3 PushNotificationConfig.
    pub fn to_json(&self, v: Version) -> Value {
        // The webhook's credentials go out with each delivery, never in an answer: a client
        // that lost them sets the config again.
        let auth = (!self.scheme.is_empty()).then(|| match v {
            Version::V1 => json!({"scheme": self.scheme}),
            Version::V03 => json!({"schemes": [self.scheme]}),
        });
        let mut config = json!({"id": self.id, "url": self.url, "token": self.token});
        if let Some(auth) = auth {
            config["authentication"] = auth;
        }
        match v {
            Version::V1 => {
                config["taskId"] = json!(self.task_id);
                config
            }
            Version::V03 => json!({"taskId": self.task_id, "pushNotificationConfig": config}),
        }
    }

    /// Reads a config from `raw` (the object holding url, token, authentication).
    pub fn from_json(task_id: &str, raw: &Value) -> Result<Self, A2aError> {
        let field =
            |name: &str| raw.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let url = field("url");
        let valid = url.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !valid {
            return Err(A2aError::invalid_params(format!(
                "push notification url {url:?} must be an absolute https:// or http:// URL"
            )));
        }
        let auth = raw.get("authentication");
        let too_long = ["url", "token", "id"]
            .into_iter()
            .map(|name| (name, raw.get(name)))
            .chain(["scheme", "credentials"].map(|name| (name, auth.and_then(|a| a.get(name)))))
            .find(|(_, v)| v.and_then(Value::as_str).is_some_and(|v| v.len() > MAX_FIELD_BYTES));
        if let Some((name, _)) = too_long {
            return Err(A2aError::invalid_params(format!(
                "push notification {name} is longer than {MAX_FIELD_BYTES} bytes"
            )));
        }
        let scheme = auth
            .and_then(|a| {
                a.get("scheme")
                    .and_then(Value::as_str)
                    .or_else(|| a.get("schemes")?.get(0)?.as_str())
            })
            .unwrap_or_default()
            .to_owned();
        let credentials = auth
            .and_then(|a| a.get("credentials"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let id = Some(field("id"))
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Ok(Self {
            id,
            task_id: task_id.to_owned(),
            url,
            token: field("token"),
            scheme,
            credentials,
        })
    }
}

/// Who the head calls back: whether private targets are allowed, and extra CA certificates
/// (PEM) trusted beside the system's for `https://` webhooks.
#[derive(Clone, Debug, Default)]
pub struct WebhookPolicy {
    pub allow_private: bool,
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Tasks with configs at most: as many as the head keeps (retained, queued and
    /// running), so that a config for any task the head has is taken.
    pub max_tasks: usize,
}

/// The webhooks of every task, and the HTTP client that calls them.
#[derive(Clone)]
pub struct Webhooks {
    configs: Arc<Mutex<HashMap<String, Vec<PushConfig>>>>,
    client: reqwest::Client,
    targets: fleet_outbound::Policy,
    max_tasks: usize,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("tasks", &self.configs.lock().len()).finish()
    }
}

impl Webhooks {
    /// The client for `policy`; fails on a CA file that holds no certificate.
    pub fn new(policy: &WebhookPolicy) -> Result<Self, String> {
        let targets = fleet_outbound::Policy::new(policy.allow_private, ALLOWED_BY);
        let mut builder = targets.client().connect_timeout(POST_TIMEOUT).timeout(POST_TIMEOUT);
        if let Some(pem) = &policy.extra_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the webhook CA file is not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err("the webhook CA file holds no certificate".into());
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| {
            format!("cannot build the webhook client: {}", fleet_outbound::error_chain(&e))
        })?;
        Ok(Self { configs: Arc::default(), client, targets, max_tasks: policy.max_tasks })
    }

    /// Refuses a config whose URL is not http(s) or names a private address (unless those
    /// are allowed); names are checked again each time they are resolved.
    pub fn check_target(&self, config: &PushConfig) -> Result<(), A2aError> {
        match self.targets.check(&config.url) {
            Ok(_) => Ok(()),
            Err(why) => Err(A2aError::invalid_params(format!("push notification {why}"))),
        }
    }

    /// Takes back the configs the store held and delivers again for the tasks that have not
    /// ended (a restarted or new leading head).
    pub fn restore(&self, a2a: &A2a) {
        let stored = a2a.cluster.take_stored_push_configs();
        let mut open = Vec::new();
        {
            let mut configs = self.configs.lock();
            for (task_id, stored) in stored {
                let list: Vec<PushConfig> = stored
                    .configs
                    .into_iter()
                    .map(|c| PushConfig {
                        id: c.id,
                        task_id: task_id.to_string(),
                        url: c.url,
                        token: c.token,
                        scheme: c.scheme,
                        credentials: c.credentials,
                    })
                    .collect();
                if list.is_empty() {
                    continue;
                }
                open.push(task_id.to_string());
                configs.insert(task_id.to_string(), list);
            }
        }
        for task_id in open {
            // A task that ended needs no delivery (it was made when it ended).
            let ended = a2a.cluster.task(&a2a.who, &task_id).is_ok_and(|t| t.state.is_terminal());
            if !ended && let Err(e) = self.deliver(a2a, &task_id) {
                warn!(task_id, error = %e.message, "push notifications not resumed");
            }
        }
    }

    /// Stores the task's configs as they are now.
    fn keep(&self, a2a: &A2a, task_id: &str) {
        let configs = self
            .list(task_id)
            .into_iter()
            .map(|c| pb::StoredPushConfig {
                id: c.id,
                url: c.url,
                token: c.token,
                scheme: c.scheme,
                credentials: c.credentials,
            })
            .collect();
        a2a.cluster.keep_push_configs(task_id, pb::StoredPushConfigs { configs });
    }

    /// How many tasks hold configs now.
    pub fn tasks(&self) -> usize {
        self.configs.lock().len()
    }

    /// Drops a task's configs (its task left retention).
    pub fn forget(&self, task_id: &str) {
        self.configs.lock().remove(task_id);
    }

    /// Adds (or replaces, by id) a config; starts delivering for the task if it was not yet.
    pub fn set(&self, a2a: &A2a, config: PushConfig) -> Result<PushConfig, A2aError> {
        self.check_target(&config)?;
        let secret = !config.token.is_empty() || !config.credentials.is_empty();
        if secret && a2a.cluster.keeps_secrets_in_clear() {
            return Err(A2aError::invalid_params(
                "this head keeps push configs in a shared store without a secrets key, so it \
                 takes no token or credentials: start it with --secrets-key-file (the same \
                 file on every head)",
            ));
        }
        let first = {
            let mut configs = self.configs.lock();
            if configs.len() >= self.max_tasks && !configs.contains_key(&config.task_id) {
                return Err(A2aError::invalid_request(
                    "too many tasks with push notifications: delete some configs",
                ));
            }
            let list = configs.entry(config.task_id.clone()).or_default();
            let first = list.is_empty();
            list.retain(|c| c.id != config.id);
            if list.len() >= MAX_CONFIGS_PER_TASK {
                return Err(A2aError::invalid_request(format!(
                    "a task has at most {MAX_CONFIGS_PER_TASK} push configs"
                )));
            }
            list.push(config.clone());
            first
        };
        self.keep(a2a, &config.task_id);
        if first {
            self.deliver(a2a, &config.task_id)?;
        }
        Ok(config)
    }

    pub fn get(&self, task_id: &str, id: &str) -> Result<PushConfig, A2aError> {
        let configs = self.configs.lock();
        let list = configs.get(task_id).map(Vec::as_slice).unwrap_or_default();
        let found = if id.is_empty() { list.first() } else { list.iter().find(|c| c.id == id) };
        found.cloned().ok_or_else(|| {
            A2aError::invalid_params(format!("task {task_id:?} has no push config {id:?}"))
        })
    }

    pub fn list(&self, task_id: &str) -> Vec<PushConfig> {
        self.configs.lock().get(task_id).cloned().unwrap_or_default()
    }

    /// Deletes a config; one that is not there is deleted already (A2A 1.0: deleting is
    /// idempotent, so a client may send it again).
    pub fn delete(&self, a2a: &A2a, task_id: &str, id: &str) {
        let removed = {
            let mut configs = self.configs.lock();
            configs.get_mut(task_id).is_some_and(|list| {
                let before = list.len();
                list.retain(|c| c.id != id);
                list.len() < before
            })
        };
        if removed {
            self.keep(a2a, task_id);
        }
    }

    /// Follows the task and notifies its webhooks of every status change, then of the end.
    /// A question the task asks is a status change like the others (with the question as
    /// its message): delivery goes on through it to the end, however the client replies.
    fn deliver(&self, a2a: &A2a, task_id: &str) -> Result<(), A2aError> {
        let (info, mut follow) = a2a.cluster.snapshot_and_follow(&a2a.who, task_id)?;
        let (hooks, a2a) = (self.clone(), a2a.clone());
        tokio::spawn(async move {
            let mut info = info;
            if !info.state.is_terminal() {
                while let Some(event) = follow.next().await {
                    let Some(state) = event.kind.state_after() else { continue };
                    if matches!(event.kind, EventKind::Scheduled { .. }) {
                        continue;
                    }
                    info.state = state;
                    if let EventKind::Failed { error, .. } | EventKind::Canceled { reason: error } =
                        &event.kind
                    {
                        info.error.clone_from(error);
                    }
                    if let EventKind::InputRequired { prompt, .. } = &event.kind {
                        let asked =
                            Exchange { prompt: prompt.clone(), reply: None, rejected: false };
                        info.exchanges.push(asked);
                    }
                    if state.is_terminal() {
                        break;
                    }
                    hooks
                        .notify(
                            &info.task_id.to_string(),
                            render::status_update(&info, Version::V1),
                        )
                        .await;
                }
            }
            if let Ok(done) = a2a.cluster.task(&a2a.who, info.task_id.as_str()) {
                let task = ops::render_task(&a2a, &done, None, Version::V1);
                hooks.notify(done.task_id.as_str(), render::stream_task(task, Version::V1)).await;
            }
        });
        Ok(())
    }

    /// Posts `body` to every webhook of the task, each with retries.
    async fn notify(&self, task_id: &str, body: Value) {
        let body = axum::body::Bytes::from(body.to_string());
        let sends = self
            .list(task_id)
            .into_iter()
            .map(|config| self.post_with_retries(config, body.clone()));
        futures::future::join_all(sends).await;
    }

    async fn post_with_retries(&self, config: PushConfig, body: axum::body::Bytes) {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            match self.post(&config, body.clone()).await {
                Ok(()) => {
                    debug!(task_id = %config.task_id, url = %config.url, attempt, "push notification delivered");
                    return;
                }
                Err(error) if attempt < ATTEMPTS => {
                    debug!(task_id = %config.task_id, url = %config.url, attempt, error, "push notification failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
                Err(error) => {
                    warn!(task_id = %config.task_id, url = %config.url, error, "push notification not delivered")
                }
            }
        }
    }

    async fn post(&self, config: &PushConfig, body: axum::body::Bytes) -> Result<(), String> {
        // Checked again here: the client connects to a literal address without resolving it,
        // and a config restored from the store was checked by whichever head made it.
        let url = self.targets.check(&config.url).map_err(|e| e.to_string())?;
        let mut request =
            self.client.post(url).header(http::header::CONTENT_TYPE, "application/json").body(body);
        if !config.token.is_empty() {
            request = request.header("X-A2A-Notification-Token", &config.token);
        }
        if !config.scheme.is_empty() {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("{} {}", config.scheme, config.credentials),
            );
        }
        // The error's sources say why (a refused address, a certificate), not just "error
        // sending request".
        let response = request.send().await.map_err(|e| fleet_outbound::error_chain(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }
}
