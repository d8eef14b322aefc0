//! What several benches share: a streamed OpenAI chat completion read over plain HTTP, and a
//! task submitted through the gRPC client and read to its end.

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use fleet_client::{Client, EventKind, Submission};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use serde_json::Value;

pub type Http = HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

/// What one streamed chat completion gave.
#[derive(Debug, Default, Clone)]
#[allow(dead_code)] // each bench reads the fields it reports
pub struct Streamed {
    /// Seconds from sending the request to the first content chunk (to the end if none).
    pub ttft: f64,
    pub text: String,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

/// POSTs `body` (a chat completion request with `stream: true`; ask for
/// `stream_options.include_usage` to get the token counts) to `url` and reads the stream
/// to its end. An error chunk is an error.
pub async fn chat_stream(http: &Http, url: &str, body: &Value) -> Result<Streamed> {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))?;
    let started = Instant::now();
    let response = http.request(request).await?;
    ensure!(response.status().is_success(), "status {}", response.status());
    let mut body = response.into_body();
    let (mut buffer, mut out, mut first) = (String::new(), Streamed::default(), None);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buffer.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(json) = event.trim().strip_prefix("data: ") else { continue };
            if json == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(json)?;
            ensure!(chunk.get("error").is_none(), "error chunk: {json}");
            if let Some(text) = chunk.pointer("/choices/0/delta/content").and_then(Value::as_str)
                && !text.is_empty()
            {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                out.text.push_str(text);
            }
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
                out.prompt_tokens = n("/prompt_tokens");
                out.cached_tokens = n("/prompt_tokens_details/cached_tokens");
                out.completion_tokens = n("/completion_tokens");
            }
        }
    }
    out.ttft = first.unwrap_or_else(|| started.elapsed().as_secs_f64());
    Ok(out)
}

/// Submits `submission` and reads its events to the end: seconds to the first text delta
/// (to the end if none) and the token counts in [`Streamed`] (text included). A failed
/// task is an error.
pub async fn task_stream(client: &Client, submission: Submission) -> Result<Streamed> {
    let started = Instant::now();
    let mut stream = client.submit(submission).await?;
    let (mut out, mut first) = (Streamed::default(), None);
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::TextDelta { text, .. } => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                out.text.push_str(&text);
            }
            EventKind::Completed { usage } => {
                out.ttft = first.unwrap_or_else(|| started.elapsed().as_secs_f64());
                out.prompt_tokens = usage.prompt_tokens;
                out.cached_tokens = usage.cached_tokens;
                out.completion_tokens = usage.completion_tokens;
                return Ok(out);
            }
            EventKind::Failed { error, .. } => bail!("task failed: {error}"),
            EventKind::Canceled { reason } => bail!("task canceled: {reason}"),
            _ => {}
        }
    }
    bail!("the task's stream ended before the task did")
}
