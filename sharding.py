"""Models for training and the stages around it: loaded, sharded with FSDP2 or laid out for tensor
parallelism under torchrun, and saved.

    model, tok = load_for_training(ckpt, device)    # plain in one process, FSDP2-sharded under torchrun
    model, tok = load_for_generation(ckpt, device)  # tensor-parallel under torchrun, for forwards only
    save_final(model, out, tok)                      # Meta layout; under FSDP gathered to rank 0 first

FSDP2 as torchtitan does it: each TransformerBlock is a unit, then the root takes the rest. Tensor
parallelism through DTensor's parallelize_module, as gpt-fast's tp.py and torchtitan lay it out. Either
way the model is built on the meta device, laid out, and each rank then reads its own slice of each
weight from the checkpoint (load_sharded): no rank holds the whole model.

Imports: torch (FSDP2, DTensor, distributed state dicts); from the project checkpoint.py (reading and
writing weights, slice by slice), model.py (the model on the meta device) and common.py (rank, log).
"""
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.tensor import DTensor
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from checkpoint import LazyWeights, build_from_state_dict, lazy_weights, load_model, load_tokenizer, save_checkpoint
from common import barrier, ceil_div, log, rank_world
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


def tensor_parallel(model: Transformer, device: torch.device):
    """Megatron's tensor parallelism through DTensor, as gpt-fast's tp.py and torchtitan lay it out:
    wq/wk/wv and w1/w3 split by output rows (column-wise), wo and w2 by input columns (row-wise), so each
    rank keeps its own heads and its slice of the MLP, and each block costs two all-reduces (after wo
    and after w2) of the (B, T, dim) activations. Embedding, norms and output stay whole on every rank.
    Every rank then runs the same batch: generate_many and score_examples read model.tensor_parallel
    and split no rows across the ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    tp = dist.get_world_size()
    if not tp_divides(model.args, tp):
        a = model.args
        raise ValueError(f"tensor parallelism over {tp} ranks needs n_heads ({a.n_heads}), n_kv_heads "
                         f"({a.n_kv_heads}) and hidden_dim ({a.hidden_dim}) divisible by {tp}")
    mesh = init_device_mesh(device.type, (tp,))
    plan = {"attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(), "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(), "feed_forward.w2": RowwiseParallel()}
    for layer in model.layers:
        parallelize_module(layer, mesh, plan)
        layer.attention.n_heads //= tp  # the views in Attention.forward see this rank's heads only
        layer.attention.n_kv_heads //= tp
    model.tensor_parallel = tp
    return model


def tp_divides(a, tp: int) -> bool:
    """Whether each rank gets whole heads and an equal share of the MLP (DTensor's from_local, which the
    row-wise layers use, takes equal shards)."""
    return not (a.n_heads % tp or a.n_kv_heads % tp or a.hidden_dim % tp)


def load_for_generation(ckpt: str, device):
    """(model, tokenizer) for the stages that only run forwards (sampling, judging, reference log-probs):
    under torchrun, tensor-parallel (tensor_parallel), loaded slice by slice from the checkpoint, so the
    weights move into this layout once per stage, not once per token as FSDP's all-gathers would. A
    model that the ranks do not divide (tp_divides), a preset or a GGUF, goes to load_for_training."""
    device = torch.device(device)
    world = rank_world()[1]
    if world == 1 or ckpt in PRESETS or ckpt.endswith(".gguf"):
        return load_for_training(ckpt, device)
    weights = lazy_weights(ckpt)
    if not tp_divides(weights.args, world):
        log(f"{ckpt}: the heads or the MLP do not divide by {world} ranks; generating on the FSDP shards")
        return load_for_training(ckpt, device)
    log(f"{ckpt}: loaded tensor-parallel over {world} ranks for the forward-only stages")
    model = load_sharded(weights, device, tensor_parallel)
    if device.type == "cuda":  # bf16 weights on GPUs, as FSDP's MixedPrecisionPolicy computes in training
        model.to(torch.bfloat16)
    return model, load_tokenizer(ckpt)


def load_for_training(ckpt: str, device, seed: int = 0):
    """(model, tokenizer) in fp32 master weights. Under torch.distributed the model is FSDP2-sharded and
    no rank ever holds all of it: a preset is built on the meta device, sharded, then initialised shard
    by shard; a Meta or Hugging Face folder is loaded shard by shard (load_sharded). A GGUF, whose
    quantized blocks have no row-wise reader, is loaded whole on each rank (the OS shares its mapped
    pages) and then sharded."""
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
    if ckpt.endswith(".gguf"):
        model, tok = load_model(ckpt, device="cpu")
        return shard_model(model, device), tok
    return load_sharded(lazy_weights(ckpt), device, shard_model), load_tokenizer(ckpt)


def load_sharded(weights: LazyWeights, device, parallelize) -> Transformer:
    """Build the model on the meta device, lay it out with parallelize(model, device) (shard_model for
    FSDP2, tensor_parallel for TP), then fill each rank's own slice of each weight from the checkpoint
    (checkpoint.lazy_weights: a Hugging Face folder reads just those bytes, a Meta folder maps its
    shards and touches just those pages), cast to fp32 slice by slice."""
    with torch.device("meta"):
        model = Transformer(weights.args)
    parallelize(model, torch.device(device))
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied output is the embedding: filled once
            local, dim, start, stop = local_slice(p)
            src = weights.part(name, dim, start, stop)
            if tuple(src.shape) != tuple(local.shape):
                raise ValueError(f"{weights.source}: {name} slice {start}:{stop} on dim {dim} has shape "
                                 f"{tuple(src.shape)}, the model's shard {tuple(local.shape)}")
            local.copy_(src)
    model.init_rope()
    return model


def local_slice(p):
    """(this rank's tensor of p, dim, start, stop): the slice p[start:stop] along dim of the full weight
    that it holds (all rows of dim 0 when it holds the whole weight). DTensor's Shard(d) on a 1-D mesh
    splits as torch.chunk does: ceil(n / ranks) rows each."""
    if not isinstance(p, DTensor):
        return p, 0, 0, p.shape[0]
    (placement,) = p.placements
    if not placement.is_shard():
        return p.to_local(), 0, 0, p.shape[0]
    dim, n = placement.dim, p.shape[placement.dim]
    size = ceil_div(n, p.device_mesh.size())
    start = min(p.device_mesh.get_local_rank() * size, n)
    return p.to_local(), dim, start, min(start + size, n)


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
