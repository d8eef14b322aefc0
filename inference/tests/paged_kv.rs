//! The paged KV layout the GPU path uses: blocks taken and given back, the step plan's
//! layout, and attention over blocks (indexed exactly as src/cuda/paged.cu indexes them)
//! equal to the contiguous CPU attention, bit for bit.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use fleet_inference::transformer::attention::{AttendJob, Scores, attend_cpu};
use fleet_inference::transformer::paged::{
    BLOCK_SIZE, BlockPool, BlockTable, KvFull, StepPlan, attend_reference, write_reference,
};

#[test]
fn blocks_are_taken_as_positions_come_and_given_back_on_drop() {
    let pool = Arc::new(BlockPool::new(4));
    let mut a = BlockTable::new(pool.clone());
    a.reserve(0).expect("nothing to take");
    assert_eq!(pool.free_blocks(), 4);
    a.reserve(BLOCK_SIZE + 1).expect("two blocks");
    assert_eq!(a.blocks().len(), 2);
    assert_eq!(pool.free_blocks(), 2);
    // Position 16 is the first slot of the second block.
    assert_eq!(a.slot(BLOCK_SIZE), a.blocks()[1] * BLOCK_SIZE as u32);
    assert_eq!(a.slot(3), a.blocks()[0] * BLOCK_SIZE as u32 + 3);
    let mut b = BlockTable::new(pool.clone());
    let full = b.reserve(3 * BLOCK_SIZE).expect_err("only two blocks are left");
    assert_eq!(full, KvFull { need: 3, free: 2, total: 4 });
    assert!(full.to_string().contains("KV memory is full"), "{full}");
    assert_eq!(pool.free_blocks(), 2, "a failed reserve takes nothing");
    drop(a);
    assert_eq!(pool.free_blocks(), 4);
    b.reserve(3 * BLOCK_SIZE).expect("room again");
}

#[test]
fn the_plan_lists_slots_rows_and_tables_in_step_order() {
    let pool = Arc::new(BlockPool::new(8));
    let mut a = BlockTable::new(pool.clone());
    let mut b = BlockTable::new(pool);
    a.reserve(2).expect("room");
    b.reserve(BLOCK_SIZE + 2).expect("room");
    // a: 2 new tokens at positions 0 and 1; b: 1 token at position 17.
    let plan = StepPlan::new([(&a, 0, 2), (&b, 17, 1)], 16);
    assert_eq!(plan.tokens(), 3);
    let (ab, bb) = (a.blocks()[0], b.blocks());
    let bs = BLOCK_SIZE as u32;
    let expected = [
        vec![ab * bs, ab * bs + 1, bb[1] * bs + 1], // slots
        vec![12, 12, 13],                           // row_table: where each table starts
        vec![1, 2, 18],                             // row_len
        vec![0, 2, 3],                              // tile_first: a's two tokens, b's one, end
        vec![ab, bb[0], bb[1]],                     // tables
    ]
    .concat();
    assert_eq!(plan.data(), expected.as_slice());
    assert_eq!((plan.tiles(), plan.max_tile_rows()), (2, 2));
}

#[test]
fn tiles_cover_every_token_once_within_one_sequence() {
    let pool = Arc::new(BlockPool::new(64));
    let lens = [(0usize, 37usize), (40, 1), (3, 16), (0, 0), (9, 17)];
    let tables: Vec<BlockTable> = lens
        .iter()
        .map(|&(pos, n)| {
            let mut t = BlockTable::new(pool.clone());
            t.reserve(pos + n).expect("room");
            t
        })
        .collect();
    for rows in [1, 4, 16] {
        let plan = StepPlan::new(tables.iter().zip(&lens).map(|(t, &(pos, n))| (t, pos, n)), rows);
        // Which sequence each token belongs to, in step order.
        let owner: Vec<usize> =
            lens.iter().enumerate().flat_map(|(i, &(_, n))| std::iter::repeat_n(i, n)).collect();
        let mut next = 0;
        for i in 0..plan.tiles() {
            let tile = plan.tile(i);
            assert_eq!(tile.start, next, "tiles are consecutive and cover every token");
            assert!(!tile.is_empty() && tile.len() <= rows, "tile {i} of {rows}: {tile:?}");
            assert!(tile.clone().all(|t| owner[t] == owner[tile.start]), "one sequence per tile");
            next = tile.end;
        }
        assert_eq!(next, plan.tokens());
        let expected: usize = lens.iter().map(|&(_, n)| n.div_ceil(rows)).sum();
        assert_eq!(plan.tiles(), expected, "{rows} rows");
        assert_eq!(plan.max_tile_rows(), rows.min(37));
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn attention_over_blocks_equals_the_contiguous_cpu_attention() {
    let (heads, kv_heads, hd) = (4, 2, 8);
    // (cached positions, new tokens): a prompt chunk, a decode token past a block boundary,
    // and a chunk straddling one.
    let seqs = [(0usize, 5usize), (20, 1), (30, 4)];
    let pool = Arc::new(BlockPool::new(16));
    let slots = 16 * BLOCK_SIZE;
    let (mut k_pool, mut v_pool) =
        (vec![0f32; slots * kv_heads * hd], vec![0f32; slots * kv_heads * hd]);
    let mut tables = Vec::new();
    let mut jobs = Vec::new();
    // This step's keys and values, tokens first: [T, kv_heads, hd].
    let (mut step_k, mut step_v) = (Vec::new(), Vec::new());
    let mut token = 0;
    for (i, &(pos, n)) in seqs.iter().enumerate() {
        let len = pos + n;
        // This sequence's keys and values at every position, [kv_heads, len, hd].
        let keys = values(kv_heads * len * hd, 10 + i as u64);
        let vals = values(kv_heads * len * hd, 20 + i as u64);
        let mut table = BlockTable::new(pool.clone());
        table.reserve(len).expect("room");
        // The cached positions, written as an earlier step would have.
        let history = StepPlan::new([(&table, 0, pos)], 1);
        // Positions from..to of [kv_heads, len, hd], tokens first.
        let rows = |all: &[f32], from: usize, to: usize| -> Vec<f32> {
            (from..to)
                .flat_map(|p| (0..kv_heads).flat_map(move |h| (0..hd).map(move |d| (h, p, d))))
                .map(|(h, p, d)| all[(h * len + p) * hd + d])
                .collect()
        };
        write_reference(&mut k_pool, &rows(&keys, 0, pos), &history, kv_heads);
        write_reference(&mut v_pool, &rows(&vals, 0, pos), &history, kv_heads);
        step_k.extend(rows(&keys, pos, len));
        step_v.extend(rows(&vals, pos, len));
        jobs.push(AttendJob {
            token,
            n,
            pos,
            keys: Tensor::from_vec(keys, (kv_heads, len, hd), &Device::Cpu).expect("keys"),
            values: Tensor::from_vec(vals, (kv_heads, len, hd), &Device::Cpu).expect("values"),
        });
        tables.push(table);
        token += n;
    }
    let plan = StepPlan::new(tables.iter().zip(&seqs).map(|(t, &(pos, n))| (t, pos, n)), 16);
    write_reference(&mut k_pool, &step_k, &plan, kv_heads);
    write_reference(&mut v_pool, &step_v, &plan, kv_heads);

    // Queries tokens first for the paged form, heads first for the contiguous one.
    let q = values(token * heads * hd, 99);
    let paged = attend_reference(&q, &k_pool, &v_pool, &plan, heads, kv_heads);
    let q = Tensor::from_vec(q, (token, heads, hd), &Device::Cpu)
        .and_then(|q| q.transpose(0, 1)?.contiguous())
        .expect("q");
    let contiguous = attend_cpu(&q, &jobs, kv_heads, Scores::plain(hd))
        .expect("attention")
        .expect("f32 on the CPU");
    assert_eq!(paged.len(), token * heads * hd);
    assert_eq!(paged, contiguous);
}
