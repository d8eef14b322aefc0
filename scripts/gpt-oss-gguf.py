#!/usr/bin/env python3
"""A gpt-oss-shaped GGUF file with random weights, for the engine's benchmarks beside
llama.cpp (scripts/bench-engine.sh; never in CI).

    python scripts/gpt-oss-gguf.py OUT_DIR

writes OUT_DIR/gpt-oss-1b-random-F16.gguf: gpt-oss's layers (biased attention with a sink
per head, every other layer a window of 128, YaRN 32 over 4,096, 32 biased experts with the
clamped SwiGLU, 4 per token) at a smaller size: 16 layers, hidden 1024, 16 query heads of 64
over 4 KV heads, experts 512 wide, the 151,936-token synthetic byte-level BPE and ChatML
template of ../shared/tools/llm-anchor (imported from there, not copied; its tokenizer is not
o200k, which does not matter to speed): about 1.16 billion parameters, 0.3 billion read per
token. Quantize it as gpt-oss's files are (experts MXFP4, the rest Q8_0) with llama.cpp:

    python ../shared/tools/llm-anchor/quantize_gguf.py --in FILE --types MXFP4_MOE --threads 2

Needs numpy and gguf (the llm-anchor venv has both).
"""

import pathlib
import sys

import gguf
import numpy as np

ANCHOR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "llm-anchor"
sys.path.insert(0, str(ANCHOR))
import make_random_gguf as anchor  # noqa: E402

VOCAB = 151936
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 1024, 16, 16, 4, 64
EXPERTS, USED, EXPERT_FF = 32, 4, 512
WINDOW = 128
STD = 0.02


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpt-oss-1b-random-F16.gguf"
    rng = np.random.default_rng(0)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * STD).astype(np.float16)

    def small(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * STD).astype(np.float32)

    def gains(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    special = anchor.SPECIAL_TOKENS
    tokens, merges = anchor.build_bpe_vocab(VOCAB - len(special))
    eot, im_end = VOCAB - 3, VOCAB - 1
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_name("gpt-oss-1b-random")
    w.add_description("gpt-oss architecture with RANDOM weights; benchmarking only")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(32768)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(EXPERT_FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(150000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(32.0)
    w.add_rope_scaling_orig_ctx_len(4096)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_sliding_window(WINDOW)
    w.add_expert_count(EXPERTS)
    w.add_expert_used_count(USED)
    w.add_expert_feed_forward_length(EXPERT_FF)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens + special)
    w.add_token_types([int(gguf.TokenType.NORMAL)] * len(tokens)
                      + [int(gguf.TokenType.CONTROL)] * len(special))
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(eot)
    w.add_eos_token_id(im_end)
    w.add_pad_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(anchor.CHATML_TEMPLATE)
    w.add_tensor("token_embd.weight", normal(VOCAB, HIDDEN))
    for i in range(LAYERS):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", gains(HIDDEN))
        for name, rows in [("attn_q", HEADS), ("attn_k", KV_HEADS), ("attn_v", KV_HEADS)]:
            w.add_tensor(f"{b}.{name}.weight", normal(rows * HEAD_DIM, HIDDEN))
            w.add_tensor(f"{b}.{name}.bias", small(rows * HEAD_DIM))
        w.add_tensor(f"{b}.attn_output.weight", normal(HIDDEN, HEADS * HEAD_DIM))
        w.add_tensor(f"{b}.attn_output.bias", small(HIDDEN))
        w.add_tensor(f"{b}.attn_sinks.weight", small(HEADS))
        w.add_tensor(f"{b}.post_attention_norm.weight", gains(HIDDEN))
        # The router stays F32 (llama.cpp's quantizer leaves it so).
        w.add_tensor(f"{b}.ffn_gate_inp.weight", small(EXPERTS, HIDDEN))
        w.add_tensor(f"{b}.ffn_gate_inp.bias", small(EXPERTS))
        w.add_tensor(f"{b}.ffn_gate_exps.weight", normal(EXPERTS, EXPERT_FF, HIDDEN))
        w.add_tensor(f"{b}.ffn_gate_exps.bias", small(EXPERTS, EXPERT_FF))
        w.add_tensor(f"{b}.ffn_up_exps.weight", normal(EXPERTS, EXPERT_FF, HIDDEN))
        w.add_tensor(f"{b}.ffn_up_exps.bias", small(EXPERTS, EXPERT_FF))
        w.add_tensor(f"{b}.ffn_down_exps.weight", normal(EXPERTS, HIDDEN, EXPERT_FF))
        w.add_tensor(f"{b}.ffn_down_exps.bias", small(EXPERTS, HIDDEN))
    w.add_tensor("output_norm.weight", gains(HIDDEN))
    w.add_tensor("output.weight", normal(VOCAB, HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
