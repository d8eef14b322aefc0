//! KV memory in fixed-size blocks shared by every sequence: the layout the GPU path keeps its
//! keys and values in, so a step's attention for all sequences is one kernel launch per
//! layer and memory is taken 16 positions at a time instead of per-sequence buffers.
//!
//! A layer's pool is `blocks * BLOCK_SIZE` slots of `[kv_heads, head_dim]`; a sequence owns a
//! list of blocks ([`BlockTable`]), and position `p` lives in slot
//! `table[p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE`. A [`StepPlan`] flattens what the
//! kernels of one step need (where each new token's keys go, which blocks each token
//! attends over) into one `u32` array uploaded once per step. The CPU functions here
//! ([`write_reference`], [`attend_reference`]) index the pool exactly as src/cuda/paged.cu
//! does and are what the tests check that indexing with. The kernels keep tokens first:
//! queries `[T, heads, head_dim]`, keys and values read from the step's fused projection.

use std::sync::{Arc, Mutex, MutexGuard};

/// Positions per block.
pub const BLOCK_SIZE: usize = 16;

/// The free blocks of a pool. Taking fails, never blocks, when too few are left.
#[derive(Debug)]
pub struct BlockPool {
    free: Mutex<Vec<u32>>,
    blocks: usize,
}

impl BlockPool {
    pub fn new(blocks: usize) -> Self {
        // Handed out from the low end first (popped from the back).
        Self { free: Mutex::new((0..blocks as u32).rev().collect()), blocks }
    }

    /// Blocks in the pool.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Blocks not held by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.lock().len()
    }

    /// The free list (a panic elsewhere while it was held left it whole: every change is
    /// one `split_off` or `append`).
    fn lock(&self) -> MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, n: usize) -> Option<Vec<u32>> {
        let mut free = self.lock();
        let at = free.len().checked_sub(n)?;
        Some(free.split_off(at))
    }

    fn give_back(&self, blocks: &mut Vec<u32>) {
        self.lock().append(blocks);
    }
}

/// One sequence's blocks, given back to the pool when it is dropped.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<u32>,
    pool: Arc<BlockPool>,
}

impl BlockTable {
    pub fn new(pool: Arc<BlockPool>) -> Self {
        Self { blocks: Vec::new(), pool }
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Takes blocks until `positions` fit; an error when the pool has too few left.
    pub fn reserve(&mut self, positions: usize) -> Result<(), KvFull> {
        let need = positions.div_ceil(BLOCK_SIZE).saturating_sub(self.blocks.len());
        if need == 0 {
            return Ok(());
        }
        match self.pool.take(need) {
            Some(mut more) => {
                self.blocks.append(&mut more);
                Ok(())
            }
            None => Err(KvFull { need, free: self.pool.free_blocks(), total: self.pool.blocks }),
        }
    }

    /// The slot of position `pos` (reserved).
    pub fn slot(&self, pos: usize) -> u32 {
        self.blocks[pos / BLOCK_SIZE] * BLOCK_SIZE as u32 + (pos % BLOCK_SIZE) as u32
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.pool.give_back(&mut self.blocks);
    }
}

/// The pool had fewer free blocks than a sequence needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "KV memory is full: a sequence needs {need} more blocks of {BLOCK_SIZE} positions and \
     {free} of {total} are free; give the model more KV memory or fewer concurrent sequences"
)]
pub struct KvFull {
    pub need: usize,
    pub free: usize,
    pub total: usize,
}

/// What one step's kernels need, as one `u32` array:
/// `[slots; T][row_table; T][row_len; T][tile_first; tiles + 1]` then the step's block
/// tables. Token `t` writes its keys and values to `slots[t]` and attends over `row_len[t]`
/// positions of the block list starting at `data[row_table[t]]`. Attention runs per tile:
/// tile `i` is tokens `tile_first[i]..tile_first[i + 1]`, consecutive tokens of one sequence
/// (a prompt's rows share the keys they read); a decoding sequence is a tile of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    tokens: usize,
    tiles: usize,
    max_tile_rows: usize,
    data: Vec<u32>,
}

impl StepPlan {
    /// The plan for sequences fed `(table, cached positions, new tokens)` in step order, in
    /// tiles of at most `tile_rows` tokens; every table must already hold room for its new
    /// tokens.
    pub fn new<'a>(
        seqs: impl IntoIterator<Item = (&'a BlockTable, usize, usize)>,
        tile_rows: usize,
    ) -> Self {
        let tile_rows = tile_rows.max(1);
        let (mut slots, mut row_table, mut row_len, mut tables) = (vec![], vec![], vec![], vec![]);
        let mut tile_first = vec![];
        for (table, pos, n) in seqs {
            let start = tables.len() as u32;
            tables.extend_from_slice(table.blocks());
            tile_first.extend((slots.len()..slots.len() + n).step_by(tile_rows).map(|t| t as u32));
            for i in 0..n {
                slots.push(table.slot(pos + i));
                row_table.push(start);
                row_len.push((pos + i + 1) as u32);
            }
        }
        let tokens = slots.len();
        let tiles = tile_first.len();
        let max_tile_rows = tile_first
            .iter()
            .zip(tile_first.iter().skip(1).chain([&(tokens as u32)]))
            .map(|(a, b)| (b - a) as usize)
            .max()
            .unwrap_or(0);
        tile_first.push(tokens as u32);
        // Table offsets become places in the whole array.
        let tables_at = (3 * tokens + tile_first.len()) as u32;
        row_table.iter_mut().for_each(|r| *r += tables_at);
        let mut data = slots;
        data.extend(row_table);
        data.extend(row_len);
        data.extend(tile_first);
        data.extend(tables);
        Self { tokens, tiles, max_tile_rows, data }
    }

    /// New tokens in the step.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Attention tiles in the step.
    pub fn tiles(&self) -> usize {
        self.tiles
    }

    /// Tokens in the step's largest tile.
    pub fn max_tile_rows(&self) -> usize {
        self.max_tile_rows
    }

    /// The array the kernels read.
    pub fn data(&self) -> &[u32] {
        &self.data
    }

    /// The tokens of tile `i`.
    pub fn tile(&self, i: usize) -> std::ops::Range<usize> {
        let first = &self.data[3 * self.tokens..];
        first[i] as usize..first[i + 1] as usize
    }

    fn slot(&self, t: usize) -> usize {
        self.data[t] as usize
    }

    /// The slot of position `j` of token `t`'s sequence.
    fn position_slot(&self, t: usize, j: usize) -> usize {
        let table = self.data[self.tokens + t] as usize;
        self.data[table + j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE
    }

    fn len(&self, t: usize) -> usize {
        self.data[2 * self.tokens + t] as usize
    }
}

/// Head sizes the attention kernel is built for (`head_dim / 32` dimensions per lane).
pub const KERNEL_HEAD_DIMS: [usize; 5] = [32, 64, 96, 128, 256];

/// Tokens per attention tile for `head_dim`: as many as the kernel keeps in registers (each
/// row holds its query and accumulator, `head_dim / 32` values each per lane).
pub fn tile_rows(head_dim: usize) -> usize {
    match head_dim / 32 {
        0..=2 => 16,
        3 | 4 => 8,
        _ => 4,
    }
}

/// Where element `d` of KV head `h` of `slot` is in a layer's pool.
pub fn element(slot: usize, h: usize, d: usize, kv_heads: usize, head_dim: usize) -> usize {
    (slot * kv_heads + h) * head_dim + d
}

/// Where `rope_write` puts keys or values: `src` `[T, kv_heads, head_dim]` (already rotated)
/// into the pool's slots.
pub fn write_reference(pool: &mut [f32], src: &[f32], plan: &StepPlan, kv_heads: usize) {
    let t_all = plan.tokens();
    let head_dim = src.len() / (kv_heads * t_all.max(1));
    for t in 0..t_all {
        for h in 0..kv_heads {
            for d in 0..head_dim {
                pool[element(plan.slot(t), h, d, kv_heads, head_dim)] =
                    src[(t * kv_heads + h) * head_dim + d];
            }
        }
    }
}

/// The CPU form of `paged_attention`: `q` `[T, heads, head_dim]` over the pools →
/// `[T, heads * head_dim]`, through the same per-(token, head) loop as the contiguous CPU
/// attention.
pub fn attend_reference(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    plan: &StepPlan,
    heads: usize,
    kv_heads: usize,
) -> Vec<f32> {
    let t_all = plan.tokens();
    let head_dim = q.len() / (heads * t_all.max(1));
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; t_all * heads * head_dim];
    // Tile by tile as the kernel goes: a tile's rows read the block list of its first row.
    for tile in (0..plan.tiles()).map(|i| plan.tile(i)) {
        for t in tile.clone() {
            let mut scores = vec![0f32; plan.len(t)];
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let slot = |j: usize| plan.position_slot(tile.start, j);
                let at = |j: usize| element(slot(j), kvh, 0, kv_heads, head_dim);
                let qh = &q[(t * heads + h) * head_dim..][..head_dim];
                super::attention::attend_one(
                    qh,
                    |j| &keys[at(j)..][..head_dim],
                    |j| &values[at(j)..][..head_dim],
                    super::attention::Logits { scale, softcap: None, sink: None },
                    &mut scores,
                    &mut out[(t * heads + h) * head_dim..][..head_dim],
                );
            }
        }
    }
    out
}
