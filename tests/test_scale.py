"""The pieces that take the loop to 70B, on CPU: checkpoints loaded slice by slice (every rank reads only
its own shard, and its peak memory shows it), tensor-parallel decoding through DTensor, activation
checkpointing, and the memory plan, whose activation count is checked against what autograd saves.

Two ranks run on gloo (torch.multiprocessing spawn), as in test_fsdp.py. Loading copies and casts
values, so a shard must equal the 1-process load exactly. Tensor-parallel logits add each block's
partial sums in another order (an all-reduce of 2 halves), so they get 1e-5; greedy tokens must match.
"""
import json
import os

import pytest
import torch

import checkpoint
import dpo
import generate
import hf
import plan
import sharding
from checkpoint import load_model
from model import Transformer, preset
from helpers import spawn_ranks
from test_hf import known_model, write_hf_folder

# An odd vocabulary, so that FSDP's shards of the embedding are uneven (255 and 254 rows); GQA; q/k/v biases.
ODD = dict(vocab_size=509, hidden_dim=98, n_kv_heads=2, qkv_bias=True)


def write_meta_shards(m: Transformer, directory: str, n: int = 2):
    """Meta's model-parallel layout written by hand: wq/wk/wv/w1/w3/output and the embedding split on
    dim 0 (Llama 3), wo/w2 on dim 1, norms in every shard."""
    os.makedirs(directory, exist_ok=True)
    split0 = ("wq", "wk", "wv", "w1", "w3", "output", "tok_embeddings")
    shards = [{} for _ in range(n)]
    for key, t in m.state_dict().items():
        name = key.split(".")[-2]
        parts = (t.chunk(n, 0) if name in split0 else t.chunk(n, 1) if name in ("wo", "w2") else [t] * n)
        for s, p in zip(shards, parts):
            s[key] = p.clone()
    for i, s in enumerate(shards):
        torch.save(s, os.path.join(directory, f"consolidated.{i:02d}.pth"))
    params = {k: v for k, v in vars(m.args).items() if k not in ("dropout",)}
    with open(os.path.join(directory, "params.json"), "w") as f:
        json.dump(params, f)


def test_lazy_slices_equal_the_whole_load(tmp_path):
    """Every row range and column range of every tensor, read slice-wise, equals the same slice of the
    whole load: a Hugging Face folder over 2 files (q/k un-permuted within the heads a range touches,
    biases too) and a Meta folder of 2 model-parallel shards."""
    m = known_model(**ODD)
    write_hf_folder(m, str(tmp_path / "hf"), torch.bfloat16, shards=2, arch="Qwen2ForCausalLM")
    write_meta_shards(m, str(tmp_path / "meta"))
    gen = torch.Generator().manual_seed(0)
    for folder in ("hf", "meta"):
        path = str(tmp_path / folder)
        full = load_model(path, dtype=torch.float32)[0].state_dict()
        weights = checkpoint.lazy_weights(path)
        assert set(weights.shapes) == {k for k in full if not (k == "output.weight" and m.args.tie_embeddings)}
        for key, shape in weights.shapes.items():
            for dim in range(len(shape)):
                a = int(torch.randint(0, shape[dim], (1,), generator=gen))
                b = int(torch.randint(a, shape[dim] + 1, (1,), generator=gen))
                got = weights.part(key, dim, a, b).float()
                assert torch.equal(got, full[key].narrow(dim, a, b - a)), (folder, key, dim, a, b)


def test_read_rows_reads_only_those_bytes(tmp_path):
    """read_rows against the file's bytes: rows 3:5 of a (6, 4) bf16 tensor are bytes 24:40 of its data."""
    t = torch.arange(24, dtype=torch.bfloat16).view(6, 4)
    hf.write_safetensors(str(tmp_path / "x.safetensors"), {"x": t})
    entry = hf.safetensors_entries(str(tmp_path / "x.safetensors"))["x"]
    assert torch.equal(hf.read_rows(str(tmp_path / "x.safetensors"), entry, 3, 5), t[3:5])
    assert hf.read_rows(str(tmp_path / "x.safetensors"), entry, 2, 2).shape == (0, 4)


# ----------------------------------------------------------------------------- 2 ranks

def _load_worker(rank, world, tmp):
    out = {}
    for folder in ("hf", "meta"):
        model, _ = sharding.load_for_training(f"{tmp}/{folder}", "cpu")
        local = sum(p.to_local().numel() for p in model.parameters())
        state, _ = sharding.full_state(model)  # gathered to rank 0 only
        ref = load_model(f"{tmp}/{folder}")[0]
        out[folder] = {"equal": rank > 0 or all(torch.equal(state[k], v) for k, v in ref.state_dict().items()),
                       "local_fraction": local / ref.num_params()}
    # tensor-parallel greedy decoding against one process, and its logits
    model, _ = sharding.load_for_generation(f"{tmp}/hf", "cpu")
    ref = load_model(f"{tmp}/hf")[0].eval()
    prompts = [list(range(5, 30)), [7, 8, 9], list(range(100, 140))]
    out["tp"] = model.tensor_parallel
    out["tokens"] = generate.generate(model, prompts, 16, temperature=0.0) == generate.generate(ref, prompts, 16, temperature=0.0)
    x = torch.tensor([prompts[0]])
    with torch.no_grad():
        out["logit_diff"] = float((model(x) - ref(x)).abs().max())
    out["local_wq"] = tuple(model.layers[0].attention.wq.weight.to_local().shape)
    # DPO's reference against the policy at step 0 (dropout 0): scored by the FSDP training model
    # itself (what loop.py does) they are equal
    tp_model, policy = model, sharding.load_for_training(f"{tmp}/hf", "cpu")[0]
    pairs = [{"prompt_ids": prompts[i][:5], "chosen_ids": prompts[i][5:12], "rejected_ids": prompts[i][12:]}
             for i in (0, 2)]
    step0 = dpo.batch_logps(policy.train(), pairs, "dpo", torch.device("cpu"))[0].detach()  # (4,)
    for name, scorer in (("ref_fsdp", policy), ("ref_tp", tp_model)):
        refs = dpo.compute_reference_logps(scorer, [dict(p) for p in pairs], max_len=64)
        ref = torch.tensor([r["ref_chosen"] for r in refs] + [r["ref_rejected"] for r in refs])
        out[name] = float((step0.double() - ref).abs().max())
    # activation checkpointing under FSDP: the same gradients
    grads = []
    for ac in (False, True):
        model, _ = sharding.load_for_training(f"{tmp}/meta", "cpu")
        model.checkpoint_blocks = ac
        model.train()
        loss = model(torch.tensor([prompts[0], prompts[2][:25]])).float().logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
    out["ac_grad_diff"] = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    with open(f"{tmp}/result{rank}.json", "w") as f:
        json.dump(out, f)


def test_two_ranks_load_their_shards_and_decode_tensor_parallel(tmp_path, capsys):
    m = known_model(**ODD)
    write_hf_folder(m, str(tmp_path / "hf"), torch.bfloat16, shards=2, arch="Qwen2ForCausalLM")
    write_meta_shards(m.to(torch.bfloat16).float(), str(tmp_path / "meta"))
    spawn_ranks(_load_worker, 2, str(tmp_path))
    for rank in range(2):
        r = json.load(open(tmp_path / f"result{rank}.json"))
        for folder in ("hf", "meta"):
            assert r[folder]["equal"], folder  # the shards gathered are the 1-process load, exactly
            assert abs(r[folder]["local_fraction"] - 0.5) < 0.02, r[folder]  # and each rank holds about half
        assert r["tp"] == 2 and r["local_wq"] == [m.args.n_heads * m.args.head_dim // 2, m.args.dim]
        assert r["tokens"], "tensor-parallel greedy tokens differ from one process"
        assert r["logit_diff"] < 1e-5, r["logit_diff"]
        assert r["ac_grad_diff"] == 0.0, r["ac_grad_diff"]  # the recomputed forward is the same computation
        # the training model scores the reference as it scores the policy at step 0: exactly. The TP copy
        # adds in another order (and is bf16 on CUDA): within rounding here, not exactly in general
        assert r["ref_fsdp"] == 0.0 and r["ref_tp"] < 1e-4, (r["ref_fsdp"], r["ref_tp"])
    with capsys.disabled():
        print(f"\n  TP on 2 ranks against 1 process: greedy tokens equal, max |logit difference| {r['logit_diff']:.1e}")


MEM_ARGS = dict(dim=1024, n_layers=4, n_heads=8, n_kv_heads=8, vocab_size=16384, hidden_dim=2816,
                tie_embeddings=True, max_seq_len=256)


def _rss(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since this process started: spawn starts it afresh; ru_maxrss
    would carry over the parent's peak) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _memory_worker(rank, world, tmp, how):
    before = _rss("VmRSS")
    if how == "sharded":
        model, _ = sharding.load_for_training(f"{tmp}/hf", "cpu")
    else:  # what every rank did before sharded loading: the whole model, then its shard
        model = sharding.shard_model(load_model(f"{tmp}/hf")[0], torch.device("cpu"))
    peak = _rss("VmHWM") - before
    del model
    with open(f"{tmp}/{how}{rank}.json", "w") as f:
        json.dump(peak, f)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_sharded_load_peak_memory_is_half_a_model_per_rank(tmp_path, capsys):
    """A 273 MB (fp32) model stored in bf16: each of 2 ranks peaks at its fp32 half plus one slice in
    flight, well below one fp32 copy; loading it whole on each rank first costs more than a copy."""
    m = Transformer(preset("toy-test", **MEM_ARGS))  # values do not matter here: torch.empty's
    full = sum(p.numel() for p in m.parameters()) * 4
    hf.save_hf(m, None, str(tmp_path / "hf"), dtype=torch.bfloat16)
    del m
    peaks = {}
    for how in ("sharded", "whole"):
        spawn_ranks(_memory_worker, 2, str(tmp_path), how)
        peaks[how] = [json.load(open(tmp_path / f"{how}{r}.json")) for r in range(2)]
    with capsys.disabled():
        print(f"\n  peak RSS per rank above its start, {full / 1e6:.0f} MB fp32 model: sharded "
              f"{[round(p / 1e6) for p in peaks['sharded']]} MB, whole-then-shard {[round(p / 1e6) for p in peaks['whole']]} MB")
    assert max(peaks["sharded"]) < 0.7 * full, peaks
    assert min(peaks["whole"]) > max(peaks["sharded"]), peaks


# ----------------------------------------------------------------------------- activation checkpointing

def test_activation_checkpointing_gives_the_same_gradients_with_dropout():
    """Dropout 0.3: the recomputed blocks must draw the same masks (checkpoint restores the RNG state)."""
    grads = []
    for ac in (False, True):
        m = known_model(**ODD)
        m.args.dropout = 0.3
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.3
        m.train()
        m.checkpoint_blocks = ac
        torch.manual_seed(1)
        m(torch.arange(40).view(2, 20)).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
    m.eval()  # without gradients (generation, scoring) the flag is ignored: the same logits, no recompute
    with torch.no_grad():
        on = m(torch.arange(10).view(1, 10))
        m.checkpoint_blocks = False
        assert torch.equal(on, m(torch.arange(10).view(1, 10)))


# ----------------------------------------------------------------------------- the plan

def _saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while fn runs, parameters and `exclude` aside."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("kw", [dict(n_kv_heads=2), dict(n_kv_heads=4, head_dim=24, hidden_dim=100)])
def test_plan_counts_the_activations_autograd_saves(kw):
    """block_activation_bytes and output_activation_bytes against the storages autograd keeps for a
    bf16 forward (plain causal SDPA, dropout 0), every scored token's fp32 logits included."""
    m = known_model(**kw).to(torch.bfloat16).train()
    B, T = 2, 32
    tokens = torch.randint(0, m.args.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    params = list(m.parameters())
    h = {}

    def blocks():
        h["h"], _ = m.hidden(tokens)
    got = _saved_bytes(blocks, params + [m.rope_cos, m.rope_sin])
    shared = 2 * T * m.args.head_dim // 2 * 4 + B * T * 8  # RoPE's (1, T, hd/2) cos and sin; the token ids
    want = B * T * m.args.n_layers * plan.block_activation_bytes(m.args)
    assert abs(got - shared - want) <= 0.01 * want, (got - shared, want)
    # the output layer on every position: norm, logits in bf16 (not kept) and their fp32 copy (kept)
    got = _saved_bytes(lambda: m.logits(h["h"]).float().logsumexp(-1), params)
    kept = B * T * (plan.output_activation_bytes(m.args) - 2 * m.args.vocab_size)
    assert abs(got - kept) <= 0.01 * kept, (got, kept)


def test_plan_for_llama3_70b_by_hand():
    """The parameter count Meta gives (70.6B) and the states' arithmetic at 8 GPUs, by hand."""
    a = preset("llama3-70b")
    assert round(plan.n_params(a) / 1e9, 2) == 70.55
    block = 8192 * (2 * 8192 + 2 * 1024) + 3 * 8192 * 28672 + 2 * 8192
    assert plan.block_params(a) == block
    p = plan.plan(a, nproc=8, batch=1, seq_len=4096)
    P = 80 * block + 128256 * 8192 * 2 + 8192
    assert p["train"]["AdamW state"] == 8 * P / 8
    assert p["train"]["parameters"] == 4 * P / 8 + 2 * (128256 * 8192 * 2 + 8192 + 2 * block)
    assert p["generation"]["KV cache"] == 2 * 80 * 1 * 128 * 64 * 4096 * 2  # one KV head per GPU at TP 8
    assert p["activations, checkpointed"] < p["activations"] / 10


def test_loop_plan_prints_the_table(capsys):
    import loop
    loop.main(["--plan", "--preset", "llama3-70b", "--nproc", "16", "--batch", "1", "--seq-len", "4096"])
    out = capsys.readouterr().out
    assert "70.55B parameters" in out and "| AdamW state | 35.3 |" in out and "141 GB (H200)" in out
