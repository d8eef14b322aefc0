//! One head, thousands of workers: a real `fleet-head` process and N simulated workers
//! (`fleet_testkit::simworker`) in this process, each with its own connection and `Join`
//! stream, heartbeating at the head's interval and running tasks as `builtin:echo` does.
//! For each N:
//!
//! - **join**: the time until the head has welcomed all N, and the head's memory per worker;
//! - **idle**: the head's CPU (share of one core) and memory with N workers heartbeating;
//! - **load**: `--tasks` echo tasks submitted at once (instant answers): tasks/s, the head's
//!   CPU, and the wait for a worker (the head's own timestamps from `Submitted` to
//!   `Scheduled`: nothing while slots are free, the wait for one when all are taken);
//! - **round trip alone**: `--sequential` tasks one after another on the idle cluster, from
//!   the client's submit to the task's end;
//! - **lost workers**: 1% of the workers, running long tasks in half the slots, lost at
//!   once, half crashed (connection closed), half silent (connection open, nothing sent):
//!   the time until each of their tasks is scheduled again elsewhere.
//!
//! With `--queued N`, instead: a deep queue. N echo tasks are submitted over one stream to a
//! head with the file store and no worker, as fast as it takes them (the submit rate, and the
//! head's memory per queued task); then `--drain-workers` simulated workers join and drain
//! it (tasks/s; every task run once; tasks started in the order they were submitted).
//!
//! This machine's cores are shared by the head and the simulator, whose own CPU is printed
//! too. `cargo build --release --bins && cargo bench -p fleet-benches --bench scale --
//! [--workers 2,1000,3000,10000] [--tasks N] [--slots N] [--sequential N]
//! [--queued N [--drain-workers N]] [--inspector ROUNDS [--pages LIST]]`. Figures in
//! BENCHMARKS.md.
//!
//! With `--inspector ROUNDS`, instead: what an open inspector costs a busy head. On the first
//! `--workers` size, `--tasks` echo tasks at once, ROUNDS times with every inspector page's
//! live stream open (cluster, agents, tasks, the timeline of the last minute, the charts)
//! and ROUNDS times without, alternating: the median tasks/s and head CPU of each and their
//! ratio. `--pages` opens only the streams it lists (their paths, comma-separated).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, Client, EventKind, ManyUpdate, Submission, TaskEvent};
use fleet_testkit::ClusterSandbox;
use fleet_testkit::procfs::cpu_seconds;
use fleet_testkit::simworker::{SimFleet, SimOptions};
use futures::StreamExt;

struct Args {
    workers: Vec<usize>,
    tasks: usize,
    slots: u32,
    sequential: usize,
    queued: usize,
    drain_workers: usize,
    inspector: usize,
    pages: Vec<String>,
}

/// The inspector's pages, by their live streams.
const PAGES: [&str; 5] = [
    "/ui/api/cluster/live",
    "/ui/api/agents/live",
    "/ui/api/tasks/live",
    "/ui/api/timeline/live?window_s=60",
    "/ui/api/charts/live",
];

fn args() -> Result<Args> {
    // Two workers first: what the simulator and this machine give when the head has little
    // to look after, to read the larger fleets' figures against.
    let mut args = Args {
        workers: vec![2, 1_000, 3_000, 10_000],
        tasks: 50_000,
        slots: 8,
        sequential: 200,
        queued: 0,
        drain_workers: 100,
        inspector: 0,
        pages: PAGES.iter().map(|p| p.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--workers" => {
                args.workers = value()?
                    .split(',')
                    .map(|n| n.trim().parse().context("--workers: a list of numbers"))
                    .collect::<Result<_>>()?
            }
            "--tasks" => args.tasks = value()?.parse()?,
            "--slots" => args.slots = value()?.parse()?,
            "--sequential" => args.sequential = value()?.parse()?,
            "--queued" => args.queued = value()?.parse()?,
            "--drain-workers" => args.drain_workers = value()?.parse()?,
            "--inspector" => args.inspector = value()?.parse()?,
            "--pages" => {
                args.pages = value()?.split(',').map(|p| p.trim().to_owned()).collect();
                for page in &args.pages {
                    ensure!(
                        PAGES.contains(&page.as_str()),
                        "--pages: {page} is not one of {}",
                        PAGES.join(", ")
                    );
                }
            }
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// The CPU two processes used over a stretch of time, as shares of one core.
struct CpuMeter {
    head: u32,
    start: Instant,
    head_cpu: f64,
    own_cpu: f64,
}

impl CpuMeter {
    fn start(head: u32) -> Result<Self> {
        Ok(Self {
            head_cpu: cpu_seconds(head)?,
            own_cpu: cpu_seconds(std::process::id())?,
            head,
            start: Instant::now(),
        })
    }

    /// (head, this process) as shares of one core since `start`.
    fn shares(&self) -> Result<(f64, f64)> {
        let wall = self.start.elapsed().as_secs_f64();
        Ok((
            (cpu_seconds(self.head)? - self.head_cpu) / wall,
            (cpu_seconds(std::process::id())? - self.own_cpu) / wall,
        ))
    }
}

/// A head with room for any queue, and no worker yet.
async fn head_without_workers() -> Result<ClusterSandbox> {
    ClusterSandbox::builder()
        .workers(0)
        .head_arg("--max-queued-tasks")
        .head_arg("10000000")
        .log("warn")
        .start()
        .await
}

/// The simulated workers' settings for `sandbox`'s head, with `--slots` each.
fn sim_options(sandbox: &ClusterSandbox, args: &Args) -> SimOptions {
    let mut options = SimOptions::new(sandbox.url.clone());
    options.join_token = Some(sandbox.join_token().to_owned());
    options.slots = args.slots;
    options
}

/// An agent answering as `builtin:echo` does.
fn echo_agent(name: &str) -> AgentSpec {
    AgentSpec { name: name.into(), model: "builtin:echo".into(), ..Default::default() }
}

fn rss_mib(sandbox: &ClusterSandbox) -> f64 {
    sandbox.head_rss_bytes().unwrap_or(0) as f64 / f64::from(1 << 20)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(us: u64) -> String {
    if us >= 10_000 { format!("{:.0} ms", us as f64 / 1000.0) } else { format!("{us} µs") }
}

/// Submits `n` echo tasks at once and follows them to the end: (wall time, the head's
/// placement latencies in µs, the tasks' events).
async fn run_batch(
    client: &Client,
    agent: &str,
    n: usize,
) -> Result<(Duration, Vec<u64>, HashMap<String, Vec<TaskEvent>>)> {
    let started = Instant::now();
    let (sender, mut updates) = client.submit_many().await?;
    let items = (0..n).map(|i| (i as u64, Submission::new(agent, format!("task {i}"))));
    sender.send(items).await?;
    drop(sender);
    let mut events: HashMap<String, Vec<TaskEvent>> = HashMap::with_capacity(n);
    let mut ended = 0;
    while let Some(batch) = updates.next().await {
        for update in batch? {
            match update {
                ManyUpdate::Accepted { .. } => {}
                ManyUpdate::Rejected { message, .. } => bail!("rejected: {message}"),
                ManyUpdate::Event(e) => {
                    if matches!(e.kind, EventKind::Completed { .. } | EventKind::Failed { .. }) {
                        ended += 1;
                    }
                    events.entry(e.task_id.to_string()).or_default().push(e);
                }
            }
        }
    }
    let wall = started.elapsed();
    ensure!(ended == n, "{ended} of {n} tasks ended");
    Ok((wall, placement_latencies(&events), events))
}

/// From each task's first `Submitted` to its first `Scheduled`, by the head's clock.
fn placement_latencies(events: &HashMap<String, Vec<TaskEvent>>) -> Vec<u64> {
    let mut latencies: Vec<u64> = events
        .values()
        .filter_map(|log| {
            let at =
                |f: fn(&EventKind) -> bool| log.iter().find(|e| f(&e.kind)).map(|e| e.timestamp_us);
            let submitted = at(|k| matches!(k, EventKind::Submitted { .. }))?;
            let scheduled = at(|k| matches!(k, EventKind::Scheduled { .. }))?;
            Some(scheduled.saturating_sub(submitted))
        })
        .collect();
    latencies.sort_unstable();
    latencies
}

async fn one_size(args: &Args, n: usize) -> Result<()> {
    let sandbox = head_without_workers().await?;
    let head_pid = sandbox.head_pid().context("the head's pid")?;
    let client = sandbox.client().await?;
    let before = rss_mib(&sandbox);

    let options = sim_options(&sandbox, args);
    let cpu = CpuMeter::start(head_pid)?;
    let (fleet, join_time) = SimFleet::join(options.clone(), n, Duration::from_secs(600)).await?;
    let (join_head, join_sim) = cpu.shares()?;
    let status = client.status().await?;
    ensure!(status.workers.len() == n, "{} of {n} workers listed", status.workers.len());
    let joined = rss_mib(&sandbox);
    println!(
        "| {n} | join | {:.2} s | head {:.0}% of a core, simulator {:.0}% | head RSS {before:.0} → {joined:.0} MiB ({:.1} KiB per worker) |",
        join_time.as_secs_f64(),
        join_head * 100.0,
        join_sim * 100.0,
        (joined - before) * 1024.0 / n as f64,
    );

    // Idle: heartbeats only, once every worker has heard the interval for the whole fleet
    // (with its next beat, at most a second away at the head's defaults).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = CpuMeter::start(head_pid)?;
    let beats = fleet.counts().heartbeats;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (idle_head, idle_sim) = cpu.shares()?;
    let beats_per_s =
        (fleet.counts().heartbeats - beats) as f64 / cpu.start.elapsed().as_secs_f64();
    println!(
        "| {n} | idle | {beats_per_s:.0} heartbeats/s ({} intervals told after welcomes) | head {:.1}% of a core, simulator {:.1}% | head RSS {:.0} MiB |",
        fleet.counts().intervals_told,
        idle_head * 100.0,
        idle_sim * 100.0,
        rss_mib(&sandbox),
    );

    // Load: many instant tasks at once.
    client.register_agent(echo_agent("echo")).await?;
    let cpu = CpuMeter::start(head_pid)?;
    let (wall, latencies, _) = run_batch(&client, "echo", args.tasks).await?;
    let (load_head, load_sim) = cpu.shares()?;
    println!(
        "| {n} | load: {} tasks | {:.0} tasks/s | head {:.0}% of a core, simulator {:.0}% | wait for a worker p50 {}, p99 {}; head RSS {:.0} MiB |",
        args.tasks,
        args.tasks as f64 / wall.as_secs_f64(),
        load_head * 100.0,
        load_sim * 100.0,
        micros(percentile(&latencies, 0.5)),
        micros(percentile(&latencies, 0.99)),
        rss_mib(&sandbox),
    );

    // One task at a time on the idle cluster: the round trip as the client sees it.
    let mut alone = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        let started = Instant::now();
        let mut stream = client.submit(Submission::new("echo", format!("alone {i}"))).await?;
        let mut completed = false;
        while let Some(event) = stream.next().await {
            completed |= matches!(event?.kind, EventKind::Completed { .. });
        }
        ensure!(completed, "task {i} did not complete");
        alone.push(started.elapsed().as_micros() as u64);
    }
    alone.sort_unstable();
    println!(
        "| {n} | round trip alone: {} tasks in turn | p50 {} | p99 {} | |",
        args.sequential,
        micros(percentile(&alone, 0.5)),
        micros(percentile(&alone, 0.99)),
    );

    fleet.shutdown().await;
    // 1% of a fleet, with the other 99% to take their tasks.
    if n >= 100 {
        lost_workers(&sandbox, &client, args, n).await?;
    }
    sandbox.shutdown().await
}

/// A fresh fleet of `n` on the same head, half the slots running a long task; 1% of the
/// workers lost at once. The time from the loss to each of their tasks' next `Scheduled`.
async fn lost_workers(
    sandbox: &ClusterSandbox,
    client: &Client,
    args: &Args,
    n: usize,
) -> Result<()> {
    let mut options = sim_options(sandbox, args);
    options.name_prefix = "long".into();
    options.task_time = Duration::from_secs(10);
    let (fleet, _) = SimFleet::join(options, n, Duration::from_secs(600)).await?;
    client.register_agent(AgentSpec { max_retries: 3, ..echo_agent("slow") }).await?;
    // Half the slots, so the lost tasks find free ones at once.
    let tasks = n * args.slots as usize / 2;
    let batch = {
        let client = client.clone();
        tokio::spawn(async move { run_batch(&client, "slow", tasks).await })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.counts().tasks_started < tasks as u64 {
        ensure!(Instant::now() < deadline, "the slots did not fill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = n / 100;
    let lost_at_us = fleet_proto_now_us();
    for i in 0..lost {
        if i % 2 == 0 { fleet.crash(i) } else { fleet.silence(i) }
    }
    let crashed: Vec<String> =
        (0..lost).step_by(2).map(|i| fleet.worker_id(i).to_owned()).collect();
    let silent: Vec<String> = (1..lost).step_by(2).map(|i| fleet.worker_id(i).to_owned()).collect();
    let (_, _, events) = batch.await??;
    let again = |ids: &[String]| -> Vec<u64> {
        let mut times: Vec<u64> = events
            .values()
            .filter(|log| {
                log.iter().any(|e| matches!(&e.kind, EventKind::Scheduled { worker_id } if ids.contains(worker_id)))
            })
            .filter_map(|log| {
                log.iter()
                    .filter(|e| e.timestamp_us > lost_at_us)
                    .find(|e| matches!(e.kind, EventKind::Scheduled { .. }))
                    .map(|e| e.timestamp_us - lost_at_us)
            })
            .collect();
        times.sort_unstable();
        times
    };
    let (c, s) = (again(&crashed), again(&silent));
    println!(
        "| {n} | lost: {} crashed, {} silent | crashed: {} tasks again after p50 {}, max {} | silent: {} tasks again after p50 {}, max {} | |",
        crashed.len(),
        silent.len(),
        c.len(),
        micros(percentile(&c, 0.5)),
        micros(c.last().copied().unwrap_or(0)),
        s.len(),
        micros(percentile(&s, 0.5)),
        micros(s.last().copied().unwrap_or(0)),
    );
    fleet.shutdown().await;
    Ok(())
}

fn fleet_proto_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `n` echo tasks queued with no worker to run them, then drained by `--drain-workers`.
async fn deep_queue(args: &Args, n: usize) -> Result<()> {
    const CHUNK: usize = 1_024;
    let sandbox = ClusterSandbox::builder()
        .workers(0)
        .head_arg("--max-queued-tasks")
        .head_arg(n.to_string())
        .log("warn")
        .start()
        .await?;
    let head_pid = sandbox.head_pid().context("the head's pid")?;
    let client = sandbox.client().await?;
    client.register_agent(echo_agent("echo")).await?;
    let before = rss_mib(&sandbox);

    // Submitted as fast as the head acknowledges: the stream's own flow control paces it.
    let cpu = CpuMeter::start(head_pid)?;
    let started = Instant::now();
    let (sender, mut updates) = client.submit_many().await?;
    let feeder = tokio::spawn(async move {
        for start in (0..n).step_by(CHUNK) {
            let refs = start..(start + CHUNK).min(n);
            let items = refs.map(|i| (i as u64, Submission::new("echo", format!("task {i}"))));
            sender.send(items).await?;
        }
        anyhow::Ok(sender)
    });
    let mut index_of: HashMap<String, u32> = HashMap::with_capacity(n);
    let mut scheduled_us = vec![0u64; n];
    let mut ended = vec![0u8; n];
    let mut take = |update: ManyUpdate, index_of: &mut HashMap<String, u32>| -> Result<()> {
        match update {
            ManyUpdate::Accepted { client_ref, task_id, .. } => {
                index_of.insert(task_id.to_string(), client_ref as u32);
            }
            ManyUpdate::Rejected { message, .. } => bail!("rejected: {message}"),
            ManyUpdate::Event(e) => {
                let i = *index_of.get(e.task_id.as_str()).context("an event before its ack")?;
                match e.kind {
                    EventKind::Scheduled { .. } if scheduled_us[i as usize] == 0 => {
                        scheduled_us[i as usize] = e.timestamp_us;
                    }
                    EventKind::Completed { .. } | EventKind::Failed { .. } => {
                        ended[i as usize] += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    };
    while index_of.len() < n {
        for update in updates.next().await.context("the stream ended")?? {
            take(update, &mut index_of)?;
        }
    }
    let accepted = started.elapsed();
    let (submit_head, _) = cpu.shares()?;
    let sender = feeder.await??;
    let queued = rss_mib(&sandbox);
    let status = client.status().await?;
    println!(
        "| {n} queued | submit | {:.0} tasks/s ({:.1} s) | head {:.0}% of a core | head RSS {before:.0} → {queued:.0} MiB ({:.0} bytes per queued task); {} queued |",
        n as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64(),
        submit_head * 100.0,
        (queued - before) * f64::from(1 << 20) / n as f64,
        status.queued_tasks,
    );

    // The drain: simulated workers join and take the queue.
    let options = sim_options(&sandbox, args);
    let cpu = CpuMeter::start(head_pid)?;
    let started = Instant::now();
    let (fleet, _) = SimFleet::join(options, args.drain_workers, Duration::from_secs(600)).await?;
    let mut done = 0;
    while done < n {
        for update in updates.next().await.context("the stream ended")?? {
            let last = matches!(
                &update,
                ManyUpdate::Event(e) if matches!(e.kind, EventKind::Completed { .. } | EventKind::Failed { .. })
            );
            take(update, &mut index_of)?;
            done += usize::from(last);
        }
    }
    let drained = started.elapsed();
    let (drain_head, drain_sim) = cpu.shares()?;
    drop(sender);
    ensure!(ended.iter().all(|&e| e == 1), "a task did not end exactly once");
    // Started in the order submitted: each task's Scheduled no earlier than the one before.
    let out_of_order = scheduled_us.windows(2).filter(|w| w[1] < w[0]).count();
    println!(
        "| {n} queued | drain: {} workers × {} slots | {:.0} tasks/s ({:.1} s) | head {:.0}% of a core, simulator {:.0}% | every task once; {out_of_order} started before the task submitted ahead of it; head RSS {:.0} MiB |",
        args.drain_workers,
        args.slots,
        n as f64 / drained.as_secs_f64(),
        drained.as_secs_f64(),
        drain_head * 100.0,
        drain_sim * 100.0,
        rss_mib(&sandbox),
    );
    fleet.shutdown().await;
    sandbox.shutdown().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    if args.inspector > 0 {
        println!("| workers | inspector | tasks/s (median) | head CPU (median) | rounds | |");
        println!("|---|---|---|---|---|---|");
        return inspector_cost(&args).await;
    }
    if args.queued > 0 {
        println!("| tasks | phase | rate | CPU | |");
        println!("|---|---|---|---|---|");
        return deep_queue(&args, args.queued).await;
    }
    println!("| workers | phase | | | |");
    println!("|---|---|---|---|---|");
    for &n in &args.workers {
        one_size(&args, n).await?;
    }
    Ok(())
}

/// `--inspector`: tasks/s with every inspector page's live stream open and without.
async fn inspector_cost(args: &Args) -> Result<()> {
    let n = args.workers.iter().copied().find(|&n| n > 2).unwrap_or(1_000);
    let sandbox = head_without_workers().await?;
    let client = sandbox.client().await?;
    let (_fleet, _) =
        SimFleet::join(sim_options(&sandbox, args), n, Duration::from_secs(600)).await?;
    client.register_agent(echo_agent("echo")).await?;
    // Warm up: the head's tables at their working size.
    run_batch(&client, "echo", args.tasks).await?;
    let pages = &args.pages;
    let pid = sandbox.head_pid().context("the head's pid")?;
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    let (mut open_cpu, mut closed_cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.inspector {
        let meter = CpuMeter::start(pid)?;
        let (wall, _, _) = run_batch(&client, "echo", args.tasks).await?;
        closed.push(args.tasks as f64 / wall.as_secs_f64());
        closed_cpu.push(meter.shares()?.0);
        let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let streams: Vec<_> = pages
            .iter()
            .map(|p| fleet_testkit::read_event_stream(&sandbox.address, p, events.clone()))
            .collect();
        let meter = CpuMeter::start(pid)?;
        let (wall, _, _) = run_batch(&client, "echo", args.tasks).await?;
        open.push(args.tasks as f64 / wall.as_secs_f64());
        open_cpu.push(meter.shares()?.0);
        for stream in streams {
            stream.abort();
        }
        let seen = events.load(std::sync::atomic::Ordering::Relaxed);
        ensure!(seen >= pages.len(), "the pages' streams sent {seen} events");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (open_rate, closed_rate) = (median(&mut open), median(&mut closed));
    let (open_cpu, closed_cpu) = (median(&mut open_cpu), median(&mut closed_cpu));
    let rounds = args.inspector;
    let shown = if pages.len() == PAGES.len() { "every page".to_owned() } else { pages.join(" ") };
    println!(
        "| {n} | closed | {closed_rate:.0} | {:.0}% | {rounds} × {} tasks | |",
        100.0 * closed_cpu,
        args.tasks
    );
    println!(
        "| {n} | {shown} open | {open_rate:.0} | {:.0}% | {rounds} × {} tasks | {:.1}% of the throughput |",
        100.0 * open_cpu,
        args.tasks,
        100.0 * open_rate / closed_rate,
    );
    Ok(())
}
