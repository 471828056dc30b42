"""selfinstruct.py: the few-shot prompts it builds from small pools, and the tasks it keeps from what the
model wrote, with generation replaced by canned outputs (the sampling itself is tests/test_generate.py's)."""
from types import SimpleNamespace

import generate
import selfinstruct as S

MERGED, EOT = 1000, 1001  # "?\n" as one token; end of turn


class CharTok:
    """Characters as ids (their code points), plus one token for "?\n": byte-level BPEs whose pattern
    takes the line break with the punctuation before it (Llama 3's does) make such merged tokens."""
    n_words, stop_ids, pad_id, special_tokens = 1002, [EOT], EOT, {"<|eot|>": EOT}

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            two = text.startswith("?\n", i)
            ids.append(MERGED if two else ord(text[i]))
            i += 2 if two else 1
        return ids

    def decode(self, ids):
        return "".join("?\n" if i == MERGED else "" if i == EOT else chr(i) for i in ids)


def cfg(n_prompts=3):
    return SimpleNamespace(seed=0, n_prompts=n_prompts, max_prompt_tokens=40, prompt_temperature=0.6,
                           top_p=0.9, compile=False, batch_size=8, rouge_threshold=0.7, kernels="default")


IFT = ["Name a red fruit", "List three rivers in Europe", "Explain why the sky is blue",
       "Write a haiku about rain", "Give a synonym for happy", "Translate hello into French",
       "Describe a cat in one line", "Suggest a name for a dog"]


def run(monkeypatch, ift, earlier, texts):
    """create_prompts with generate_many answering texts[i] to prompt i; -> (rows, stats, the demonstration
    lines of each few-shot prompt, the keyword arguments generate_many got)."""
    tok, seen = CharTok(), {}

    def fake(model, prompts, n, **kw):
        seen.update(prompts=[tok.decode(p) for p in prompts], kw=kw)
        return [[tok.encode(t)] for t in texts]
    monkeypatch.setattr(generate, "generate_many", fake)
    rows, stats = S.create_prompts(None, tok, cfg(len(texts)), ift, earlier, "test")
    demos = [[line.removeprefix("Task: ") for line in p.split("\n") if line.startswith("Task: ")]
             for p in seen["prompts"]]
    return rows, stats, demos, seen["kw"]


def test_pools_smaller_than_the_shots_give_what_they_have(monkeypatch):
    """3 IFT rows (under the 6 IFT shots) and no earlier prompts: every IFT row once among the first six
    shots' draw, and 2 of them again as the "earlier" shots; 8 IFT rows and a single earlier prompt:
    6 IFT shots and that one prompt."""
    texts = ["Count the stars at night\n", "Paint a green bird\n", "List two seas\n"]
    rows, stats, demos, kw = run(monkeypatch, IFT[:3], [], texts)
    assert stats["generated"] == 3 and all(len(d) == 5 and set(d) == set(IFT[:3]) for d in demos)
    assert kw["vocab_limit"] == CharTok.n_words  # no id the tokenizer cannot decode is ever sampled
    rows, stats, demos, _ = run(monkeypatch, IFT, ["Sing a song about spring"], texts)
    for d in demos:
        assert len(d) == 7 and d.count("Sing a song about spring") == 1
        assert len(set(d) & set(IFT)) == 6
    assert [r["prompt"] for r in rows] == [t.strip() for t in texts]


def test_a_line_break_merged_into_the_last_token_keeps_the_text_before_it(monkeypatch):
    """A task ends at the first token holding a line break; when that token is "?\n", its "?" is part of
    the task."""
    texts = ["What is the largest ocean?\n", "Why do cats purr?\n", "Name a planet.\n", "Count to five"]
    assert CharTok().encode(texts[0])[-1] == MERGED
    rows, stats, _, _ = run(monkeypatch, IFT, [], texts)
    kept = ["What is the largest ocean?", "Why do cats purr?", "Name a planet."]
    assert [r["prompt"] for r in rows] == kept
    assert stats["unfinished"] == 1 and stats["kept"] == 3
