"""GPU-only checks (skipped without CUDA): FlexAttention forward AND backward under torch.compile against
the SDPA path, for the three masks, the CUDA-graph decode step against eager decoding, and the CUDA cache
pool across calls."""
import pytest
import torch

import generate as G
import model as M

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _seq_ids(kind, B, T):
    if kind == "causal":
        return None
    ids = torch.zeros(B, T, dtype=torch.long)
    if kind == "padding":
        for b in range(B):
            ids[b, :7 * b] = -1  # left padding of different lengths
    else:
        ids[:, T // 3:] = 1
        ids[:, 2 * T // 3:] = 2
        ids[-1, -5:] = -1
    return ids.cuda()


@pytest.mark.parametrize("kind", ["causal", "padding", "document"])
def test_flex_forward_and_backward_equal_sdpa_on_cuda(kind):
    torch.manual_seed(0)
    m = M.Transformer(M.preset("toy-test", dim=128, n_heads=4, n_kv_heads=2)).cuda()
    m.init_weights(seed=0)
    B, T = 3, 200
    tokens = torch.randint(0, m.args.vocab_size, (B, T), device="cuda")
    seq_ids = _seq_ids(kind, B, T)
    outs, grads = {}, {}
    for impl in ("sdpa", "flex"):
        m.zero_grad()
        m.attn_impl = impl
        logits = m(tokens, seq_ids=seq_ids)
        logits.float().logsumexp(-1).mean().backward()
        outs[impl] = logits.detach()
        grads[impl] = [p.grad.clone() for p in m.parameters()]
    assert torch.allclose(outs["flex"], outs["sdpa"], atol=2e-4), (outs["flex"] - outs["sdpa"]).abs().max()
    for gf, gs in zip(grads["flex"], grads["sdpa"]):
        assert torch.allclose(gf, gs, atol=2e-4, rtol=1e-3), (gf - gs).abs().max()


def test_compiled_cuda_graph_decode_equals_eager():
    torch.manual_seed(0)
    m = M.Transformer(M.preset("toy-test")).cuda()
    m.init_weights(seed=1, std=0.1)
    m.eval()
    prompts = [[5, 9, 2, 7], [3, 3, 8, 1, 4, 4, 6]]
    eager = G.generate(m, prompts, 12, temperature=0)
    assert G.generate(m, prompts, 12, temperature=0, compile=True) == eager
    assert G.generate(m, prompts, 12, temperature=0, compile=True) == eager  # replays the captured graph


def test_second_eager_call_reuses_the_cuda_cache_pool():
    """The CUDA cache pool once handed a second eager call the caches the first had shrunk in place as
    rows finished, and index_copy_ failed. Rows that stop early (a stop id) shrink the batch mid-decode."""
    torch.manual_seed(0)
    m = M.Transformer(M.preset("toy-test")).cuda()
    m.init_weights(seed=1, std=0.1)
    m.eval()
    prompts = [[5, 9, 2, 7], [3, 3, 8, 1, 4, 4, 6], [2, 4], [7, 1, 1]]
    free = G.generate(m, prompts, 16, temperature=0)
    stop = {free[0][1], free[1][1]}
    first = G.generate(m, prompts, 16, temperature=0, stop_ids=stop)
    assert G.generate(m, prompts, 16, temperature=0, stop_ids=stop) == first
    assert G.generate(m, prompts, 16, temperature=0, stop_ids=stop, num_samples=2) == [o for o in first for _ in range(2)]
    G.free_cache_pool(m)
