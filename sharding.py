"""Models for training and the stages around it: loaded, sharded with FSDP2 under torchrun, and saved.

    model, tok = load_for_training(ckpt, device)   # plain in one process, FSDP2-sharded under torchrun
    save_final(model, out, tok)                     # Meta layout; under FSDP gathered to rank 0 first

FSDP2 as torchtitan does it: each TransformerBlock is a unit, then the root takes the rest.

Imports: torch (FSDP2, distributed state dicts); from the project checkpoint.py (reading and writing
weights), model.py (building a preset on the meta device) and common.py (the rank).
"""
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from checkpoint import build_from_state_dict, load_model, save_checkpoint
from common import barrier, rank_world
from model import PRESETS, Transformer, preset


def shard_model(model: Transformer, device: torch.device):
    """FSDP2 as torchtitan does it: each TransformerBlock is a unit (its params are all-gathered just
    for its forward/backward), then the root takes the rest. bf16 compute with fp32 gradient reduction
    on GPU; fp32 on CPU (gloo). Transformer.hidden is a forward too (packing.py and generate.py call it,
    then Transformer.logits on the rows they pick): registered, so the root's parameters are gathered
    for it, and stay gathered for the logits, as the root's are after any forward."""
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "hidden")
    return model


def load_for_training(ckpt: str, device, seed: int = 0):
    """(model, tokenizer) in fp32 master weights. Under torch.distributed: a preset is built on the meta
    device, sharded, then initialised shard by shard (no rank ever holds the whole model); a checkpoint
    is mmap-loaded by every rank (the OS shares the pages) and then sharded."""
    device = torch.device(device)
    if rank_world()[1] == 1:
        return load_model(ckpt, device=device, seed=seed)
    if ckpt in PRESETS:
        with torch.device("meta"):
            model = Transformer(preset(ckpt))
        shard_model(model, device)
        model.to_empty(device=device)
        model.init_weights(seed=seed)  # DTensor RNG: values differ from a 1-process init of the same seed
        return model, None
    model, tok = load_model(ckpt, device="cpu")
    return shard_model(model, device), tok


def full_state(model, opt=None):
    """Full (unsharded) state dicts, gathered to CPU; identical API for plain and FSDP models."""
    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=o), (get_optimizer_state_dict(model, opt, options=o) if opt else None)


def weights_finite(model) -> bool:
    """Whether every weight is finite, over all ranks' shards (a collective under torchrun)."""
    ok = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()) for p in model.parameters())
    flag = torch.tensor(int(ok), device=next(model.parameters()).device)
    if rank_world()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def save_final(model, out: str, tokenizer=None):
    """Meta-layout checkpoint in `out` (checkpoint.save_checkpoint); under FSDP, gathered to rank 0 first.
    Weights that are not all finite are never saved: FloatingPointError."""
    if not weights_finite(model):
        raise FloatingPointError(f"{out}: the weights are not all finite (NaN or inf); nothing is saved")
    if not isinstance(model, FSDPModule):
        save_checkpoint(model, out, tokenizer)
        return
    state, _ = full_state(model)
    if rank_world()[0] == 0:
        save_checkpoint(build_from_state_dict(model.args, state, "gathered FSDP state"), out, tokenizer)
    barrier()
