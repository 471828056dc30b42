"""Faster Linear kernels for the compiled CPU decode step, swapped into a model only for that step, as
gpt-fast's quantize.py swaps its modules in.

torch's fp32 F.linear on CPU calls MKL, whose kernels stream the weights well below the speed the
memory can deliver them on the CPUs we measured (bench/roofline.py; README, "Measured figures").
Decoding is little but streaming the weights, so inside a compiled, no-grad, fp32 CPU graph
DecodeLinear takes one of two other kernels, chosen per call:
  - one row (batch 1): the matrix-vector product written as (x * W).sum(-1), which inductor turns into
    one vectorised loop that reads each weight once;
  - more rows: oneDNN's linear, on a copy of the weight reordered once into oneDNN's blocked layout
    (srlm::onednn_linear, a custom op, so the packed copy never enters the compiled graph).
Anywhere else (eager code, gradients, other dtypes or devices) it is nn.Linear.

    with decode_linears(model):   # every nn.Linear of the model is a DecodeLinear inside, and back after
        logits = compiled_step(model, ...)

Generation kernels (generate's `kernels`, eager or compiled, prefill and decode alike), because torch's fp32
matmul goes to MKL, which runs far below this CPU's peak on the generation's shapes (a few dozen rows by a
few hundred columns), while oneDNN has kernels for this CPU's AVX-512 and AVX-512 BF16:
  - "onednn": fp32 oneDNN on the packed weight; the same products summed in another order, so equal to
    F.linear to float rounding (tests/test_cpu_decode.py), not bit for bit;
  - "bf16": the blocks' Linear layers take bf16 inputs and a bf16 copy of the weight (fp32 accumulation
    inside oneDNN, bf16 out, back to fp32), the output layer stays fp32 oneDNN so that the logits are not
    rounded to bf16's 8 bits; a change of numerics, opt-in.
    with generation_linears(model, "bf16"): ...

Imports: torch alone.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.weak

HAS_ONEDNN = torch.backends.mkldnn.is_available()
_onednn_weights = torch.utils.weak.WeakIdKeyDictionary()  # weight -> (source, its _version then, packed copy)


_bf16_weights = torch.utils.weak.WeakIdKeyDictionary()  # weight -> (source, its _version then, bf16 copy)
KERNELS = ("default", "onednn", "bf16")


def _derived(table, weight: torch.Tensor, make) -> torch.Tensor:
    """make(weight), kept in table and made again whenever weight has changed: in place (an optimiser
    step or load_state_dict bumps _version) or by a new .data (a new storage; the entry holds the old
    one, so its address cannot be reused meanwhile). It costs the weight's memory again while weight lives."""
    entry = table.get(weight)
    if entry is None or entry[0].data_ptr() != weight.data_ptr() or entry[1] != weight._version:
        source = weight.detach()
        entry = (source, source._version, make(source))
        table[weight] = entry
    return entry[2]


def _onednn_packed(weight: torch.Tensor) -> torch.Tensor:
    """The oneDNN-packed copy of weight (see _derived)."""
    return _derived(_onednn_weights, weight, torch.ops.mkldnn._reorder_linear_weight)


def _bf16_copy(weight: torch.Tensor) -> torch.Tensor:
    return _derived(_bf16_weights, weight, lambda w: w.to(torch.bfloat16))


@torch.library.custom_op("srlm::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN (CPU, fp32, no autograd). A custom op, so inductor calls it as one
    opaque kernel and the packed weight never enters the compiled graph."""
    return torch.ops.mkldnn._linear_pointwise(x, _onednn_packed(weight), None, "none", [], "")


@onednn_linear.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class DecodeLinear(nn.Linear):
    """nn.Linear that takes the kernels above inside a compiled no-grad CPU fp32 graph."""

    def forward(self, x):
        w = self.weight
        if (torch.compiler.is_compiling() and self.bias is None and x.device.type == "cpu"
                and x.dtype == w.dtype == torch.float32 and not torch.is_grad_enabled() and HAS_ONEDNN):
            if x.numel() == x.shape[-1]:  # a single row: matrix-vector
                return (x.unsqueeze(-2) * w).sum(-1)
            return onednn_linear(x, w)
        return F.linear(x, w, self.bias)


def _generation_ok(lin: nn.Linear, x: torch.Tensor) -> bool:
    """The generation kernels' conditions: CPU, fp32, no autograd, oneDNN present."""
    w = lin.weight
    return (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and HAS_ONEDNN
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)))


def _plus_bias(y: torch.Tensor, bias) -> torch.Tensor:
    return y if bias is None else y + bias


class OneDNNLinear(nn.Linear):
    """nn.Linear by fp32 oneDNN on the packed weight wherever _generation_ok holds (eager or compiled)."""

    def forward(self, x):
        if _generation_ok(self, x):
            return _plus_bias(onednn_linear(x, self.weight), self.bias)
        return F.linear(x, self.weight, self.bias)


class BF16Linear(nn.Linear):
    """nn.Linear on bf16 inputs and a bf16 copy of the weight wherever _generation_ok holds, fp32 out."""

    def forward(self, x):
        if _generation_ok(self, x):
            return _plus_bias(F.linear(x.to(torch.bfloat16), _bf16_copy(self.weight)).float(), self.bias)
        return F.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def _swapped(modules, cls_of):
    """Each module's class is cls_of(module) inside the block (None: unchanged), its own class after."""
    old = [(m, m.__class__) for m in modules]
    for m, _ in old:
        m.__class__ = cls_of(m) or m.__class__
    try:
        yield
    finally:
        for m, c in old:
            m.__class__ = c


def generation_linears(model: nn.Module, kernels: str = "default"):
    """The model's plain nn.Linear layers on the generation kernels of the module docstring inside the
    block ("default": unchanged), with model.output on fp32 oneDNN under "bf16". Only classes change."""
    if kernels not in KERNELS:
        raise ValueError(f"generation kernels {kernels!r}: expected one of {KERNELS}")
    if kernels == "default" or not HAS_ONEDNN:
        return contextlib.nullcontext(model)
    output = getattr(model, "output", None)
    pick = {"onednn": lambda m: OneDNNLinear,
            "bf16": lambda m: OneDNNLinear if m is output else BF16Linear}[kernels]
    return _swapped([m for m in model.modules() if type(m) is nn.Linear], pick)


@contextlib.contextmanager
def decode_linears(model: nn.Module):
    """Every plain nn.Linear of `model` is a DecodeLinear inside the block, and nn.Linear again after. Only
    the class changes: the same modules, the same Parameters (tied weights and optimisers unaffected)."""
    swapped = [m for m in model.modules() if type(m) is nn.Linear]
    for m in swapped:
        m.__class__ = DecodeLinear
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
