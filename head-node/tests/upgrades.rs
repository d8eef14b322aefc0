//! Upgrades: what a head of this version does with what other versions left it or send it.
//!
//! - A file store an older head wrote (its layout without the tables added since:
//!   conversations, actor states, topics) is read, tasks and agents intact, and brought up
//!   to date: what the new tables hold survives the next restart.
//! - A store stamped by a newer head is refused at start, saying which is newer and what to
//!   run; nothing is written to it.
//! - A worker of an older worker protocol (0: before the protocol was numbered) joins; one
//!   of a newer protocol is refused, naming both versions and the order to upgrade in.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, TaskState};
use fleet_proto::{Registration, WorkerUpdate, pb};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(60);

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn echo() -> AgentSpec {
    AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() }
}

/// The tables of `head.redb` that heads before conversations, actor states and topics did
/// not have.
const ADDED_SINCE: [&str; 5] =
    ["conversations", "actors", "topic_messages", "topic_trims", "topic_groups"];

/// Turns the store in `data` into what an older head left: the later tables dropped.
fn make_older(data: &Path) -> Result<()> {
    let db = redb::Database::open(data.join("head.redb"))?;
    let txn = db.begin_write()?;
    let added: Vec<_> =
        txn.list_tables()?.filter(|t| ADDED_SINCE.contains(&redb::TableHandle::name(t))).collect();
    ensure!(added.len() == ADDED_SINCE.len(), "the store lacks some of {ADDED_SINCE:?}");
    for table in added {
        txn.delete_table(table)?;
    }
    txn.commit()?;
    Ok(())
}

fn tables(data: &Path) -> Result<Vec<String>> {
    let db = redb::Database::open(data.join("head.redb"))?;
    let txn = redb::ReadableDatabase::begin_read(&db)?;
    Ok(txn.list_tables()?.map(|t| redb::TableHandle::name(&t).to_owned()).collect())
}

/// The messages of `topic` from offset 0, as many as `n`.
async fn topic(client: &Client, topic: &str, n: usize) -> Result<Vec<String>> {
    let stream = client.follow_log(topic, Some(0), "").await?;
    let messages: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.take(n).collect())
        .await
        .with_context(|| format!("fewer than {n} messages on {topic} within 10 s"))?;
    messages.into_iter().map(|m| Ok(m?.body)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_file_store_is_read_and_brought_up_to_date() -> Result<()> {
    within(async {
        let data = std::env::temp_dir().join(format!("fleet-upgrade-{}", fleet_testkit::unique()));
        let mut cluster = ClusterSandbox::builder()
            .workers(1)
            .head_arg("--data-dir")
            .head_arg(data.display().to_string())
            .start()
            .await?;
        let client = cluster.client().await?;
        client.register_agent(echo()).await?;
        let before = client.run("echo", "kept across the upgrade").await?;
        ensure!(before.state == TaskState::Completed, "{before:?}");

        // A clean stop writes everything into head.redb; then the layout is made older.
        cluster.stop_head().await?;
        make_older(&data)?;
        ensure!(!tables(&data)?.iter().any(|t| ADDED_SINCE.contains(&t.as_str())));

        cluster.start_head().await?;
        let client = cluster.client().await?;
        let task = client.get_task(before.task_id.as_str()).await?;
        ensure!(task.state() == pb::TaskState::Completed, "{task:?}");
        ensure!(task.output == "kept across the upgrade", "{task:?}");
        ensure!(
            client
                .list_agents()
                .await?
                .iter()
                .any(|a| a.spec.as_ref().is_some_and(|s| s.name == "echo"))
        );
        // What the new tables hold outlives a restart.
        client.publish("news", "", "first on the new layout").await?;
        cluster.stop_head().await?;
        let added = tables(&data)?;
        for table in ADDED_SINCE {
            ensure!(added.iter().any(|t| t == table), "{table} not made: {added:?}");
        }
        cluster.start_head().await?;
        let client = cluster.client().await?;
        ensure!(topic(&client, "news", 1).await? == ["first on the new layout"]);
        ensure!(client.run("echo", "still serving").await?.output == "still serving");
        drop(cluster);
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_head_is_refused() -> Result<()> {
    within(async {
        let data = std::env::temp_dir().join(format!("fleet-newer-{}", fleet_testkit::unique()));
        let mut cluster = ClusterSandbox::builder()
            .workers(0)
            .head_arg("--data-dir")
            .head_arg(data.display().to_string())
            .start()
            .await?;
        cluster.stop_head().await?;
        {
            let db = redb::Database::open(data.join("head.redb"))?;
            let txn = db.begin_write()?;
            {
                let meta = redb::TableDefinition::<&str, u64>::new("meta");
                txn.open_table(meta)?.insert("format", 2)?;
            }
            txn.commit()?;
        }
        let output = tokio::process::Command::new(fleet_testkit::binary("fleet-head")?)
            .args(["--listen", "127.0.0.1:0", "--store", "file", "--data-dir"])
            .arg(&data)
            .env_remove("FLEET_CONFIG")
            .kill_on_drop(true)
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.code() == Some(2), "exit {:?}: {stderr}", output.status.code());
        ensure!(
            stderr.contains("store format 2 was written by a newer agentfleet")
                && stderr.contains("reads format 1")
                && stderr.contains("downgrades are not supported"),
            "{stderr}"
        );
        drop(cluster);
        let _ = std::fs::remove_dir_all(&data);
        Ok(())
    })
    .await
}

/// Joins the sandbox's head as a worker speaking `protocol`: the first answer, or the
/// refusal.
async fn join(
    cluster: &ClusterSandbox,
    id: &str,
    protocol: u32,
) -> Result<Result<pb::HeadMessage, tonic::Status>> {
    let channel = tonic::transport::Endpoint::from_shared(cluster.url.clone())?.connect().await?;
    let mut worker = pb::worker_service_client::WorkerServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WorkerMessage>(4);
    let registration = Registration {
        worker_id: id.into(),
        slots: 1,
        version: format!("0.{protocol}.0"),
        protocol,
        ..Default::default()
    };
    tx.send(WorkerUpdate::Register(registration).into()).await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        fleet_proto::TOKEN_METADATA_KEY,
        fleet_proto::bearer(cluster.join_token()).parse()?,
    );
    let mut inbound = match worker.join(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let first = inbound.message().await;
    // Keeps the stream open until the answer is read.
    drop(tx);
    Ok(first.map(|m| m.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_workers_join_and_newer_ones_are_refused() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let client = cluster.client().await?;
        // The sandbox's worker speaks this build's protocol.
        ensure!(client.status().await?.workers.len() == 1);

        let older = join(&cluster, "older", fleet_proto::OLDEST_WORKER_PROTOCOL).await?;
        let welcome = older.map_err(|s| anyhow::anyhow!("an older worker was refused: {s:?}"))?;
        ensure!(matches!(welcome.kind, Some(pb::head_message::Kind::Welcome(_))), "{welcome:?}");

        let newer = fleet_proto::WORKER_PROTOCOL + 1;
        let refused = join(&cluster, "newer", newer).await?;
        let status = refused.err().context("a worker of a newer protocol was let in")?;
        ensure!(status.code() == tonic::Code::FailedPrecondition, "{status:?}");
        let message = status.message();
        ensure!(
            message.contains(&format!("speaks worker protocol {newer}"))
                && message.contains(&format!("agentfleet 0.{newer}.0"))
                && message.contains(env!("CARGO_PKG_VERSION"))
                && message.contains("upgrade the head first"),
            "{message}"
        );
        ensure!(!client.status().await?.workers.iter().any(|w| w.worker_id == "newer"));
        Ok(())
    })
    .await
}

/// The same on a shared PostgreSQL store: refused before anything is created in it.
#[test]
fn a_database_from_a_newer_head_is_refused_and_left_as_it_is() -> Result<()> {
    let pg = fleet_testkit::postgres::PostgresServer::start()?;
    let mut db = postgres::Client::connect(&pg.url, postgres::NoTls)?;
    db.batch_execute(
        "CREATE TABLE fleet_meta (key text PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO fleet_meta VALUES ('format', 2);",
    )?;
    let output = std::process::Command::new(fleet_testkit::binary("fleet-head")?)
        .args(["--listen", "127.0.0.1:0", "--store", &pg.url])
        .env_remove("FLEET_CONFIG")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "exit {:?}: {stderr}", output.status.code());
    ensure!(stderr.contains("store format 2 was written by a newer agentfleet"), "{stderr}");
    let untouched: bool = db.query_one("SELECT to_regclass('fleet_tasks') IS NULL", &[])?.get(0);
    ensure!(untouched, "the head created its tables in a newer database");
    Ok(())
}
