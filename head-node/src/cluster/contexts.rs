//! The conversations the head keeps, as its doors list, read and delete them: always the
//! caller's tenant's (a context id is the client's: another tenant's is another
//! conversation, and it does not show).

use super::*;
use crate::conversations::{Key, Record, Summary};

/// Conversations listed at most per call, and when the caller names no number.
const MAX_LISTED: usize = 1_000;
const LISTED: usize = 100;

impl Cluster {
    /// The caller's tenant's conversations in `context_id` (every context when empty) with
    /// `agent` (every agent when empty), the most recently continued first; at most
    /// `page_size` (0: 100; never more than 1,000), and whether there were more.
    pub fn list_conversations(
        &self,
        who: &Principal,
        context_id: &str,
        agent: &str,
        page_size: u32,
    ) -> (Vec<Summary>, bool) {
        let limit = match page_size {
            0 => LISTED,
            n => (n as usize).min(MAX_LISTED),
        };
        self.state.lock().conversations.list(who.tenant(), context_id, agent, limit)
    }

    /// The conversation of `context_id` with `agent`.
    pub fn conversation(&self, who: &Principal, context_id: &str, agent: &str) -> Result<Record> {
        let key = key(who, context_id, agent)?;
        let state = self.state.lock();
        let record = state.conversations.record(&key);
        if record.last_task.is_empty() {
            return Err(Error::UnknownTask(format!(
                "no conversation of context {context_id:?} with agent {agent:?}: list them with \
                 ListConversations"
            )));
        }
        Ok(record)
    }

    /// Deletes the conversation of `context_id` with `agent` (with every agent when empty),
    /// and the per-context actor states of the context; returns how many conversations there
    /// were, once the deletion is stored: a head started again does not bring them back.
    pub async fn delete_conversations(
        &self,
        who: &Principal,
        context_id: &str,
        agent: &str,
    ) -> Result<usize> {
        who.may_act()?;
        if context_id.is_empty() {
            return Err(Error::InvalidArgument(
                "context_id is empty: name the context whose conversations to delete".into(),
            ));
        }
        let deleted = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let agents: Vec<String> = if agent.is_empty() {
                let (all, _) = state.conversations.list(who.tenant(), context_id, "", usize::MAX);
                all.into_iter().map(|s| s.agent).collect()
            } else {
                vec![agent.to_owned()]
            };
            let mut changes = Vec::new();
            for agent in agents {
                let key = key(who, context_id, &agent)?;
                if state.conversations.remove(&key) {
                    changes.push((key.stored(), None));
                }
            }
            let deleted = changes.len();
            // The context's actor states go with it.
            let states = state.actors.delete_context(who.tenant(), context_id, agent);
            if let Some(journal) = state.tasks.journal() {
                journal.conversations(changes);
                journal.actors(states);
            }
            deleted
        };
        self.stored_so_far().await?;
        Ok(deleted)
    }
}

fn key(who: &Principal, context_id: &str, agent: &str) -> Result<Key> {
    if context_id.is_empty() || agent.is_empty() {
        return Err(Error::InvalidArgument(
            "a conversation is named by its context_id and its agent: give both".into(),
        ));
    }
    Ok(Key {
        tenant: who.tenant().into(),
        agent: agent.to_owned(),
        context_id: context_id.to_owned(),
    })
}

impl Cluster {
    /// The stored state of `agent`'s actor (in `context_id` for a per-context actor).
    pub fn actor_state(
        &self,
        who: &Principal,
        agent: &str,
        context_id: &str,
    ) -> Result<crate::actor_state::Record> {
        let key = Key {
            tenant: who.tenant().into(),
            context_id: context_id.to_owned(),
            agent: agent.to_owned(),
        };
        self.state.lock().actors.record(&key).ok_or_else(|| {
            let place = if context_id.is_empty() {
                String::new()
            } else {
                format!(" in context {context_id:?}")
            };
            Error::UnknownTask(format!(
                "no stored state of agent {agent:?}{place}: it is stored once a task of the \
                 agent (declared with state=True) saves it; list them with ListActorStates"
            ))
        })
    }

    /// The stored actor states (of `agent`, in `context_id`, when not empty), the most
    /// recently saved first; whether there were more than `page_size`.
    pub fn list_actor_states(
        &self,
        who: &Principal,
        agent: &str,
        context_id: &str,
        page_size: u32,
    ) -> (Vec<crate::actor_state::Record>, bool) {
        let limit = match page_size {
            0 => LISTED,
            n => (n as usize).min(MAX_LISTED),
        };
        self.state.lock().actors.list(who.tenant(), agent, context_id, limit)
    }
}
