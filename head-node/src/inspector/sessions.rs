//! The inspector's logins: a right token typed into the login page opens a session, a
//! random id in the `fleet_ui` cookie that expires ([`SESSION_TTL`]) and ends at logout; the
//! token itself never goes into a cookie. Wrong tokens are counted per address: past
//! [`MAX_FAILURES`] a minute, logins from there are refused for the rest of the minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::Principal;

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions open at once at most; past it the one nearest its end goes.
const MAX_SESSIONS: usize = 4096;
/// Wrong tokens one address may send per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at most.
const MAX_ADDRESSES: usize = 65_536;

/// Open sessions and recent failed logins.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Session id → when it ends, and whose it is.
    open: HashMap<String, (Instant, Principal)>,
    /// Address → (failures, since when they are counted).
    failures: HashMap<Option<IpAddr>, (u32, Instant)>,
}

impl Sessions {
    /// A new session of `who`; its id.
    pub fn open(&self, who: Principal) -> String {
        let id = crate::auth::random_token();
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.open.retain(|_, (end, _)| *end > now);
        if inner.open.len() >= MAX_SESSIONS
            && let Some(first) =
                inner.open.iter().min_by_key(|(_, (end, _))| *end).map(|(k, _)| k.clone())
        {
            inner.open.remove(&first);
        }
        inner.open.insert(id.clone(), (now + SESSION_TTL, who));
        id
    }

    /// Whose open session `id` is (none: not open).
    pub fn principal(&self, id: &str) -> Option<Principal> {
        let inner = self.inner.lock();
        inner.open.get(id).filter(|(end, _)| *end > Instant::now()).map(|(_, who)| who.clone())
    }

    /// Whether `id` is an open session.
    #[cfg(test)]
    pub fn is_open(&self, id: &str) -> bool {
        self.principal(id).is_some()
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        self.inner.lock().open.remove(id);
    }

    /// Whether `peer` may try a token now (it has not failed too often this minute).
    pub fn may_try(&self, peer: Option<IpAddr>) -> bool {
        let inner = self.inner.lock();
        match inner.failures.get(&peer) {
            Some((count, since)) => *count < MAX_FAILURES || since.elapsed() >= FAILURE_WINDOW,
            None => true,
        }
    }

    /// Counts a wrong token from `peer`.
    pub fn failed(&self, peer: Option<IpAddr>) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.failures.len() >= MAX_ADDRESSES {
            inner.failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        if inner.failures.len() >= MAX_ADDRESSES {
            inner.failures.clear();
        }
        let entry = inner.failures.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_and_close_and_failures_are_limited_per_address() {
        let sessions = Sessions::default();
        let id = sessions.open(Principal::operator());
        assert_eq!(id.len(), 64);
        assert!(sessions.is_open(&id) && !sessions.is_open("guess"));
        sessions.close(&id);
        assert!(!sessions.is_open(&id), "a closed session still admits");
        let (a, b) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        for _ in 0..MAX_FAILURES {
            assert!(sessions.may_try(a));
            sessions.failed(a);
        }
        assert!(!sessions.may_try(a), "past the limit");
        assert!(sessions.may_try(b), "another address is not limited by the first");
    }
}
