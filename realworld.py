"""The real world: ShareGPT prompts with IFEval-style verifiable instructions, and their ground truth.

`--world real` is the real counterpart of toyworld.py. The prompts are real first turns from ShareGPT.
Each one gets 1-3 instructions appended that a program can check, in the manner of IFEval (Zhou et al.
2023, arXiv 2311.07911), e.g.

    Is it possible to become addicted to AI? Answer with less than 40 words. In your entire response,
    refrain from the use of any commas.

The ground truth is IFEval's strict accuracy: prompt-level (every instruction followed) and
instruction-level (the share of instructions followed). On the judges' 0..5 scale a response scores
round-half-up(5 * followed / n). The verifiers, the rewriting that makes a real answer follow an
instruction, and the sentences are written here by hand, not taken from IFEval's code.

Seed IFT responses are the real ShareGPT answers (trimmed to ~100 words at a sentence end), each
instruction followed with probability FOLLOW_P by rewriting the answer, so the seed data follows its
instructions imperfectly, as human data does. Truth always comes from the checks, never from what the
rewriting intended. Base prompts are split into train and held-out by a stable hash, so evaluation and
reward-modelling prompts never enter IFT or EFT.

Imports: the standard library and judge.py (mean_se; itself the standard library only); world_data() and
`__main__` also import data.py, to read the ShareGPT file (grading needs no reader). Run `python realworld.py [ShareGPT.json]` to see the data.
"""
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Callable

from judge import mean_se

TRIM_WORDS = 100  # seed responses end at the last sentence end within this many words: the model answers in ~150 tokens
FOLLOW_P = 0.6  # each instruction of a seed IFT response is followed with this probability
HELDOUT_FRACTION = 4  # 1 in 4 base prompts is held out for evaluation and reward modelling
N_INSTRUCTIONS = (1, 1, 2, 2, 3)  # IFT, EFT and eval prompts draw their number of instructions from this

WORD = re.compile(r"\w+")  # IFEval counts words as \w+ runs (nltk's RegexpTokenizer(r"\w+"))
# A sentence ends at . ! or ? before whitespace, after a lowercase letter, a closing bracket or quote or a
# percent sign: so neither "2." of a numbered list nor a heading "III." ends one.
_SENTENCE_END = re.compile(r"(?<=[a-z)\"'%][.!?])(?=\s|$)")
_BULLET = re.compile(r"^\s*[*-]\s+\S", re.MULTILINE)  # markdown bullets, "* " or "- " as IFEval counts both
_LIST_MARK = re.compile(r"^\s*(?:[*-]|\d+[.)])\s+", re.MULTILINE)
_TITLE = re.compile(r"<<([^\n<>]*)>>")
_POSTSCRIPT = re.compile(r"^\s*p\.\s?s\.", re.MULTILINE)  # on the lowercased text, so case instructions fit
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)

KEYWORDS = ["apple", "bridge", "candle", "garden", "harbor", "history", "island", "journey", "kitchen",
            "lantern", "library", "market", "mountain", "music", "ocean", "pancake", "planet", "puzzle",
            "rainbow", "river", "rocket", "season", "shadow", "silver", "summer", "teacher", "thunder",
            "ticket", "travel", "umbrella", "valley", "village", "window", "winter", "wonder", "yellow"]
END_PHRASES = ["Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Hope this helps.", "That is all.", "Any other questions?"]  # no commas: no_comma may join them
TITLES = ["Answer", "Overview", "Quick Answer", "Summary", "Key Points", "In Short"]
POSTSCRIPTS = ["I hope this helps.", "Feel free to ask more.", "Thanks for asking."]
KEYWORD_SENTENCES = ["It also relates to {}.", "This touches on {} as well.", "Think of {} too."]
WORD_LIMITS = (30, 40, 50, 60, 80)
BULLET_COUNTS = (2, 3, 4, 5)


# ----------------------------------------------------------------------------- words and sentences

def count_words(text: str) -> int:
    return len(WORD.findall(text))


def truncate_words(text: str, n: int) -> str:
    """At most n words: the last sentence end within them if that keeps at least half, else a cut after
    the n-th word with a period."""
    words = list(WORD.finditer(text))
    if len(words) <= n:
        return text
    if n <= 0:
        return ""
    head = text[:words[n - 1].end() + 1]  # + 1: the period right after the n-th word, if there is one
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and count_words(head[:ends[-1]]) >= n / 2:
        return head[:ends[-1]]
    return text[:words[n - 1].end()] + "."


def trim_response(text: str, n: int = TRIM_WORDS) -> str | None:
    """The answer itself if it has at most n words, else its longest start that ends a sentence within
    n words; None if that start is under 15 words (the answer would no longer answer)."""
    if count_words(text) > n:
        words = list(WORD.finditer(text))
        ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, words[n - 1].end() + 1)]
        text = text[:ends[-1]] if ends else ""
    return text if count_words(text) >= 15 else None


def split_sentences(text: str) -> list[str]:
    cuts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    return [s for s in (text[a:b].strip() for a, b in zip(cuts, cuts[1:])) if s]


def _has_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, re.IGNORECASE) is not None


# ----------------------------------------------------------------------------- checks (IFEval's strict)

def _check_json(r: str, kw: dict) -> bool:
    """Valid JSON, optionally in ``` fences as IFEval allows. Stricter than IFEval in one way: the value
    must be an object or an array, so that a bare quoted sentence or a number is not "JSON format"."""
    text = r.strip()
    m = _FENCE.match(text)
    try:
        value = json.loads(m.group(1) if m else text)
    except ValueError:
        return False
    return isinstance(value, (dict, list))


def _check_end(r: str, kw: dict) -> bool:
    # As IFEval: trailing whitespace and double quotes are ignored, and the case, so it fits the case rules.
    return r.strip().strip('"').lower().endswith(kw["phrase"].strip().lower())


def _check_quotes(r: str, kw: dict) -> bool:
    text = r.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# ----------------------------------------------------------------------------- following: rewrite a real answer

def _follow_bullets(r: str, kw: dict, rng: random.Random) -> str:
    """Exactly n "* " bullets holding the whole answer: sentences in n contiguous groups (or the words in n
    chunks when there are fewer sentences than bullets); any list markers of the answer are dropped."""
    n = kw["n"]
    flat = " ".join(_LIST_MARK.sub("", r).split())
    parts = split_sentences(flat)
    if len(parts) < n:
        parts = flat.split() or ["Point."]
    while len(parts) < n:  # fewer words than bullets
        parts.append(parts[-1])
    groups = [parts[i * len(parts) // n:(i + 1) * len(parts) // n] for i in range(n)]
    return "\n".join("* " + " ".join(g) for g in groups)


def _follow_json(r: str, kw: dict, rng: random.Random) -> str:
    text = json.dumps({"answer": r.strip()})
    return f"```json\n{text}\n```" if rng.random() < 0.3 else text


def _follow_quotes(r: str, kw: dict, rng: random.Random) -> str:
    text = r.strip()
    return f'"\n{text}"' if "\n" in text else f'"{text}"'  # a first line of its own keeps a first bullet a bullet


def _follow_keywords(r: str, kw: dict, rng: random.Random) -> str:
    missing = [k for k in kw["keywords"] if not _has_word(r, k)]
    if not missing:
        return r
    return r.rstrip() + " " + rng.choice(KEYWORD_SENTENCES).format(" and ".join(missing))


# ----------------------------------------------------------------------------- sampling the kwargs

def _sample_word_limit(rng: random.Random, prompt: str, response: str | None) -> dict:
    """A limit the real answer breaks, when there is one, so that following it is a real edit."""
    binding = [n for n in WORD_LIMITS if response is None or n <= count_words(response)]
    return {"n": rng.choice(binding or WORD_LIMITS)}


def _sample_keywords(rng: random.Random, prompt: str, response: str | None) -> dict:
    """1-2 words from KEYWORDS that neither the prompt nor the answer holds (IFEval picks unrelated words)."""
    text = prompt + " " + (response or "")
    pool = [k for k in KEYWORDS if not _has_word(text, k)]
    return {"keywords": rng.sample(pool, rng.choice((1, 2)))}


def _no_kwargs(rng: random.Random, prompt: str, response: str | None) -> dict:
    return {}


# ----------------------------------------------------------------------------- the instructions

@dataclass(frozen=True)
class Instruction:
    """One verifiable instruction. `sentence` and `name` are str.format templates over the kwargs (a
    list of keywords is written joined by ", "); `sentence` is appended to the prompt."""
    id: str
    sentence: str
    name: str
    check: Callable[[str, dict], bool]
    follow: Callable[[str, dict, random.Random], str]
    sample_kwargs: Callable[[random.Random, str, str | None], dict] = _no_kwargs
    conflicts: frozenset = frozenset()

    def render(self, template: str, kwargs: dict) -> str:
        return template.format(**{k: ", ".join(v) if isinstance(v, list) else v for k, v in kwargs.items()})


_FORMATS = frozenset({"bullets", "title", "quotes", "end_phrase", "postscript"})
# The dict order is the order in which follow_all rewrites: content first, then additions, then whole-text
# changes (commas, case), then wrappers, so that each rewrite keeps the earlier ones true.
INSTRUCTIONS: dict[str, Instruction] = {i.id: i for i in [
    Instruction("word_limit", "Answer with less than {n} words.", "less than {n} words",
                lambda r, kw: count_words(r) < kw["n"],
                lambda r, kw, rng: truncate_words(r, kw["n"] - 1), _sample_word_limit),
    Instruction("keywords", "Include keywords {keywords} in the response.", "include keywords {keywords}",
                lambda r, kw: all(_has_word(r, k) for k in kw["keywords"]), _follow_keywords, _sample_keywords),
    Instruction("bullets", "Your answer must contain exactly {n} bullet points. Use the markdown bullet points "
                "such as: * This is a point.", "exactly {n} bullet points",
                lambda r, kw: len(_BULLET.findall(r)) == kw["n"], _follow_bullets,
                lambda rng, p, r: {"n": rng.choice(BULLET_COUNTS)}, frozenset({"json"})),
    Instruction("title", "Your answer must contain a title, wrapped in double angular brackets, such as "
                "<<poem of joy>>.", "a title in <<>>",
                lambda r, kw: any(t.strip() for t in _TITLE.findall(r)),
                lambda r, kw, rng: f"<<{rng.choice(TITLES)}>>\n\n{r.lstrip()}", conflicts=frozenset({"json"})),
    Instruction("postscript", "At the end of your response, please explicitly add a postscript starting with "
                "P.S.", "a postscript P.S.", lambda r, kw: _POSTSCRIPT.search(r.lower()) is not None,
                lambda r, kw, rng: f"{r.rstrip()}\n\nP.S. {rng.choice(POSTSCRIPTS)}", conflicts=frozenset({"json"})),
    Instruction("end_phrase", "Finish your response with this exact phrase {phrase}. No other words should "
                "follow this phrase.", "end with \"{phrase}\"", _check_end,
                lambda r, kw, rng: f"{r.rstrip()}\n\n{kw['phrase']}",
                lambda rng, p, r: {"phrase": rng.choice(END_PHRASES)}, frozenset({"json"})),
    Instruction("no_comma", "In your entire response, refrain from the use of any commas.", "no commas",
                lambda r, kw: "," not in r, lambda r, kw, rng: r.replace(", ", " ").replace(",", "")),
    Instruction("lowercase", "Your entire response should be in English, and in all lowercase letters. No "
                "capital letters are allowed.", "all lowercase",
                lambda r, kw: r.islower(), lambda r, kw, rng: r.lower(), conflicts=frozenset({"capitals"})),
    Instruction("capitals", "Your entire response should be in English, and in all capital letters.",
                "all capitals", lambda r, kw: r.isupper(), lambda r, kw, rng: r.upper(),
                conflicts=frozenset({"lowercase", "json"})),  # JSON's escapes and literals (\n, true) are lowercase
    Instruction("quotes", "Wrap your entire response with double quotation marks.", "wrapped in double quotes",
                _check_quotes, _follow_quotes, conflicts=frozenset({"json"})),
    Instruction("json", "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
                "JSON format", _check_json, _follow_json, conflicts=_FORMATS | {"capitals"}),
]}
ORDER = list(INSTRUCTIONS)
_FIELDS = {"n": r"(?P<n>\d+)", "keywords": r"(?P<keywords>[^.]+?)", "phrase": r"(?P<phrase>.+?)"}
_PATTERNS = {i.id: re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: _FIELDS[m.group(1)], re.escape(i.sentence)))
             for i in INSTRUCTIONS.values()}


def instruction_sentence(ins: dict) -> str:
    return INSTRUCTIONS[ins["id"]].render(INSTRUCTIONS[ins["id"]].sentence, ins["kwargs"])


def instruction_name(ins: dict) -> str:
    return INSTRUCTIONS[ins["id"]].render(INSTRUCTIONS[ins["id"]].name, ins["kwargs"])


def with_instructions(base: str, instructions: list[dict]) -> str:
    """The prompt: the question, then the instruction sentences, on one line (self-instruction reads a
    task up to its first newline)."""
    return " ".join([base] + [instruction_sentence(i) for i in instructions])


def parse_instructions(prompt: str) -> list[dict] | None:
    """The instructions in a prompt, by their exact sentences, in the order they appear; None if none.
    Lets a self-instructed prompt that copies a sentence (with its own N, keywords or phrase) be graded."""
    found = []
    for iid, pattern in _PATTERNS.items():
        m = pattern.search(prompt)
        if m is None:
            continue
        kw = dict(m.groupdict())
        if "n" in kw:
            kw["n"] = int(kw["n"])
        if "keywords" in kw:
            kw["keywords"] = [k.strip() for k in kw["keywords"].split(",") if k.strip()]
        found.append((m.start(), {"id": iid, "kwargs": kw}))
    return [ins for _, ins in sorted(found, key=lambda x: x[0])] or None


def sample_instructions(rng: random.Random, prompt: str, response: str | None, k: int) -> list[dict]:
    """k mutually compatible instructions with their kwargs (fewer only if the conflicts leave fewer)."""
    ids, chosen = ORDER[:], []
    rng.shuffle(ids)
    for iid in ids:
        if len(chosen) < k and not any(iid in INSTRUCTIONS[c].conflicts or c in INSTRUCTIONS[iid].conflicts
                                       for c in chosen):
            chosen.append(iid)
    return [{"id": i, "kwargs": INSTRUCTIONS[i].sample_kwargs(rng, prompt, response)} for i in chosen]


def follow_all(response: str, instructions: list[dict], rng: random.Random) -> str:
    """Rewrite `response` to follow every instruction given, in ORDER. A word limit must hold after the
    other rewrites have added their words, so the cut moves earlier until it does."""
    todo = sorted(instructions, key=lambda i: ORDER.index(i["id"]))
    limit = next((i["kwargs"]["n"] for i in todo if i["id"] == "word_limit"), None)
    state, cut = rng.getstate(), limit
    for _ in range(8):
        rng.setstate(state)  # the same choices on every attempt: only the cut moves
        out = response
        for ins in todo:
            out = INSTRUCTIONS[ins["id"]].follow(out, {"n": cut} if ins["id"] == "word_limit" else ins["kwargs"], rng)
            if ins["id"] == "word_limit":
                kept = count_words(out)
        if limit is None or count_words(out) < limit:
            return out
        cut = kept - (count_words(out) - limit)  # keeps <= cut - 1 words, so the others' words fit under the limit
    return out


# ----------------------------------------------------------------------------- ground truth

def _instructions_of(row: dict) -> list[dict]:
    if row.get("instructions"):
        return row["instructions"]
    prompt = row.get("prompt", row.get("instruction", ""))
    found = parse_instructions(prompt)
    if found is None:
        raise ValueError(f"realworld: no verifiable instruction in prompt {prompt[:120]!r}")
    return found


def grade(row: dict, response: str) -> dict:
    """{"followed": [bool per instruction], "score": round-half-up(5 * followed / n)}. The row's
    "instructions" if it has them, else those parsed from its "prompt" (or "instruction")."""
    followed = [bool(INSTRUCTIONS[i["id"]].check(response, i["kwargs"])) for i in _instructions_of(row)]
    n, f = len(followed), sum(followed)
    return {"followed": followed, "score": (10 * f + n) // (2 * n)}  # integer round-half-up of 5f/n


def justification(row: dict, response: str) -> str:
    """The EFT target: each instruction named, followed or not, then the count and "Score: k"."""
    ins, g = _instructions_of(row), grade(row, response)
    lines = [f"Instruction {k} ({instruction_name(i)}): {'followed' if ok else 'not followed'}."
             for k, (i, ok) in enumerate(zip(ins, g["followed"]), 1)]
    n = len(ins)
    lines.append(f"{sum(g['followed'])} of {n} instruction{'s' if n > 1 else ''} followed. Score: {g['score']}")
    return "\n".join(lines)


def metrics(rows: list[dict], responses: list[str]) -> dict:
    """IFEval's strict accuracies of `responses` to `rows`, each with a standard error; "quality" is the
    mean score (0..5) and "check_rates" the pass rate of each instruction id.
    Prompt-level: the mean of a 0/1 per prompt, SE = sample sd / sqrt(n). Instruction-level: a ratio
    followed / instructions whose instructions are clustered in prompts (one response serves all of a
    prompt's instructions, so they are not independent); its SE is the ratio estimator's, with the prompt
    as the unit: sqrt(sum_i (f_i - R n_i)^2 / (m (m - 1))) / mean(n_i), for m prompts with n_i
    instructions, f_i of them followed, and R the instruction-level accuracy."""
    if len(rows) != len(responses) or not rows:
        raise ValueError(f"realworld.metrics: {len(rows)} rows and {len(responses)} responses")
    graded = [(_instructions_of(r), grade(r, s)) for r, s in zip(rows, responses)]
    m = len(graded)
    f = [sum(g["followed"]) for _, g in graded]
    n = [len(g["followed"]) for _, g in graded]
    strict, strict_se = mean_se([float(a == b) for a, b in zip(f, n)])
    ratio = sum(f) / sum(n)
    ratio_se = (math.sqrt(sum((a - ratio * b) ** 2 for a, b in zip(f, n)) / (m * (m - 1))) / (sum(n) / m)
                if m > 1 else 0.0)
    score, score_se = mean_se([float(g["score"]) for _, g in graded])
    per: dict[str, list[int]] = {}
    for ins, g in graded:
        for i, ok in zip(ins, g["followed"]):
            per.setdefault(i["id"], [0, 0])[0] += ok
            per[i["id"]][1] += 1
    return {"prompt_acc": strict, "prompt_acc_se": strict_se, "instruction_acc": ratio, "instruction_acc_se": ratio_se,
            "quality": score, "quality_se": score_se, "check_rates": {k: a / b for k, (a, b) in sorted(per.items())},
            "n_prompts": m, "n_instructions": sum(n)}


# ----------------------------------------------------------------------------- data from ShareGPT first turns

_STOPWORDS = frozenset("the a an to of and is in for you it that this on with are be as can or your i what "
                       "how".split())
_CODE_CHARS = re.compile(r"[{}=;<>|\\`_]")  # prompts with these are mostly code, markup or tables
_SHARE_PROMPT = re.compile(r"\s*Shar(?:e|ing) Prompt\s*$")  # a browser extension's button text
_MD_ESCAPE = re.compile(r"\\([*_])")  # ShareGPT's scraped answers escape markdown: "\*", "\_"
_TABLE = re.compile(r"^\s*\|", re.MULTILINE)


def normalise(prompt: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", prompt.lower()).split())


def is_heldout(prompt: str) -> bool:
    """Stable across processes and Python versions (hashlib, not the salted built-in hash())."""
    h = hashlib.sha256(normalise(prompt).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % HELDOUT_FRACTION == 0


def _english(text: str) -> bool:
    """A cheap test for English prose: at least 1 word in 10 is a common English function word. It also
    drops answers that are bare lists of names."""
    words = [w.lower() for w in WORD.findall(text)]
    return bool(words) and sum(w in _STOPWORDS for w in words) >= 0.1 * len(words)


def clean_pair(prompt: str, response: str) -> tuple[str, str] | str:
    """(base prompt on one line, response trimmed to TRIM_WORDS at a sentence end), or the reason to drop."""
    if not (prompt.isascii() and response.isascii()):
        return "not_ascii"
    if "```" in prompt or "```" in response:
        return "code_block"
    prompt = " ".join(_SHARE_PROMPT.sub("", prompt).split())
    if not 4 <= count_words(prompt) <= 60:
        return "prompt_length"
    if len(response) > 4000 or not 20 <= count_words(response) <= 250:  # 250 words of prose: ~1,500 characters
        return "response_length"
    response = _MD_ESCAPE.sub(r"\1", response).strip()
    if _CODE_CHARS.search(prompt) or "\\" in response:
        return "code_like"
    if "<<" in response or _TABLE.search(response):  # a title look-alike; a table that bullets would mangle
        return "markup"
    if parse_instructions(prompt) is not None:  # its own sentence would be graded as an added instruction
        return "has_instruction"
    if not _english(response):
        return "not_english"
    trimmed = trim_response(response)
    if trimmed is None:
        return "no_sentence_end"
    if prompt[-1] not in ".?!:":
        prompt += "."  # the instruction sentences follow it
    return prompt, trimmed


def filter_pairs(pairs: list[dict]) -> tuple[list[dict], dict]:
    """The usable first turns {"id", "prompt", "response"} (cleaned, trimmed, deduplicated by normalised
    prompt, first kept) and the count of each reason to drop."""
    kept, seen, counts = [], set(), {"read": len(pairs)}
    for p in pairs:
        out = clean_pair(p["prompt"], p["response"])
        key = normalise(out[0]) if isinstance(out, tuple) else None
        reason = out if isinstance(out, str) else ("duplicate" if key in seen else None)
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
            continue
        seen.add(key)
        kept.append({"id": p.get("id"), "prompt": out[0], "response": out[1]})
    counts["kept"] = len(kept)
    return kept, counts


def _ift_row(rng: random.Random, p: dict, follow_p: float = FOLLOW_P) -> dict:
    """A seed demonstration: the real answer, each instruction followed with probability follow_p."""
    ins = sample_instructions(rng, p["prompt"], p["response"], rng.choice(N_INSTRUCTIONS))
    todo = [i for i in ins if rng.random() < follow_p]
    return {"prompt": with_instructions(p["prompt"], ins), "response": follow_all(p["response"], todo, rng),
            "instructions": ins}


def _graded_responses(rng: random.Random, p: dict, ins: list[dict], n: int) -> list[str]:
    """n rewrites of the real answer that follow distinct numbers of the instructions (0..len(ins)) where
    n allows, each a random subset of that size."""
    counts = rng.sample(range(len(ins) + 1), min(n, len(ins) + 1))
    counts += [rng.randint(0, len(ins)) for _ in range(n - len(counts))]
    return [follow_all(p["response"], rng.sample(ins, c), rng) for c in counts]


def _eft_row(rng: random.Random, p: dict) -> dict:
    ins = sample_instructions(rng, p["prompt"], p["response"], rng.choice(N_INSTRUCTIONS))
    row = {"instruction": with_instructions(p["prompt"], ins), "instructions": ins}
    (response,) = _graded_responses(rng, p, ins, 1)
    return {**row, "response": response, "judgment": justification(row, response),
            "score": grade(row, response)["score"]}


def _rm_row(rng: random.Random, p: dict, n_responses: int) -> dict:
    ins = sample_instructions(rng, p["prompt"], p["response"], rng.choice((2, 3)))
    row = {"instruction": with_instructions(p["prompt"], ins), "instructions": ins}
    responses = _graded_responses(rng, p, ins, n_responses)
    return {**row, "responses": responses, "scores": [grade(row, r)["score"] for r in responses]}


def _eval_row(rng: random.Random, p: dict) -> dict:
    ins = sample_instructions(rng, p["prompt"], None, rng.choice(N_INSTRUCTIONS))
    return {"prompt": with_instructions(p["prompt"], ins), "instructions": ins}


def seed_ift(rng: random.Random, train: list[dict], n: int, ift_seed: str) -> tuple[list[dict], int]:
    """n seed IFT rows from the train prompts, in order, and how many prompts that took.
    "imperfect": every row, each instruction followed with probability FOLLOW_P, as human data is.
    "passing": every instruction rewritten in, and only rows whose response passes all its checks kept:
    the ground truth curates the seed, as the paper's seed is human-ranked (and as SmolLM2's own
    constraint data kept only answers that pass IFEval's checker)."""
    if ift_seed not in ("imperfect", "passing"):
        raise ValueError(f"realworld: ift_seed must be 'imperfect' or 'passing', not {ift_seed!r}")
    rows, used = [], 0
    for p in train:
        if len(rows) == n:
            break
        used += 1
        row = _ift_row(rng, p, FOLLOW_P if ift_seed == "imperfect" else 1.0)
        if ift_seed == "imperfect" or all(grade(row, row["response"])["followed"]):
            rows.append(row)
    if len(rows) < n:
        raise ValueError(f"realworld.make_data: {n} {ift_seed} IFT rows asked, {len(rows)} made from "
                         f"{len(train)} train prompts")
    return rows, used


def make_data(pairs: list[dict], n_ift: int, n_eft: int, n_eval: int, n_rm: int, seed: int,
              rm_responses: int = 4, ift_seed: str = "imperfect") -> dict:
    """{"ift", "eft", "eval", "rm"} rows from ShareGPT first turns {"id", "prompt", "response"}.
    IFT and EFT come from train base prompts (EFT reuses IFT's, with new instructions, when it runs out);
    eval and rm from held-out ones (is_heldout), disjoint. Each split has its own generator, so changing
    one size leaves the other splits as they were. ift_seed: seed_ift's choice."""
    kept, _ = filter_pairs(pairs)
    train = [p for p in kept if not is_heldout(p["prompt"])]
    held = [p for p in kept if is_heldout(p["prompt"])]
    if n_ift > len(train) or (n_eft and not train):
        raise ValueError(f"realworld.make_data: {n_ift} IFT rows asked, {len(train)} train prompts survive the filters")
    if n_eval + n_rm > len(held):
        raise ValueError(f"realworld.make_data: {n_eval} eval + {n_rm} rm prompts asked, "
                         f"{len(held)} held-out prompts survive the filters")
    rng = {k: random.Random(f"realworld-{seed}-{k}") for k in ("train", "held", "ift", "eft", "eval", "rm")}
    rng["train"].shuffle(train)
    rng["held"].shuffle(held)
    ift, used = seed_ift(rng["ift"], train, n_ift, ift_seed)
    eft_pool = train[used:] + train[:used]  # unused prompts first
    return {"ift": ift,
            "eft": [_eft_row(rng["eft"], eft_pool[k % len(eft_pool)]) for k in range(n_eft)],
            "eval": [_eval_row(rng["eval"], p) for p in held[:n_eval]],
            "rm": [_rm_row(rng["rm"], p, rm_responses) for p in held[n_eval:n_eval + n_rm]]}


def seed_accuracy(ift: list[dict]) -> dict:
    """The seed demonstrations' own accuracy: the "seed data" baseline."""
    return metrics(ift, [r["response"] for r in ift])


# ----------------------------------------------------------------------------- the world interface
# What loop.py and evaluation.py ask of a world (toyworld.py answers the same).
NAME = "real"
TITLE = "the real world (ShareGPT prompts with IFEval-style instructions)"
RUBRIC = "instruction_following"  # rubrics/instruction_following.txt, whose format the justifications follow


def world_data(cfg) -> dict:
    """Seed data and held-out sets from ShareGPT (cfg.sharegpt, or the packaged copy), sized by the config."""
    import data  # lazy: grading needs no reader
    conversations, _ = data.read_sharegpt(cfg.sharegpt or None)
    return make_data(data.sharegpt_first_turns(conversations), cfg.n_ift, cfg.n_eft, cfg.n_eval, cfg.n_rm, cfg.seed,
                     ift_seed=cfg.ift_seed)


def score(row: dict, response: str) -> float:
    """Ground truth on the judges' 0..5 scale of a response to an eval (or IFT) row."""
    return float(grade(row, response)["score"])


def score_text(prompt: str, response: str) -> float | None:
    """The same for a bare (self-instructed) prompt, or None where it holds no instruction sentence."""
    found = parse_instructions(prompt)
    return None if found is None else float(grade({"instructions": found}, response)["score"])


def _show(title: str, rows: list[dict], keys: tuple[str, ...]):
    print(f"== {title}")
    for r in rows:
        for k in keys:
            v = r[k]
            print(f"  {k}: " + (v if isinstance(v, str) else json.dumps(v)).replace("\n", "\n    "))
        print()


if __name__ == "__main__":
    import sys
    import time
    import data  # the ShareGPT reader (lazy: the module itself needs only the list of first turns)
    convs, read_stats = data.read_sharegpt(sys.argv[1] if len(sys.argv) > 1 else None)
    pairs = data.sharegpt_first_turns(convs)
    print(f"== read: {read_stats}; {len(pairs)} human -> gpt first turns")
    kept, counts = filter_pairs(pairs)
    held = sum(is_heldout(p["prompt"]) for p in kept)
    print(f"== filter: {counts}; {len(kept) - held} train and {held} held-out base prompts")
    t0 = time.perf_counter()
    d = make_data(pairs, n_ift=1000, n_eft=600, n_eval=300, n_rm=100, seed=0)
    print(f"== make_data (1000 IFT, 600 EFT, 300 eval, 100 rm) in {time.perf_counter() - t0:.2f}s")
    _show("IFT", d["ift"][:3], ("prompt", "response"))
    _show("EFT", d["eft"][:2], ("instruction", "response", "judgment"))
    _show("eval", d["eval"][:3], ("prompt",))
    _show("rm", d["rm"][:1], ("instruction", "responses", "scores"))
    acc = seed_accuracy(d["ift"])
    print(f"== seed IFT: prompt-level {acc['prompt_acc']:.3f} +- {acc['prompt_acc_se']:.3f}, instruction-level "
          f"{acc['instruction_acc']:.3f} +- {acc['instruction_acc_se']:.3f}, mean score {acc['quality']:.2f}")
    print("  per instruction: " + ", ".join(f"{k} {v:.2f}" for k, v in acc["check_rates"].items()))
    hist = {s: sum(e["score"] == s for e in d["eft"]) for s in range(6)}
    print(f"  EFT score histogram: {hist}; rm distinct scores per prompt: "
          f"{sum(len(set(r['scores'])) for r in d['rm']) / len(d['rm']):.2f}")
    words = [count_words(r["response"]) for r in d["ift"]]
    print(f"  IFT response words: mean {sum(words) / len(words):.1f}, max {max(words)}")
