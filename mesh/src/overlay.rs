//! The overlay: the few peers each node stays connected to so that topic messages reach
//! every node by gossip, where asks connect only when they need to.
//!
//! Every node has the same peer list (the head's), so every node can work out the same
//! overlay without asking anyone: sort the peer ids into a ring and link each node with the
//! ones 1, 2, 4, 8, ... places away on either side. Each link is known to both of its ends
//! (the node `d` places after one is the one `d` places before the other), the ring links
//! keep it connected, the longer ones keep any node within about log₂ n hops of any other,
//! and a node has at most two links per distance: 16 at 200 nodes, 20 at 1,000, 28 at
//! 10,000. All-to-all would be n − 1 each.

use std::collections::HashSet;

use libp2p::PeerId;

/// How many distances a node with a bound of `max_peers` connections uses: its overlay
/// takes at most half of the bound, leaving the rest to asks.
pub(crate) fn distances(max_peers: usize) -> usize {
    (max_peers / 4).max(1)
}

/// The peers `local` links with in the overlay of `members` (which may include `local`),
/// using at most `max_distances` of the distances 1, 2, 4, ...: at most twice that many.
pub(crate) fn neighbours(
    local: PeerId,
    members: impl IntoIterator<Item = PeerId>,
    max_distances: usize,
) -> HashSet<PeerId> {
    let mut ring: Vec<PeerId> = members.into_iter().filter(|p| *p != local).collect();
    ring.push(local);
    ring.sort_unstable();
    ring.dedup();
    let n = ring.len();
    let Ok(at) = ring.binary_search(&local) else { return HashSet::new() };
    let mut linked = HashSet::new();
    let mut distance = 1usize;
    for _ in 0..max_distances {
        if distance >= n {
            break;
        }
        linked.insert(ring[(at + distance) % n]);
        linked.insert(ring[(at + n - distance) % n]);
        distance *= 2;
    }
    linked
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;

    fn overlay(n: usize, max_distances: usize) -> HashMap<PeerId, HashSet<PeerId>> {
        let members: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        members
            .iter()
            .map(|p| (*p, neighbours(*p, members.iter().copied(), max_distances)))
            .collect()
    }

    /// Hops from the first node to the farthest, or None if some node cannot be reached.
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
        for (n, most_links, most_hops) in [(2, 1, 1), (5, 4, 1), (200, 16, 6), (1000, 20, 7)] {
            let links = overlay(n, 32);
            for (node, peers) in &links {
                assert!(!peers.contains(node), "a node links with itself");
                assert!(peers.len() <= most_links, "{n} nodes: {} links", peers.len());
                for peer in peers {
                    assert!(links[peer].contains(node), "{n} nodes: a link one end does not know");
                }
            }
            let start = *links.keys().next().expect("nodes");
            let hops = diameter_from(&links, start).expect("every node reachable");
            assert!(hops <= most_hops, "{n} nodes: {hops} hops");
        }
    }

    #[test]
    fn small_meshes_are_all_to_all_and_the_distances_are_bounded() {
        // Up to five nodes, everyone links with everyone (what the small tests rely on).
        for n in 2..=5 {
            for peers in overlay(n, 32).values() {
                assert_eq!(peers.len(), n - 1);
            }
        }
        // One distance: a ring, still connected.
        let links = overlay(50, 1);
        assert!(links.values().all(|peers| peers.len() == 2));
        let start = *links.keys().next().expect("nodes");
        assert!(diameter_from(&links, start).is_some());
        // A node alone, or not in the list, has no links.
        let alone = PeerId::random();
        assert!(neighbours(alone, [alone], 8).is_empty());
        assert!(neighbours(alone, [], 8).is_empty());
    }
}
