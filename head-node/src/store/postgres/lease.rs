//! The leader lease: one row in `fleet_lease` says which head leads, until when, and under
//! which epoch (copied to `fleet_epoch`, the row every write checks). A head takes the lease when it is free or expired (the epoch goes up),
//! renews it well before it expires, and gives it up when it stops. Times are the
//! server's, so heads need no synchronised clocks; the holder's own deadline is measured
//! from before each renewal was sent, so it always ends before the server's.

use std::time::Duration;

use super::{Conn, ensure_schema};
use crate::store::StoreError;

/// What a try to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This head leads under this epoch.
    Leader(i64),
    /// Another head leads; its advertised URL (may be empty) and when its lease ends
    /// unless renewed.
    Standby { leader: String, expires_in: Duration },
}

pub struct Lease {
    conn: Conn,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// Connects for the lease; `holder` is the URL this head is reached at (told to
    /// clients of standbys), `ttl` how long a lease lasts unless renewed.
    pub fn open(target: &super::Target, holder: &str, ttl: Duration) -> Result<Self, StoreError> {
        let server = super::conn::display(target);
        let fail = |message: String| StoreError { what: server.clone(), message, fenced: false };
        // A renewal that hangs must give up before the lease ends.
        let timeout = (ttl / 2).max(Duration::from_millis(200));
        let conn = Conn::open(target, "fleet-lease", timeout, timeout)
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        ensure_schema(&conn).map_err(fail)?;
        Ok(Self { conn, holder: holder.to_owned(), ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if no head holds it or its holder's has expired.
    pub fn try_acquire(&self) -> Result<Acquired, String> {
        let holder = self.holder.clone();
        let ttl = self.ttl.as_secs_f64();
        self.conn.run(move |client| {
            let mut txn = client.transaction()?;
            let taken = txn.query_opt(
                "INSERT INTO fleet_lease (id, epoch, holder, expires_at) \
                 VALUES (1, 1, $1, now() + make_interval(secs => $2)) \
                 ON CONFLICT (id) DO UPDATE \
                 SET epoch = fleet_lease.epoch + 1, holder = EXCLUDED.holder, \
                     expires_at = EXCLUDED.expires_at \
                 WHERE fleet_lease.expires_at < now() \
                 RETURNING epoch",
                &[&holder, &ttl],
            )?;
            if let Some(row) = taken {
                let epoch: i64 = row.get(0);
                // Waits for a write of the previous leader in flight (it holds this row
                // shared); every later one finds the new epoch and is refused.
                txn.execute("UPDATE fleet_epoch SET epoch = $1 WHERE id = 1", &[&epoch])?;
                txn.commit()?;
                return Ok(Acquired::Leader(epoch));
            }
            let row = txn.query_one(
                "SELECT holder, greatest(extract(epoch FROM expires_at - now()), 0)::float8 \
                 FROM fleet_lease WHERE id = 1",
                &[],
            )?;
            let expires_in = Duration::from_secs_f64(row.get::<_, f64>(1));
            let leader = row.get(0);
            txn.commit()?;
            Ok(Acquired::Standby { leader, expires_in })
        })
    }

    /// Extends the lease held under `epoch`; false when another head has taken it.
    pub fn renew(&self, epoch: i64) -> Result<bool, String> {
        let ttl = self.ttl.as_secs_f64();
        self.conn.run(move |client| {
            let renewed = client.execute(
                "UPDATE fleet_lease SET expires_at = now() + make_interval(secs => $2) \
                 WHERE id = 1 AND epoch = $1",
                &[&epoch, &ttl],
            )?;
            Ok(renewed == 1)
        })
    }

    /// Ends the lease held under `epoch` now, so that a standby takes over at once.
    pub fn release(&self, epoch: i64) -> Result<(), String> {
        self.conn.run(move |client| {
            client.execute(
                "UPDATE fleet_lease SET expires_at = now() WHERE id = 1 AND epoch = $1",
                &[&epoch],
            )?;
            Ok(())
        })
    }
}
