"""A Llama-style transformer, written out by hand, with Meta's weight names.

References:
  - meta-llama/llama3 model.py: ModelArgs from params.json, interleaved (complex) RoPE,
    Llama 3.1 RoPE scaling, state_dict names.
  - pytorch-labs/gpt-fast: presets that include tiny sizes, a static preallocated KV cache.
  - karpathy/nanoGPT: one config dataclass, shape comments, a fast path with a plain fallback.
  - FlexAttention (torch.nn.attention.flex_attention), fused by torch.compile, with an SDPA
    path that renders the same mask densely (CPU backward, where flex has none).

One mask description serves every use: causal always, plus optional per-slot sequence ids,
where -1 marks padding and different ids mark different documents packed in one row.
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.weak
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


@dataclass
class ModelArgs:
    # Field names follow Meta's params.json, so ModelArgs.from_params(json.load(f)) just works.
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1  # Llama 2 writes -1: the size then comes from the tokenizer/checkpoint
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_scaled_rope: bool = False
    # The project's own fields.
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    dropout: float = 0.0  # on residual branches; the paper fine-tunes with 0.1
    # Explicit widths, as Hugging Face's head_dim and intermediate_size; None derives them by Meta's
    # rules in __post_init__ (so a params.json without them still loads, and asdict() records them).
    head_dim: int | None = None
    hidden_dim: int | None = None
    qkv_bias: bool = False  # Qwen2: biases on the q/k/v projections
    # Llama 3.1 RoPE scaling (used when use_scaled_rope); Meta's constants as defaults, Llama 3.2 uses 32.
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if (self.head_dim is None and self.dim % self.n_heads) or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim={self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: "
                             "dim must divide by n_heads and n_heads by n_kv_heads")
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.hidden_dim is None:
            # Meta's rule: 2/3 of 4*dim, times the optional multiplier, rounded up to multiple_of.
            hidden = int(2 * (4 * self.dim) / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params(cls, params: dict, source: str = "params.json") -> "ModelArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**params)


PRESETS = {
    # Tiny sizes so tests and the toy world run on a laptop CPU.
    "toy-test": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32,
                     max_seq_len=256),
    "toy": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=1344, multiple_of=64,
                max_seq_len=768, tie_embeddings=True),
    # GPT-2-small-sized Llama, for MFU on a GPU.
    "llama-124m": dict(dim=768, n_layers=12, n_heads=12, vocab_size=50304, multiple_of=256,
                       max_seq_len=1024, tie_embeddings=True),
    "smollm2-135m": dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, multiple_of=256,
                         norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
    "llama3.2-1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                        ffn_dim_multiplier=1.5, multiple_of=256, rope_theta=500000.0, use_scaled_rope=True,
                        rope_scaling_factor=32.0, max_seq_len=8192, tie_embeddings=True),  # HF config: factor 32
    "llama3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                        ffn_dim_multiplier=1.3, multiple_of=1024, rope_theta=500000.0, use_scaled_rope=True,
                        max_seq_len=8192),
    "llama3-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256,
                       ffn_dim_multiplier=1.3, multiple_of=4096, rope_theta=500000.0, max_seq_len=8192),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                       ffn_dim_multiplier=1.3, multiple_of=4096, rope_theta=10000.0, max_seq_len=4096),
}


def preset(name: str, **overrides) -> ModelArgs:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return ModelArgs(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- pure math

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in fp32 whatever the compute dtype, as Meta does, then scale in x's dtype.
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rope_frequencies(head_dim: int, theta: float, use_scaled: bool = False, factor: float = 8.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, old_context: int = 8192):
    """Rotation speed of each of the head_dim/2 interleaved pairs; Llama 3.1 slows the low ones."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if use_scaled:  # Llama 3.1: divide by factor below low_freq, smooth blend between, untouched above
        wavelen = 2 * math.pi / freqs
        low_wavelen, high_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
        smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * freqs / factor + smooth * freqs
        freqs = torch.where(wavelen < high_wavelen, freqs,
                            torch.where(wavelen > low_wavelen, freqs / factor, blended))
    return freqs.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's RoPE: consecutive pairs (x0, x1) are a complex number rotated by pos * freq.
    x: (B, T, H, hd); cos, sin: (B, T, hd/2) or (1, T, hd/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, hd/2)
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def dense_mask(q_start, q_len: int, kv_len: int, seq_ids: torch.Tensor | None, device,
               shared: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B or 1, 1, q_len, kv_len): query slot q sees key slot k if k <= q, both belong to
    the same sequence, and k is not padding (id -1). Every query also sees itself, so a padding
    query has one key and never makes NaNs that could leak through 0 * NaN.
    shared: (B,) optional; in row b the first shared[b] slots are seen by every later query whatever
    its id: a prompt shared by the sequences packed after it (a DPO pair: prompt, chosen, rejected)."""
    q = q_start + torch.arange(q_len, device=device)  # (T,)
    k = torch.arange(kv_len, device=device)  # (S,)
    allowed = k[None, :] <= q[:, None]  # (T, S)
    if seq_ids is not None:
        q_ids = seq_ids[:, q]  # (B, T)
        same = (q_ids[:, :, None] == seq_ids[:, None, :]) & (seq_ids[:, None, :] >= 0)  # (B, T, S)
        if shared is not None:
            same = same | (k[None, None, :] < shared[:, None, None])
        allowed = allowed & same
    allowed = allowed | (k[None, :] == q[:, None])
    return allowed[:, None] if allowed.dim() == 3 else allowed[None, None]


def flex_block_mask(q_start: int, q_len: int, kv_len: int, seq_ids: torch.Tensor | None, device,
                    shared: torch.Tensor | None = None):
    """The same rule as dense_mask, as a FlexAttention BlockMask (computed once per forward)."""
    if seq_ids is None:
        def mask_mod(b, h, q, k):
            return k <= q + q_start
        return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)

    def mask_mod(b, h, q, k):
        qs = q + q_start
        same = (seq_ids[b, qs] == seq_ids[b, k]) & (seq_ids[b, k] >= 0)
        if shared is not None:
            same = same | (k < shared[b])
        return ((k <= qs) & same) | (k == qs)
    return create_block_mask(mask_mod, seq_ids.shape[0], None, q_len, kv_len, device=device)


# The fused kernel: flex_attention is only fast when compiled (eager runs a reference loop).
_compiled_flex = torch.compile(flex_attention, dynamic=False)


# ----------------------------------------------------------------------------- CPU decode kernels

# torch's fp32 F.linear on CPU calls MKL, whose kernels on the AMD EPYC we measured stream the weights
# at a third of the speed they can be read (bench/roofline.py: 12.2 vs 36.8 GB/s). Decoding is nothing but streaming the
# weights, so the compiled CPU decode step (generate.py) takes two other kernels, chosen per call:
#   - one row (batch 1): the matrix-vector product written as (x * W).sum(-1), which inductor turns
#     into one vectorised loop that reads each weight once;
#   - more rows: oneDNN's linear, on a copy of the weight reordered once into oneDNN's blocked layout.
# Eager code, training and other devices keep F.linear.
_HAS_ONEDNN = torch.backends.mkldnn.is_available()
_onednn_weights = torch.utils.weak.WeakIdKeyDictionary()  # weight -> (source, its _version then, packed copy)


def _onednn_packed(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN-packed copy of weight, made again whenever weight has changed: in place (an optimiser
    step or load_state_dict bumps _version) or by a new .data (a new storage; the entry holds the old
    one, so its address cannot be reused meanwhile). It costs the weight's memory again while weight lives."""
    entry = _onednn_weights.get(weight)
    if entry is None or entry[0].data_ptr() != weight.data_ptr() or entry[1] != weight._version:
        source = weight.detach()
        entry = (source, source._version, torch.ops.mkldnn._reorder_linear_weight(source))
        _onednn_weights[weight] = entry
    return entry[2]


@torch.library.custom_op("srlm::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN (CPU, fp32, no autograd). A custom op, so inductor calls it as one
    opaque kernel and the packed weight never enters the compiled graph."""
    return torch.ops.mkldnn._linear_pointwise(x, _onednn_packed(weight), None, "none", [], "")


@onednn_linear.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear that takes the CPU decode kernels above inside a compiled no-grad CPU fp32
    graph, and is F.linear everywhere else."""

    def forward(self, x):
        w = self.weight
        if (torch.compiler.is_compiling() and self.bias is None and x.device.type == "cpu"
                and x.dtype == w.dtype == torch.float32 and not torch.is_grad_enabled() and _HAS_ONEDNN):
            if x.numel() == x.shape[-1]:  # a single row: matrix-vector
                return (x.unsqueeze(-2) * w).sum(-1)
            return onednn_linear(x, w)
        return F.linear(x, w, self.bias)


# ----------------------------------------------------------------------------- modules

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class KVCache(nn.Module):
    """Static, preallocated keys and values for every slot of a batch (gpt-fast style): shapes never
    change during decoding, so a compiled decode step does not recompile and suits CUDA graphs."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start, k, v):
        slots = start + torch.arange(k.shape[2], device=k.device)  # (T,)
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = Linear(args.dim, args.n_heads * self.head_dim, bias=args.qkv_bias)
        self.wk = Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wv = Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wo = Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, start, past=None):
        """-> (output, (k, v) of these tokens). past: keys/values of a shared prefix (1 or B rows)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh or nkv, T, hd)
        new_kv = (k, v)
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)  # (B, nkv, S, hd), S = cache length
        elif past is not None:  # (1 or B, nkv, L, hd) + (B, nkv, T, hd) -> (B, nkv, L + T, hd)
            k = torch.cat([past[0].expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(B, -1, -1, -1), v], dim=2)
        kind, m = mask
        if kind == "flex":
            y = _compiled_flex(q, k, v, block_mask=m, enable_gqa=self.n_heads != self.n_kv_heads)
        elif m is None:  # plain causal, no cache: let SDPA pick its fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=self.n_heads != self.n_kv_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, dim)
        return self.wo(y), new_kv


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = Linear(args.dim, args.hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x, cos, sin, mask, start, past=None):
        a, kv = self.attention(self.attention_norm(x), cos, sin, mask, start, past)
        x = x + self.dropout(a)
        return x + self.dropout(self.feed_forward(self.ffn_norm(x))), kv


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size is unset (-1): take it from the tokenizer or checkpoint")
        self.args = args
        self.attn_impl = "auto"  # "auto" | "flex" | "sdpa"; see _mask
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_rope()

    # -- setup
    def init_rope(self):
        """(Re)build the fp32 RoPE tables on the model's device (after to_empty() from meta, say)."""
        device = self.tok_embeddings.weight.device
        shape = (self.args.max_seq_len, self.args.head_dim // 2)
        if device.type == "meta":
            self.rope_cos, self.rope_sin = torch.empty(shape, device=device), torch.empty(shape, device=device)
            return
        a = self.args
        freqs = rope_frequencies(a.head_dim, a.rope_theta, a.use_scaled_rope, a.rope_scaling_factor,
                                 a.rope_low_freq_factor, a.rope_high_freq_factor, a.rope_original_max_seq_len)
        angles = torch.outer(torch.arange(self.args.max_seq_len, dtype=torch.float32), freqs)  # (S, hd/2)
        self.rope_cos, self.rope_sin = angles.cos().to(device), angles.sin().to(device)

    def _apply(self, fn, *args, **kwargs):
        # model.to(bfloat16) would round the RoPE tables too; rebuild them in fp32 instead (as Meta
        # keeps freqs_cis in complex64).
        super()._apply(fn, *args, **kwargs)
        if self.args.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight  # to_empty() makes new Parameters: tie again
        self.init_rope()
        return self

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None):
        gen = torch.Generator(device=self.tok_embeddings.weight.device)
        gen.manual_seed(0 if seed is None else seed)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)  # RMSNorm gains
            else:
                # Residual projections start small so the stream's variance does not grow with depth.
                scale = 1 / math.sqrt(2 * self.args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
                p.normal_(0.0, std * scale, generator=gen)
        self.init_rope()

    def setup_cache(self, batch: int, max_len: int, dtype=None, device=None):
        p = self.tok_embeddings.weight
        dtype, device = dtype or p.dtype, torch.device(device or p.device)
        if max_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len {self.args.max_seq_len}")
        key = (batch, max_len, dtype, device)
        if device.type == "cuda" and getattr(self, "_cache_pool_key", None) == key:
            # Same shape as last time: reuse the same buffers, so a CUDA graph captured by the compiled
            # decode step replays instead of re-recording for new addresses (gpt-fast keeps its cache).
            for layer, cache in zip(self.layers, self._cache_pool):
                cache.k.zero_(), cache.v.zero_()
                layer.attention.cache = cache
            return
        for layer in self.layers:
            layer.attention.cache = KVCache(batch, self.args.n_kv_heads, max_len, self.args.head_dim, dtype, device)
        if device.type == "cuda":
            self._cache_pool_key, self._cache_pool = key, [layer.attention.cache for layer in self.layers]

    def clear_cache(self, free: bool = False):
        """Detach the caches (training must never see one); free=True also drops the reusable CUDA ones."""
        for layer in self.layers:
            layer.attention.cache = None
        if free:
            self._cache_pool_key, self._cache_pool = None, None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() counts a tied tensor once
        return n - self.tok_embeddings.weight.numel() if exclude_embeddings else n

    # -- forward
    def _mask(self, q_start, q_len, kv_len, seq_ids, device, cached: bool, shared=None):
        """FlexAttention (compiled, block-sparse, fused forward and backward) for full sequences: training
        and scoring. Generation with the KV cache uses SDPA on the dense mask instead: prompt lengths
        vary (each new flex shape would recompile) and the decode step must keep static shapes for
        CUDA graphs. CPU uses SDPA unless asked: flex has no backward there."""
        impl = self.attn_impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" else "sdpa"
        if impl == "flex" and not cached and isinstance(q_start, int):
            return "flex", flex_block_mask(q_start, q_len, kv_len, seq_ids, device, shared)
        if seq_ids is None and kv_len == q_len and isinstance(q_start, int) and q_start == 0:
            return "sdpa", None  # plain causal
        return "sdpa", dense_mask(q_start, q_len, kv_len, seq_ids, device, shared)

    def forward(self, tokens, *, start=0, positions=None, seq_ids=None, shared=None, last_only: bool = False,
                logits_at=None, prefix_kv=None, return_kv: bool = False):
        """tokens (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with last_only.

        start: the cache slot of tokens[:, 0] (an int, or a 0-dim tensor in the compiled decode).
        positions: (B, T) RoPE positions; default start + arange(T). Left-padded rows pass their own.
        seq_ids: (B, S) per key slot (S = T, or the cache length): -1 = padding, and tokens only
            see earlier tokens with the same id (packed documents). None = plain causal.
        shared: (B,) with seq_ids: the first shared[b] slots of row b are seen by all later tokens of the
            row (dense_mask): one prompt, then the sequences that continue it (a DPO pair, prompt once).
        logits_at: (rows, cols) index tensors: logits (N, vocab) of those positions only. Training
            scores response tokens alone, so the output layer (and its fp32 log-softmax) skips the rest.
        prefix_kv / return_kv: shared-prefix training. `logits, kv = model(prefix[None], return_kv=True)`
            runs a prefix that every row shares once; `model(rest, start=L, prefix_kv=kv)` then runs
            each row's own tokens against it. Gradients flow into both (the prefix's summed over rows),
            so this equals the full forward of the concatenation, at a fraction of the cost."""
        B, T = tokens.shape
        cache = self.layers[0].attention.cache
        kv_len = cache.k.shape[2] if cache is not None else T
        if prefix_kv is not None:
            kv_len = prefix_kv[0][0].shape[2] + T
        if positions is None:
            positions = (start + torch.arange(T, device=tokens.device))[None]  # (1, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B or 1, T, hd/2)
        mask = self._mask(start, T, kv_len, seq_ids, tokens.device, cached=cache is not None, shared=shared)
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        kvs = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, cos, sin, mask, start, None if prefix_kv is None else prefix_kv[i])
            kvs.append(kv)
        if last_only:
            h = h[:, -1:]
        elif logits_at is not None:
            h = h[logits_at]  # (N, dim)
        logits = self.output(self.norm(h))
        return (logits, kvs) if return_kv else logits


# ----------------------------------------------------------------------------- checkpoints

def atomic_write(path, write):
    """write(tmp) to a temporary name beside path, then rename it over path: readers (and a run resumed
    after a kill) see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path, text: str):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def save_checkpoint(model: Transformer, directory: str, tokenizer=None):
    """Meta's layout: params.json + consolidated.00.pth (+ tokenizer.model). Tied output is not stored."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (model.args.tie_embeddings and k == "output.weight")}
    atomic_write(os.path.join(directory, "consolidated.00.pth"), lambda tmp: torch.save(state, tmp))
    if tokenizer is not None:
        tokenizer.save(directory)
    atomic_write_text(os.path.join(directory, "params.json"), json.dumps(asdict(model.args), indent=2))


# Meta's model-parallel layout: which dim each weight was split on across consolidated.NN.pth shards.
_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def merge_meta_shards(shards: list[dict], dim: int) -> dict:
    """Merge model-parallel shards. Norms are replicated (taken from shard 0). tok_embeddings
    are split on the vocab (dim 0) in Llama 3 and on the hidden size (dim 1) in Llama 2."""
    if len(shards) == 1:
        return shards[0]
    merged = {}
    for key, t0 in shards[0].items():
        parts = [s[key] for s in shards]
        name = key.split(".")[-2]
        if name in _SHARD_DIM:
            merged[key] = torch.cat(parts, dim=_SHARD_DIM[name])
        elif name == "tok_embeddings":
            merged[key] = torch.cat(parts, dim=1 if t0.shape[1] * len(shards) == dim else 0)
        else:
            merged[key] = t0
    return merged


def _check_shapes(model: Transformer, state: dict, source: str):
    expected = model.state_dict()
    for key, t in state.items():
        if key not in expected:
            raise ValueError(f"{source}: unexpected tensor {key!r} (shape {tuple(t.shape)}) not in the model")
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(t.shape)} but params imply "
                             f"{tuple(expected[key].shape)}")
    missing = [k for k in expected if k not in state and not (k == "output.weight" and model.args.tie_embeddings)]
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def build_from_state_dict(args: ModelArgs, state: dict, source: str, device="cpu", dtype=torch.float32):
    """Create the model on the meta device and assign the loaded tensors into it (no double copy)."""
    with torch.device("meta"):
        model = Transformer(args)
    _check_shapes(model, state, source)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.output.weight = model.tok_embeddings.weight
    model.init_rope()
    return model.to(device)


def read_json_object(path: str) -> dict:
    """A JSON file holding one object (params.json, config.json, an index), with errors naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_meta_checkpoint(directory: str, device="cpu", dtype=torch.float32):
    """params.json + consolidated.NN.pth (1 or more model-parallel shards) -> Transformer."""
    params_path = os.path.join(directory, "params.json")
    params = read_json_object(params_path)
    shard_paths = sorted(p for p in os.listdir(directory) if p.startswith("consolidated.") and p.endswith(".pth"))
    if not shard_paths:
        raise FileNotFoundError(f"no consolidated.NN.pth in {directory}")
    shards = [torch.load(os.path.join(directory, p), map_location="cpu", mmap=True, weights_only=True)
              for p in shard_paths]
    state = merge_meta_shards(shards, params["dim"])
    if params.get("vocab_size", -1) <= 0:  # Llama 2: the vocabulary size comes from the weights
        params["vocab_size"] = state["tok_embeddings.weight"].shape[0]
    if "tie_embeddings" not in params:  # Meta's params.json has no such field: a missing output ties
        params["tie_embeddings"] = "output.weight" not in state
    args = ModelArgs.from_params(params, source=params_path)
    return build_from_state_dict(args, state, f"{directory}/{shard_paths[0]}", device, dtype)


# llama.cpp names -> Meta names. GGUF stores q/k rows in Meta's interleaved RoPE order already.
_GGUF_NAMES = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
               "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def load_gguf(path: str, device="cpu", dtype=torch.float32):
    """A llama-architecture GGUF file (e.g. SmolLM2's Q4_1/Q8_0) -> dequantized fp32 Transformer."""
    import gguf  # optional dependency: reads and dequantizes GGUF files

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    reader = gguf.GGUFReader(path)

    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture is {arch!r}, only 'llama' is supported")
    state = {}
    for t in reader.tensors:
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims fastest-first
        if t.name == "token_embd.weight":
            state["tok_embeddings.weight"] = w
        elif t.name == "output_norm.weight":
            state["norm.weight"] = w
        elif t.name == "output.weight":
            state["output.weight"] = w
        elif t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            state[f"layers.{i}.{_GGUF_NAMES[kind]}.weight"] = w
    n_heads = int(field("llama.attention.head_count"))
    key_length = field("llama.attention.key_length")
    args = ModelArgs(
        dim=int(field("llama.embedding_length")), n_layers=int(field("llama.block_count")), n_heads=n_heads,
        n_kv_heads=int(field("llama.attention.head_count_kv", n_heads)),
        vocab_size=state["tok_embeddings.weight"].shape[0], norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        max_seq_len=int(field("llama.context_length", 2048)), tie_embeddings="output.weight" not in state,
        hidden_dim=int(field("llama.feed_forward_length")), head_dim=None if key_length is None else int(key_length))
    return build_from_state_dict(args, state, path, device, dtype)


def load_model(path: str, device="cpu", dtype=torch.float32, seed: int = 0):
    """A preset name (random init), a .gguf file, a Meta-layout directory or a Hugging Face folder
    (config.json + model.safetensors[.index.json]) -> (model, tokenizer or None)."""
    if path in PRESETS:
        with torch.device("meta"):
            model = Transformer(preset(path))
        model.to_empty(device=device)
        model.init_weights(seed=seed)
        return model.to(dtype), None
    if path.endswith(".gguf"):
        from tokenizer import Tokenizer
        return load_gguf(path, device, dtype), Tokenizer.from_gguf(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (expected a preset name, a .gguf file, a directory "
                                f"with params.json or a Hugging Face folder); presets: {sorted(PRESETS)}")
    if not os.path.exists(os.path.join(path, "params.json")) and os.path.exists(os.path.join(path, "config.json")):
        import hf  # Hugging Face folders: the reader lives beside the model, not inside it
        model = hf.load_hf(path, device, dtype)
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            return model, None
        from tokenizer import Tokenizer
        return model, Tokenizer.from_hf_dir(path)
    model = load_meta_checkpoint(path, device, dtype)
    if not os.path.exists(os.path.join(path, "tokenizer.model")):
        return model, None
    from tokenizer import Tokenizer
    return model, Tokenizer.from_dir(path)
