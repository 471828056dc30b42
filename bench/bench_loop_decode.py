"""Eager against compiled decoding on the real path's own generation stages: a script, not a test.

bench_generate.py times a fixed number of new tokens per row. The loop's stages are different: rows stop
at their own end-of-turn token, so the eager path drops finished rows from the batch (the compiled step
keeps its static shapes instead), and each new batch size is a new shape to compile. This script
times the two stages that dominate an AIFT round, on held-out prompts of `--world real` and the offline
SmolLM2-135M-Instruct, with the loop's own functions and settings (evaluation.respond, judge.judge):
    candidates  N=4 responses per prompt, T=0.7, top-p 0.9, at most 160 new tokens
    judging     3 sampled judgments of each candidate with the instruction-following rubric, 64 tokens
Each stage runs eager, then compiled (its first call, compile included, is timed apart), then compiled
again: wall seconds and generated tokens per second of each.

    python bench/bench_loop_decode.py [--ckpt PATH] [--prompts 16] [--batch-size 64]
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluation as E  # noqa: E402
import generate  # noqa: E402
import judge as J  # noqa: E402
import realworld  # noqa: E402
from checkpoint import load_model  # noqa: E402


def timed(fn):
    tokens0 = generate.STATS["new_tokens"]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, generate.STATS["new_tokens"] - tokens0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default=None, help="default: the offline SmolLM2-135M-Instruct GGUF")
    p.add_argument("--prompts", type=int, default=16, help="held-out real-world prompts (x4 candidates)")
    p.add_argument("--batch-size", type=int, default=64, help="generation rows per batch (the loop's --batch-size)")
    a = p.parse_args()
    if a.prompts < 1 or a.batch_size < 1:
        p.error("--prompts and --batch-size must be at least 1")
    model, tok = load_model(a.ckpt or generate.smollm2_gguf_path())
    model.eval()
    rows = realworld.world_data(SimpleNamespace(sharegpt="", n_ift=1, n_eft=0, n_eval=a.prompts, n_rm=0, seed=0))["eval"]
    prompts = [r["prompt"] for r in rows]
    rubric = J.load_rubric(realworld.RUBRIC)
    results = []
    for mode in ("eager", "compile", "compile"):
        cfg = SimpleNamespace(max_response_tokens=160, max_judge_tokens=64, judge_samples=3, temperature=0.7, top_p=0.9,
                              device="cpu", compile=mode == "compile", batch_size=a.batch_size)
        first = mode == "compile" and not any(r["mode"] == "compile" for r in results)
        label = mode + (" (first call: compiles)" if first else "")
        with torch.inference_mode():
            cands, s, n = timed(lambda: E.respond(model, tok, cfg, prompts, 4, 0.7, 0, "candidates"))
            results.append({"mode": mode, "label": label, "stage": "candidates", "s": s, "tokens": n})
            items = [(q, c) for q, cs in zip(prompts, cands) for c in cs]
            _, s, n = timed(lambda: E.judge_items(model, tok, cfg, items, rubric, 1, "judging"))
            results.append({"mode": mode, "label": label, "stage": "judging", "s": s, "tokens": n})
    print(f"\n{len(prompts)} held-out real-world prompts, batch size {a.batch_size}, {torch.get_num_threads()} threads\n")
    print("| stage | decode | wall s | new tokens | new tok/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['stage']} | {r['label']} | {r['s']:.1f} | {r['tokens']} | {r['tokens'] / r['s']:.1f} |")


if __name__ == "__main__":
    main()
