//! Head-only domain types to wire types (the shared ones convert in `fleet-proto`).

use fleet_proto::{TaskState, pb};

use crate::cluster::{AgentInfo, ClusterStatus, TaskInfo, WorkerInfo};
use crate::conversations::{Record, Summary};

impl From<Summary> for pb::ConversationSummary {
    fn from(s: Summary) -> Self {
        Self {
            agent: s.agent,
            context_id: s.context_id,
            turns: u32::try_from(s.turns).unwrap_or(u32::MAX),
            bytes: s.bytes as u64,
            updated_at_us: s.updated_at_us,
        }
    }
}

impl From<Record> for pb::Conversation {
    fn from(c: Record) -> Self {
        Self {
            agent: c.agent,
            context_id: c.context_id,
            turns: c.turns.iter().map(Into::into).collect(),
            updated_at_us: c.updated_at_us,
        }
    }
}

impl From<TaskInfo> for pb::TaskInfo {
    fn from(t: TaskInfo) -> Self {
        Self {
            task_id: t.task_id.to_string(),
            agent: t.agent,
            state: pb::TaskState::from(t.state).into(),
            attempt: t.attempt,
            worker_id: t.worker_id,
            context_id: t.context_id,
            output: t.output,
            error: t.error,
            events: t.events,
            submitted_at_us: t.submitted_at_us,
            finished_at_us: t.finished_at_us,
            usage: Some(t.usage.into()),
        }
    }
}

impl From<AgentInfo> for pb::AgentInfo {
    fn from(a: AgentInfo) -> Self {
        Self {
            spec: Some(a.spec.as_ref().into()),
            version: a.version,
            tasks_submitted: a.tasks_submitted,
        }
    }
}

impl From<WorkerInfo> for pb::WorkerStatus {
    fn from(w: WorkerInfo) -> Self {
        let r = w.registration;
        Self {
            worker_id: r.worker_id,
            hostname: r.hostname,
            address: w.address,
            alive: true,
            resources: Some(r.resources.into()),
            free: Some(w.free.into()),
            labels: r.labels.into_iter().collect(),
            models: r.models.into_iter().map(|m| m.id).collect(),
            models_loaded: w.models_loaded,
            slots: r.slots,
            running_tasks: w.running_tasks,
            mesh_calls: w.mesh_calls,
            draining: w.draining,
            tasks_assigned: w.tasks_assigned,
            last_heartbeat_ms_ago: w.last_heartbeat_ago.as_millis() as u64,
            loaded: w.loaded.into_iter().map(Into::into).collect(),
            actors: w.actors,
            mesh_peer_id: r.mesh.as_ref().map(|m| m.peer_id.clone()).unwrap_or_default(),
            mesh_addrs: r.mesh.map(|m| m.addrs).unwrap_or_default(),
            gpus: r.gpus.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ClusterStatus> for pb::ClusterStatusResponse {
    fn from(s: ClusterStatus) -> Self {
        Self {
            workers: s.workers.into_iter().map(Into::into).collect(),
            agents: s.agents as u32,
            queued_tasks: s.queued_tasks as u64,
            running_tasks: s.running_tasks as u64,
            retained_tasks: s.retained_tasks as u64,
            tasks_completed: s.counters.completed,
            tasks_failed: s.counters.failed,
            tasks_canceled: s.counters.canceled,
            calls_relayed: s.calls_relayed,
            agents_located: s.agents_located,
        }
    }
}

/// A state filter from the wire: unspecified means any state.
pub fn state_filter(raw: i32) -> Result<Option<TaskState>, tonic::Status> {
    match pb::TaskState::try_from(raw) {
        Ok(pb::TaskState::Unspecified) => Ok(None),
        Ok(state) => Ok(TaskState::try_from(state).ok()),
        Err(_) => Err(tonic::Status::invalid_argument(format!("unknown task state {raw}"))),
    }
}
