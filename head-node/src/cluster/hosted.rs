//! Client processes hosting tools: a host's registrations and answers ([`ToolHost`]) and the
//! calls it is sent ([`ToolCalls`], which also times them out). The gRPC `HostTools` stream
//! and the Python package's embedded clusters both drive one of these.

use fleet_proto::FunctionTool;

use super::*;
use crate::tools::{HostCommand, MAX_ANSWER_BYTES};

/// A process hosting tools: it registers them and answers their calls. The host is gone
/// (its unanswered calls answered with an error) once this and its [`ToolCalls`] are
/// dropped.
#[derive(Clone)]
pub struct ToolHost(Arc<Connected>);

struct Connected {
    cluster: Arc<Cluster>,
    host: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut guard = self.cluster.state.lock();
        let state = &mut *guard;
        for call in state.tools.disconnect(self.host) {
            let error =
                format!("the process hosting tool {} disconnected during the call", call.tool);
            reply_to_call(state, &call.task, call.call_id, error, true);
        }
        debug!(host = self.host, "tool host gone");
    }
}

/// The calls sent to a host, each answered by the head with an error (and canceled at the
/// host) if the host has not answered it in its time.
pub struct ToolCalls {
    host: ToolHost,
    commands: mpsc::UnboundedReceiver<HostCommand>,
}

impl Cluster {
    /// A new process hosting tools for `who`'s tenant (an admin's are shared).
    pub fn host_tools(self: &Arc<Self>, who: &Principal) -> Result<(ToolHost, ToolCalls)> {
        who.may_act()?;
        let tenant = if who.is_admin() { "" } else { who.tenant() };
        let (host, commands) = self.state.lock().tools.connect(tenant)?;
        debug!(host, "tool host connected");
        let host = ToolHost(Arc::new(Connected { cluster: self.clone(), host }));
        Ok((host.clone(), ToolCalls { host, commands }))
    }
}

impl ToolHost {
    /// The host serves `tools` from now on; their names as registered.
    pub fn register(&self, tools: Vec<FunctionTool>) -> Result<Vec<String>> {
        let mut guard = self.0.cluster.state.lock();
        let state = &mut *guard;
        let agents = &state.agents;
        let names = state.tools.register(self.0.host, tools, |name| agents.get(name).is_ok())?;
        info!(host = self.0.host, tools = ?names, "tools hosted");
        Ok(names)
    }

    /// The host's answer to `call` goes to the calling task (if it still waits for it).
    pub fn answer(&self, call: u64, mut output: String, is_error: bool) {
        if output.len() > MAX_ANSWER_BYTES {
            let mut end = MAX_ANSWER_BYTES;
            while !output.is_char_boundary(end) {
                end -= 1;
            }
            output.truncate(end);
            output.push_str(&format!("\n[cut off: the answer was over {MAX_ANSWER_BYTES} bytes]"));
        }
        let mut guard = self.0.cluster.state.lock();
        let state = &mut *guard;
        if let Some(pending) = state.tools.answered(self.0.host, call) {
            reply_to_call(state, &pending.task, pending.call_id, output, is_error);
        }
    }
}

impl ToolCalls {
    /// Where the host registers and answers.
    pub fn host(&self) -> &ToolHost {
        &self.host
    }

    /// The next call (or cancellation) for the host; none once the cluster stops.
    pub async fn next(&mut self) -> Option<HostCommand> {
        loop {
            let connected = &self.host.0;
            let due = connected.cluster.state.lock().tools.next_deadline(connected.host);
            let Some(due) = due else { return self.commands.recv().await };
            tokio::select! {
                command = self.commands.recv() => return command,
                () = tokio::time::sleep_until(due) => self.expire(),
            }
        }
    }

    /// Answers the calls past their deadline with an error.
    fn expire(&self) {
        let connected = &self.host.0;
        let mut guard = connected.cluster.state.lock();
        let state = &mut *guard;
        for call in state.tools.expire(connected.host, Instant::now()) {
            let error = format!(
                "tool {} did not answer within {} s",
                call.tool,
                call.timeout.as_secs_f64()
            );
            reply_to_call(state, &call.task, call.call_id, error, true);
        }
    }
}
