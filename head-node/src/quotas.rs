//! Per-tenant quotas (`[[tenant]]` in the config file): how many of a tenant's tasks may
//! wait, how many may run at once, and how many tokens its tasks may generate a minute. A
//! submission over the waiting or token quota is refused (429 with `Retry-After`, gRPC
//! RESOURCE_EXHAUSTED); a task over the running quota waits in the queue for its turn.
//!
//! Waiting and running tasks are counted by the task table's tenant index (no counter to
//! keep in step with every transition); tokens in a one-minute window per tenant.

use std::collections::HashMap;
use std::time::Duration;

use fleet_proto::TaskState;
use serde::Deserialize;
use tokio::time::Instant;

use crate::tasks::TaskTable;
use crate::{Error, Result};

/// A `[[tenant]]` table: a tenant's quotas (each: none when not given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    pub name: String,
    /// Tasks waiting for a worker; a submission beyond it is refused.
    pub max_queued_tasks: Option<usize>,
    /// Tasks on workers at once; more wait in the queue.
    pub max_running_tasks: Option<usize>,
    /// Tokens the tenant's tasks generate a minute (completion tokens of finished tasks);
    /// past it submissions are refused until the minute is over.
    pub max_tokens_per_minute: Option<u64>,
}

/// The states of a task on a worker.
pub(crate) const RUNNING: [TaskState; 3] =
    [TaskState::Scheduled, TaskState::Working, TaskState::InputRequired];
const MINUTE: Duration = Duration::from_secs(60);

/// Every tenant's quotas and the tokens each generated this minute.
#[derive(Debug, Default)]
pub struct Quotas {
    limits: HashMap<String, TenantQuota>,
    tokens: HashMap<String, (Instant, u64)>,
}

impl Quotas {
    pub fn new(tenants: &[TenantQuota]) -> Self {
        let limits = tenants.iter().map(|t| (t.name.clone(), t.clone())).collect();
        Self { limits, tokens: HashMap::new() }
    }

    /// Refuses a new task of `tenant` over its waiting or token quota.
    pub fn admit(&self, tenant: &str, tasks: &mut TaskTable) -> Result<()> {
        let Some(quota) = self.limits.get(tenant) else { return Ok(()) };
        if let Some(limit) = quota.max_queued_tasks
            && tasks.count(tenant, &[TaskState::Queued]) >= limit
        {
            return Err(Error::Quota {
                tenant: tenant.to_owned(),
                what: "queued tasks",
                setting: "max_queued_tasks",
                limit: limit as u64,
                retry_after_s: 1,
            });
        }
        if let Some(limit) = quota.max_tokens_per_minute
            && let Some((start, used)) = self.tokens.get(tenant)
            && *used >= limit
        {
            let left = MINUTE.saturating_sub(start.elapsed());
            if !left.is_zero() {
                return Err(Error::Quota {
                    tenant: tenant.to_owned(),
                    what: "generated tokens a minute",
                    setting: "max_tokens_per_minute",
                    limit,
                    retry_after_s: left.as_secs().max(1),
                });
            }
        }
        Ok(())
    }

    /// Whether another task of `tenant` may go on a worker now.
    pub fn may_run(&self, tenant: &str, tasks: &mut TaskTable) -> bool {
        let limit = self.limits.get(tenant).and_then(|q| q.max_running_tasks);
        limit.is_none_or(|limit| tasks.count(tenant, &RUNNING) < limit)
    }

    /// A task of `tenant` generated `tokens`.
    pub fn generated(&mut self, tenant: &str, tokens: u64) {
        let counted = self.limits.get(tenant).is_some_and(|q| q.max_tokens_per_minute.is_some());
        if tokens == 0 || !counted {
            return;
        }
        let now = Instant::now();
        let window = self.tokens.entry(tenant.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= MINUTE {
            *window = (now, 0);
        }
        window.1 += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{EventKind, TaskId};

    fn quota() -> TenantQuota {
        TenantQuota {
            name: "a".into(),
            max_queued_tasks: Some(2),
            max_running_tasks: Some(1),
            max_tokens_per_minute: Some(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_quota_refuses_over_it_and_admits_again_under_it() {
        let quotas = &mut Quotas::new(&[quota()]);
        let mut tasks = TaskTable::new(100, usize::MAX);
        for (i, tenant) in ["a", "a", "b"].into_iter().enumerate() {
            tasks.insert(
                TaskId::new(format!("t{i}")),
                "x".into(),
                "in".into(),
                String::new(),
                tenant.into(),
            );
        }
        let refused = quotas.admit("a", &mut tasks).expect_err("two of a's wait");
        assert!(matches!(refused, Error::Quota { setting: "max_queued_tasks", .. }), "{refused}");
        quotas.admit("b", &mut tasks).expect("b has no quota");
        assert!(quotas.may_run("a", &mut tasks));
        if let Some(t) = tasks.get_mut("t0") {
            t.push(EventKind::Submitted { agent: "x".into() }, 1).expect("first");
            t.push(EventKind::Scheduled { worker_id: "w".into() }, 1).expect("queued");
        }
        assert!(!quotas.may_run("a", &mut tasks), "one of a's runs");
        quotas.admit("a", &mut tasks).expect("one waits now");
        quotas.generated("a", 100);
        let refused = quotas.admit("a", &mut tasks).expect_err("100 tokens this minute");
        assert_eq!(refused.retry_after_s(), Some(60));
        tokio::time::advance(Duration::from_secs(61)).await;
        quotas.admit("a", &mut tasks).expect("a new minute");
    }
}
