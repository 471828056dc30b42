"""Tests for dpo.py: the math against hand-computed values or slow loops, the data path, reference
log-probs, and the training loop (accumulation, resume, checkpoints, NaN stop)."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import dpo
from model import Transformer, load_model, preset


class ByteTok:
    """A byte-level stand-in with the Tokenizer methods dpo.py uses, so these tests do not depend on
    tokenizer.py. ids 0..255 are bytes; 256 pad, 257 bos, 258 eos, 259 end-of-turn."""
    pad_id, bos_id, eos_id, eot_id, n_words = 256, 257, 258, 259, 260
    stop_ids = {258, 259}

    def encode(self, text, bos=False, eos=False):
        return [257] * bos + list(text.encode()) + [258] * eos

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def encode_chat_prompt(self, user):
        return [257] + list(f"U:{user}\nA:".encode())

    def encode_chat_response(self, response):
        return list(response.encode()) + [259]

    def save(self, directory):
        with open(os.path.join(directory, "bytetok.txt"), "w") as f:
            f.write("byte-level stand-in\n")


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(preset("toy-test", **kw))
    m.init_weights(seed=seed)
    return m


def sft_data(n=8, seed=0):
    import random
    rng = random.Random(seed)
    return [{"prompt": f"q{i} " + "x" * rng.randrange(1, 6), "response": f"a{i}" + "y" * rng.randrange(0, 9)}
            for i in range(n)]


def dpo_data(n=8, seed=0):
    return [{"prompt": f"say {i}", "chosen": f"good {i}" + "!" * (i % 3), "rejected": f"bad{i % 4}"}
            for i in range(n)]


# ----------------------------------------------------------------------------- math

def test_sequence_logps_matches_python_loop():
    torch.manual_seed(0)
    B, T, V = 3, 7, 5
    logits, labels = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 2:6], mask[1, 1:7], mask[2, 4:5] = True, True, True  # prompt before, padding after
    total, average = dpo.sequence_logps(logits, labels, mask), dpo.sequence_logps(logits, labels, mask, average=True)
    for b in range(B):
        s, n = 0.0, 0
        for t in range(1, T):
            if mask[b, t]:
                row = [float(x) for x in logits[b, t - 1]]
                s += row[labels[b, t]] - math.log(sum(math.exp(x) for x in row))
                n += 1
        assert total[b].item() == pytest.approx(s, abs=1e-5)
        assert average[b].item() == pytest.approx(s / n, abs=1e-5)


def test_prompt_and_padding_logits_change_nothing():
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 8, 6), torch.randint(0, 6, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 3:6] = True  # positions 2..5 predict scored tokens; 0,1 (prompt) and 6,7 (padding) do not
    other = logits.clone()
    other[:, [0, 1, 6, 7]] = 100 * torch.randn(2, 4, 6)
    assert torch.equal(dpo.sequence_logps(logits, labels, mask), dpo.sequence_logps(other, labels, mask))
    # ... and through DPO: pairs = rows (0 chosen, 1 rejected)
    lp, lo = dpo.sequence_logps(logits, labels, mask), dpo.sequence_logps(other, labels, mask)
    zero = torch.zeros(1)
    assert dpo.dpo_loss(lp[:1], lp[1:], zero, zero)[0] == dpo.dpo_loss(lo[:1], lo[1:], zero, zero)[0]


def _sig(x):
    return 1 / (1 + math.exp(-x))


PI_C, PI_R, REF_C, REF_R = [-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -2.0]  # h = [2, -1]


def _pairs():
    return tuple(torch.tensor(x) for x in (PI_C, PI_R, REF_C, REF_R))


def test_dpo_loss_hand_values():
    loss, m = dpo.dpo_loss(*_pairs(), beta=0.5)
    # h = (pi_c - pi_r) - (ref_c - ref_r) = [2, -1]; loss = mean(-log sigmoid(0.5 h))
    assert loss.item() == pytest.approx((-math.log(_sig(1.0)) - math.log(_sig(-0.5))) / 2, abs=1e-6)
    assert m["chosen_reward"].item() == pytest.approx((0.5 * 1 + 0.5 * 0) / 2)  # 0.5*(pi_c - ref_c)
    assert m["rejected_reward"].item() == pytest.approx((0.5 * -1 + 0.5 * 1) / 2)
    assert m["reward_accuracy"].item() == 0.5
    assert m["margin"].item() == pytest.approx((1.0 + -0.5) / 2)


def test_dpo_loss_label_smoothing_ipo_rpo():
    ls, _ = dpo.dpo_loss(*_pairs(), beta=0.5, label_smoothing=0.1)
    want = sum(-0.9 * math.log(_sig(0.5 * h)) - 0.1 * math.log(_sig(-0.5 * h)) for h in (2, -1)) / 2
    assert ls.item() == pytest.approx(want, abs=1e-6)
    ipo, _ = dpo.dpo_loss(*_pairs(), beta=0.5, ipo=True)
    assert ipo.item() == pytest.approx(((2 - 1) ** 2 + (-1 - 1) ** 2) / 2)  # (h - 1/(2 beta))^2
    base, _ = dpo.dpo_loss(*_pairs(), beta=0.5)
    rpo, _ = dpo.dpo_loss(*_pairs(), beta=0.5, nll=torch.tensor([0.5, 1.5]), rpo_alpha=2.0)
    assert rpo.item() == pytest.approx(base.item() + 2.0 * 1.0, abs=1e-6)
    with pytest.raises(ValueError, match="nll"):
        dpo.dpo_loss(*_pairs(), rpo_alpha=1.0)


def test_rpo_nll_is_per_chosen_token():
    cfg = dpo.TrainConfig(mode="dpo", beta=0.5, rpo_alpha=1.0)
    pc, pr, rc, rr = _pairs()
    nc = torch.tensor([4.0, 2.0])
    loss, _ = dpo._dpo_terms(pc, pr, rc, rr, nc, nc, cfg)
    base, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(base.item() + (1 / 4 + 2 / 2) / 2, abs=1e-6)


def test_sft_loss_hand_values():
    logits = torch.zeros(2, 5, 4)  # uniform over 4 words: every token costs log 4
    labels = torch.randint(0, 4, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert dpo.sft_loss(logits, labels, mask).item() == pytest.approx(math.log(4))
    assert dpo.sft_loss(logits, labels, mask, n_tokens=10).item() == pytest.approx(5 * math.log(4) / 10)


def test_lr_schedules():
    assert dpo.lr_at(0, 5, 1.0, 0.1) == pytest.approx(1.0)
    assert dpo.lr_at(1, 5, 1.0, 0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert dpo.lr_at(4, 5, 1.0, 0.1) == pytest.approx(0.1)
    assert dpo.lr_at(1, 5, 1.0, 0.1, schedule="linear") == pytest.approx(1 - 0.9 * 0.25)
    assert dpo.lr_at(3, 5, 1.0, 0.1, schedule="constant") == 1.0
    assert [dpo.lr_at(s, 6, 1.0, 0.0, warmup=2, schedule="linear") for s in range(6)] == \
        pytest.approx([0.5, 1.0, 1.0, 2 / 3, 1 / 3, 0.0])


# ----------------------------------------------------------------------------- data

def test_load_jsonl_errors_name_file_line_field(tmp_path):
    p = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    cases = {"{not json": "invalid JSON",
             json.dumps({"prompt": "a", "chosen": "b"}): "missing field 'rejected'",
             json.dumps({"prompt": 3, "chosen": "b", "rejected": "c"}): "field 'prompt' must be a string",
             json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "ref_chosen": -1.0}): "'ref_rejected'"}
    for bad, msg in cases.items():
        p.write_text(good + "\n\n" + bad + "\n")
        with pytest.raises(ValueError) as e:
            dpo.load_jsonl(str(p), "dpo")
        assert f"{p}:3:" in str(e.value) and msg in str(e.value)
    p.write_text(good + "\n")
    assert dpo.load_jsonl(str(p), "dpo") == [json.loads(good)]


def test_tokenize_chat_format_mask_and_truncation(capsys):
    tok = ByteTok()
    ex = dpo.tokenize([{"prompt": "hi", "response": "yo"}], tok, "sft", max_len=64)[0]
    assert ex["prompt_ids"] == tok.encode_chat_prompt("hi") and ex["response_ids"] == [ord("y"), ord("o"), 259]
    b = dpo.collate([ex], "sft")
    n_p = len(ex["prompt_ids"])
    assert b.loss_mask[0].tolist() == [False] * n_p + [True] * 3
    # 60-token prompt + 20-token response into 40: the prompt keeps its last 20 tokens (max_len // 2)
    long = {"prompt": "p" * 50 + "END", "response": "r" * 19}
    cut = dpo.tokenize([long, {"prompt": "ok", "response": "ok"}], tok, "sft", max_len=40)
    assert len(cut[0]["prompt_ids"]) == 20 and tok.decode(cut[0]["prompt_ids"]).endswith("END\nA:")
    assert cut[0]["response_ids"] == tok.encode_chat_response("r" * 19)  # fits: 20 + 20
    assert "1/2 sft examples truncated" in capsys.readouterr().out
    p, (c, r), was_cut = dpo.truncate(list(range(10)), [list(range(30)), [1]], max_len=20)
    assert was_cut and p == list(range(10)) and c == list(range(10)) and r == [1]  # prompt keeps max_len // 2
    p, (c,), was_cut = dpo.truncate(list(range(30)), [list(range(5))], max_len=20)
    assert was_cut and p == list(range(15, 30)) and c == list(range(5))  # prompt cut first, its end kept


def test_pack_documents_and_masks():
    rows = dpo.pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert [r["ids"] for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert [r["seq_ids"] for r in rows] == [[0, 0, 0, 1], [0, 1, 1, 1], [0, -1, -1, -1]]
    mask = dpo.collate(rows, "pretrain").loss_mask.tolist()
    assert mask == [[False, True, True, False], [False, False, True, True], [False] * 4]


def test_packed_documents_do_not_attend_across():
    m = tiny_model().eval()
    a, b = [5, 6, 7, 8, 9], [10, 11, 12]
    row = dpo.collate(dpo.pack_documents([a, b], 8), "pretrain")
    packed = m(row.tokens, seq_ids=row.seq_ids)[0, 5:]
    alone = m(torch.tensor([b]))[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)  # RoPE is relative: offset is harmless


def test_batch_indices_cover_each_epoch():
    idx = [i for s in range(5) for i in dpo.batch_indices(10, 4, s, seed=3)]  # 20 = two epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10] != idx[10:]


# ----------------------------------------------------------------------------- model-level

def test_dpo_sgd_step_raises_chosen_over_rejected():
    tok, m = ByteTok(), tiny_model(seed=2)
    b = dpo.collate(dpo.tokenize(dpo_data(2), tok, "dpo", 64), "dpo")  # rows: 2 chosen, then 2 rejected

    def logps():
        lp = dpo.sequence_logps(m(b.tokens), b.tokens, b.loss_mask)
        return lp[:2], lp[2:]

    chosen, rejected = logps()
    before = (chosen - rejected).detach()
    loss, _ = dpo.dpo_loss(chosen, rejected, torch.zeros(2), torch.zeros(2))
    loss.backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= 0.5 * p.grad  # one plain SGD step
    chosen, rejected = logps()
    assert (chosen - rejected > before).all()


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters()}


def test_packed_pairs_equal_separate_sequences_values_and_gradients():
    # The trainer packs each pair as prompt | chosen | rejected (prompt once, output layer only where a
    # response token is predicted); it must give the log-probs and gradients of the plain concatenated
    # forward of 2b separate sequences, scored by sequence_logps over the full logits.
    tok, m = ByteTok(), tiny_model(seed=3, dropout=0.0)
    rows = dpo.tokenize(dpo_data(5), tok, "dpo", 64)
    rows[1]["rejected_ids"] = rows[1]["rejected_ids"][:1]  # a one-token response, predicted from the prompt alone
    w = torch.randn(10)  # an arbitrary weighting, so each sequence's gradient counts
    b = dpo.collate(rows, "dpo")
    want = dpo.sequence_logps(m(b.tokens), b.tokens, b.loss_mask)  # (10,)
    (want * w).sum().backward()
    want_g = _grads(m)
    m.zero_grad()
    got, counts, n_real = dpo.batch_logps(m, rows, "dpo", torch.device("cpu"))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert counts.tolist() == b.loss_mask[:, 1:].sum(-1).tolist() and n_real == b.n_real
    (got * w).sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want_g[n], atol=1e-5), n


def test_sft_scored_positions_equal_full_logits_with_shared_prefix():
    # SFT rows sharing a long prefix (as EFT rows share the Fig. 2 prompt) run it once, and the output
    # layer runs only where a response token is predicted: same log-probs and gradients as the full forward.
    tok, m = ByteTok(), tiny_model(seed=4, dropout=0.0)
    head = "x" * 40
    rows = dpo.tokenize([{"prompt": head + str(i), "response": "r" * (i + 1)} for i in range(4)], tok, "sft", 128)
    b = dpo.collate(rows, "sft")
    assert dpo.shared_prefix_len(b.tokens, b.loss_mask) > 32  # the shared-prefix path is taken
    want = dpo.sequence_logps(m(b.tokens), b.tokens, b.loss_mask)
    want.sum().backward()
    want_g = _grads(m)
    m.zero_grad()
    got, counts, _ = dpo.batch_logps(m, rows, "sft", torch.device("cpu"))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    got.sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want_g[n], atol=1e-5), n


def test_precomputed_reference_equals_frozen_copy():
    tok, m = ByteTok(), tiny_model(seed=3)
    frozen = copy.deepcopy(m).eval()
    pairs = dpo.compute_reference_logps(m, dpo_data(5), tok, micro_batch_size=2)
    for p in pairs:
        for name in ("chosen", "rejected"):
            b = dpo.collate([{"prompt_ids": p["prompt_ids"], "response_ids": p[f"{name}_ids"]}], "sft")
            with torch.no_grad():
                want = dpo.sequence_logps(frozen(b.tokens), b.tokens, b.loss_mask).item()
            assert p[f"ref_{name}"] == pytest.approx(want, abs=1e-5)


def test_dpo_precomputed_matches_reference_in_memory():
    tok = ByteTok()
    cfg = dpo.TrainConfig(mode="dpo", steps=4, batch_size=4, micro_batch_size=2, lr=1e-2, dropout=0.1, log_every=100)
    m1, m2 = tiny_model(seed=4), tiny_model(seed=4)
    pre = dpo.compute_reference_logps(m1, dpo_data(8), tok)
    h1 = dpo.train(m1, pre, cfg)
    h2 = dpo.train(m2, dpo_data(8), cfg, tokenizer=tok, ref_model=copy.deepcopy(m2).eval())
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2], abs=1e-5)
    assert h1[-1]["loss"] < h1[0]["loss"]
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_accumulation_does_not_change_the_step():
    """SFT averages over the global batch's tokens: 4 micro-batches of 1 == 1 of 4 (lengths differ)."""
    tok, hs, ms = ByteTok(), [], []
    for mb in (4, 1):
        m = tiny_model(seed=5)
        cfg = dpo.TrainConfig(mode="sft", steps=3, batch_size=4, micro_batch_size=mb, lr=1e-2, dropout=0.0)
        hs.append([h["loss"] for h in dpo.train(m, sft_data(), cfg, tokenizer=tok)])
        ms.append(m)
    assert hs[0] == pytest.approx(hs[1], abs=1e-5)
    for a, b in zip(ms[0].parameters(), ms[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_resume_after_kill_ends_where_a_straight_run_ends(tmp_path):
    tok = ByteTok()
    kw = dict(mode="dpo", steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, dropout=0.1, save_every=2)
    straight = tiny_model(seed=6)
    h_straight = dpo.train(straight, dpo_data(), dpo.TrainConfig(**kw, out=str(tmp_path / "a")), tokenizer=tok)
    killed = tiny_model(seed=6)
    out = str(tmp_path / "b")
    dpo.train(killed, dpo_data(), dpo.TrainConfig(**kw, out=out, stop_after=5), tokenizer=tok)  # dies at step 5
    assert not os.path.exists(os.path.join(out, "params.json"))  # a killed run writes no final checkpoint
    resumed = tiny_model(seed=99)  # a fresh process: weights come from the checkpoint (step 4)
    h = dpo.train(resumed, dpo_data(), dpo.TrainConfig(**kw, out=out, resume=True), tokenizer=tok)
    assert [x["loss"] for x in h] == [x["loss"] for x in h_straight]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    loaded, _ = load_model(out)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k])
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    with pytest.raises(ValueError, match="lr"):
        dpo.train(tiny_model(), dpo_data(), dpo.TrainConfig(**{**kw, "lr": 0.5}, out=out, resume=True), tokenizer=tok)


def test_nan_loss_stops_with_step_and_value():
    m = tiny_model()
    with torch.no_grad():
        m.norm.weight[0] = float("nan")
    cfg = dpo.TrainConfig(mode="sft", steps=3, batch_size=2, micro_batch_size=2, lr=1e-3)
    with pytest.raises(FloatingPointError, match=r"step 1/3: loss is nan"):
        dpo.train(m, sft_data(), cfg, tokenizer=ByteTok())


def test_pretrain_mode_and_eval(capsys):
    m = tiny_model(seed=7)
    docs = [{"text": f"the {w} is a word."} for w in ("cat", "dog", "owl", "fox", "ant", "cow")]
    cfg = dpo.TrainConfig(mode="pretrain", steps=4, batch_size=2, micro_batch_size=1, lr=3e-3, max_len=32,
                          eval_every=2, log_every=1)
    h = dpo.train(m, docs, cfg, tokenizer=ByteTok(), eval_examples=docs[:2])
    assert "eval_loss" in h[1] and "eval_loss" in h[3] and "eval_loss" not in h[0]
    assert "pretrain step 4/4 | loss" in capsys.readouterr().out
    assert h[-1]["loss"] < h[0]["loss"]


def test_dpo_dropout_is_set_then_restored():
    m = tiny_model(dropout=0.0)
    seen = []
    orig = m.layers[0].dropout.forward
    m.layers[0].dropout.forward = lambda x: (seen.append(m.layers[0].dropout.p), orig(x))[1]
    cfg = dpo.TrainConfig(mode="sft", steps=1, batch_size=2, micro_batch_size=2, lr=1e-3)  # paper default 0.1
    dpo.train(m, sft_data(), cfg, tokenizer=ByteTok())
    assert 0.1 in seen and m.layers[0].dropout.p == 0.0


def test_cli_sft_writes_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_data(4)))
    ck = tmp_path / "m0"
    from model import save_checkpoint
    save_checkpoint(tiny_model(), str(ck))
    # no tokenizer in m0: the CLI must say so clearly
    r = subprocess.run([sys.executable, "dpo.py", "--mode", "sft", "--data", str(data), "--ckpt", str(ck),
                        "--out", str(tmp_path / "m1"), "--steps", "1"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode != 0 and "--tokenizer" in r.stderr


def test_shared_prefix_training_step_equals_plain_forward(monkeypatch):
    """EFT-like rows share a long prompt head: the prefix pass must change neither loss nor gradients."""
    head = "Review the response below with the additive 5-point scoring system. " * 2
    examples = [{"prompt": head + f"User: task {i}" + "z" * i, "response": f"ok {i}. Score: {i % 6}"} for i in range(6)]
    rows = dpo.tokenize(examples, ByteTok(), "sft", 512)
    batch = dpo.collate(rows, "sft")
    L = dpo.shared_prefix_len(batch.tokens, batch.loss_mask)
    assert L >= len(head)  # the head plus the chat prefix, and no scored token inside it

    def loss_and_grads(prefix_len):
        monkeypatch.setattr(dpo, "shared_prefix_len", lambda *a, **k: prefix_len)
        m = tiny_model(seed=3, vocab_size=260)
        m.zero_grad()
        loss, _, _ = dpo._micro_step(m, rows, dpo.TrainConfig(mode="sft", steps=1), torch.device("cpu"), 50.0, None)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in m.parameters()]

    l_plain, g_plain = loss_and_grads(0)
    l_prefix, g_prefix = loss_and_grads(L)
    assert l_prefix == pytest.approx(l_plain, rel=1e-5)
    for a, b in zip(g_plain, g_prefix):
        assert torch.allclose(a, b, atol=1e-6)


def test_micro_batches_keep_every_row_once_and_group_shared_prompts():
    head = list(range(100, 140))  # 40 shared prompt tokens (> MIN_SHARED_PREFIX)
    rows = ([{"prompt_ids": head + [i], "response_ids": [1] * (i % 5 + 1)} for i in range(7)] +
            [{"prompt_ids": [i, i + 1], "response_ids": [2] * (i % 3 + 1)} for i in range(9)])
    for regroup in (False, True):
        chunks = dpo.micro_batches(rows, 4, regroup=regroup)
        flat = [id(r) for c in chunks for r in c]
        assert sorted(flat) == sorted(id(r) for r in rows) and all(len(c) <= 4 for c in chunks)
    chunks = dpo.micro_batches(rows, 4, regroup=True)
    shared = [c for c in chunks if c[0]["prompt_ids"][:40] == head]
    assert all(all(r["prompt_ids"][:40] == head for r in c) for c in shared) and sum(map(len, shared)) == 7


def test_seed_dropout_draws_the_masks_torch_manual_seed_would():
    """train() seeds dropout per step with seed_dropout (the CPU generator only, on CPU): the masks must
    be those torch.manual_seed gives, so resumed and earlier runs keep their numbers."""
    x = torch.ones(1000)
    torch.manual_seed(123)
    expected = torch.nn.functional.dropout(x, 0.1)
    torch.manual_seed(7)  # move the generator elsewhere first
    torch.nn.functional.dropout(x, 0.1)
    dpo.seed_dropout(123, torch.device("cpu"))
    assert torch.equal(torch.nn.functional.dropout(x, 0.1), expected)
    dpo.seed_dropout(124, torch.device("cpu"))
    assert not torch.equal(torch.nn.functional.dropout(x, 0.1), expected)


@pytest.mark.parametrize("keep_ids", [False, True], ids=["text", "token_ids"])
def test_long_pair_truncates_identically_for_reference_and_policy(keep_ids):
    """A pair longer than the model's context: the reference log-probs (compute_reference_logps, default
    max_len) and the DPO trainer (TrainConfig, default max_len) must cut it the same way, whether the
    trainer gets the text back or the scored token ids (as loop.py passes them). Then before any update
    the policy equals the reference: both implicit rewards are 0 at the first step."""
    tok, m = ByteTok(), tiny_model(seed=6, max_seq_len=64)
    pairs = [{"prompt": "long question " * 6, "chosen": "a long good answer " * 3, "rejected": "no " * 9},
             {"prompt": "short", "chosen": "yes " * 20, "rejected": "no"}]
    assert all(len(tok.encode_chat_prompt(p["prompt"]) + tok.encode_chat_response(p["chosen"])) > 64 for p in pairs)
    scored = dpo.compute_reference_logps(m, pairs, tok)
    assert all(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) <= 64 for p in scored)
    fields = dpo.REF_FIELDS + (("prompt_ids", "chosen_ids", "rejected_ids") if keep_ids else ())
    examples = [{k: p[k] for k in ("prompt", "chosen", "rejected", *fields)} for p in scored]
    cfg = dpo.TrainConfig(mode="dpo", steps=1, batch_size=2, micro_batch_size=2, lr=0.0, min_lr=0.0, dropout=0.0)
    h = dpo.train(m, examples, cfg, tokenizer=tok)
    assert h[0]["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
    assert h[0]["rejected_reward"] == pytest.approx(0.0, abs=1e-6)
