# LFM2's forward in numpy on the tiny file, against llama.cpp: pins the semantics.
import numpy as np, gguf, sys, llama_cpp
r = gguf.GGUFReader(sys.argv[1])
T = {t.name: np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)]) for t in r.tensors}
H, NH, KVH, L, NL, eps, theta = 64, 4, 2, 3, 4, 1e-5, 1e6
HD = H // NH
def rms(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
def rope(x, pos):  # NEOX: halves
    half = HD // 2
    inv = theta ** (-np.arange(half) * 2 / HD)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)
toks = [1, 5, 9, 17]
x = T["token_embd.weight"][toks]
n = len(toks); pos = np.arange(n, dtype=np.float64)
for i in range(NL):
    b = f"blk.{i}."
    h = rms(x, T[b + "attn_norm.weight"])
    if b + "shortconv.in_proj.weight" in T:
        bcx = h @ T[b + "shortconv.in_proj.weight"].T
        B, C, X = bcx[:, :H], bcx[:, H:2 * H], bcx[:, 2 * H:]
        bx = np.concatenate([np.zeros((L - 1, H)), B * X])
        k = T[b + "shortconv.conv.weight"]  # (H, L): j = 0 the oldest position
        conv = np.stack([sum(bx[t + j] * k[:, j] for j in range(L)) for t in range(n)])
        out = (C * conv) @ T[b + "shortconv.out_proj.weight"].T
    else:
        q = rope(rms((h @ T[b + "attn_q.weight"].T).reshape(n, NH, HD), T[b + "attn_q_norm.weight"]), pos)
        kk = rope(rms((h @ T[b + "attn_k.weight"].T).reshape(n, KVH, HD), T[b + "attn_k_norm.weight"]), pos)
        v = (h @ T[b + "attn_v.weight"].T).reshape(n, KVH, HD)
        o = np.zeros((n, NH, HD))
        for hh in range(NH):
            g = hh // (NH // KVH)
            s = q[:, hh] @ kk[:, g].T / np.sqrt(HD)
            s = np.where(np.tril(np.ones((n, n))) > 0, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
            o[:, hh] = p @ v[:, g]
        out = o.reshape(n, H) @ T[b + "attn_output.weight"].T
    x = x + out
    h2 = rms(x, T[b + "ffn_norm.weight"])
    g_ = h2 @ T[b + "ffn_gate.weight"].T
    x = x + ((g_ / (1 + np.exp(-g_))) * (h2 @ T[b + "ffn_up.weight"].T)) @ T[b + "ffn_down.weight"].T
logits = rms(x[-1], T["token_embd_norm.weight"]) @ T["token_embd.weight"].T
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, verbose=False, type_k=0, type_v=0)
llm.eval(toks)
ref = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).copy()
print("max |numpy - llama.cpp| =", float(np.abs(logits - ref).max()), "; logits spread", float(ref.std()))
