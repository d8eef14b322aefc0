"""Summarises scripts/bench-engine.sh: medians over rounds of the engine and llama.cpp on the
same files, with ratios (engine / llama.cpp), as a Markdown table."""
import json
import pathlib
import statistics
import sys


def engine_figures(path):
    [r] = json.loads(path.read_text())
    figures = {"prefill 512": r["prefill"]["tokens_per_s"], "decode B=1": r["decode"]["tokens_per_s"]}
    for b in r["batched"]:
        figures[f"decode B={b['batch']} (aggregate)"] = b["aggregate_tokens_per_s"]
    return figures


def llamacpp_figures(path):
    r = json.loads(path.read_text())
    figures = {"prefill 512": r["prefill"]["tokens_per_s"], "decode B=1": r["decode"]["tokens_per_s"]}
    for b in r["batched"]:
        if b["B"] in (8, 32):
            figures[f"decode B={b['B']} (aggregate)"] = b["aggregate_tokens_per_s"]
    return figures


def medians(paths, read):
    runs = [read(p) for p in sorted(paths)]
    return {k: (statistics.median(r[k] for r in runs), len(runs)) for k in runs[0]}


def main(out):
    out = pathlib.Path(out)
    print("| file | measurement | engine tok/s | llama.cpp tok/s | ratio | rounds |")
    print("|---|---|---|---|---|---|")
    # engine-<file name>-<round>.json, one per file and round.
    names = sorted({p.name[len("engine-") :].rsplit("-", 1)[0] for p in out.glob("engine-*.json")})
    for q in names:
        ours = medians(out.glob(f"engine-{q}-*.json"), engine_figures)
        theirs = medians(out.glob(f"llamacpp-{q}-*.json"), llamacpp_figures)
        for key, (value, n) in ours.items():
            peer = theirs.get(key, (float("nan"), 0))[0]
            print(f"| {q} | {key} | {value:.1f} | {peer:.1f} | {value / peer:.2f}x | {n} |")


if __name__ == "__main__":
    main(sys.argv[1])
