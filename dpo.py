"""Fine-tuning for Self-Rewarding LMs (Yuan et al. 2024, arXiv 2401.10020): pretraining of the toy M0,
SFT on IFT+EFT (M0 -> M1, Sec. 3.1-3.3), and DPO on self-made preference pairs (AIFT(M_t), Sec. 3.3).

References: eric-mitchell/direct-preference-optimization trainers.py (preference_loss, _get_batch_logps,
one concatenated forward for chosen + rejected, log-softmax in fp32); Rafailov et al. 2023 (DPO, Eq. 7);
Azar et al. 2023 (IPO); Mitchell 2023 (conservative DPO = label smoothing); Pang et al. 2024 (Iterative
RPO, arXiv 2404.19733: DPO + NLL on the chosen response); torchtitan (FSDP2: fully_shard per block, then
the root); karpathy/nanoGPT train.py (AdamW decay on >=2-D tensors, cosine schedule, accumulation).

Public API (loop.py uses these):
    sequence_logps(logits, labels, loss_mask, average=False) -> (B,)
    dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, label_smoothing, ipo, nll, rpo_alpha)
        -> (loss, metrics)
    sft_loss(logits, labels, loss_mask, n_tokens=None) -> scalar
    lr_at(step, steps, lr, min_lr, warmup=0, schedule="cosine") -> float
    load_jsonl(path, mode) / save_jsonl(path, rows); tokenize(examples, tokenizer, mode, max_len)
    compute_reference_logps(model, pairs, tokenizer=None, max_len=None, micro_batch_size=8) -> pairs
    TrainConfig(mode="pretrain"|"sft"|"dpo", ...); train(model, examples, cfg, tokenizer=None,
        eval_examples=None, ref_model=None) -> history (one dict per step)
    load_for_training(ckpt, device) -> (model, tokenizer): plain, or FSDP2-sharded under torchrun

Data: SFT {"prompt","response"}; DPO {"prompt","chosen","rejected"} (TRL's names) and, once computed,
"ref_chosen","ref_rejected" (summed log-probs of the frozen M_t, stored WITH the pairs so the reference
model is never in memory while the policy trains); pretrain {"text"} (or a .txt file, one doc per line).
Losses only count response tokens (chat format: prompt ids + response ids ending in end-of-turn).

Batches: `batch_size` is the global batch (examples, pairs or rows) summed over ranks and micro-batches.
SFT/pretrain average over the *tokens* of the whole global batch (every response token weighs the same,
however the batch is cut into micro-batches or ranks); DPO averages over pairs.

Checkpoints: OUT/train_state.pt every save_every steps = full (gathered) model + optimiser state dicts
(FQN keys, so a run may resume on another number of ranks), step and history; written by rank 0,
atomically. Data order and dropout masks are pure functions of (seed, step, rank), so the step is the
whole data position and RNG state. The final weights go to OUT in Meta's layout (model.save_checkpoint).
Gathering full state dicts on rank 0 suits models that fit one host's RAM; for 70B, switch to
torch.distributed.checkpoint.save of the sharded state dicts.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from data import iter_jsonl
from model import (PRESETS, Transformer, atomic_write, atomic_write_text, build_from_state_dict, load_model,
                   preset, save_checkpoint)

# Per-mode defaults. SFT and DPO are the paper's (Sec. 4.1: SFT 5.5e-6 cosine to 1.1e-6, DPO 1e-6 to
# 1e-7, batch 16, dropout 0.1; it names no shape for DPO's decay, we use linear). Pretraining is ours.
MODE_DEFAULTS = {
    "pretrain": dict(lr=6e-4, min_lr=6e-5, schedule="cosine", dropout=0.0, weight_decay=0.1),
    "sft": dict(lr=5.5e-6, min_lr=1.1e-6, schedule="cosine", dropout=0.1, weight_decay=0.0),
    "dpo": dict(lr=1e-6, min_lr=1e-7, schedule="linear", dropout=0.1, weight_decay=0.0),
}
ADAM_BETAS = (0.9, 0.95)


@dataclass
class TrainConfig:
    mode: str = "sft"  # "pretrain" | "sft" | "dpo"
    steps: int = 100  # optimiser steps
    batch_size: int = 16  # global: examples (sft), pairs (dpo) or rows of max_len tokens (pretrain)
    micro_batch_size: int = 4  # per rank and forward; batch_size % (micro_batch_size * ranks) == 0
    lr: float | None = None  # None: MODE_DEFAULTS[mode] (likewise min_lr, schedule, dropout, weight_decay)
    min_lr: float | None = None
    schedule: str | None = None  # "cosine" | "linear" | "constant"
    warmup: int = 0  # steps of linear warmup from 0
    weight_decay: float | None = None  # only on tensors with >= 2 dims (matrices, embeddings)
    dropout: float | None = None  # p of every nn.Dropout while training (restored afterwards)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    max_len: int | None = None  # tokens per sequence (pretrain: row length); None = the model's max_seq_len,
    # the same default as compute_reference_logps, so reference and policy see identically truncated pairs
    beta: float = 0.1  # DPO temperature (the paper's 0.1)
    label_smoothing: float = 0.0  # conservative DPO: assumed probability that a label is flipped
    ipo: bool = False  # IPO loss instead of DPO's (on per-token average log-probs, as TRL)
    rpo_alpha: float = 0.0  # Iterative RPO: weight of the chosen response's per-token NLL (paper: 1.0)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only after the last step (if eval examples are given)
    save_every: int = 0  # write OUT/train_state.pt every N steps (0 = never); needs out
    out: str | None = None  # final Meta-layout checkpoint (+ history.json) goes here
    resume: bool = False  # continue from OUT/train_state.pt if it exists
    stop_after: int = 0  # stop after this step without saving, as if killed (tests, time slices)
    doc_mask: bool = True  # pretrain: keep attention inside each packed document (False: GPT-2 style)

    def __post_init__(self):
        if self.mode not in MODE_DEFAULTS:
            raise ValueError(f"TrainConfig.mode={self.mode!r}: choose from {sorted(MODE_DEFAULTS)}")
        for k, v in MODE_DEFAULTS[self.mode].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: choose cosine, linear or constant")
        for k in ("steps", "batch_size", "micro_batch_size", "max_len"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise ValueError(f"TrainConfig.{k}={getattr(self, k)} must be positive")


# ----------------------------------------------------------------------------- math (pure)

def token_logps(logits, labels) -> torch.Tensor:
    """log_softmax(logits)[label] in fp32 (bf16 over 100k+ words loses digits): logits (..., V), labels
    (...). As x[y] - logsumexp(x): one reduction, without a second (..., V) tensor."""
    logits = logits.float()
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def sequence_logps(logits, labels, loss_mask, average: bool = False) -> torch.Tensor:
    """log p(response | prompt) per row: logits (B, T, V) at position t predict labels[:, t+1];
    loss_mask (B, T) marks the tokens to score (response tokens, never prompt or padding).
    Returns (B,) sums, or per-token means with average=True."""
    labels, mask = labels[:, 1:], loss_mask[:, 1:].float()  # (B, T-1)
    logps = token_logps(logits[:, :-1], labels)  # (B, T-1)
    total = (logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             label_smoothing: float = 0.0, ipo: bool = False, nll=None, rpo_alpha: float = 0.0):
    """DPO (Rafailov et al. 2023, Eq. 7) on (B,) sequence log-probs of the policy and the reference.
    label_smoothing: conservative DPO; ipo: (h - 1/(2 beta))^2 (Azar et al. 2023, Eq. 17);
    rpo_alpha * nll: Iterative RPO (Pang et al. 2024, Eq. 3), nll = chosen NLL per token, (B,).
    Returns (mean loss, metrics); rewards are beta * (log pi - log ref), the implicit reward of DPO."""
    h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)  # (B,) log-ratio difference
    if ipo:
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if rpo_alpha:
        if nll is None:
            raise ValueError("dpo_loss: rpo_alpha > 0 needs nll, the chosen response's per-token NLL")
        losses = losses + rpo_alpha * nll
    chosen_r, rejected_r = beta * (pi_chosen - ref_chosen).detach(), beta * (pi_rejected - ref_rejected).detach()
    metrics = {"chosen_reward": chosen_r.mean(), "rejected_reward": rejected_r.mean(),
               "reward_accuracy": (chosen_r > rejected_r).float().mean(), "margin": (chosen_r - rejected_r).mean()}
    return losses.mean(), metrics


def sft_loss(logits, labels, loss_mask, n_tokens=None) -> torch.Tensor:
    """Mean cross-entropy over the masked (response) tokens. n_tokens: divide by this count instead of
    the batch's own, to average over a whole global batch split into micro-batches or ranks."""
    total = -sequence_logps(logits, labels, loss_mask).sum()
    return total / (loss_mask[:, 1:].sum().clamp(min=1) if n_tokens is None else n_tokens)


def lr_at(step: int, steps: int, lr: float, min_lr: float, warmup: int = 0, schedule: str = "cosine") -> float:
    """Learning rate of 0-based `step`: linear warmup to lr, then decay that reaches min_lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    p = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))  # 0 -> 1 over the decay steps
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
    return lr - (lr - min_lr) * p


# ----------------------------------------------------------------------------- data

FIELDS = {"pretrain": ("text",), "sft": ("prompt", "response"), "dpo": ("prompt", "chosen", "rejected")}
REF_FIELDS = ("ref_chosen", "ref_rejected")


def check_example(ex, mode: str, where: str):
    """Raise a ValueError naming `where` (file:line) and the field if ex is not a valid `mode` example."""
    if not isinstance(ex, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(FIELDS[mode])}, got {type(ex).__name__}")
    if "prompt_ids" in ex or "ids" in ex:
        return  # already tokenized by tokenize() or pack_documents()
    for name in FIELDS[mode]:
        if name not in ex:
            raise ValueError(f"{where}: missing field {name!r} (a {mode} example needs {list(FIELDS[mode])})")
        if not isinstance(ex[name], str):
            raise ValueError(f"{where}: field {name!r} must be a string, got {type(ex[name]).__name__}")
    if mode == "dpo" and any(k in ex for k in REF_FIELDS):
        for name in REF_FIELDS:
            v = ex.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: field {name!r} must be a finite number (ref_chosen and "
                                 f"ref_rejected come together), got {v!r}")


def load_jsonl(path: str, mode: str) -> list[dict]:
    """One example per line, validated. For pretrain, a .txt file gives one document per non-empty line."""
    if mode == "pretrain" and not path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    rows = []
    for lineno, ex in iter_jsonl(path):
        check_example(ex, mode, f"{path}:{lineno}")
        rows.append(ex)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def save_jsonl(path: str, rows: list[dict]):
    """Write examples (text fields and ref log-probs; token ids are dropped) atomically."""
    text = "".join(json.dumps({k: v for k, v in r.items() if not k.endswith("_ids") and k != "n_targets"},
                              ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)


def truncate(prompt: list[int], responses: list[list[int]], max_len: int):
    """Fit prompt + the longest response into max_len. Cut the prompt first, keeping its end (the
    question sits just before the answer) but at least half of max_len; then cut responses' ends.
    Returns (prompt, responses, truncated?)."""
    longest = max(map(len, responses))
    if len(prompt) + longest <= max_len:
        return prompt, responses, False
    keep = min(len(prompt), max(max_len - longest, max_len // 2))
    return prompt[len(prompt) - keep:], [r[:max_len - keep] for r in responses], True


def tokenize(examples: list[dict], tokenizer, mode: str, max_len: int) -> list[dict]:
    """Copies of the sft/dpo examples with token ids added through the chat format: prompt_ids +
    response_ids (sft) or chosen_ids / rejected_ids (dpo). Already tokenized examples pass through."""
    out, n_cut = [], 0
    names = ("response",) if mode == "sft" else ("chosen", "rejected")
    for i, ex in enumerate(examples):
        check_example(ex, mode, f"examples[{i}]")
        if "prompt_ids" in ex:
            out.append(ex)
            continue
        if tokenizer is None:
            raise ValueError(f"examples[{i}] is not tokenized and no tokenizer was given")
        prompt = tokenizer.encode_chat_prompt(ex["prompt"])
        prompt, resps, cut = truncate(prompt, [tokenizer.encode_chat_response(ex[n]) for n in names], max_len)
        n_cut += cut
        out.append({**ex, "prompt_ids": prompt, **{f"{n}_ids": r for n, r in zip(names, resps)}})
    if n_cut:
        print(f"tokenize: {n_cut}/{len(examples)} {mode} examples truncated to {max_len} tokens "
              f"(prompt cut first, keeping its end)", flush=True)
    return out


def pack_documents(docs: list[list[int]], seq_len: int) -> list[dict]:
    """Concatenate tokenized documents and cut the stream into rows of seq_len. seq_ids number the
    documents inside a row (-1 = padding of the last row) so attention never crosses documents."""
    ids, doc = [t for d in docs for t in d], [j for j, d in enumerate(docs) for _ in d]
    rows = []
    for s in range(0, len(ids), seq_len):
        chunk, d = ids[s:s + seq_len], doc[s:s + seq_len]
        pad = seq_len - len(chunk)
        rows.append({"ids": chunk + [0] * pad, "seq_ids": [j - d[0] for j in d] + [-1] * pad})
    return rows


class Batch(NamedTuple):
    tokens: torch.Tensor  # (b, T) token ids, right-padded with 0 (never scored, and causal attention
    loss_mask: torch.Tensor  # (b, T) bool: score this token  # hides it from every real token)
    seq_ids: torch.Tensor | None  # (b, T) packed-document ids (pretrain), else None
    n_real: int  # non-padding tokens, for tokens/s


def _padded_len(T: int, pad_to: int, max_T: int | None) -> int:
    return max(T, min(-(-T // pad_to) * pad_to, max_T or T))


def collate(rows: list[dict], mode: str, pad_to: int = 1, max_T: int | None = None) -> Batch:
    """dpo: 2b rows, the b chosen sequences then the b rejected ones, unpacked (the trainer packs pairs
    with collate_pairs instead; this layout is the plain reference the tests compare it with).
    pad_to: round the length up to a multiple (at most max_T), so compiled kernels see few shapes."""
    if mode == "pretrain":
        seq_ids = torch.tensor([r["seq_ids"] for r in rows])  # (b, T)
        mask = seq_ids >= 0
        mask[:, 1:] &= seq_ids[:, 1:] == seq_ids[:, :-1]  # never predict a document from the one before
        mask[:, 0] = False
        return Batch(torch.tensor([r["ids"] for r in rows]), mask, seq_ids, int((seq_ids >= 0).sum()))
    names = ("response_ids",) if mode == "sft" else ("chosen_ids", "rejected_ids")
    seqs = [(r["prompt_ids"], r[n]) for n in names for r in rows]
    T = _padded_len(max(len(p) + len(x) for p, x in seqs), pad_to, max_T)
    tokens, mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (p, x) in enumerate(seqs):
        tokens[i, :len(p) + len(x)] = torch.tensor(p + x, dtype=torch.long)
        mask[i, len(p):len(p) + len(x)] = True
    return Batch(tokens, mask, None, sum(len(p) + len(x) for p, x in seqs))


class PackedPairs(NamedTuple):
    """DPO pairs packed one per row as prompt | chosen | rejected, so the prompt runs once, not twice.
    The rejected tokens see the prompt but not the chosen ones (model.dense_mask's `shared`), and take
    RoPE positions that restart after the prompt: every token sees exactly what it sees in its own
    unpacked sequence, so the log-probs are the same (tests/test_dpo.py)."""
    tokens: torch.Tensor  # (b, T)
    positions: torch.Tensor  # (b, T) RoPE positions
    seq_ids: torch.Tensor  # (b, T) 0 = prompt and chosen, 1 = rejected, -1 = padding
    shared: torch.Tensor  # (b,) prompt lengths: every later token of the row sees these slots
    at: tuple  # (rows, cols) (N,) each: the positions whose next token is a response token
    targets: torch.Tensor  # (N,) that next token
    seq: torch.Tensor  # (N,) its sequence: pair i's chosen = i, its rejected = b + i
    n_real: int  # tokens of the 2b unpacked sequences (what a concatenated forward runs), for tokens/s


def collate_pairs(rows: list[dict], pad_to: int = 1, max_T: int | None = None) -> PackedPairs:
    b = len(rows)
    T = _padded_len(max(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows),
                    pad_to, max_T)
    tokens, positions = torch.zeros(b, T, dtype=torch.long), torch.zeros(b, T, dtype=torch.long)
    seq_ids = torch.full((b, T), -1, dtype=torch.long)
    shared, at_r, at_c, targets, seq, n_real = [], [], [], [], [], 0
    for i, r in enumerate(rows):
        p, c, j = r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]
        P, C, R = len(p), len(c), len(j)
        if P == 0:
            raise ValueError("collate_pairs: a pair with an empty prompt has no position to predict its first token")
        tokens[i, :P + C + R] = torch.tensor(p + c + j, dtype=torch.long)
        positions[i, :P + C + R] = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])
        seq_ids[i, :P + C], seq_ids[i, P + C:P + C + R] = 0, 1
        shared.append(P)
        # chosen token k is predicted at slot P-1+k; rejected token k at P-1 (the prompt's last
        # token, shared with chosen) for k = 0, else at its own previous slot P+C+k-1
        cols = list(range(P - 1, P + C - 1)) + ([P - 1] if R else []) + list(range(P + C, P + C + R - 1))
        at_r += [i] * (C + R)
        at_c += cols
        targets += c + j
        seq += [i] * C + [b + i] * R
        n_real += 2 * P + C + R
    return PackedPairs(tokens, positions, seq_ids, torch.tensor(shared), (torch.tensor(at_r), torch.tensor(at_c)),
                       torch.tensor(targets, dtype=torch.long), torch.tensor(seq), n_real)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Examples of global batch `step` in an endless stream of shuffled epochs: a pure function of the
    step, so the step is the whole data position a resumed run needs."""
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(step * batch_size, (step + 1) * batch_size)]


# ----------------------------------------------------------------------------- distributed (FSDP2)

def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def log(msg: str):
    if rank_world()[0] == 0:
        print(msg, flush=True)


def shard_model(model: Transformer, device: torch.device):
    """FSDP2 as torchtitan does it: each TransformerBlock is a unit (its params are all-gathered just
    for its forward/backward), then the root takes the rest. bf16 compute with fp32 gradient reduction
    on GPU; fp32 on CPU (gloo)."""
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def load_for_training(ckpt: str, device, seed: int = 0):
    """(model, tokenizer) in fp32 master weights. Under torch.distributed: a preset is built on the meta
    device, sharded, then initialised shard by shard (no rank ever holds the whole model); a checkpoint
    is mmap-loaded by every rank (the OS shares the pages) and then sharded."""
    device = torch.device(device)
    if rank_world()[1] == 1:
        model, tok = load_model(ckpt, device=device, seed=seed)
        if model.args.tie_embeddings and model.output.weight is not model.tok_embeddings.weight:
            model.output.weight = model.tok_embeddings.weight  # model.py: to_empty() unties; a preset's copy is fresh noise
        return model, tok
    if ckpt in PRESETS:
        with torch.device("meta"):
            model = Transformer(preset(ckpt))
        shard_model(model, device)
        model.to_empty(device=device)
        model.init_weights(seed=seed)  # DTensor RNG: values differ from a 1-process init of the same seed
        return model, None
    model, tok = load_model(ckpt, device="cpu")
    return shard_model(model, device), tok


def _full_state(model, opt=None):
    """Full (unsharded) state dicts, gathered to CPU; identical API for plain and FSDP models."""
    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=o), (get_optimizer_state_dict(model, opt, options=o) if opt else None)


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)  # SUM (gloo has no AVG)
    return t


# ----------------------------------------------------------------------------- reference log-probs, eval

def _autocast(device: torch.device, model):
    # bf16 on one GPU; under FSDP the MixedPrecisionPolicy casts instead; CPU stays fp32.
    if device.type == "cuda" and not isinstance(model, FSDPModule):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pad_to(model, device) -> tuple[int, int]:
    # FlexAttention (CUDA) is compiled for static shapes: 128-token steps (its block size) bound recompiles.
    return (128 if device.type == "cuda" else 1), model.args.max_seq_len


def _length(row: dict) -> int:
    resp = max(len(row.get(k, ())) for k in ("response_ids", "chosen_ids", "rejected_ids"))
    return len(row.get("ids", ())) + len(row.get("prompt_ids", ())) + resp


MIN_SHARED_PREFIX = 32  # tokens; below this a separate prefix pass costs more than it saves


def shared_prefix_len(tokens: torch.Tensor, loss_mask: torch.Tensor, min_len: int = MIN_SHARED_PREFIX) -> int:
    """Length of the prefix that every row of a batch shares and that holds no scored token, nor the
    scored token right after it (its logit would sit inside the prefix). EFT rows all start with the
    Fig. 2 judge prompt: ~250 tokens that then run once per micro-batch instead of once per row."""
    if tokens.shape[0] < 2:
        return 0
    same = (tokens == tokens[:1]).all(0).int()  # (T,)
    L = int(same.cumprod(0).sum())
    scored = loss_mask.any(0).nonzero()
    if len(scored):
        L = min(L, int(scored[0]) - 1)
    return L if L >= min_len else 0


def forward_logits(model, tokens, seq_ids, loss_mask, at=None):
    """(logits, L): logits of positions L.. only, where L is the shared prefix run once (model.forward's
    prefix_kv), or 0. Equal, values and gradients, to slicing the full forward (tests/test_model.py).
    at: (rows, cols) of the full sequence: then only those positions' logits, (N, V).
    Under FSDP the plain forward is used: one forward per micro-batch keeps its hooks simple."""
    L = 0 if seq_ids is not None or isinstance(model, FSDPModule) else shared_prefix_len(tokens, loss_mask)
    if not L:
        return model(tokens, seq_ids=seq_ids, logits_at=at), 0
    _, kv = model(tokens[:1, :L], return_kv=True, last_only=True)
    return model(tokens[:, L:], start=L, prefix_kv=kv, logits_at=None if at is None else (at[0], at[1] - L)), L


def batch_logps(model, rows: list[dict], mode: str, device, doc_mask: bool = True):
    """Summed log-probs of the scored tokens of each sequence of a micro-batch, and their counts:
    dpo -> (2b,) the b chosen then the b rejected (pairs packed, the prompt run once: collate_pairs);
    sft/pretrain -> (b,) per row. The output layer runs only where a scored token is predicted.
    doc_mask=False: packed pretraining documents attend across their boundaries (plain causal).
    Returns (logps, counts, n_real) with n_real the real tokens, for tokens/s."""
    if mode == "dpo":
        p = collate_pairs(rows, *_pad_to(model, device))
        with _autocast(device, model):
            logits = model(p.tokens.to(device), positions=p.positions.to(device), seq_ids=p.seq_ids.to(device),
                           shared=p.shared.to(device), logits_at=tuple(t.to(device) for t in p.at))  # (N, V)
        seq, n_seq, n_real = p.seq.to(device), 2 * len(rows), p.n_real
        tok = token_logps(logits, p.targets.to(device))  # (N,)
    else:
        batch = collate(rows, mode, *_pad_to(model, device))
        tokens, mask = batch.tokens.to(device), batch.loss_mask.to(device)
        seq_ids = None if batch.seq_ids is None or not doc_mask else batch.seq_ids.to(device)
        seq, cols = mask[:, 1:].nonzero(as_tuple=True)  # position cols predicts token cols + 1 of row seq
        with _autocast(device, model):
            logits, _ = forward_logits(model, tokens, seq_ids, mask, at=(seq, cols))  # (N, V)
        n_seq, n_real = len(rows), batch.n_real
        tok = token_logps(logits, tokens[seq, cols + 1])
    logps = torch.zeros(n_seq, dtype=tok.dtype, device=device).index_add(0, seq, tok)
    return logps, torch.bincount(seq, minlength=n_seq), n_real


@torch.no_grad()
def score_examples(model, rows: list[dict], mode: str, micro_batch_size: int = 8) -> torch.Tensor:
    """Per-example log-probs in eval mode: dpo -> (n, 4) = (logp chosen, logp rejected, n chosen tokens,
    n rejected tokens); sft/pretrain -> (n, 2) = (sum logp, n tokens). Work is split over ranks, every
    rank running the same number of forwards (FSDP all-gathers in lockstep), then gathered."""
    rank, world = rank_world()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(rows)
    if n == 0:
        return torch.zeros(0, 4 if mode == "dpo" else 2, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: _length(rows[i]))  # similar lengths share a batch: less padding
    per_rank = -(-n // world)
    mine = [order[j] if j < n else order[0] for j in range(rank, per_rank * world, world)]  # (per_rank,)
    out = []
    for s in range(0, per_rank, micro_batch_size):
        logps, counts, _ = batch_logps(model, [rows[i] for i in mine[s:s + micro_batch_size]], mode, device)
        counts = counts.to(logps.dtype)  # (rows,)
        b = len(mine[s:s + micro_batch_size])
        cols = [logps[:b], logps[b:], counts[:b], counts[b:]] if mode == "dpo" else [logps, counts]
        out.append(torch.stack(cols, 1).double())
    model.train(was_training)
    if isinstance(model, FSDPModule):
        model.reshard()  # FSDP keeps the root's params gathered after a forward that no backward follows
    mine_out = torch.cat(out)  # (per_rank, k)
    if world > 1:
        gathered = [torch.empty_like(mine_out) for _ in range(world)]
        dist.all_gather(gathered, mine_out)
        mine_out = torch.stack(gathered, 1).flatten(0, 1)  # row j*world + r = rank r's j-th example
    result = torch.empty(n, mine_out.shape[1], dtype=torch.float64)
    result[torch.tensor(order)] = mine_out[:n].cpu()
    return result


def train_max_len(model, max_len: int | None) -> int:
    """Tokens per sequence: max_len capped at the model's context, or the whole context if None. The one
    rule for reference scoring and training, so a long pair is truncated identically in both."""
    return model.args.max_seq_len if max_len is None else min(max_len, model.args.max_seq_len)


def compute_reference_logps(model, pairs: list[dict], tokenizer=None, max_len: int | None = None,
                            micro_batch_size: int = 8) -> list[dict]:
    """Sec. 3.3: the reference of DPO on AIFT(M_t) is M_t itself. Score every pair once with the frozen
    M_t (eval mode, no grad) and store ref_chosen / ref_rejected in the (tokenized) pairs, returned.
    Train on the returned pairs (their token ids), or with the same max_len."""
    pairs = tokenize(pairs, tokenizer, "dpo", train_max_len(model, max_len))
    t0 = time.time()
    scores = score_examples(model, pairs, "dpo", micro_batch_size)
    for p, (c, r) in zip(pairs, scores[:, :2].tolist()):
        p["ref_chosen"], p["ref_rejected"] = c, r
    log(f"reference log-probs: {len(pairs)} pairs in {time.time() - t0:.1f}s")
    return pairs


def _dpo_terms(pc, pr, rc, rr, nc, nr, cfg: TrainConfig):
    """dpo_loss with the config's variant: IPO on per-token averages, RPO's NLL per chosen token."""
    nll = -pc / nc
    if cfg.ipo:
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    return dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing, cfg.ipo, nll, cfg.rpo_alpha)


def evaluate(model, rows: list[dict], cfg: TrainConfig) -> dict:
    s = score_examples(model, rows, cfg.mode, cfg.micro_batch_size)
    if cfg.mode != "dpo":
        return {"eval_loss": float(-s[:, 0].sum() / s[:, 1].sum().clamp(min=1))}
    ref = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows], dtype=torch.float64)
    loss, m = _dpo_terms(s[:, 0], s[:, 1], ref[:, 0], ref[:, 1], s[:, 2], s[:, 3], cfg)
    return {"eval_loss": float(loss), "eval_reward_accuracy": float(m["reward_accuracy"])}


# ----------------------------------------------------------------------------- training

def _prepare(examples, cfg: TrainConfig, tokenizer, max_len: int) -> list[dict]:
    """Validate and tokenize; pretrain packs documents into rows; sft/pretrain rows learn n_targets."""
    if not examples:
        raise ValueError(f"no {cfg.mode} examples")
    if cfg.mode == "pretrain" and "ids" not in examples[0]:
        for i, ex in enumerate(examples):
            check_example(ex, "pretrain", f"examples[{i}]")
        bos = getattr(tokenizer, "bos_id", None) is not None
        rows = pack_documents([tokenizer.encode(ex["text"], bos=bos, eos=True) for ex in examples], max_len)
    else:
        rows = examples if cfg.mode == "pretrain" else tokenize(examples, tokenizer, cfg.mode, max_len)
    if cfg.mode != "dpo":
        rows = [{**r, "n_targets": int(collate([r], cfg.mode).loss_mask[:, 1:].sum())} for r in rows]
    return rows


def micro_batches(rows: list[dict], mb: int, regroup: bool = False) -> list[list[dict]]:
    """Cut a rank's share of the global batch into micro-batches of similar rows (the summed gradient
    does not depend on the cut). Sorted by length, so little padding is wasted. With regroup (one
    process only: FSDP ranks must run equal numbers of forwards), rows that open with the same
    MIN_SHARED_PREFIX tokens (EFT rows: the Fig. 2 prompt) also go together, so their long shared
    prefix runs once per micro-batch (forward_logits)."""
    if not regroup:
        rows = sorted(rows, key=_length)
        return [rows[k:k + mb] for k in range(0, len(rows), mb)]
    groups: dict = {}
    for r in rows:
        ids = r.get("prompt_ids", r.get("ids", ()))
        groups.setdefault(tuple(ids[:MIN_SHARED_PREFIX]) if len(ids) > MIN_SHARED_PREFIX else None, []).append(r)
    for head in [h for h, g in groups.items() if h is not None and len(g) == 1]:  # nothing to share
        groups.setdefault(None, []).extend(groups.pop(head))
    chunks = []
    for g in groups.values():
        g.sort(key=_length)
        chunks += [g[k:k + mb] for k in range(0, len(g), mb)]
    return chunks


def _micro_step(model, rows, cfg, device, norm, ref_model):
    """Loss of one micro-batch, scaled so that the sum over micro-batches and the mean over ranks
    (FSDP averages gradients) is the global batch's mean. Returns (loss, metric sums, real tokens)."""
    logps, counts, n_real = batch_logps(model, rows, cfg.mode, device, cfg.doc_mask)  # dpo: (2b,) chosen, then rejected
    if cfg.mode != "dpo":
        return -logps.sum() / norm, {}, n_real  # SFT/pretrain: mean over the global batch's tokens
    b = len(rows)
    if ref_model is not None:  # the reference held in memory (the alternative to precomputed values)
        with torch.no_grad():
            ref = batch_logps(ref_model, rows, "dpo", device)[0]
    else:
        ref = torch.tensor([r["ref_chosen"] for r in rows] + [r["ref_rejected"] for r in rows], device=device)
    loss, m = _dpo_terms(logps[:b], logps[b:], ref[:b], ref[b:], counts[:b], counts[b:], cfg)
    return loss * b / norm, {k: float(v) * b for k, v in m.items()}, n_real


def _refs(rows):
    return [[r.get("ref_chosen"), r.get("ref_rejected")] for r in rows or []]


def _save_state(path, model, opt, step, history, cfg, rows, eval_rows):
    model_sd, opt_sd = _full_state(model, opt)  # collective: every rank calls
    if rank_world()[0] == 0:  # the reference log-probs came from the initial weights: keep them too
        state = {"model": model_sd, "optim": opt_sd, "step": step, "history": history, "config": asdict(cfg),
                 "n_examples": len(rows), "refs": _refs(rows), "eval_refs": _refs(eval_rows)}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    if dist.is_initialized():
        dist.barrier()


def _load_state(path, model, opt, cfg, rows, eval_rows):
    state = torch.load(path, map_location="cpu", weights_only=True)
    harmless = {"log_every", "eval_every", "save_every", "resume", "stop_after", "out", "micro_batch_size"}
    for k, v in state["config"].items():
        if k not in harmless and getattr(cfg, k) != v:
            raise ValueError(f"{path}: saved run has {k}={v!r}, this run has {k}={getattr(cfg, k)!r}; "
                             "use the same config or a fresh --out")
    if state["n_examples"] != len(rows):
        raise ValueError(f"{path}: saved run had {state['n_examples']} examples, this run has {len(rows)}")
    o = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=o)
    set_optimizer_state_dict(model, opt, state["optim"], options=o)
    for rs, refs in ((rows, state["refs"]), (eval_rows or [], state["eval_refs"])):
        for r, (c, j) in zip(rs, refs):
            if c is not None:
                r["ref_chosen"], r["ref_rejected"] = c, j
    return state["step"], state["history"]


def _fmt(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def seed_dropout(seed: int, device: torch.device):
    """Seed the generator that dropout draws from on `device`. (torch.manual_seed also queues a seed, with
    a stack trace, for every accelerator backend: a millisecond a step, 3% of a toy step.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device, the one this rank trains on


def train(model, examples: list[dict], cfg: TrainConfig, tokenizer=None, eval_examples=None, ref_model=None):
    """Train `model` in place (mode pretrain | sft | dpo) and return the history, one dict per step.
    DPO pairs without ref_chosen/ref_rejected get them from `model` before its first update (it is
    M_t, the reference), unless ref_model is given: then the reference runs alongside (more memory)."""
    rank, world = rank_world()
    if world > 1 and not isinstance(model, FSDPModule):
        raise ValueError("train: under torch.distributed, shard the model first (shard_model/load_for_training)")
    if model.args.tie_embeddings and model.output.weight is not model.tok_embeddings.weight:
        raise ValueError("train: params say tie_embeddings but output.weight is not tok_embeddings.weight "
                         "(to_empty() unties them); save_checkpoint would drop the trained output. Re-tie first.")
    device = next(model.parameters()).device
    max_len = train_max_len(model, cfg.max_len)
    rows = _prepare(examples, cfg, tokenizer, max_len)
    eval_rows = _prepare(eval_examples, cfg, tokenizer, max_len) if eval_examples else None
    B, mb = cfg.batch_size, cfg.micro_batch_size
    if B % (mb * world):
        raise ValueError(f"TrainConfig.batch_size={B} must divide by micro_batch_size ({mb}) x ranks ({world})")
    accum = B // (mb * world)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # RMSNorm gains
    # foreach: one call over all tensors per Adam op, where torch's CPU default loops over the tensors in
    # Python. The same numbers bit for bit (checked on the toy's SFT with dropout and weight decay).
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=ADAM_BETAS, foreach=True)
    state_path = os.path.join(cfg.out, "train_state.pt") if cfg.out else None
    start, history = 0, []
    if cfg.resume and state_path and os.path.exists(state_path):
        start, history = _load_state(state_path, model, opt, cfg, rows, eval_rows)
        log(f"resumed {state_path} at step {start}/{cfg.steps}")
    if cfg.mode == "dpo" and ref_model is None:  # after a resume, the saved refs are already filled in
        for name, rs in (("train", rows), ("eval", eval_rows or [])):
            if rs and any(r.get("ref_chosen") is None for r in rs):
                if start:
                    raise ValueError(f"{state_path}: has no reference log-probs for the {name} pairs")
                log(f"{name} pairs have no reference log-probs: computing them with the initial model (M_t)")
                rs[:] = compute_reference_logps(model, rs, micro_batch_size=mb)
    elif cfg.mode == "dpo" and eval_rows:
        eval_rows = compute_reference_logps(ref_model, eval_rows, micro_batch_size=mb)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    old_p = [m.p for m in dropouts]
    for m in dropouts:
        m.p = cfg.dropout
    model.train()
    log(f"{cfg.mode}: {len(rows)} {'pairs' if cfg.mode == 'dpo' else 'rows'}, "
        f"{cfg.steps} steps x batch {B} ({world} rank(s) x {accum} micro-batches of {mb}), lr {cfg.lr:g} "
        f"{cfg.schedule} -> {cfg.min_lr:g}, dropout {cfg.dropout}")
    t0, last = time.time(), start
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for step in range(start, cfg.steps):
                if cfg.stop_after and step >= cfg.stop_after:
                    break
                t_step = time.time()
                seed_dropout(cfg.seed * 1_000_003 + step * 1_009 + rank, device)  # masks: f(seed, step, rank)
                idx = batch_indices(len(rows), B, step, cfg.seed)
                # Micro-batches of similar length (sorted within the rank's share) waste little padding;
                # the summed gradient does not depend on how the global batch is cut.
                mine = idx[rank * B // world:(rank + 1) * B // world]
                chunks = micro_batches([rows[i] for i in mine], mb, regroup=world == 1)
                # SFT/pretrain normalise by the global batch's target tokens, DPO by its pairs (per rank).
                norm = (sum(rows[i]["n_targets"] for i in idx) if cfg.mode != "dpo" else B) / world
                lr = lr_at(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup, cfg.schedule)
                for g in opt.param_groups:
                    g["lr"] = lr
                sums = torch.zeros(6, dtype=torch.float64)  # loss, acc, chosen, rejected, margin, tokens
                for k, chunk in enumerate(chunks):
                    if isinstance(model, FSDPModule):  # reduce-scatter gradients only after the last one
                        model.set_requires_gradient_sync(k == len(chunks) - 1)
                    loss, m, n_real = _micro_step(model, chunk, cfg, device, norm, ref_model)
                    loss.backward()
                    sums += torch.tensor([loss.item(), m.get("reward_accuracy", 0), m.get("chosen_reward", 0),
                                          m.get("rejected_reward", 0), m.get("margin", 0), n_real], dtype=torch.float64)
                sums = _all_sum(sums)
                loss_value = sums[0].item() / world
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"{cfg.mode} step {step + 1}/{cfg.steps}: loss is {loss_value} "
                                             f"(lr {lr:.3g}); stopping. Lower the lr or check the data.")
                grad_norm = float("nan")
                if cfg.grad_clip:
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)

                now = time.time()
                rec = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": sums[5].item() / (now - t_step), "elapsed": now - t0}
                if cfg.mode == "dpo":
                    rec.update(reward_accuracy=sums[1].item() / B, chosen_reward=sums[2].item() / B,
                               rejected_reward=sums[3].item() / B, margin=sums[4].item() / B)
                done = step + 1 == cfg.steps
                if eval_rows and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or done):
                    rec.update(evaluate(model, eval_rows, cfg))
                history.append(rec)
                if (step + 1) % cfg.log_every == 0 or done or step == start:
                    eta = (now - t0) / (step + 1 - start) * (cfg.steps - step - 1)
                    acc = f" | acc {rec['reward_accuracy']:.2f}" if cfg.mode == "dpo" else ""
                    ev = "".join(f" | {k} {v:.4f}" for k, v in rec.items() if k.startswith("eval_"))
                    log(f"{cfg.mode} step {step + 1}/{cfg.steps} | loss {loss_value:.4f}{acc}{ev} | lr {lr:.2e} | "
                        f"{rec['tokens_per_s']:,.0f} tok/s | elapsed {_fmt(now - t0)} | eta {_fmt(eta)}")
                if state_path and cfg.save_every and ((step + 1) % cfg.save_every == 0 or done):
                    os.makedirs(cfg.out, exist_ok=True)
                    _save_state(state_path, model, opt, step + 1, history, cfg, rows, eval_rows)
                last = step + 1
    finally:
        for m, p in zip(dropouts, old_p):
            m.p = p
        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(True)
    if cfg.out and last == cfg.steps:
        save_final(model, cfg.out, tokenizer)
        if rank == 0:
            atomic_write_text(os.path.join(cfg.out, "history.json"), json.dumps(history, indent=1))
    return history


def save_final(model, out: str, tokenizer=None):
    """Meta-layout checkpoint in `out` (model.save_checkpoint); under FSDP, gathered to rank 0 first."""
    if not isinstance(model, FSDPModule):
        save_checkpoint(model, out, tokenizer)
        return
    state, _ = _full_state(model)
    if rank_world()[0] == 0:
        save_checkpoint(build_from_state_dict(model.args, state, "gathered FSDP state"), out, tokenizer)
    dist.barrier()


# ----------------------------------------------------------------------------- CLI

NONE_MEANS = {"max_len": "the model's max_seq_len"}  # what a None default of a TrainConfig field means


def main(argv=None):
    p = argparse.ArgumentParser(description="Pretrain / SFT / DPO a Transformer (torchrun for FSDP2).")
    p.add_argument("--mode", required=True, choices=sorted(MODE_DEFAULTS))
    p.add_argument("--data", required=True, help="JSONL (or .txt for pretrain)")
    p.add_argument("--eval-data", default=None)
    p.add_argument("--ckpt", required=True, help="preset name, .gguf, Meta-layout dir or Hugging Face folder")
    p.add_argument("--out", required=True, help="output directory (Meta layout)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (one process only): fuses "
                   "RMSNorm, RoPE and SwiGLU. On the 2-core CPU (bench/bench_train.py --compile) it pays off where small "
                   "ops dominate (toy, short fixed-length steps) and not where matmuls do (smollm2-135m), nor on the "
                   "toy loop's SFT, whose varying lengths recompile")
    for f in fields(TrainConfig):  # one flag per TrainConfig field: --micro-batch-size etc.
        if f.name in ("mode", "out"):
            continue
        flag, kind = "--" + f.name.replace("_", "-"), f.type
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None)
        else:
            kind = next(t for t in getattr(kind, "__args__", (kind,)) if t is not type(None))  # float | None -> float
            p.add_argument(flag, type=kind, default=None,
                           help=f"default: {NONE_MEANS.get(f.name, 'per mode, see MODE_DEFAULTS') if f.default is None else f.default}")
    a = p.parse_args(argv)
    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name not in ("mode", "out")}
    cfg = TrainConfig(mode=a.mode, out=a.out, **{k: v for k, v in given.items() if v is not None})
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
        if a.device.startswith("cuda"):
            a.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(a.device)
    model, tok = load_for_training(a.ckpt, a.device, cfg.seed)
    if a.compile:
        if dist.is_initialized():
            raise SystemExit("--compile: one process only (FSDP2 would need each block compiled before fully_shard)")
        for layer in model.layers:
            layer.compile()
    if a.tokenizer:
        from tokenizer import Tokenizer
        tok = Tokenizer.from_dir(a.tokenizer)
    if tok is None:
        raise SystemExit(f"{a.ckpt} has no tokenizer: pass --tokenizer DIR")
    examples = load_jsonl(a.data, cfg.mode)
    evals = load_jsonl(a.eval_data, cfg.mode) if a.eval_data else None
    if cfg.mode == "dpo" and any(REF_FIELDS[0] not in ex for ex in examples):
        examples = compute_reference_logps(model, examples, tok, cfg.max_len,
                                           cfg.micro_batch_size)
        if rank_world()[0] == 0:
            os.makedirs(a.out, exist_ok=True)
            save_jsonl(os.path.join(a.out, "pairs_with_refs.jsonl"), examples)
            print(f"saved the pairs with their reference log-probs to {a.out}/pairs_with_refs.jsonl")
    history = train(model, examples, cfg, tokenizer=tok, eval_examples=evals)
    if history:
        log(f"done: final loss {history[-1]['loss']:.4f}; checkpoint in {a.out}")
    if dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
