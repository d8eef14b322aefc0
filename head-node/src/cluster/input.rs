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
    /// `request_seq` (when not 0) is the seq of the `InputRequired` the reply is for.
    pub fn reply(
        &self,
        who: &Principal,
        id: &str,
        context_id: &str,
        reply: Reply,
        request_seq: u64,
    ) -> Result<TaskInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let task = state
            .tasks
            .get_mut(id)
            .filter(|t| who.sees(&t.tenant))
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        who.may_act()?;
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
        let Some((call_id, approval, seq)) = awaited(task) else {
            return Err(Error::InvalidArgument(format!(
                "task {id} is {}, not input-required: there is nothing to reply to",
                task.state.as_str()
            )));
        };
        if request_seq != 0 && request_seq != seq {
            return Err(Error::InvalidArgument(format!(
                "task {id} waits on its request {seq} now, not {request_seq}: read it and reply \
                 to that one"
            )));
        }
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
        // Its worker gets the reply now or the reply is refused: a worker that has not
        // rejoined (a restarted head, a broken connection) would not hear it.
        let answer = Command::ToolReply {
            task_id: task.id.clone(),
            call_id: call_id.clone(),
            output: text.clone(),
            is_error: rejected,
        };
        let worker = task.worker.as_deref().and_then(|w| state.workers.get(w));
        if !worker.is_some_and(|w| !w.commands.is_cut() && w.commands.send(answer)) {
            return Err(Error::Unavailable(format!(
                "task {id}'s worker is not connected to the head at the moment (it rejoins \
                 after a restart or a broken connection): reply again in a few seconds"
            )));
        }
        let task = state.tasks.get_mut(id).ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let received = EventKind::InputReceived { call_id, text, rejected };
        task.push_own(received, fleet_proto::now_us());
        Ok(TaskInfo::from(&*task))
    }
}

/// The call task `task` waits on for input, whether it is an approval, and the seq of its
/// request; `None` unless it is input-required.
pub(super) fn awaited(task: &TaskEntry) -> Option<(String, bool, u64)> {
    if task.state != TaskState::InputRequired {
        return None;
    }
    task.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::InputRequired { call_id, tool, .. } => {
            Some((call_id.clone(), !tool.is_empty(), e.seq))
        }
        _ => None,
    })
}

/// The reply a rejoining worker may have missed: the task's last event is the reply, sent
/// on a connection that broke before the head noticed. (A worker that had it answers
/// nobody with it: its wait is over.)
pub(super) fn reply_to_resend(task: &TaskEntry) -> Option<Command> {
    match &task.events.last()?.kind {
        EventKind::InputReceived { call_id, text, rejected } => Some(Command::ToolReply {
            task_id: task.id.clone(),
            call_id: call_id.clone(),
            output: text.clone(),
            is_error: *rejected,
        }),
        _ => None,
    }
}
