//! Conversation memory of one agent actor for the agents called over the mesh (the head
//! stores the conversations of the tasks it hands out, `fleet_head::conversations`, and
//! sends each task its context's turns): the turns of each context id, bounded in the
//! number of contexts, in the turns kept per context, and in bytes: per context (the oldest
//! turns go first, as a model's context window would drop them) and for the whole actor
//! (the least recently started context goes first). A client that sends long turns to many
//! contexts cannot grow a worker past these.

use std::collections::{HashMap, VecDeque};

use fleet_inference::{ChatMessage, Role};

/// Contexts remembered per actor; the least recently started one is forgotten first.
const MAX_CONTEXTS: usize = 10_000;
/// Messages kept per context (user and assistant turns).
const MAX_MESSAGES: usize = 64;
/// Bytes of text kept per context: 1 MiB, past any served model's context window.
const MAX_CONTEXT_BYTES: usize = 1 << 20;
/// Bytes of text kept by one actor over all its contexts.
const MAX_MEMORY_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
struct Context {
    turns: VecDeque<ChatMessage>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub struct ConversationMemory {
    contexts: HashMap<String, Context>,
    order: VecDeque<String>,
    bytes: usize,
}

impl ConversationMemory {
    /// The messages of `context_id` so far (empty for a new or no context).
    pub fn history(&self, context_id: &str) -> impl Iterator<Item = &ChatMessage> {
        self.contexts.get(context_id).into_iter().flat_map(|c| c.turns.iter())
    }

    /// Records a finished turn.
    pub fn remember(&mut self, context_id: &str, user: String, assistant: String) {
        if context_id.is_empty() {
            return;
        }
        if !self.contexts.contains_key(context_id) {
            if self.order.len() >= MAX_CONTEXTS {
                self.forget_oldest();
            }
            self.order.push_back(context_id.to_owned());
        }
        let added = user.len() + assistant.len();
        let context = self.contexts.entry(context_id.to_owned()).or_default();
        context.turns.push_back(ChatMessage::new(Role::User, user));
        context.turns.push_back(ChatMessage::new(Role::Assistant, assistant));
        context.bytes += added;
        self.bytes += added;
        while context.turns.len() > MAX_MESSAGES
            || (context.bytes > MAX_CONTEXT_BYTES && !context.turns.is_empty())
        {
            if let Some(gone) = context.turns.pop_front() {
                context.bytes -= gone.content.len();
                self.bytes -= gone.content.len();
            }
        }
        while self.bytes > MAX_MEMORY_BYTES && self.order.len() > 1 {
            self.forget_oldest();
        }
    }

    /// Forgets the least recently started context.
    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front()
            && let Some(context) = self.contexts.remove(&oldest)
        {
            self.bytes -= context.bytes;
        }
    }

    pub fn contexts(&self) -> usize {
        self.contexts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_turns_per_context_and_bounds_them() {
        let mut memory = ConversationMemory::default();
        memory.remember("c1", "hi".into(), "hello".into());
        memory.remember("", "ignored".into(), "x".into());
        assert_eq!(memory.history("c1").count(), 2);
        assert_eq!(memory.history("c2").count(), 0);
        for i in 0..100 {
            memory.remember("c1", format!("u{i}"), format!("a{i}"));
        }
        assert_eq!(memory.history("c1").count(), MAX_MESSAGES);
        assert_eq!(memory.contexts(), 1);
    }

    #[test]
    fn long_turns_are_bounded_in_bytes_per_context_and_per_actor() {
        let mut memory = ConversationMemory::default();
        let long = "x".repeat(300 << 10);
        for _ in 0..4 {
            memory.remember("c1", long.clone(), "ok".into());
        }
        let kept: usize = memory.history("c1").map(|m| m.content.len()).sum();
        assert!(kept <= MAX_CONTEXT_BYTES, "{kept} bytes kept in one context");
        assert_eq!(memory.history("c1").last().map(|m| m.content.as_str()), Some("ok"));
        for i in 0..300 {
            memory.remember(&format!("many-{i}"), long.clone(), "ok".into());
        }
        assert!(memory.bytes <= MAX_MEMORY_BYTES, "{} bytes over all contexts", memory.bytes);
        assert!(memory.history("c1").next().is_none(), "the oldest context went first");
        let counted: usize =
            memory.contexts.values().flat_map(|c| c.turns.iter()).map(|m| m.content.len()).sum();
        assert_eq!(counted, memory.bytes, "the count drifted");
    }
}
