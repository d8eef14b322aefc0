//! A PostgreSQL server of the test's own: `initdb` into a temporary folder and `pg_ctl`
//! start on 127.0.0.1 and a free port, stopped and removed when dropped. The binaries are
//! Debian's (`apt-get install postgresql`: `/usr/lib/postgresql/N/bin`), or `FLEET_PG_BIN`.
//! PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
//! package creates.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::tls::TestCertificates;

/// A running server; `url` reaches its `postgres` database as the `postgres` superuser.
#[derive(Debug)]
pub struct PostgresServer {
    pub url: String,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<&'static str>,
    /// The network namespace the server runs in (see [`PostgresServer::start_on`]).
    netns: Option<String>,
}

impl PostgresServer {
    /// Creates a cluster and starts it; fails with what to install when there is none.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// As [`start`](Self::start), serving TLS with `certs`' certificate and key and
    /// refusing every TCP connection without it (`hostnossl … reject`).
    pub fn start_tls(certs: &TestCertificates) -> anyhow::Result<Self> {
        Self::start_with(Some(certs))
    }

    /// As [`start`](Self::start), on host `host` of an emulated network (added when it has
    /// none by that name), listening on its address and letting in every host of the
    /// network.
    pub fn start_on(network: &crate::network::EmulatedNetwork, host: &str) -> anyhow::Result<Self> {
        let address = network.host(host)?;
        let netns = network.netns(host).context("the server needs a host of its own")?;
        Self::start_with_at(None, Some((netns, address)))
    }

    fn start_with(tls: Option<&TestCertificates>) -> anyhow::Result<Self> {
        Self::start_with_at(tls, None)
    }

    fn start_with_at(
        tls: Option<&TestCertificates>,
        host: Option<(String, std::net::Ipv4Addr)>,
    ) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "fleet-pg-{}-{}",
            std::process::id(),
            crate::unique()
        ));
        std::fs::create_dir_all(&dir)?;
        let user = running_as_root().then_some("postgres");
        if let Some(user) = user {
            let owned = Command::new("chown").args([user, &dir.display().to_string()]).status()?;
            if !owned.success() {
                bail!("cannot hand {} to the {user} user", dir.display());
            }
        }
        let netns = host.as_ref().map(|(netns, _)| netns.clone());
        let mut server = Self { url: String::new(), dir, bin, user, netns };
        let data = server.dir.join("data");
        server
            .run("initdb", &["-D", &path(&data), "-U", "postgres", "-A", "trust", "--no-sync"])?;
        let ssl = match tls {
            Some(certs) => server.serve_tls(&data, certs)?,
            None => String::new(),
        };
        let listen = match &host {
            Some((_, address)) => {
                let hba = data.join("pg_hba.conf");
                let mut rules = std::fs::read_to_string(&hba)?;
                rules.push_str("host all all 198.18.0.0/15 trust\n");
                std::fs::write(&hba, rules)?;
                address.to_string()
            }
            None => "127.0.0.1".to_owned(),
        };
        // A free port now may be taken by the time the server binds it: try a few. On a
        // host of its own, PostgreSQL's port is free.
        for _ in 0..5 {
            let port = match host {
                Some(_) => 5432,
                None => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            };
            let options = format!(
                "-c listen_addresses={listen} -p {port} -k {} -c max_connections=50{ssl}",
                path(&server.dir)
            );
            let log = server.dir.join("server.log");
            let started = server.run(
                "pg_ctl",
                &["-D", &path(&data), "-l", &path(&log), "-o", &options, "-w", "-t", "30", "start"],
            );
            if started.is_ok() {
                server.url = format!("postgres://postgres@{listen}:{port}/postgres");
                return Ok(server);
            }
        }
        let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
        bail!("PostgreSQL did not start; its log:\n{log}")
    }

    /// Puts the certificate and key in the data directory (the key readable by the server's
    /// user alone, as PostgreSQL demands) and lets TCP clients in over TLS only; returns the
    /// server options that turn TLS on.
    fn serve_tls(&self, data: &Path, certs: &TestCertificates) -> anyhow::Result<String> {
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::copy(&certs.cert, &cert)?;
        std::fs::copy(&certs.key, &key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )?;
        if let Some(user) = self.user {
            for file in [&cert, &key] {
                let owned = Command::new("chown").args([user, &path(file)]).status()?;
                if !owned.success() {
                    bail!("cannot hand {} to the {user} user", file.display());
                }
            }
        }
        Ok(format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", path(&cert), path(&key)))
    }

    /// Runs one of the server's programs (as `postgres` when root, in the server's network
    /// namespace when it has one).
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        // [ip netns exec NS] [runuser -u postgres --] PROGRAM ARGS...
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(netns) = &self.netns {
            words.extend(["ip", "netns", "exec", netns].map(Into::into));
        }
        if let Some(user) = self.user {
            words.extend(["runuser", "-u", user, "--"].map(Into::into));
        }
        words.push(program.clone().into());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // pg_ctl stops the server by its pid file, from anywhere: its namespace may be gone.
        self.netns = None;
        let data = path(&self.dir.join("data"));
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `FLEET_PG_BIN`, else the newest `/usr/lib/postgresql/N/bin`, else `initdb` on PATH.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLEET_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").is_file()))
    {
        return Ok(dir);
    }
    bail!(
        "PostgreSQL's server programs are not installed (no initdb): `apt-get install \
         postgresql` (the tests start a server of their own), or set FLEET_PG_BIN"
    )
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
