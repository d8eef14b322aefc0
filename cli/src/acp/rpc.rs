//! JSON-RPC 2.0 as ACP frames it on stdio: one message per line, UTF-8, no embedded
//! newlines. Requests go both ways (the editor asks for a session, the agent asks for a
//! permission), so one side both answers and waits for answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::{mpsc, oneshot};

/// The longest line read: the official SDK's own limit (prompts can embed whole files).
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(-32700, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(-32600, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(-32601, format!("method not found: {method}"))
    }

    /// A parameter the caller must change; `field` names it as a path (`prompt[2].type`).
    pub fn invalid_params(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(-32602, format!("{field}: {message}")).with_data(json!({"field": field}))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(-32603, message)
    }

    pub fn auth_required(message: impl Into<String>) -> Self {
        Self::new(-32000, message)
    }

    /// ACP's "resource not found" (an unknown session).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(-32002, message)
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            e["data"] = data.clone();
        }
        e
    }

    fn from_json(e: &Value) -> Self {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(-32603);
        let message = e.get("message").and_then(Value::as_str).unwrap_or("(no message)");
        Self { code, message: message.to_owned(), data: e.get("data").cloned() }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// One message read.
#[derive(Debug, PartialEq)]
pub enum Message {
    Request { id: Value, method: String, params: Value },
    Notification { method: String, params: Value },
    Response { id: Value, outcome: Result<Value, RpcError> },
}

/// Reads a line's message; an error names what is wrong, with the request's id when it has
/// one (a request that cannot be read is still answered).
pub fn parse(line: &[u8]) -> Result<Message, Box<(Value, RpcError)>> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Box::new((Value::Null, RpcError::parse_error(format!("not JSON: {e}")))))?;
    let Value::Object(mut m) = value else {
        return Err(Box::new((
            Value::Null,
            RpcError::invalid_request("a message is a JSON object"),
        )));
    };
    let id = m.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_number() || id.is_null())
    {
        return Err(Box::new((Value::Null, RpcError::invalid_request("id: a string or a number"))));
    }
    let params = m.remove("params").unwrap_or(Value::Null);
    match (m.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Message::Request { id, method, params }),
        (Some(Value::String(method)), None) => Ok(Message::Notification { method, params }),
        (Some(_), id) => Err(Box::new((
            id.unwrap_or(Value::Null),
            RpcError::invalid_request("method: a string"),
        ))),
        (None, Some(id)) => {
            let outcome = match (m.remove("result"), m.remove("error")) {
                (_, Some(error)) => Err(RpcError::from_json(&error)),
                (Some(result), None) => Ok(result),
                (None, None) => Ok(Value::Null),
            };
            Ok(Message::Response { id, outcome })
        }
        (None, None) => {
            Err(Box::new((Value::Null, RpcError::invalid_request("neither a method nor an id"))))
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A line (without its newline) is in the buffer.
    Read,
    /// A line longer than the limit was skipped.
    TooLong,
    /// The input ended.
    End,
}

/// Reads the next line into `buf`, never holding more than `max` bytes of it: a longer line
/// is read past and reported.
pub async fn read_line(
    input: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            // A last line without its newline still counts.
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Read,
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1),
            None => (available, available.len()),
        };
        let ended = done > chunk.len();
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else if !too_long {
            too_long = true;
            buf.clear();
        }
        input.consume(done);
        if ended {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

/// The other side of the connection: what this side sends it, and the answers it awaits.
pub struct Peer {
    out: mpsc::Sender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>,
    next_id: AtomicU64,
}

impl Peer {
    /// A peer whose messages go, one line each, to `out`'s receiver.
    pub fn new(out: mpsc::Sender<String>) -> Self {
        Self { out, pending: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0) }
    }

    async fn send(&self, message: Value) {
        // The writer is gone only when the output closed: nothing more can reach the
        // editor, and the reader's end of input follows.
        let _ = self.out.send(message.to_string()).await;
    }

    pub async fn notify(&self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params})).await;
    }

    pub async fn respond(&self, id: Value, outcome: Result<Value, RpcError>) {
        let message = match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
        };
        self.send(message).await;
    }

    /// Asks the peer and waits for its answer (an error when the connection closes first).
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        rx.await.unwrap_or_else(|_| Err(RpcError::internal("the connection closed")))
    }

    /// Hands an answer to the request it answers; false when no request waits on `id`.
    pub fn answered(&self, id: &Value, outcome: Result<Value, RpcError>) -> bool {
        let Some(id) = id.as_u64() else { return false };
        let waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        waiting.is_some_and(|tx| tx.send(outcome).is_ok())
    }

    /// Fails every request still waiting: the connection closed.
    pub fn close(&self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart_by_method_and_id() {
        let r = parse(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"a":1}}"#);
        assert!(matches!(r, Ok(Message::Request { method, .. }) if method == "initialize"));
        let n = parse(br#"{"jsonrpc":"2.0","method":"session/cancel","params":{}}"#);
        assert!(matches!(n, Ok(Message::Notification { .. })));
        let ok = parse(br#"{"jsonrpc":"2.0","id":3,"result":{"x":1}}"#);
        assert_eq!(ok, Ok(Message::Response { id: json!(3), outcome: Ok(json!({"x": 1})) }));
        let err = parse(br#"{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"no"}}"#);
        assert!(matches!(
            err,
            Ok(Message::Response { outcome: Err(RpcError { code: -32601, .. }), .. })
        ));
    }

    #[test]
    fn bad_messages_are_errors_that_keep_the_id() {
        assert_eq!(parse(b"{nope").map_err(|e| e.1.code), Err(-32700));
        assert_eq!(parse(b"[1]").map_err(|e| e.1.code), Err(-32600));
        let (id, e) = *parse(br#"{"id":7,"method":5}"#).err().unwrap_or_default();
        assert_eq!((id, e.code), (json!(7), -32600));
    }

    impl Default for RpcError {
        fn default() -> Self {
            Self::internal("")
        }
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_skipped_not_held() -> std::io::Result<()> {
        let input = b"short\n0123456789abcdef\nlast".to_vec();
        let mut reader = tokio::io::BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut reader, &mut buf, 8).await?, Line::Read);
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut reader, &mut buf, 8).await?, Line::TooLong);
        assert!(buf.len() <= 8);
        assert_eq!(read_line(&mut reader, &mut buf, 8).await?, Line::Read);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut reader, &mut buf, 8).await?, Line::End);
        Ok(())
    }
}
