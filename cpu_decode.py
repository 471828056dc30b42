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

Imports: torch alone.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.weak

HAS_ONEDNN = torch.backends.mkldnn.is_available()
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
