#!/usr/bin/env python3
"""A Qwen3-MoE-shaped GGUF file with random weights, for the engine's benchmarks beside
llama.cpp (scripts/bench-engine.sh; never in CI).

    python scripts/moe-gguf.py OUT_DIR

writes OUT_DIR/qwen3moe-1b-random-F16.gguf: 20 layers, hidden 1024, 16 query heads of 128
over 4 KV heads (with Qwen3's per-head norms), 16 experts of 768 per layer, 4 per token, the
151,936-token synthetic byte-level BPE and ChatML template of ../shared/tools/llm-anchor
(imported from there, not copied): about 1.0 billion parameters in all, 0.45 billion read per
token. Quantize it with llama.cpp's quantizer:

    python ../shared/tools/llm-anchor/quantize_gguf.py --in FILE --types Q4_K_M --threads 2

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
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 1024, 20, 16, 4, 128
EXPERTS, USED, EXPERT_FF = 16, 4, 768
STD = 0.02


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "qwen3moe-1b-random-F16.gguf"
    rng = np.random.default_rng(0)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * STD).astype(np.float16)

    def gains(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    special = anchor.SPECIAL_TOKENS
    tokens, merges = anchor.build_bpe_vocab(VOCAB - len(special))
    eot, im_end = VOCAB - 3, VOCAB - 1
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    w.add_name("qwen3moe-1b-random")
    w.add_description("Qwen3-MoE architecture with RANDOM weights; benchmarking only")
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
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
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
        w.add_tensor(f"{b}.attn_q.weight", normal(HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"{b}.attn_k.weight", normal(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"{b}.attn_v.weight", normal(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"{b}.attn_q_norm.weight", gains(HEAD_DIM))
        w.add_tensor(f"{b}.attn_k_norm.weight", gains(HEAD_DIM))
        w.add_tensor(f"{b}.attn_output.weight", normal(HIDDEN, HEADS * HEAD_DIM))
        w.add_tensor(f"{b}.ffn_norm.weight", gains(HIDDEN))
        # The router stays F32 (llama.cpp's quantizer leaves it so).
        w.add_tensor(f"{b}.ffn_gate_inp.weight",
                     (rng.standard_normal((EXPERTS, HIDDEN), dtype=np.float32) * STD))
        w.add_tensor(f"{b}.ffn_gate_exps.weight", normal(EXPERTS, EXPERT_FF, HIDDEN))
        w.add_tensor(f"{b}.ffn_up_exps.weight", normal(EXPERTS, EXPERT_FF, HIDDEN))
        w.add_tensor(f"{b}.ffn_down_exps.weight", normal(EXPERTS, HIDDEN, EXPERT_FF))
    w.add_tensor("output_norm.weight", gains(HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
