"""--judge-score expected: the probability-weighted score of a judgment, against hand-made distributions
and against the textbook full forward."""
import math
from types import SimpleNamespace

import pytest
import torch

import judge as J
from helpers import ByteTok, tiny_model


def test_score_digit_ids_byte_tokenizer():
    common, digits = J.score_digit_ids(ByteTok(), "ok. Score: ")
    assert common == list(b"ok. Score: ") and digits == [ord(str(k)) for k in range(6)]


class _MergingTok(ByteTok):
    """Encodes " 1" as one token, 301: after "Score: " the score 1 is no token of its own."""

    def encode(self, text, bos=False, eos=False):
        ids = super().encode(text)
        return ids[:-2] + [301] if text.endswith(" 1") else ids


def test_score_digit_ids_refuses_a_digit_that_is_not_one_token_of_its_own():
    assert J.score_digit_ids(_MergingTok(), "Score: ") is None


class _RiggedModel(torch.nn.Module):
    """hidden() returns each slot's token id as its state; logits() puts the probabilities DIST on the
    digits 0..5 (byte ids 48..53) and the rest on token 0, whatever the input."""
    DIST = [0.0, 0.1, 0.0, 0.3, 0.2, 0.0]  # mass 0.6 on the digits: 0.4 elsewhere

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(max_seq_len=64)

    def hidden(self, tokens):
        return tokens.float()[..., None], None

    def logits(self, h):
        p = torch.zeros(h.shape[0], 300)
        p[:, 48:54] = torch.tensor(self.DIST)
        p[:, 0] = 0.4
        return p.log()


def test_expected_score_is_the_digits_weighted_mean_renormalised():
    got = J.expected_scores(_RiggedModel(), ByteTok(), [([1, 2, 3], "good. Score: 4"), ([7], "no score here"),
                                                       ([5], "Score: 9")])
    want = (1 * 0.1 + 3 * 0.3 + 4 * 0.2) / 0.6  # hand-computed: 1.8 / 0.6
    assert got[0] == pytest.approx(want) and got[0] == pytest.approx(3.0)
    assert got[1] is None and got[2] is None  # unparseable stays unparseable, as with sampled scores


def test_expected_score_equals_the_full_forward():
    """Against the textbook forward of the whole sequence (prompt + judgment up to the digit), in batches
    of rows of unequal length: the right padding must not leak into a row's last slot."""
    m, tok = tiny_model(seed=2).eval(), ByteTok()
    judged = [(tok.encode_chat_prompt("judge this"), "Fine. Score: 3"),
              (tok.encode_chat_prompt("a much longer prompt for the judge to read"), "It is. Score: 5"),
              (tok.encode_chat_prompt("x"), "Score: 0 or Score: 2")]  # the last Score: counts
    got = J.expected_scores(m, tok, judged, micro_batch=3)
    for (prompt, text), g in zip(judged, got):
        ctx = text[:text.rindex("Score:") + len("Score: ")]
        with torch.no_grad():
            p = m(torch.tensor([prompt + tok.encode(ctx)]))[0, -1].softmax(-1)
        q = [float(p[ord(str(k))]) for k in range(6)]
        assert g == pytest.approx(sum(k * x for k, x in enumerate(q)) / sum(q), rel=1e-5)
    assert all(0 <= g <= 5 for g in got) and len(set(got)) == 3


def test_judge_with_expected_scores_keeps_the_samples_and_their_texts(monkeypatch):
    """judge(score="expected"): the same sampled texts as score="sampled", each read by expectation."""
    m, tok = tiny_model(seed=2).eval(), ByteTok()
    import generate
    monkeypatch.setattr(generate, "generate_many", lambda model, prompts, n, num_samples=1, **kw: [
        [list(b"A. Score: 4"), list(b"none")] for _ in prompts])
    items, rubric = [("q1", "r1"), ("q2", "r2")], J.rubric_from_text("Q {instruction} A {response} Score: <k>", "t")
    sampled = J.judge(m, tok, items, samples=2, rubric=rubric)
    expected = J.judge(m, tok, items, samples=2, score="expected", rubric=rubric)
    assert [r["raw"] for r in sampled] == [r["raw"] for r in expected] == [["A. Score: 4", "none"]] * 2
    assert [r["scores"] for r in sampled] == [[4.0, None]] * 2
    for r in expected:
        assert r["scores"][1] is None and 0 <= r["scores"][0] <= 5 and r["score"] == r["scores"][0]
        assert not math.isclose(r["scores"][0], round(r["scores"][0]))  # a tiny random model is unsure
    with pytest.raises(ValueError, match="sampled' or 'expected"):
        J.judge(m, tok, items, samples=2, score="best", rubric=rubric)
