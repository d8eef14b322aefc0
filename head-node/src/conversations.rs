//! Conversations: the turns of each context (an agent's `context_id`, in one tenant) that
//! the head hands with the context's next task, so that any worker continues it. They are
//! records of the head's store (replayed on start, taken over by a standby): a worker lost,
//! a head restarted or an agent registered again keeps a conversation's past. The worker
//! holds no copy; what it keeps for a conversation is its prefix cache, which placement
//! prefers (the context's last worker).
//!
//! Bounded: per conversation in turns and bytes (the oldest exchanges go first, as a
//! model's context window drops them), and per tenant in conversations and bytes (the least
//! recently continued goes first). A client that opens many contexts with long turns
//! cannot grow the head past these, nor crowd out another tenant's conversations.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use fleet_proto::{CallMade, EventKind, TaskEvent, Turn};

/// Turns kept per conversation (user, assistant and tool turns).
const MAX_TURNS: usize = 64;
/// Bytes of text kept per conversation: 1 MiB, past any served model's context window.
const MAX_CONVERSATION_BYTES: usize = 1 << 20;
/// Conversations kept per tenant.
const MAX_CONVERSATIONS: usize = 100_000;
/// Bytes of text kept per tenant over all its conversations.
const MAX_TENANT_BYTES: usize = 256 << 20;

/// Whose conversation: a context id is the client's, so two tenants, or two agents of one
/// tenant, may pick the same one without sharing a past. Ordered by tenant, then context:
/// a context's conversations with every agent are neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tenant: Arc<str>,
    pub context_id: String,
    pub agent: String,
}

impl Key {
    /// The key the store files the conversation under (tenant, agent and context id hold
    /// no U+001F: the doors refuse them).
    pub fn stored(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.tenant, self.agent, self.context_id)
    }
}

/// A conversation as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub tenant: String,
    pub agent: String,
    pub context_id: String,
    pub turns: Vec<Turn>,
    /// The task whose exchange was added last: a task is added once.
    pub last_task: String,
    pub updated_at_us: u64,
    /// The worker that ran the last exchange.
    pub worker_id: String,
}

/// A change to store: the conversation as it is now, or `None` where it was deleted.
pub type Change = (String, Option<Record>);

#[derive(Debug)]
struct Conversation {
    turns: VecDeque<Turn>,
    bytes: usize,
    last_task: String,
    updated_at_us: u64,
    worker_id: String,
    /// Its place in the tenant's order of use (`Conversations::order`).
    tick: u64,
}

/// What one tenant's conversations hold.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    conversations: usize,
    bytes: usize,
}

/// A conversation's summary, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub agent: String,
    pub context_id: String,
    pub turns: usize,
    pub bytes: usize,
    pub updated_at_us: u64,
}

/// Every conversation the head keeps.
#[derive(Debug, Default)]
pub struct Conversations {
    entries: BTreeMap<Key, Conversation>,
    /// (tenant, tick) -> key: each tenant's conversations, least recently continued first.
    order: BTreeMap<(Arc<str>, u64), Key>,
    held: HashMap<Arc<str>, Held>,
    tick: u64,
}

fn turn_bytes(turn: &Turn) -> usize {
    turn.content.len()
        + turn.tool_call_id.len()
        + turn
            .tool_calls
            .iter()
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum::<usize>()
}

impl Conversations {
    /// The turns of `key` so far (empty: no such conversation).
    pub fn turns(&self, key: &Key) -> Vec<Turn> {
        self.entries.get(key).map(|c| c.turns.iter().cloned().collect()).unwrap_or_default()
    }

    /// The worker that ran the conversation's last exchange.
    pub fn worker(&self, key: &Key) -> Option<&str> {
        self.entries.get(key).map(|c| c.worker_id.as_str()).filter(|w| !w.is_empty())
    }

    /// Adds a finished task's exchange (its input, then the turns of its answer) to the
    /// conversation of `key`; returns the changes to store: the conversation, and those the
    /// tenant's bounds let go. Nothing when the task's exchange is there already.
    pub fn add(
        &mut self,
        key: &Key,
        task_id: &str,
        exchange: Vec<Turn>,
        worker_id: &str,
        now_us: u64,
    ) -> Vec<Change> {
        if self.entries.get(key).is_some_and(|c| c.last_task == task_id) {
            return Vec::new();
        }
        self.tick += 1;
        let tick = self.tick;
        let held = self.held.entry(key.tenant.clone()).or_default();
        let conversation = match self.entries.get_mut(key) {
            Some(c) => {
                self.order.remove(&(key.tenant.clone(), c.tick));
                c
            }
            None => {
                held.conversations += 1;
                self.entries.entry(key.clone()).or_insert(Conversation {
                    turns: VecDeque::new(),
                    bytes: 0,
                    last_task: String::new(),
                    updated_at_us: 0,
                    worker_id: String::new(),
                    tick,
                })
            }
        };
        self.order.insert((key.tenant.clone(), tick), key.clone());
        conversation.tick = tick;
        conversation.last_task = task_id.to_owned();
        conversation.updated_at_us = now_us;
        conversation.worker_id = worker_id.to_owned();
        let before = conversation.bytes;
        for turn in exchange {
            conversation.bytes += turn_bytes(&turn);
            conversation.turns.push_back(turn);
        }
        // The oldest turns go first, and then up to the next user turn: a conversation never
        // starts with an answer or a tool's result whose question is gone.
        let mut dropping = false;
        while let Some(first) = conversation.turns.front() {
            let over =
                conversation.turns.len() > MAX_TURNS || conversation.bytes > MAX_CONVERSATION_BYTES;
            let orphaned = dropping && first.role != "user";
            if !over && !orphaned {
                break;
            }
            dropping = true;
            let gone = conversation.turns.pop_front().map_or(0, |t| turn_bytes(&t));
            conversation.bytes -= gone;
        }
        held.bytes = held.bytes + conversation.bytes - before;
        let mut changes = vec![(key.stored(), Some(self.record(key)))];
        changes.extend(self.bound(&key.tenant, key));
        changes
    }

    /// Lets the tenant's least recently continued conversations go while it holds more
    /// than its bounds, never `keep` (the one just continued).
    fn bound(&mut self, tenant: &Arc<str>, keep: &Key) -> Vec<Change> {
        let mut gone = Vec::new();
        loop {
            let held = self.held.get(tenant).copied().unwrap_or_default();
            if held.conversations <= MAX_CONVERSATIONS && held.bytes <= MAX_TENANT_BYTES {
                break;
            }
            let oldest = self
                .order
                .range((tenant.clone(), 0)..=(tenant.clone(), u64::MAX))
                .map(|(_, k)| k)
                .find(|k| *k != keep)
                .cloned();
            let Some(oldest) = oldest else { break };
            self.remove(&oldest);
            gone.push((oldest.stored(), None));
        }
        gone
    }

    /// Deletes a conversation; whether there was one.
    pub fn remove(&mut self, key: &Key) -> bool {
        let Some(c) = self.entries.remove(key) else { return false };
        self.order.remove(&(key.tenant.clone(), c.tick));
        if let Some(held) = self.held.get_mut(&key.tenant) {
            held.conversations -= 1;
            held.bytes -= c.bytes;
            if held.conversations == 0 {
                self.held.remove(&key.tenant);
            }
        }
        true
    }

    /// The conversation of `key` as the store keeps it.
    pub fn record(&self, key: &Key) -> Record {
        let c = self.entries.get(key);
        Record {
            tenant: key.tenant.to_string(),
            agent: key.agent.clone(),
            context_id: key.context_id.clone(),
            turns: c.map(|c| c.turns.iter().cloned().collect()).unwrap_or_default(),
            last_task: c.map(|c| c.last_task.clone()).unwrap_or_default(),
            updated_at_us: c.map_or(0, |c| c.updated_at_us),
            worker_id: c.map(|c| c.worker_id.clone()).unwrap_or_default(),
        }
    }

    /// The tenant's conversations in `context_id` (every context when empty) with `agent`
    /// (every agent when empty), the most recently continued first: at most `limit`, and
    /// whether there were more. A context's are read from its range of keys, never by
    /// walking the tenant's.
    pub fn list(
        &self,
        tenant: &str,
        context_id: &str,
        agent: &str,
        limit: usize,
    ) -> (Vec<Summary>, bool) {
        let tenant: Arc<str> = tenant.into();
        let wanted = |k: &Key| agent.is_empty() || k.agent == agent;
        let mut found: Vec<(&Key, &Conversation)> = if context_id.is_empty() {
            self.order
                .range((tenant.clone(), 0)..=(tenant, u64::MAX))
                .rev()
                .filter(|(_, k)| wanted(k))
                .take(limit.saturating_add(1))
                .filter_map(|(_, k)| Some((k, self.entries.get(k)?)))
                .collect()
        } else {
            let first = Key { tenant, context_id: context_id.to_owned(), agent: String::new() };
            let mut in_context: Vec<_> = self
                .entries
                .range(&first..)
                .take_while(|(k, _)| k.tenant == first.tenant && k.context_id == context_id)
                .filter(|(k, _)| wanted(k))
                .collect();
            in_context.sort_by_key(|(_, c)| std::cmp::Reverse(c.tick));
            in_context
        };
        let more = found.len() > limit;
        found.truncate(limit);
        let summaries = found
            .into_iter()
            .map(|(k, c)| Summary {
                agent: k.agent.clone(),
                context_id: k.context_id.clone(),
                turns: c.turns.len(),
                bytes: c.bytes,
                updated_at_us: c.updated_at_us,
            })
            .collect();
        (summaries, more)
    }

    /// Takes back the conversations the store holds (in any order: the oldest continued
    /// goes first when bounds bite).
    pub fn restore(&mut self, mut records: Vec<Record>) {
        records.sort_by_key(|r| r.updated_at_us);
        for r in records {
            let key = Key { tenant: r.tenant.into(), context_id: r.context_id, agent: r.agent };
            self.remove(&key);
            self.add(&key, &r.last_task, r.turns, &r.worker_id, r.updated_at_us);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a task's model said in one attempt, turn by turn: its text, the tool calls it made
/// and their results, folded from the attempt's events.
#[derive(Default)]
struct Said {
    turns: Vec<Turn>,
    /// Text not yet closed into an assistant turn.
    text: String,
    /// Calls not yet closed into an assistant turn: made, not yet answered.
    calls: Vec<CallMade>,
}

impl Said {
    fn of(events: &[Arc<TaskEvent>]) -> Self {
        let mut said = Self::default();
        // A result answers a call announced before it; one whose call was never announced
        // (a call refused by a person before it was made) has no turn to answer.
        let mut announced = std::collections::HashSet::new();
        for event in events {
            match &event.kind {
                EventKind::TextDelta { text, .. } => {
                    if !said.calls.is_empty() {
                        said.close();
                    }
                    said.text.push_str(text);
                }
                EventKind::ToolCall { call_id, name, arguments, .. } => {
                    announced.insert(call_id.as_str());
                    said.calls.push(CallMade {
                        id: call_id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                    });
                }
                EventKind::ToolResult { call_id, .. } if !announced.contains(call_id.as_str()) => {}
                EventKind::ToolResult { call_id, output, is_error } => {
                    said.close();
                    said.turns.push(Turn {
                        role: "tool".into(),
                        content: output.clone(),
                        tool_calls: Vec::new(),
                        tool_call_id: call_id.clone(),
                        is_error: *is_error,
                    });
                }
                _ => {}
            }
        }
        said
    }

    /// Closes the open text and calls into an assistant turn, if there are any.
    fn close(&mut self) {
        if !self.text.is_empty() || !self.calls.is_empty() {
            self.turns.push(Turn {
                role: "assistant".into(),
                content: std::mem::take(&mut self.text),
                tool_calls: std::mem::take(&mut self.calls),
                tool_call_id: String::new(),
                is_error: false,
            });
        }
    }
}

/// The turns a task's attempt adds to its conversation: the input, then what it said, the
/// calls it made and their results, in order (`events` are the attempt's).
pub fn exchange(input: &str, events: &[Arc<TaskEvent>]) -> Vec<Turn> {
    let user = Turn { role: "user".into(), content: input.to_owned(), ..Turn::default() };
    let said = Said::of(events);
    let mut turns = Vec::with_capacity(said.turns.len() + 2);
    turns.push(user);
    turns.extend(said.turns);
    // The answer, even an empty one: the next user turn follows an assistant turn.
    turns.push(Turn {
        role: "assistant".into(),
        content: said.text,
        tool_calls: said.calls,
        tool_call_id: String::new(),
        is_error: false,
    });
    turns
}

/// The steps one attempt of a task recorded, for a retry to go on from: its assistant turns
/// with the calls they made, and the calls' results. A last turn's calls without results
/// were sent when the attempt was lost; text after the last call was being generated and is
/// dropped (the retry generates it again).
pub fn steps(events: &[Arc<TaskEvent>]) -> Vec<Turn> {
    let mut said = Said::of(events);
    if !said.calls.is_empty() {
        said.close();
    }
    said.turns
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::TaskId;

    fn key(tenant: &str, context: &str) -> Key {
        Key { tenant: tenant.into(), agent: "a".into(), context_id: context.into() }
    }

    fn said(user: &str, answer: &str) -> Vec<Turn> {
        let event = |kind| {
            Arc::new(TaskEvent {
                task_id: TaskId::new("t"),
                seq: 1,
                attempt: 1,
                timestamp_us: 0,
                kind,
            })
        };
        exchange(user, &[event(EventKind::TextDelta { text: answer.into(), logprobs: vec![] })])
    }

    #[test]
    fn keeps_turns_per_context_and_adds_a_task_once() {
        let mut all = Conversations::default();
        let c1 = key("t", "c1");
        all.add(&c1, "t1", said("hi", "hello"), "w1", 1);
        assert!(all.add(&c1, "t1", said("hi", "hello"), "w1", 2).is_empty(), "added twice");
        assert_eq!(all.turns(&c1).len(), 2);
        assert_eq!(all.turns(&key("t", "c2")).len(), 0);
        assert_eq!(all.turns(&key("u", "c1")).len(), 0, "another tenant's c1 is another");
        for i in 0..100 {
            all.add(&c1, &format!("n{i}"), said(&format!("u{i}"), &format!("a{i}")), "w2", 3);
        }
        let turns = all.turns(&c1);
        assert_eq!(turns.len(), MAX_TURNS);
        assert_eq!(turns[0].role, "user");
        assert_eq!(turns.last().map(|t| t.content.as_str()), Some("a99"));
        assert_eq!(all.worker(&c1), Some("w2"));
    }

    #[test]
    fn an_attempt_s_steps_end_with_its_unanswered_calls_and_drop_its_unfinished_text() {
        let event = |kind| {
            Arc::new(TaskEvent {
                task_id: TaskId::new("t"),
                seq: 1,
                attempt: 1,
                timestamp_us: 0,
                kind,
            })
        };
        let text = |t: &str| event(EventKind::TextDelta { text: t.into(), logprobs: vec![] });
        let call = |id: &str| {
            event(EventKind::ToolCall {
                call_id: id.into(),
                name: "pay".into(),
                arguments: "{}".into(),
                traceparent: String::new(),
                replayed: false,
            })
        };
        let result = |id: &str| {
            event(EventKind::ToolResult {
                call_id: id.into(),
                output: "ok".into(),
                is_error: false,
            })
        };
        let answered = [text("first"), call("c1"), result("c1")];
        let steps = steps(&answered);
        assert_eq!(steps.len(), 2);
        assert_eq!(
            (steps[0].content.as_str(), steps[0].tool_calls[0].id.as_str()),
            ("first", "c1")
        );
        assert_eq!(steps[1].tool_call_id, "c1");
        // Text being written when the attempt was lost is written again by the retry.
        let writing = [text("first"), call("c1"), result("c1"), text("then")];
        assert_eq!(super::steps(&writing).len(), 2);
        // A call sent without a result ends the steps: the retry decides whether to make it.
        let in_flight = [text("first"), call("c1"), result("c1"), text("then"), call("c2")];
        let steps = super::steps(&in_flight);
        assert_eq!(steps.len(), 3);
        assert_eq!((steps[2].content.as_str(), steps[2].tool_calls[0].id.as_str()), ("then", "c2"));
        // A result of a call never announced (a person refused it) answers no turn.
        let refused = [text("first"), result("c0"), call("c1"), result("c1")];
        let steps = super::steps(&refused);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].tool_call_id, "c1");
    }

    #[test]
    fn tool_calls_and_results_are_turns_of_their_own() {
        let event = |seq, kind| {
            Arc::new(TaskEvent {
                task_id: TaskId::new("t"),
                seq,
                attempt: 1,
                timestamp_us: 0,
                kind,
            })
        };
        let turns = exchange(
            "add 2 and 3",
            &[
                event(2, EventKind::TextDelta { text: "let me see".into(), logprobs: vec![] }),
                event(
                    3,
                    EventKind::ToolCall {
                        call_id: "c1".into(),
                        name: "add".into(),
                        arguments: "{\"a\":2,\"b\":3}".into(),
                        traceparent: String::new(),
                        replayed: false,
                    },
                ),
                event(
                    4,
                    EventKind::ToolResult {
                        call_id: "c1".into(),
                        output: "5".into(),
                        is_error: false,
                    },
                ),
                event(5, EventKind::TextDelta { text: "it is 5".into(), logprobs: vec![] }),
            ],
        );
        let roles: Vec<_> = turns.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
        assert_eq!(turns[1].content, "let me see");
        assert_eq!(turns[1].tool_calls[0].name, "add");
        assert_eq!(turns[2].tool_call_id, "c1");
        assert_eq!(turns[3].content, "it is 5");
    }

    #[test]
    fn long_turns_are_bounded_per_conversation_and_per_tenant() {
        let mut all = Conversations::default();
        let long = "x".repeat(300 << 10);
        let c1 = key("t", "c1");
        for i in 0..4 {
            all.add(&c1, &format!("t{i}"), said(&long, "ok"), "w", i);
        }
        let kept: usize = all.turns(&c1).iter().map(turn_bytes).sum();
        assert!(kept <= MAX_CONVERSATION_BYTES, "{kept} bytes kept in one conversation");
        assert_eq!(all.turns(&c1)[0].role, "user");
        let mut deleted = 0;
        for i in 0..1000 {
            let changes = all.add(&key("t", &format!("many-{i}")), "t", said(&long, "ok"), "w", 9);
            deleted += changes.iter().filter(|(_, r)| r.is_none()).count();
        }
        let held = all.held[&Arc::<str>::from("t")];
        assert!(
            held.bytes <= MAX_TENANT_BYTES,
            "{} bytes over a tenant's conversations",
            held.bytes
        );
        assert!(all.turns(&c1).is_empty(), "the least recently continued went first");
        assert_eq!(
            deleted + all.len(),
            1001,
            "every conversation let go is deleted from the store"
        );
        let counted: usize =
            all.entries.values().flat_map(|c| c.turns.iter()).map(turn_bytes).sum();
        assert_eq!(counted, held.bytes, "the count drifted");
        // Another tenant's conversations are not crowded out.
        all.add(&key("u", "c1"), "t", said("hi", "ok"), "w", 10);
        assert_eq!(all.turns(&key("u", "c1")).len(), 2);
    }

    #[test]
    fn restored_records_come_back_as_they_were() {
        let mut all = Conversations::default();
        let c1 = key("t", "c1");
        all.add(&c1, "t1", said("hi", "hello"), "w1", 5);
        all.add(&c1, "t2", said("and?", "more"), "w1", 6);
        let record = all.record(&c1);
        let mut again = Conversations::default();
        again.restore(vec![record.clone()]);
        assert_eq!(again.record(&c1), record);
        assert_eq!(again.list("t", "c1", "", 10).0.len(), 1);
        assert!(again.remove(&c1) && again.is_empty());
    }
}
