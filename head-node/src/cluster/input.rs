//! Humans in the loop: a task whose agent asked the client a question (`ask_user`) or whose
//! tool call waits for approval is input-required until the client replies; the reply goes
//! to the task's worker as the answer of the waiting call.
//!
//! What a task waits for is read from its event log (its last `InputRequired`), so a head
//! restarted from its store knows it as well as the head that saw it.

use fleet_proto::Reply;

use super::*;

impl Cluster {
    /// Answers task `id`, which must be input-required; `context_id` (when not empty) must be
    /// the task's. The task works again once its worker has the answer.
    pub fn reply(&self, id: &str, context_id: &str, reply: Reply) -> Result<TaskInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let task = state.tasks.get_mut(id).ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        if !context_id.is_empty() && context_id != task.context_id {
            return Err(Error::InvalidArgument(format!(
                "task {id} belongs to context {:?}, not {context_id:?}: send the task's \
                 contextId or none",
                task.context_id
            )));
        }
        if task.state.is_terminal() {
            return Err(Error::Unsupported(format!(
                "task {id} is {}: an ended task takes no more input; send a new message with \
                 its contextId to go on with the conversation",
                task.state.as_str()
            )));
        }
        let Some((call_id, approval)) = awaited(task) else {
            return Err(Error::InvalidArgument(format!(
                "task {id} is {}, not input-required: there is nothing to reply to",
                task.state.as_str()
            )));
        };
        let (text, rejected) = match (approval, reply) {
            (true, reply) => {
                let (approved, words) = reply.approves();
                (words.to_owned(), !approved)
            }
            (false, Reply::Text(text)) => (text, false),
            (false, Reply::Reject(reason)) => (reason, true),
            (false, Reply::Approve) => {
                return Err(Error::InvalidArgument(format!(
                    "task {id} asks a question, not for an approval: reply with the answer as text"
                )));
            }
        };
        // Its worker gets the reply now or never: a worker that has not rejoined (a
        // restarted head, a broken connection) would not hear it.
        let worker = task.worker.as_deref().and_then(|w| state.workers.get(w));
        if worker.is_none() {
            return Err(Error::Unavailable(format!(
                "task {id}'s worker is not connected to the head at the moment (it rejoins \
                 after a restart or a broken connection): reply again in a few seconds"
            )));
        }
        let task = state.tasks.get_mut(id).ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let received =
            EventKind::InputReceived { call_id: call_id.clone(), text: text.clone(), rejected };
        task.push(received, fleet_proto::now_us());
        let info = TaskInfo::from(&*task);
        let task_id = task.id.clone();
        reply_to_call(state, &task_id, call_id, text, rejected);
        Ok(info)
    }
}

/// The call task `task` waits on for input, and whether it is an approval; `None` unless
/// it is input-required.
pub(super) fn awaited(task: &TaskEntry) -> Option<(String, bool)> {
    if task.state != TaskState::InputRequired {
        return None;
    }
    task.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::InputRequired { call_id, tool, .. } => Some((call_id.clone(), !tool.is_empty())),
        _ => None,
    })
}
