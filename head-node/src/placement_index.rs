//! What lets the scheduler place a task among thousands of workers without scoring them all:
//! the workers that may have a free slot, the workers that have each model loaded, and the
//! workers whose prefix caches hold each prompt prefix. The worker registry keeps it as it
//! changes.
//!
//! The free set is a superset: every worker with a free slot is in it, because every change
//! that can free a slot goes through the registry (a join, a heartbeat, any mutable access
//! to a worker), which adds the worker. Full and draining workers leave it lazily, when a
//! walk over it meets them. So "the free set is empty" means no worker has a free slot, and
//! a walk finds the free ones at a cost paid for by the additions.

use std::collections::HashMap;

/// A set of worker ids with O(1) insert and remove, walked from a rotating start.
#[derive(Debug, Default)]
pub struct IdSet {
    ids: Vec<String>,
    at: HashMap<String, usize>,
}

impl IdSet {
    pub fn insert(&mut self, id: &str) {
        if !self.at.contains_key(id) {
            self.at.insert(id.to_owned(), self.ids.len());
            self.ids.push(id.to_owned());
        }
    }

    pub fn remove(&mut self, id: &str) {
        let Some(i) = self.at.remove(id) else { return };
        self.ids.swap_remove(i);
        if let Some(moved) = self.ids.get(i) {
            self.at.insert(moved.clone(), i);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Up to `k` ids, starting at `start` (wrapping), each once.
    pub fn window(&self, start: usize, k: usize) -> impl Iterator<Item = &str> {
        let n = self.ids.len();
        (0..k.min(n)).map(move |i| self.ids[(start + i) % n].as_str())
    }
}

/// The registry's indexes (see the module's docs).
#[derive(Debug, Default)]
pub struct PlacementIndex {
    /// Every worker that may have a free slot.
    free: IdSet,
    /// By model id: the workers whose last heartbeat listed it loaded.
    loaded: HashMap<String, IdSet>,
    /// By prefix key: the workers whose recent tasks had it.
    warm: HashMap<u64, IdSet>,
    /// Where the next walk of the free set starts: successive tasks look at different
    /// workers.
    cursor: usize,
    /// Walks so far: where the affinity windows start.
    turn: usize,
}

impl PlacementIndex {
    /// `id` may have a free slot now.
    pub fn maybe_free(&mut self, id: &str) {
        self.free.insert(id);
    }

    pub fn loaded(&mut self, id: &str, model: &str) {
        self.loaded.entry(model.to_owned()).or_default().insert(id);
    }

    pub fn unloaded(&mut self, id: &str, model: &str) {
        remove_from(&mut self.loaded, model, id);
    }

    pub fn warmed(&mut self, id: &str, key: u64) {
        self.warm.entry(key).or_default().insert(id);
    }

    pub fn cooled(&mut self, id: &str, key: u64) {
        remove_from(&mut self.warm, &key, id);
    }

    /// Forgets a worker that left (its models and prefixes are given by the caller).
    pub fn forget<'a>(
        &mut self,
        id: &str,
        models: impl IntoIterator<Item = &'a str>,
        keys: impl IntoIterator<Item = u64>,
    ) {
        self.free.remove(id);
        for model in models {
            self.unloaded(id, model);
        }
        for key in keys {
            self.cooled(id, key);
        }
    }

    /// Up to `k` workers with a free slot (as `is_free` says), walking the free set from the
    /// cursor and dropping from it the workers found without one; the next walk starts
    /// after this one.
    pub fn free_workers(&mut self, k: usize, is_free: impl Fn(&str) -> bool) -> Vec<String> {
        self.turn = self.turn.wrapping_add(1);
        let (found, cursor) = self.walk(k, is_free);
        self.cursor = cursor;
        found
    }

    /// Whether any worker has a free slot (dropping those found without one on the way);
    /// the next walk starts where it would have.
    pub fn any_free(&mut self, is_free: impl Fn(&str) -> bool) -> bool {
        !self.walk(1, is_free).0.is_empty()
    }

    /// Up to `k` free workers from the cursor, and where the walk stopped.
    fn walk(&mut self, k: usize, is_free: impl Fn(&str) -> bool) -> (Vec<String>, usize) {
        let mut found: Vec<String> = Vec::with_capacity(k);
        // Once round the set, plus the found ones a removal may bring back into the path:
        // a removal moves the last id into the hole, and it is looked at next.
        let mut steps = 2 * self.free.len();
        let mut at = self.cursor;
        while found.len() < k && steps > 0 && !self.free.is_empty() {
            steps -= 1;
            // In range each step: a removal shrinks the set.
            at %= self.free.len();
            let id = self.free.ids[at].clone();
            if found.contains(&id) {
                at += 1;
            } else if is_free(&id) {
                found.push(id);
                at += 1;
            } else {
                self.free.remove(&id);
            }
        }
        let len = self.free.len().max(1);
        (found, at % len)
    }

    /// Up to `k` workers with `model` loaded: the next `k` each walk, so that all of them
    /// take turns.
    pub fn with_model_loaded(&self, model: &str, k: usize) -> impl Iterator<Item = &str> {
        let start = self.turn.wrapping_mul(k);
        self.loaded.get(model).into_iter().flat_map(move |set| set.window(start, k))
    }

    /// Up to `k` workers warm for prefix `key`, taking turns as
    /// [`PlacementIndex::with_model_loaded`]'s do.
    pub fn warm_for(&self, key: u64, k: usize) -> impl Iterator<Item = &str> {
        let start = self.turn.wrapping_mul(k);
        self.warm.get(&key).into_iter().flat_map(move |set| set.window(start, k))
    }
}

fn remove_from<K, Q>(map: &mut HashMap<K, IdSet>, key: &Q, id: &str)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_set_removes_by_swapping_and_walks_from_any_start() {
        let mut set = IdSet::default();
        for id in ["a", "b", "c", "d"] {
            set.insert(id);
        }
        set.insert("b");
        assert_eq!(set.len(), 4);
        set.remove("b");
        set.remove("x");
        assert_eq!(set.window(0, 10).collect::<Vec<_>>(), ["a", "d", "c"]);
        assert_eq!(set.window(2, 2).collect::<Vec<_>>(), ["c", "a"]);
        set.insert("b");
        assert_eq!(set.window(3, 1).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_walk_drops_full_workers_and_finds_every_free_one() {
        let mut index = PlacementIndex::default();
        for i in 0..10 {
            index.maybe_free(&format!("w{i}"));
        }
        let free = |id: &str| id == "w3" || id == "w7";
        let mut found = index.free_workers(5, free);
        found.sort();
        assert_eq!(found, ["w3", "w7"]);
        // The full ones are gone from the set: the next walk meets only the free.
        assert_eq!(index.free.len(), 2);
        assert!(index.any_free(free));
        assert!(!index.any_free(|_| false));
        assert!(index.free.is_empty(), "a set of full workers should empty");
        index.maybe_free("w1");
        assert_eq!(index.free_workers(3, |_| true), ["w1"]);
    }

    #[test]
    fn a_walk_past_the_first_lap_still_finds_every_free_worker_and_leaves_the_cursor_alone() {
        let mut index = PlacementIndex::default();
        for id in ["a", "b", "c"] {
            index.maybe_free(id);
        }
        // Past the first lap (walks of 2, 2 and 1 round 3 workers), then a worker fills:
        // the next walk must find both others.
        for k in [2, 2, 1] {
            index.free_workers(k, |_| true);
        }
        let mut found = index.free_workers(3, |id| id != "a");
        found.sort();
        assert_eq!(found, ["b", "c"]);
        // Asking whether any is free does not move where the next sample starts.
        let cursor = index.cursor;
        assert!(index.any_free(|_| true));
        assert_eq!(index.cursor, cursor);
    }

    #[test]
    fn affinity_windows_take_turns_over_every_worker() {
        let mut index = PlacementIndex::default();
        for i in 0..20 {
            index.loaded(&format!("w{i}"), "m");
            index.maybe_free(&format!("w{i}"));
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            index.free_workers(8, |_| true);
            seen.extend(index.with_model_loaded("m", 8).map(str::to_owned));
        }
        assert_eq!(seen.len(), 20, "some loaded workers never got a turn: {seen:?}");
    }

    #[test]
    fn models_and_prefixes_index_their_workers_until_they_leave() {
        let mut index = PlacementIndex::default();
        index.loaded("a", "m");
        index.loaded("b", "m");
        index.warmed("a", 7);
        let mut with_m: Vec<_> = index.with_model_loaded("m", 8).collect();
        with_m.sort_unstable();
        assert_eq!(with_m, ["a", "b"]);
        assert_eq!(index.warm_for(7, 8).collect::<Vec<_>>(), ["a"]);
        index.forget("a", ["m"], [7]);
        assert_eq!(index.with_model_loaded("m", 8).collect::<Vec<_>>(), ["b"]);
        assert_eq!(index.warm_for(7, 8).count(), 0);
        index.unloaded("b", "m");
        assert!(index.loaded.is_empty() && index.warm.is_empty());
    }
}
