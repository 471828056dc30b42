"""Hugging Face folders: read and write (config.json, model.safetensors or its sharded index,
generation_config.json), for the Llama family: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.

Imports: torch; from model.py ModelArgs and Transformer, since this file maps another layout onto that
model; checkpoint.build_from_state_dict, and common.py's atomic writes and JSON reader. The tokenizer files are tokenizer.py's job
(Tokenizer.from_hf_dir / Tokenizer.save_hf); checkpoint.load_model and save_hf below join the two.

Safetensors are read and written by the few lines below, not by the `safetensors` package: the format
is an 8-byte little-endian header length, a JSON header (dtype, shape, data_offsets of each tensor),
then the raw little-endian bytes. mmap + torch.frombuffer gives zero-copy tensors, bf16 included
(numpy, and so safetensors' numpy path, has no bf16), and the dependencies stay torch, numpy, tiktoken.

RoPE layout: Hugging Face's Llama rotates halves of each head (dims i and i + hd/2 pair up); Meta's,
which model.py uses, interleaves pairs (2i, 2i+1). Hugging Face's converter permuted Meta's q/k rows
per head, w.view(n, hd/2, 2, dim).transpose(1, 2); to_meta_qk inverts it, biases included. The
attention scores q.k are unchanged, so the permutation also carries models trained natively in
Hugging Face's layout (Qwen2) into Meta's.

References: the safetensors format (huggingface/safetensors README); transformers' LlamaConfig,
MistralConfig and Qwen2Config field names and defaults; convert_llama_weights_to_hf.py's permute.
"""
import json
import math
import mmap
import os
import re
import struct
import sys

import torch

from checkpoint import LazyWeights, build_from_state_dict
from common import atomic_write, atomic_write_text, read_json_object
from model import MAX_SEQ_LEN, ModelArgs, Transformer

CONFIG, WEIGHTS, INDEX, GENERATION = ("config.json", "model.safetensors", "model.safetensors.index.json",
                                      "generation_config.json")
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# Per-layer modules, Hugging Face name -> Meta name (mlp gate/up/down = w1/w3/w2).
_LAYER_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
                "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
                "post_attention_layernorm": "ffn_norm"}
_TOP_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}


# ----------------------------------------------------------------------------- safetensors

def safetensors_entries(path: str) -> dict[str, tuple[torch.dtype, list[int], int]]:
    """The header of a safetensors file, checked: {name: (dtype, shape, offset of its bytes in the file)}."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors are little-endian; this reader runs on little-endian machines only")
    size = os.path.getsize(path)
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file ({size} bytes, less than its header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n) if 8 + n <= size else b""
    try:
        header = json.loads(raw) if raw else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (no JSON header of {n} bytes after the first 8)")
    header.pop("__metadata__", None)
    return {name: _entry(name, info, path, 8 + n, size) for name, info in header.items()}


def _entry(name: str, info, path: str, start: int, size: int) -> tuple[torch.dtype, list[int], int]:
    """One header entry {dtype, shape, data_offsets relative to the data start}, checked against the file."""
    try:
        dtype, shape, (begin, end) = _DTYPES.get(info["dtype"]), [int(d) for d in info["shape"]], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}; supported: {sorted(_DTYPES)}")
    if end - begin != math.prod(shape) * dtype.itemsize or start + end > size:
        raise ValueError(f"{path}: tensor {name!r}: data_offsets {info['data_offsets']} do not fit shape {shape} "
                         f"in {info['dtype']} or the file's {size} bytes")
    return dtype, shape, start + begin


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """{name: tensor}, zero-copy views of a private (copy-on-write) memory map of the file."""
    entries = safetensors_entries(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable, so frombuffer does not warn
    out = {}
    for name, (dtype, shape, offset) in entries.items():
        count = math.prod(shape)  # frombuffer refuses an empty view
        out[name] = (torch.frombuffer(mm, dtype=dtype, count=count, offset=offset).view(shape) if count
                     else torch.empty(shape, dtype=dtype))
    return out


def read_rows(path: str, entry: tuple[torch.dtype, list[int], int], start: int, stop: int) -> torch.Tensor:
    """Rows start:stop (along dim 0) of one tensor, read from the file into new memory. The rows of a
    row-major tensor are one byte range, so a rank that loads its shard reads only its shard's bytes and
    keeps no map of the rest (sharding.load_sharded)."""
    dtype, shape, offset = entry
    row = math.prod(shape[1:]) * dtype.itemsize
    buf = bytearray((stop - start) * row)
    with open(path, "rb") as f:
        f.seek(offset + start * row)
        if f.readinto(buf) != len(buf):
            raise ValueError(f"{path}: ends inside a tensor's rows {start}:{stop}")
    out = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    return out.view(stop - start, *shape[1:])


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    """Write tensors (F32/F16/BF16) one after another; transformers requires metadata format 'pt'."""
    header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {t.dtype}; supported: {sorted(_DTYPE_NAMES, key=str)}")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for t in tensors.values():  # bytes via a uint8 view: numpy has no bf16
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    atomic_write(path, write)


def read_hf_weights(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """model.safetensors, or the shards that model.safetensors.index.json's weight_map names
    -> ({name: tensor}, {name: the file it came from})."""
    index_path, single = os.path.join(directory, INDEX), os.path.join(directory, WEIGHTS)
    if not os.path.exists(index_path):
        if not os.path.exists(single):
            raise FileNotFoundError(f"{directory}: neither {WEIGHTS} nor {INDEX} (a Hugging Face folder needs one)")
        tensors = read_safetensors(single)
        return tensors, dict.fromkeys(tensors, single)
    weight_map = read_json_object(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: field 'weight_map' must be a non-empty object {{tensor: shard file}}")
    shards = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{index_path}: weight_map names shard {shard!r}, which is missing ({path})")
        shards[shard] = read_safetensors(path)
    tensors, origin = {}, {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise ValueError(f"{index_path}: weight_map puts tensor {name!r} in {shard}, which has no such tensor")
        tensors[name], origin[name] = shards[shard][name], os.path.join(directory, shard)
    return tensors, origin


# ----------------------------------------------------------------------------- layouts

def to_meta_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows (weight (n*hd, dim) or bias (n*hd,)) from HF's rotate-half order to Meta's interleaved."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)  # (n, hd/2, 2, dim)


def to_hf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of to_meta_qk: Hugging Face's converter rule."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)  # (n, 2, hd/2, dim)


def meta_name(name: str, source: str) -> str | None:
    """Hugging Face tensor name -> Meta's, None for buffers that some old checkpoints stored."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from the config
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m is None or m.group(2) not in _LAYER_NAMES or (m.group(3) == "bias" and "_proj" not in m.group(2)):
        raise ValueError(f"{source}: tensor {name!r} is not part of a Llama-family checkpoint")
    if m.group(3) == "bias" and m.group(2) not in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        raise ValueError(f"{source}: tensor {name!r}: biases are supported on q/k/v only (Qwen2), not on "
                         f"{m.group(2)} (attention_bias on o_proj or mlp_bias)")
    return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def hf_to_meta(tensors: dict, args: ModelArgs, origin: dict) -> dict:
    """Rename to Meta's keys and un-permute q/k rows (weights and biases) into the interleaved layout."""
    state = {}
    for name, t in tensors.items():
        key = meta_name(name, origin[name])
        if key is None:
            continue
        if ".attention.wq." in key:
            t = to_meta_qk(t, args.n_heads)
        elif ".attention.wk." in key:
            t = to_meta_qk(t, args.n_kv_heads)
        state[key] = t
    return state


def meta_to_hf(state: dict, args: ModelArgs) -> dict:
    """The inverse of hf_to_meta; a tied output is left out, as transformers saves it."""
    hf_names = {v: k for k, v in _TOP_NAMES.items()}
    layer_names = {v: k for k, v in _LAYER_NAMES.items()}
    out = {}
    for key, t in state.items():
        if key == "output.weight" and args.tie_embeddings:
            continue
        if key in hf_names:
            out[hf_names[key]] = t
            continue
        _, i, module, kind = re.fullmatch(r"(layers)\.(\d+)\.(.+)\.(weight|bias)", key).groups()
        if module == "attention.wq":
            t = to_hf_qk(t, args.n_heads)
        elif module == "attention.wk":
            t = to_hf_qk(t, args.n_kv_heads)
        out[f"model.layers.{i}.{layer_names[module]}.{kind}"] = t
    return out


# ----------------------------------------------------------------------------- config.json -> ModelArgs

_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ARCH_DEFAULTS = {  # what each transformers config class assumes for a field config.json leaves out
    "LlamaForCausalLM": dict(max_position_embeddings=2048, sliding_window=None, use_sliding_window=False),
    "MistralForCausalLM": dict(max_position_embeddings=131072, sliding_window=4096, use_sliding_window=True),
    "Qwen2ForCausalLM": dict(max_position_embeddings=32768, sliding_window=None, use_sliding_window=False)}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _architecture(config: dict, path: str) -> str:
    archs = config.get("architectures") or [_MODEL_TYPES.get(config.get("model_type"), config.get("model_type"))]
    if len(archs) != 1 or archs[0] not in SUPPORTED:
        raise ValueError(f"{path}: architectures={archs} is not supported; supported: {', '.join(SUPPORTED)}")
    return archs[0]


def _rope_fields(config: dict, path: str) -> dict:
    """ModelArgs' RoPE fields from 4.x (rope_theta + rope_scaling) or 5.x (rope_parameters) style."""
    styles = [(f, config.get(f) or {}) for f in ("rope_parameters", "rope_scaling")]
    kinds = {f: spec.get("rope_type", spec.get("type")) for f, spec in styles if spec.get("rope_type", spec.get("type"))}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"{path}: rope_parameters and rope_scaling disagree on the rope type: {kinds}")
    field, spec = next(((f, s) for f, s in styles if f in kinds), ("rope_scaling", {}))
    theta = float((config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = kinds.get(field, "default")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{path}: partial_rotary_factor={config['partial_rotary_factor']} is not supported (only 1.0)")
    if kind == "default":
        return dict(rope_theta=theta)
    if kind != "llama3":
        raise ValueError(f"{path}: {field} type {kind!r} is not supported; supported: 'default' and 'llama3' "
                         "(Llama 3.1 scaling)")
    missing = [k for k in _LLAMA3_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{path}: {field} of type 'llama3' lacks {missing}")
    return dict(rope_theta=theta, use_scaled_rope=True, rope_scaling_factor=float(spec["factor"]),
                rope_low_freq_factor=float(spec["low_freq_factor"]),
                rope_high_freq_factor=float(spec["high_freq_factor"]),
                rope_original_max_seq_len=int(spec["original_max_position_embeddings"]))


def config_to_args(config: dict, tensors: dict, origin: dict, path: str, max_seq_len: int | None = None) -> ModelArgs:
    """config.json (checked against the weights) -> ModelArgs. max_seq_len overrides max_position_embeddings."""
    arch = _architecture(config, path)
    defaults = _ARCH_DEFAULTS[arch]

    def get(name, default=None):
        value = config.get(name)
        if value is None and default is None:
            raise ValueError(f"{path}: missing field {name!r}")
        return default if value is None else value

    positions = int(max_seq_len or get("max_position_embeddings", defaults["max_position_embeddings"]))
    if not max_seq_len and positions > MAX_SEQ_LEN:
        raise ValueError(f"{path}: max_position_embeddings={positions} is beyond the {MAX_SEQ_LEN} "
                         "positions a model's RoPE tables may hold: set it to the model's real context "
                         "(or pass load_hf a smaller max_seq_len)")
    for name, supported in (("hidden_act", "silu"), ("mlp_bias", False)):
        if config.get(name, supported) != supported:
            raise ValueError(f"{path}: {name}={config[name]!r} is not supported (only {supported!r})")
    dim, n_heads = int(get("hidden_size")), int(get("num_attention_heads"))
    qkv_bias = "model.layers.0.self_attn.q_proj.bias" in tensors  # Qwen2's config may not say attention_bias
    if arch != "Qwen2ForCausalLM" and bool(config.get("attention_bias", False)) != qkv_bias:
        raise ValueError(f"{path}: attention_bias={config.get('attention_bias', False)} but the weights "
                         f"{'have' if qkv_bias else 'lack'} model.layers.0.self_attn.q_proj.bias")
    args = ModelArgs(
        dim=dim, n_layers=int(get("num_hidden_layers")), n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads", n_heads)), vocab_size=int(get("vocab_size")),
        head_dim=int(get("head_dim", dim // n_heads)), hidden_dim=int(get("intermediate_size")),
        norm_eps=float(get("rms_norm_eps", 1e-6)), tie_embeddings=bool(get("tie_word_embeddings", False)),
        max_seq_len=positions,
        qkv_bias=qkv_bias, **_rope_fields(config, path))
    window = config.get("sliding_window", defaults["sliding_window"])
    if window is not None and config.get("use_sliding_window", defaults["use_sliding_window"]) and window < args.max_seq_len:
        raise ValueError(f"{path}: sliding_window={window} is below max_seq_len={args.max_seq_len}: attention would "
                         f"differ from this model's full causal attention; load it with max_seq_len <= {window}")
    _check_against_weights(config, args, tensors, origin, path)
    return args


def _check_against_weights(config: dict, args: ModelArgs, tensors: dict, origin: dict, path: str):
    """Each config field that fixes a tensor's shape, against that tensor: a mismatch names both."""
    def shape(name):
        if name not in tensors:
            raise ValueError(f"{path}: the weights have no tensor {name!r}")
        return tuple(tensors[name].shape)

    q, k, gate = (f"model.layers.0.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj"))
    heads = f"num_attention_heads={args.n_heads} x head_dim={args.head_dim}"
    kv_heads = f"num_key_value_heads={args.n_kv_heads} x head_dim={args.head_dim}"
    checks = [(f"vocab_size={args.vocab_size}", args.vocab_size, "model.embed_tokens.weight", 0),
              (f"hidden_size={args.dim}", args.dim, "model.embed_tokens.weight", 1),
              (heads, args.n_heads * args.head_dim, q, 0), (kv_heads, args.n_kv_heads * args.head_dim, k, 0),
              (f"intermediate_size={args.hidden_dim}", args.hidden_dim, gate, 0)]
    for fields, implied, name, axis in checks:
        if shape(name)[axis] != implied:
            raise ValueError(f"{path}: {fields} implies size {implied} on axis {axis} of {name}, "
                             f"but {origin[name]} has it with shape {shape(name)}")
    layers = {int(m.group(1)) for n in tensors if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if layers != set(range(args.n_layers)):
        raise ValueError(f"{path}: num_hidden_layers={args.n_layers}, but the weights hold layers {sorted(layers)}")
    if not args.tie_embeddings and "lm_head.weight" not in tensors:
        raise ValueError(f"{path}: tie_word_embeddings is false, but the weights have no lm_head.weight")
    if args.tie_embeddings and "lm_head.weight" in tensors and not torch.equal(
            tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
        raise ValueError(f"{path}: tie_word_embeddings is true, but lm_head.weight in {origin['lm_head.weight']} "
                         "differs from model.embed_tokens.weight")


def load_hf(directory: str, device="cpu", dtype=torch.float32, max_seq_len: int | None = None) -> Transformer:
    """A Hugging Face folder -> Transformer in dtype (the files may hold bf16, fp16 or fp32)."""
    config_path = os.path.join(directory, CONFIG)
    config = read_json_object(config_path)
    tensors, origin = read_hf_weights(directory)
    args = config_to_args(config, tensors, origin, config_path, max_seq_len)
    if args.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # checked equal to the embedding above
    return build_from_state_dict(args, hf_to_meta(tensors, args, origin), directory, device, dtype)


def lazy_hf(directory: str, max_seq_len: int | None = None) -> LazyWeights:
    """A Hugging Face folder's tensors under Meta's names, read row range by row range (read_rows): the
    config is checked against the weights' shapes as load_hf checks it, and q/k rows are un-permuted
    within the heads the range touches."""
    config_path = os.path.join(directory, CONFIG)
    tensors, origin = read_hf_weights(directory)  # views of maps, for the checks: no weight is read
    args = config_to_args(read_json_object(config_path), tensors, origin, config_path, max_seq_len)
    entries = {path: safetensors_entries(path) for path in set(origin.values())}
    rows, shapes = {}, {}
    for name, t in tensors.items():
        key = meta_name(name, origin[name])
        if key is None or (key == "output.weight" and args.tie_embeddings):
            continue
        heads = args.n_heads if ".attention.wq." in key else args.n_kv_heads if ".attention.wk." in key else 0
        order = to_meta_qk(torch.arange(t.shape[0]), heads) if heads else None
        rows[key] = lambda a, b, p=origin[name], e=entries[origin[name]][name], o=order: _rows(p, e, a, b, o)
        shapes[key] = tuple(t.shape)
    return LazyWeights(args, shapes, rows, directory)


def _rows(path: str, entry, start: int, stop: int, order: torch.Tensor | None) -> torch.Tensor:
    """Rows start:stop in Meta's layout; order[i] = the Hugging Face row of Meta's row i (q/k), else None."""
    if order is None:
        return read_rows(path, entry, start, stop)
    want = order[start:stop]
    if not len(want):
        return read_rows(path, entry, 0, 0)
    lo = int(want.min())
    return read_rows(path, entry, lo, int(want.max()) + 1)[want - lo]


# ----------------------------------------------------------------------------- export

_DTYPE_STR = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config(args: ModelArgs, tokenizer=None, dtype=torch.float32) -> dict:
    """config.json for transformers 4.x and 5.x: rope in the 4.x style (rope_theta + rope_scaling), which
    5.x reads into its rope_parameters; both dtype spellings (4.x torch_dtype, 5.x dtype)."""
    qwen2 = args.qkv_bias  # Llama's attention_bias would also put a bias on o_proj; Qwen2's is q/k/v only
    stop = sorted(tokenizer.stop_ids) if tokenizer is not None else None
    config = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": args.vocab_size, "hidden_size": args.dim, "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta, "rope_scaling": None, "tie_word_embeddings": args.tie_embeddings,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": _DTYPE_STR[dtype], "dtype": _DTYPE_STR[dtype],
        "bos_token_id": None if tokenizer is None else tokenizer.bos_id,
        "eos_token_id": stop[0] if stop and len(stop) == 1 else stop,
        "pad_token_id": None if tokenizer is None else tokenizer.pad_id,
    }
    if args.use_scaled_rope:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": args.rope_scaling_factor,
                                  "low_freq_factor": args.rope_low_freq_factor,
                                  "high_freq_factor": args.rope_high_freq_factor,
                                  "original_max_position_embeddings": args.rope_original_max_seq_len}
    if qwen2:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=args.n_layers)
    else:
        config.update(attention_bias=False, mlp_bias=False)
    return config


def save_hf(model: Transformer, tokenizer, directory: str, dtype: torch.dtype | None = None) -> list[str]:
    """Write a Hugging Face folder: config.json, model.safetensors (q/k in HF's layout, no lm_head when
    tied), generation_config.json (eos = the tokenizer's stop ids, so vLLM and lm-eval stop at the end
    of a turn), and the tokenizer's files when there is one. dtype: default the model's. -> paths written."""
    dtype = dtype or model.tok_embeddings.weight.dtype
    if dtype not in _DTYPE_STR:
        raise ValueError(f"save_hf: dtype {dtype} is not supported; choose from {list(_DTYPE_STR.values())}")
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    paths = [os.path.join(directory, name) for name in (WEIGHTS, CONFIG, GENERATION)]
    write_safetensors(paths[0], meta_to_hf(state, model.args))
    if os.path.exists(os.path.join(directory, INDEX)):  # a stale index would shadow the new file
        os.remove(os.path.join(directory, INDEX))
    config = hf_config(model.args, tokenizer, dtype)
    atomic_write_text(paths[1], json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    atomic_write_text(paths[2], json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_hf(directory)
    return paths
