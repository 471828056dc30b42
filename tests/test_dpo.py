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
import packing
from checkpoint import load_model
from helpers import ByteTok, dpo_data, sft_data, tiny_model


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
    loss, _ = dpo.preference_loss(pc, pr, rc, rr, nc, nc, cfg)
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

def test_batch_indices_cover_each_epoch():
    idx = [i for s in range(5) for i in dpo.batch_indices(10, 4, s, seed=3)]  # 20 = two epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    assert idx[:10] != idx[10:]


# ----------------------------------------------------------------------------- model-level

def test_dpo_sgd_step_raises_chosen_over_rejected():
    tok, m = ByteTok(), tiny_model(seed=2)
    b = packing.collate(packing.tokenize(dpo_data(2), tok, "dpo", 64), "dpo")  # rows: 2 chosen, then 2 rejected

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


def test_precomputed_reference_equals_frozen_copy():
    tok, m = ByteTok(), tiny_model(seed=3)
    frozen = copy.deepcopy(m).eval()
    pairs = dpo.compute_reference_logps(m, dpo_data(5), tok, micro_batch_size=2)
    for p in pairs:
        for name in ("chosen", "rejected"):
            b = packing.collate([{"prompt_ids": p["prompt_ids"], "response_ids": p[f"{name}_ids"]}], "sft")
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
    from checkpoint import save_checkpoint
    save_checkpoint(tiny_model(), str(ck))
    # no tokenizer in m0: the CLI must say so clearly
    r = subprocess.run([sys.executable, "dpo.py", "--mode", "sft", "--data", str(data), "--ckpt", str(ck),
                        "--out", str(tmp_path / "m1"), "--steps", "1"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode != 0 and "--tokenizer" in r.stderr


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
    fields = packing.REF_FIELDS + (("prompt_ids", "chosen_ids", "rejected_ids") if keep_ids else ())
    examples = [{k: p[k] for k in ("prompt", "chosen", "rejected", *fields)} for p in scored]
    cfg = dpo.TrainConfig(mode="dpo", steps=1, batch_size=2, micro_batch_size=2, lr=0.0, min_lr=0.0, dropout=0.0)
    h = dpo.train(m, examples, cfg, tokenizer=tok)
    assert h[0]["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
    assert h[0]["rejected_reward"] == pytest.approx(0.0, abs=1e-6)


def test_score_examples_of_nothing_leaves_the_mode_alone():
    """score_examples([]) once returned after model.eval(), leaving a training model in eval mode."""
    m = tiny_model().train()
    assert dpo.score_examples(m, [], "sft").shape == (0, 2) and m.training
    assert dpo.score_examples(m, [], "dpo").shape == (0, 4) and m.training


@pytest.mark.parametrize("doc_mask", [False, True])
def test_pretrain_eval_loss_attends_as_training_did(doc_mask):
    """The held-out loss of pretraining uses the run's doc_mask (it once always masked documents):
    against the loss computed by hand from the full forward, plain causal or document-masked."""
    m = tiny_model(seed=5).eval()
    docs = [{"text": f"doc {i}: " + "ab" * (i % 4)} for i in range(9)]  # several documents per 24-token row
    cfg = dpo.TrainConfig(mode="pretrain", steps=1, batch_size=1, micro_batch_size=2, max_len=24, doc_mask=doc_mask)
    rows = packing.prepare(docs, "pretrain", ByteTok(), 24)
    b = packing.collate(rows, "pretrain")
    assert int((b.seq_ids.max(1).values > 0).sum()) >= 3  # rows that pack more than one document
    with torch.no_grad():
        logits = m(b.tokens, seq_ids=b.seq_ids if doc_mask else None)
        want = -dpo.sequence_logps(logits, b.tokens, b.loss_mask).sum() / b.loss_mask[:, 1:].sum()
    assert dpo.eval_loss(m, rows, cfg)["eval_loss"] == pytest.approx(want.item(), rel=1e-5)


def test_cli_bool_flags_turn_on_and_off():
    """dpo.py's bool flags were store_true with default None, so --doc-mask could not be turned off;
    now --flag / --no-flag as in loop.py, and absent means the TrainConfig default."""
    base = ["--mode", "pretrain", "--data", "d.txt", "--ckpt", "toy-test", "--out", "o"]
    assert dpo.parse_args(base)[1].doc_mask is True
    assert dpo.parse_args(base + ["--no-doc-mask"])[1].doc_mask is False
    assert dpo.parse_args(base + ["--doc-mask"])[1].doc_mask is True
    assert dpo.parse_args(base + ["--ipo"])[1].ipo is True and dpo.parse_args(base)[1].ipo is False


def test_deal_gives_every_rank_the_same_forwards_and_every_micro_batch_once():
    """Micro-batches with a shared prefix (two forwards) go in rounds of their own; a rank short in a
    round repeats one of the same kind with weight 0. Hand-dealt: kinds [plain, prefix, plain, prefix,
    prefix] on 2 ranks."""
    head = list(range(100, 140))
    shared = [{"prompt_ids": head + [1], "response_ids": [5]}, {"prompt_ids": head + [2], "response_ids": [6]}]
    plain = [{"prompt_ids": [1, 2], "response_ids": [7]}]
    chunks = [plain, shared, plain, shared, shared]
    assert dpo.deal(chunks, 0, 2) == [(1, True), (4, True), (0, True)]
    assert dpo.deal(chunks, 1, 2) == [(3, True), (1, False), (2, True)]
    assert dpo.deal(chunks, 0, 1) == [(1, True), (3, True), (4, True), (0, True), (2, True)]
    assert dpo.deal([plain] * 3, 2, 4) == [(2, True)] and dpo.deal([plain] * 3, 3, 4) == [(0, False)]  # a repeat


@pytest.mark.parametrize("flags,named", [(["--lr", "inf"], "--lr"),
                                         (["--label-smoothing", "0.7"], "--label-smoothing"),
                                         (["--warmup", "50", "--steps", "10"], "--warmup")])
def test_cli_refuses_a_bad_setting_in_one_line_naming_the_flag(flags, named):
    """A setting TrainConfig refuses is a usage error: argparse's one line naming the flag, exit code 2,
    no traceback (the CLI stops before loading anything)."""
    r = subprocess.run([sys.executable, "dpo.py", "--mode", "sft", "--data", "d.jsonl", "--ckpt", "toy-test",
                        "--out", "o"] + flags, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("dpo.py: error: --")
    assert named in last and "TrainConfig" not in last, last
