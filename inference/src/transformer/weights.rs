//! Where a decoder's weights come from: safetensors with Hugging Face names, or a GGUF file
//! with llama.cpp's names. The forward pass asks for [`Part`]s and never sees either naming.

use std::collections::HashMap;
use std::fs::File;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::config::Family;
use super::gguf::Header;
use super::linear::Linear;

/// One weight of a decoder, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Embed,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    /// Phi-3's fused Q, K and V.
    Qkv(usize),
    QNorm(usize),
    KNorm(usize),
    O(usize),
    /// gpt-oss's sink logit of each head `[heads]`.
    Sinks(usize),
    /// Gemma's norm of the attention's output, before the residual add; gpt-oss's files
    /// give this name to its norm before the MLP.
    PostAttnNorm(usize),
    MlpNorm(usize),
    /// Gemma's norm of the MLP's output, before the residual add.
    PostMlpNorm(usize),
    Gate(usize),
    Up(usize),
    /// Phi-3's fused gate and up projections (gate first).
    GateUp(usize),
    Down(usize),
    /// A mixture of experts' router `[experts, hidden]`.
    Router(usize),
    /// Every expert's gate, up and down projections, one tensor each `[experts, out, in]`.
    ExpertGates(usize),
    ExpertUps(usize),
    ExpertDowns(usize),
    /// Qwen2-MoE's shared expert: its gate's weight vector `[hidden]`, and its projections.
    SharedRouter(usize),
    SharedGate(usize),
    SharedUp(usize),
    SharedDown(usize),
    /// A short convolution's input projection (B, C and x), its kernel `[hidden, l_cache]`
    /// and its output projection (LFM2).
    ConvIn(usize),
    Conv(usize),
    ConvOut(usize),
    Norm,
    /// LFM2's final norm, which its files name as a norm of the embeddings.
    EmbedNorm,
    LmHead,
}

impl Part {
    /// Layer `i`'s norm before its MLP in `family`'s files: gpt-oss's name it as Gemma's
    /// norm after attention.
    pub fn mlp_norm(family: Family, i: usize) -> Self {
        if family == Family::GptOss { Part::PostAttnNorm(i) } else { Part::MlpNorm(i) }
    }

    /// The norm after the last layer in `family`'s files: LFM2's name it as a norm of the
    /// embeddings.
    pub fn final_norm(family: Family) -> Self {
        if family == Family::Lfm2 { Part::EmbedNorm } else { Part::Norm }
    }

    /// The Hugging Face name, without `.weight` / `.bias`.
    pub fn hf_name(self) -> String {
        let layer = |i: usize, rest: &str| format!("model.layers.{i}.{rest}");
        match self {
            Part::Embed => "model.embed_tokens".into(),
            Part::AttnNorm(i) => layer(i, "input_layernorm"),
            Part::Q(i) => layer(i, "self_attn.q_proj"),
            Part::K(i) => layer(i, "self_attn.k_proj"),
            Part::V(i) => layer(i, "self_attn.v_proj"),
            Part::Qkv(i) => layer(i, "self_attn.qkv_proj"),
            Part::QNorm(i) => layer(i, "self_attn.q_norm"),
            Part::KNorm(i) => layer(i, "self_attn.k_norm"),
            Part::O(i) => layer(i, "self_attn.o_proj"),
            Part::Sinks(i) => layer(i, "self_attn.sinks"),
            Part::MlpNorm(i) => layer(i, "post_attention_layernorm"),
            // Gemma's Hugging Face names (its folders are refused before weights are read).
            Part::PostAttnNorm(i) => layer(i, "post_attention_norm"),
            Part::PostMlpNorm(i) => layer(i, "post_feedforward_layernorm"),
            Part::Gate(i) => layer(i, "mlp.gate_proj"),
            Part::Up(i) => layer(i, "mlp.up_proj"),
            Part::GateUp(i) => layer(i, "mlp.gate_up_proj"),
            Part::Down(i) => layer(i, "mlp.down_proj"),
            // Mixtures of experts load from GGUF only; these name where a Hugging Face
            // checkpoint keeps them (its experts one tensor each).
            Part::Router(i) => layer(i, "mlp.gate"),
            Part::ExpertGates(i) => layer(i, "mlp.experts.gate_proj"),
            Part::ExpertUps(i) => layer(i, "mlp.experts.up_proj"),
            Part::ExpertDowns(i) => layer(i, "mlp.experts.down_proj"),
            Part::SharedRouter(i) => layer(i, "mlp.shared_expert_gate"),
            Part::SharedGate(i) => layer(i, "mlp.shared_expert.gate_proj"),
            Part::SharedUp(i) => layer(i, "mlp.shared_expert.up_proj"),
            Part::SharedDown(i) => layer(i, "mlp.shared_expert.down_proj"),
            Part::ConvIn(i) => layer(i, "conv.in_proj"),
            Part::Conv(i) => layer(i, "conv.conv"),
            Part::ConvOut(i) => layer(i, "conv.out_proj"),
            Part::Norm => "model.norm".into(),
            Part::EmbedNorm => "model.embedding_norm".into(),
            Part::LmHead => "lm_head".into(),
        }
    }

    /// llama.cpp's GGUF name, without `.weight` / `.bias`.
    pub fn gguf_name(self) -> String {
        let layer = |i: usize, rest: &str| format!("blk.{i}.{rest}");
        match self {
            Part::Embed => "token_embd".into(),
            Part::AttnNorm(i) => layer(i, "attn_norm"),
            Part::Q(i) => layer(i, "attn_q"),
            Part::K(i) => layer(i, "attn_k"),
            Part::V(i) => layer(i, "attn_v"),
            Part::Qkv(i) => layer(i, "attn_qkv"),
            Part::QNorm(i) => layer(i, "attn_q_norm"),
            Part::KNorm(i) => layer(i, "attn_k_norm"),
            Part::O(i) => layer(i, "attn_output"),
            Part::Sinks(i) => layer(i, "attn_sinks"),
            Part::MlpNorm(i) => layer(i, "ffn_norm"),
            Part::PostAttnNorm(i) => layer(i, "post_attention_norm"),
            Part::PostMlpNorm(i) => layer(i, "post_ffw_norm"),
            Part::Gate(i) => layer(i, "ffn_gate"),
            Part::Up(i) | Part::GateUp(i) => layer(i, "ffn_up"),
            Part::Down(i) => layer(i, "ffn_down"),
            Part::Router(i) => layer(i, "ffn_gate_inp"),
            Part::ExpertGates(i) => layer(i, "ffn_gate_exps"),
            Part::ExpertUps(i) => layer(i, "ffn_up_exps"),
            Part::ExpertDowns(i) => layer(i, "ffn_down_exps"),
            Part::SharedRouter(i) => layer(i, "ffn_gate_inp_shexp"),
            Part::SharedGate(i) => layer(i, "ffn_gate_shexp"),
            Part::SharedUp(i) => layer(i, "ffn_up_shexp"),
            Part::SharedDown(i) => layer(i, "ffn_down_shexp"),
            Part::ConvIn(i) => layer(i, "shortconv.in_proj"),
            Part::Conv(i) => layer(i, "shortconv.conv"),
            Part::ConvOut(i) => layer(i, "shortconv.out_proj"),
            Part::Norm => "output_norm".into(),
            Part::EmbedNorm => "token_embd_norm".into(),
            Part::LmHead => "output".into(),
        }
    }
}

/// Projections of one input: one matrix (outputs concatenated in order) where the source
/// can stack them, else one each.
#[derive(Debug)]
pub enum Projections {
    Fused(Linear),
    Separate(Vec<Linear>),
}

/// A store of weights the decoder loads from.
pub trait WeightSource {
    /// Whether the part's weight (or bias) is present.
    fn has(&self, part: Part, bias: bool) -> bool;
    /// A dense f32 tensor: norms, biases, the embedding table.
    fn dense(&mut self, part: Part, bias: bool) -> Result<Tensor>;
    /// A projection, with its bias when `bias`.
    fn linear(&mut self, part: Part, bias: bool) -> Result<Linear>;
    /// Projections of the same input (Q, K, V; gate, up), stacked into one where possible.
    fn projections(&mut self, parts: &[Part], bias: bool) -> Result<Projections> {
        let linears = parts.iter().map(|p| self.linear(*p, bias)).collect::<Result<_>>()?;
        Ok(Projections::Separate(linears))
    }
    /// Every expert's matrix of `part` (one of the `Expert*` parts), `count` of them
    /// `[out, in]` each, in their file's blocks.
    fn experts(&mut self, part: Part, count: usize) -> Result<Vec<QTensor>> {
        let _ = count;
        candle_core::bail!(
            "{} is a mixture of experts' tensor; these models load from GGUF files only",
            part.hf_name()
        )
    }

    /// A matrix in its file's blocks (a mixture of experts' shared expert).
    fn blocks(&mut self, part: Part) -> Result<QTensor> {
        candle_core::bail!(
            "{} is a mixture of experts' tensor; these models load from GGUF files only",
            part.hf_name()
        )
    }
}

fn suffix(bias: bool) -> &'static str {
    if bias { "bias" } else { "weight" }
}

/// Tensors read from safetensors files: matrices kept in f16/bf16 or f32 (other dtypes
/// become f32), or quantized; everything else f32.
#[derive(Debug)]
pub struct SafetensorsWeights {
    tensors: HashMap<String, Tensor>,
    quantize: Option<GgmlDType>,
}

impl SafetensorsWeights {
    pub fn new(tensors: HashMap<String, Tensor>, quantize: Option<GgmlDType>) -> Self {
        Self { tensors, quantize }
    }

    fn get(&mut self, part: Part, bias: bool) -> Result<Tensor> {
        self.take(part, bias)?.to_dtype(DType::F32)
    }

    /// The tensor in its file's dtype, removed so the form the model keeps is the only copy.
    fn take(&mut self, part: Part, bias: bool) -> Result<Tensor> {
        let name = format!("{}.{}", part.hf_name(), suffix(bias));
        match self.tensors.remove(&name) {
            Some(t) => Ok(t),
            None => candle_core::bail!("the weights have no tensor {name}"),
        }
    }
}

impl WeightSource for SafetensorsWeights {
    fn has(&self, part: Part, bias: bool) -> bool {
        self.tensors.contains_key(&format!("{}.{}", part.hf_name(), suffix(bias)))
    }

    fn dense(&mut self, part: Part, bias: bool) -> Result<Tensor> {
        // The embedding may also serve as the tied lm head: its f32 form is kept, so both
        // uses share one copy.
        if part == Part::Embed {
            let name = format!("{}.weight", part.hf_name());
            let Some(t) = self.tensors.get(&name) else {
                candle_core::bail!("the weights have no tensor {name}")
            };
            let t = t.to_dtype(DType::F32)?;
            self.tensors.insert(name, t.clone());
            return Ok(t);
        }
        self.get(part, bias)
    }

    /// f16 and bf16 matrices stay half precision unless they are quantized.
    fn linear(&mut self, part: Part, bias: bool) -> Result<Linear> {
        let w =
            if part == Part::Embed { self.dense(part, false)? } else { self.take(part, false)? };
        let b = if bias { Some(self.get(part, true)?) } else { None };
        match self.quantize {
            Some(dtype) if w.dim(1)?.is_multiple_of(dtype.block_size()) => {
                let q = QTensor::quantize(&w.to_dtype(DType::F32)?, dtype)?;
                // Quantizing for a GPU is asked for to save its memory: the blocks stay,
                // unless FLEET_GPU_WEIGHTS=bf16.
                let device = w.device();
                let keep = device.is_cuda()
                    && crate::cuda::blocks_supported(dtype)
                    && super::linear::GpuWeights::from_env()? != super::linear::GpuWeights::Bf16;
                if keep { Linear::gpu_blocks(&q, b, device) } else { Linear::quantized(q, b) }
            }
            _ => Linear::dense(w, b),
        }
    }
}

/// Tensors read one by one from a GGUF file; quantized ones stay quantized (on a CUDA GPU
/// where `keep_blocks`, else dequantized to bf16 there).
#[derive(Debug)]
pub struct GgufWeights {
    header: Header,
    file: File,
    device: Device,
    keep_blocks: bool,
}

impl GgufWeights {
    /// `keep_blocks`: on a CUDA GPU, whether blocks our kernels read stay as they are.
    pub fn new(header: Header, file: File, device: Device, keep_blocks: bool) -> Self {
        Self { header, file, device, keep_blocks }
    }

    /// Bytes the file's quantized matrices would take dequantized to bf16.
    pub fn bf16_bytes_of_blocks(content: &Content) -> u64 {
        let quantized = content.tensor_infos.values().filter(|info| {
            !matches!(info.ggml_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        });
        quantized.map(|info| info.shape.elem_count() as u64 * 2).sum()
    }

    pub fn content(&self) -> &Content {
        &self.header.content
    }

    pub fn read(&mut self, name: &str) -> Result<QTensor> {
        self.header.tensor(&mut self.file, name, &self.device)
    }

    /// Tensor `name` read on the CPU.
    fn read_cpu(&mut self, name: &str) -> Result<QTensor> {
        self.header.tensor(&mut self.file, name, &Device::Cpu)
    }

    fn name(part: Part, bias: bool) -> String {
        format!("{}.{}", part.gguf_name(), suffix(bias))
    }

    /// On a CUDA GPU, a projection whose blocks the GPU keeps as they are: read on the CPU
    /// and copied to the card once (candle's reader would pad them on the card, and they
    /// would come back for our layout).
    fn gpu_blocks(&mut self, part: Part, bias: bool) -> Result<Option<Linear>> {
        let name = Self::name(part, false);
        let keeps = self.keep_blocks
            && self.device.is_cuda()
            && self
                .header
                .content
                .tensor_infos
                .get(&name)
                .is_some_and(|info| crate::cuda::blocks_supported(info.ggml_dtype));
        if !keeps {
            return Ok(None);
        }
        let w = self.read_cpu(&name)?;
        let b = if bias { Some(self.dense(part, true)?) } else { None };
        Linear::gpu_blocks(&w, b, &self.device).map(Some)
    }
}

impl WeightSource for GgufWeights {
    fn has(&self, part: Part, bias: bool) -> bool {
        self.header.content.tensor_infos.contains_key(&Self::name(part, bias))
    }

    fn dense(&mut self, part: Part, bias: bool) -> Result<Tensor> {
        let name = Self::name(part, bias);
        self.read(&name)?.dequantize(&self.device)
    }

    fn linear(&mut self, part: Part, bias: bool) -> Result<Linear> {
        if let Some(linear) = self.gpu_blocks(part, bias)? {
            return Ok(linear);
        }
        let w = self.read(&Self::name(part, false))?;
        let b = if bias { Some(self.dense(part, true)?) } else { None };
        Linear::quantized(w, b)
    }

    fn blocks(&mut self, part: Part) -> Result<QTensor> {
        self.read_cpu(&Self::name(part, false))
    }

    /// One tensor `[experts, out, in]` split into each expert's blocks; or, in older
    /// Mixtral-style files, one tensor per expert (`blk.N.ffn_gate.E.weight`).
    fn experts(&mut self, part: Part, count: usize) -> Result<Vec<QTensor>> {
        let name = Self::name(part, false);
        if !self.header.content.tensor_infos.contains_key(&name) {
            let (Part::ExpertGates(i) | Part::ExpertUps(i) | Part::ExpertDowns(i)) = part else {
                candle_core::bail!("the file has no tensor {name}")
            };
            let single = match part {
                Part::ExpertGates(_) => Part::Gate(i),
                Part::ExpertUps(_) => Part::Up(i),
                _ => Part::Down(i),
            };
            let one = |e: usize| format!("{}.{e}.weight", single.gguf_name());
            if !self.header.content.tensor_infos.contains_key(&one(0)) {
                candle_core::bail!("the file has no tensor {name} (nor {})", one(0));
            }
            return (0..count).map(|e| self.read_cpu(&one(e))).collect();
        }
        // Read on the CPU: experts run on the CPU (the GPU refuses these models at load).
        let all = self.read_cpu(&name)?;
        let dims = all.shape().dims().to_vec();
        let [n, out, k] = dims[..] else {
            candle_core::bail!("{name} has shape {dims:?}, expected [experts, out, in]")
        };
        if n != count {
            candle_core::bail!("{name} holds {n} experts, expected {count}");
        }
        let dtype = all.dtype();
        let data = all.data()?;
        let each = out * k / dtype.block_size() * dtype.type_size();
        if data.len() != n * each {
            candle_core::bail!("{name} holds {} bytes, expected {}", data.len(), n * each);
        }
        data.chunks_exact(each)
            .map(|bytes| {
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    bytes,
                    vec![out, k],
                    &Device::Cpu,
                )
            })
            .collect()
    }

    /// Matrices our kernels multiply are stacked: one matmul quantizes the input once and
    /// streams all of them in one pass.
    fn projections(&mut self, parts: &[Part], bias: bool) -> Result<Projections> {
        // The GPU stacks its projections after loading (`Decoder::stack_projections`).
        if self.device.is_cuda() {
            let linears = parts.iter().map(|p| self.linear(*p, bias)).collect::<Result<_>>()?;
            return Ok(Projections::Separate(linears));
        }
        let weights: Vec<QTensor> =
            parts.iter().map(|p| self.read(&Self::name(*p, false))).collect::<Result<_>>()?;
        let biases: Vec<Option<Tensor>> = parts
            .iter()
            .map(|p| if bias { self.dense(*p, true).map(Some) } else { Ok(None) })
            .collect::<Result<_>>()?;
        let stacked = crate::kernels::repack::stack(&weights).ok().flatten();
        if let Some(stacked) = stacked {
            let bias = if bias {
                Some(Tensor::cat(&biases.into_iter().flatten().collect::<Vec<_>>(), 0)?)
            } else {
                None
            };
            return Ok(Projections::Fused(Linear::quantized(stacked, bias)?));
        }
        let linears = weights
            .into_iter()
            .zip(biases)
            .map(|(w, b)| Linear::quantized(w, b))
            .collect::<Result<_>>()?;
        Ok(Projections::Separate(linears))
    }
}
