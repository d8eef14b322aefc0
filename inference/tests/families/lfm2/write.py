# A tiny random LFM2 file, to learn what llama.cpp expects (not part of the repo).
import numpy as np, gguf, sys
H, FF, L, V, NL, NH, KVH = 64, 96, 3, 64, 4, 4, 2
HD = H // NH
attn_layers = {1, 3}
rng = np.random.default_rng(0)
w = gguf.GGUFWriter(sys.argv[1], "lfm2")
w.add_context_length(256); w.add_embedding_length(H); w.add_feed_forward_length(FF)
w.add_block_count(NL); w.add_head_count(NH)
w.add_head_count_kv([KVH if i in attn_layers else 0 for i in range(NL)])
w.add_rope_freq_base(1e6); w.add_layer_norm_rms_eps(1e-5)
w.add_uint32("lfm2.shortconv.l_cache", L)
w.add_vocab_size(V)
w.add_tokenizer_model("llama")
w.add_token_list([f"<t{i}>".encode() for i in range(V)])
w.add_token_scores([0.0] * V)
w.add_token_types([1] * V)
r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
w.add_tensor("token_embd.weight", r(V, H))
w.add_tensor("token_embd_norm.weight", 1 + r(H))
for i in range(NL):
    b = f"blk.{i}."
    w.add_tensor(b + "attn_norm.weight", 1 + r(H))
    w.add_tensor(b + "ffn_norm.weight", 1 + r(H))
    w.add_tensor(b + "ffn_gate.weight", r(FF, H)); w.add_tensor(b + "ffn_up.weight", r(FF, H)); w.add_tensor(b + "ffn_down.weight", r(H, FF))
    if i in attn_layers:
        w.add_tensor(b + "attn_q.weight", r(NH * HD, H)); w.add_tensor(b + "attn_k.weight", r(KVH * HD, H)); w.add_tensor(b + "attn_v.weight", r(KVH * HD, H))
        w.add_tensor(b + "attn_output.weight", r(H, NH * HD))
        w.add_tensor(b + "attn_q_norm.weight", 1 + r(HD)); w.add_tensor(b + "attn_k_norm.weight", 1 + r(HD))
    else:
        w.add_tensor(b + "shortconv.in_proj.weight", r(3 * H, H))
        w.add_tensor(b + "shortconv.conv.weight", r(H, L))
        w.add_tensor(b + "shortconv.out_proj.weight", r(H, H))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
