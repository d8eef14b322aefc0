//! Cluster benchmarks: echo tasks through the Rust client against a real head and two real
//! worker processes on 127.0.0.1. Prints medians over repeated runs as Markdown rows.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench cluster`
//! (`-- --quick` for fewer repeats; `-- --security` for what the client token and TLS cost;
//! `-- --store` for what keeping the head's state on disk or in PostgreSQL costs, how fast it
//! comes back, and how fast a standby takes over; `-- --network` for the head, workers and
//! client on hosts of an emulated network with 2 ms between them, beside 127.0.0.1, and how
//! fast a cut-off worker's tasks finish elsewhere; it needs root; `-- --latency` for the
//! round trip and the first text delta alone, also with the workers pinned to a core of
//! their own).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission, TaskState};
use fleet_testkit::ClusterSandbox;
use fleet_testkit::network::Conditions;
use fleet_testkit::postgres::PostgresServer;
use futures::StreamExt;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn echo() -> AgentSpec {
    AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() }
}

async fn cluster() -> Result<(ClusterSandbox, Client)> {
    secured_cluster(Security::Open).await
}

/// What guards the head in a security-cost run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Security {
    Open,
    Token,
    TokenAndTls,
}

async fn secured_cluster(security: Security) -> Result<(ClusterSandbox, Client)> {
    let mut builder =
        ClusterSandbox::builder().workers(2).head_arg("--max-queued-tasks").head_arg("1000000");
    if security != Security::Open {
        builder = builder.token("bench-token");
    }
    if security == Security::TokenAndTls {
        builder = builder.tls();
    }
    let cluster = builder.start().await?;
    let client = cluster.client().await?;
    client.register_agent(echo()).await?;
    Ok((cluster, client))
}

/// The floor under any cross-process round trip on this machine: a 1-byte TCP ping-pong
/// with another process over 127.0.0.1 (this binary re-run as an echo server).
fn tcp_echo_server() -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).is_ok() {
        stream.write_all(&byte)?;
    }
    Ok(())
}

fn tcp_ping_pong(n: usize) -> Result<Vec<Duration>> {
    use std::io::{BufRead, Read, Write};
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .arg("--tcp-echo-server")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut address = String::new();
    std::io::BufReader::new(server.stdout.take().context("no stdout")?).read_line(&mut address)?;
    let mut stream = std::net::TcpStream::connect(address.trim())?;
    stream.set_nodelay(true)?;
    let mut times = Vec::with_capacity(n);
    let mut byte = [0u8; 1];
    for _ in 0..n {
        let started = Instant::now();
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
        times.push(started.elapsed());
    }
    drop(stream);
    server.wait()?;
    times.sort();
    Ok(times)
}

/// Batch-submitted one-word echo tasks over one multiplexed stream.
async fn batch_throughput(client: &Client, tasks: usize) -> Result<f64> {
    let inputs = vec!["ping".to_owned(); tasks];
    let started = Instant::now();
    let outcomes = client.run_many("echo", inputs).await?;
    let elapsed = started.elapsed();
    ensure!(outcomes.iter().all(|o| o.state == TaskState::Completed && o.output == "ping"));
    Ok(tasks as f64 / elapsed.as_secs_f64())
}

/// Sequential single-task round trips: submit, stream to completion, next.
async fn round_trips(client: &Client, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let outcome = client.run("echo", "ping").await?;
        times.push(started.elapsed());
        ensure!(outcome.state == TaskState::Completed);
    }
    times.sort();
    Ok(times)
}

/// One task streaming `words` text deltas: time to the first event, to the first delta,
/// and deltas per second over the whole stream.
async fn streaming(
    client: &Client,
    input: &str,
    words: usize,
) -> Result<(Duration, Duration, f64)> {
    let started = Instant::now();
    let mut stream = client.submit(Submission::new("echo", input)).await?;
    let (mut first_event, mut first_delta, mut deltas) = (None, None, 0);
    while let Some(event) = stream.next().await {
        let event = event?;
        first_event.get_or_insert_with(|| started.elapsed());
        if matches!(event.kind, EventKind::TextDelta { .. }) {
            first_delta.get_or_insert_with(|| started.elapsed());
            deltas += 1;
        }
    }
    let total = started.elapsed();
    ensure!(deltas == words, "{deltas} deltas of {words}");
    Ok((
        first_event.context("no event")?,
        first_delta.context("no delta")?,
        deltas as f64 / total.as_secs_f64(),
    ))
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--tcp-echo-server") {
        return tcp_echo_server();
    }
    // A single-threaded client: on this 2-cpu machine it has the lowest latency.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(bench_main())
}

/// One round of a setup-against-setup run: batch tasks/s (after a warm-up) and the round
/// trip p50 in µs (after a warm-up).
async fn one_round(client: &Client, tasks: usize) -> Result<(f64, f64)> {
    batch_throughput(client, 5_000).await?;
    let rate = batch_throughput(client, tasks).await?;
    round_trips(client, 300).await?;
    let times = round_trips(client, 2_000).await?;
    Ok((rate, percentile(&times, 0.5).as_secs_f64() * 1e6))
}

/// What the client token and TLS cost: the three setups take turns (this machine's noise
/// drifts over minutes), each round on fresh processes; medians and ratios to the open head.
async fn security_cost(repeats: usize, tasks: usize) -> Result<()> {
    let setups = [Security::Open, Security::Token, Security::TokenAndTls];
    let (mut rates, mut p50s) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
    for _ in 0..repeats {
        for (i, security) in setups.iter().enumerate() {
            let (sandbox, client) = secured_cluster(*security).await?;
            let (rate, p50) = one_round(&client, tasks).await?;
            rates[i].push(rate);
            p50s[i].push(p50);
            sandbox.shutdown().await?;
        }
    }
    let (open_rate, open_p50) = (median(rates[0].clone()), median(p50s[0].clone()));
    for (i, name) in
        ["no credentials, clear text", "client token", "client token + TLS"].iter().enumerate()
    {
        let (rate, p50) = (median(rates[i].clone()), median(p50s[i].clone()));
        println!(
            "| {name}: batch echo tasks/s | {rate:.0} ({:.2}×) | {:.0?} | ≥ 0.90× open |",
            rate / open_rate,
            rates[i]
        );
        println!(
            "| {name}: round trip p50 | {p50:.0} µs ({:+.0} µs) | {:.0?} | ≤ +50 µs |",
            p50 - open_p50,
            p50s[i]
        );
    }
    Ok(())
}

/// The round trip between hosts of the emulated network in `--network` runs.
const RTT: Duration = Duration::from_millis(2);

/// A head and two workers (with a client token, as a head off loopback must have) on
/// 127.0.0.1, or on hosts of an emulated network under `conditions`.
async fn networked_cluster(conditions: Option<Conditions>) -> Result<(ClusterSandbox, Client)> {
    let mut builder = ClusterSandbox::builder()
        .workers(2)
        .token("bench-token")
        .head_arg("--max-queued-tasks")
        .head_arg("1000000");
    if let Some(conditions) = conditions {
        builder = builder.network(conditions);
    }
    let cluster = builder.start().await?;
    let client = cluster.client().await?;
    client.register_agent(echo()).await?;
    Ok((cluster, client))
}

/// The cluster on 127.0.0.1, on the emulated network with no delay (what the wire itself
/// costs) and with 2 ms round trips, taking turns on fresh processes; then how long a
/// worker cut off mid-task takes to be declared dead and its tasks to finish elsewhere.
async fn network_cost(repeats: usize, tasks: usize) -> Result<()> {
    let setups = [
        (None, "127.0.0.1", "—".to_owned()),
        (Some(Conditions::default()), "emulated network, no delay", "—".to_owned()),
        (
            Some(Conditions::rtt(RTT)),
            "emulated network, 2 ms round trips",
            format!("≥ 0.80× loopback; p50 ≤ {} µs", (2 * RTT).as_micros() + 200),
        ),
    ];
    let (mut rates, mut p50s) = (vec![Vec::new(); setups.len()], vec![Vec::new(); setups.len()]);
    for _ in 0..repeats {
        for (i, (conditions, _, _)) in setups.iter().enumerate() {
            let (sandbox, client) = networked_cluster(*conditions).await?;
            batch_throughput(&client, 5_000).await?;
            rates[i].push(batch_throughput(&client, tasks).await?);
            round_trips(&client, 100).await?;
            let times = round_trips(&client, 500).await?;
            p50s[i].push(percentile(&times, 0.5).as_secs_f64() * 1e6);
            sandbox.shutdown().await?;
        }
    }
    let (loopback_rate, loopback_p50) = (median(rates[0].clone()), median(p50s[0].clone()));
    for (i, (_, name, target)) in setups.iter().enumerate() {
        let (rate, p50) = (median(rates[i].clone()), median(p50s[i].clone()));
        println!(
            "| {name}: batch echo tasks/s | {rate:.0} ({:.2}×) | {:.0?} | {target} |",
            rate / loopback_rate,
            rates[i]
        );
        println!(
            "| {name}: round trip p50 | {p50:.0} µs ({:+.0} µs) | {:.0?} | {target} |",
            p50 - loopback_p50,
            p50s[i]
        );
    }
    partition_recovery(repeats).await
}

/// A worker running eight 1-second tasks cut off (its packets dropped silently) on the
/// 2 ms network, default heartbeat (500 ms) and worker timeout (3 s): how long until the
/// head declares it dead, and until its tasks have finished on the other worker.
async fn partition_recovery(repeats: usize) -> Result<()> {
    let (mut declared, mut finished) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let (sandbox, client) = networked_cluster(Some(Conditions::rtt(RTT))).await?;
        let network = sandbox.network().context("no network")?;
        let mut spec = echo();
        spec.name = "slow".into();
        spec.max_retries = 2;
        spec.model_options = [("token_delay_ms".to_owned(), "50".to_owned())].into();
        client.register_agent(spec).await?;
        let input = (0..20).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let run = tokio::spawn({
            let client = client.clone();
            async move { client.run_many("slow", vec![input; 16]).await }
        });
        let worker_busy = || async {
            let status = client.status().await?;
            anyhow::Ok(
                status.workers.iter().any(|w| w.worker_id == "worker-0" && w.running_tasks > 0),
            )
        };
        while !worker_busy().await? {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        network.isolate("worker-0")?;
        let cut = Instant::now();
        loop {
            let status = client.status().await?;
            if status.workers.iter().any(|w| w.worker_id == "worker-0" && !w.alive)
                || !status.workers.iter().any(|w| w.worker_id == "worker-0")
            {
                break;
            }
            ensure!(cut.elapsed() < Duration::from_secs(30), "worker-0 never declared dead");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        declared.push(cut.elapsed().as_secs_f64() * 1000.0);
        let outcomes = run.await??;
        finished.push(cut.elapsed().as_secs_f64() * 1000.0);
        ensure!(outcomes.iter().all(|o| o.state == TaskState::Completed));
        sandbox.shutdown().await?;
    }
    println!(
        "| emulated network: a worker cut off mid-task, declared dead (worker timeout 3 s) | {:.0} ms | {declared:.0?} | ≤ 3,000 ms + the sweep (750 ms) |",
        median(declared.clone())
    );
    println!(
        "| emulated network: ... and its 1-second tasks finished on the other worker | {:.0} ms | {finished:.0?} | ≤ 5,000 ms + a task |",
        median(finished.clone())
    );
    Ok(())
}

/// Where a benchmarked head keeps its state.
#[derive(Clone, Copy, PartialEq)]
enum Kept {
    Memory,
    File,
    /// The file store syncing its log before each acknowledgement (`--fsync always`).
    FileSynced,
    /// A PostgreSQL server of the bench's own (fresh each round).
    Postgres,
}

/// A head keeping its state as `kept` says (and its PostgreSQL server, if any).
async fn stored_cluster(kept: Kept) -> Result<(ClusterSandbox, Client, Option<PostgresServer>)> {
    let mut builder =
        ClusterSandbox::builder().workers(2).head_arg("--max-queued-tasks").head_arg("1000000");
    let mut server = None;
    match kept {
        Kept::Memory => builder = builder.head_arg("--store").head_arg("memory"),
        Kept::File => {}
        Kept::FileSynced => builder = builder.head_arg("--fsync").head_arg("always"),
        Kept::Postgres => {
            let pg = PostgresServer::start()?;
            builder = builder.head_arg("--store").head_arg(pg.url.clone());
            server = Some(pg);
        }
    }
    let cluster = builder.start().await?;
    let client = cluster.client().await?;
    client.register_agent(echo()).await?;
    Ok((cluster, client, server))
}

/// What the file and PostgreSQL stores cost beside memory only (turns, fresh processes each
/// round), how long a head holding 100,000 finished tasks takes from SIGKILL to answering
/// again, and how long a standby takes to serve once the leader is SIGKILLed.
async fn store_cost(repeats: usize, tasks: usize) -> Result<()> {
    let modes = [
        (Kept::Memory, "memory only (--store memory)", "—"),
        (Kept::File, "file store (default)", "≥ 20,000/s"),
        (Kept::FileSynced, "file store, --fsync always", "≥ 20,000/s"),
        (Kept::Postgres, "PostgreSQL store (--store postgres://)", "≥ 10,000/s"),
    ];
    let (mut rates, mut p50s) = (vec![Vec::new(); modes.len()], vec![Vec::new(); modes.len()]);
    for _ in 0..repeats {
        for (i, (kept, _, _)) in modes.iter().enumerate() {
            let (sandbox, client, server) = stored_cluster(*kept).await?;
            let (rate, p50) = one_round(&client, tasks).await?;
            rates[i].push(rate);
            p50s[i].push(p50);
            sandbox.shutdown().await?;
            drop(server);
        }
    }
    let (memory_rate, memory_p50) = (median(rates[0].clone()), median(p50s[0].clone()));
    for (i, (_, name, target)) in modes.iter().enumerate() {
        let (rate, p50) = (median(rates[i].clone()), median(p50s[i].clone()));
        println!(
            "| {name}: batch echo tasks/s | {rate:.0} ({:.2}×) | {:.0?} | {target} |",
            rate / memory_rate,
            rates[i]
        );
        println!(
            "| {name}: round trip p50 | {p50:.0} µs ({:+.0} µs) | {:.0?} | ≤ +100 µs |",
            p50 - memory_p50,
            p50s[i]
        );
    }
    failover_time(repeats).await?;

    let (mut sandbox, client, _) = stored_cluster(Kept::File).await?;
    for _ in 0..10 {
        batch_throughput(&client, 10_000).await?;
    }
    let retained = client.status().await?.retained_tasks;
    let mut recoveries = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        sandbox.restart_head().await?;
        loop {
            ensure!(started.elapsed() < Duration::from_secs(60), "the head did not come back");
            let answered = match sandbox.client().await {
                Ok(client) => client.status().await.ok(),
                Err(_) => None,
            };
            if answered.is_some_and(|s| s.retained_tasks == retained) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        recoveries.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "| head SIGKILLed with {retained} finished tasks stored: answering again, all of them loaded | {:.0} ms | {recoveries:.0?} | ≤ 2,000 ms |",
        median(recoveries.clone())
    );
    sandbox.shutdown().await
}

/// A leader and a standby on one PostgreSQL server (default lease, 5 s), the leader
/// SIGKILLed: how long until the standby serves.
async fn failover_time(repeats: usize) -> Result<()> {
    let mut times = Vec::new();
    for _ in 0..repeats {
        let pg = PostgresServer::start()?;
        let mut sandbox = ClusterSandbox::builder()
            .workers(1)
            .head_arg("--store")
            .head_arg(pg.url.clone())
            .standbys(1)
            .start()
            .await?;
        let standby = sandbox.standby_addresses()[0].clone();
        let killed = Instant::now();
        sandbox.kill_head().await?;
        while !matches!(
            fleet_testkit::http_at(&standby, "GET", "/healthz", &[], b"").await,
            Ok((200, _))
        ) {
            ensure!(killed.elapsed() < Duration::from_secs(30), "the standby did not take over");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(killed.elapsed().as_secs_f64() * 1000.0);
        sandbox.shutdown().await?;
    }
    println!(
        "| leader SIGKILLed: the standby serving (lease 5 s, renewed every 1.7 s) | {:.0} ms | {times:.0?} | ≤ lease + 2 s |",
        median(times.clone())
    );
    Ok(())
}

/// Only the control plane's latency, on one cluster: the sequential round trip, and the
/// first text delta of streams of 1, 10 and 1,000 words (a long stream's first delta must
/// not wait for the rest). Twice: as the OS places the four processes on this machine's
/// cores, then with the workers on a core of their own and the head and client on another
/// (as if the workers had a machine of their own: a busy worker no longer holds up the
/// head or the client).
async fn latency(repeats: usize) -> Result<()> {
    let (sandbox, client) = cluster().await?;
    batch_throughput(&client, 5_000).await?; // warm-up
    round_trips(&client, 500).await?;
    for pinned in [false, true] {
        let setup = if pinned {
            pin(&sandbox)?;
            "workers on a core of their own"
        } else {
            "as placed by the OS"
        };
        let mut p50s = Vec::new();
        for _ in 0..repeats {
            p50s.push(percentile(&round_trips(&client, 2_000).await?, 0.5).as_secs_f64() * 1e6);
        }
        println!(
            "| {setup}: sequential round trip p50 | {:.0} µs | {p50s:.0?} | ≤ 150 µs |",
            median(p50s.clone())
        );
        for words in [1, 10, 1000] {
            let input = (0..words).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
            streaming(&client, &input, words).await?; // warm-up
            let (mut first_deltas, mut rates) = (Vec::new(), Vec::new());
            for _ in 0..repeats * 4 {
                let (_, first_delta, rate) = streaming(&client, &input, words).await?;
                first_deltas.push(first_delta.as_secs_f64() * 1e6);
                rates.push(rate);
            }
            println!(
                "| {setup}: stream of {words} words: first text delta | {:.0} µs | {first_deltas:.0?} | ≤ 500 µs |",
                median(first_deltas.clone())
            );
            if words == 1000 {
                println!(
                    "| {setup}: stream of {words} words: rate | {:.0} events/s | {rates:.0?} | – |",
                    median(rates.clone())
                );
            }
        }
    }
    sandbox.shutdown().await
}

/// The workers to cpu 1, the head and this process (the client) to cpu 0.
fn pin(sandbox: &ClusterSandbox) -> Result<()> {
    let taskset = |cpu: &str, pid: u32| -> Result<()> {
        let status = std::process::Command::new("taskset")
            .args(["-apc", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("taskset (util-linux)")?;
        ensure!(status.success(), "taskset -apc {cpu} {pid}: {status}");
        Ok(())
    };
    ensure!(std::thread::available_parallelism()?.get() >= 2, "pinning needs two cpus");
    for name in sandbox.worker_names() {
        taskset("1", sandbox.worker_pid(&name).context("a worker's pid")?)?;
    }
    taskset("0", sandbox.head_pid().context("the head's pid")?)?;
    taskset("0", std::process::id())
}

async fn bench_main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 3 } else { 5 };
    println!("| measurement | median | runs | target |");
    println!("|---|---|---|---|");
    if std::env::args().any(|a| a == "--security") {
        return security_cost(repeats, if quick { 20_000 } else { 50_000 }).await;
    }
    if std::env::args().any(|a| a == "--network") {
        return network_cost(repeats, if quick { 20_000 } else { 50_000 }).await;
    }
    if std::env::args().any(|a| a == "--store") {
        return store_cost(repeats, if quick { 20_000 } else { 50_000 }).await;
    }
    if std::env::args().any(|a| a == "--latency") {
        return latency(repeats).await;
    }

    // Ready time: processes started until both workers have joined.
    let mut ready = Vec::new();
    for _ in 0..repeats {
        let sandbox = ClusterSandbox::builder().workers(2).start().await?;
        ready.push(sandbox.startup_time().as_secs_f64() * 1000.0);
        sandbox.shutdown().await?;
    }
    println!(
        "| head + 2 workers ready | {:.1} ms | {ready:.1?} | ≤ 500 ms (ray.init 6.0 s) |",
        median(ready.clone())
    );

    let (sandbox, client) = cluster().await?;
    batch_throughput(&client, 5_000).await?; // warm-up
    let tasks = if quick { 20_000 } else { 50_000 };
    let mut rates = Vec::new();
    for _ in 0..repeats {
        rates.push(batch_throughput(&client, tasks).await?);
    }
    println!(
        "| batch-submitted echo tasks ({tasks} per run) | {:.0} tasks/s | {:.0?} | ≥ 20,000/s (Ray 1,790/s) |",
        median(rates.clone()),
        rates
    );

    round_trips(&client, 500).await?; // warm-up
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..repeats {
        let times = round_trips(&client, if quick { 2_000 } else { 5_000 }).await?;
        p50s.push(percentile(&times, 0.5).as_secs_f64() * 1e6);
        p99s.push(percentile(&times, 0.99).as_secs_f64() * 1e6);
    }
    println!(
        "| sequential round trip p50 | {:.0} µs | {p50s:.0?} | ≤ 150 µs (Ray actor call 764 µs) |",
        median(p50s.clone())
    );
    println!("| sequential round trip p99 | {:.0} µs | {p99s:.0?} | – |", median(p99s.clone()));
    let mut floors = Vec::new();
    for _ in 0..repeats {
        floors.push(percentile(&tcp_ping_pong(5_000)?, 0.5).as_secs_f64() * 1e6);
    }
    println!(
        "| floor: TCP ping-pong with another process, p50 (a task round trip needs two) | {:.0} µs | {floors:.0?} | – |",
        median(floors.clone())
    );

    let words = 1000;
    let input = (0..words).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    streaming(&client, &input, words).await?; // warm-up
    let (mut firsts, mut first_deltas, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats * 2 {
        let (first, first_delta, rate) = streaming(&client, &input, words).await?;
        firsts.push(first.as_secs_f64() * 1e6);
        first_deltas.push(first_delta.as_secs_f64() * 1e6);
        rates.push(rate);
    }
    println!(
        "| stream of 1,000 events: first event | {:.0} µs | {firsts:.0?} | ≤ 1 ms (Ray first item 5.4 ms) |",
        median(firsts.clone())
    );
    println!(
        "| stream of 1,000 events: first text delta | {:.0} µs | {first_deltas:.0?} | ≤ 1 ms |",
        median(first_deltas.clone())
    );
    println!(
        "| stream of 1,000 events: rate | {:.0} events/s | {rates:.0?} | ≥ 100,000/s (Ray 6,381/s) |",
        median(rates.clone())
    );
    sandbox.shutdown().await?;

    // Head memory with 100,000 finished tasks retained (the default retention limit).
    let (sandbox, client) = cluster().await?;
    let before = sandbox.head_rss_bytes().unwrap_or(0);
    for _ in 0..10 {
        batch_throughput(&client, 10_000).await?;
    }
    let status = client.status().await?;
    let after = sandbox.head_rss_bytes().unwrap_or(0);
    println!(
        "| head RSS with {} finished tasks retained | {:.1} MiB (idle: {:.1} MiB) | 1 | report; bounded by --max-retained-tasks |",
        status.retained_tasks,
        after as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    // Past the retention limit the oldest finished tasks are evicted: memory must level off.
    let mut levels = Vec::new();
    for _ in 0..4 {
        for _ in 0..5 {
            batch_throughput(&client, 10_000).await?;
        }
        levels.push(sandbox.head_rss_bytes().unwrap_or(0) as f64 / 1048576.0);
    }
    let status = client.status().await?;
    println!(
        "| head RSS after 50k, 100k, 150k, 200k more tasks | {levels:.1?} MiB, {} retained | 1 | levels off |",
        status.retained_tasks
    );
    sandbox.shutdown().await
}
