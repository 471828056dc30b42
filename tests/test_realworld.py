"""Tests for the real world (realworld.py): the IFEval-style checks on hand-written responses, following
that makes every check true, parsing instructions back from prompts, the score mapping, justifications,
the strict accuracies with their standard errors (by hand), and make_data on a fixture written here."""
import itertools
import math
import random

import pytest

import realworld as rw
from judge import parse_score


def ins(iid: str, **kwargs) -> dict:
    return {"id": iid, "kwargs": kwargs}


# ----------------------------------------------------------------------------- checks, by hand

# (instruction, response, expected), edge cases included.
CHECK_CASES = [
    (ins("word_limit", n=4), "one two three", True),
    (ins("word_limit", n=3), "one two three", False),  # strictly less than
    (ins("word_limit", n=4), "don't stop now", False),  # \w+ words: don, t, stop, now
    (ins("word_limit", n=4), "  one, two; three!  \n", True),
    (ins("lowercase"), "all lowercase here, 42 times.\n", True),
    (ins("lowercase"), "Not lowercase", False),
    (ins("lowercase"), "123 456.", False),  # no letter at all is not lowercase (str.islower)
    (ins("capitals"), "ALL CAPS, 42 TIMES!", True),
    (ins("capitals"), "ALL CAPS but one", False),
    (ins("no_comma"), "no commas here. none at all", True),
    (ins("no_comma"), "one, two", False),
    (ins("no_comma"), "It costs 1,000 dollars", False),
    (ins("keywords", keywords=["pancake", "River"]), "A PANCAKE by the river.", True),  # any case
    (ins("keywords", keywords=["pancake", "river"]), "Pancakes by the river.", False),  # whole words only
    (ins("keywords", keywords=["pancake", "river"]), "A pancake by the lake.", False),
    (ins("end_phrase", phrase="That is all."), "Some answer. That is all.  \n\n", True),  # trailing whitespace
    (ins("end_phrase", phrase="That is all."), "Some answer. THAT IS ALL.", True),  # case, as IFEval
    (ins("end_phrase", phrase="That is all."), '"Some answer. That is all."', True),  # quotes, as IFEval
    (ins("end_phrase", phrase="That is all."), "That is all. Then more words.", False),
    (ins("end_phrase", phrase="Any other questions?"), "Answer. Any other questions", False),
    (ins("bullets", n=3), "* one\n* two\n* three", True),
    (ins("bullets", n=3), "Intro:\n- one\n-  two\n* three\nOutro.", True),  # "-" and "*" bullets both count
    (ins("bullets", n=3), "* one\n* two", False),
    (ins("bullets", n=2), "**Bold heading**\n  * one\n* two", True),  # bold is no bullet; indented is one
    (ins("bullets", n=2), "1. one\n2. two", False),  # a numbered list is not a bullet list
    (ins("bullets", n=2), "*one\n*two", False),  # the marker needs a space after it
    (ins("bullets", n=1), "a - b\n* one", True),  # a dash inside a line is no bullet
    (ins("title"), "<<Poem of Joy>>\nText.", True),
    (ins("title"), "Text <<x>> inline.", True),
    (ins("title"), "<<>>\nText.", False),  # an empty title
    (ins("title"), "<<   >>\nText.", False),
    (ins("title"), "<Poem>\nText.", False),
    (ins("title"), "<<Poem\nof Joy>>", False),  # a title is one line
    (ins("quotes"), '"Hello there."', True),
    (ins("quotes"), '  "Hello there."\n', True),  # whitespace around is forgiven
    (ins("quotes"), '"He said "hi" to me"', True),  # quotes inside
    (ins("quotes"), '"', False),
    (ins("quotes"), 'Hello there."', False),
    (ins("quotes"), '"Hello there.', False),
    (ins("json"), '{"answer": "yes, it is"}', True),
    (ins("json"), '```json\n{"a": [1, 2]}\n```', True),  # fenced, as IFEval allows
    (ins("json"), '```JSON\n[1, 2]\n```\n', True),
    (ins("json"), '```\n{"a": 1}\n```', True),
    (ins("json"), '{"a": 1', False),
    (ins("json"), 'Here it is: {"a": 1}', False),
    (ins("json"), '"just a string"', False),  # a bare value is not "JSON format" here (stricter than IFEval)
    (ins("json"), "42", False),
    (ins("postscript"), "Answer.\n\nP.S. Thanks.", True),
    (ins("postscript"), "answer.\n\np.s. thanks.", True),  # lowercase, so it fits the case rules
    (ins("postscript"), "Answer.\nP. S. Thanks.", True),
    (ins("postscript"), "Answer. P.S. Thanks.", False),  # a postscript starts a line
    (ins("postscript"), "Answer without one.", False),
]


@pytest.mark.parametrize("instruction,response,expected", CHECK_CASES)
def test_check_by_hand(instruction, response, expected):
    assert rw.INSTRUCTIONS[instruction["id"]].check(response, instruction["kwargs"]) is expected


def test_every_instruction_has_cases_both_ways():
    seen = {(i["id"], e) for i, _, e in CHECK_CASES}
    assert seen == {(iid, e) for iid in rw.INSTRUCTIONS for e in (True, False)}


def test_conflicts_are_symmetric_and_named():
    for iid, i in rw.INSTRUCTIONS.items():
        assert i.conflicts <= set(rw.INSTRUCTIONS) and iid not in i.conflicts
    pairs = {(a, b) for a, i in rw.INSTRUCTIONS.items() for b in i.conflicts}
    assert ("lowercase", "capitals") in pairs and ("json", "bullets") in pairs


# ----------------------------------------------------------------------------- following

ANSWERS = [  # real-looking answers, as ShareGPT's are
    "Yes, it is possible to become addicted to technology. People can develop compulsive habits around "
    "apps and games, just as they can with other media. This can lead to lower productivity, strained "
    "relationships, and poorer sleep. Setting limits, taking breaks, and talking to a professional can help.",
    "Here are the steps to calculate a percentage in a spreadsheet:\n\n1. Enter the numbers in two cells.\n"
    "2. In a third cell, divide the part by the whole, for example =A1/B1.\n3. Format the cell as a "
    "percentage.\n\nThat's it! The cell now shows the share as a percentage.",
    "The term \"metaphysics\" refers to a branch of philosophy that studies the nature of reality, "
    "including mind and matter. Objects, whatever their dimension, fall within its domain.\n\nHowever, "
    "whether an object counts as \"metaphysical\" depends on the philosophical context.",
    "Sure! Let's Encrypt and GoDaddy both issue SSL certificates, but they differ:\n- Cost: Let's Encrypt "
    "is free, GoDaddy charges a fee.\n- Validity: Let's Encrypt certificates last 90 days.\n- Support: "
    "GoDaddy offers phone support.",
    "I'd be happy to help with your story. Could you share a summary or an excerpt first, so that I can "
    "give you specific and useful feedback on plot, pacing, characters, and style?",
]


@pytest.mark.parametrize("iid", list(rw.INSTRUCTIONS))
def test_follow_makes_check_true(iid):
    rng = random.Random(iid)
    spec = rw.INSTRUCTIONS[iid]
    raw_fails = 0
    for answer in ANSWERS:
        for _ in range(3):
            kw = spec.sample_kwargs(rng, "How does this work?", answer)
            assert spec.check(spec.follow(answer, kw, rng), kw), (iid, kw, answer)
            raw_fails += not spec.check(answer, kw)
    assert raw_fails > 0  # following is a real edit for some answers


def test_follow_all_satisfies_every_compatible_combination():
    ids = list(rw.INSTRUCTIONS)
    rng = random.Random(0)
    combos = [c for k in (2, 3) for c in itertools.combinations(ids, k)
              if not any(b in rw.INSTRUCTIONS[a].conflicts for a in c for b in c)]
    assert len(combos) > 100
    for combo in combos:
        for answer in ANSWERS[:3]:
            todo = [ins(i, **rw.INSTRUCTIONS[i].sample_kwargs(rng, "Why?", answer)) for i in combo]
            out = rw.follow_all(answer, todo, rng)
            assert all(rw.grade({"instructions": todo}, out)["followed"]), (combo, out)


def test_follow_all_only_follows_what_it_is_given():
    todo = [ins("lowercase")]
    out = rw.follow_all(ANSWERS[0], todo, random.Random(0))
    both = [ins("lowercase"), ins("no_comma")]
    assert rw.grade({"instructions": both}, out)["followed"] == [True, False]


def test_word_limit_holds_after_additions():
    todo = [ins("word_limit", n=30), ins("end_phrase", phrase="Let me know if you have additional questions."),
            ins("postscript"), ins("keywords", keywords=["pancake", "river"]), ins("title")]
    out = rw.follow_all(ANSWERS[0], todo, random.Random(1))
    assert rw.count_words(out) < 30 and all(rw.grade({"instructions": todo}, out)["followed"])


def test_truth_comes_from_check_not_from_follow():
    # follow() means well but fails here: there is no letter to put in lowercase.
    row = {"instructions": [ins("lowercase"), ins("no_comma")]}
    out = rw.follow_all("1,000 + 2,000 = 3,000.", row["instructions"], random.Random(0))
    assert rw.grade(row, out) == {"followed": [False, True], "score": 3}


def test_truncate_and_trim_at_sentence_ends():
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert rw.truncate_words(text, 8) == "One two three. Four five six seven."
    assert rw.truncate_words(text, 4) == "One two three."
    assert rw.truncate_words(text, 2) == "One two."  # no sentence end keeps half: cut and close
    assert rw.truncate_words(text, 99) == text
    steps = "Do this:\n1. Open the file and read it with care today.\n2. Save it."
    assert rw.split_sentences(steps) == ["Do this:\n1. Open the file and read it with care today.", "2. Save it."]
    assert rw.split_sentences('Part III. It is in the U.S. now. It is "big". Really (twice). Fine') == [
        "Part III. It is in the U.S. now.", 'It is "big".', "Really (twice).", "Fine"]
    long = " ".join(f"Sentence {w} has five words." for w in "abcdefghijklmnopqrstuvwxyz")
    trimmed = rw.trim_response(long, 20)
    assert trimmed == " ".join(f"Sentence {w} has five words." for w in "abcd")
    assert rw.trim_response("Too short to keep.", 20) is None


# ----------------------------------------------------------------------------- parsing instructions

def test_parse_round_trip_every_type():
    rng = random.Random(3)
    for iid, spec in rw.INSTRUCTIONS.items():
        for _ in range(4):
            one = [ins(iid, **spec.sample_kwargs(rng, "What is a river?", ANSWERS[0]))]
            assert rw.parse_instructions(rw.with_instructions("What is a river?", one)) == one


def test_parse_round_trip_several_in_order():
    rng = random.Random(4)
    for _ in range(50):
        todo = rw.sample_instructions(rng, "Explain DNS.", ANSWERS[1], 3)
        prompt = rw.with_instructions("Explain DNS.", todo)
        assert "\n" not in prompt and rw.parse_instructions(prompt) == todo


def test_parse_self_instructed_copies_and_plain_prompts():
    p = "Write a haiku about rain. Answer with less than 17 words. Include keywords cloud, umbrella in the response."
    assert rw.parse_instructions(p) == [ins("word_limit", n=17), ins("keywords", keywords=["cloud", "umbrella"])]
    p = ("Tell me a joke? Finish your response with this exact phrase Any other questions?. "
         "No other words should follow this phrase.")
    assert rw.parse_instructions(p) == [ins("end_phrase", phrase="Any other questions?")]
    assert rw.parse_instructions("Write a haiku about rain, in less than 17 words.") is None
    assert rw.grade({"prompt": "Write a haiku. Answer with less than 5 words."}, "Rain falls.")["score"] == 5
    with pytest.raises(ValueError, match="no verifiable instruction"):
        rw.grade({"prompt": "Write a haiku."}, "Rain falls.")


# ----------------------------------------------------------------------------- scores, justifications, metrics

def test_score_mapping_by_hand():
    # Each instruction here is followed by exactly the responses that name it.
    three = {"instructions": [ins("lowercase"), ins("no_comma"), ins("quotes")]}
    assert rw.grade(three, "Hello, world")["score"] == 0  # 0 of 3
    assert rw.grade(three, "Hello world")["score"] == 2  # 1 of 3: 5/3 = 1.67 -> 2
    assert rw.grade(three, "hello world")["score"] == 3  # 2 of 3: 3.33 -> 3
    assert rw.grade(three, '"hello world"') == {"followed": [True, True, True], "score": 5}
    two = {"instructions": [ins("lowercase"), ins("no_comma")]}
    assert [rw.grade(two, r)["score"] for r in ("Hi, you", "hi, you", "hi you")] == [0, 3, 5]  # 2.5 -> 3
    one = {"instructions": [ins("capitals")]}
    assert [rw.grade(one, r)["score"] for r in ("Hi", "HI")] == [0, 5]


def test_justification_by_hand_and_parses():
    row = {"prompt": "x", "instructions": [ins("lowercase"), ins("no_comma")]}
    assert rw.justification(row, "hi, you") == ("Instruction 1 (all lowercase): followed.\n"
                                                 "Instruction 2 (no commas): not followed.\n"
                                                 "1 of 2 instructions followed. Score: 3")
    row = {"prompt": "x", "instructions": [ins("word_limit", n=40)]}
    assert rw.justification(row, "Short.") == ("Instruction 1 (less than 40 words): followed.\n"
                                               "1 of 1 instruction followed. Score: 5")
    rng = random.Random(5)
    for _ in range(100):
        row = {"instructions": rw.sample_instructions(rng, "Why?", ANSWERS[2], rng.randint(1, 3))}
        todo = rng.sample(row["instructions"], rng.randint(0, len(row["instructions"])))
        response = rw.follow_all(ANSWERS[2], todo, rng)
        assert parse_score(rw.justification(row, response)) == rw.grade(row, response)["score"]


def test_metrics_by_hand():
    rows = [{"instructions": [ins("lowercase")]},  # followed: 1 of 1, score 5
            {"instructions": [ins("lowercase"), ins("no_comma")]},  # 1 of 2, score 3
            {"instructions": [ins("lowercase"), ins("no_comma"), ins("capitals")]}]  # 0 of 3, score 0
    m = rw.metrics(rows, ["hi", "hi, you", "Hi, You"])
    assert m["prompt_acc"] == pytest.approx(1 / 3)
    # sample variance of (1, 0, 0) is 1/3; SE = sqrt(1/3 / 3) = 1/3
    assert m["prompt_acc_se"] == pytest.approx(1 / 3)
    assert m["instruction_acc"] == pytest.approx(2 / 6)
    # residuals f - R n = 2/3, 1/3, -1; sum of squares 14/9; / (3 * 2) -> 7/27; sqrt; / mean n (= 2)
    assert m["instruction_acc_se"] == pytest.approx(math.sqrt(7 / 27) / 2)
    assert m["quality"] == pytest.approx(8 / 3)
    # scores (5, 3, 0): deviations 7/3, 1/3, -8/3; sum of squares 114/9; / 2 / 3
    assert m["quality_se"] == pytest.approx(math.sqrt(114 / 9 / 2 / 3))
    assert m["check_rates"] == {"capitals": 0.0, "lowercase": pytest.approx(2 / 3), "no_comma": 0.0}
    assert (m["n_prompts"], m["n_instructions"]) == (3, 6)
    with pytest.raises(ValueError):
        rw.metrics(rows, ["hi"])


def test_instruction_level_se_equals_binomial_when_one_instruction_each():
    # With one instruction per prompt the ratio estimator is a plain mean: its SE is the sample SE.
    rows = [{"instructions": [ins("no_comma")]}] * 5
    m = rw.metrics(rows, ["a", "a", "a,", "a", "a,"])
    p = 3 / 5
    assert m["instruction_acc"] == pytest.approx(p)
    assert m["instruction_acc_se"] == pytest.approx(math.sqrt(p * (1 - p) * 5 / 4 / 5))
    assert m["instruction_acc_se"] == pytest.approx(m["prompt_acc_se"])


# ----------------------------------------------------------------------------- data

TOPICS = ["a bicycle", "sourdough bread", "a laptop battery", "house plants", "a vegetable garden", "chess openings",
          "a first marathon", "a job interview", "public speaking", "saving money", "learning Spanish", "a used car",
          "a home network", "watercolor painting", "a small aquarium", "sleep habits", "time management",
          "a wedding toast", "a rescue dog", "camping gear", "a resume", "climate change", "solar panels",
          "the stock market", "a podcast", "a board game night", "bird watching", "a road trip", "meal planning",
          "a new kitten", "guitar practice", "a science fair project", "a book club", "home brewing coffee",
          "a compost bin", "rock climbing", "a cover letter", "remote work", "a tax return", "yoga for beginners",
          "a photography hobby", "a birthday party", "an electric scooter", "a job offer", "a moving day",
          "a sore back", "a team meeting", "a blog", "a budget spreadsheet", "a history essay", "a hiking trip",
          "a noisy neighbor", "a password manager", "a lemon tree", "a piano recital", "a startup idea",
          "a chemistry exam", "a winter coat", "a family reunion", "a sewing machine"]
QUESTIONS = ["How do I take care of {}?", "What should a beginner know about {}?",
             "Can you explain the basics of {} in simple terms?", "What are common mistakes with {}?"]


def fixture_pairs() -> list[dict]:
    pairs = [{"id": f"t{k}", "prompt": QUESTIONS[k % 4].format(t),
              "response": f"Good question! Dealing with {t} is easier than it looks, and a little routine goes a long "
                          f"way. First, learn the basics from a trusted guide, and keep notes as you go. Second, set "
                          f"aside time each week, because small steps add up over a month. Many people find that "
                          f"{t} becomes a relaxing part of life. If something goes wrong, ask a friend or a local "
                          f"expert, since they have often seen the same problem. Finally, be patient with yourself."}
             for k, t in enumerate(TOPICS)]
    base = pairs[0]["response"]
    pairs += [{"id": "dup", "prompt": "how do I take care of A BICYCLE", "response": base},  # a duplicate
              {"id": "utf", "prompt": "Qu'est-ce qu'un vélo ? Explique-moi.", "response": base},
              {"id": "code", "prompt": "Fix my loop please, it hangs.",
               "response": "Try this:\n```\nwhile 1: pass\n```\n" + base},
              {"id": "short", "prompt": "Hi there friend, hello.", "response": "Hello! How can I help you today?"}]
    return pairs


def test_filter_pairs_counts_and_cleaning():
    extra = [{"id": "sp", "prompt": "Tell me about the rings of Saturn please.Share Prompt",
              "response": "Saturn's rings are made of ice and rock. They are \\*very\\* thin. " * 3}]
    kept, counts = rw.filter_pairs(fixture_pairs() + extra)
    assert counts == {"read": 65, "duplicate": 1, "not_ascii": 1, "code_block": 1, "response_length": 1, "kept": 61}
    assert kept[-1]["prompt"] == "Tell me about the rings of Saturn please."
    assert "*very*" in kept[-1]["response"] and "\\" not in kept[-1]["response"]
    assert all(rw.count_words(p["response"]) <= rw.TRIM_WORDS for p in kept)


def test_is_heldout_stable_hash_of_the_normalised_prompt():
    import hashlib
    for q in [QUESTIONS[k % 4].format(t) for k, t in enumerate(TOPICS)]:
        norm = " ".join("".join(c if c.isalnum() else " " for c in q.lower()).split())
        h = int.from_bytes(hashlib.sha256(norm.encode()).digest()[:8], "big")
        assert rw.is_heldout(q) == (h % 4 == 0) == rw.is_heldout(q.upper() + " !")
    share = sum(rw.is_heldout(f"question number {k}") for k in range(4000)) / 4000
    assert abs(share - 1 / rw.HELDOUT_FRACTION) < 0.03


def test_make_data_contract_split_and_truth():
    d = rw.make_data(fixture_pairs(), n_ift=30, n_eft=40, n_eval=6, n_rm=4, seed=0, rm_responses=4)
    assert {k: len(v) for k, v in d.items()} == {"ift": 30, "eft": 40, "eval": 6, "rm": 4}
    assert all(set(r) == {"prompt", "response", "instructions"} for r in d["ift"])
    assert all(set(r) == {"instruction", "response", "judgment", "score", "instructions"} for r in d["eft"])
    assert all(set(r) == {"prompt", "instructions"} for r in d["eval"])
    assert all(set(r) == {"instruction", "responses", "scores", "instructions"} for r in d["rm"])
    bases = {QUESTIONS[k % 4].format(t) for k, t in enumerate(TOPICS)}
    base_of = lambda p: next(b for b in bases if p.startswith(b))  # noqa: E731
    train = {base_of(r["prompt"]) for r in d["ift"]} | {base_of(r["instruction"]) for r in d["eft"]}
    held = [base_of(r["prompt"]) for r in d["eval"]] + [base_of(r["instruction"]) for r in d["rm"]]
    assert len(set(held)) == len(held) == 10 and not train & set(held)  # held out, each prompt once
    assert all(rw.is_heldout(b) for b in held) and not any(rw.is_heldout(b) for b in train)
    for r in d["ift"] + d["eval"]:
        assert 1 <= len(r["instructions"]) <= 3 and rw.parse_instructions(r["prompt"]) == r["instructions"]
    for r in d["eft"]:
        assert r["score"] == rw.grade(r, r["response"])["score"] == parse_score(r["judgment"])
    assert {r["score"] for r in d["eft"]} >= {0, 3, 5}
    for r in d["rm"]:
        assert len(r["instructions"]) in (2, 3) and rw.parse_instructions(r["instruction"]) == r["instructions"]
        assert r["scores"] == [rw.grade(r, x)["score"] for x in r["responses"]]
        assert len(set(r["scores"])) == min(4, len(r["instructions"]) + 1)  # distinct where possible
    acc = rw.seed_accuracy(d["ift"])
    assert 0 < acc["prompt_acc"] < 1 and 0 < acc["instruction_acc"] < 1


def test_make_data_deterministic_and_seeded():
    a = rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=1)
    assert a == rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=1)
    assert a != rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=2)
    assert a["eval"] == rw.make_data(fixture_pairs(), 25, 12, 5, 3, seed=1)["eval"]  # other sizes leave eval be


def test_passing_ift_seed_follows_every_instruction_and_leaves_the_held_out_sets():
    imperfect = rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=1)
    passing = rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=1, ift_seed="passing")
    assert len(passing["ift"]) == 20 and rw.seed_accuracy(passing["ift"])["prompt_acc"] == 1.0
    assert rw.seed_accuracy(imperfect["ift"])["prompt_acc"] < 1.0
    assert passing["eval"] == imperfect["eval"] and passing["rm"] == imperfect["rm"]
    assert passing["ift"][0]["prompt"] == imperfect["ift"][0]["prompt"]  # the same draws, then all followed
    with pytest.raises(ValueError, match="'imperfect' or 'passing'"):
        rw.make_data(fixture_pairs(), 20, 10, 5, 3, seed=1, ift_seed="best")


def test_passing_ift_seed_drops_rows_that_fail_a_check(monkeypatch):
    """A rewrite that does not do what it should: such rows are dropped, never kept as passing."""
    broken = rw.INSTRUCTIONS["no_comma"].__class__(**{**rw.INSTRUCTIONS["no_comma"].__dict__,
                                                       "follow": lambda r, kw, rng: r + ", "})
    monkeypatch.setitem(rw.INSTRUCTIONS, "no_comma", broken)
    d = rw.make_data(fixture_pairs(), 12, 4, 5, 3, seed=1, ift_seed="passing")
    assert all("no_comma" not in [i["id"] for i in r["instructions"]] for r in d["ift"])
    assert rw.seed_accuracy(d["ift"])["prompt_acc"] == 1.0


def test_make_data_truth_ignores_what_follow_meant(monkeypatch):
    # A follow() that silently does nothing: the data must then say those instructions were not followed.
    broken = rw.INSTRUCTIONS["no_comma"].__class__(**{**rw.INSTRUCTIONS["no_comma"].__dict__,
                                                       "follow": lambda r, kw, rng: r})
    monkeypatch.setitem(rw.INSTRUCTIONS, "no_comma", broken)
    d = rw.make_data(fixture_pairs(), 30, 40, 6, 4, seed=0)
    assert any(i["id"] == "no_comma" for r in d["ift"] for i in r["instructions"])
    assert rw.seed_accuracy(d["ift"])["check_rates"]["no_comma"] == 0.0  # every fixture answer has commas
    for r in d["eft"]:
        assert r["score"] == rw.grade(r, r["response"])["score"]
        if any(i["id"] == "no_comma" for i in r["instructions"]):
            assert "Instruction" in r["judgment"] and "(no commas): not followed." in r["judgment"]


def test_make_data_refuses_sizes_it_cannot_fill():
    with pytest.raises(ValueError, match="held-out prompts"):
        rw.make_data(fixture_pairs(), 10, 10, 50, 10, seed=0)
    with pytest.raises(ValueError, match="train prompts"):
        rw.make_data(fixture_pairs(), 500, 10, 2, 2, seed=0)


# ----------------------------------------------------------------------------- the world interface

def test_world_interface(monkeypatch):
    import types

    import data
    convs = [{"id": p["id"], "conversations": [{"from": "human", "value": p["prompt"]},
                                              {"from": "gpt", "value": p["response"]}]} for p in fixture_pairs()]
    monkeypatch.setattr(data, "read_sharegpt", lambda path=None: (convs, {"path": path}))
    cfg = types.SimpleNamespace(sharegpt="", n_ift=12, n_eft=8, n_eval=4, n_rm=3, seed=0, ift_seed="imperfect")
    d = rw.world_data(cfg)
    assert d == rw.make_data(fixture_pairs(), 12, 8, 4, 3, seed=0)
    row = {"prompt": "Hi. Answer with less than 3 words.", "instructions": [ins("word_limit", n=3)]}
    assert (rw.score(row, "Hello you"), rw.score(row, "Hello to you")) == (5.0, 0.0)
    assert rw.score_text("Why? Your entire response should be in English, and in all capital letters.", "NO.") == 5.0
    assert rw.score_text("Why is the sky blue?", "Because.") is None
    assert rw.RUBRIC == "instruction_following" and rw.NAME == "real"
