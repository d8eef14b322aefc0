#!/usr/bin/env python3
"""PyTorch + transformers on the same model and GPU as `benches/gpu.rs`: bf16, batched greedy
`generate` with a static KV cache, prompts of 32 random tokens; aggregate decode tokens/s at
each batch size (time of N+1 new tokens minus time of 1, over N) and prefill tokens/s.
Prints one JSON object.

Usage: transformers_bench.py HF_FOLDER [--batches 1,32,128,256] [--steps 64]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda().eval()
    vocab = min(model.config.vocab_size, 150_000)
    g = torch.Generator().manual_seed(0)
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "decode": []}

    def generate(ids, new):
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
            min_new_tokens=new, do_sample=False, cache_implementation="static",
            pad_token_id=0,
        )

    with torch.inference_mode():
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = torch.randint(0, vocab, (batch, 32), generator=g).cuda()
            generate(ids, args.steps + 1)  # warm-up (and compile of the static cache)
            runs = []
            for _ in range(3):
                full = timed(lambda: generate(ids, args.steps + 1))
                first = timed(lambda: generate(ids, 1))
                runs.append(batch * args.steps / max(full - first, 1e-9))
            out["decode"].append({"batch": batch, "tokens_per_s": statistics.median(runs), "runs": runs})
            print(json.dumps(out["decode"][-1]), flush=True)
        for batch in (1, 16):
            ids = torch.randint(0, vocab, (batch, 512), generator=g).cuda()
            # Like the engine: the lm head on the last position only.
            def prefill():
                hidden = model.model(input_ids=ids).last_hidden_state
                return model.lm_head(hidden[:, -1]).argmax(-1)
            prefill()
            runs = [batch * 512 / timed(prefill) for _ in range(3)]
            out[f"prefill_{batch}x512"] = {"tokens_per_s": statistics.median(runs), "runs": runs}
            print(json.dumps({f"prefill_{batch}x512": out[f"prefill_{batch}x512"]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
