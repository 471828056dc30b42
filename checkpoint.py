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
    """params.json + consolidated.NN.pth (1 or more model-parallel shards) -> Transformer."""
    params_path = os.path.join(directory, "params.json")
    params = read_json_object(params_path)
    shard_paths = sorted(p for p in os.listdir(directory) if p.startswith("consolidated.") and p.endswith(".pth"))
    if not shard_paths:
        raise FileNotFoundError(f"no consolidated.NN.pth in {directory}")
    shards = [_load_pth(os.path.join(directory, p)) for p in shard_paths]
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
