"""Checkpoints in and out of model.Transformer: Meta's layout (params.json + consolidated.NN.pth), GGUF
files, Hugging Face folders (through hf.py), and presets with random weights, each with its tokenizer.

    model, tokenizer = load_model(path)   # a preset name, a .gguf, a Meta-layout or Hugging Face folder
    save_checkpoint(model, directory, tokenizer)

Imports: torch; from the project model.py (the model), common.py (atomic writes, JSON), and where a
format needs them, hf.py (Hugging Face folders), tokenizer.py and the optional gguf package.
Untrusted .pth files are read with torch.load(weights_only=True): tensors only, never code.
"""
import json
import os
from dataclasses import asdict

import torch

from common import atomic_write, atomic_write_text, read_json_object
from model import PRESETS, ModelArgs, Transformer, preset


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


def split_dim(key: str, shard0: torch.Tensor, n_shards: int, dim: int) -> int | None:
    """The dim a tensor was split on across Meta's model-parallel shards, None if each shard holds all of it
    (the norms; every tensor of a single shard). tok_embeddings are split on the vocab (dim 0) in
    Llama 3 and on the hidden size (dim 1) in Llama 2."""
    name = key.split(".")[-2]
    if n_shards == 1:
        return None
    if name == "tok_embeddings":
        return 1 if shard0.shape[1] * n_shards == dim else 0
    return _SHARD_DIM.get(name)


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


def _load_pth(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises RuntimeError (miniz), UnpicklingError, EOFError... for a damaged file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or damaged "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def check_gguf(path: str):
    """A GGUF file opens with the bytes b'GGUF': refuse anything else, naming the file, before gguf's reader
    (whose errors name no file) sees it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file ({'empty' if not magic else f'starts with {magic!r}, not GGUF'})")


def load_meta_checkpoint(directory: str, device="cpu", dtype=torch.float32):
    """params.json + consolidated.NN.pth (1 or more model-parallel shards, merged) -> Transformer."""
    weights = lazy_meta(directory)
    state = {k: weights.rows[k](0, shape[0]) for k, shape in weights.shapes.items()}
    return build_from_state_dict(weights.args, state, weights.source, device, dtype)


# llama.cpp names -> Meta names. GGUF stores q/k rows in Meta's interleaved RoPE order already.
_GGUF_NAMES = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
               "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def load_gguf(path: str, device="cpu", dtype=torch.float32):
    """A llama-architecture GGUF file (e.g. SmolLM2's Q4_1/Q8_0) -> dequantized fp32 Transformer."""
    import gguf  # optional dependency: reads and dequantizes GGUF files

    check_gguf(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # a truncated file: gguf's own errors name no file
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

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
        return load_gguf(path, device, dtype), load_tokenizer(path)
    _check_exists(path)
    if _is_hf(path):
        import hf  # Hugging Face folders: the reader lives beside the model, not inside it
        return hf.load_hf(path, device, dtype), load_tokenizer(path)
    return load_meta_checkpoint(path, device, dtype), load_tokenizer(path)


def _check_exists(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (expected a preset name, a .gguf file, a directory "
                                f"with params.json or a Hugging Face folder); presets: {sorted(PRESETS)}")


def _is_hf(path: str) -> bool:
    return not os.path.exists(os.path.join(path, "params.json")) and os.path.exists(os.path.join(path, "config.json"))


def load_tokenizer(path: str):
    """The tokenizer that comes with a checkpoint (GGUF metadata, tokenizer.json, tokenizer.model), or None."""
    from tokenizer import Tokenizer
    if path.endswith(".gguf"):
        return Tokenizer.from_gguf(path)
    if _is_hf(path):
        return Tokenizer.from_hf_dir(path) if os.path.exists(os.path.join(path, "tokenizer.json")) else None
    return Tokenizer.from_dir(path) if os.path.exists(os.path.join(path, "tokenizer.model")) else None


# ----------------------------------------------------------------------------- read a slice at a time

class LazyWeights:
    """A checkpoint's tensors under Meta's names and layout, read a slice at a time, so that a rank can
    load its own shard without holding the model (sharding.load_sharded). rows[key](start, stop) gives
    state[key][start:stop]; part(key, dim, start, stop) any dim (other than 0: the tensor is read whole,
    one at a time)."""

    def __init__(self, args: ModelArgs, shapes: dict[str, tuple], rows: dict, source: str):
        self.args, self.shapes, self.rows, self.source = args, shapes, rows, source

    def part(self, key: str, dim: int, start: int, stop: int) -> torch.Tensor:
        if key not in self.rows:
            raise ValueError(f"{self.source}: no tensor {key!r}")
        if dim == 0:
            return self.rows[key](start, stop)
        return self.rows[key](0, self.shapes[key][0]).narrow(dim, start, stop - start)


def lazy_weights(path: str) -> LazyWeights | None:
    """LazyWeights of a Meta folder or a Hugging Face folder; None for what has no slice-wise reader (a
    preset, a GGUF, whose blocks are quantized across rows)."""
    if path in PRESETS or path.endswith(".gguf"):
        return None
    _check_exists(path)
    if _is_hf(path):
        import hf
        return hf.lazy_hf(path)
    return lazy_meta(path)


def _concat_rows(parts: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of torch.cat(parts) without concatenating the rest."""
    out, offset = [], 0
    for p in parts:
        a, b = max(start - offset, 0), min(stop - offset, p.shape[0])
        if a < b:
            out.append(p[a:b])
        offset += p.shape[0]
    return torch.cat(out) if out else parts[0][:0]


def lazy_meta(directory: str) -> LazyWeights:
    """A Meta folder's tensors, its model-parallel shards merged (split_dim) one row range at a time: the
    shards are memory-mapped, so only the pages of the rows asked for are read."""
    params_path = os.path.join(directory, "params.json")
    params = read_json_object(params_path)
    shard_paths = sorted(p for p in os.listdir(directory) if p.startswith("consolidated.") and p.endswith(".pth"))
    if not shard_paths:
        raise FileNotFoundError(f"no consolidated.NN.pth in {directory}")
    shards = [_load_pth(os.path.join(directory, p)) for p in shard_paths]
    rows, shapes = {}, {}
    for key, t0 in shards[0].items():
        parts = [s[key] for s in shards]
        dim = split_dim(key, t0, len(parts), params["dim"])
        if dim is None:
            rows[key], shapes[key] = (lambda a, b, t=t0: t[a:b]), tuple(t0.shape)
        elif dim == 0:
            rows[key] = lambda a, b, ps=parts: _concat_rows(ps, a, b)
            shapes[key] = (sum(p.shape[0] for p in parts), *t0.shape[1:])
        else:
            rows[key] = lambda a, b, ps=parts: torch.cat([p[a:b] for p in ps], dim=1)
            shapes[key] = (t0.shape[0], sum(p.shape[1] for p in parts))
    if params.get("vocab_size", -1) <= 0:
        params["vocab_size"] = shapes["tok_embeddings.weight"][0]
    if "tie_embeddings" not in params:
        params["tie_embeddings"] = "output.weight" not in shapes
    args = ModelArgs.from_params(params, source=params_path)
    source = f"{directory}/{shard_paths[0]}"
    with torch.device("meta"):
        _check_shapes(Transformer(args), {k: torch.empty(v, device="meta") for k, v in shapes.items()}, source)
    return LazyWeights(args, shapes, rows, source)
