//! The overlay: the few peers each node stays connected to so that topic messages reach
//! every node by gossip, where asks connect only when they need to.
//!
//! Every node has the same peer list (the head's), so every node works out the same overlay
//! without asking anyone. Each peer id is a point on a circle (the last 8 bytes of its public
//! key, which are random). Two nodes are linked when
//! - they are next to each other on the circle (the ring keeps the overlay connected), or
//! - the hash of their pair of points falls under a threshold that gives each node about
//!   2·ln n + 2 such links, and each is among the other's `cap` lowest such hashes (so no
//!   node has more than `cap`, where unlucky hashes would otherwise pile links on a few).
//!
//! That is a random graph: any node is a few hops from any other (about ln n / ln of the
//! degree), and each link is known to both its ends. A node joining or leaving changes only
//! its own links and a handful of others' (the threshold moves a little with n), where links
//! by place in a sorted list would shift about two links of every node for every join, so a
//! ramp of n joins would make n² dials. Small meshes are linked all to all.

use std::collections::HashSet;

use libp2p::PeerId;

/// How many random links a node with a bound of `max_peers` connections takes at most: with
/// its two ring links, half the bound, leaving the rest to asks.
pub(crate) fn cap(max_peers: usize) -> usize {
    (max_peers / 2).saturating_sub(2).max(1)
}

/// A peer's point on the circle.
fn point(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut last = [0u8; 8];
    let tail = bytes.len().saturating_sub(8);
    for (slot, byte) in last.iter_mut().zip(&bytes[tail..]) {
        *slot = *byte;
    }
    u64::from_be_bytes(last)
}

/// splitmix64's finaliser: a fixed mix (the same on every node and every build; std's
/// hashers promise neither).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash of a pair of points, the same from either end.
fn pair(a: u64, b: u64) -> u64 {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    mix(low ^ mix(high))
}

/// The peers `local` links with in the overlay of `members` (which may include `local`), with
/// at most `cap` random links per node besides the ring's two.
pub(crate) fn neighbours(
    local: PeerId,
    members: impl IntoIterator<Item = PeerId>,
    cap: usize,
) -> HashSet<PeerId> {
    let mut ring: Vec<(u64, PeerId)> =
        members.into_iter().chain([local]).map(|p| (point(&p), p)).collect();
    ring.sort_unstable();
    ring.dedup();
    let n = ring.len();
    let Some(me) = ring.iter().position(|(_, p)| *p == local) else { return HashSet::new() };
    if n - 1 <= cap + 2 {
        return ring.iter().map(|(_, p)| *p).filter(|p| *p != local).collect();
    }
    // About 2·ln n + 2 random links each: enough for a random graph to hold together by
    // itself; the ring makes sure of it.
    let wanted = ((2.0 * (n as f64).ln()).ceil() as usize + 2).min(cap);
    let threshold = ((wanted as f64 / (n - 1) as f64) * u64::MAX as f64) as u64;
    let points: Vec<u64> = ring.iter().map(|(p, _)| *p).collect();
    // Up to `cap` lowest pair hashes under the threshold: the links `x` would take.
    let candidates = |x: usize| -> Vec<(u64, usize)> {
        let mut under: Vec<(u64, usize)> = (0..n)
            .filter(|y| *y != x)
            .map(|y| (pair(points[x], points[y]), y))
            .filter(|(h, _)| *h < threshold)
            .collect();
        under.sort_unstable();
        under.truncate(cap);
        under
    };
    let mut linked: HashSet<usize> = HashSet::from([(me + 1) % n, (me + n - 1) % n]);
    for (h, other) in candidates(me) {
        // Mutual: the other end keeps it too.
        if candidates(other).iter().any(|(g, y)| *y == me && *g == h) {
            linked.insert(other);
        }
    }
    linked.remove(&me);
    linked.into_iter().map(|j| ring[j].1).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;

    fn overlay(members: &[PeerId], count: usize) -> HashMap<PeerId, HashSet<PeerId>> {
        members.iter().map(|p| (*p, neighbours(*p, members.iter().copied(), count))).collect()
    }

    fn random(n: usize) -> Vec<PeerId> {
        (0..n)
            .map(|_| libp2p::identity::Keypair::generate_ed25519().public().to_peer_id())
            .collect()
    }

    /// Hops from `start` to the farthest node, or None if some node cannot be reached.
    fn diameter_from(links: &HashMap<PeerId, HashSet<PeerId>>, start: PeerId) -> Option<usize> {
        let mut hops = HashMap::from([(start, 0usize)]);
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            let next = hops[&node] + 1;
            for peer in &links[&node] {
                if !hops.contains_key(peer) {
                    hops.insert(*peer, next);
                    queue.push_back(*peer);
                }
            }
        }
        (hops.len() == links.len()).then(|| hops.values().copied().max().unwrap_or(0))
    }

    #[test]
    fn links_are_known_to_both_ends_few_and_reach_everyone() {
        for (n, most_mean, most_hops) in
            [(2, 1.0, 1), (5, 4.0, 1), (200, 20.0, 8), (1000, 24.0, 10)]
        {
            let members = random(n);
            let links = overlay(&members, 16);
            let mut total = 0;
            for (node, peers) in &links {
                assert!(!peers.contains(node), "a node links with itself");
                total += peers.len();
                for peer in peers {
                    assert!(links[peer].contains(node), "{n} nodes: a link one end does not know");
                }
            }
            let mean = total as f64 / n as f64;
            assert!(mean <= most_mean, "{n} nodes: {mean:.1} links on average");
            let most = links.values().map(HashSet::len).max().unwrap_or(0);
            assert!(most <= 32, "{n} nodes: a node with {most} links, over the cap and the ring's");
            let hops = diameter_from(&links, members[0]).expect("every node reachable");
            assert!(hops <= most_hops, "{n} nodes: {hops} hops");
        }
    }

    /// A node joining changes few links anywhere: tens at 500 nodes, where links by place in
    /// a sorted list changed about a thousand.
    #[test]
    fn a_join_changes_few_links() {
        let members = random(500);
        let before = overlay(&members, 30);
        let mut more = members.clone();
        more.extend(random(1));
        let after = overlay(&more, 30);
        let changed: usize =
            members.iter().map(|m| before[m].symmetric_difference(&after[m]).count()).sum();
        assert!(changed <= 100, "one join changed {changed} links");
    }

    #[test]
    fn a_small_count_still_connects_and_strangers_have_no_links() {
        let members = random(50);
        let links = overlay(&members, 1);
        // The ring and at most one random link each.
        assert!(links.values().all(|peers| peers.len() <= 3), "a node over the cap");
        assert!(diameter_from(&links, members[0]).is_some());
        let alone = random(1)[0];
        assert!(neighbours(alone, [alone], 8).is_empty());
        assert!(neighbours(alone, [], 8).is_empty());
    }
}
