//! Hosting tools in this process (`HostTools`): register functions with the head, receive
//! the calls agents make of them, send their answers back.

use std::pin::Pin;

use fleet_proto::{FunctionTool, ToolInvocation, pb};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, Error, Result};

/// What the head sends a tool host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostCommand {
    /// The answer to one `register`: the tools' names, or why they were refused.
    Registered(std::result::Result<Vec<String>, String>),
    Invoke(ToolInvocation),
    /// The call is no longer waited for (it timed out or its task ended).
    Canceled {
        call: u64,
    },
}

/// The calls the head sends a host, until the stream ends (the host is gone then).
pub type HostCommands = Pin<Box<dyn Stream<Item = Result<HostCommand>> + Send>>;

/// Where a host registers tools and answers calls.
#[derive(Clone, Debug)]
pub struct ToolHostSender(mpsc::Sender<pb::ToolHostMessage>);

impl ToolHostSender {
    /// Hosts `tools` from now on; the head answers with [`HostCommand::Registered`].
    pub async fn register(&self, tools: &[FunctionTool]) -> Result<()> {
        let register = pb::RegisterTools { tools: tools.iter().map(Into::into).collect() };
        self.send(pb::tool_host_message::Kind::Register(register)).await
    }

    /// The result of call `call`.
    pub async fn answer(&self, call: u64, output: String, is_error: bool) -> Result<()> {
        let answer = pb::ToolAnswer { call, output, is_error };
        self.send(pb::tool_host_message::Kind::Answer(answer)).await
    }

    async fn send(&self, kind: pb::tool_host_message::Kind) -> Result<()> {
        let message = pb::ToolHostMessage { kind: Some(kind) };
        self.0.send(message).await.map_err(|_| Error::StreamEnded)
    }
}

impl Client {
    /// Opens a tool host stream to the head.
    pub async fn host_tools(&self) -> Result<(ToolHostSender, HostCommands)> {
        let (tx, rx) = mpsc::channel(256);
        let inbound = self.api().host_tools(ReceiverStream::new(rx)).await?.into_inner();
        let commands = inbound.filter_map(|message| async move {
            use pb::tool_host_command::Kind;
            let command = match message {
                Err(status) => return Some(Err(Error::from(status))),
                Ok(pb::ToolHostCommand { kind: None }) => return None,
                Ok(pb::ToolHostCommand { kind: Some(kind) }) => kind,
            };
            Some(Ok(match command {
                Kind::Registered(r) if r.error.is_empty() => HostCommand::Registered(Ok(r.names)),
                Kind::Registered(r) => HostCommand::Registered(Err(r.error)),
                Kind::Invoke(i) => HostCommand::Invoke(i.into()),
                Kind::Canceled(c) => HostCommand::Canceled { call: c.call },
            }))
        });
        Ok((ToolHostSender(tx), Box::pin(commands)))
    }
}
