"""cpu_decode.py: the compiled CPU decode kernels equal F.linear, take the kernel they are meant to, and
are swapped in and out without touching the model's parameters."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cpu_decode as D
import model as M


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("rows", [1, 5])
def test_compiled_cpu_linear_takes_its_kernel_and_equals_f_linear(rows):
    """Compiled, no grad, CPU fp32: one row is a fused multiply-sum (no matmul call in the generated
    code), more rows call srlm::onednn_linear; both equal F.linear. After an in-place update of the
    weight (what an optimiser step does), or a new .data, the oneDNN copy is packed again, not reused stale."""
    from torch._inductor.utils import run_and_get_code
    torch.manual_seed(0)
    lin = D.DecodeLinear(48, 40, bias=False)
    x = torch.randn(rows, 1, 48)
    f = torch.compile(lin, dynamic=False)
    with torch.no_grad():
        y, code = run_and_get_code(f, x)
        code = "\n".join(code)
        assert torch.allclose(y, torch.nn.functional.linear(x, lin.weight), atol=1e-5)
        if rows == 1:
            assert "onednn_linear" not in code and "extern_kernels.mm" not in code
        else:
            assert "onednn_linear" in code
        lin.weight.mul_(-2)
        assert torch.allclose(f(x), -2 * y, atol=1e-5)
        fresh = torch.randn(40, 48)  # a new .data: version 0 again, new storage
        lin.weight.data = fresh
        assert torch.allclose(f(x), torch.nn.functional.linear(x, fresh), atol=1e-5)
    y_grad = f(x)  # with grad: plain F.linear, differentiable
    y_grad.sum().backward()
    assert torch.allclose(lin.weight.grad, x.sum((0, 1)).expand(40, 48))


def test_decode_linears_swaps_every_linear_in_and_back():
    m = M.Transformer(M.preset("toy"))  # tied embeddings
    params = {n: p for n, p in m.named_parameters()}
    n_linear = sum(type(x) is nn.Linear for x in m.modules())
    assert n_linear == 7 * m.args.n_layers + 1  # wq wk wv wo w1 w2 w3 per block, and the output layer
    with D.decode_linears(m):
        assert sum(type(x) is D.DecodeLinear for x in m.modules()) == n_linear
        assert not any(type(x) is nn.Linear for x in m.modules())
    assert sum(type(x) is nn.Linear for x in m.modules()) == n_linear
    assert all(p is params[n] for n, p in m.named_parameters()) and m.output.weight is m.tok_embeddings.weight


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("kernels,rtol", [("onednn", 1e-5), ("bf16", 2e-2)])
def test_generation_linears_equal_f_linear_to_their_tolerance_and_swap_back(kernels, rtol):
    """Under generation_linears every Linear of the model takes the kernel asked for (the output layer fp32
    oneDNN under bf16), equals F.linear to the kernel's tolerance (bf16: its 8-bit mantissa), and is plain
    nn.Linear again after. With autograd on a trainable weight it is F.linear exactly."""
    torch.manual_seed(0)
    m = M.Transformer(M.preset("toy"))
    m.init_weights(seed=0)
    lin, out = m.layers[0].feed_forward.w1, m.output
    x = torch.randn(3, 5, lin.in_features)
    with torch.no_grad():
        want_lin, want_out = F.linear(x, lin.weight), F.linear(x, out.weight)
        with D.generation_linears(m, kernels):
            assert type(lin) is (D.BF16Linear if kernels == "bf16" else D.OneDNNLinear)
            assert type(out) is D.OneDNNLinear
            got_lin, got_out = lin(x), out(x)
    for got, want in ((got_lin, want_lin), (got_out, want_out)):
        assert got.dtype == torch.float32
        err = (got - want).abs().max() / want.abs().max()
        assert err < rtol and (kernels == "onednn" or got is got_out or err > 1e-6)  # bf16 really is bf16
    with D.generation_linears(m, kernels):
        y = lin(x)
        assert torch.equal(y, F.linear(x, lin.weight)) and y.requires_grad
    assert sum(type(x) is nn.Linear for x in m.modules()) == 7 * m.args.n_layers + 1
    with pytest.raises(ValueError, match="generation kernels"):
        D.generation_linears(m, "fp8")
