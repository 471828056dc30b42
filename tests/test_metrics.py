"""The collapse metrics and the oracle control, against values worked out by hand: distinct-n, the unique
fraction, the candidates' pairwise ROUGE-L, the sampling entropy, the judge's score histogram, and pairs
picked by the ground truth."""
import math

import pytest
import torch

import evaluation as E
import judge as J
import loop
from helpers import ByteTok, tiny_model


def test_distinct_n_by_hand():
    texts = ["a b a", "A b"]  # words a b a a b: 2 distinct of 5; bigrams (a b) (b a) (a b): 2 of 3
    assert E.distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert E.distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert E.distinct_n(["one"], 2) == 0.0  # no bigram at all


def test_diversity_by_hand():
    d = E.diversity(["x y", "x y", "z"], [["a b", "a b", "a c"], ["q"]])
    assert d["unique"] == pytest.approx(2 / 3)
    # pairs of the first set: (a b, a b) = 1, (a b, a c) = 2 * 1 / 4 twice; the second set has no pair
    assert d["candidate_rouge_l"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert d["distinct_1"] == pytest.approx(3 / 5)
    assert E.diversity(["a"], [["a"]])["candidate_rouge_l"] is None


def test_sampling_entropy_is_log_v_for_flat_logits():
    m = tiny_model().eval()
    with torch.no_grad():
        m.output.weight.zero_()  # every logit 0: the uniform distribution over the vocabulary
    assert E.sampling_entropy(m, ByteTok(), ["hi", "yo!"], ["ok", "fine."], 0.7) == pytest.approx(math.log(m.args.vocab_size))


def test_sampling_entropy_equals_the_entropy_of_the_full_forward():
    """Against the textbook computation: the full forward of prompt + response, softmax(logits / T) at
    every position that predicts a response token, entropies averaged over all those tokens."""
    m, tok, T = tiny_model(seed=3).eval(), ByteTok(), 0.7
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(20)  # a peaked distribution, so that the temperature matters
    prompts, responses = ["hi", "what?"], ["ok", "no way"]
    total, n = 0.0, 0
    for p, r in zip(prompts, responses):
        ids, resp = tok.encode_chat_prompt(p), tok.encode_chat_response(r)
        with torch.no_grad():
            logits = m(torch.tensor([ids + resp]))[0, len(ids) - 1:-1]  # the positions predicting resp
        logp = (logits / T).log_softmax(-1)
        total += float(-(logp.exp() * logp).sum())
        n += len(resp)
    got = E.sampling_entropy(m, tok, prompts, responses, T, micro_batch=1)
    assert got == pytest.approx(total / n, rel=1e-5)
    assert got != pytest.approx(E.sampling_entropy(m, tok, prompts, responses, 1.0), rel=1e-3)


def test_sampling_entropy_does_not_depend_on_the_thread_count():
    """1 process (2 threads) and 2 ranks (1 thread each) must report the same bytes: the mean is added in
    a fixed order, so the thread count that splits a tensor's additions cannot move its last digit."""
    m, tok = tiny_model(seed=5).eval(), ByteTok()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # entropies of many sizes, so that another order of additions rounds differently
    prompts = [f"question {i} about {w}" for i, w in enumerate("apples pears figs kiwis plums grapes limes".split())]
    responses = [f"answer {i}: " + "lorem ipsum dolor sit amet " * (2 + i) for i in range(len(prompts))]
    threads = torch.get_num_threads()
    got = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got[n] = E.sampling_entropy(m, tok, prompts, responses, 0.7)
    finally:
        torch.set_num_threads(threads)
    assert got[1] == got[2]  # the same bits: a whole-tensor fp32 .sum() splits its additions by thread


def test_score_histogram_by_hand():
    judged = [{"scores": [3, 4.67, None]}, {"scores": [None]}, {"scores": [5, 0]}, {"scores": []}]
    assert J.score_histogram(judged) == {"0": 1, "1": 0, "2": 0, "3": 1, "4": 1, "5": 1, "none": 3}


def test_oracle_pairs_are_the_truly_best_and_worst():
    candidates = [{"prompt": "p0", "responses": ["aa", "a", "aaaa", "aaa"]},
                  {"prompt": "skip", "responses": ["x", "y"]},  # a prompt the world cannot grade
                  {"prompt": "p2", "responses": ["bb", "bb"]}]  # a true tie
    truth = lambda prompt, r: None if prompt == "skip" else float(len(r))  # noqa: E731
    judged = J.oracle_judgments(candidates, truth)
    assert [j["score"] for j in judged[:4]] == [2.0, 1.0, 4.0, 3.0]
    pairs, stats = J.build_pairs(candidates, judged)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("aaaa", "a")]
    assert stats == {"prompts": 3, "ties": 1, "unscored": 1, "pairs": 1}


def test_diversity_table_rows():
    r = {"model": "M1", "diversity": {"distinct_1": 0.5, "distinct_2": 0.75, "unique": 0.9, "candidate_rouge_l": 0.4},
         "entropy": 1.25, "judge": {"score_histogram": {"0": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "none": 7}}}
    table = E.diversity_table([r, {"model": "M2"}])
    assert "| M1 | 0.500 | 0.750 | 90.0 | 0.400 | 1.250 | 1 / 2 / 3 / 4 / 5 / 6 / 7 |" in table
    assert "M2" not in table and E.diversity_table([{"model": "M0"}]) == ""


def test_the_oracle_control_needs_a_ground_truth(tmp_path, capsys):
    with pytest.raises(SystemExit):
        loop.parse_args(["--pairs-from", "oracle", "--data", str(tmp_path)])
    assert "needs --world toy or real" in capsys.readouterr().err


def test_eft_judge_pairs_keep_the_seed_judgment_where_the_model_missed_it():
    rubric = J.load_rubric("fig2")
    seed = [{"instruction": "i0", "response": "r0", "judgment": "fine. Score: 4"},
            {"instruction": "i1", "response": "r1", "judgment": "bad. Score: 1"},
            {"instruction": "i2", "response": "r2", "judgment": "ok. Score: 3"}]
    judged = [{"scores": [4.0], "raw": ["good. Score: 4"]},  # agrees: no pair
              {"scores": [5.0], "raw": ["great. Score: 5"]},  # misses the seed's 1
              {"scores": [None], "raw": ["no score"]}]  # does not parse
    pairs, stats = J.eft_judge_pairs(seed, judged, rubric)
    assert stats == {"judged": 3, "agreed": 1, "pairs": 2}
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("bad. Score: 1", "great. Score: 5"),
                                                           ("ok. Score: 3", "no score")]
    assert pairs[0]["prompt"] == rubric.fill("i1", "r1") and all(p["judge_pair"] for p in pairs)
    with pytest.raises(ValueError):  # one judgment per seed example, or the pairs would be misaligned
        J.eft_judge_pairs(seed, judged[:2], rubric)


def test_pair_truth_leaves_judge_pairs_out():
    class World:
        @staticmethod
        def score_text(prompt, response):
            return float(len(response))
    pairs = [{"prompt": "p", "chosen": "aa", "rejected": "a"},
             {"prompt": "judge prompt", "chosen": "a", "rejected": "aaaa", "judge_pair": True}]
    assert E.pair_truth(pairs, World) == {"graded": 1, "better": 1, "tie": 0, "worse": 0}
