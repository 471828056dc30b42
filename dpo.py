"""Fine-tuning for Self-Rewarding LMs (Yuan et al. 2024, arXiv 2401.10020): pretraining of the toy M0,
SFT on IFT+EFT (M0 -> M1, Sec. 3.1-3.3), and DPO on self-made preference pairs (AIFT(M_t), Sec. 3.3).

References: eric-mitchell/direct-preference-optimization trainers.py (preference_loss, _get_batch_logps,
log-softmax in fp32); Rafailov et al. 2023 (DPO, Eq. 7); Azar et al. 2023 (IPO); Mitchell 2023
(conservative DPO = label smoothing); Pang et al. 2024 (Iterative RPO, arXiv 2404.19733: DPO + NLL on the
chosen response); torchtitan (FSDP2: fully_shard per block, then the root); karpathy/nanoGPT train.py
(AdamW decay on >=2-D tensors, cosine schedule, accumulation).

The file reads top-down:
    the losses   token_logps, sequence_logps, dpo_loss, sft_loss, lr_at: they need torch alone, copy them out
    the config   TrainConfig, MODE_DEFAULTS
    scoring      batch_logps, score_examples, compute_reference_logps (DPO's reference, Sec. 3.3)
    training     train: packing.prepare, then train_step per optimiser step, checkpoints as it goes
    the CLI      python dpo.py --mode sft|dpo|pretrain --data F --ckpt C --out D

Imports: torch; from the project sharding.py (loading, FSDP2, saving), packing.py (examples to
token rows, and the batch layouts: pairs packed, shared prefixes, logits only where a token is scored)
and common.py (files, ranks); tokenizer.py for the CLI's --tokenizer. sequence_logps and sft_loss are
the textbook definitions; the trainer gets the same sums through packing.py (tests/test_packing.py).

Data: SFT {"prompt","response"}; DPO {"prompt","chosen","rejected"} (TRL's names) and, once computed,
"ref_chosen","ref_rejected" (summed log-probs of the frozen M_t, stored WITH the pairs so the reference
model is never in memory while the policy trains); pretrain {"text"} (or a .txt file, one doc per line).
Losses only count response tokens (chat format: prompt ids + response ids ending in end-of-turn).

Batches: `batch_size` is the global batch (examples, pairs or rows), cut into micro-batches before the
ranks take theirs (deal): the same micro-batches and dropout masks under any number of ranks.
SFT/pretrain average over the *tokens* of the whole global batch (every response token weighs the same,
however the batch is cut into micro-batches or ranks); DPO averages over pairs.

Checkpoints: OUT/train_state.pt every save_every steps = full (gathered) model + optimiser state dicts
(FQN keys, so a run may resume on another number of ranks), step and history; written by rank 0,
atomically, removed once the final checkpoint is written. Non-finite weights are never saved. Data
order and dropout masks are pure functions of (seed, step, micro-batch), so the step is the whole data
position and RNG state. The final weights go to OUT in Meta's layout, gathered on rank 0
(sharding.save_final; the README's "Scaling to 70B" says what that costs and why).
"""
import argparse
import contextlib
import functools
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule

import packing
from common import (all_sum, atomic_write, atomic_write_text, barrier, ceil_div, init_distributed, log,
                    rank_world, read_json_object, row_ranks, write_json, write_jsonl)
from sharding import full_state, load_for_training, save_final, weights_finite

# ----------------------------------------------------------------------------- the losses (torch alone)

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


# ----------------------------------------------------------------------------- the config

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
    micro_batch_size: int = 4  # rows per forward (any number of ranks takes the same micro-batches)
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
    activation_checkpointing: bool = False  # keep block inputs only, recompute in the backward (model.hidden)

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
        # Checked here, not found out from NaN weights: AdamW takes lr=inf without a word.
        ranges = {"lr": (0, None), "min_lr": (0, None), "weight_decay": (0, None), "grad_clip": (0, None),
                  "beta": (0, None), "rpo_alpha": (0, None), "label_smoothing": (0, 0.5), "dropout": (0, 1)}
        for k, (lo, hi) in ranges.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (hi is not None and v >= hi):
                raise ValueError(f"TrainConfig.{k}={v!r}: must be a finite number >= {lo}" + (f" and < {hi}" if hi else ""))
        if self.beta == 0:
            raise ValueError("TrainConfig.beta=0: DPO's temperature must be positive")
        if self.warmup < 0 or self.warmup > self.steps:
            raise ValueError(f"TrainConfig.warmup={self.warmup}: must be between 0 and steps ({self.steps})")


def train_max_len(model, max_len: int | None) -> int:
    """Tokens per sequence: max_len capped at the model's context, or the whole context if None. The one
    rule for reference scoring and training, so a long pair is truncated identically in both."""
    return model.args.max_seq_len if max_len is None else min(max_len, model.args.max_seq_len)


# ----------------------------------------------------------------------------- scoring

def _autocast(device: torch.device, model):
    # bf16 on one GPU; under FSDP the MixedPrecisionPolicy casts instead; CPU stays fp32.
    if device.type == "cuda" and not isinstance(model, FSDPModule):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_logps(model, rows: list[dict], mode: str, device, doc_mask: bool = True):
    """Summed log-probs of the scored tokens of each sequence of a micro-batch, and their counts:
    dpo -> (2b,) the b chosen then the b rejected; sft/pretrain -> (b,) per row. packing.scored_logits
    lays the batch out and runs the model; this is sequence_logps on its output.
    Returns (logps, counts, n_real) with n_real the real tokens, for tokens/s."""
    # FlexAttention (CUDA) is compiled for static shapes: 128-token steps (its block size) bound recompiles.
    pad_to = 128 if device.type == "cuda" else 1
    with _autocast(device, model):
        logits, targets, seq, n_seq, n_real = packing.scored_logits(model, rows, mode, device, doc_mask, pad_to)
    tok = token_logps(logits, targets)  # (N,)
    logps = torch.zeros(n_seq, dtype=tok.dtype, device=device).index_add(0, seq, tok)
    return logps, torch.bincount(seq, minlength=n_seq), n_real


@torch.no_grad()
def score_examples(model, rows: list[dict], mode: str, micro_batch_size: int = 8, doc_mask: bool = True) -> torch.Tensor:
    """Per-example log-probs in eval mode: dpo -> (n, 4) = (logp chosen, logp rejected, n chosen tokens,
    n rejected tokens); sft/pretrain -> (n, 2) = (sum logp, n tokens). The micro-batches are cut from
    all rows and dealt to the ranks as train_step does (deal: the same forwards on every rank, as FSDP's
    all-gathers need); then the scores are summed over ranks."""
    n = len(rows)
    if n == 0:
        return torch.zeros(0, 4 if mode == "dpo" else 2, dtype=torch.float64)
    rank, world = row_ranks(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = packing.micro_batches(rows, micro_batch_size)
    chunk_rows = [[rows[i] for i in c] for c in chunks]
    result = torch.zeros(n, 4 if mode == "dpo" else 2, dtype=torch.float64, device=device)
    for k, real in deal(chunk_rows, rank, world):
        idx = chunks[k]
        logps, counts, _ = batch_logps(model, chunk_rows[k], mode, device, doc_mask)
        if not real:  # a repeat, only to keep step
            continue
        counts, b = counts.to(logps.dtype), len(idx)  # counts: (rows,)
        cols = [logps[:b], logps[b:], counts[:b], counts[b:]] if mode == "dpo" else [logps, counts]
        result[torch.tensor(idx, device=device)] = torch.stack(cols, 1).double()
    model.train(was_training)
    if isinstance(model, FSDPModule):
        model.reshard()  # FSDP keeps the root's params gathered after a forward that no backward follows
    if world > 1:
        dist.all_reduce(result)  # each example was scored by exactly one rank, zeros elsewhere
    return result.cpu()


def deal(chunks: list[list[dict]], rank: int, world: int) -> list[tuple[int, bool]]:
    """The micro-batches this rank runs, as (index, real). Under FSDP every rank must make the same
    forwards with the same autograd graph (the backward all-gathers in the graph's order), and a
    micro-batch with a shared prefix makes two (packing.prefix_logits): so the micro-batches are dealt
    in rounds of `world` of one kind, those with a shared prefix first, and a rank short in a round
    repeats one of that kind, real False (weight 0). One process runs each once, the same order."""
    kinds = [bool(packing.shared_prefix_len(c)) for c in chunks]
    out = []
    for kind in (True, False):
        ks = [k for k, x in enumerate(kinds) if x == kind]
        mine = [(k, True) for k in ks[rank::world]]
        if ks:
            out += mine + [(ks[0], False)] * (ceil_div(len(ks), world) - len(mine))
    return out


def compute_reference_logps(model, pairs: list[dict], tokenizer=None, max_len: int | None = None,
                            micro_batch_size: int = 8) -> list[dict]:
    """Sec. 3.3: the reference of DPO on AIFT(M_t) is M_t itself. Score every pair once with the frozen
    M_t (eval mode, no grad) and store ref_chosen / ref_rejected in the (tokenized) pairs, returned.
    Train on the returned pairs (their token ids), or with the same max_len."""
    pairs = packing.tokenize(pairs, tokenizer, "dpo", train_max_len(model, max_len))
    t0 = time.time()
    scores = score_examples(model, pairs, "dpo", micro_batch_size)
    for p, (c, r) in zip(pairs, scores[:, :2].tolist()):
        p["ref_chosen"], p["ref_rejected"] = c, r
    log(f"reference log-probs: {len(pairs)} pairs in {time.time() - t0:.1f}s")
    return pairs


def preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, cfg: TrainConfig):
    """dpo_loss with the config's variant, on summed log-probs (B,) and token counts (B,): IPO on per-token
    averages, RPO's NLL per chosen token."""
    nll = -policy_chosen / n_chosen
    if cfg.ipo:
        policy_chosen, policy_rejected = policy_chosen / n_chosen, policy_rejected / n_rejected
        ref_chosen, ref_rejected = ref_chosen / n_chosen, ref_rejected / n_rejected
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing,
                    cfg.ipo, nll, cfg.rpo_alpha)


def eval_loss(model, rows: list[dict], cfg: TrainConfig) -> dict:
    """The held-out loss (and DPO's reward accuracy) of the prepared eval rows, in eval mode."""
    s = score_examples(model, rows, cfg.mode, cfg.micro_batch_size, cfg.doc_mask)
    if cfg.mode != "dpo":
        return {"eval_loss": float(-s[:, 0].sum() / s[:, 1].sum().clamp(min=1))}
    ref = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows], dtype=torch.float64)
    loss, m = preference_loss(s[:, 0], s[:, 1], ref[:, 0], ref[:, 1], s[:, 2], s[:, 3], cfg)
    return {"eval_loss": float(loss), "eval_reward_accuracy": float(m["reward_accuracy"])}


# ----------------------------------------------------------------------------- training

@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Examples of global batch `step` in an endless stream of shuffled epochs: a pure function of the
    step, so the step is the whole data position a resumed run needs."""
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(step * batch_size, (step + 1) * batch_size)]


def seed_dropout(seed: int, device: torch.device):
    """Seed the generator that dropout draws from on `device`. (torch.manual_seed also queues a seed, with
    a stack trace, for every accelerator backend, which costs a visible share of a toy step.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device, the one this rank trains on


def micro_batch_loss(model, rows, cfg, device, norm, ref_model):
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
    loss, m = preference_loss(logps[:b], logps[b:], ref[:b], ref[b:], counts[:b], counts[b:], cfg)
    return loss * b / norm, {k: float(v) * b for k, v in m.items()}, n_real


def make_optimizer(model, cfg: TrainConfig):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # RMSNorm gains
    # foreach: one call per Adam op over all tensors, where torch's CPU default loops over them in Python
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=ADAM_BETAS, foreach=True)


def fill_references(model, rows, eval_rows, cfg: TrainConfig, ref_model, resumed: bool, state_path):
    """DPO pairs without ref_chosen/ref_rejected get them from `model` before its first update (it is
    M_t, the reference), or from ref_model. After a resume, the saved refs are already filled in."""
    if cfg.mode != "dpo":
        return eval_rows
    if ref_model is not None:
        return compute_reference_logps(ref_model, eval_rows, micro_batch_size=cfg.micro_batch_size) if eval_rows else eval_rows
    for name, rs in (("train", rows), ("eval", eval_rows or [])):
        if rs and any(r.get("ref_chosen") is None for r in rs):
            if resumed:
                raise ValueError(f"{state_path}: has no reference log-probs for the {name} pairs")
            log(f"{name} pairs have no reference log-probs: computing them with the initial model (M_t)")
            rs[:] = compute_reference_logps(model, rs, micro_batch_size=cfg.micro_batch_size)
    return eval_rows


def train_step(model, opt, rows, cfg: TrainConfig, step: int, device, ref_model) -> dict:
    """One optimiser step on global batch `step`: cut into micro-batches, of which this rank runs its
    deal, their gradients accumulated; then clipping and AdamW. Returns the step's record."""
    rank, world = rank_world()
    B, mb = cfg.batch_size, cfg.micro_batch_size
    t_step = time.time()
    idx = batch_indices(len(rows), B, step, cfg.seed)
    # Micro-batches of similar rows are cut before they are dealt to the ranks, each with its own dropout
    # seed f(seed, step, micro-batch): the same masks and summed gradient under any number of ranks.
    batch = [rows[i] for i in idx]
    chunks = [[batch[i] for i in c] for c in packing.micro_batches(batch, mb)]
    mine = deal(chunks, rank, world)
    # SFT/pretrain normalise by the global batch's target tokens, DPO by its pairs (per rank).
    norm = (sum(rows[i]["n_targets"] for i in idx) if cfg.mode != "dpo" else B) / world
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup, cfg.schedule)
    for g in opt.param_groups:
        g["lr"] = lr
    sums = torch.zeros(6, dtype=torch.float64)  # loss, acc, chosen, rejected, margin, tokens
    for j, (k, real) in enumerate(mine):
        if isinstance(model, FSDPModule):  # reduce-scatter gradients only after the last one
            model.set_requires_gradient_sync(j == len(mine) - 1)
        seed_dropout(cfg.seed * 1_000_003 + step * 1_009 + k, device)
        loss, m, n_real = micro_batch_loss(model, chunks[k], cfg, device, norm, ref_model)
        if not real:  # a repeat: in lockstep, adding nothing
            loss, m, n_real = loss * 0, {}, 0
        loss.backward()
        sums += torch.tensor([loss.item(), m.get("reward_accuracy", 0), m.get("chosen_reward", 0),
                              m.get("rejected_reward", 0), m.get("margin", 0), n_real], dtype=torch.float64)
    sums = all_sum(sums)
    loss_value = sums[0].item() / world
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"{cfg.mode} step {step + 1}/{cfg.steps}: loss is {loss_value} "
                                 f"(lr {lr:.3g}); stopping. Lower the lr or check the data.")
    grad_norm = float("nan")
    if cfg.grad_clip:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"{cfg.mode} step {step + 1}/{cfg.steps}: the gradient norm is {grad_norm}; "
                                     "stopping before the update.")
    opt.step()
    opt.zero_grad(set_to_none=True)
    rec = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
           "tokens_per_s": sums[5].item() / (time.time() - t_step)}
    if cfg.mode == "dpo":
        rec.update(reward_accuracy=sums[1].item() / B, chosen_reward=sums[2].item() / B,
                   rejected_reward=sums[3].item() / B, margin=sums[4].item() / B)
    return rec


def _fmt(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def log_step(rec: dict, cfg: TrainConfig, start: int, t0: float):
    step, elapsed = rec["step"], rec["elapsed"]
    eta = elapsed / (step - start) * (cfg.steps - step)
    acc = f" | acc {rec['reward_accuracy']:.2f}" if cfg.mode == "dpo" else ""
    ev = "".join(f" | {k} {v:.4f}" for k, v in rec.items() if k.startswith("eval_"))
    log(f"{cfg.mode} step {step}/{cfg.steps} | loss {rec['loss']:.4f}{acc}{ev} | lr {rec['lr']:.2e} | "
        f"{rec['tokens_per_s']:,.0f} tok/s | elapsed {_fmt(elapsed)} | eta {_fmt(eta)}")


@contextlib.contextmanager
def training_mode(model, dropout: float):
    """model.train() with every nn.Dropout at p=dropout inside; their p and the gradient sync restored after."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    old_p = [m.p for m in dropouts]
    for m in dropouts:
        m.p = dropout
    model.train()
    try:
        yield
    finally:
        for m, p in zip(dropouts, old_p):
            m.p = p
        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(True)


def train(model, examples: list[dict], cfg: TrainConfig, tokenizer=None, eval_examples=None, ref_model=None):
    """Train `model` in place (mode pretrain | sft | dpo) and return the history, one dict per step.
    DPO pairs without ref_chosen/ref_rejected get them from `model` before its first update (it is
    M_t, the reference), unless ref_model is given: then the reference runs alongside (more memory)."""
    rank, world = rank_world()
    if world > 1 and not isinstance(model, FSDPModule):
        raise ValueError("train: under torch.distributed, shard the model first (shard_model/load_for_training)")
    device, max_len = next(model.parameters()).device, train_max_len(model, cfg.max_len)
    model.checkpoint_blocks = cfg.activation_checkpointing
    rows = packing.prepare(examples, cfg.mode, tokenizer, max_len)
    eval_rows = packing.prepare(eval_examples, cfg.mode, tokenizer, max_len) if eval_examples else None
    opt = make_optimizer(model, cfg)
    state_path = os.path.join(cfg.out, "train_state.pt") if cfg.out else None
    done_path = os.path.join(cfg.out, "train_config.json") if cfg.out else None
    if cfg.resume and done_path and os.path.exists(done_path) and not os.path.exists(state_path):
        check_config(read_json_object(done_path), cfg, done_path)  # finished: nothing left to train
        log(f"{cfg.out}: already trained ({cfg.steps} steps); nothing to do")
        with open(os.path.join(cfg.out, "history.json"), encoding="utf-8") as f:
            return json.load(f)
    start, history = 0, []
    if cfg.resume and state_path and os.path.exists(state_path):
        start, history = load_state(state_path, model, opt, cfg, rows, eval_rows)
        log(f"resumed {state_path} at step {start}/{cfg.steps}")
    eval_rows = fill_references(model, rows, eval_rows, cfg, ref_model, start > 0, state_path)
    log(f"{cfg.mode}: {len(rows)} {'pairs' if cfg.mode == 'dpo' else 'rows'}, {cfg.steps} steps x batch "
        f"{cfg.batch_size} ({ceil_div(cfg.batch_size, cfg.micro_batch_size)} micro-batches of up to {cfg.micro_batch_size}"
        f" over {world} rank(s)), lr {cfg.lr:g} {cfg.schedule} -> {cfg.min_lr:g}, dropout {cfg.dropout}")
    t0, last = time.time(), start
    with training_mode(model, cfg.dropout), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for step in range(start, cfg.steps):
            if cfg.stop_after and step >= cfg.stop_after:
                break
            rec = train_step(model, opt, rows, cfg, step, device, ref_model)
            rec["elapsed"] = time.time() - t0
            done = step + 1 == cfg.steps
            if eval_rows and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or done):
                rec.update(eval_loss(model, eval_rows, cfg))
            history.append(rec)
            if (step + 1) % cfg.log_every == 0 or done or step == start:
                log_step(rec, cfg, start, t0)
            if state_path and cfg.save_every and ((step + 1) % cfg.save_every == 0 or done):
                os.makedirs(cfg.out, exist_ok=True)
                save_state(state_path, model, opt, step + 1, history, cfg, rows, eval_rows)
            last = step + 1
    if cfg.out and last == cfg.steps:
        # The history first, the checkpoint last: its params.json is what says a finished stage is done.
        if rank == 0:
            os.makedirs(cfg.out, exist_ok=True)
            atomic_write_text(os.path.join(cfg.out, "history.json"), json.dumps(history, indent=1))
            write_json(done_path, asdict(cfg))  # what a finished run was trained with, for a resume to check
        save_final(model, cfg.out, tokenizer)
        if rank == 0 and state_path and os.path.exists(state_path):
            os.remove(state_path)  # only for resuming an unfinished run: a whole optimiser state, gone once done
    return history


def save_state(path, model, opt, step, history, cfg, rows, eval_rows):
    if not weights_finite(model):
        raise FloatingPointError(f"{cfg.mode} step {step}/{cfg.steps}: the weights are not all finite (NaN or inf); "
                                 f"stopping without saving {path}")
    model_sd, opt_sd = full_state(model, opt)  # collective: every rank calls
    if rank_world()[0] == 0:  # the reference log-probs came from the initial weights: keep them too
        refs = [[[r.get("ref_chosen"), r.get("ref_rejected")] for r in rs or []] for rs in (rows, eval_rows)]
        state = {"model": model_sd, "optim": opt_sd, "step": step, "history": history, "config": asdict(cfg),
                 "n_examples": len(rows), "refs": refs[0], "eval_refs": refs[1]}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    barrier()


def check_config(saved: dict, cfg: TrainConfig, path: str):
    """A run resumed from `path` must have the settings that shaped it (the harmless ones aside)."""
    harmless = {"log_every", "eval_every", "save_every", "resume", "stop_after", "out", "micro_batch_size",
                "activation_checkpointing"}
    for k, v in saved.items():
        if k not in harmless and getattr(cfg, k) != v:
            raise ValueError(f"{path}: saved run has {k}={v!r}, this run has {k}={getattr(cfg, k)!r}; "
                             "use the same config, or a fresh output folder (dpo.py: --out, loop.py: --run-dir)")


def load_state(path, model, opt, cfg, rows, eval_rows):
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_config(state["config"], cfg, path)
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


# ----------------------------------------------------------------------------- CLI

NONE_MEANS = {"max_len": "the model's max_seq_len"}  # what a None default of a TrainConfig field means


def parse_args(argv=None):
    """(the parsed flags, the TrainConfig they make): one flag per TrainConfig field, None = its default."""
    p = argparse.ArgumentParser(description="Pretrain / SFT / DPO a Transformer (torchrun for FSDP2).")
    p.add_argument("--mode", required=True, choices=sorted(MODE_DEFAULTS))
    p.add_argument("--data", required=True, help="JSONL (or .txt for pretrain)")
    p.add_argument("--eval-data", default=None)
    p.add_argument("--ckpt", required=True, help="preset name, .gguf, Meta-layout dir or Hugging Face folder")
    p.add_argument("--out", required=True, help="output directory (Meta layout)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (one process only): fuses "
                   "RMSNorm, RoPE and SwiGLU; where that pays off is measured in the README (bench/bench_train.py)")
    flags = [f for f in fields(TrainConfig) if f.name not in ("mode", "out")]
    for f in flags:  # one flag per TrainConfig field: --micro-batch-size etc.
        flag, kind = "--" + f.name.replace("_", "-"), f.type
        default = NONE_MEANS.get(f.name, "per mode, see MODE_DEFAULTS") if f.default is None else f.default
        if kind is bool:  # --doc-mask / --no-doc-mask, as loop.py's flags
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default: {default}")
        else:
            kind = next(t for t in getattr(kind, "__args__", (kind,)) if t is not type(None))  # float | None -> float
            p.add_argument(flag, type=kind, default=None, help=f"default: {default}")
    a = p.parse_args(argv)
    given = {f.name: getattr(a, f.name) for f in flags}
    try:  # a setting TrainConfig refuses is a usage error: argparse's one line naming the flag, exit code 2
        return a, TrainConfig(mode=a.mode, out=a.out, **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        p.error(re.sub(r"TrainConfig\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e)))


def main(argv=None):
    a, cfg = parse_args(argv)
    a.device = init_distributed(a.device)
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
    examples = packing.load_examples(a.data, cfg.mode, tok)
    evals = packing.load_examples(a.eval_data, cfg.mode, tok) if a.eval_data else None
    if cfg.mode == "dpo" and any(packing.REF_FIELDS[0] not in ex for ex in examples):
        examples = compute_reference_logps(model, examples, tok, cfg.max_len, cfg.micro_batch_size)
        if rank_world()[0] == 0:
            os.makedirs(a.out, exist_ok=True)
            # The text and the reference log-probs, not the token ids: the file is for people to read and
            # reuse, and ids left in it would override any edit of the text (tokenize keeps ids it finds).
            write_jsonl(os.path.join(a.out, "pairs_with_refs.jsonl"),
                        [{k: v for k, v in r.items() if not k.endswith("_ids")} for r in examples])
            print(f"saved the pairs with their reference log-probs to {a.out}/pairs_with_refs.jsonl")
    history = train(model, examples, cfg, tokenizer=tok, eval_examples=evals)
    if history:
        log(f"done: final loss {history[-1]['loss']:.4f}; checkpoint in {a.out}")
    if dist.is_initialized():
        barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
