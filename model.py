"""A Llama-style transformer, written out by hand, with Meta's weight names: the plain model, and nothing else.

References:
  - meta-llama/llama3 model.py: ModelArgs from params.json, interleaved (complex) RoPE,
    Llama 3.1 RoPE scaling, state_dict names, forward(tokens, start).
  - pytorch-labs/gpt-fast: presets that include tiny sizes, a static preallocated KV cache.
  - karpathy/nanoGPT: one config dataclass, shape comments.
  - FlexAttention (torch.nn.attention.flex_attention), fused by torch.compile, with an SDPA
    path that renders the same mask densely (CPU backward, where flex has none).

One mask description serves every use: causal always, plus optional per-slot sequence ids,
where -1 marks padding and different ids mark different documents packed in one row.

Imports: torch alone, nothing from this project, so the file can be copied out whole. What sits
beside it: checkpoint.py reads and writes weights (Meta, GGUF, Hugging Face), cpu_decode.py swaps
faster Linear kernels in for the compiled CPU decode step, packing.py builds training's packed
batches on top of Transformer.hidden.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


# The longest context a model may have: the RoPE tables hold every position up front, so a config's
# mistyped context (10**9) would otherwise ask for gigabytes and fail in the allocator, naming no field.
# It sits above every context of the Llama family's released models.
MAX_SEQ_LEN = 1 << 20


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
        if not 1 <= self.max_seq_len <= MAX_SEQ_LEN:
            raise ValueError(f"ModelArgs.max_seq_len={self.max_seq_len}: must be between 1 and {MAX_SEQ_LEN} "
                             "(the RoPE tables hold every position)")
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
        try:
            return cls(**params)
        except ValueError as e:  # name the file whose field is wrong
            raise ValueError(f"{source}: {e}") from None


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


def attend(q, k, v, mask) -> torch.Tensor:
    """Causal attention, by the kernel the mask's form asks for: a BlockMask -> compiled FlexAttention,
    None -> SDPA's own causal kernel, a boolean tensor (dense_mask) -> SDPA with that mask.
    q (B, nh, T, hd); k, v (B, nkv, S, hd), grouped-query when nkv < nh."""
    gqa = q.shape[1] != k.shape[1]
    if isinstance(mask, BlockMask):
        return _compiled_flex(q, k, v, block_mask=mask, enable_gqa=gqa)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)



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
    change during decoding, so a compiled decode step does not recompile and suits CUDA graphs.
    k, v: (batch, n_kv_heads, max_len, head_dim)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)

    def update(self, start, k, v):
        slots = start + torch.arange(k.shape[2], device=k.device)  # (T,)
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
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
        y = attend(q, k, v, mask).transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, dim)
        return self.wo(y), new_kv


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up

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
        self.attn_impl = "auto"  # "auto" | "flex" | "sdpa"; see attention_mask
        self.checkpoint_blocks = False  # activation checkpointing in training (hidden)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
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
        """Give every layer an empty KVCache for `batch` rows of `max_len` slots."""
        p = self.tok_embeddings.weight
        dtype, device = dtype or p.dtype, torch.device(device or p.device)
        if max_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len {self.args.max_seq_len}")
        for layer in self.layers:  # the layer's own heads: a tensor-parallel rank holds a share of them
            shape = (batch, layer.attention.n_kv_heads, max_len, self.args.head_dim)
            layer.attention.cache = KVCache(torch.zeros(shape, dtype=dtype, device=device),
                                            torch.zeros(shape, dtype=dtype, device=device))

    def clear_cache(self):
        """Detach the caches: training and scoring must never see one."""
        for layer in self.layers:
            layer.attention.cache = None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() counts a tied tensor once
        return n - self.tok_embeddings.weight.numel() if exclude_embeddings else n

    # -- forward
    def attention_mask(self, q_start, q_len: int, kv_len: int, seq_ids, shared, device, cached: bool):
        """The mask in the form that picks the attention kernel (attend). FlexAttention (compiled,
        block-sparse, fused forward and backward) for full sequences: training and scoring. With the KV
        cache, SDPA on the dense mask: prompt lengths vary (each new flex shape would recompile) and the
        decode step must keep static shapes for CUDA graphs. CPU uses SDPA unless asked: flex has no
        backward there."""
        impl = self.attn_impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" else "sdpa"
        if impl == "flex" and not cached and isinstance(q_start, int):
            return flex_block_mask(q_start, q_len, kv_len, seq_ids, device, shared)
        if seq_ids is None and kv_len == q_len and isinstance(q_start, int) and q_start == 0:
            return None  # plain causal
        return dense_mask(q_start, q_len, kv_len, seq_ids, device, shared)

    def forward(self, tokens, start=0, positions=None, seq_ids=None):
        """tokens (B, T) -> logits (B, T, vocab). Meta's forward(tokens, start_pos), plus what a batch of
        unequal rows needs:
        start: the cache slot of tokens[:, 0] (an int, or a 0-dim tensor in the compiled decode step).
        positions: (B, T) RoPE positions; default start + arange(T). Left-padded rows pass their own.
        seq_ids: (B, S) per key slot (S = T, or the cache length): -1 = padding, and tokens only see
            earlier tokens with the same id (packed documents). None = plain causal."""
        h, _ = self.hidden(tokens, start, positions, seq_ids)
        return self.output(self.norm(h))

    def hidden(self, tokens, start=0, positions=None, seq_ids=None, shared=None, past=None):
        """forward without the last norm and output layer: the residual stream (B, T, dim) after the last
        block, and each block's (k, v) of these tokens. For callers that want logits at some positions
        only (training scores response tokens; prefill needs the last one) or reuse a prefix:
        shared: (B,) with seq_ids: the first shared[b] slots of row b are seen by all later tokens of the
            row (dense_mask): one prompt, then the sequences that continue it (a DPO pair, prompt once).
        past: the (k, v) per block of a prefix that every row shares (what hidden returned for it), run
            once: hidden(rest, start=L, past=kv) then equals the full forward of the concatenation,
            gradients included (the prefix's summed over the rows)."""
        B, T = tokens.shape
        cache = self.layers[0].attention.cache
        kv_len = cache.k.shape[2] if cache is not None else T
        if past is not None:
            kv_len = past[0][0].shape[2] + T
        if positions is None:
            positions = (start + torch.arange(T, device=tokens.device))[None]  # (1, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B or 1, T, hd/2)
        mask = self.attention_mask(start, T, kv_len, seq_ids, shared, tokens.device, cached=cache is not None)
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        kvs = []
        for i, layer in enumerate(self.layers):
            inputs = (h, cos, sin, mask, start, None if past is None else past[i])
            if self.checkpoint_blocks and torch.is_grad_enabled():
                # Activation checkpointing: keep each block's input, run the block again in the backward
                # (the same dropout masks: checkpoint restores the RNG state), ~1/3 more compute.
                h, kv = torch.utils.checkpoint.checkpoint(layer, *inputs, use_reentrant=False)
            else:
                h, kv = layer(*inputs)
            kvs.append(kv)
        return h, kvs

    def logits(self, h):
        """The last norm and the output layer, on the rows of hidden's output a caller picked."""
        return self.output(self.norm(h))
