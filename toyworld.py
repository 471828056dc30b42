"""A toy instruction world with a programmatic ground truth, for Self-Rewarding LMs on a CPU.

No human data exists offline and no tiny model can judge open-ended answers, so `python loop.py`
runs the paper's method (Yuan et al. 2024, arXiv 2401.10020) on verifiable list instructions in
the spirit of IFEval, e.g.

    list 4 fruit words, in alphabetical order, no repeats, separated by commas
    -> apple, banana, fig, pear

The rubric is additive 0..5 like Fig. 2: one point per satisfied check, always the same five:
    count     exactly N words
    category  every word belongs to the category (8 categories x 12 short words)
    sorted    the words are in alphabetical order (needs >= 2 words)
    unique    no word repeats (needs >= 2 words)
    format    exactly "w<sep>w<sep>w": lowercase a-z words, the requested separator, nothing else
Checking is easier than generating, which is the asymmetry that lets a model improve by judging
itself. There is deliberately no copy constraint ("includes word W"): in a throwaway probe a model of
the toy's size never learned it. The instruction varies N (3..7, digits or words),
the category, the separator (comma, semicolon, slash) and many paraphrases; each instruction string
is assigned to train or held-out by a stable hash, so evaluation prompts never appear in IFT, EFT,
pretraining or tokenizer text. Seed IFT responses break each check at random (their mean score is in the README's results table),
so a model that learns to check can end up better than its teachers.

Imports: the standard library; from the project judge.py (the Fig. 2 prompt, mean_se) and, only to rebuild
assets/toy.tiktoken, tools/train_bpe.py.
"""
import hashlib
import os
import random
import re
from functools import lru_cache

CATEGORIES: dict[str, list[str]] = {  # no word belongs to two categories
    "animals": ["ant", "bear", "cat", "cow", "deer", "dog", "duck", "fox", "goat", "lion", "owl", "wolf"],
    "fruits": ["apple", "banana", "cherry", "fig", "grape", "kiwi", "lemon", "mango", "melon", "peach", "pear", "plum"],
    "colors": ["black", "blue", "brown", "gold", "gray", "green", "pink", "purple", "red", "silver", "white", "yellow"],
    "tools": ["axe", "brush", "chisel", "drill", "hammer", "ladder", "pliers", "rake", "saw", "shovel", "spade", "wrench"],
    "vehicles": ["bike", "boat", "bus", "car", "jeep", "plane", "ship", "taxi", "train", "tram", "truck", "van"],
    "clothes": ["belt", "boot", "cap", "coat", "dress", "glove", "hat", "jacket", "scarf", "shirt", "skirt", "sock"],
    "jobs": ["actor", "baker", "chef", "clerk", "doctor", "farmer", "miner", "nurse", "pilot", "singer", "tailor", "waiter"],
    "sports": ["archery", "boxing", "cycling", "diving", "fencing", "golf", "hockey", "judo", "karate", "rowing", "rugby", "tennis"],
}
SINGULAR = {"animals": "animal", "fruits": "fruit", "colors": "color", "tools": "tool",
            "vehicles": "vehicle", "clothes": "clothing", "jobs": "job", "sports": "sport"}
SEPARATORS = {"comma": ", ", "semicolon": "; ", "slash": " / "}
CHECK_NAMES = ("count", "category", "sorted", "unique", "format")
COUNTS = range(3, 8)  # N; at most 7 keeps responses short and leaves room for 2 off-by-one errors
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}

# Paraphrase pieces. Every combination is a distinct string (distinct phrases in fixed slots).
PREFIXES = ["", "please "]
VERBS = ["list", "name", "give", "write", "give me", "tell me"]
NOUN_PHRASES = ["{n} {sing} words", "{n} words for {plural}", "{n} kinds of {plural}", "{n} {plural}"]
SORT_PHRASES = ["in alphabetical order", "sorted alphabetically", "from a to z"]
UNIQUE_PHRASES = ["no repeats", "with no duplicates", "each word only once"]
SEP_PHRASES = {"comma": ["separated by commas", "comma separated", "using commas"],
               "semicolon": ["separated by semicolons", "semicolon separated", "using semicolons"],
               "slash": ["separated by slashes", "slash separated", "using slashes"]}
ENDINGS = ["", "."]
INSTRUCTION_SPACE = (len(PREFIXES) * len(VERBS) * 2 * len(NOUN_PHRASES) * len(COUNTS) * len(CATEGORIES)
                     * len(SORT_PHRASES) * len(UNIQUE_PHRASES) * sum(map(len, SEP_PHRASES.values()))
                     * 6 * len(ENDINGS))  # 2 = digits or words; 6 = orders of the three clauses
HELDOUT_FRACTION = 5  # 1 in 5 instruction strings is held out

# Seed ("human") data breaks each check with these probabilities: mean 5 - 1.65 = 3.35 of 5.
SEED_FAIL = {"count": 0.35, "category": 0.25, "sorted": 0.40, "unique": 0.30, "format": 0.35}

_CAT_FORMS = {form: cat for cat in CATEGORIES for form in (cat, SINGULAR[cat])}
_CAT_FORMS.update({"animal": "animals", "fruit": "fruits", "color": "colors", "colour": "colors",
                   "colours": "colors", "tool": "tools", "vehicle": "vehicles", "job": "jobs", "sport": "sports"})
_CAT_RE = re.compile(r"\b(" + "|".join(sorted(_CAT_FORMS, key=len, reverse=True)) + r")\b")
_NUM_RE = re.compile(r"\b(\d+|" + "|".join(NUMBER_WORDS.values()) + r")\b")
_SEP_RE = re.compile(r"\b(comma|semicolon|slash)(?:es|s)?\b")
_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters, any script, so unicode never crashes
_FORMAT_RE = {k: re.compile(r"[a-z]+(?:" + re.escape(s) + r"[a-z]+)*") for k, s in SEPARATORS.items()}
_CAT_SETS = {cat: frozenset(ws) for cat, ws in CATEGORIES.items()}
_WORD_TO_NUM = {w: n for n, w in NUMBER_WORDS.items()}


@lru_cache(maxsize=65536)
def parse_instruction(instruction: str) -> tuple[int, str, str]:
    """(N, category, separator key) of an instruction, or ValueError naming it. Lenient about
    wording so that paraphrases outside the templates (e.g. self-instructed prompts) still parse."""
    text = instruction.lower() if isinstance(instruction, str) else ""
    nums = {int(m) if m.isdigit() else _WORD_TO_NUM[m] for m in _NUM_RE.findall(text)}
    cats = {_CAT_FORMS[m] for m in _CAT_RE.findall(text)}
    seps = set(_SEP_RE.findall(text))
    if len(nums) != 1 or len(cats) != 1 or len(seps) != 1:
        raise ValueError(f"toyworld cannot parse instruction {instruction!r}: need exactly one count, one "
                         f"category and one separator, found counts={sorted(nums)} categories={sorted(cats)} "
                         f"separators={sorted(seps)}")
    (n,), (cat,), (sep,) = nums, cats, seps
    if not 1 <= n <= len(CATEGORIES[cat]):
        raise ValueError(f"toyworld cannot parse instruction {instruction!r}: count {n} is not in 1..{len(CATEGORIES[cat])}")
    return n, cat, sep


def checks(instruction: str, response: str) -> dict[str, bool]:
    """The five rubric items, in CHECK_NAMES order. Words are letter runs, lowercased, so a case or
    punctuation slip costs only the format point, and each check stays independent of the others."""
    n, cat, sep = parse_instruction(instruction)
    response = response if isinstance(response, str) else str(response)
    words = [w.lower() for w in _WORD_RE.findall(response)]
    return {
        "count": len(words) == n,
        "category": bool(words) and all(w in _CAT_SETS[cat] for w in words),
        "sorted": len(words) >= 2 and words == sorted(words),  # one word is not a sorted list
        "unique": len(words) >= 2 and len(set(words)) == len(words),
        "format": _FORMAT_RE[sep].fullmatch(response.strip()) is not None,
    }


def true_score(instruction: str, response: str) -> int:
    return sum(checks(instruction, response).values())


def justification(instruction: str, response: str) -> str:
    """The EFT target, "justify, then Score: k" as Fig. 2 asks: restate what was asked and quote the
    response, then name each check, then the score. Restating puts what the checks need right before
    them, so a tiny judge copies instead of searching back across the Fig. 2 text between the response
    and its verdict (without it, a 1M-parameter judge stayed at chance). The quote repeats Fig. 2's own
    "<response>" markup, so copying is plain induction: find the earlier "<response>", copy what follows."""
    n, cat, sep = parse_instruction(instruction)
    return f"asked {n} {cat}, {sep}. <response>{response}</response> {verdict(instruction, response)}"


def verdict(instruction: str, response: str) -> str:
    """The last part of a justification: each check by name, then the score."""
    c = checks(instruction, response)
    return ", ".join(f"{k} {'ok' if v else 'no'}" for k, v in c.items()) + f". Score: {sum(c.values())}"


def is_heldout(instruction: str) -> bool:
    """Stable across processes and Python versions (hashlib, not the salted built-in hash())."""
    h = int.from_bytes(hashlib.sha256(instruction.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return h % HELDOUT_FRACTION == 0


def _compose(rng: random.Random) -> str:
    n, cat, sep = rng.choice(COUNTS), rng.choice(list(CATEGORIES)), rng.choice(list(SEPARATORS))
    num = str(n) if rng.random() < 0.6 else NUMBER_WORDS[n]
    noun = rng.choice(NOUN_PHRASES).format(n=num, sing=SINGULAR[cat], plural=cat)
    clauses = [rng.choice(SORT_PHRASES), rng.choice(UNIQUE_PHRASES), rng.choice(SEP_PHRASES[sep])]
    rng.shuffle(clauses)
    return f"{rng.choice(PREFIXES)}{rng.choice(VERBS)} {noun}, {', '.join(clauses)}{rng.choice(ENDINGS)}"


def make_instruction(rng: random.Random, split: str = "train") -> str:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    while True:  # rejection sampling: ~1.25 draws for train, ~5 for heldout
        s = _compose(rng)
        if is_heldout(s) == (split == "heldout"):
            return s


def sample_response(rng: random.Random, instruction: str, quality: float | None = None) -> str:
    """A response to `instruction`. quality=None: seed-like, each check broken with SEED_FAIL
    probability. Else exactly round(5*quality) checks hold, a random subset, so true_score is exact."""
    n, cat, sep = parse_instruction(instruction)
    if n not in COUNTS:  # the generator's length logic assumes the world's own N range
        raise ValueError(f"sample_response supports N in {COUNTS.start}..{COUNTS.stop - 1}: {instruction!r}")
    if quality is None:
        ok = {c: rng.random() >= p for c, p in SEED_FAIL.items()}
    else:
        keep = set(rng.sample(CHECK_NAMES, round(min(max(quality, 0.0), 1.0) * 5)))
        ok = {c: c in keep for c in CHECK_NAMES}
    if ok["count"]:
        length = n
    else:  # off by one or two, like a person miscounting; >=3 if both sorted and unique must fail
        lo = 2 if ok["sorted"] or ok["unique"] else 3
        length = rng.choice([k for k in range(max(lo, n - 2), n + 3) if k != n])
    n_distinct = length if ok["unique"] else length - 1
    words = rng.sample(CATEGORIES[cat], n_distinct)
    if not ok["category"]:
        other = CATEGORIES[rng.choice([c for c in CATEGORIES if c != cat])]
        if rng.random() < 0.2:  # the whole list from the wrong category
            words = rng.sample(other, n_distinct)
        else:  # one or two intruders, distinct from each other so "unique" is untouched
            slots = rng.sample(range(n_distinct), min(n_distinct, rng.choice((1, 1, 2))))
            for i, w in zip(slots, rng.sample(other, len(slots))):
                words[i] = w
    if not ok["unique"]:
        words.append(rng.choice(words))
    words.sort()
    if not ok["sorted"]:  # there are always >= 2 distinct words here
        if rng.random() < 0.5:  # a near miss: one adjacent swap
            i = rng.choice([i for i in range(len(words) - 1) if words[i] != words[i + 1]])
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            while words == sorted(words):
                rng.shuffle(words)
    s = SEPARATORS[sep]
    if ok["format"]:
        return s.join(words)
    wrong = rng.choice([v for k, v in SEPARATORS.items() if k != sep])
    mode = rng.randrange(5)  # format slips that leave the words (and so the other checks) intact
    if mode == 0:
        return wrong.join(words)  # wrong separator
    if mode == 1:
        return s.join(words) + "."  # trailing period
    if mode == 2:
        return s.join([words[0].capitalize()] + words[1:])  # capital letter
    if mode == 3:
        return s.strip().join(words)  # no spaces around the separator
    seps = [s] * (len(words) - 1)  # one separator wrong
    seps[rng.randrange(len(seps))] = wrong
    return words[0] + "".join(x + w for x, w in zip(seps, words[1:]))


def seed_ift(n: int, seed: int) -> list[dict]:
    """IFT seed: train instructions with imperfect, varied "human" responses (one per instruction,
    drawn from millions of train instruction strings, so nothing is memorised)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ins = make_instruction(rng, "train")
        out.append({"prompt": ins, "response": sample_response(rng, ins)})
    return out


def seed_eft(n: int, seed: int) -> list[dict]:
    """EFT seed: judgments whose scores are spread evenly over 0..5, so every check is taught both
    ways. The loop wraps (instruction, response) in Fig. 2 with judge.judge_prompt."""
    rng = random.Random(seed)
    targets = [i % 6 for i in range(n)]
    rng.shuffle(targets)
    out = []
    for k in targets:
        ins = make_instruction(rng, "train")
        resp = sample_response(rng, ins, quality=k / 5)
        out.append({"instruction": ins, "response": resp, "judgment": justification(ins, resp),
                    "score": true_score(ins, resp)})
    return out


def graded_answers(n: int, seed: int) -> list[str]:
    """Plain-text graded answers for the toy M0's pretraining ("task: ... / <response>...</response> /
    justification"), the toy's stand-in for the critiques a real base model has read: the paper's SFT baseline already judges
    at 65% pairwise accuracy before any EFT. No Fig. 2 prompt, no chat format, no held-out instruction.
    A few unrelated sentences sometimes sit between answer and verdict, so that restating (copying) is
    learned at a distance, as a judge behind the Fig. 2 text needs it."""
    rng = random.Random(seed + 17)
    out = []
    for e in seed_eft(n, seed):
        filler = "".join(_pretrain_line(rng) + "\n" for _ in range(rng.choice((0, 1, 2, 4, 6, 8))))
        out.append(f"task: {e['instruction']}\n<response>{e['response']}</response>\n{filler}{e['judgment']}\n")
    return out


def eval_prompts(n: int, seed: int) -> list[str]:
    """n distinct held-out instructions (about 750k exist)."""
    rng, seen = random.Random(seed), {}
    while len(seen) < n:
        seen.setdefault(make_instruction(rng, "heldout"), None)  # a dict keeps the draw order
    return list(seen)


def rm_set(n_prompts: int, n_responses: int, seed: int) -> list[dict]:
    """Held-out reward-modelling set: each prompt with responses of distinct true scores where
    n_responses <= 6, so every pair of responses is ranked by the ground truth."""
    rng = random.Random(seed + 1_000_003)  # not the same draws as eval_prompts(seed)
    out = []
    for ins in eval_prompts(n_prompts, seed + 1_000_003):
        ks = rng.sample(range(6), n_responses) if n_responses <= 6 else [rng.randrange(6) for _ in range(n_responses)]
        resps = [sample_response(rng, ins, quality=k / 5) for k in ks]
        out.append({"instruction": ins, "responses": resps, "scores": [true_score(ins, r) for r in resps]})
    return out


def _pretrain_line(rng: random.Random) -> str:
    """One sentence of "world knowledge": category membership, alphabetical order, counting,
    separators and repeats. No instruction/response formatting."""
    cat = rng.choice(list(CATEGORIES))
    pool, sing, sep = CATEGORIES[cat], SINGULAR[cat], rng.choice(list(SEPARATORS.values()))
    kind = rng.randrange(8)
    if kind == 0:
        return f"some {cat}: " + sep.join(rng.sample(pool, rng.randint(2, 8)))
    if kind == 1:
        ws = sorted(rng.sample(pool, rng.choice([2, 3, 4, 5, 6, 7, 12])))
        return f"{cat} in alphabetical order: " + sep.join(ws)
    if kind == 2:
        w = rng.choice(pool)
        return rng.choice([f"{w} is a {sing} word.", f"{w} is one of the {cat}.", f"the word {w} belongs to {cat}."])
    if kind == 3:
        a, b = sorted(rng.sample([w for ws in CATEGORIES.values() for w in ws], 2))
        return rng.choice([f"{a} comes before {b} in the alphabet.", f"{b} comes after {a}."])
    if kind == 4:
        k = rng.randint(2, 8)
        num = str(k) if rng.random() < 0.5 else NUMBER_WORDS[k]
        return f"here are {num} {cat}: " + sep.join(rng.sample(pool, k))
    if kind == 5:
        ws = rng.sample(pool, rng.randint(2, 7))
        return f"counting {cat}: " + ", ".join(f"{i} {w}" for i, w in enumerate(ws, 1)) + f". that makes {len(ws)}."
    if kind == 6:
        other = rng.choice([c for c in CATEGORIES if c != cat])
        return f"{rng.choice(CATEGORIES[other])} is not a {sing} word, it is a {SINGULAR[other]} word."
    ws = rng.sample(pool, rng.randint(2, 5))
    if rng.random() < 0.5:
        return f"the list {sep.join(ws)} has no repeats."
    w = rng.choice(ws)
    return f"the list {sep.join(sorted(ws + [w]))} repeats {w}."


def pretrain_text(n_chars: int, seed: int) -> str:
    rng, lines, total = random.Random(seed), [], 0
    while total < n_chars:
        lines.append(_pretrain_line(rng))
        total += len(lines[-1]) + 1
    return "\n".join(lines)[:n_chars]


def tokenizer_corpus(seed: int = 0) -> str:
    """~0.8 MB to train the toy BPE: pretraining text, train instructions and responses, EFT
    judgments, and the filled Fig. 2 prompt often enough that its words merge into tokens."""
    from judge import judge_prompt  # lazy: judge.py may import this module for EFT building
    ift, eft = seed_ift(3000, seed + 1), seed_eft(2000, seed + 2)
    parts = [pretrain_text(300_000, seed)]
    parts += [f"{d['prompt']}\n{d['response']}" for d in ift]
    # Verdicts only, not whole justifications: the committed tokenizer was trained before judgments
    # restated the task, and keeping its corpus fixed keeps the asset reproducible (a test checks it).
    parts += [judge_prompt(d["instruction"], d["response"]) + "\n" + verdict(d["instruction"], d["response"])
              for d in eft[:40]]
    parts += [verdict(d["instruction"], d["response"]) for d in eft[40:]]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the world interface
# What loop.py asks of a world (realworld.py answers the same): its data in the contract of data.py, its
# default rubric, and the ground truth that evaluation alone reads.
NAME = "toy"
RUBRIC = "fig2"
TITLE = "the toy world"


def world_data(cfg) -> dict:
    """Seed data (Section 3.1) and the held-out sets, sized by the loop's config."""
    return {"ift": seed_ift(cfg.n_ift, cfg.seed), "eft": seed_eft(cfg.n_eft, cfg.seed + 1),
            "eval": [{"prompt": p} for p in eval_prompts(cfg.n_eval, cfg.seed + 2)],
            "rm": rm_set(cfg.n_rm, 4, cfg.seed + 3)}


def score(row: dict, response: str) -> float:
    """Ground truth on the judges' 0..5 scale of a response to an eval (or IFT) row."""
    return true_score(row["prompt"], response)


def score_text(prompt: str, response: str) -> float | None:
    """The same for a bare prompt (a self-instructed one), or None where the prompt does not parse."""
    try:
        parse_instruction(prompt)
    except ValueError:
        return None
    return true_score(prompt, response)


def metrics(rows: list[dict], responses: list[str]) -> dict:
    """Mean true score ± its SE ("quality") and the pass rate of each check."""
    from judge import mean_se
    q, se = mean_se([score(r, x) for r, x in zip(rows, responses)])
    per = [checks(r["prompt"], x) for r, x in zip(rows, responses)]
    return {"quality": q, "quality_se": se, "check_rates": {c: sum(p[c] for p in per) / len(per) for c in CHECK_NAMES}}


TOY_VOCAB = 1280  # BPE ranks; the corpus supports at most ~1293 before every word is one token
# Resolved from this file, so `python <repo>/loop.py` works from any folder.
TOKENIZER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "toy.tiktoken")


def train_tokenizer(path: str = TOKENIZER_PATH, vocab_size: int = TOY_VOCAB, seed: int = 0) -> None:
    """Train the toy byte-level BPE on tokenizer_corpus(seed) and save it in tiktoken's format.
    The committed assets/toy.tiktoken is this function's output (a test checks it)."""
    from tools.train_bpe import save_tiktoken_bpe, train_bpe
    save_tiktoken_bpe(train_bpe(tokenizer_corpus(seed), vocab_size), path)


if __name__ == "__main__":
    import sys
    import time
    if sys.argv[1:2] == ["--write-tokenizer"]:
        train_tokenizer()
        print(f"wrote {TOKENIZER_PATH}")
        sys.exit()
    rng = random.Random(0)
    print("== instructions (train, then held-out)")
    for split in ("train", "train", "train", "heldout", "heldout"):
        print(f"  [{split}] {make_instruction(rng, split)}")
    print("== seed IFT samples")
    for d in seed_ift(5, 1):
        print(f"  {d['prompt']!r}\n    -> {d['response']!r}  (true score {true_score(d['prompt'], d['response'])})")
    print("== seed EFT samples")
    for d in seed_eft(4, 2):
        print(f"  {d['instruction']!r} -> {d['response']!r}\n    judgment: {d['judgment']}")
    print("== pretraining text sample")
    print("  " + pretrain_text(400, 3).replace("\n", "\n  "))

    t0 = time.perf_counter()
    ift = seed_ift(20_000, 0)
    dt = time.perf_counter() - t0
    per = [checks(d["prompt"], d["response"]) for d in ift]
    scores = [sum(c.values()) for c in per]
    mean = sum(scores) / len(scores)
    sd = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
    print(f"== stats\n  seed IFT (n=20000): mean true score {mean:.3f} +- {sd / len(scores) ** 0.5:.3f} (sd {sd:.2f}); "
          f"{len(ift) / dt:,.0f} examples/s")
    print("  per-check pass rates: " + ", ".join(f"{c} {sum(p[c] for p in per) / len(per):.3f}" for c in CHECK_NAMES))
    hist = [0] * 6
    for d in seed_eft(6000, 0):
        hist[d["score"]] += 1
    print(f"  EFT score histogram 0..5 (n=6000): {hist}")
    iw = [len(d["prompt"].split()) for d in ift]
    rw = [len(d["response"].split()) for d in ift]
    print(f"  instruction: {sum(iw) / len(iw):.1f} words, {sum(len(d['prompt']) for d in ift) / len(ift):.0f} chars "
          f"(max {max(iw)} words); response: {sum(rw) / len(rw):.1f} words, "
          f"{sum(len(d['response']) for d in ift) / len(ift):.0f} chars")
    draws = [_compose(random.Random(i)) for i in range(20_000)]
    frac = sum(map(is_heldout, draws)) / len(draws)
    print(f"  instruction space {INSTRUCTION_SPACE:,} strings; held out {frac:.3f} of draws "
          f"(~{int(frac * INSTRUCTION_SPACE):,} held-out strings)")
    t0 = time.perf_counter()
    corpus = tokenizer_corpus(0)
    print(f"  tokenizer corpus {len(corpus) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f}s")
