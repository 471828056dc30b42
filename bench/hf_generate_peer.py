"""HF transformers peer for bench_generate.py: LlamaForCausalLM.generate on the same SmolLM2 GGUF weights
(transformers dequantizes them to fp32), the same prompt ids, left-padded, T=0.7, top-p 0.9, exactly
--new tokens per row. Prints one JSON line: prefill and end-to-end timings.

Run it with the throwaway interpreter that has transformers (never a project dependency):
    /tmp/hf/bin/python bench/hf_generate_peer.py --gguf PATH --prompts prompts.json --batch 16
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.gguf), gguf_file=os.path.basename(a.gguf),
                                                 torch_dtype=torch.float32).eval()
    load_s = time.time() - t0
    prompts = json.load(open(a.prompts))[:a.batch]
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(x)) + x for x in prompts])
    attn = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in prompts])

    def run(n):
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=True, temperature=0.7, top_p=0.9, top_k=0, pad_token_id=0)
        assert out.shape[1] == P + n, out.shape
        return time.perf_counter() - t

    run(2)  # warm-up
    prefill = min(run(1) for _ in range(a.repeats))
    total = min(run(a.new) for _ in range(a.repeats))
    print(json.dumps({"impl": "hf", "batch": len(prompts), "prompt_len": P, "new": a.new, "load_s": load_s,
                      "prefill_s": prefill, "total_s": total, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
