"""Tests for the toy world: hand-computed rubric values, the held-out split, determinism and the
intended data statistics (imperfect seed data, EFT scores spread over 0..5)."""
import hashlib
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import toyworld as tw  # noqa: E402

F4 = "list 4 fruit words, in alphabetical order, no repeats, separated by commas"
C5 = "write five color words, using slashes, from a to z, with no duplicates"
A7 = "please tell me seven kinds of animals, each word only once, semicolon separated, sorted alphabetically."

# (instruction, response, expected checks as count/category/sorted/unique/format bits), all by hand.
CASES = [
    (F4, "apple, banana, cherry, fig", "11111"),
    (F4, "  apple, banana, cherry, fig\n", "11111"),  # surrounding whitespace is forgiven
    (F4, "banana, apple, cherry, fig", "11011"),  # unsorted
    (F4, "apple, apple, cherry, fig", "11101"),  # a repeat (still non-decreasing, so sorted)
    (F4, "apple, banana, cherry", "01111"),  # wrong count
    (F4, "apple, banana, cat, fig", "10111"),  # one intruder from animals
    (F4, "ant, bear, cow, dog", "10111"),  # the whole list from the wrong category
    (F4, "apple; banana; cherry; fig", "11110"),  # wrong separator
    (F4, "apple,banana,cherry,fig", "11110"),  # no spaces
    (F4, "Apple, banana, cherry, fig", "11110"),  # capital letter costs only format
    (F4, "APPLE, BANANA, CHERRY, FIG", "11110"),
    (F4, "apple, banana, cherry, fig.", "11110"),  # trailing period
    (F4, "plum, fig, fig, apple", "11001"),
    (F4, "fig", "01001"),  # one word: not a sorted list, not a no-repeat list
    (F4, "", "00000"),
    (F4, "!!!@@@ 123 ### \x00\t", "00000"),
    (F4, "äpple, bänana, cherry, fig", "10010"),  # 'ä' sorts after 'f'; not a-z so format fails
    (F4, "Here are four fruits: apple, banana, cherry, fig", "00010"),  # 8 words, "here" > "are"
    (C5, "blue / gold / green / red / white", "11111"),
    (C5, "blue/gold/green/red/white", "11110"),
    (C5, "blue, gold, green, red, white", "11110"),
    (C5, "white / red / green / gold / blue", "11011"),
    (A7, "ant; bear; cat; cow; deer; dog; duck", "11111"),
    (A7, "wolf; owl; lion; goat; fox; duck; dog", "11011"),
    (A7, "ant; bear; cat; cow; deer; dog; dog; duck", "01101"),
]


@pytest.mark.parametrize("instruction,response,bits", CASES)
def test_checks_and_score_by_hand(instruction, response, bits):
    expected = dict(zip(("count", "category", "sorted", "unique", "format"), (b == "1" for b in bits)))
    got = tw.checks(instruction, response)
    assert list(got) == ["count", "category", "sorted", "unique", "format"]  # ordered rubric
    assert got == expected
    assert tw.true_score(instruction, response) == bits.count("1")


def test_justification_by_hand_and_parse():
    j = tw.justification(F4, "banana, apple, cherry, fig")
    assert j == ("asked 4 fruits, comma. <response>banana, apple, cherry, fig</response> "
                 "count ok, category ok, sorted no, unique ok, format ok. Score: 4")
    assert tw.justification(F4, "") == ("asked 4 fruits, comma. <response></response> "
                                        "count no, category no, sorted no, unique no, format no. Score: 0")


def test_parse_instruction_by_hand():
    assert tw.parse_instruction(F4) == (4, "fruits", "comma")
    assert tw.parse_instruction(C5) == (5, "colors", "slash")
    assert tw.parse_instruction(A7) == (7, "animals", "semicolon")
    assert tw.parse_instruction("give me 3 kinds of clothes, using commas") == (3, "clothes", "comma")


@pytest.mark.parametrize("bad", [
    "hello world",
    "list animal words in order, separated by commas",  # no count
    "list 3 animal and fruit words, separated by commas",  # two categories
    "list 3 animal words, sorted",  # no separator
    "list 3 animal words, using commas or slashes",  # two separators
    "list 30 animal words, separated by commas",  # more than the category holds
])
def test_unparseable_instruction_raises_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        tw.true_score(bad, "ant")


def test_true_score_never_crashes_on_garbage():
    rng = random.Random(0)
    for _ in range(2000):
        junk = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), 0xD800]))
                       for _ in range(rng.randrange(0, 40)))
        assert 0 <= tw.true_score(F4, junk) <= 5
    assert tw.true_score(F4, "x" * 100_000) == 1  # one long lowercase word: only format holds
    assert tw.true_score(F4, ", " * 50_000) == 0


def test_sample_response_quality_is_exact():
    rng = random.Random(1)
    for k in range(6):
        for _ in range(200):
            ins = tw.make_instruction(rng)
            assert tw.true_score(ins, tw.sample_response(rng, ins, quality=k / 5)) == k


def test_made_instructions_parse_and_respect_split():
    rng = random.Random(2)
    for _ in range(1000):
        ins = tw.make_instruction(rng, "train")
        assert not tw.is_heldout(ins) and 3 <= tw.parse_instruction(ins)[0] <= 7
        assert tw.is_heldout(tw.make_instruction(rng, "heldout"))
        assert 8 <= len(ins.split()) <= 18


def test_heldout_is_a_stable_hash():
    for s in [F4, C5, A7, "anything at all"]:  # sha256 recomputed independently, 1 in 5 held out
        assert tw.is_heldout(s) == (int(hashlib.sha256(s.encode()).hexdigest()[:16], 16) % 5 == 0)


def test_heldout_disjoint_from_all_training_text():
    evals = tw.eval_prompts(400, 0)
    rm = tw.rm_set(100, 4, 0)
    held = set(evals) | {d["instruction"] for d in rm}
    assert len(set(evals)) == 400 and all(tw.is_heldout(s) for s in held)
    train = {d["prompt"] for d in tw.seed_ift(3000, 0)} | {d["instruction"] for d in tw.seed_eft(1000, 0)}
    assert not held & train
    corpus = tw.tokenizer_corpus(0)  # contains the pretraining text, IFT and EFT
    assert not [s for s in held if s in corpus]


def test_determinism_per_seed():
    assert tw.seed_ift(50, 7) == tw.seed_ift(50, 7) != tw.seed_ift(50, 8)
    assert tw.seed_eft(50, 7) == tw.seed_eft(50, 7) != tw.seed_eft(50, 8)
    assert tw.eval_prompts(50, 7) == tw.eval_prompts(50, 7) != tw.eval_prompts(50, 8)
    assert tw.rm_set(10, 4, 7) == tw.rm_set(10, 4, 7) != tw.rm_set(10, 4, 8)
    assert tw.pretrain_text(2000, 7) == tw.pretrain_text(2000, 7) != tw.pretrain_text(2000, 8)


def test_seed_ift_is_imperfect_with_headroom():
    data = tw.seed_ift(4000, 0)
    per = [tw.checks(d["prompt"], d["response"]) for d in data]
    mean = sum(sum(c.values()) for c in per) / len(per)
    assert 3.2 <= mean <= 3.5  # intended 3.35; SE ~0.017
    for name in tw.CHECK_NAMES:  # every check is sometimes broken, so every check can improve
        assert 0.5 <= sum(c[name] for c in per) / len(per) <= 0.85
    assert len({d["response"] for d in data}) > 3500  # varied, not a handful of memorisable answers


def test_seed_eft_spans_scores_and_judgments_parse():
    data = tw.seed_eft(600, 0)
    assert Counter(d["score"] for d in data) == {k: 100 for k in range(6)}
    for d in data:
        found = re.findall(r"Score:\s*(\d+)", d["judgment"])  # judge-style: the last "Score: k"
        assert found and int(found[-1]) == d["score"] and d["judgment"].endswith(f"Score: {d['score']}")
        assert len(d["judgment"].split()) <= 100


def test_rm_set_shape():
    rm = tw.rm_set(50, 4, 0)
    assert len(rm) == 50
    for d in rm:
        assert len(d["responses"]) == len(d["scores"]) == 4 and len(set(d["scores"])) == 4


def test_pretrain_and_tokenizer_text():
    text = tw.pretrain_text(5000, 0)
    assert len(text) == 5000 and "Score:" not in text and "<response>" not in text
    corpus = tw.tokenizer_corpus(0)
    assert 500_000 <= len(corpus) <= 1_000_000
    assert corpus.count("Review the user’s question") >= 10  # Fig. 2 text, curly quote and all


def test_committed_tokenizer_is_train_tokenizer_output(tmp_path):
    path = tmp_path / "toy.tiktoken"
    tw.train_tokenizer(str(path))
    assert path.read_bytes() == (Path(__file__).parent.parent / tw.TOKENIZER_PATH).read_bytes()


def test_graded_answers_carry_true_verdicts_and_no_heldout_task():
    for doc in tw.graded_answers(200, 3):
        lines = doc.rstrip("\n").split("\n")
        assert lines[0].startswith("task: ") and lines[1].startswith("<response>")
        ins, resp = lines[0][len("task: "):], lines[1][len("<response>"):-len("</response>")]
        assert not tw.is_heldout(ins)
        assert lines[-1] == tw.justification(ins, resp)
        assert 0 <= len(lines) - 3 <= 8  # filler sentences between answer and verdict
    assert tw.graded_answers(50, 3) == tw.graded_answers(50, 3)
