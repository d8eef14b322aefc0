//! Conversation memory of one agent actor: the turns of each context id, bounded in both
//! the number of contexts and the turns kept per context.

use std::collections::{HashMap, VecDeque};

use fleet_inference::{ChatMessage, Role};

/// Contexts remembered per actor; the least recently started one is forgotten first.
const MAX_CONTEXTS: usize = 10_000;
/// Messages kept per context (user and assistant turns).
const MAX_MESSAGES: usize = 64;

#[derive(Debug, Default)]
pub struct ConversationMemory {
    contexts: HashMap<String, VecDeque<ChatMessage>>,
    order: VecDeque<String>,
}

impl ConversationMemory {
    /// The messages of `context_id` so far (empty for a new or no context).
    pub fn history(&self, context_id: &str) -> impl Iterator<Item = &ChatMessage> {
        self.contexts.get(context_id).into_iter().flatten()
    }

    /// Records a finished turn.
    pub fn remember(&mut self, context_id: &str, user: String, assistant: String) {
        if context_id.is_empty() {
            return;
        }
        if !self.contexts.contains_key(context_id) {
            if self.order.len() >= MAX_CONTEXTS
                && let Some(oldest) = self.order.pop_front()
            {
                self.contexts.remove(&oldest);
            }
            self.order.push_back(context_id.to_owned());
        }
        let turns = self.contexts.entry(context_id.to_owned()).or_default();
        turns.push_back(ChatMessage::new(Role::User, user));
        turns.push_back(ChatMessage::new(Role::Assistant, assistant));
        while turns.len() > MAX_MESSAGES {
            turns.pop_front();
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
}
