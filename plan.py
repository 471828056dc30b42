"""The memory plan: what one GPU holds to train a model with FSDP2 and to generate with it under tensor
parallelism, counted from the model's shapes, before anything is allocated.

    python loop.py --plan --preset llama3-70b --nproc 8 --batch 1 --seq-len 4096
    python plan.py --init path/to/hf-folder --nproc 16     # the same, for any checkpoint (no weight is read)

Training, as sharding.py lays it out (FSDP2 over `nproc` GPUs, bf16 compute, fp32 master weights):
    parameters   fp32 shards (4 bytes/param / nproc), plus bf16 copies of what is gathered at a time:
                 the root (embedding, output, final norm) and two blocks (the running one, the prefetched one)
    gradients    fp32 shards, plus one block's bf16 gradients and their fp32 copy for the reduce-scatter
    AdamW        two fp32 moments per parameter, sharded
    activations  what autograd saves in one micro-batch (`batch` rows of `seq_len` tokens), counted per
                 token from model.py's code (block_activation_bytes; tests/test_scale.py checks the count
                 against the tensors autograd really saves). With activation checkpointing a block keeps
                 its input only and one block's activations exist again during its backward.
Generation, as sharding.tensor_parallel lays it out (`tp` GPUs of one node): bf16 weights, each rank a
1/tp share of every block and the whole embedding and output; the KV cache of its own heads.
Reference log-probs: none. They are computed once per round and stored with the pairs (dpo.py), so the
reference model is never in memory beside the policy.

Imports: the stdlib; from the project model.py (ModelArgs, presets) and, for --init, checkpoint.py
(the checkpoint's shapes, no weights).
"""
import argparse

from model import PRESETS, ModelArgs, preset

GB = 1e9
GPUS = {"80 GB (A100/H100)": 80e9, "141 GB (H200)": 141e9}


def block_params(a: ModelArgs) -> int:
    q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    bias = (q + 2 * kv) if a.qkv_bias else 0
    return a.dim * (2 * q + 2 * kv) + bias + 3 * a.dim * a.hidden_dim + 2 * a.dim


def root_params(a: ModelArgs) -> int:
    """Embedding, final norm and output (counted once when tied)."""
    return a.vocab_size * a.dim * (1 if a.tie_embeddings else 2) + a.dim


def n_params(a: ModelArgs) -> int:
    return a.n_layers * block_params(a) + root_params(a)


def block_activation_bytes(a: ModelArgs, act: int = 2) -> int:
    """Bytes autograd keeps per token for one TransformerBlock in training, act = bytes of the compute
    dtype (2: bf16), dropout 0. Counted from model.py:
        each rms_norm  its fp32 input (4 * dim), 4 for rsqrt, the normalised x before and after the gain
                       (act * dim each: the gain's gradient needs the first, the next matmul reads the second)
        attention      q, k, v after RoPE, the output (which wo reads as it is) and an fp32 logsumexp per head
        SwiGLU         w1's output (silu's input), silu's output and w3's (the product's inputs), the product
    RoPE keeps its cos/sin, one (T, head_dim/2) pair shared by all blocks."""
    q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    norms = 2 * ((4 + 2 * act) * a.dim + 4)
    attention = act * (2 * q + 2 * kv) + 4 * a.n_heads
    mlp = 4 * act * a.hidden_dim
    return norms + attention + mlp


def output_activation_bytes(a: ModelArgs, act: int = 2) -> int:
    """Per scored token: the final norm, and the logits twice: their fp32 copy, which logsumexp keeps
    (dpo.token_logps), and the act ones while it is made (the backward's gradient needs as much again)."""
    return (4 + 2 * act) * a.dim + 4 + (act + 4) * a.vocab_size


def plan(a: ModelArgs, nproc: int, batch: int, seq_len: int, tp: int = 8, gen_batch: int = 64,
         gen_len: int | None = None) -> dict:
    """Bytes per GPU of each part of training and of generation; see the module docstring."""
    P, blk, root = n_params(a), block_params(a), root_params(a)
    tokens, gen_len = batch * seq_len, gen_len or seq_len
    act_full = tokens * (a.n_layers * block_activation_bytes(a) + output_activation_bytes(a))
    act_ckpt = tokens * (a.n_layers * 2 * a.dim + block_activation_bytes(a) + output_activation_bytes(a))
    train = {"parameters": 4 * P / nproc + 2 * (root + 2 * blk),
             "gradients": 4 * P / nproc + (2 + 4) * blk,
             "AdamW state": 8 * P / nproc}
    kv_heads = max(a.n_kv_heads // tp, 1)
    gen = {"weights (bf16, TP)": 2 * (a.n_layers * blk / tp + root),
           "KV cache": 2 * a.n_layers * kv_heads * a.head_dim * gen_batch * gen_len * 2}
    return {"params": P, "train": train, "activations": act_full, "activations, checkpointed": act_ckpt,
            "generation": gen, "reference log-probs": 0}


def render(name: str, a: ModelArgs, nproc: int, batch: int, seq_len: int, tp: int, gen_batch: int,
           gen_len: int | None) -> str:
    p = plan(a, nproc, batch, seq_len, tp, gen_batch, gen_len)
    states = sum(p["train"].values())
    lines = [f"{name}: {p['params'] / 1e9:.2f}B parameters; training on {nproc} GPUs (FSDP2, bf16 compute, fp32 "
             f"master), micro-batch {batch} x {seq_len} tokens per GPU; generation on {tp} GPUs (TP), "
             f"{gen_batch} rows x {gen_len or seq_len} tokens", "", "| per GPU | GB |", "|---|---|"]
    lines += [f"| {k} | {v / GB:.1f} |" for k, v in p["train"].items()]
    lines += [f"| activations | {p['activations'] / GB:.1f} |",
              f"| activations, checkpointed | {p['activations, checkpointed'] / GB:.1f} |",
              f"| **training total** | {(states + p['activations']) / GB:.1f} "
              f"({(states + p['activations, checkpointed']) / GB:.1f} checkpointed) |"]
    lines += [f"| generation: {k} | {v / GB:.1f} |" for k, v in p["generation"].items()]
    lines += [f"| **generation total** | {sum(p['generation'].values()) / GB:.1f} |",
              "| reference log-probs | 0 (stored with the pairs) |", ""]
    for gpu, cap in GPUS.items():
        fits = lambda x: "fits" if x <= cap else "does not fit"  # noqa: E731
        lines.append(f"{gpu}: training {fits(states + p['activations'])}, with activation checkpointing "
                     f"{fits(states + p['activations, checkpointed'])}; generation {fits(sum(p['generation'].values()))}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Per-GPU memory to train (FSDP2) and generate (TP) a model.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default="llama3-70b", choices=sorted(PRESETS))
    src.add_argument("--init", default=None, help="a checkpoint (Meta or Hugging Face folder): its shapes")
    ap.add_argument("--nproc", type=int, default=8, help="GPUs that train (FSDP2)")
    ap.add_argument("--batch", type=int, default=1, help="rows per GPU per forward (micro-batch)")
    ap.add_argument("--seq-len", type=int, default=4096, help="tokens per row")
    ap.add_argument("--tp", type=int, default=8, help="GPUs that generate together (tensor parallel, one node)")
    ap.add_argument("--gen-batch", type=int, default=64, help="rows decoded at once")
    ap.add_argument("--gen-len", type=int, default=None, help="KV cache length (default: --seq-len)")
    a = ap.parse_args(argv)
    for k in ("nproc", "batch", "seq_len", "tp", "gen_batch"):
        if getattr(a, k) <= 0:
            ap.error(f"--{k.replace('_', '-')} must be positive")
    if a.init:
        from checkpoint import lazy_weights
        weights = lazy_weights(a.init)
        if weights is None:
            ap.error(f"--init {a.init}: a Meta or Hugging Face folder (a GGUF has no plan: it is not trained at scale)")
        name, args = a.init, weights.args
    else:
        name, args = a.preset, preset(a.preset)
    print(render(name, args, a.nproc, a.batch, a.seq_len, a.tp, a.gen_batch, a.gen_len))


if __name__ == "__main__":
    main()
