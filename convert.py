"""Convert a checkpoint: python convert.py SRC DST [--to hf|meta] [--dtype float32|bfloat16|float16]

SRC is anything checkpoint.load_model reads: one of our run's model folders (Meta layout with our tokenizer),
a Meta Llama 3 folder (params.json, consolidated.NN.pth, tokenizer.model), a .gguf file, or a Hugging
Face folder. DST becomes a Hugging Face folder (--to hf, the default: how a trained model leaves the
project, for transformers, vLLM and lm-evaluation-harness) or our own Meta layout (--to meta).

Imports: checkpoint.py (load_model, save_checkpoint) and hf.py (save_hf, read_hf_weights); the tokenizer comes
with load_model and writes its own files.
"""
import argparse
import fnmatch
import os

import torch

from hf import read_hf_weights, save_hf
from checkpoint import load_model, save_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The files a checkpoint of either layout consists of: --force replaces these and nothing else.
CHECKPOINT_FILES = ("params.json", "consolidated.*.pth", "config.json", "generation_config.json", "model.safetensors",
                    "model.safetensors.index.json", "model-*-of-*.safetensors", "tokenizer.json", "tokenizer.model",
                    "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def source_dtype(src: str) -> torch.dtype:
    """The dtype SRC stores its weights in, so a bf16 checkpoint stays bf16; float32 for a GGUF, whose
    quantized weights are dequantized to float32."""
    meta = os.path.join(src, "consolidated.00.pth")
    if os.path.isfile(meta) and os.path.exists(os.path.join(src, "params.json")):
        state = torch.load(meta, map_location="cpu", mmap=True, weights_only=True)
        return next(iter(state.values())).dtype
    if os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
        tensors, _ = read_hf_weights(src)  # memory-mapped: only the headers are read
        return next(iter(tensors.values())).dtype
    return torch.float32  # a GGUF; anything else, load_model reports


def check_destination(dst: str, force: bool):
    """DST must be new or empty; with --force, the checkpoint files already there are removed first, so
    that no stale file (an index, a params.json) shadows the new ones."""
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise SystemExit(f"convert.py: DST {dst!r} exists and is not a directory")
    present = sorted(os.listdir(dst)) if os.path.isdir(dst) else []
    if present and not force:
        raise SystemExit(f"convert.py: DST {dst!r} is not empty ({len(present)} entries); pass --force to write "
                         "into it (its checkpoint files are replaced, other files kept)")
    for name in present:
        if any(fnmatch.fnmatch(name, pattern) for pattern in CHECKPOINT_FILES):
            os.remove(os.path.join(dst, name))
            print(f"removed stale {os.path.join(dst, name)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a checkpoint folder (ours, Meta's, Hugging Face's) or a .gguf file")
    p.add_argument("dst", help="the folder to write")
    p.add_argument("--to", choices=("hf", "meta"), default="hf", help="Hugging Face folder (default) or Meta layout")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weights' dtype (default: the source's; GGUF: float32)")
    p.add_argument("--force", action="store_true", help="write into a non-empty DST")
    a = p.parse_args(argv)
    if not os.path.exists(a.src):
        raise SystemExit(f"convert.py: SRC {a.src!r} does not exist")
    check_destination(a.dst, a.force)
    try:
        dtype = DTYPES[a.dtype] if a.dtype else source_dtype(a.src)
        model, tokenizer = load_model(a.src, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"convert.py: cannot load {a.src}: {e}") from None
    if a.to == "hf":
        save_hf(model, tokenizer, a.dst, dtype)
    else:
        save_checkpoint(model, a.dst, tokenizer)
    print(f"wrote {a.dst} ({'Hugging Face' if a.to == 'hf' else 'Meta'} layout, {str(dtype).split('.')[-1]}, "
          f"{model.num_params() / 1e6:.1f}M parameters):")
    for name in sorted(os.listdir(a.dst)):
        print(f"  {name:32s} {os.path.getsize(os.path.join(a.dst, name)) / 1e6:10.2f} MB")
    if tokenizer is None:
        print(f"note: {a.src} has no tokenizer, so {a.dst} holds weights and config only; add the tokenizer's "
              "files before loading it with a tokenizer")


if __name__ == "__main__":
    main()
