//! A2A's gRPC binding beside its JSON-RPC binding on one head (echo agent, two workers):
//! the send-and-wait round trip, `SendMessage` answered with the completed task,
//! sequential, interleaved request by request (medians per round):
//! - gRPC with tonic's client (one HTTP/2 channel), as a Rust user calls it;
//! - gRPC and JSON-RPC with one and the same hyper HTTP/2 (h2c) client, so that what
//!   differs is the head's side of the two bindings;
//! - JSON-RPC over HTTP/1.1 (one kept-alive connection), how most JSON clients call it.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench a2a_grpc`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use fleet_client::AgentSpec;
use fleet_proto::a2a::a2a_service_client::A2aServiceClient;
use fleet_proto::a2a::{
    Message, Part, Role, SendMessageRequest, SendMessageResponse, TaskState, part,
    send_message_response,
};
use fleet_testkit::ClusterSandbox;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use serde_json::json;

type Http = Client<HttpConnector, Full<Bytes>>;

const ROUNDS: usize = 5;
const REQUESTS_PER_ROUND: usize = 300;
const TEXT: &str = "alpha beta gamma delta";

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn request(i: usize) -> SendMessageRequest {
    SendMessageRequest {
        tenant: "echo".into(),
        message: Some(Message {
            message_id: format!("g{i}"),
            role: Role::User as i32,
            parts: vec![Part {
                content: Some(part::Content::Text(TEXT.into())),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn completed(answer: SendMessageResponse) -> Result<()> {
    let Some(send_message_response::Payload::Task(task)) = answer.payload else {
        bail!("no task in {answer:?}");
    };
    let state = task.status.map(|s| s.state);
    ensure!(state == Some(TaskState::Completed as i32), "the task ended {state:?}");
    Ok(())
}

async fn tonic_send(
    grpc: &mut A2aServiceClient<tonic::transport::Channel>,
    i: usize,
) -> Result<Duration> {
    let request = request(i);
    let sent = Instant::now();
    let answer = grpc.send_message(request).await?.into_inner();
    let took = sent.elapsed();
    completed(answer)?;
    Ok(took)
}

/// One unary gRPC call by hand: the length-prefixed message, the answer's first message.
async fn hyper_grpc_send(h2: &Http, url: &str, i: usize) -> Result<Duration> {
    let message = request(i).encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len())?);
    framed.put_slice(&message);
    let request = http::Request::post(format!("{url}/lf.a2a.v1.A2AService/SendMessage"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("a2a-version", "1.0")
        .body(Full::new(framed.freeze()))?;
    let sent = Instant::now();
    let mut answer = h2.request(request).await?.into_body().collect().await?.to_bytes();
    let took = sent.elapsed();
    ensure!(answer.len() >= 5, "no message in the answer");
    answer.advance(1);
    let len = answer.get_u32() as usize;
    completed(SendMessageResponse::decode(answer.slice(..len))?)?;
    Ok(took)
}

async fn jsonrpc_send(http: &Http, url: &str, i: usize) -> Result<Duration> {
    let body = json!({"jsonrpc": "2.0", "id": i, "method": "SendMessage", "params": {"message": {
        "messageId": format!("j{i}"), "role": "ROLE_USER", "parts": [{"text": TEXT}]}}});
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("a2a-version", "1.0")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let sent = Instant::now();
    let answer = http.request(request).await?.into_body().collect().await?.to_bytes();
    let took = sent.elapsed();
    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
    let state = &answer["result"]["task"]["status"]["state"];
    ensure!(state == "TASK_STATE_COMPLETED", "the task ended {answer}");
    Ok(took)
}

fn hyper_client(http2: bool) -> Http {
    let mut connector = HttpConnector::new();
    // As tonic does: without it, HTTP/2's small frames wait on Nagle (40 ms).
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).http2_only(http2).build(connector)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = ClusterSandbox::builder().workers(2).start().await?;
    let client = cluster.client().await?;
    let echo =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    client.register_agent(echo).await?;
    let (h1, h2) = (hyper_client(false), hyper_client(true));
    let jsonrpc = format!("{}/a2a/echo", cluster.url);
    let mut tonic = A2aServiceClient::connect(cluster.url.clone()).await?;

    const NAMES: [&str; 4] =
        ["gRPC, tonic client", "gRPC, hyper h2c", "JSON-RPC, hyper h2c", "JSON-RPC, HTTP/1.1"];
    let mut rounds: [Vec<Duration>; 4] = Default::default();
    for round in 0..=ROUNDS {
        let mut samples: [Vec<Duration>; 4] = Default::default();
        for i in 0..REQUESTS_PER_ROUND {
            let n = round * REQUESTS_PER_ROUND + i;
            samples[0].push(tonic_send(&mut tonic, n).await.context(NAMES[0])?);
            samples[1].push(hyper_grpc_send(&h2, &cluster.url, n).await.context(NAMES[1])?);
            samples[2].push(jsonrpc_send(&h2, &jsonrpc, n).await.context(NAMES[2])?);
            samples[3].push(jsonrpc_send(&h1, &jsonrpc, n).await.context(NAMES[3])?);
        }
        // Round 0 warms the connections and the agent's placement.
        if round > 0 {
            for (all, these) in rounds.iter_mut().zip(samples) {
                all.push(median(these));
            }
        }
    }
    let us = |d: &Duration| d.as_secs_f64() * 1e6;
    println!("send-and-wait round trip p50, {ROUNDS} rounds of {REQUESTS_PER_ROUND}, interleaved:");
    for (name, r) in NAMES.iter().zip(&rounds) {
        let each: Vec<String> = r.iter().map(|d| format!("{:.0}", us(d))).collect();
        println!("  {name:<20} {:>6.0} µs  rounds {each:?}", us(&median(r.clone())));
    }
    let p50 = |k: usize| median(rounds[k].clone());
    let ratio = |a: usize, b: usize| {
        format!(
            "{:+.0} µs ({:.2}x)",
            us(&p50(a)) - us(&p50(b)),
            p50(a).as_secs_f64() / p50(b).as_secs_f64()
        )
    };
    println!("  gRPC - JSON-RPC, same h2c client: {}", ratio(1, 2));
    println!("  gRPC (tonic) - JSON-RPC (HTTP/1.1): {}", ratio(0, 3));
    Ok(())
}
