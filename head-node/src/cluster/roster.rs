//! The workers as the inspector lists them, made for a thousand of them: those a search
//! matches, sorted and cut to a page, and a summary of every match grouped by host, label
//! or model. Computed under the lock on borrowed entries: only the page's workers are
//! copied, so a page open on a large cluster costs a pass over the registry, not a copy of
//! it, each time it looks.
//!
//! A search's words ([`crate::search::Words`]) must all match a worker: `key=value` one of
//! its labels, `host:NAME` its host name, `model:ID` a model it has loaded or on disk, and
//! any other word a part of its id, host name, address, version, labels or models.

use std::collections::HashMap;

use super::views::{WorkerInfo, worker_info};
use super::*;
use crate::search::{Words, contains};

/// How the summary groups the matching workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerGroups {
    /// By host name.
    #[default]
    Host,
    /// By label: a worker is in the group of each of its `key=value` labels.
    Label,
    /// By model: a worker is in the group of each model it has loaded.
    Model,
}

/// The order of the listed workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerOrder {
    /// By id, numbers as counted (`w2` before `w10`).
    #[default]
    Name,
    /// The most tokens per second first, then the most tasks running.
    Busiest,
    /// The longest since a heartbeat first.
    Silent,
}

/// The question.
#[derive(Debug, Clone, Default)]
pub struct WorkerQuery {
    pub search: Words,
    pub groups: WorkerGroups,
    pub order: WorkerOrder,
    /// Matching workers skipped before the page, and the most on it.
    pub offset: usize,
    pub limit: usize,
    /// The most groups answered: the largest.
    pub max_groups: usize,
}

/// Workers that share a host, a label or a model, summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerGroup {
    /// The host name, `key=value`, or the model's id; empty for the workers without a label
    /// or a loaded model.
    pub key: String,
    /// The search word that lists these workers.
    pub search: String,
    pub workers: usize,
    pub slots: u64,
    pub running: u64,
    pub cpus: f64,
    pub free_cpus: f64,
    pub memory_bytes: u64,
    pub free_memory_bytes: u64,
    pub gpus: u64,
    pub tokens_per_s: f64,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub kv_bytes: u64,
    pub kv_capacity_bytes: u64,
    /// Workers not heard from for [`Roster::SILENT_AFTER`], and those stopping.
    pub silent: usize,
    pub draining: usize,
    pub on_mesh: usize,
}

/// The answer.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    /// The page of matching workers.
    pub workers: Vec<WorkerInfo>,
    /// Workers matching the search, and workers in all.
    pub matching: usize,
    pub total: usize,
    /// Workers on the mesh, of all.
    pub on_mesh: usize,
    /// The largest groups of the matching workers, largest first.
    pub groups: Vec<WorkerGroup>,
    /// Groups before the cut to `max_groups`.
    pub groups_total: usize,
}

impl Roster {
    /// A worker silent this long is marked (the page warns past the same).
    pub const SILENT_AFTER: Duration = Duration::from_secs(5);
}

/// Whether `w` matches one search word.
fn matches(w: &WorkerEntry, word: &str) -> bool {
    let r = &w.registration;
    let models = || {
        let loaded = w.heartbeat.models_loaded.iter().map(String::as_str);
        loaded.chain(r.models.iter().map(|m| m.id.as_str()))
    };
    if let Some(host) = word.strip_prefix("host:") {
        return r.hostname.eq_ignore_ascii_case(host);
    }
    if let Some(model) = word.strip_prefix("model:") {
        return models().any(|m| m == model);
    }
    if let Some((key, value)) = word.split_once('=') {
        return r.labels.get(key).is_some_and(|v| v == value);
    }
    [r.worker_id.as_str(), &r.hostname, &w.address, &r.version].iter().any(|f| contains(f, word))
        || r.labels.iter().any(|(k, v)| contains(k, word) || contains(v, word))
        || models().any(|m| contains(m, word))
}

fn tokens_per_s(w: &WorkerEntry) -> f64 {
    w.heartbeat.models.iter().map(|m| m.tokens_per_s).sum()
}

impl WorkerGroup {
    /// Adds `w`: its engines' figures for `model` only, when the group is a model's.
    fn add(&mut self, w: &WorkerEntry, silent: bool, model: Option<&str>) {
        let (r, h) = (&w.registration, &w.heartbeat);
        self.workers += 1;
        self.slots += u64::from(r.slots);
        self.running += w.running.len() as u64;
        self.cpus += r.resources.cpus;
        self.free_cpus += w.free.cpus;
        self.memory_bytes += r.resources.memory_bytes;
        self.free_memory_bytes += w.free.memory_bytes;
        self.gpus += u64::from(r.resources.gpus);
        for m in h.models.iter().filter(|m| model.is_none_or(|id| m.id == id)) {
            self.tokens_per_s += m.tokens_per_s;
            self.generated_tokens += m.generated_tokens;
            self.prompt_tokens += m.prompt_tokens;
            self.kv_bytes += m.kv_bytes;
            self.kv_capacity_bytes += m.kv_capacity_bytes;
        }
        self.silent += usize::from(silent);
        self.draining += usize::from(w.draining);
        self.on_mesh += usize::from(r.mesh.is_some());
    }
}

/// What a group is known by while the registry is borrowed: a host name, a label's key
/// and value, or a model's id (none: the workers without a label or a loaded model).
type GroupKey<'a> = Option<(&'a str, Option<&'a str>)>;

impl Cluster {
    /// The workers `query` asks for (every tenant sees every worker: the capacity they
    /// share).
    pub fn roster(&self, query: &WorkerQuery) -> Roster {
        let state = self.state.lock();
        let now = Instant::now();
        let mut listed: Vec<&WorkerEntry> = Vec::new();
        let mut groups: HashMap<GroupKey<'_>, WorkerGroup> = HashMap::new();
        let mut on_mesh = 0;
        let by_model = query.groups == WorkerGroups::Model;
        for w in state.workers.iter() {
            on_mesh += usize::from(w.registration.mesh.is_some());
            if !query.search.all(|word| matches(w, word)) {
                continue;
            }
            listed.push(w);
            let silent = now.saturating_duration_since(w.last_heartbeat) > Roster::SILENT_AFTER;
            let r = &w.registration;
            let mut keys: Vec<GroupKey<'_>> = match query.groups {
                WorkerGroups::Host => vec![Some((r.hostname.as_str(), None))],
                WorkerGroups::Label => {
                    r.labels.iter().map(|(k, v)| Some((k.as_str(), Some(v.as_str())))).collect()
                }
                WorkerGroups::Model => {
                    let h = &w.heartbeat;
                    let mut ids: Vec<&str> = h.models_loaded.iter().map(String::as_str).collect();
                    ids.extend(h.models.iter().map(|m| m.id.as_str()));
                    ids.sort_unstable();
                    ids.dedup();
                    ids.into_iter().map(|m| Some((m, None))).collect()
                }
            };
            if keys.is_empty() {
                keys.push(None);
            }
            for key in keys {
                let model = key.filter(|_| by_model).map(|(id, _)| id);
                groups.entry(key).or_default().add(w, silent, model);
            }
        }
        let groups_total = groups.len();
        let mut groups: Vec<(GroupKey<'_>, WorkerGroup)> = groups.into_iter().collect();
        groups.sort_by(|(a, ga), (b, gb)| {
            fn name<'a>(k: &GroupKey<'a>) -> &'a str {
                k.map_or("", |(name, _)| name)
            }
            fn value<'a>(k: &GroupKey<'a>) -> &'a str {
                k.and_then(|(_, v)| v).unwrap_or("")
            }
            gb.workers
                .cmp(&ga.workers)
                .then_with(|| timeline::natural(name(a), name(b)))
                .then_with(|| timeline::natural(value(a), value(b)))
        });
        groups.truncate(query.max_groups);
        let kind = query.groups;
        let groups = groups
            .into_iter()
            .map(|(key, group)| {
                let (key, search) = match (key, kind) {
                    (None, _) => (String::new(), String::new()),
                    (Some((name, Some(value))), _) => {
                        (format!("{name}={value}"), format!("{name}={value}"))
                    }
                    (Some((name, None)), WorkerGroups::Model) => {
                        (name.to_owned(), format!("model:{name}"))
                    }
                    (Some((name, None)), _) => (name.to_owned(), format!("host:{name}")),
                };
                WorkerGroup { key, search, ..group }
            })
            .collect();

        match query.order {
            WorkerOrder::Name => listed.sort_by(|a, b| timeline::natural(&a.id, &b.id)),
            WorkerOrder::Busiest => listed.sort_by(|a, b| {
                tokens_per_s(b)
                    .total_cmp(&tokens_per_s(a))
                    .then(b.running.len().cmp(&a.running.len()))
                    .then_with(|| timeline::natural(&a.id, &b.id))
            }),
            WorkerOrder::Silent => listed.sort_by(|a, b| {
                a.last_heartbeat
                    .cmp(&b.last_heartbeat)
                    .then_with(|| timeline::natural(&a.id, &b.id))
            }),
        }
        let workers = listed
            .iter()
            .skip(query.offset)
            .take(query.limit)
            .map(|w| worker_info(w, now))
            .collect();
        Roster {
            workers,
            matching: listed.len(),
            total: state.workers.len(),
            on_mesh,
            groups,
            groups_total,
        }
    }
}
