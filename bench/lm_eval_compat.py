"""Does lm-evaluation-harness load what convert.py writes, unchanged? (a check script, not a test)

Run from the repo root with a throwaway interpreter that has lm_eval (never a project dependency):
    HF_PYTHON bench/lm_eval_compat.py --folder out/smollm2-hf
where the folder was written by `python convert.py SRC out/smollm2-hf`.

lm_eval's tasks download their datasets from a hub, which is unreachable here, so this asks the harness's
own Hugging Face model class (lm_eval.models.huggingface.HFLM, what `lm_eval --model hf
--model_args pretrained=DIR` builds) for the requests its tasks are made of: log-likelihoods of
continuations, rolling log-likelihoods of whole texts, and greedy generation. The log-likelihoods are
compared with our own model on the same folder (checkpoint.load_model, dpo.sequence_logps), token for token.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dpo  # noqa: E402
from checkpoint import load_model  # noqa: E402
import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

PAIRS = [("The capital of France is", " Paris."), ("Water boils at a temperature of", " 100 degrees Celsius."),
         ("Question: What is 2 + 2?\nAnswer:", " 4"), ("The opposite of hot is", " cold.")]


def ours_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """The sum of log p(continuation | context) under our model, split into tokens as lm_eval splits it
    (context and the whole string encoded, the continuation being the tokens past the context's)."""
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    assert whole[:len(ctx)] == ctx, "the context's tokens must be a prefix of the whole string's"
    ids = torch.tensor([whole])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(ctx):] = True  # score the continuation's tokens only
    with torch.no_grad():
        return float(dpo.sequence_logps(model(ids), ids, mask)[0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True, help="a Hugging Face folder written by convert.py")
    a = p.parse_args()
    lm = HFLM(pretrained=a.folder, device="cpu", dtype="float32", batch_size=1)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=pc, idx=i) for i, pc in enumerate(PAIRS)]
    theirs = lm.loglikelihood(reqs)
    model, tok = load_model(a.folder)
    model.eval()
    print(f"lm_eval {lm_eval.__version__}: HFLM loaded {a.folder} ({type(lm.model).__name__})\n")
    print("| context | continuation | lm_eval log-lik | ours | |diff| | lm_eval greedy |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for (ctx, cont), (ll, greedy) in zip(PAIRS, theirs):
        mine = ours_loglikelihood(model, tok, ctx, cont)
        worst = max(worst, abs(ll - mine))
        print(f"| {ctx!r} | {cont!r} | {ll:.4f} | {mine:.4f} | {abs(ll - mine):.1e} | {greedy} |")
    rolling = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={},
                                                 arguments=("The quick brown fox jumps over the lazy dog.",), idx=0)])
    gen = lm.generate_until([Instance(request_type="generate_until", doc={}, idx=0, arguments=(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        {"until": ["<|im_end|>"], "max_gen_toks": 16, "do_sample": False}))])
    print(f"\nrolling log-lik of a pangram: {rolling[0]:.4f}; greedy chat answer: {gen[0]!r}")
    print(f"max |log-lik difference| against ours: {worst:.1e}")


if __name__ == "__main__":
    main()
