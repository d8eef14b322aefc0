//! A PostgreSQL connection on a thread of its own. The `postgres` client blocks on a tokio
//! runtime it owns, which may not run inside the head's runtime: every call goes to this
//! thread and its answer comes back over a channel, so any thread may wait for one.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use postgres::{Client, Statement};

use super::Target;

type Job = Box<dyn FnOnce(Result<(&mut Client, &mut Prepared), String>) + Send>;

/// Statements prepared on the connection, by their text; forgotten when it is opened again.
/// A statement sent unprepared costs a round trip more and is parsed and planned again each
/// time (the store's write, a statement of ten parts, spent more on that than on writing).
#[derive(Default)]
pub struct Prepared(HashMap<&'static str, Statement>);

impl Prepared {
    fn get(
        &mut self,
        client: &mut Client,
        sql: &'static str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// The sending side of a connection's thread; the thread ends when this is dropped.
pub struct Conn {
    jobs: mpsc::Sender<Job>,
}

impl Conn {
    /// Connects on a new thread named `name`. `statement_timeout` bounds every statement
    /// (a server that stops answering must not hold the caller forever); the server ends
    /// the session of a transaction left idle for `idle_timeout` (a frozen head must not
    /// hold its locks). A connection that breaks is opened again for the next call.
    pub fn open(
        target: &Target,
        name: &str,
        statement_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let mut config = target.config.clone();
        let tls = target.tls.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // `statement_timeout` is the server's: a server the network cut off never says it
        // ran out. The kernel gives up on data unacknowledged for as long (and keepalive
        // probes find a silent server), so a call fails instead of waiting for TCP's ~15
        // minutes. A URL's own `tcp_user_timeout` wins.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(statement_timeout);
        }
        // (Keepalive times are whole seconds: 0 is refused.)
        config.keepalives_idle(
            statement_timeout.clamp(Duration::from_secs(1), Duration::from_secs(30)),
        );
        let ours = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c client_min_messages=warning",
            statement_timeout.as_millis(),
            idle_timeout.as_millis()
        );
        let options = match config.get_options() {
            Some(given) => format!("{given} {ours}"),
            None => ours,
        };
        config.options(&options);
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready, connected) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut prepared = Prepared::default();
                let mut client = match config.connect(tls.clone()) {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        Some(client)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(describe(&e)));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    if client.as_ref().is_none_or(Client::is_closed) {
                        client = None;
                        prepared = Prepared::default();
                        match config.connect(tls.clone()) {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                job(Err(format!("cannot connect again: {}", describe(&e))));
                                continue;
                            }
                        }
                    }
                    if let Some(client) = client.as_mut() {
                        job(Ok((client, &mut prepared)));
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        connected.recv().map_err(|_| "the connection thread ended".to_owned())??;
        Ok(Self { jobs })
    }

    /// Runs `f` on the connection and waits for its answer.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, String> {
        self.send(move |client, _| f(client))
    }

    /// Runs `f` with `sql` prepared on the connection (once per connection) and waits for
    /// its answer.
    pub fn run_prepared<T: Send + 'static>(
        &self,
        sql: &'static str,
        f: impl FnOnce(&mut Client, &Statement) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, String> {
        self.send(move |client, prepared| {
            let statement = prepared.get(client, sql)?;
            f(client, &statement)
        })
    }

    fn send<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &mut Prepared) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |on| {
                let _ = tx.send(on.and_then(|(c, p)| f(c, p).map_err(|e| describe(&e))));
            }))
            .map_err(|_| "the connection is closed".to_owned())?;
        rx.recv().map_err(|_| "the connection thread ended".to_owned())?
    }
}

/// An error with the server's own message where there is one (`postgres::Error`'s
/// `Display` says only "db error"), else with its causes ("error performing TLS handshake:
/// invalid peer certificate: …").
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => fleet_outbound::error_chain(e),
    }
}

/// The server a target names, without its password, and how it is secured:
/// `postgres://user@host:port/db?sslmode=verify-full`.
pub fn display(target: &Target) -> String {
    let config = &target.config;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}?sslmode={}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or(""),
        target.mode.as_str()
    )
}
