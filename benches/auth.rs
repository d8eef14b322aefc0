//! What the head's checks cost one request (issue 50: authorization and tenant checks add
//! at most 5 µs): the browser checks (`Browsers::judge`, `is_json`), resolving the caller's
//! key to a principal (`Principals::resolve_http`: the head's own token, a principal's key
//! among 10,000, a wrong key) and the tenant check on a task lookup (`Cluster::task` as a
//! tenant's user against the same lookup as the operator). Medians of 5 rounds.
//!
//!     cargo bench -p fleet-benches --bench auth

use std::hint::black_box;
use std::time::Instant;

use axum::http::Request;
use fleet_head::HeadConfig;
use fleet_head::auth::{Principal, PrincipalKey, Principals, Role, key_sha256};
use fleet_head::browsers::{Browsers, Verdict, is_json};
use fleet_head::cluster::{Cluster, NewTask};

const ROUNDS: usize = 5;
const CALLS: u32 = 200_000;
const PRINCIPALS: usize = 10_000;

fn request(host: &str, origin: Option<&str>, key: &str) -> anyhow::Result<Request<()>> {
    let mut builder = Request::post("/v1/chat/completions")
        .header("host", host)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"));
    if let Some(origin) = origin {
        builder = builder.header("origin", origin);
    }
    Ok(builder.body(())?)
}

/// The median time of one call of `f`, in nanoseconds.
fn median_ns(mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() -> anyhow::Result<()> {
    let config = HeadConfig {
        allowed_origins: vec!["http://app.example:3000".into()],
        allowed_hosts: vec!["fleet.internal".into()],
        ..HeadConfig::default()
    };
    let browsers = Browsers::new(&config)?;
    let own = "127.0.0.1:7070";
    println!("{:<44} {:>10}", "check", "ns/request");
    let cases = [
        ("browsers: a client (no Origin)", request(own, None, "k")?, true),
        ("browsers: the head's own page", request(own, Some("http://127.0.0.1:7070"), "k")?, true),
        (
            "browsers: an allowed origin (CORS)",
            request(own, Some("http://app.example:3000"), "k")?,
            true,
        ),
        (
            "browsers: refused, another origin",
            request(own, Some("https://evil.example"), "k")?,
            false,
        ),
        ("browsers: refused, a rebound Host", request("evil.example:7070", None, "k")?, false),
    ];
    for (name, request, passes) in &cases {
        let verdict = browsers.judge(request);
        anyhow::ensure!(matches!(verdict, Verdict::Refuse(_)) != *passes, "{name}: {verdict:?}");
        let ns = median_ns(|| {
            black_box(browsers.judge(black_box(request)));
            black_box(is_json(black_box(request.headers())));
        });
        println!("{name:<44} {ns:>10.0}");
    }

    let keys = (0..PRINCIPALS)
        .map(|i| PrincipalKey {
            principal: Principal::new(&format!("user{i}"), &format!("t{}", i % 100), Role::User),
            key_sha256: key_sha256(format!("key-{i}").as_bytes()),
        })
        .collect();
    let principals = Principals::new(vec!["admin-token".into()], keys);
    let keyed = [
        ("key: the head's token", "admin-token", true),
        ("key: a principal's, among 10,000", "key-4242", true),
        ("key: wrong", "key-nobody", false),
    ];
    for (name, key, known) in keyed {
        let request = request(own, None, key)?;
        anyhow::ensure!(principals.resolve_http(request.headers()).is_some() == known, "{name}");
        let ns = median_ns(|| {
            black_box(principals.resolve_http(black_box(request.headers())));
        });
        println!("{name:<44} {ns:>10.0}");
    }

    let cluster = Cluster::new(&HeadConfig {
        agents: vec![fleet_client::AgentSpec {
            name: "echo".into(),
            model: "builtin:echo".into(),
            ..Default::default()
        }],
        ..HeadConfig::default()
    })?;
    let alice = Principal::new("alice", "a", Role::User);
    let task = NewTask { agent: "echo".into(), input: "hi".into(), ..Default::default() };
    let id = cluster.submit(&alice, task, None)?;
    let operator = Principal::operator();
    for (name, who) in
        [("task lookup: the operator", &operator), ("task lookup: a tenant's user", &alice)]
    {
        let ns = median_ns(|| {
            black_box(cluster.task(black_box(who), black_box(id.as_str())).ok());
        });
        println!("{name:<44} {ns:>10.0}");
    }
    Ok(())
}
