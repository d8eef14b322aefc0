//! A `ClusterSandbox` for tests and benchmarks: a real `fleet-head` and N real
//! `fleet-worker` processes on 127.0.0.1 with ephemeral ports, started and waited for until
//! ready, and shut down explicitly (or when dropped).
//!
//! The binaries are looked up next to the running test or bench executable (cargo builds
//! them for `cargo test --workspace` and `cargo build --bins`), or at `FLEET_HEAD_BIN` and
//! `FLEET_WORKER_BIN`.
//!
//! [`SandboxBuilder::tls`] serves the head over TLS with certificates from [`tls`]; [`fuzz`]
//! holds the inputs of the fuzz targets; [`postgres`] starts a PostgreSQL server of the
//! test's own (for the shared store and standby heads), and [`spawn_head`] a head beside a
//! sandbox's. [`simworker`] puts thousands of simulated workers on one head.
//! [`SandboxBuilder::network`] puts the head, each worker and the test's clients on hosts
//! of an [`network::EmulatedNetwork`] (namespaces on a wire with delay, loss and
//! partitions) instead of 127.0.0.1.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use fleet_client::{Client, ConnectOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod fuzz;
pub mod network;
pub mod postgres;
pub mod procfs;
pub mod simworker;
pub mod tls;
pub use tls::TestCertificates;

/// What a sandbox's heads wrote to stderr (their log), the latest [`HeadLog::KEEP`] bytes;
/// passed on to the test's own stderr line by line as it comes.
#[derive(Debug, Clone, Default)]
pub struct HeadLog(Arc<Mutex<String>>);

impl HeadLog {
    /// How much of the log is kept (the oldest half goes when it is full).
    pub const KEEP: usize = 4 << 20;

    /// The log so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Reads `stderr` until it ends, keeping its lines.
    fn follow(&self, stderr: tokio::process::ChildStderr) {
        let log = self.0.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let Ok(mut text) = log.lock() else { return };
                if text.len() + line.len() > Self::KEEP {
                    let cut = text.len() / 2;
                    let cut = (cut..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                    text.drain(..cut);
                }
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
}

/// Workers' meshes listen on loopback only: tests never open ports beyond 127.0.0.1.
const LOOPBACK_MESH: &str = "/ip4/127.0.0.1/tcp/0";

/// What a worker reads from the environment besides its credentials: a sandbox's workers
/// are what its builder says, whatever the shell running the tests exports.
const WORKER_SETTINGS: [&str; 8] = [
    "FLEET_WORKER_NAME",
    "FLEET_MESH_MAX_PEERS",
    "FLEET_CPUS",
    "FLEET_MEMORY_MB",
    "FLEET_GPUS",
    "FLEET_DEVICE",
    "FLEET_MODELS_DIR",
    "FLEET_DRAIN_TIMEOUT",
];

/// The text a task's last attempt streamed (a retried attempt's deltas stay in the log,
/// marked by their attempt number).
pub fn final_text(events: &[fleet_client::TaskEvent]) -> String {
    let attempt = events.last().map_or(0, |e| e.attempt);
    events
        .iter()
        .filter(|e| e.attempt == attempt)
        .filter_map(|e| match &e.kind {
            fleet_client::EventKind::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Submits one task of `agent` per input in one `SubmitMany` stream and follows them all
/// to their ends: every event of every task, by the input's index.
pub async fn run_all(
    client: fleet_client::Client,
    agent: &str,
    inputs: Vec<String>,
) -> anyhow::Result<std::collections::HashMap<usize, Vec<fleet_client::TaskEvent>>> {
    use futures::StreamExt;
    let (sender, mut updates) = client.submit_many().await?;
    let items = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| (i as u64, fleet_client::Submission::new(agent, input)));
    sender.send(items).await?;
    drop(sender);
    let mut index_of = std::collections::HashMap::new();
    let mut events = std::collections::HashMap::<usize, Vec<fleet_client::TaskEvent>>::new();
    while let Some(batch) = updates.next().await {
        for update in batch? {
            match update {
                fleet_client::ManyUpdate::Accepted { client_ref, task_id, .. } => {
                    index_of.insert(task_id, client_ref as usize);
                }
                fleet_client::ManyUpdate::Rejected { message, .. } => bail!("rejected: {message}"),
                fleet_client::ManyUpdate::Event(e) => {
                    let index = *index_of.get(&e.task_id).context("an event before its ack")?;
                    events.entry(index).or_default().push(e);
                }
            }
        }
    }
    Ok(events)
}

/// What a client saw of a batch of tasks ([`fleet_client::ManyUpdate`]s): each accepted
/// task's index (its client ref) and events, and how many completed.
#[derive(Debug, Default)]
pub struct BatchLog {
    pub index_of: std::collections::HashMap<String, usize>,
    pub events: std::collections::HashMap<String, Vec<fleet_client::TaskEvent>>,
    pub completed: usize,
}

impl BatchLog {
    /// Takes one update in; a rejected submission is an error (the tests submit valid ones).
    pub fn take(&mut self, update: fleet_client::ManyUpdate) -> anyhow::Result<()> {
        match update {
            fleet_client::ManyUpdate::Accepted { client_ref, task_id, .. } => {
                self.index_of.insert(task_id.to_string(), client_ref as usize);
            }
            fleet_client::ManyUpdate::Rejected { message, .. } => bail!("rejected: {message}"),
            fleet_client::ManyUpdate::Event(e) => {
                if matches!(e.kind, fleet_client::EventKind::Completed { .. }) {
                    self.completed += 1;
                }
                self.events.entry(e.task_id.to_string()).or_default().push(e);
            }
        }
        Ok(())
    }
}

/// Where a binary of this workspace was built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the {name} binary near {}: build it first (`cargo build --release --bins`, which \
         `cargo test --workspace` also does) or set {var}",
        exe.display()
    )
}

/// Settings of a sandbox cluster.
#[derive(Debug, Clone, Default)]
pub struct SandboxBuilder {
    workers: usize,
    token: Option<String>,
    head_args: Vec<String>,
    worker_args: Vec<String>,
    config_toml: Option<String>,
    log: Option<String>,
    tls: bool,
    standbys: usize,
    network: Option<NetworkChoice>,
}

/// The emulated network a sandbox runs on.
#[derive(Debug, Clone)]
enum NetworkChoice {
    New(network::Conditions),
    Existing(Arc<network::EmulatedNetwork>),
}

impl SandboxBuilder {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The head's client token (`--token`); the sandbox's clients present it.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// The head's API key (`--api-key`); the sandbox's clients present it when no token is
    /// set.
    pub fn api_key(mut self, key: &str) -> Self {
        self.head_args.extend(["--api-key".to_owned(), key.to_owned()]);
        self.token.get_or_insert_with(|| key.to_owned());
        self
    }

    pub fn head_arg(mut self, arg: impl Into<String>) -> Self {
        self.head_args.push(arg.into());
        self
    }

    pub fn worker_arg(mut self, arg: impl Into<String>) -> Self {
        self.worker_args.push(arg.into());
        self
    }

    /// A `fleet.toml` for the head.
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_owned());
        self
    }

    /// Serve the head over TLS (a CA made for this sandbox): the URL is `https://`, and the
    /// sandbox's workers and clients trust that CA.
    /// Starts `n` more heads after the first one leads, on the same store (give
    /// `--store postgres://...` with [`SandboxBuilder::head_arg`]): standbys. Workers and
    /// clients get every head's URL.
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }

    /// Runs the head, each worker and the test's clients on hosts of an emulated network
    /// under `conditions` (see [`network`]): the head on host `head`, standbys on `head-1`,
    /// ..., each worker on a host named as the worker, clients on [`network::CLIENT`].
    /// [`ClusterSandbox::network`] changes the conditions and makes partitions.
    pub fn network(mut self, conditions: network::Conditions) -> Self {
        self.network = Some(NetworkChoice::New(conditions));
        self
    }

    /// As [`SandboxBuilder::network`], on a network the test made (and may have put other
    /// hosts on, e.g. a [`postgres::PostgresServer::start_on`] one).
    pub fn on_network(mut self, network: Arc<network::EmulatedNetwork>) -> Self {
        self.network = Some(NetworkChoice::Existing(network));
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// `RUST_LOG` for the processes [default: warn].
    pub fn log(mut self, filter: &str) -> Self {
        self.log = Some(filter.to_owned());
        self
    }

    /// Starts the head and the workers and waits until every worker has joined.
    pub async fn start(mut self) -> anyhow::Result<ClusterSandbox> {
        // A head off loopback refuses to serve without credentials (as it should): a
        // sandbox on a network always has a client token.
        if self.network.is_some() && self.token.is_none() {
            self.token = Some(format!("client-{}", unique()));
        }
        let dir =
            std::env::temp_dir().join(format!("fleet-sandbox-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let mut head_args = self.head_args.clone();
        if let Some(toml) = &self.config_toml {
            let path = dir.join("fleet.toml");
            std::fs::write(&path, toml)?;
            head_args.push("--config".into());
            head_args.push(path.display().to_string());
        }
        let api_key = self.head_args.iter().position(|a| a == "--api-key");
        let key = api_key.and_then(|i| self.head_args.get(i + 1));
        if let Some(token) = self.token.as_ref().filter(|t| Some(*t) != key) {
            head_args.push("--token".into());
            head_args.push(token.clone());
        }
        // Workers always join with their own token, as in a real deployment.
        let join_token = format!("join-{}", unique());
        head_args.push("--join-token".into());
        head_args.push(join_token.clone());
        let certificates = if self.tls {
            let files = tls::make_certificates(&dir)?;
            head_args.extend(["--tls-cert".to_owned(), files.cert.display().to_string()]);
            head_args.extend(["--tls-key".to_owned(), files.key.display().to_string()]);
            Some(files)
        } else {
            None
        };
        // Each sandbox's head keeps its state in the sandbox (a restarted head finds it).
        if !head_args.iter().any(|a| a == "--store" || a == "--data-dir") {
            head_args
                .extend(["--data-dir".to_owned(), dir.join("head-data").display().to_string()]);
        }
        let scheme = if self.tls { "https" } else { "http" };
        let log = self.log.clone().unwrap_or_else(|| "warn".to_owned());
        let started = Instant::now();
        let head_log = HeadLog::default();
        let network = match self.network.clone() {
            Some(NetworkChoice::New(conditions)) => {
                Some(Arc::new(network::EmulatedNetwork::new(conditions)?))
            }
            Some(NetworkChoice::Existing(network)) => Some(network),
            None => None,
        };
        let head_place = Place::on(network.as_ref(), "head")?;
        let (head, address) = start_head(&head_place, "0", &head_args, &log, &head_log).await?;
        let mut standby_heads = Vec::new();
        let mut url = format!("{scheme}://{address}");
        if self.standbys > 0 {
            // The first head must lead before the others start, or one of them might.
            let deadline = Instant::now() + Duration::from_secs(20);
            while http_at(&address, "GET", "/healthz", &[], b"").await.map(|r| r.0).ok()
                != Some(200)
            {
                if Instant::now() > deadline {
                    bail!("the first head did not become ready within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for i in 0..self.standbys {
                let standby_place = Place::on(network.as_ref(), &format!("head-{}", i + 1))?;
                let (standby, standby_address) =
                    start_head(&standby_place, "0", &head_args, &log, &head_log).await?;
                url.push_str(&format!(",{scheme}://{standby_address}"));
                standby_heads.push((standby, standby_address));
            }
        }
        let mut sandbox = ClusterSandbox {
            url,
            address,
            certificates,
            head,
            standby_heads,
            head_args,
            workers: Vec::new(),
            token: self.token.clone(),
            join_token,
            worker_args: self.worker_args.clone(),
            log,
            head_log,
            next_worker: 0,
            started,
            dir,
            head_place,
            network,
        };
        for _ in 0..self.workers {
            sandbox.add_worker()?;
        }
        sandbox.wait_for_workers(self.workers, Duration::from_secs(15)).await?;
        Ok(sandbox)
    }
}

/// Starts `fleet-head` on `listen` and returns it with the address it bound.
pub async fn spawn_head(
    listen: &str,
    args: &[String],
    log: &str,
) -> anyhow::Result<(Child, String)> {
    let (host, port) = listen.rsplit_once(':').context("listen on host:port")?;
    let place = match host {
        "127.0.0.1" => Place::Loopback,
        _ => bail!("spawn_head listens on 127.0.0.1"),
    };
    start_head(&place, port, args, log, &HeadLog::default()).await
}

/// Where a sandbox runs a process: on 127.0.0.1, or on a host of its emulated network.
#[derive(Debug, Clone)]
enum Place {
    Loopback,
    Host { network: Arc<network::EmulatedNetwork>, host: String, address: std::net::Ipv4Addr },
}

impl Place {
    /// Host `host` of `network` (added when new), or 127.0.0.1 without a network.
    fn on(network: Option<&Arc<network::EmulatedNetwork>>, host: &str) -> anyhow::Result<Self> {
        Ok(match network {
            Some(network) => {
                let address = network.host(host)?;
                Place::Host { network: network.clone(), host: host.to_owned(), address }
            }
            None => Place::Loopback,
        })
    }

    fn command(&self, program: PathBuf) -> anyhow::Result<Command> {
        match self {
            Place::Loopback => Ok(Command::new(program)),
            Place::Host { network, host, .. } => network.command(host, program),
        }
    }

    fn ip(&self) -> String {
        match self {
            Place::Loopback => "127.0.0.1".to_owned(),
            Place::Host { address, .. } => address.to_string(),
        }
    }

    /// Where a worker here listens for its mesh: on its own address only.
    fn mesh_listen(&self) -> String {
        match self {
            Place::Loopback => LOOPBACK_MESH.to_owned(),
            Place::Host { address, .. } => format!("/ip4/{address}/tcp/0"),
        }
    }
}

async fn start_head(
    place: &Place,
    port: &str,
    args: &[String],
    log: &str,
    head_log: &HeadLog,
) -> anyhow::Result<(Child, String)> {
    let mut head = place.command(binary("fleet-head")?)?;
    head.args(["--listen", &format!("{}:{port}", place.ip()), "--print-address"])
        .args(args)
        .env("RUST_LOG", log)
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_JOIN_TOKEN")
        .env_remove("FLEET_API_KEY")
        .env_remove("FLEET_TLS_CERT")
        .env_remove("FLEET_TLS_KEY")
        .env_remove("FLEET_STORE")
        .env_remove("FLEET_DATA_DIR")
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut head = head.spawn().context("cannot start fleet-head")?;
    if let Some(stderr) = head.stderr.take() {
        head_log.follow(stderr);
    }
    let stdout = head.stdout.take().context("fleet-head has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("fleet-head did not print its address within 10 s")??
        .context("fleet-head exited before printing its address")?;
    let address = line
        .strip_prefix("listening on ")
        .context("unexpected first line from fleet-head")?
        .to_owned();
    Ok((head, address))
}

/// Submits a task and collects its events up to its terminal one.
pub async fn run_to_end(
    client: &Client,
    submission: fleet_client::Submission,
) -> anyhow::Result<Vec<fleet_client::EventKind>> {
    use futures::StreamExt;
    let mut stream = client.submit(submission).await?;
    let mut kinds = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event?;
        let end = event.kind.is_terminal();
        kinds.push(event.kind);
        if end {
            return Ok(kinds);
        }
    }
    bail!("the task's stream ended before the task did: {kinds:?}")
}

/// Waits until `condition` holds (it is asked again every 20 ms), or fails after `within`
/// saying `what` never happened: tests wait on what they can observe, never a fixed time.
pub async fn wait_until<F, Fut>(
    within: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    while !condition().await? {
        if Instant::now() >= deadline {
            bail!("{what} (waited {within:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A name part no other sandbox of this process has had: a counter (tests start sandboxes
/// on several threads at once, and two clock readings can be equal, which once gave two
/// heads one data directory) and the time (apart from earlier runs' leftovers).
pub fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{n}-{nanos}")
}

/// A running head plus workers, each a separate process.
#[derive(Debug)]
pub struct ClusterSandbox {
    /// The head's URL, e.g. `http://127.0.0.1:41234` (`https://` with TLS); with standbys,
    /// every head's URL, separated by commas.
    pub url: String,
    /// The head's `host:port`.
    pub address: String,
    /// The certificates when the head serves TLS.
    pub certificates: Option<TestCertificates>,
    head: Child,
    /// Heads started after the first (see [`SandboxBuilder::standbys`]) and their addresses.
    standby_heads: Vec<(Child, String)>,
    head_args: Vec<String>,
    workers: Vec<(String, Child)>,
    token: Option<String>,
    join_token: String,
    worker_args: Vec<String>,
    log: String,
    head_log: HeadLog,
    next_worker: usize,
    started: Instant,
    dir: PathBuf,
    /// Where the first head runs.
    head_place: Place,
    /// Last, so that every process has been killed before the network goes.
    network: Option<Arc<network::EmulatedNetwork>>,
}

impl ClusterSandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// What the sandbox's heads have logged so far (at the builder's `log` level).
    pub fn head_log(&self) -> String {
        self.head_log.text()
    }

    /// How long from the start of `start()` until all workers had joined.
    pub fn startup_time(&self) -> Duration {
        self.started.elapsed()
    }

    /// The token the sandbox's workers join with.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// A raw HTTP/1.1 request to the head, for what typed clients cannot send (or send
    /// only well-formed): returns the status and the body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, String)> {
        if self.certificates.is_some() {
            bail!("ClusterSandbox::http speaks plain HTTP; this sandbox serves TLS");
        }
        http_at(&self.address, method, path, headers, body).await
    }

    /// The emulated network the sandbox runs on ([`SandboxBuilder::network`]).
    pub fn network(&self) -> Option<&network::EmulatedNetwork> {
        self.network.as_deref()
    }

    /// Where the sandbox runs a process named `host`: a new host of its emulated network,
    /// or 127.0.0.1.
    fn place(&self, host: &str) -> anyhow::Result<Place> {
        Place::on(self.network.as_ref(), host)
    }

    /// The addresses of the heads started after the first (standbys at first).
    pub fn standby_addresses(&self) -> Vec<String> {
        self.standby_heads.iter().map(|(_, a)| a.clone()).collect()
    }

    /// The process id of the first head.
    pub fn head_pid(&self) -> Option<u32> {
        self.head.id()
    }

    /// Waits up to `timeout` for the first head to exit; its exit code (None: killed by a
    /// signal), or an error if it still runs.
    pub async fn wait_head_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.head.wait())
            .await
            .context("the head is still running")??;
        Ok(status.code())
    }
}

/// A raw HTTP/1.1 request to `address` (`host:port`): the status and the body.
pub async fn http_at(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head.split(' ').nth(1).context("no status")?.parse()?;
        Ok((status, body.to_owned()))
    }
}

/// Reads a server-sent event stream at `address` (`host:port`) as a browser would, until
/// the task is aborted, counting its events into `events`; an error if the stream ends.
pub fn read_event_stream(
    address: &str,
    path: &str,
    events: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n");
    let address = address.to_owned();
    tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                bail!("the stream ended");
            }
            let seen = buffer[..n].windows(6).filter(|w| w == b"event:").count();
            events.fetch_add(seen, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

impl ClusterSandbox {
    /// The CA file clients need for this sandbox (TLS only).
    pub fn tls_ca(&self) -> Option<&std::path::Path> {
        self.certificates.as_ref().map(|c| c.ca.as_path())
    }

    /// A client with the sandbox's token (and CA).
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with(&self.url, self.client_options()).await?)
    }

    /// What [`ClusterSandbox::client`] connects with, for a client of other settings.
    pub fn client_options(&self) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone(),
            tls_ca: self.tls_ca().map(ToOwned::to_owned),
            ..Default::default()
        }
    }

    /// Starts one more worker named `worker-N`; returns its name.
    pub fn add_worker(&mut self) -> anyhow::Result<String> {
        self.add_worker_with(&[])
    }

    /// Starts one more worker, supervised as [`Self::add_worker`]'s, with `args` after the
    /// sandbox's own worker arguments (e.g. labels of its own).
    pub fn add_worker_with(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let name = format!("worker-{}", self.next_worker);
        self.next_worker += 1;
        let place = self.place(&name)?;
        let mut worker = place.command(binary("fleet-worker")?)?;
        worker
            .args(["--head", &self.url, "--name", &name])
            .args(&self.worker_args)
            .args(args)
            .env("RUST_LOG", &self.log)
            .env("FLEET_MESH_LISTEN", place.mesh_listen())
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_JOIN_TOKEN")
            .arg("--join-token")
            .arg(&self.join_token)
            .args(
                self.tls_ca().map(|ca| ["--tls-ca".as_ref(), ca.as_os_str()]).into_iter().flatten(),
            )
            .kill_on_drop(true);
        for setting in WORKER_SETTINGS {
            worker.env_remove(setting);
        }
        self.workers.push((name.clone(), worker.spawn().context("cannot start fleet-worker")?));
        Ok(name)
    }

    /// Starts a worker process with extra arguments and returns it unsupervised; it joins
    /// with the sandbox's join token unless `args` give one (e.g. a wrong one).
    /// On an emulated network it runs on a host of its own, `process-N`.
    pub fn spawn_worker_process(&self, args: &[&str]) -> anyhow::Result<Child> {
        let place = self.place(&format!("process-{}", unique()))?;
        let mut worker = place.command(binary("fleet-worker")?)?;
        worker.args(["--head", &self.url]).args(args);
        if !args.contains(&"--join-token") {
            worker.args(["--join-token", &self.join_token]);
        }
        if let Some(ca) = self.tls_ca().filter(|_| !args.contains(&"--tls-ca")) {
            worker.arg("--tls-ca").arg(ca);
        }
        worker
            .env("RUST_LOG", &self.log)
            .env("FLEET_MESH_LISTEN", place.mesh_listen())
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_JOIN_TOKEN");
        for setting in WORKER_SETTINGS {
            worker.env_remove(setting);
        }
        Ok(worker.kill_on_drop(true).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?)
    }

    /// Waits until at least `n` workers have joined.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut client = None;
        loop {
            if client.is_none() {
                client = self.client().await.ok();
            }
            if let Some(c) = &client
                && let Ok(status) = c.status().await
                && status.workers.len() >= n
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fewer than {n} workers joined within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills a worker with SIGKILL (no goodbye to the head).
    pub async fn kill_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.workers.iter().position(|(n, _)| n == name).context("no such worker")?;
        let (_, mut child) = self.workers.remove(index);
        child.kill().await?;
        Ok(())
    }

    /// Stops a worker as an operator does (SIGTERM): it drains (finishes its tasks, takes no
    /// new ones) and exits; [`ClusterSandbox::wait_worker_exit`] waits for that.
    pub async fn terminate_worker(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.worker_pid(name).context("no such worker, or it has exited")?;
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        ensure!(sent.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits for a worker to exit; its exit code (`None`: killed by a signal).
    pub async fn wait_worker_exit(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<i32>> {
        let index = self.workers.iter().position(|(n, _)| n == name).context("no such worker")?;
        let status = tokio::time::timeout(timeout, self.workers[index].1.wait())
            .await
            .with_context(|| format!("worker {name} still running after {timeout:?}"))??;
        self.workers.remove(index);
        Ok(status.code())
    }

    /// Kills the head (SIGKILL) and starts a new one on the same address and data; workers
    /// must find it again by themselves.
    pub async fn restart_head(&mut self) -> anyhow::Result<()> {
        self.kill_head().await?;
        self.start_head().await
    }

    /// Stops the head as an operator does (SIGTERM, what systemd, Kubernetes and podman
    /// send) and waits for it to exit cleanly (code 0); [`ClusterSandbox::start_head`]
    /// starts it again.
    pub async fn stop_head(&mut self) -> anyhow::Result<()> {
        let pid = self.head.id().context("the head has already exited")?;
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        ensure!(sent.success(), "kill -TERM {pid} failed");
        let code = self.wait_head_exit(Duration::from_secs(30)).await?;
        ensure!(code == Some(0), "the head exited with {code:?} on SIGTERM");
        Ok(())
    }

    /// Kills the head (SIGKILL); [`ClusterSandbox::start_head`] starts it again.
    pub async fn kill_head(&mut self) -> anyhow::Result<()> {
        self.head.kill().await?;
        Ok(())
    }

    /// Starts the head again on its address and data after [`ClusterSandbox::kill_head`].
    pub async fn start_head(&mut self) -> anyhow::Result<()> {
        let port = self.address.rsplit_once(':').map_or("0", |(_, port)| port);
        let (head, _) =
            start_head(&self.head_place, port, &self.head_args, &self.log, &self.head_log).await?;
        self.head = head;
        Ok(())
    }

    /// The process id of a worker.
    pub fn worker_pid(&self, name: &str) -> Option<u32> {
        self.workers.iter().find(|(n, _)| n == name).and_then(|(_, c)| c.id())
    }

    pub fn worker_names(&self) -> Vec<String> {
        self.workers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Each supervised worker's established TCP connections other than those to the head
    /// (its mesh connections, on a sandbox whose workers talk to nothing else), most first,
    /// with its name; counted by the kernel (`/proc`).
    pub fn worker_mesh_connections(&self) -> anyhow::Result<Vec<(usize, String)>> {
        let head: std::net::SocketAddr = self.address.parse()?;
        let mut counts = Vec::with_capacity(self.workers.len());
        for name in self.worker_names() {
            let pid = self.worker_pid(&name).with_context(|| format!("{name} is not running"))?;
            let connections = procfs::established_connections(pid)?;
            counts.push((connections.iter().filter(|c| c.remote != head).count(), name));
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        Ok(counts)
    }

    /// The head process's resident memory in bytes (Linux).
    pub fn head_rss_bytes(&self) -> Option<u64> {
        proc_status_bytes(self.head.id()?, "VmRSS:")
    }

    /// A worker's resident memory in bytes, now and at its highest (Linux).
    pub fn worker_rss_bytes(&self, name: &str) -> Option<(u64, u64)> {
        let pid = self.worker_pid(name)?;
        Some((proc_status_bytes(pid, "VmRSS:")?, proc_status_bytes(pid, "VmHWM:")?))
    }

    /// Stops every process.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for (_, worker) in &mut self.workers {
            let _ = worker.kill().await;
        }
        for (standby, _) in &mut self.standby_heads {
            let _ = standby.kill().await;
        }
        let _ = self.head.kill().await;
        Ok(())
    }
}

/// A size field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`, given in kB) in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Drop for ClusterSandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
