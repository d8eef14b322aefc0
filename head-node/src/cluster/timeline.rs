//! The inspector's timeline: which worker (or agent) ran which task attempt, and when.
//!
//! Read from what the head already keeps, without a record of its own: the tasks that
//! finished within the window (the table's finishing order, walked from its newest end and
//! stopped once past the window) and the unfinished ones (the table's index by state). An
//! attempt's start is its `Scheduled` event and its end the next `Retrying` or terminal
//! event; only a task that was retried has its whole log read. So a look costs the tasks of
//! the window, not every retained task, and holds the lock for that walk only.
//!
//! When the window holds more attempts than a page can draw as bars, the answer is a
//! density: per row, how many attempts ran in each of [`Timeline::BUCKETS`] slices of the
//! window, and how many of them failed.

use std::collections::HashMap;

use super::*;

/// What a timeline's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineRows {
    Workers,
    Agents,
}

/// The question: a window of time, and how to draw it.
#[derive(Debug, Clone)]
pub struct TimelineQuery {
    pub since_us: u64,
    pub until_us: u64,
    pub rows: TimelineRows,
    /// Only this agent's tasks.
    pub agent: Option<String>,
    /// The most attempts answered as bars; past it, a density.
    pub max_bars: usize,
    /// The most rows answered (the busiest in the window).
    pub max_rows: usize,
}

/// How an attempt ended, as far as it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Still running, in this state.
    Running(TaskState),
    /// The task ended with it.
    Ended(TaskState),
    /// Its worker was lost (or it failed and may be retried): another attempt followed.
    Retried,
}

impl AttemptEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running(state) | Self::Ended(state) => state.as_str(),
            Self::Retried => "retried",
        }
    }

    fn failed(self) -> bool {
        matches!(self, Self::Retried | Self::Ended(TaskState::Failed))
    }
}

/// One attempt of a task on a worker.
#[derive(Debug, Clone)]
pub struct Bar {
    pub task_id: TaskId,
    pub agent: String,
    pub worker: String,
    pub attempt: u32,
    pub submitted_us: u64,
    pub start_us: u64,
    /// 0 while it runs.
    pub end_us: u64,
    pub end: AttemptEnd,
    /// The task that called this one as a tool.
    pub parent: Option<TaskId>,
}

/// A row's attempts per slice of the window: how many ran in it, and how many of those
/// ended failed (or were retried) in it.
#[derive(Debug, Clone)]
pub struct Density {
    pub ran: Vec<u32>,
    pub failed: Vec<u32>,
}

/// A row of the timeline.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    pub key: String,
    /// Attempts in the window.
    pub attempts: usize,
    /// Time its attempts ran within the window, summed.
    pub busy_us: u64,
    /// When the window is too dense for bars.
    pub density: Option<Density>,
}

/// The answer.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub since_us: u64,
    pub until_us: u64,
    pub rows: Vec<TimelineRow>,
    /// Rows with attempts in the window, shown or not.
    pub rows_total: usize,
    /// Every attempt in the window on the rows shown, when they are few enough.
    pub bars: Vec<Bar>,
    /// Attempts in the window on every row.
    pub attempts: usize,
    /// Drawn as a density (`rows[].density`) instead of bars.
    pub dense: bool,
}

impl Timeline {
    /// Slices of the window a density counts in.
    pub const BUCKETS: usize = 240;
}

/// A finished task may be recorded as finished a little after the timestamp it ended with
/// (its terminal event's, from the worker's clock): the walk goes this far past the window.
const CLOCK_SLACK_US: u64 = 10_000_000;

/// One attempt, borrowed from the table during the walk.
struct Span<'a> {
    task: &'a TaskEntry,
    worker: &'a str,
    attempt: u32,
    start_us: u64,
    end_us: u64,
    end: AttemptEnd,
}

impl<'a> Span<'a> {
    fn row(&self, rows: TimelineRows) -> &'a str {
        match rows {
            TimelineRows::Workers => self.worker,
            TimelineRows::Agents => &self.task.agent,
        }
    }
}

/// Appends the attempts of `task` that ran on a worker to `out`, in order (into a
/// buffer shared by the walk: most tasks have one attempt, and a look reads thousands).
fn attempts_of<'a>(task: &'a TaskEntry, out: &mut Vec<Span<'a>>) {
    fn open<'s, 'a>(out: &'s mut [Span<'a>]) -> Option<&'s mut Span<'a>> {
        out.last_mut().filter(|s| s.end_us == 0)
    }
    let first = out.len();
    for event in task.stored_events_from(1) {
        match &event.kind {
            EventKind::Scheduled { worker_id } => {
                if out.len() > first
                    && let Some(open) = open(out)
                {
                    // A start without an end: the head lost the attempt between them.
                    (open.end_us, open.end) = (event.timestamp_us.max(1), AttemptEnd::Retried);
                }
                out.push(Span {
                    task,
                    worker: worker_id,
                    attempt: event.attempt,
                    start_us: event.timestamp_us,
                    end_us: 0,
                    end: AttemptEnd::Running(TaskState::Scheduled),
                });
                // Never retried: nothing after the start changes the bar but its end, which
                // the task itself knows.
                if task.attempt <= 1 {
                    break;
                }
            }
            EventKind::Retrying { .. } if out.len() > first => {
                if let Some(open) = open(out) {
                    (open.end_us, open.end) = (event.timestamp_us.max(1), AttemptEnd::Retried);
                }
            }
            kind if kind.is_terminal() && out.len() > first => {
                if let Some(open) = open(out) {
                    (open.end_us, open.end) =
                        (event.timestamp_us.max(1), AttemptEnd::Ended(task.state));
                }
            }
            _ => {}
        }
    }
    if out.len() > first
        && let Some(last) = open(out)
    {
        last.end = AttemptEnd::Running(task.state);
        if task.state.is_terminal() {
            let end = task.finished_at_us.max(last.start_us).max(1);
            (last.end_us, last.end) = (end, AttemptEnd::Ended(task.state));
        }
    }
}

impl Cluster {
    /// The attempts that ran within the query's window on the rows it asks for.
    pub fn timeline(&self, who: &Principal, query: &TimelineQuery) -> Timeline {
        let (since, until) = (query.since_us, query.until_us.max(query.since_us + 1));
        let mut guard = self.state.lock();
        guard.tasks.settle();
        let tasks = &guard.tasks;
        let wanted = |t: &TaskEntry| {
            who.sees(&t.tenant) && query.agent.as_deref().is_none_or(|a| a == t.agent)
        };
        let mut spans: Vec<Span<'_>> = Vec::new();
        for task in tasks.unfinished().filter(|t| wanted(t)).chain(
            tasks
                .finished_newest_first()
                .take_while(|t| t.finished_at_us.saturating_add(CLOCK_SLACK_US) >= since)
                .filter(|t| wanted(t)),
        ) {
            let from = spans.len();
            attempts_of(task, &mut spans);
            let mut i = from;
            while i < spans.len() {
                let s = &spans[i];
                if s.start_us < until && (s.end_us == 0 || s.end_us >= since) {
                    i += 1;
                } else {
                    spans.swap_remove(i);
                }
            }
        }

        // Rows by the time their attempts ran within the window; the busiest are shown.
        let mut by_row: HashMap<&str, (usize, u64)> = HashMap::new();
        for span in &spans {
            let end = if span.end_us == 0 { until } else { span.end_us.min(until) };
            let row = by_row.entry(span.row(query.rows)).or_default();
            row.0 += 1;
            row.1 += end.saturating_sub(span.start_us.max(since));
        }
        let rows_total = by_row.len();
        let mut shown: Vec<(&str, (usize, u64))> = by_row.into_iter().collect();
        shown.sort_unstable_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
        shown.truncate(query.max_rows);
        shown.sort_unstable_by(|a, b| natural(a.0, b.0));
        let index: HashMap<&str, usize> = shown.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
        let attempts = spans.len();
        spans.retain(|s| index.contains_key(s.row(query.rows)));
        let dense = spans.len() > query.max_bars;

        let mut rows: Vec<TimelineRow> = shown
            .iter()
            .map(|(key, (attempts, busy_us))| TimelineRow {
                key: (*key).to_owned(),
                attempts: *attempts,
                busy_us: *busy_us,
                density: dense.then(|| Density {
                    ran: vec![0; Timeline::BUCKETS],
                    failed: vec![0; Timeline::BUCKETS],
                }),
            })
            .collect();
        let mut bars = Vec::new();
        if dense {
            let width = (until - since).div_ceil(Timeline::BUCKETS as u64).max(1);
            let slice = |us: u64| {
                ((us.clamp(since, until - 1) - since) / width).min(Timeline::BUCKETS as u64 - 1)
                    as usize
            };
            for span in &spans {
                let Some(density) = rows[index[span.row(query.rows)]].density.as_mut() else {
                    continue;
                };
                let last = slice(if span.end_us == 0 { until } else { span.end_us });
                for ran in &mut density.ran[slice(span.start_us)..=last] {
                    *ran += 1;
                }
                if span.end.failed() {
                    density.failed[last] += 1;
                }
            }
        } else {
            bars = spans
                .iter()
                .map(|s| Bar {
                    task_id: s.task.id.clone(),
                    agent: s.task.agent.clone(),
                    worker: s.worker.to_owned(),
                    attempt: s.attempt,
                    submitted_us: s.task.submitted_at_us,
                    start_us: s.start_us,
                    end_us: s.end_us,
                    end: s.end,
                    parent: s.task.parent.as_ref().map(|(id, _)| id.clone()),
                })
                .collect();
            bars.sort_unstable_by_key(|b| (b.start_us, b.attempt));
        }
        Timeline { since_us: since, until_us: until, rows, rows_total, bars, attempts, dense }
    }
}

/// Names with numbers in them in the order people count: `w2` before `w10`.
pub(super) fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(s: &str) -> (&str, Option<u128>) {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (stem, number) = s.split_at(s.len() - digits);
        (stem, number.parse::<u128>().ok())
    }
    split(a).cmp(&split(b)).then(a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::natural;

    #[test]
    fn numbered_names_sort_as_counted() {
        let mut names = vec!["w10", "w2", "w1", "b", "a3", "w"];
        names.sort_by(|a, b| natural(a, b));
        assert_eq!(names, ["a3", "b", "w", "w1", "w2", "w10"]);
    }
}
