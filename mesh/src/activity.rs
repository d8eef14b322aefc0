//! What each peer's connection is being used for, shared by the call streams
//! ([`crate::calls`]), which mark asks and calls as they start and end, and the swarm task
//! ([`crate::node`]), which closes connections nobody uses.
//!
//! Connections are made when an ask needs one, so they must also be closed, or a node that
//! once asked every other would hold a connection to each. A connection in use (an ask
//! waiting for its answer, or a call being answered) is never closed; an idle one is closed
//! after the idle timeout, or sooner when the node holds more than its bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use parking_lot::Mutex;

/// How much longer the answering side keeps an idle connection than the asking side: the
/// asker, who knows when it will ask again, is the one to close it, so a close never crosses
/// an ask on its way.
pub(crate) const ANSWERER_GRACE: Duration = Duration::from_secs(5);

/// One peer's use of its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Use {
    /// Asks of this node waiting for the peer (for a connection, or for their answer).
    asking: u32,
    /// Calls from the peer this node is answering.
    answering: u32,
    last_asked: Option<Instant>,
    last_answered: Option<Instant>,
}

impl Use {
    fn busy(&self) -> bool {
        self.asking > 0 || self.answering > 0
    }

    /// When the connection was last used, as far as closing it goes (the answering side's
    /// uses count [`ANSWERER_GRACE`] later).
    fn last(&self) -> Option<Instant> {
        let answered = self.last_answered.map(|at| at + ANSWERER_GRACE);
        self.last_asked.max(answered)
    }
}

/// Every peer's [`Use`]; peers leave it once idle and gone.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    peers: Mutex<HashMap<PeerId, Use>>,
}

/// Marks a use of a peer's connection for as long as it lives.
pub(crate) struct InUse {
    activity: Arc<Activity>,
    peer: PeerId,
    asking: bool,
}

impl Activity {
    /// An ask of `peer` starts: its connection stays open until the returned guard drops.
    pub(crate) fn ask(self: &Arc<Self>, peer: PeerId) -> InUse {
        self.start(peer, true)
    }

    /// A call from `peer` is being answered: as [`Self::ask`], on the answering side.
    pub(crate) fn answer(self: &Arc<Self>, peer: PeerId) -> InUse {
        self.start(peer, false)
    }

    fn start(self: &Arc<Self>, peer: PeerId, asking: bool) -> InUse {
        let mut peers = self.peers.lock();
        let entry = peers.entry(peer).or_insert(Use {
            asking: 0,
            answering: 0,
            last_asked: None,
            last_answered: None,
        });
        if asking {
            entry.asking += 1;
        } else {
            entry.answering += 1;
        }
        InUse { activity: self.clone(), peer, asking }
    }

    /// Whether `peer`'s connection, open since `connected_at`, has gone unused for `idle`
    /// at `now`.
    pub(crate) fn idle_for(
        &self,
        peer: &PeerId,
        connected_at: Instant,
        now: Instant,
        idle: Duration,
    ) -> bool {
        match self.peers.lock().get(peer) {
            Some(used) if used.busy() => false,
            Some(used) => now >= used.last().unwrap_or(connected_at).max(connected_at) + idle,
            None => now >= connected_at + idle,
        }
    }

    /// Whether an ask of this node is waiting for `peer`: its connection is to be made, and
    /// made again if it drops.
    pub(crate) fn is_asking(&self, peer: &PeerId) -> bool {
        self.peers.lock().get(peer).is_some_and(|used| used.asking > 0)
    }

    /// When `peer`'s connection was last used (None: in use now).
    pub(crate) fn last_use(&self, peer: &PeerId, connected_at: Instant) -> Option<Instant> {
        match self.peers.lock().get(peer) {
            Some(used) if used.busy() => None,
            Some(used) => Some(used.last().unwrap_or(connected_at).max(connected_at)),
            None => Some(connected_at),
        }
    }

    /// Forgets a peer that is gone, unless something still uses it.
    pub(crate) fn forget(&self, peer: &PeerId) {
        let mut peers = self.peers.lock();
        if peers.get(peer).is_some_and(|used| !used.busy()) {
            peers.remove(peer);
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut peers = self.activity.peers.lock();
        let Some(used) = peers.get_mut(&self.peer) else { return };
        if self.asking {
            used.asking = used.asking.saturating_sub(1);
            used.last_asked = Some(now);
        } else {
            used.answering = used.answering.saturating_sub(1);
            used.last_answered = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_in_use_is_never_idle_and_the_answerer_waits_longer() {
        let activity = Arc::new(Activity::default());
        let peer = PeerId::random();
        let start = Instant::now();
        let idle = Duration::from_secs(10);
        assert!(!activity.idle_for(&peer, start, start + Duration::from_secs(9), idle));
        assert!(activity.idle_for(&peer, start, start + idle, idle));

        let asking = activity.ask(peer);
        assert!(!activity.idle_for(&peer, start, start + Duration::from_secs(3600), idle));
        assert_eq!(activity.last_use(&peer, start), None);
        drop(asking);
        let asked = Instant::now();
        assert!(!activity.idle_for(&peer, start, asked + Duration::from_secs(9), idle));
        assert!(activity.idle_for(&peer, start, asked + idle, idle));

        // On the answering side the same call keeps the connection ANSWERER_GRACE longer.
        let other = PeerId::random();
        drop(activity.answer(other));
        let answered = Instant::now();
        assert!(!activity.idle_for(&other, start, answered + idle, idle));
        assert!(activity.idle_for(&other, start, answered + idle + ANSWERER_GRACE, idle));

        // A busy peer is not forgotten; an idle one is.
        let busy = activity.answer(peer);
        activity.forget(&peer);
        assert_eq!(activity.last_use(&peer, start), None);
        drop(busy);
        activity.forget(&peer);
        assert_eq!(activity.last_use(&peer, start), Some(start));
    }
}
