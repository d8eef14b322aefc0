//! What `/metrics` reads from the cluster's state at a scrape: each agent's queue and running
//! tasks, and (for admins) the workers, their slots, the mesh counters, and per worker and
//! model the engine figures its heartbeats carry.

use std::time::Duration;

use fleet_proto::Latencies;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::cluster::{AgentLoad, ClusterStatus};

/// The cluster's state at one scrape, encoded as gauges and counters: what an admin sees.
#[derive(Debug)]
pub struct Figures {
    pub status: ClusterStatus,
    pub agents: Vec<AgentLoad>,
    pub silent_after: Duration,
    pub push_config_tasks: usize,
}

/// A tenant's share of the state: its tasks waiting and running on the agents it sees.
#[derive(Debug)]
pub struct TenantFigures {
    pub agents: Vec<AgentLoad>,
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        agent_loads(&mut encoder, &self.agents)?;
        cluster(&mut encoder, &self.status, self.silent_after, self.push_config_tasks)?;
        models(&mut encoder, &self.status)
    }
}

impl Collector for TenantFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        agent_loads(&mut encoder, &self.agents)
    }
}

/// Tasks waiting and running by agent (a tenant's scrape: its own tasks).
fn agent_loads(
    encoder: &mut DescriptorEncoder,
    agents: &[AgentLoad],
) -> Result<(), std::fmt::Error> {
    use MetricType::Gauge;
    series(
        encoder,
        "agentfleet:tasks_queued",
        "Tasks waiting for a worker, by agent",
        Gauge,
        agents.iter().map(|a| (AgentLabel { agent: a.agent.clone() }, a.queued as f64)),
    )?;
    series(
        encoder,
        "agentfleet:tasks_running",
        "Tasks placed on a worker and not ended, by agent",
        Gauge,
        agents.iter().map(|a| (AgentLabel { agent: a.agent.clone() }, f64::from(a.running))),
    )?;
    Ok(())
}

/// The head's own figures, the workers and the mesh.
fn cluster(
    encoder: &mut DescriptorEncoder,
    s: &ClusterStatus,
    silent_after: Duration,
    push_config_tasks: usize,
) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    single(
        encoder,
        "agentfleet:tasks_retained",
        "Tasks the head holds (running, queued and finished ones kept for reading)",
        Gauge,
        s.retained_tasks as f64,
    )?;
    single(
        encoder,
        "agentfleet:a2a_push_config_tasks",
        "Tasks holding A2A push notification configs (they go with their task)",
        Gauge,
        push_config_tasks as f64,
    )?;
    let silent = s.workers.iter().filter(|w| w.last_heartbeat_ago > silent_after).count();
    series(
        encoder,
        "agentfleet:workers",
        "Workers joined, by state: ready, or silent (no heartbeat for two intervals)",
        Gauge,
        [
            (StateLabel { state: "ready" }, (s.workers.len() - silent) as f64),
            (StateLabel { state: "silent" }, silent as f64),
        ],
    )?;
    let workers = || s.workers.iter();
    let worker =
        |w: &crate::cluster::WorkerInfo| WorkerLabel { worker: w.registration.worker_id.clone() };
    series(
        encoder,
        "agentfleet:worker_slots",
        "Tasks (and calls from the mesh) a worker runs at once",
        Gauge,
        workers().map(|w| (worker(w), f64::from(w.registration.slots))),
    )?;
    series(
        encoder,
        "agentfleet:worker_slots_used",
        "Slots taken on a worker: its running tasks and calls from the mesh",
        Gauge,
        workers().map(|w| (worker(w), f64::from(w.running_tasks.saturating_add(w.mesh_calls)))),
    )?;
    series(
        encoder,
        "agentfleet:worker_mesh_calls",
        "Calls from other workers' agents running on a worker (in its slots)",
        Gauge,
        workers().map(|w| (worker(w), f64::from(w.mesh_calls))),
    )?;
    series(
        encoder,
        "agentfleet:worker_actors",
        "Agent actors a worker hosts",
        Gauge,
        workers().map(|w| (worker(w), f64::from(w.actors))),
    )?;
    series(
        encoder,
        "agentfleet:worker_heartbeat_age_seconds",
        "Time since a worker's last heartbeat",
        Gauge,
        workers().map(|w| (worker(w), w.last_heartbeat_ago.as_secs_f64())),
    )?;
    single(
        encoder,
        "agentfleet:agent_calls_relayed",
        "Agent calls the head ran as sub-tasks (callers not on the mesh)",
        Counter,
        s.calls_relayed as f64,
    )?;
    single(
        encoder,
        "agentfleet:agent_lookups",
        "Agent lookups the head answered for workers calling over the mesh",
        Counter,
        s.agents_located as f64,
    )?;
    Ok(())
}

/// Per worker and model, the engine figures its heartbeats carry (vLLM's names).
fn models(encoder: &mut DescriptorEncoder, s: &ClusterStatus) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let models = || {
        s.workers.iter().flat_map(|w| {
            w.loaded.iter().map(move |m| {
                let labels =
                    ModelLabels { worker: w.registration.worker_id.clone(), model: m.id.clone() };
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
        series(encoder, name, help, kind, models().map(|(l, m)| (l, value(m))))?;
    }
    histograms(
        encoder,
        "agentfleet:time_to_first_token_seconds",
        "From a request reaching the model's engine to its first token",
        models().map(|(l, m)| (l, m.time_to_first_token.clone())),
    )?;
    histograms(
        encoder,
        "agentfleet:inter_token_latency_seconds",
        "Time between two tokens of one sequence",
        models().map(|(l, m)| (l, m.inter_token.clone())),
    )?;
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
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

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

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
}
