"""Generation variants side by side on the real path's own generation stages: a script, not a test.

bench_generate.py times a fixed number of new tokens per row. The loop's stages are different: rows stop
at their own end-of-turn token, so the eager path drops finished rows from the batch (the compiled step
keeps its static shapes instead), and each new batch size is a new shape to compile. This script
times the two stages that dominate an AIFT round, on held-out prompts of `--world real` and the offline
SmolLM2-135M-Instruct, with the loop's own functions and settings (evaluation.respond, judge.judge):
    candidates  N=4 responses per prompt, T=0.7, top-p 0.9, at most 160 new tokens
    judging     3 sampled judgments of each candidate with the instruction-following rubric, 64 tokens
A variant is DECODE:KERNELS: eager or compile (generate's `compile`), and generate's `kernels` (default,
onednn, bf16; cpu_decode.generation_linears). Every round runs every variant on each stage in turn, so a
busy machine slows all of them alike, and the table gives each variant's tokens/s as a ratio to the first
variant's on the same stage. Judging always scores the first variant's candidates, so every variant judges
the same texts. A compiled variant's first round compiles: give it --rounds 2 and read the later round.

    python bench/bench_loop_decode.py [--variants eager:default,eager:bf16] [--prompts 16] [--judge-items 21]
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cpu_decode  # noqa: E402
import evaluation as E  # noqa: E402
import generate  # noqa: E402
import judge as J  # noqa: E402
import realworld  # noqa: E402
from checkpoint import load_model  # noqa: E402

_plain_generate_many = generate.generate_many


def timed(fn, kernels: str):
    """fn() with generate_many on the given kernels (the loop's stage functions do not take them yet)."""
    generate.generate_many = lambda *a, **kw: _plain_generate_many(*a, kernels=kernels, **kw)
    tokens0 = generate.STATS["new_tokens"]
    t = time.perf_counter()
    try:
        out = fn()
    finally:
        generate.generate_many = _plain_generate_many
    return out, time.perf_counter() - t, generate.STATS["new_tokens"] - tokens0


def parse_variants(text: str) -> list[tuple[str, str]]:
    out = []
    for v in text.split(","):
        mode, _, kernels = v.partition(":")
        if mode not in ("eager", "compile") or kernels not in cpu_decode.KERNELS:
            raise SystemExit(f"--variants {v!r}: expected eager|compile:{'|'.join(cpu_decode.KERNELS)}")
        out.append((mode, kernels))
    return out


def run_stages(model, tok, a, variants, prompts, rubric) -> list[dict]:
    results, items = [], None
    for rnd in range(a.rounds):
        for mode, kernels in variants:
            cfg = SimpleNamespace(max_response_tokens=a.max_response_tokens, max_judge_tokens=64, judge_samples=3,
                                  temperature=0.7, top_p=0.9, device="cpu", compile=mode == "compile",
                                  batch_size=a.batch_size, judge_score="sampled", seed=0)
            with torch.inference_mode():
                cands, s, n = timed(lambda: E.respond(model, tok, cfg, prompts, 4, 0.7, 0, "candidates"), kernels)
                results.append({"round": rnd, "variant": f"{mode}:{kernels}", "stage": "candidates", "s": s, "tokens": n})
                if items is None:
                    items = [(q, c) for q, cs in zip(prompts, cands) for c in cs][:a.judge_items]
                _, s, n = timed(lambda: E.judge_items(model, tok, cfg, items, rubric, 1, "judging"), kernels)
                results.append({"round": rnd, "variant": f"{mode}:{kernels}", "stage": "judging", "s": s, "tokens": n})
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default=None, help="default: the offline SmolLM2-135M-Instruct GGUF")
    p.add_argument("--prompts", type=int, default=16, help="held-out real-world prompts (x4 candidates)")
    p.add_argument("--judge-items", type=int, default=21, help="candidates judged (x3 samples; 21 = one batch of 63)")
    p.add_argument("--batch-size", type=int, default=64, help="generation rows per batch (the loop's --batch-size)")
    p.add_argument("--max-response-tokens", type=int, default=160)
    p.add_argument("--variants", default="eager:default,eager:bf16")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if min(a.prompts, a.judge_items, a.batch_size, a.rounds, a.max_response_tokens) < 1:
        p.error("--prompts, --judge-items, --batch-size, --rounds and --max-response-tokens must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = parse_variants(a.variants)
    model, tok = load_model(a.ckpt or generate.smollm2_gguf_path())
    model.eval()
    rows = realworld.world_data(SimpleNamespace(sharegpt="", n_ift=1, n_eft=0, n_eval=a.prompts, n_rm=0, seed=0,
                                                ift_seed="imperfect"))["eval"]
    prompts = [r["prompt"] for r in rows]
    results = run_stages(model, tok, a, variants, prompts, J.load_rubric(realworld.RUBRIC))
    print(f"\n{len(prompts)} held-out real-world prompts, {a.judge_items} judged candidates, batch size "
          f"{a.batch_size}, {torch.get_num_threads()} threads\n")
    print("| round | stage | variant | wall s | new tokens | new tok/s | vs first variant |")
    print("|---|---|---|---|---|---|---|")
    base = {(r["round"], r["stage"]): r["tokens"] / r["s"] for r in results if r["variant"] == "%s:%s" % variants[0]}
    for r in results:
        rate = r["tokens"] / r["s"]
        print(f"| {r['round']} | {r['stage']} | {r['variant']} | {r['s']:.1f} | {r['tokens']} | {rate:.1f} | "
              f"{rate / base[r['round'], r['stage']]:.2f}x |")


if __name__ == "__main__":
    main()
