"""Benchmark DPO training with dpo.py: a script, not a test.

1. Throughput: tokens/s of dpo.train (each pair packed as prompt | chosen | rejected, so the prompt runs
   once; the output layer and its fp32 log-softmax only where a response token is predicted; backward,
   clipping, AdamW) against HF LlamaForCausalLM doing the plain step on the same config and batch (one
   concatenated forward of the chosen and rejected rows: bench/hf_train_peer.py, run in a subprocess with
   the throwaway --hf-python interpreter). Both count the tokens of the 2 x pairs full sequences, the
   prompt once per sequence, so tokens/s is pairs per second x 2 x seq on either side.
2. Peak memory of DPO with precomputed reference log-probs against the reference model held in memory,
   each in a fresh subprocess: peak RSS (VmHWM) on CPU, torch.cuda.max_memory_allocated on GPU.
3. On CUDA: MFU for the llama-124m preset with bf16 autocast (nanoGPT's estimate: 6N + 12 L d T flops
   per token, against --peak-tflops, 989 for an H100/H200 SXM in dense bf16).

    python bench/bench_train.py                          # CPU: toy and smollm2-135m, 2 pairs x 128 tokens
    python bench/bench_train.py --device cuda --presets llama-124m --pairs 8 --seq 1024 --no-hf
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dpo  # noqa: E402
import sharding  # noqa: E402
from common import write_json  # noqa: E402


def synthetic_pairs(n: int, seq: int, vocab: int, seed: int = 0, refs: bool = True) -> list[dict]:
    """Tokenized pairs: a prompt of seq/2 tokens, chosen and rejected responses of seq/2 each."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(0, vocab, (k,), generator=g).tolist()  # noqa: E731
    half = seq // 2
    rows = [{"prompt_ids": ids(half), "chosen_ids": ids(seq - half), "rejected_ids": ids(seq - half)} for _ in range(n)]
    return [{**r, "ref_chosen": 0.0, "ref_rejected": 0.0} for r in rows] if refs else rows


def flops_per_token(model, seq: int) -> float:
    """Training flops per token (nanoGPT): 6 x matmul params (the lm head counted once, the embedding
    lookup not at all) + 12 L d T for attention scores and values, forward and backward."""
    a = model.args
    n = model.num_params(exclude_embeddings=True) + (a.dim * a.vocab_size if a.tie_embeddings else 0)
    return 6 * n + 12 * a.n_layers * a.dim * seq


def bench_ours(preset: str, pairs: int, seq: int, steps: int, warmup: int, device: str, compile: bool) -> dict:
    model, _ = sharding.load_for_training(preset, device)
    if compile:
        for layer in model.layers:
            layer.compile()
    cfg = dpo.TrainConfig(mode="dpo", steps=warmup + steps, batch_size=pairs, micro_batch_size=pairs, lr=1e-6,
                          dropout=0.0, log_every=10**9, max_len=seq)
    history = dpo.train(model, synthetic_pairs(pairs, seq, model.args.vocab_size), cfg)
    tok_s = statistics.median(h["tokens_per_s"] for h in history[warmup:])
    return {"tokens_per_s": tok_s, "step_s": 2 * pairs * seq / tok_s, "n_params": model.num_params(),
            "flops_per_token": flops_per_token(model, seq)}


def bench_hf(preset: str, pairs: int, seq: int, steps: int, warmup: int, python: str) -> dict:
    from dataclasses import asdict
    from model import preset as make_args
    args = make_args(preset)
    spec = json.dumps({**asdict(args), "hidden_dim": args.hidden_dim})
    r = subprocess.run([python, os.path.join(ROOT, "bench", "hf_train_peer.py"), "--args", spec, "--pairs", str(pairs),
                        "--seq", str(seq), "--steps", str(steps), "--warmup", str(warmup),
                        "--threads", str(torch.get_num_threads())], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"HF peer failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def memory_child(variant: str, preset: str, pairs: int, seq: int, steps: int, device: str):
    """Runs in a fresh process: one DPO run, then prints its peak memory as JSON."""
    def rss_mb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024
    base = rss_mb("VmRSS:")
    policy, _ = sharding.load_for_training(preset, device)
    cfg = dpo.TrainConfig(mode="dpo", steps=steps, batch_size=pairs, micro_batch_size=pairs, lr=1e-6, dropout=0.0,
                          log_every=10**9, max_len=seq)
    data = synthetic_pairs(pairs, seq, policy.args.vocab_size, refs=False)
    if variant == "precomputed":  # the frozen M_t scores the pairs once, then only the policy trains
        data = dpo.compute_reference_logps(policy, data)
        dpo.train(policy, data, cfg)
    else:
        ref, _ = sharding.load_for_training(preset, device)
        dpo.train(policy, data, cfg, ref_model=ref.eval())
    out = {"base_rss_mb": base, "peak_rss_mb": rss_mb("VmHWM:")}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def bench_memory(preset, pairs, seq, device) -> dict:
    res = {}
    for variant in ("precomputed", "in_memory"):
        r = subprocess.run([sys.executable, __file__, "--memory-child", variant, "--presets", preset, "--pairs", str(pairs),
                            "--seq", str(seq), "--device", device], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"memory child {variant} failed:\n{r.stderr[-2000:]}")
        res[variant] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="toy,smollm2-135m")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternate ours and HF this many times; medians reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile each TransformerBlock (ours only)")
    p.add_argument("--hf-python", default="", help="a throwaway interpreter with transformers (README, \"Measured figures\"); without it no HF peer runs")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU, for MFU")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.hf_python and not os.path.exists(a.hf_python):
        p.error(f"--hf-python {a.hf_python}: no such interpreter")
    if not a.hf_python and not a.no_hf:
        print("no HF peer: --hf-python not given, so only our rows are timed")
    if a.memory_child:
        return memory_child(a.memory_child, a.presets, a.pairs, a.seq, 2, a.device)

    print(f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads; "
          f"DPO step on {a.pairs} pairs x {a.seq} tokens ({2 * a.pairs} rows), median of {a.steps} steps, "
          f"{a.rounds} alternating rounds of ours and HF (median round reported)")
    hf = bool(a.hf_python) and not a.no_hf
    results = {}
    for name in a.presets.split(","):
        t0 = time.time()
        ours, peer = [], []
        for _ in range(a.rounds):  # alternating, so a slower spell of the machine hits both alike
            ours.append(bench_ours(name, a.pairs, a.seq, a.steps, a.warmup, a.device, a.compile))
            if hf:
                peer.append(bench_hf(name, a.pairs, a.seq, a.steps, a.warmup, a.hf_python))
        pick = lambda runs: sorted(runs, key=lambda x: x["tokens_per_s"])[len(runs) // 2]  # noqa: E731
        r = {"ours": pick(ours), "ours_rounds": [x["tokens_per_s"] for x in ours]}
        line = f"{name:>14}: ours {r['ours']['tokens_per_s']:9,.0f} tok/s ({r['ours']['n_params'] / 1e6:.1f}M params)"
        if a.device.startswith("cuda"):
            r["mfu"] = r["ours"]["tokens_per_s"] * r["ours"]["flops_per_token"] / (a.peak_tflops * 1e12)
            line += f" | MFU {100 * r['mfu']:.1f}% of {a.peak_tflops:g} TFLOPS"
        if hf:
            r["hf"], r["hf_rounds"] = pick(peer), [x["tokens_per_s"] for x in peer]
            r["ratio"] = r["ours"]["tokens_per_s"] / r["hf"]["tokens_per_s"]
            line += f" | HF {r['hf']['tokens_per_s']:9,.0f} tok/s | ours/HF {r['ratio']:.2f}x"
        if not a.no_memory:
            m = r["memory"] = bench_memory(name, a.pairs, a.seq, a.device)
            key = "cuda_peak_mb" if a.device.startswith("cuda") else "peak_rss_mb"
            pre, mem = m["precomputed"], m["in_memory"]
            base = 0 if key == "cuda_peak_mb" else pre["base_rss_mb"]
            r["memory_ratio"] = (pre[key] - base) / (mem[key] - base)
            line += (f" | peak {key[:-3]} precomputed {pre[key]:,.0f} MB vs ref in memory {mem[key]:,.0f} MB"
                     f" (above {base:,.0f} MB of imports: {r['memory_ratio']:.2f}x)")
        print(line + f"  [{time.time() - t0:.0f}s]", flush=True)
        results[name] = r
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    out = os.path.join(ROOT, "runs", f"bench_train_{a.device.split(':')[0]}{'_compile' if a.compile else ''}.json")
    write_json(out, {"args": vars(a), "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
