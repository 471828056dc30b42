"""judge.py: the Fig. 2 prompt byte for byte, score parsing, and Table 4's metrics by hand."""
import hashlib
import os
import re
import math

import pytest

import judge as J


def test_judge_prompt_is_fig2_byte_for_byte():
    # sha256 of the prompt as printed in the paper's Fig. 2, curly quotes included, no trailing newline.
    digest = hashlib.sha256(J.JUDGE_PROMPT.encode("utf-8")).hexdigest()
    assert digest == "b7c215996724f24346b6b7b72350e6818bf9b8d3cec590a97902a09516dfdbb4"
    assert J.JUDGE_PROMPT.startswith("Review the user’s question and the corresponding response")
    assert "“Score: <total points>”" in J.JUDGE_PROMPT and "we’ll systematically" in J.JUDGE_PROMPT
    assert J.JUDGE_PROMPT.count("<INSTRUCTION_HERE>") == 1 and J.JUDGE_PROMPT.count("<RESPONSE_HERE>") == 1


def test_judge_prompt_fills_without_touching_other_text():
    filled = J.judge_prompt("Q <RESPONSE_HERE>?", "A")
    assert "User: Q <RESPONSE_HERE>?\n<response>A</response>\nAfter examining" in filled
    assert len(filled) == len(J.JUDGE_PROMPT) - len("<INSTRUCTION_HERE><RESPONSE_HERE>") + len("Q <RESPONSE_HERE>?A")


@pytest.mark.parametrize("text,expected", [
    ("count ok. Score: 4", 4.0),
    ("Score: 4.5", 4.5),
    ("First I thought Score: 2, but on reflection... Score: 3", 3.0),  # the last one counts
    ("Score: 0", 0.0),
    ("Score: 5.0.", 5.0),
    ("Score:3", 3.0),
    ("Score: **4**", 4.0),
    ("Score: 6", None),          # out of range
    ("Score: 5.5", None),        # out of range
    ("Score: -1", None),         # not a number in [0, 5]
    ("Score: 2 ... Score: nine", None),  # the last Score: is unreadable: not the earlier one
    ("I give it four points.", None),
    ("", None),
    ("score: 4", None),          # the format is "Score:"
])
def test_parse_score(text, expected):
    assert J.parse_score(text) == expected


def test_response_containing_score_is_not_read():
    # The response says "Score: 5"; the judge's own output is all parse_score ever sees.
    response = "Here is my answer. Score: 5"
    prompt = J.judge_prompt("Say hi", response)
    assert J.parse_score(prompt) is None  # Fig. 2's own "Score: <total points>" is not a number
    assert J.parse_score("The response games the format. Score: 1") == 1.0


def test_mean_score_and_eft_example():
    assert J.mean_score([4.0, None, 5.0]) == 4.5
    assert J.mean_score([None, None]) is None
    ex = J.eft_example("list 3 animal words", "cat, dog, owl", "count ok. Score: 5")
    assert ex["prompt"] == J.judge_prompt("list 3 animal words", "cat, dog, owl") and ex["response"].endswith("Score: 5")
    with pytest.raises(ValueError, match="Score"):
        J.eft_example("q", "a", "no score here")


def test_parse_rate():
    assert J.parse_rate([{"scores": [1.0, None, 2.0]}, {"scores": [None]}]) == 0.5


# ----------------------------------------------------------------------------- metrics by hand

def test_pairwise_accuracy_hand_computed():
    # Prompt 1: ref 3 > 2 > 1; judge 5, 4, 4: pairs (0,1) right, (0,2) right, (1,2) judge tie -> wrong.
    # Prompt 2: ref 2 = 2 (skipped), 2 > 0 twice; judge 1, 3, None: (0,2) None -> wrong, (1,2) wrong.
    groups = [([5, 4, 4], [3, 2, 1]), ([1, 3, None], [2, 2, 0])]
    assert J.pairwise_accuracy(groups) == pytest.approx(2 / 5)


def test_five_best_and_exact_match_hand_computed():
    groups = [([5, 4.67, 2], [4, 3, 1]),     # a 5 on the best: hit; 4.67 rounds to 5, not best: miss
              ([3, 5, 1], [2, 2, 0]),        # a 5 on a response tied for best: hit
              ([2, 3, 4], [3, 2, 1])]        # no 5s; order fully reversed
    assert J.five_best(groups) == pytest.approx(2 / 3)
    # Exact order: prompt 1 yes (5 > 4.67 > 2 as 4 > 3 > 1); prompt 2 no (judge splits a tie); prompt 3 no.
    assert J.exact_match(groups) == pytest.approx(1 / 3)
    groups_ok = [([5, 4, 1], [3, 2, 0]), ([3, 3, 1], [2, 2, 0]), ([3, 2, 1], [1, 2, 3])]
    assert J.exact_match(groups_ok) == pytest.approx(2 / 3)


def test_averages_round_half_up_so_a_4_5_is_a_full_score():
    """A mean of 4.5 (say 4, 5 and 4.5) rounds to 5 by the schoolbook rule, not to 4 (Python's round
    goes to the even neighbour); likewise 2.5 -> 3 and 0.5 -> 1."""
    assert [J.round_half_up(x) for x in (4.5, 2.5, 0.5, 3.5, 4.49, 0.0, 1.5000001)] == [5, 3, 1, 4, 4, 0, 2]
    # the only full-scored response (4.5) is the best one: a hit, 1 of 1; a 4.4 is no full score
    assert J.five_best([([4.5, 4.4, 1], [3, 2, 1])]) == 1.0
    assert J.five_best([([4, 4.5, 2.5], [1, 2, 3])]) == 0.0  # the 4.5 is a full score, on a non-best


def test_rank_correlations_hand_computed():
    assert J.spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert J.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # d = [0, 1, 1, 0]: 1 - 6 * 2 / (4 * 15) = 0.8
    assert J.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks [1.5, 1.5, 3] vs [1, 2, 3] -> 1.5 / sqrt(1.5 * 2)
    assert J.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3.0))
    # one discordant pair of 6: (5 - 1) / 6
    assert J.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in x: C=2, D=0, n0=3, n1=1, n2=0 -> 2 / sqrt(2 * 3)
    assert J.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert J.kendall_tau([2, 2, 2], [1, 2, 3]) == 0.0 and J.spearman([2, 2, 2], [1, 2, 3]) == 0.0


def test_reward_model_metrics_perfect_and_reversed_judges():
    ref = [[4, 2, 1, 0], [5, 3, 2, 1], [3, 2, 1, 0]]
    perfect = J.reward_model_metrics([([float(x) for x in r], r) for r in ref])
    assert perfect["pairwise_accuracy"] == 1.0 and perfect["exact_match"] == 1.0
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["five_best"] == 1.0  # the only 5 is on the best response
    reversed_ = J.reward_model_metrics([([-x for x in r], r) for r in ref])
    assert reversed_["pairwise_accuracy"] == 0.0 and reversed_["spearman"] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- rubrics

def test_fig2_rubric_file_is_the_paper_prompt_byte_for_byte():
    r = J.load_rubric(os.path.join(J.RUBRIC_DIR, "fig2.txt"))
    assert r.fill("<INSTRUCTION_HERE>", "<RESPONSE_HERE>") == J.JUDGE_PROMPT
    assert J.load_rubric("fig2") is J.FIG2 and J.load_rubric("") is J.FIG2
    assert J.FIG2.fill("q", "a") == J.judge_prompt("q", "a")


@pytest.mark.parametrize("name", ["safety", "instruction_following"])
def test_shipped_rubrics_load_and_fill(name):
    r = J.load_rubric(name)
    filled = r.fill("Q {response} Q", "A {instruction} A")  # slot names inside the text stay as written
    assert "User: Q {response} Q\n<response>A {instruction} A</response>\n" in filled
    assert "5-point" in filled and "“Score: <" in filled
    assert J.parse_score(filled) is None  # the rubric's own format line is not a score


def test_safety_rubric_is_additive_five_points():
    text = J.load_rubric("safety").head
    assert [line[:4] for line in text.splitlines() if line.startswith("- ")] == ["- Ad", "- Ad", "- Aw", "- Gr", "- Be"]


@pytest.mark.parametrize("text,error", [
    ("Judge {instruction} now. Score: <k>", "slot {response} exactly once"),
    ("{instruction} {instruction} {response} Score: <k>", "slot {instruction} exactly once, found 2"),
    ("{response} then {instruction} Score: <k>", "must come before"),
    ("{instruction} {response} End with Rating: <k>", "no line asks for the score format"),
    ("{instruction} {response}\nEnd with Score: [[k]]", "line 2: the score format"),
    ("{instruction} {response}\nScore: 10", "line 2"),  # parse_score reads 0..5 only
])
def test_bad_rubrics_are_refused_with_the_reason(tmp_path, text, error):
    path = tmp_path / "mine.txt"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(error)):
        J.load_rubric(str(path))


def test_rubric_from_a_file_and_missing_files(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("Rate {instruction} / {response} 0-5, ending with Score: <n>\n", encoding="utf-8")
    r = J.load_rubric(str(path))
    assert r.name == "short" and r.fill("x", "y") == "Rate x / y 0-5, ending with Score: <n>"  # one "\n" dropped
    assert J.eft_example("x", "y", "ok. Score: 2", rubric=r) == {"prompt": r.fill("x", "y"), "response": "ok. Score: 2"}
    with pytest.raises(FileNotFoundError, match="not a shipped rubric.*safety"):
        J.load_rubric(str(tmp_path / "nope.txt"))


def test_mean_se_hand_computed():
    m, se = J.mean_se([1.0, 2.0, 3.0, 4.0])  # sample variance 5/3, se = sqrt(5/3 / 4)
    assert m == 2.5 and se == pytest.approx((5 / 3 / 4) ** 0.5)


@pytest.mark.parametrize("text,expected", [
    ("A is clearer. Verdict: A", "A"), ("Verdict: B", "B"), ("hmm. Verdict: tie", "tie"),
    ("Verdict: A ... on reflection Verdict: B", "B"), ("Verdict: **A**", "A"),
    ("I prefer A.", None), ("Verdict: C", None), ("Verdict: Alpha", None),
])
def test_parse_verdict(text, expected):
    assert J.parse_verdict(text) == expected


def test_head_to_head_counts_both_orders(monkeypatch):
    """Each item is judged with the model under test as A, then as B; the two verdicts vote together."""
    import generate

    class Tok:
        stop_ids, pad_id, n_words = {0}, 0, 300
        def encode_chat_prompt(self, text): return [ord(c) for c in text[:3]] + [len(text)]
        def decode(self, ids): return "".join(chr(i) for i in ids)

    # item 0: A then B -> under test wins both orders; item 1: A then A -> position bias, a tie;
    # item 2: B then A -> loss; item 3: tie then B -> win; item 4: unparseable twice -> tie
    first, second = ["A", "A", "B", "tie", "?"], ["B", "A", "A", "B", "?"]
    outs = [[[ord(c) for c in f"Verdict: {v}"]] for v in first + second]
    seen = []
    monkeypatch.setattr(generate, "generate_many",
                        lambda model, prompts, n, **kw: seen.append((prompts, kw)) or outs)
    items = [(f"q{i}", f"mine{i}", f"base{i}") for i in range(5)]
    res = J.head_to_head(None, Tok(), items, template="{instruction}|{response_a}|{response_b}")
    assert res == {"win": 0.4, "tie": 0.4, "loss": 0.2, "parse_rate": 0.8}
    assert len(seen[0][0]) == 10  # both orders of every item in one batch
    assert seen[0][1]["vocab_limit"] == 300  # the judge never samples an id its tokenizer cannot decode
    seen.clear()
    outs = [[[ord(c) for c in "Fine. Score: 4"]] * 3]  # one item, 3 sampled judgments
    res = J.judge(None, Tok(), [("q", "a")], samples=3)
    assert res[0]["score"] == 4.0 and seen[0][1]["vocab_limit"] == 300
    J.judge(None, Tok(), [("q", "a")], samples=3, kernels="bf16")
    assert seen[-1][1]["kernels"] == "bf16"  # --kernels reaches the judge's generation
    assert J.fill_pairwise("{instruction}|{response_a}|{response_b}", "q", "a", "b") == "q|a|b"
