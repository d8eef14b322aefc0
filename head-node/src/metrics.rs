//! Prometheus metrics at `GET /metrics` (the text exposition format), behind the client
//! credential like every other door.
//!
//! Two sources. [`TaskMetrics`] counts as tasks move: the cluster calls it at submission, at
//! a task's first event from a worker and at its end (atomic updates under the cluster's
//! lock, no allocation once an agent's series exist). Everything else is read from the
//! cluster's state when scraped ([`Figures`]): the queue, the workers and their slots, the
//! mesh counters, and per worker and model the engine figures its heartbeats carry
//! (sequences running and waiting, KV bytes, tokens, prefix cache, time to first token and
//! between tokens). Names follow vLLM's (`vllm:num_requests_running` here is
//! `agentfleet:num_requests_running`), so dashboards made for it carry over.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet_proto::{Latencies, TaskState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::Principals;
use crate::cluster::{AgentLoad, Cluster, ClusterStatus};

/// Upper bounds (seconds) of the task latency histograms: an echo task's few milliseconds
/// to an agent working for minutes.
const TASK_SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    agent: String,
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn task_histogram() -> Histogram {
    Histogram::new(TASK_SECONDS)
}

/// What the head counts as tasks move, since it started (tasks restored from the store are
/// counted when they end, not as submitted).
#[derive(Debug)]
pub struct TaskMetrics {
    registry: Registry,
    submitted: Family<AgentLabel, Counter>,
    ended: Family<EndLabels, Counter>,
    first_event: Histograms<AgentLabel>,
    duration: Histograms<EndLabels>,
    worker_events: Counter,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        let submitted = Family::<AgentLabel, Counter>::default();
        let ended = Family::<EndLabels, Counter>::default();
        let first_event = Histograms::<AgentLabel>::new_with_constructor(task_histogram as _);
        let duration = Histograms::<EndLabels>::new_with_constructor(task_histogram as _);
        let worker_events = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "agentfleet:tasks_submitted",
            "Tasks submitted, by agent (agent calls included)",
            submitted.clone(),
        );
        registry.register(
            "agentfleet:tasks_finished",
            "Tasks that ended, by agent and final state (completed, failed, canceled)",
            ended.clone(),
        );
        registry.register(
            "agentfleet:task_first_event_seconds",
            "From a task's submission to the first event its worker sent, by agent",
            first_event.clone(),
        );
        registry.register(
            "agentfleet:task_duration_seconds",
            "From a task's submission to its end, by agent and final state",
            duration.clone(),
        );
        registry.register(
            "agentfleet:worker_events",
            "Task events received from workers (rate() gives events per second)",
            worker_events.clone(),
        );
        Self { registry, submitted, ended, first_event, duration, worker_events }
    }
}

impl TaskMetrics {
    pub(crate) fn submitted(&self, agent: &str) {
        self.submitted.get_or_create(&AgentLabel { agent: agent.to_owned() }).inc();
    }

    /// A task's first event from a worker arrived `after` its submission.
    pub(crate) fn first_event(&self, agent: &str, after: Duration) {
        let labels = AgentLabel { agent: agent.to_owned() };
        self.first_event.get_or_create(&labels).observe(after.as_secs_f64());
    }

    /// A task ended in `state`, `after` its submission.
    pub(crate) fn ended(&self, agent: &str, state: TaskState, after: Duration) {
        let labels = EndLabels { agent: agent.to_owned(), state: state.as_str() };
        self.duration.get_or_create(&labels).observe(after.as_secs_f64());
        self.ended.get_or_create(&labels).inc();
    }

    /// Events workers sent since the head started.
    pub(crate) fn worker_events_total(&self) -> u64 {
        self.worker_events.get()
    }

    pub(crate) fn worker_events(&self, n: usize) {
        self.worker_events.inc_by(n as u64);
    }
}

/// What `/metrics` needs: the cluster, who may read, and when a worker counts as silent.
#[derive(Clone)]
pub struct MetricsRoute {
    pub cluster: Arc<Cluster>,
    pub clients: Principals,
    pub heartbeat_interval: Duration,
    pub webhooks: crate::a2a::push::Webhooks,
}

/// `GET /metrics`: the text exposition format (version 0.0.4, which every Prometheus and
/// the Python client parse).
/// The figures are the whole cluster's (every tenant's agents and tasks): admins only.
pub async fn metrics(
    State(route): State<MetricsRoute>,
    extensions: axum::http::Extensions,
) -> Response {
    match crate::auth::principal_of(&extensions) {
        Ok(who) if who.is_admin() => {}
        Ok(who) => {
            return refusal(crate::Error::PermissionDenied(format!(
                "/metrics shows every tenant's figures: it is for admins, and {:?} is a {}; \
                 a tenant's own tasks and agents are in the inspector",
                who.name(),
                who.role().as_str()
            )));
        }
        Err(e) => return refusal(e),
    }
    let figures = Figures {
        status: route.cluster.status(),
        agents: route.cluster.agent_loads(),
        silent_after: route.heartbeat_interval * 2,
        push_config_tasks: route.webhooks.tasks(),
    };
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(figures));
    let mut text = String::new();
    let encoded = prometheus_client::encoding::text::encode_registry(
        &mut text,
        route.cluster.task_metrics().registry(),
    )
    .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &scrape))
    .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
    if encoded.is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// How the auth layer refuses a scrape: plain text, the table's status.
pub fn refusal(e: crate::Error) -> Response {
    (e.http_status(), format!("{e}\n")).into_response()
}

impl TaskMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The cluster's state at one scrape, encoded as gauges and counters.
#[derive(Debug)]
struct Figures {
    status: ClusterStatus,
    agents: Vec<AgentLoad>,
    silent_after: Duration,
    push_config_tasks: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    worker: String,
    model: String,
}

/// A metric read from each loaded model's figures: name, help, kind, value.
type PerModel = (&'static str, &'static str, MetricType, fn(&fleet_proto::LoadedModel) -> f64);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// One sample of a gauge or a counter.
fn sample(metric: &mut MetricEncoder, kind: MetricType, value: f64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, f64>(&value, None),
        _ => metric.encode_gauge(&value),
    }
}

/// One metric of several series: its descriptor, then one sample per label set.
fn series<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        sample(&mut metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

/// A metric of one series, without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: f64,
) -> Result<(), std::fmt::Error> {
    sample(&mut encoder.encode_descriptor(name, help, None, kind)?, kind, value)
}

/// One histogram per label set, from the counts a heartbeat carried.
fn histograms<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, Latencies)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, l) in samples {
        // One count per bound plus the one above them all; anything else is not a
        // histogram this head can read (a worker of another version), and is left out.
        if l.counts.len() != l.upper_bounds.len() + 1 {
            continue;
        }
        let bounds = l.upper_bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(l.counts.iter().copied()).collect();
        let count = l.counts.iter().sum();
        metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            l.sum_seconds,
            count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.status;
        let agents = || self.agents.iter();
        series(
            &mut encoder,
            "agentfleet:tasks_queued",
            "Tasks waiting for a worker, by agent",
            Gauge,
            agents().map(|a| (AgentLabel { agent: a.agent.clone() }, a.queued as f64)),
        )?;
        series(
            &mut encoder,
            "agentfleet:tasks_running",
            "Tasks placed on a worker and not ended, by agent",
            Gauge,
            agents().map(|a| (AgentLabel { agent: a.agent.clone() }, f64::from(a.running))),
        )?;
        single(
            &mut encoder,
            "agentfleet:tasks_retained",
            "Tasks the head holds (running, queued and finished ones kept for reading)",
            Gauge,
            s.retained_tasks as f64,
        )?;
        single(
            &mut encoder,
            "agentfleet:a2a_push_config_tasks",
            "Tasks holding A2A push notification configs (they go with their task)",
            Gauge,
            self.push_config_tasks as f64,
        )?;
        let silent = s.workers.iter().filter(|w| w.last_heartbeat_ago > self.silent_after).count();
        series(
            &mut encoder,
            "agentfleet:workers",
            "Workers joined, by state: ready, or silent (no heartbeat for two intervals)",
            Gauge,
            [
                (StateLabel { state: "ready" }, (s.workers.len() - silent) as f64),
                (StateLabel { state: "silent" }, silent as f64),
            ],
        )?;
        let workers = || s.workers.iter();
        let worker = |w: &crate::cluster::WorkerInfo| WorkerLabel {
            worker: w.registration.worker_id.clone(),
        };
        series(
            &mut encoder,
            "agentfleet:worker_slots",
            "Tasks (and calls from the mesh) a worker runs at once",
            Gauge,
            workers().map(|w| (worker(w), f64::from(w.registration.slots))),
        )?;
        series(
            &mut encoder,
            "agentfleet:worker_slots_used",
            "Slots taken on a worker: its running tasks and calls from the mesh",
            Gauge,
            workers().map(|w| (worker(w), f64::from(w.running_tasks.saturating_add(w.mesh_calls)))),
        )?;
        series(
            &mut encoder,
            "agentfleet:worker_mesh_calls",
            "Calls from other workers' agents running on a worker (in its slots)",
            Gauge,
            workers().map(|w| (worker(w), f64::from(w.mesh_calls))),
        )?;
        series(
            &mut encoder,
            "agentfleet:worker_actors",
            "Agent actors a worker hosts",
            Gauge,
            workers().map(|w| (worker(w), f64::from(w.actors))),
        )?;
        series(
            &mut encoder,
            "agentfleet:worker_heartbeat_age_seconds",
            "Time since a worker's last heartbeat",
            Gauge,
            workers().map(|w| (worker(w), w.last_heartbeat_ago.as_secs_f64())),
        )?;
        single(
            &mut encoder,
            "agentfleet:agent_calls_relayed",
            "Agent calls the head ran as sub-tasks (callers not on the mesh)",
            Counter,
            s.calls_relayed as f64,
        )?;
        single(
            &mut encoder,
            "agentfleet:agent_lookups",
            "Agent lookups the head answered for workers calling over the mesh",
            Counter,
            s.agents_located as f64,
        )?;
        let models = || {
            s.workers.iter().flat_map(|w| {
                w.loaded.iter().map(move |m| {
                    let labels = ModelLabels {
                        worker: w.registration.worker_id.clone(),
                        model: m.id.clone(),
                    };
                    (labels, m)
                })
            })
        };
        let per_model: [PerModel; 10] = [
            (
                "agentfleet:num_requests_running",
                "Sequences the model's engine is generating",
                Gauge,
                |m| f64::from(m.active_sequences),
            ),
            (
                "agentfleet:num_requests_waiting",
                "Sequences waiting for room in the model's engine",
                Gauge,
                |m| f64::from(m.waiting_sequences),
            ),
            (
                "agentfleet:kv_cache_used_bytes",
                "KV-cache bytes held by the sequences admitted",
                Gauge,
                |m| m.kv_bytes as f64,
            ),
            (
                "agentfleet:kv_cache_capacity_bytes",
                "KV-cache bytes the admitted sequences may hold",
                Gauge,
                |m| m.kv_capacity_bytes as f64,
            ),
            (
                "agentfleet:prompt_tokens",
                "Prompt tokens of sequences that reached their first token",
                Counter,
                |m| m.prompt_tokens as f64,
            ),
            ("agentfleet:generation_tokens", "Tokens generated", Counter, |m| {
                m.generated_tokens as f64
            }),
            (
                "agentfleet:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache",
                Counter,
                |m| m.prompt_tokens as f64,
            ),
            (
                "agentfleet:prefix_cache_hits",
                "Prompt tokens read from the prefix cache instead of computed",
                Counter,
                |m| m.cached_tokens as f64,
            ),
            ("agentfleet:prefix_cache_bytes", "Bytes the prefix cache holds", Gauge, |m| {
                m.prefix_cache_bytes as f64
            }),
            (
                "agentfleet:generation_tokens_per_second",
                "Tokens generated per second between the worker's last two heartbeats",
                Gauge,
                |m| m.tokens_per_s,
            ),
        ];
        for (name, help, kind, value) in per_model {
            series(&mut encoder, name, help, kind, models().map(|(l, m)| (l, value(m))))?;
        }
        histograms(
            &mut encoder,
            "agentfleet:time_to_first_token_seconds",
            "From a request reaching the model's engine to its first token",
            models().map(|(l, m)| (l, m.time_to_first_token.clone())),
        )?;
        histograms(
            &mut encoder,
            "agentfleet:inter_token_latency_seconds",
            "Time between two tokens of one sequence",
            models().map(|(l, m)| (l, m.inter_token.clone())),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms as heartbeats carry them, one well formed and one not.
    #[derive(Debug)]
    struct Two(Vec<(ModelLabels, Latencies)>);

    impl Collector for Two {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            histograms(&mut encoder, "agentfleet:t_seconds", "test", self.0.clone())
        }
    }

    fn labels(worker: &str) -> ModelLabels {
        ModelLabels { worker: worker.into(), model: "m".into() }
    }

    #[test]
    fn heartbeat_histograms_encode_cumulatively_and_malformed_ones_are_left_out() {
        let good =
            Latencies { upper_bounds: vec![0.1, 1.0], counts: vec![2, 3, 1], sum_seconds: 4.5 };
        // One count short: not a histogram this head can read.
        let bad = Latencies { upper_bounds: vec![0.1, 1.0], counts: vec![2, 3], sum_seconds: 1.0 };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Two(vec![(labels("w1"), good), (labels("w2"), bad)])));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            "# TYPE agentfleet:t_seconds histogram",
            "agentfleet:t_seconds_sum{worker=\"w1\",model=\"m\"} 4.5",
            "agentfleet:t_seconds_count{worker=\"w1\",model=\"m\"} 6",
            "agentfleet:t_seconds_bucket{le=\"0.1\",worker=\"w1\",model=\"m\"} 2",
            "agentfleet:t_seconds_bucket{le=\"1.0\",worker=\"w1\",model=\"m\"} 5",
            "agentfleet:t_seconds_bucket{le=\"+Inf\",worker=\"w1\",model=\"m\"} 6",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(!text.contains("w2"), "{text}");
    }

    #[test]
    fn task_counters_and_histograms_by_agent_and_state() {
        let m = TaskMetrics::default();
        m.submitted("a");
        m.submitted("a");
        m.first_event("a", Duration::from_millis(3));
        m.ended("a", TaskState::Completed, Duration::from_millis(20));
        m.ended("a", TaskState::Failed, Duration::from_secs(2));
        m.worker_events(7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, m.registry()).expect("encodes");
        for line in [
            "agentfleet:tasks_submitted_total{agent=\"a\"} 2",
            "agentfleet:tasks_finished_total{agent=\"a\",state=\"completed\"} 1",
            "agentfleet:tasks_finished_total{agent=\"a\",state=\"failed\"} 1",
            "agentfleet:task_first_event_seconds_count{agent=\"a\"} 1",
            "agentfleet:task_duration_seconds_bucket{le=\"0.025\",agent=\"a\",state=\"completed\"} 1",
            "agentfleet:task_duration_seconds_bucket{le=\"1.0\",agent=\"a\",state=\"failed\"} 0",
            "agentfleet:task_duration_seconds_bucket{le=\"2.5\",agent=\"a\",state=\"failed\"} 1",
            "agentfleet:worker_events_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }
}
