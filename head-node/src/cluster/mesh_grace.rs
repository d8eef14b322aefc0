//! Mesh members whose stream to the head broke, kept on the mesh's peer lists until the
//! worker timeout passes.
//!
//! A broken stream to the head does not mean the worker's process is gone: an overloaded
//! host misses a keepalive, a network blips, and the worker rejoins in a moment. Announcing
//! it gone at once made every other worker drop its mesh connections to it, and its return
//! made its overlay neighbours dial it again (a noise handshake each). On 300 mesh workers
//! sharing two cores that churn fed itself: the handshakes starved the head, whose late
//! keepalive answers broke more streams (1,100 losses while 300 workers joined, and 72-83 s
//! to join). So a lost worker stays on the lists for as long as a silent one would be given,
//! and a return with the same address changes nothing for the others. A worker that leaves
//! (drains) is announced gone at once.

use std::collections::HashMap;
use std::time::Duration;

use fleet_proto::MeshAddress;
use tokio::time::Instant;

/// Lost mesh workers by id: their mesh address and when their stream broke.
#[derive(Debug, Default)]
pub(super) struct MeshGrace {
    lost: HashMap<String, (MeshAddress, Instant)>,
}

impl MeshGrace {
    /// Keeps `worker_id` on the mesh's lists from `now` until [`Self::expired`] says it is gone.
    pub(super) fn keep(&mut self, worker_id: &str, address: MeshAddress, now: Instant) {
        self.lost.insert(worker_id.to_owned(), (address, now));
    }

    /// Takes back `worker_id`'s address, if it was kept (it rejoined).
    pub(super) fn take(&mut self, worker_id: &str) -> Option<MeshAddress> {
        self.lost.remove(worker_id).map(|(address, _)| address)
    }

    /// The workers lost `timeout` or more before `now`, no longer kept.
    pub(super) fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .lost
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.lost.remove(id);
        }
        gone
    }

    /// The kept workers and their addresses.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &MeshAddress)> {
        self.lost.iter().map(|(id, (address, _))| (id.as_str(), address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_worker_goes_once_its_timeout_passes_or_when_taken_back() {
        let mut grace = MeshGrace::default();
        let start = Instant::now();
        let address = |peer: &str| MeshAddress { peer_id: peer.into(), addrs: vec![] };
        grace.keep("a", address("pa"), start);
        grace.keep("b", address("pb"), start + Duration::from_secs(1));
        assert!(
            grace.expired(start + Duration::from_millis(2_999), Duration::from_secs(3)).is_empty()
        );
        assert_eq!(grace.expired(start + Duration::from_secs(3), Duration::from_secs(3)), ["a"]);
        assert_eq!(grace.iter().map(|(id, _)| id).collect::<Vec<_>>(), ["b"]);
        assert_eq!(grace.take("b").map(|a| a.peer_id), Some("pb".to_owned()));
        assert!(grace.take("b").is_none() && grace.iter().next().is_none());
    }
}
