//! What the head counts as tasks move: submissions, first events and ends, by tenant and
//! agent, since it started (tasks restored from the store are counted when they end, not
//! as submitted). The cluster calls these under its lock; a scrape takes a view of one
//! tenant's series, or of all of them for an admin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_proto::TaskState;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the task latency histograms: an echo task's few milliseconds
/// to an agent working for minutes.
const TASK_SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    tenant: String,
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    tenant: String,
    agent: String,
    state: &'static str,
}

/// One tenant's tasks of one agent. Counters and histograms are shared handles: a view
/// clones them, and the scrape reads them without the lock.
#[derive(Clone, Debug, Default)]
struct Series {
    submitted: Counter,
    /// Tasks that had a first event from a worker: started running.
    started: Counter,
    /// Once a task of theirs had a first event.
    first_event: Option<Histogram>,
    /// By final state, once one ended in it.
    ended: BTreeMap<&'static str, (Counter, Histogram)>,
}

/// Every tenant's series, by tenant and agent, and the events workers sent.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    series: Mutex<BTreeMap<Arc<str>, BTreeMap<String, Series>>>,
    worker_events: AtomicU64,
}

impl TaskMetrics {
    fn with(&self, tenant: &Arc<str>, agent: &str, f: impl FnOnce(&mut Series)) {
        let mut series = self.series.lock();
        let agents = match series.get_mut(&**tenant) {
            Some(agents) => agents,
            None => series.entry(tenant.clone()).or_default(),
        };
        match agents.get_mut(agent) {
            Some(s) => f(s),
            None => f(agents.entry(agent.to_owned()).or_default()),
        }
    }

    pub(crate) fn submitted(&self, tenant: &Arc<str>, agent: &str) {
        self.with(tenant, agent, |s| {
            s.submitted.inc();
        });
    }

    /// A task's first event from a worker arrived `after` its submission.
    pub(crate) fn first_event(&self, tenant: &Arc<str>, agent: &str, after: Duration) {
        self.with(tenant, agent, |s| {
            s.started.inc();
            s.first_event.get_or_insert_with(histogram).observe(after.as_secs_f64());
        });
    }

    /// A task ended in `state`, `after` its submission.
    pub(crate) fn ended(&self, tenant: &Arc<str>, agent: &str, state: TaskState, after: Duration) {
        self.with(tenant, agent, |s| {
            let (count, took) =
                s.ended.entry(state.as_str()).or_insert_with(|| (Counter::default(), histogram()));
            count.inc();
            took.observe(after.as_secs_f64());
        });
    }

    /// How many of `tenant`'s tasks were submitted, and how many ended in each final state,
    /// since the head started.
    pub(crate) fn totals_of(&self, tenant: &str) -> (u64, crate::tasks::TaskCounters) {
        let series = self.series.lock();
        let mut counters = crate::tasks::TaskCounters::default();
        let mut submitted = 0;
        for s in series.get(tenant).into_iter().flat_map(|agents| agents.values()) {
            submitted += s.submitted.get();
            let ended = |state: TaskState| s.ended.get(state.as_str()).map_or(0, |(n, _)| n.get());
            counters.completed += ended(TaskState::Completed);
            counters.failed += ended(TaskState::Failed);
            counters.canceled += ended(TaskState::Canceled);
        }
        (submitted, counters)
    }

    /// How many tasks had a first event from a worker since the head started: `tenant`'s,
    /// or every tenant's.
    pub(crate) fn started(&self, tenant: Option<&str>) -> u64 {
        let series = self.series.lock();
        let of = |agents: &BTreeMap<String, Series>| -> u64 {
            agents.values().map(|s| s.started.get()).sum()
        };
        match tenant {
            Some(tenant) => series.get(tenant).map_or(0, of),
            None => series.values().map(of).sum(),
        }
    }

    /// Events workers sent since the head started.
    pub(crate) fn worker_events_total(&self) -> u64 {
        self.worker_events.load(Ordering::Relaxed)
    }

    pub(crate) fn worker_events(&self, n: usize) {
        self.worker_events.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The series a scrape shows: `tenant`'s, or every tenant's and the cluster-wide
    /// counters for `None` (an admin).
    pub(crate) fn view(&self, tenant: Option<&str>) -> TaskView {
        let series = self.series.lock();
        let series = series
            .iter()
            .filter(|(t, _)| tenant.is_none_or(|wanted| ***t == *wanted))
            .flat_map(|(t, agents)| {
                agents.iter().map(|(agent, s)| {
                    (TaskLabels { tenant: t.to_string(), agent: agent.clone() }, s.clone())
                })
            })
            .collect();
        TaskView { series, worker_events: tenant.is_none().then(|| self.worker_events_total()) }
    }
}

fn histogram() -> Histogram {
    Histogram::new(TASK_SECONDS)
}

/// The task series one scrape shows.
#[derive(Debug)]
pub(crate) struct TaskView {
    series: Vec<(TaskLabels, Series)>,
    worker_events: Option<u64>,
}

impl Collector for TaskView {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as CounterType, Histogram as HistogramType};
        let mut metric = encoder.encode_descriptor(
            "agentfleet:tasks_submitted",
            "Tasks submitted, by tenant and agent (agent calls included)",
            None,
            CounterType,
        )?;
        for (labels, s) in &self.series {
            s.submitted.encode(metric.encode_family(labels)?)?;
        }
        let ends = || {
            self.series.iter().flat_map(|(l, s)| {
                s.ended.iter().map(|(state, metrics)| {
                    let labels =
                        EndLabels { tenant: l.tenant.clone(), agent: l.agent.clone(), state };
                    (labels, metrics)
                })
            })
        };
        let mut metric = encoder.encode_descriptor(
            "agentfleet:tasks_finished",
            "Tasks that ended, by tenant, agent and final state (completed, failed, canceled)",
            None,
            CounterType,
        )?;
        for (labels, (count, _)) in ends() {
            count.encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "agentfleet:task_first_event_seconds",
            "From a task's submission to the first event its worker sent, by tenant and agent",
            None,
            HistogramType,
        )?;
        for (labels, s) in &self.series {
            if let Some(first) = &s.first_event {
                first.encode(metric.encode_family(labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "agentfleet:task_duration_seconds",
            "From a task's submission to its end, by tenant, agent and final state",
            None,
            HistogramType,
        )?;
        for (labels, (_, took)) in ends() {
            took.encode(metric.encode_family(&labels)?)?;
        }
        if let Some(events) = self.worker_events {
            encoder
                .encode_descriptor(
                    "agentfleet:worker_events",
                    "Task events received from workers (rate() gives events per second)",
                    None,
                    CounterType,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&events, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn scrape(view: TaskView) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(view));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn counters_and_histograms_by_tenant_agent_and_state() {
        let m = TaskMetrics::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        m.submitted(&a, "x");
        m.submitted(&a, "x");
        m.submitted(&b, "x");
        m.first_event(&a, "x", Duration::from_millis(3));
        m.ended(&a, "x", TaskState::Completed, Duration::from_millis(20));
        m.ended(&a, "x", TaskState::Failed, Duration::from_secs(2));
        m.worker_events(7);
        let all = scrape(m.view(None));
        for line in [
            "# TYPE agentfleet:tasks_submitted counter",
            "agentfleet:tasks_submitted_total{tenant=\"a\",agent=\"x\"} 2",
            "agentfleet:tasks_submitted_total{tenant=\"b\",agent=\"x\"} 1",
            "agentfleet:tasks_finished_total{tenant=\"a\",agent=\"x\",state=\"completed\"} 1",
            "agentfleet:tasks_finished_total{tenant=\"a\",agent=\"x\",state=\"failed\"} 1",
            "agentfleet:task_first_event_seconds_count{tenant=\"a\",agent=\"x\"} 1",
            "agentfleet:task_duration_seconds_bucket{le=\"0.025\",tenant=\"a\",agent=\"x\",state=\"completed\"} 1",
            "agentfleet:task_duration_seconds_bucket{le=\"1.0\",tenant=\"a\",agent=\"x\",state=\"failed\"} 0",
            "agentfleet:task_duration_seconds_bucket{le=\"2.5\",tenant=\"a\",agent=\"x\",state=\"failed\"} 1",
            "agentfleet:worker_events_total 7",
        ] {
            assert!(all.lines().any(|l| l == line), "{line:?} missing from\n{all}");
        }
        // A tenant's view: its own series, nothing cluster-wide.
        let mine = scrape(m.view(Some("b")));
        assert!(mine.contains("agentfleet:tasks_submitted_total{tenant=\"b\",agent=\"x\"} 1"));
        assert!(!mine.contains("tenant=\"a\""), "{mine}");
        assert!(!mine.contains("worker_events"), "{mine}");
    }
}
