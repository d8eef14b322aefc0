//! The engine on a CUDA GPU: its logits and greedy tokens against the CPU engine's, batch
//! invariance on the GPU, and aggregate decode and prefill tokens/s. `benches/gpu/run.sh`
//! runs it on the GPU machine beside PyTorch + transformers on the same model.
//!
//! `gpu -- [--check] [--speed] [--parts] [--blocks] [--batches 1,32] [--json OUT] [--device
//! cuda:0] MODEL...` (a GGUF file or a Hugging Face folder). `--parts` times the pieces of a
//! batched prefill step (attention in tiles or a row at a time, the down projection whole, in
//! 64-row calls or as one batched call of 64-row pieces) on the 0.5B model's shapes.
//! `--blocks` checks the GGUF-blocks matmul and row kernels of every format against their
//! dequantized bf16 matrix bit for bit, and times them on a 7B model's shapes.
//! `--write-random-gguf SHAPE PATH` writes a random-weight GGUF and exits: SHAPE
//! `qwen2.5-7b-q4km` (Qwen2.5-7B's shapes, the tensor types llama.cpp's Q4_K_M gives) or
//! `mixed-formats` (a small Qwen2 whose layers take each block format in turn). `--speed` decodes at `--batches`
//! sequences (default 1, 32, 128, 256) and reports the GPU memory the model took
//! (`FLEET_GPU_WEIGHTS=blocks` or `bf16` to choose how GGUF blocks are held). Needs a build with
//! `--features cuda`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, Tensor};
use fleet_inference::transformer::load::{load_gguf, load_hf_dir};
use fleet_inference::transformer::{Decoder, SequenceCache, StepInput, greedy};
use serde_json::{Value, json};

#[path = "gpu/blocks.rs"]
mod blocks;

fn load(path: &Path, device: &Device) -> Result<Decoder> {
    if path.is_dir() {
        Ok(load_hf_dir(path, device, None)?)
    } else {
        Ok(load_gguf(path, device)?.0)
    }
}

/// Fixed pseudo-random prompt ids below `vocab`.
fn prompt(len: usize, vocab: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97)) % vocab as u32)
        .collect()
}

fn vocab(model: &Decoder) -> usize {
    model.config().vocab_size.min(150_000)
}

/// One greedy step of every sequence, each fed its last token: the next tokens.
fn greedy_step(model: &Decoder, caches: &mut [SequenceCache], last: &[u32]) -> Result<Vec<u32>> {
    let feeds: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
    let mut inputs: Vec<StepInput<'_>> =
        caches.iter_mut().zip(&feeds).map(|(cache, tokens)| StepInput { tokens, cache }).collect();
    Ok(greedy(&model.step(&mut inputs)?)?)
}

/// Greedy decoding of every prompt together for `steps` tokens: the tokens of each.
fn generate(model: &Decoder, prompts: &[Vec<u32>], steps: usize) -> Result<Vec<Vec<u32>>> {
    let mut caches: Vec<SequenceCache> =
        prompts.iter().map(|p| model.new_cache(p.len() + steps)).collect();
    let mut inputs: Vec<StepInput<'_>> =
        caches.iter_mut().zip(prompts).map(|(cache, tokens)| StepInput { tokens, cache }).collect();
    let mut last = greedy(&model.step(&mut inputs)?)?;
    let mut out: Vec<Vec<u32>> = last.iter().map(|&t| vec![t]).collect();
    for _ in 1..steps {
        last = greedy_step(model, &mut caches, &last)?;
        for (o, &t) in out.iter_mut().zip(&last) {
            o.push(t);
        }
    }
    Ok(out)
}

/// The last logits of one prompt, as f32 on the host.
fn logits(model: &Decoder, prompt: &[u32]) -> Result<Vec<f32>> {
    let mut cache = model.new_cache(prompt.len());
    let l = model.step(&mut [StepInput { tokens: prompt, cache: &mut cache }])?;
    Ok(l.squeeze(0)?.to_vec1::<f32>()?)
}

/// Four user questions in the model's chat template, as token ids (GGUF files only).
fn chat_prompts(path: &Path) -> Result<Option<(fleet_inference::text::Tokenizer, Vec<Vec<u32>>)>> {
    use fleet_inference::model::{ChatMessage, Role};
    use fleet_inference::text::Tokenizer;
    if path.is_dir() {
        return Ok(None);
    }
    let (_, metadata) = load_gguf(path, &Device::Cpu)?;
    // Random-weight files carry no tokenizer.
    if !metadata.contains_key("tokenizer.ggml.tokens") {
        return Ok(None);
    }
    let tokenizer = Tokenizer::from_gguf(&metadata)?;
    let Some(template) = tokenizer.chat_template() else { return Ok(None) };
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three uses of a paperclip.",
        "Explain in two sentences why the sky is blue.",
    ];
    let mut prompts = Vec::new();
    for q in questions {
        let text = template.render(&[ChatMessage::new(Role::User, q)], &[], true)?;
        prompts.push(tokenizer.encode(&text)?);
    }
    Ok(Some((tokenizer, prompts)))
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// GPU against CPU: logits of a 32-token prompt, 64 greedy tokens of 4 prompts, and batch
/// invariance on the GPU (each of 8 sequences alone, then all 8 together at different
/// lengths).
fn check(path: &Path, gpu: &Device) -> Result<Value> {
    let cpu_model = load(path, &Device::Cpu)?;
    let gpu_model = load(path, gpu)?;
    let v = vocab(&cpu_model);
    let p = prompt(32, v, 1);
    let (lc, lg) = (logits(&cpu_model, &p)?, logits(&gpu_model, &p)?);
    let max_abs = lc.iter().zip(&lg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = lc.iter().map(|a| a.abs()).fold(0f32, f32::max);
    let argmax = |l: &[f32]| {
        l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
    };
    let top_cpu = argmax(&lc);
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(16 + 8 * i, v, 10 + i as u32)).collect();
    let cpu_tokens = generate(&cpu_model, &prompts, 64)?;
    let gpu_tokens = generate(&gpu_model, &prompts, 64)?;
    let agree: Vec<usize> =
        cpu_tokens.iter().zip(&gpu_tokens).map(|(a, b)| common_prefix(a, b)).collect();
    // Real chat prompts through the model's tokenizer and template (GGUF files carry both):
    // random ids give flat next-token distributions where near-ties flip early.
    let chats = match chat_prompts(path)? {
        Some((tokenizer, prompts)) => {
            let cpu = generate(&cpu_model, &prompts, 64)?;
            let gpu = generate(&gpu_model, &prompts, 64)?;
            let mut rows = Vec::new();
            for ((p, a), b) in prompts.iter().zip(&cpu).zip(&gpu) {
                let same = common_prefix(a, b);
                // Where they part: how far apart the CPU puts the two choices (a near-tie
                // that bf16 rounding can flip, or a real difference).
                let gap = match (a.get(same), b.get(same)) {
                    (Some(&ca), Some(&gb)) => {
                        let l = logits(&cpu_model, &[p.as_slice(), &a[..same]].concat())?;
                        let scale = l.iter().map(|x| x.abs()).fold(0f32, f32::max);
                        json!({"cpu_logit_gap": l[ca as usize] - l[gb as usize], "max_abs_logit": scale})
                    }
                    _ => Value::Null,
                };
                rows.push(json!({
                    "equal_of_64": same,
                    "cpu": tokenizer.decode(a)?,
                    "gpu": tokenizer.decode(b)?,
                    "where_they_part": gap,
                }));
            }
            json!(rows)
        }
        None => Value::Null,
    };
    // Batch invariance: alone, then batched with 7 others of different lengths.
    let many: Vec<Vec<u32>> = (0..8).map(|i| prompt(5 + 7 * i, v, 40 + i as u32)).collect();
    let together = generate(&gpu_model, &many, 48)?;
    let mut alone_equal = Vec::new();
    for (p, t) in many.iter().zip(&together) {
        let alone = generate(&gpu_model, std::slice::from_ref(p), 48)?;
        alone_equal.push(common_prefix(&alone[0], t));
    }
    // Is one row of a bf16 matmul the same whatever the number of rows around it? (cuBLAS
    // chooses its kernel by shape; split-K or another tile may sum in another order.) For
    // the decoder's shapes [in, out]: rows counts where row 0 differs from row 0 alone.
    let mut matmul_rows = Vec::new();
    for (k, n) in [(896, 1152), (896, 896), (896, 9728), (4864, 896), (896, 151_936)] {
        let w = Tensor::randn(0f32, 1., (n, k), gpu)?.to_dtype(DType::BF16)?;
        let x = Tensor::randn(0f32, 1., (512, k), gpu)?.to_dtype(DType::BF16)?;
        let linear = fleet_inference::transformer::linear::Linear::dense(w.clone(), None)?;
        // Plain cuBLAS, and the decoder's projection (padded to its minimum rows).
        let row0 = |m: usize, padded: bool| -> Result<Vec<f32>> {
            let x = x.narrow(0, 0, m)?;
            let y = if padded { linear.forward(&x)? } else { x.matmul(&w.t()?)? };
            Ok(y.narrow(0, 0, 1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let mut differs = [Vec::new(), Vec::new()];
        for (padded, differs) in [false, true].into_iter().zip(&mut differs) {
            let alone = row0(1, padded)?;
            for m in [2, 4, 8, 16, 32, 63, 64, 65, 100, 128, 200, 256, 300, 512] {
                if row0(m, padded)? != alone {
                    differs.push(m);
                }
            }
        }
        // One batched call of 64-row pieces (the weight broadcast): is each piece's row 0
        // the same as that row alone?
        let alone = row0(1, false)?;
        let batched_differs = (|| -> Result<bool> {
            let pieces = x.reshape((8, 64, k))?;
            let wt = w.t()?.broadcast_as((8, k, n))?;
            let y = pieces.matmul(&wt)?;
            let first = y.narrow(0, 0, 1)?.narrow(1, 0, 1)?;
            Ok(first.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? != alone)
        })();
        matmul_rows.push(json!({
            "in": k, "out": n,
            "rows_where_row_0_differs_cublas": differs[0],
            "rows_where_row_0_differs_projection": differs[1],
            "batched_64_row_pieces_differ": batched_differs.map_err(|e| e.to_string()),
        }));
    }
    let result = json!({
        "matmul_row_invariance": matmul_rows,
        "logits_max_abs_diff": max_abs,
        "logits_max_abs": scale,
        "logits_relative": max_abs / scale.max(f32::MIN_POSITIVE),
        "top_token_same": top_cpu == argmax(&lg),
        "greedy_tokens_equal_to_cpu_of_64": agree,
        "chats": chats,
        "batched_equal_to_alone_of_48": alone_equal,
    });
    println!("check {}: {result}", path.display());
    Ok(result)
}

/// Aggregate decode tokens/s of `batch` sequences after 32-token prompts (untimed).
fn decode(model: &Decoder, batch: usize, steps: usize) -> Result<f64> {
    let v = vocab(model);
    let mut caches: Vec<SequenceCache> = (0..batch).map(|_| model.new_cache(32 + steps)).collect();
    let prompts: Vec<Vec<u32>> = (0..batch).map(|i| prompt(32, v, i as u32)).collect();
    let mut inputs: Vec<StepInput<'_>> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(cache, tokens)| StepInput { tokens, cache })
        .collect();
    let mut last = greedy(&model.step(&mut inputs)?)?;
    let started = Instant::now();
    for _ in 0..steps {
        last = greedy_step(model, &mut caches, &last)?;
    }
    Ok((batch * steps) as f64 / started.elapsed().as_secs_f64())
}

/// Prefill tokens/s of `batch` prompts of `len` tokens in one step.
fn prefill(model: &Decoder, batch: usize, len: usize) -> Result<f64> {
    let v = vocab(model);
    let prompts: Vec<Vec<u32>> = (0..batch).map(|i| prompt(len, v, 7 + i as u32)).collect();
    let mut caches: Vec<SequenceCache> = (0..batch).map(|_| model.new_cache(len)).collect();
    let mut inputs: Vec<StepInput<'_>> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(cache, tokens)| StepInput { tokens, cache })
        .collect();
    let started = Instant::now();
    let logits = model.step(&mut inputs)?;
    logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok((batch * len) as f64 / started.elapsed().as_secs_f64())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One warm-up, then the median of 3 runs.
fn measure(mut run: impl FnMut() -> Result<f64>) -> Result<Value> {
    run()?;
    let runs: Vec<f64> = (0..3).map(|_| run()).collect::<Result<_>>()?;
    Ok(json!({"tokens_per_s": median(runs.clone()), "runs": runs}))
}

/// Free memory on GPU `index`, as the driver counts it (after the device's queue is done).
fn gpu_free(device: &Device, index: usize) -> Result<u64> {
    device.synchronize()?;
    let found = fleet_inference::gpu::detect();
    let gpu = found.gpus().get(index).context("NVML does not see this GPU")?;
    Ok(gpu.memory_free)
}

fn speed(path: &Path, device: &Device, batches: &[usize]) -> Result<Value> {
    let index = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    let free_before = gpu_free(device, index)?;
    let started = Instant::now();
    let model = load(path, device)?;
    let load_s = started.elapsed().as_secs_f64();
    let model_bytes = free_before.saturating_sub(gpu_free(device, index)?);
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {:.2} GiB on the GPU for a {:.2} GiB file ({:.3}x), loaded in {load_s:.1} s",
        path.display(),
        model_bytes as f64 / (1u64 << 30) as f64,
        file_bytes as f64 / (1u64 << 30) as f64,
        model_bytes as f64 / file_bytes.max(1) as f64
    );
    model.reserve_kv(8 << 30)?;
    let mut decode_rows = Vec::new();
    for &batch in batches {
        let r = measure(|| decode(&model, batch, 64))?;
        println!("{} decode, {batch} sequences: {r}", path.display());
        decode_rows.push(json!({"batch": batch, "result": r}));
    }
    let prefill_one = measure(|| prefill(&model, 1, 512))?;
    println!("{} prefill, 1 x 512 tokens: {prefill_one}", path.display());
    let prefill_many = measure(|| prefill(&model, 16, 512))?;
    println!("{} prefill, 16 x 512 tokens: {prefill_many}", path.display());
    // One decode step's weight bytes read, for the bandwidth share of single-stream decode.
    Ok(json!({
        "weights": std::env::var("FLEET_GPU_WEIGHTS").unwrap_or_else(|_| "auto".into()),
        "weight_bytes": model.weight_bytes(),
        "gpu_memory_for_model_bytes": model_bytes,
        "file_bytes": file_bytes,
        "load_s": load_s,
        "decode": decode_rows,
        "prefill_1x512": prefill_one,
        "prefill_16x512": prefill_many,
    }))
}

/// Seconds per call of `run`, the median of 5 after a warm-up, the device synchronized.
fn time(device: &Device, mut run: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    run()?;
    device.synchronize()?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        run()?;
        device.synchronize()?;
        runs.push(started.elapsed().as_secs_f64());
    }
    Ok(median(runs))
}

/// The pieces of a batched prefill step, one layer of the 0.5B model (14 heads, 2 KV heads,
/// head_dim 64, hidden 896, MLP 4864), timed alone: attention over `batch` prompts of `len`
/// tokens in tiles and a row at a time (which must agree bit for bit), and the down
/// projection of all their rows whole, in 64-row calls and as one batched call.
fn parts(device: &Device) -> Result<Value> {
    use fleet_inference::cuda::{PagedKv, Rotation};
    use fleet_inference::transformer::paged::{BlockTable, StepPlan};
    let (heads, kv_heads, hd) = (14, 2, 64);
    let mut rows = Vec::new();
    for (batch, len) in [(1, 512), (16, 512), (256, 1)] {
        // Decode rows (len 1) attend over 512 cached positions.
        let cached = if len == 1 { 511 } else { 0 };
        let kv = PagedKv::new(device, DType::BF16, 1, kv_heads, hd, 2 << 30)?;
        let mut tables: Vec<BlockTable> =
            (0..batch).map(|_| BlockTable::new(kv.pool().clone())).collect();
        for t in &mut tables {
            t.reserve(cached + len)?;
        }
        // Every position's keys and values, as a prefill of all of them would write them.
        let history = StepPlan::new(tables.iter().map(|t| (t, 0, cached + len)), 1);
        let all = history.tokens();
        let qkv = Tensor::randn(0f32, 1., (all, (heads + 2 * kv_heads) * hd), device)?
            .to_dtype(DType::BF16)?;
        let cos = Tensor::ones((all, hd / 2), DType::F32, device)?;
        let sin = Tensor::zeros((all, hd / 2), DType::F32, device)?;
        let rot = Rotation { dims: hd, interleaved: false };
        let q_all = kv.rope_write(0, &qkv, (&cos, &sin), rot, &kv.upload(&history)?)?;
        // The step: the last `len` positions of each sequence.
        let q = if len == 1 {
            let idx: Vec<u32> = (0..batch as u32).map(|i| i * 512 + 511).collect();
            q_all.index_select(&Tensor::new(idx.as_slice(), device)?, 0)?
        } else {
            q_all
        };
        let step = |tile_rows| StepPlan::new(tables.iter().map(|t| (t, cached, len)), tile_rows);
        let (one, tiled) = (kv.upload(&step(1))?, kv.upload(&step(kv.tile_rows()))?);
        let a = kv.attend(0, &q, &one)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = kv.attend(0, &q, &tiled)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let t_one = time(device, || Ok(kv.attend(0, &q, &one)?))?;
        let t_tiled = time(device, || Ok(kv.attend(0, &q, &tiled)?))?;
        let row = json!({
            "batch": batch, "len": len, "cached": cached,
            "attention_row_at_a_time_ms": t_one * 1e3,
            "attention_tiled_ms": t_tiled * 1e3,
            "tiled_equals_row_at_a_time": a == b,
        });
        println!("parts: {row}");
        rows.push(row);
    }
    let mut probes = Vec::new();
    for (k, n) in [(4864, 896), (1536, 576)] {
        let probe = invariance_probe(device, k, n)?;
        println!("parts: {probe}");
        probes.push(probe);
    }
    let (k, n, m) = (4864, 896, 16 * 512);
    let w = Tensor::randn(0f32, 1., (n, k), device)?.to_dtype(DType::BF16)?;
    let x = Tensor::randn(0f32, 1., (m, k), device)?.to_dtype(DType::BF16)?;
    let linear = fleet_inference::transformer::linear::Linear::dense(w.clone(), None)?;
    let whole = time(device, || Ok(x.matmul(&w.t()?)?))?;
    let split = time(device, || Ok(linear.forward(&x)?))?;
    let wt = w.t()?.broadcast_as((m / 64, k, n))?;
    let batched = time(device, || Ok(x.reshape((m / 64, 64, k))?.matmul(&wt)?))?;
    let down = json!({
        "rows": m, "in": k, "out": n,
        "whole_ms": whole * 1e3, "projection_ms": split * 1e3, "batched_64_row_pieces_ms": batched * 1e3,
    });
    println!("parts: {down}");
    let quantized = [(576, 3072), (1536, 576), (896, 9728), (4864, 896)]
        .into_iter()
        .map(|(k, n)| quantized_against_bf16(device, k, n))
        .collect::<Result<Vec<_>>>()?;
    println!("parts: {}", json!(quantized));
    Ok(json!({
        "attention": rows, "down_projection": down, "invariance": probes, "q4_1": quantized,
    }))
}

/// Weights kept as Q4_1 blocks on the GPU (candle's quantized CUDA matmul, f32 activations)
/// against dequantized to bf16 at load (cuBLAS, bf16 activations), for an `[in, out]`
/// projection at 1 to 512 rows: milliseconds per call.
fn quantized_against_bf16(device: &Device, k: usize, n: usize) -> Result<Value> {
    use candle_core::Module;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    let w = Tensor::randn(0f32, 1., (n, k), &Device::Cpu)?;
    let q = QMatMul::from_qtensor(QTensor::quantize(&w.to_device(device)?, GgmlDType::Q4_1)?)?;
    let dense = w.to_device(device)?.to_dtype(DType::BF16)?.t()?;
    let mut rows = serde_json::Map::new();
    for m in [1, 8, 64, 512] {
        let x = Tensor::randn(0f32, 1., (m, k), device)?;
        let xb = x.to_dtype(DType::BF16)?;
        let q_ms = time(device, || Ok(q.forward(&x)?))? * 1e3;
        let bf16_ms = time(device, || Ok(xb.matmul(&dense)?))? * 1e3;
        rows.insert(format!("{m}_rows"), json!({"q4_1_ms": q_ms, "bf16_ms": bf16_ms}));
    }
    Ok(json!({"in": k, "out": n, "ms": rows}))
}

/// For an `[in, out]` projection whose sum is longer than its output: at which row counts
/// does one cuBLAS call give some row differently from the same row in 64-row calls (the
/// projection's invariant path), and how long 8,192 rows take in calls of 64 to 1,024
/// rows, whole, or as one batched call of 64-row pieces (and is that one invariant).
fn invariance_probe(device: &Device, k: usize, n: usize) -> Result<Value> {
    let w = Tensor::randn(0f32, 1., (n, k), device)?.to_dtype(DType::BF16)?;
    let wt = w.t()?;
    let x = Tensor::randn(0f32, 1., (8192, k), device)?.to_dtype(DType::BF16)?;
    let host = |t: Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let pieces = |m: usize, p: usize| -> Result<Tensor> {
        let parts = (0..m)
            .step_by(p)
            .map(|s| x.narrow(0, s, p.min(m - s))?.matmul(&wt))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    };
    let reference = host(pieces(8192, 64)?)?;
    let mut differ = Vec::new();
    let counts: Vec<usize> = (1..=1024).chain((1088..=8192).step_by(64)).collect();
    for &m in &counts {
        let y = host(x.narrow(0, 0, m)?.matmul(&wt)?)?;
        if y[..] != reference[..m * n] {
            differ.push(m);
        }
    }
    let mut batched_differ = Vec::new();
    for b in [1, 2, 4, 8, 16, 32, 64, 128] {
        let y =
            x.narrow(0, 0, 64 * b)?.reshape((b, 64, k))?.matmul(&wt.broadcast_as((b, k, n))?)?;
        if host(y)?[..] != reference[..64 * b * n] {
            batched_differ.push(b);
        }
    }
    // Ours: every count against the 8,192-row call, and against cuBLAS within bf16's rounding.
    let ours_all = host(fleet_inference::cuda::matmul_xwt(&x, &w)?)?;
    let mut ours_differ = Vec::new();
    for &m in &counts {
        let y = host(fleet_inference::cuda::matmul_xwt(&x.narrow(0, 0, m)?, &w)?)?;
        if y[..] != ours_all[..m * n] {
            ours_differ.push(m);
        }
    }
    let cublas = host(x.matmul(&wt)?)?;
    let max_abs = cublas.iter().map(|a| a.abs()).fold(0f32, f32::max);
    let max_diff = cublas.iter().zip(&ours_all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mut ms = serde_json::Map::new();
    for rows in [1, 16, 64, 256, 1024, 8192] {
        let xr = x.narrow(0, 0, rows)?;
        let ours = time(device, || Ok(fleet_inference::cuda::matmul_xwt(&xr, &w)?))?;
        let theirs = time(device, || Ok(xr.matmul(&wt)?))?;
        ms.insert(format!("ours_{rows}_rows"), json!(ours * 1e3));
        ms.insert(format!("cublas_{rows}_rows"), json!(theirs * 1e3));
    }
    for p in [64, 128, 256, 512, 1024] {
        ms.insert(format!("calls_of_{p}"), json!(time(device, || pieces(8192, p))? * 1e3));
    }
    ms.insert("whole".into(), json!(time(device, || Ok(x.matmul(&wt)?))? * 1e3));
    let wb = wt.broadcast_as((128, k, n))?;
    ms.insert(
        "batched_64".into(),
        json!(time(device, || Ok(x.reshape((128, 64, k))?.matmul(&wb)?))? * 1e3),
    );
    Ok(json!({
        "in": k, "out": n,
        "row_counts_that_differ_from_64_row_calls": differ,
        "batched_64_row_pieces_that_differ": batched_differ,
        "ours_row_counts_that_differ_from_8192_rows": ours_differ,
        "ours_max_abs_diff_from_cublas": max_diff,
        "cublas_max_abs": max_abs,
        "ms_for_8192_rows": ms,
    }))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value_of = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    if let Some(shape) = value_of("--write-random-gguf") {
        let path = args.iter().skip_while(|a| *a != shape).nth(1).context("expected a PATH")?;
        return blocks::write_random_gguf(shape, Path::new(path));
    }
    let json_path = value_of("--json").cloned();
    let device_name = value_of("--device").cloned().unwrap_or_else(|| "cuda:0".into());
    let batches: Vec<usize> = match value_of("--batches") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 32, 128, 256],
    };
    let values: Vec<&String> = [value_of("--json"), value_of("--device"), value_of("--batches")]
        .into_iter()
        .flatten()
        .collect();
    let models: Vec<&String> =
        args.iter().filter(|a| !a.starts_with("--") && !values.contains(a)).collect();
    let alone = ["--parts", "--blocks"];
    anyhow::ensure!(
        !models.is_empty() || args.iter().any(|a| alone.contains(&a.as_str())),
        "usage: gpu -- [--check] [--speed] [--parts] [--blocks] [--batches 1,32] [--json OUT] \
         MODEL... | --write-random-gguf SHAPE PATH"
    );
    let device = fleet_inference::device(&device_name)?;
    let mut results = Vec::new();
    if args.iter().any(|a| a == "--parts") {
        results.push(json!({"parts": parts(&device)?}));
    }
    if args.iter().any(|a| a == "--blocks") {
        results.push(json!({"blocks": blocks::check_and_time(&device)?}));
    }
    for path in models {
        let path = Path::new(path);
        let mut entry = json!({"model": path.display().to_string(), "device": device_name});
        if args.iter().any(|a| a == "--check") {
            entry["check"] = check(path, &device).with_context(|| format!("checking {path:?}"))?;
        }
        if args.iter().any(|a| a == "--speed") {
            entry["speed"] =
                speed(path, &device, &batches).with_context(|| format!("timing {path:?}"))?;
        }
        results.push(entry);
    }
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
