//! The prefix cache: the keys and values of full blocks of tokens that sequences have
//! computed, kept after those sequences end, so that a new sequence whose prompt starts with
//! the same tokens (an agent's instructions and tools, a shared document, the earlier turns
//! of a conversation) copies them instead of computing them again.
//!
//! A block is [`BLOCK_SIZE`] positions, keyed by a hash of its tokens and of the key of the
//! block before it, so a key stands for every token from the start of the sequence: a lookup
//! walks a prompt block by block and stops at the first block not cached. Entries keep their
//! tokens and their parent's key, and a lookup compares both, so a hash collision is a miss,
//! never wrong keys and values. The engine keeps the cache within the KV budget its sequences
//! leave free and evicts the least recently used blocks first. A block is never more recent
//! than the block before it (a new block takes its parent's time of use, a lookup marks all
//! it found at once) and among blocks used at the same time the deepest goes first, so a
//! chain is evicted from its end and no cached block is left unreachable behind an evicted
//! one.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::transformer::KvSpan;
pub use crate::transformer::paged::BLOCK_SIZE;

/// The key before a sequence's first block.
pub const ROOT: u64 = 0;

/// The key of the block holding `tokens` after the block keyed `parent`.
pub fn key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Entry {
    parent: u64,
    tokens: Box<[u32]>,
    kv: Arc<KvSpan>,
    /// Its place in the eviction order.
    order: Order,
}

/// Eviction order: oldest use first, deepest first among the same use.
type Order = (u64, Reverse<usize>, u64);

/// Cached blocks, least recently used evicted first.
#[derive(Debug)]
pub struct PrefixCache {
    blocks: HashMap<u64, Entry>,
    /// (last use, depth, key) of every block.
    by_use: BTreeSet<Order>,
    clock: u64,
    block_bytes: usize,
}

impl PrefixCache {
    /// An empty cache of blocks of `block_bytes` each.
    pub fn new(block_bytes: usize) -> Self {
        Self { blocks: HashMap::new(), by_use: BTreeSet::new(), clock: 0, block_bytes }
    }

    /// Bytes the cached blocks hold.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * self.block_bytes
    }

    /// Bytes one block holds.
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.blocks.contains_key(&key)
    }

    /// The cached blocks that follow the block keyed `parent` with `tokens` (whole blocks
    /// only; a shorter tail is ignored), in order, up to the first block not cached; marks
    /// them used. Each comes with its key.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Vec<(u64, Arc<KvSpan>)> {
        let mut found = Vec::new();
        let mut at = parent;
        for block in tokens.chunks_exact(BLOCK_SIZE) {
            let k = key(at, block);
            match self.blocks.get(&k) {
                Some(e) if e.parent == at && *e.tokens == *block => found.push((k, e.kv.clone())),
                _ => break,
            }
            at = k;
        }
        self.clock += 1;
        for (k, _) in &found {
            self.touch(*k, self.clock);
        }
        found
    }

    /// Keeps `kv`, the block holding `tokens` after the block keyed `parent`, under `key`
    /// (from [`key`]). The caller makes room first ([`Self::evict_one`]).
    pub fn insert(&mut self, key: u64, parent: u64, tokens: &[u32], kv: KvSpan) {
        if self.blocks.contains_key(&key) {
            return;
        }
        let order = match self.blocks.get(&parent) {
            Some(p) => (p.order.0, Reverse(p.order.1.0 + 1), key),
            None => {
                self.clock += 1;
                (self.clock, Reverse(0), key)
            }
        };
        self.by_use.insert(order);
        self.blocks.insert(key, Entry { parent, tokens: tokens.into(), kv: Arc::new(kv), order });
    }

    /// Drops the least recently used block; false when the cache is empty.
    pub fn evict_one(&mut self) -> bool {
        let Some((_, _, key)) = self.by_use.pop_first() else { return false };
        self.blocks.remove(&key);
        true
    }

    fn touch(&mut self, key: u64, now: u64) {
        let Some(entry) = self.blocks.get_mut(&key) else { return };
        self.by_use.remove(&entry.order);
        entry.order.0 = now;
        self.by_use.insert(entry.order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn span(value: f32) -> KvSpan {
        let t = Tensor::full(value, (1, BLOCK_SIZE, 2), &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32));
        let t = t.expect("a small tensor");
        KvSpan::new(vec![(t.clone(), t)], BLOCK_SIZE)
    }

    /// Caches the full blocks of `tokens`, each block's values its index.
    fn cache_all(cache: &mut PrefixCache, tokens: &[u32]) -> Vec<u64> {
        let mut keys = Vec::new();
        let mut parent = ROOT;
        for (i, block) in tokens.chunks_exact(BLOCK_SIZE).enumerate() {
            let k = key(parent, block);
            cache.insert(k, parent, block, span(i as f32));
            keys.push(k);
            parent = k;
        }
        keys
    }

    #[test]
    fn a_lookup_finds_the_longest_cached_prefix_and_only_whole_blocks() {
        let mut cache = PrefixCache::new(100);
        let tokens: Vec<u32> = (0..3 * BLOCK_SIZE as u32).collect();
        cache_all(&mut cache, &tokens);
        assert_eq!(cache.bytes(), 300);
        // The same prompt with one more token, and one that differs in its second block.
        let mut longer = tokens.clone();
        longer.push(7);
        assert_eq!(cache.lookup(ROOT, &longer).len(), 3);
        let mut other = tokens.clone();
        other[BLOCK_SIZE + 3] = 999;
        assert_eq!(cache.lookup(ROOT, &other).len(), 1);
        // A prompt shorter than a block finds nothing; a lookup may start mid-chain.
        assert!(cache.lookup(ROOT, &tokens[..BLOCK_SIZE - 1]).is_empty());
        let first = key(ROOT, &tokens[..BLOCK_SIZE]);
        assert_eq!(cache.lookup(first, &tokens[BLOCK_SIZE..]).len(), 2);
        // The same block of tokens after a different beginning is another block.
        assert!(cache.lookup(ROOT, &tokens[BLOCK_SIZE..]).is_empty());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_chain_from_its_end() {
        let mut cache = PrefixCache::new(1);
        let a: Vec<u32> = (0..2 * BLOCK_SIZE as u32).collect();
        let b: Vec<u32> = (1000..1000 + 2 * BLOCK_SIZE as u32).collect();
        let a_keys = cache_all(&mut cache, &a);
        cache_all(&mut cache, &b);
        // `a` used again: `b` is now the least recently used, its second block first.
        assert_eq!(cache.lookup(ROOT, &a).len(), 2);
        assert!(cache.evict_one());
        assert_eq!(cache.lookup(ROOT, &b).len(), 1);
        // That lookup made `b`'s first block the most recent: `a` goes next, end first.
        assert!(cache.evict_one());
        assert!(cache.contains(a_keys[0]) && !cache.contains(a_keys[1]));
        assert!(cache.evict_one() && cache.evict_one());
        assert!(cache.is_empty() && !cache.evict_one());
    }
}
