//! Web pages against a real `fleet-head` (and a worker): a cross-site "simple" POST
//! (`text/plain`, no preflight) runs nothing at any door (A2A, OpenAI, MCP), a page that
//! re-pointed its own name at the head's loopback address (DNS rebinding) is refused, and
//! the origins the operator allows get CORS answers. Requests are written by hand, as a
//! browser would send them, so that every header is the test's choice.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_testkit::ClusterSandbox;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
[[agent]]
name = "echo"
model = "builtin:echo"
"#;

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

/// One HTTP/1.1 request with exactly `headers` (plus Content-Length and Connection): the
/// status, the response's headers (lowercase names) and its body.
async fn send(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Vec<(String, String)>, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).context("no status")?.parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A2A SendMessage, an OpenAI chat request and an MCP tool call, each running `echo`.
fn task_requests(marker: &str) -> [(&'static str, String); 3] {
    let a2a = json!({
        "jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "messageId": marker,
                               "parts": [{"kind": "text", "text": marker}]}},
    });
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": marker}]});
    let mcp = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"input": marker}},
    });
    [
        ("/a2a/echo", a2a.to_string()),
        ("/v1/chat/completions", chat.to_string()),
        ("/mcp", mcp.to_string()),
    ]
}

/// How many tasks of `echo` the head has (a task runs from the moment the head takes it).
async fn tasks(cluster: &ClusterSandbox) -> Result<usize> {
    let fleet = cluster.client().await?;
    let tasks = fleet
        .list_tasks(fleet_client::pb::ListTasksRequest {
            agent: "echo".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?;
    Ok(tasks.tasks.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_run_nothing_at_any_door() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).config(CONFIG).start().await?;
        let address = cluster.address.as_str();
        let mcp_accept = "application/json, text/event-stream";
        // A page at another origin posting text/plain: refused for its origin (403).
        for (path, body) in task_requests("cross-site") {
            let headers = [
                ("Host", address),
                ("Origin", "https://evil.example"),
                ("Content-Type", "text/plain;charset=UTF-8"),
                ("Accept", mcp_accept),
            ];
            let (status, _, text) = send(address, "POST", path, &headers, &body).await?;
            ensure!(status == 403, "{path}: {status} {text}");
            ensure!(text.contains("--allowed-origin"), "{path}: {text}");
        }
        // The same posts without an Origin (a page whose browser sends none): refused for
        // their content type, each door in its protocol's shape.
        for (path, body) in task_requests("not-json") {
            for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
                let headers =
                    [("Host", address), ("Content-Type", content_type), ("Accept", mcp_accept)];
                let (status, _, text) = send(address, "POST", path, &headers, &body).await?;
                ensure!(status == 415, "{path} as {content_type}: {status} {text}");
                let error: Value = serde_json::from_str(&text)?;
                if path == "/a2a/echo" {
                    ensure!(error["error"]["code"] == -32005, "{text}");
                }
                if path == "/v1/chat/completions" {
                    ensure!(error["error"]["code"] == "unsupported_content_type", "{text}");
                }
                if path == "/mcp" {
                    ensure!(error["error"]["code"] == -32600, "{text}");
                }
            }
        }
        // A2A's HTTP+JSON binding too.
        let rest = json!({"message": {"role": "ROLE_USER", "messageId": "r",
                                      "parts": [{"text": "rest-not-json"}]}});
        let headers = [("Host", address), ("Content-Type", "text/plain"), ("A2A-Version", "1.0")];
        let (status, _, text) =
            send(address, "POST", "/a2a/echo/message:send", &headers, &rest.to_string()).await?;
        ensure!(status == 415 && text.contains("CONTENT_TYPE_NOT_SUPPORTED"), "{status} {text}");
        ensure!(tasks(&cluster).await? == 0, "a refused request ran a task");
        // The head's own pages, and clients that send JSON without an Origin, are served.
        let own = format!("http://{address}");
        for (i, (path, body)) in task_requests("welcome").into_iter().enumerate() {
            let origin = if i == 0 { own.as_str() } else { "" };
            let mut headers = vec![
                ("Host", address),
                ("Content-Type", "application/json"),
                ("Accept", mcp_accept),
            ];
            if !origin.is_empty() {
                headers.push(("Origin", origin));
            }
            let (status, _, text) = send(address, "POST", path, &headers, &body).await?;
            ensure!(status == 200, "{path}: {status} {text}");
        }
        ensure!(tasks(&cluster).await? == 3, "the welcome requests did not each run a task");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebound_host_names_are_refused_on_loopback_and_allowed_origins_get_cors() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .config(CONFIG)
            .head_arg("--allowed-host")
            .head_arg("fleet.internal")
            .head_arg("--allowed-origin")
            .head_arg("http://app.example:3000")
            .start()
            .await?;
        let address = cluster.address.as_str();
        let port = address.rsplit(':').next().unwrap_or_default();
        let (evil, internal) = (format!("evil.example:{port}"), format!("fleet.internal:{port}"));
        let (localhost, own) = (format!("localhost:{port}"), format!("http://evil.example:{port}"));
        let chat = &task_requests("rebound")[1].1;
        // A page at http://evil.example:PORT whose name now points at 127.0.0.1: its Origin
        // is its own Host, so only the Host check stands between it and the head.
        for (method, path, body) in [
            ("GET", "/v1/models", ""),
            ("POST", "/v1/chat/completions", chat.as_str()),
            ("GET", "/.well-known/agent-card.json", ""),
            ("GET", "/ui/api/cluster", ""),
            ("GET", "/metrics", ""),
            ("POST", "/mcp", &task_requests("rebound")[2].1),
        ] {
            let headers = [
                ("Host", evil.as_str()),
                ("Origin", own.as_str()),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ];
            let (status, _, text) = send(address, method, path, &headers, body).await?;
            ensure!(status == 403 && text.contains("DNS rebinding"), "{path}: {status} {text}");
        }
        ensure!(tasks(&cluster).await? == 0, "a rebound request ran a task");
        for host in [address, localhost.as_str(), internal.as_str()] {
            let (status, _, text) =
                send(address, "GET", "/v1/models", &[("Host", host)], "").await?;
            ensure!(status == 200, "{host}: {status} {text}");
        }
        // An allowed origin: its preflight is answered, and so is its request, with CORS.
        let app = "http://app.example:3000";
        let preflight = [
            ("Host", address),
            ("Origin", app),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type, authorization"),
        ];
        let (status, headers, _) =
            send(address, "OPTIONS", "/v1/chat/completions", &preflight, "").await?;
        ensure!(status == 204, "preflight: {status}");
        ensure!(header(&headers, "access-control-allow-origin") == Some(app), "{headers:?}");
        let methods = header(&headers, "access-control-allow-methods").unwrap_or_default();
        ensure!(methods.contains("POST"), "{headers:?}");
        let allowed = header(&headers, "access-control-allow-headers").unwrap_or_default();
        ensure!(allowed.contains("authorization"), "{headers:?}");
        let request = [("Host", address), ("Origin", app), ("Content-Type", "application/json")];
        let body = &task_requests("from-the-app")[1].1;
        let (status, headers, text) =
            send(address, "POST", "/v1/chat/completions", &request, body).await?;
        ensure!(status == 200, "{status} {text}");
        ensure!(header(&headers, "access-control-allow-origin") == Some(app), "{headers:?}");
        // Another port of the same host is another origin.
        let other = [("Host", address), ("Origin", "http://app.example:3001")];
        let (status, headers, _) = send(address, "GET", "/v1/models", &other, "").await?;
        ensure!(status == 403, "{status}");
        ensure!(header(&headers, "access-control-allow-origin").is_none(), "{headers:?}");
        cluster.shutdown().await
    })
    .await
}
