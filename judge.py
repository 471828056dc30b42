"""LLM-as-a-Judge for Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020).

Section 2 / Figure 2 of the paper: the model judges a response with an additive 5-point
prompt, justifies briefly and ends with "Score: k". Fig. 2 is the default rubric; any other is a
template file with {instruction} and {response} slots (rubrics/: safety, instruction_following),
checked when it is loaded. At the end, the preference pairs the judgments make (Section 3.3 step 4:
the best-scored candidate against the worst) and the --pairs-from random and oracle controls.

Imports: the standard library only (generate.py and torch, lazily, for judging with a model).
"""
import math
import os
import random
import re
from dataclasses import dataclass

# Figure 2 of the paper, byte for byte (curly quotes included). Do not "fix" the quotes.
JUDGE_PROMPT = """Review the user’s question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user’s inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user’s question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user’s question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant’s perspective, addressing the user’s question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user’s question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.
User: <INSTRUCTION_HERE>
<response><RESPONSE_HERE></response>
After examining the user’s instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: “Score: <total points>”
Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we’ll systematically attribute points based on the outlined criteria."""


# ----------------------------------------------------------------------------- parsing

_SCORE = re.compile(r"Score:")
_NUMBER = re.compile(r"\s*\**\s*(\d+(?:\.\d+)?)")


def parse_score(judgment: str) -> float | None:
    """The score of a judge's output: the number after its LAST "Score:", if in [0, 5]; else None.
    Pass only the judge's own output: a response that contains "Score: 5" is part of the prompt."""
    last = None
    for last in _SCORE.finditer(judgment):
        pass
    if last is None:
        return None
    m = _NUMBER.match(judgment, last.end())
    if m is None:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value <= 5.0 else None


def mean_score(scores: list) -> float | None:
    """Average of the parseable samples (Section 2: "3 samples averaged"); None if none parsed."""
    ok = [s for s in scores if s is not None]
    return sum(ok) / len(ok) if ok else None


# ----------------------------------------------------------------------------- rubrics

@dataclass(frozen=True)
class Rubric:
    """A judge prompt cut at its two slots: head + instruction + middle + response + tail. Filled by
    concatenation, not str.replace or str.format, so an instruction or response that contains a slot
    name, or a rubric with other braces in it, stays exactly as written."""
    name: str
    head: str
    middle: str
    tail: str

    def fill(self, instruction: str, response: str) -> str:
        return self.head + instruction + self.middle + response + self.tail


RUBRIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rubrics")


def rubric_from_text(text: str, source: str) -> Rubric:
    """A rubric from a template with one {instruction} and one {response} slot, in that order, and a line
    that asks for the judge's "Score: x" format, checked so that parse_score reads it: the text after the
    last "Score:" must be a number in [0, 5] or a <placeholder> (Fig. 2: “Score: <total points>”)."""
    for slot in ("{instruction}", "{response}"):
        if text.count(slot) != 1:
            raise ValueError(f"{source}: the rubric needs the slot {slot} exactly once, found {text.count(slot)}")
    head, rest = text.split("{instruction}")
    if "{response}" not in rest:
        raise ValueError(f"{source}: {{instruction}} must come before {{response}} (the rubric's head, up to the "
                         "instruction, is shared by every judgment of a batch)")
    middle, tail = rest.split("{response}")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if "Score:" in line]
    if not lines:
        raise ValueError(f"{source}: no line asks for the score format “Score: <points>”; parse_score reads the "
                         "last 'Score: x' of a judgment (x a number in 0..5), so the rubric must ask for it")
    n, line = lines[-1]
    after = line[line.rindex("Score:") + len("Score:"):]
    example = re.sub(r"^\s*<[^<>]+>", " 3", after)  # a placeholder stands for a number
    if parse_score("Score:" + example) is None:
        raise ValueError(f"{source}: line {n}: the score format {line.strip()!r} is not one parse_score reads: "
                         "after 'Score:' put a number in 0..5 or a <placeholder>")
    return Rubric(os.path.splitext(os.path.basename(source))[0], head, middle, tail)


FIG2 = rubric_from_text(JUDGE_PROMPT.replace("<INSTRUCTION_HERE>", "{instruction}").replace("<RESPONSE_HERE>", "{response}"),
                        "fig2")


def load_rubric(name_or_path: str) -> Rubric:
    """"fig2" (the paper's prompt, the default), the name of a rubric shipped in rubrics/ ("safety",
    "instruction_following"), or a path to a template file (one trailing newline is not part of it)."""
    if name_or_path in ("", "fig2"):
        return FIG2
    path = os.path.join(RUBRIC_DIR, name_or_path + ".txt")
    if not os.path.isfile(path):
        path = name_or_path
    if not os.path.isfile(path):
        shipped = sorted(f[:-4] for f in os.listdir(RUBRIC_DIR) if f.endswith(".txt"))
        raise FileNotFoundError(f"judge prompt {name_or_path!r}: no such file, and not a shipped rubric {shipped}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return rubric_from_text(text[:-1] if text.endswith("\n") else text, path)


def judge_prompt(instruction: str, response: str, rubric: Rubric = FIG2) -> str:
    """Fill a rubric (Fig. 2 by default) with an instruction and a response."""
    return rubric.fill(instruction, response)


def eft_example(instruction: str, response: str, judgment: str, rubric: Rubric = FIG2) -> dict:
    """An Evaluation Fine-Tuning example (Section 2.2): the judge prompt (Fig. 2 by default), then a
    justification that ends in "Score: k". In the SFT format of dpo.py: {"prompt", "response"}."""
    if parse_score(judgment) is None:
        raise ValueError(f"EFT judgment must end with a parseable 'Score: k': {judgment[-80:]!r}")
    return {"prompt": rubric.fill(instruction, response), "response": judgment}


# ----------------------------------------------------------------------------- judging

def judge(model, tokenizer, items: list[tuple[str, str]], *, samples: int = 3, temperature: float = 0.7,
          top_p: float = 0.9, max_new_tokens: int = 128, batch_size: int = 64, seed=0,
          compile: bool = False, progress: str | None = None, rubric: Rubric = FIG2,
          score: str = "sampled", kernels: str = "default") -> list[dict]:
    """LLM-as-a-Judge on (instruction, response) items, `samples` sampled judgments each (Section 3.3:
    3 samples at T=0.7, top-p 0.9, averaged). Returns per item {"score": mean or None, "scores": [...],
    "raw": [judge texts]}; raw judgments are kept so that nothing is lost. score: "sampled" reads each
    judgment's written score (the paper), "expected" its probability-weighted score (expected_scores).
    kernels: generate's CPU Linear kernels (cpu_decode.generation_linears)."""
    from generate import answer_text, generate_many

    prompts = [tokenizer.encode_chat_prompt(rubric.fill(i, r)) for i, r in items]
    outs = generate_many(model, prompts, max_new_tokens, batch_size=batch_size, num_samples=samples,
                         temperature=temperature, top_p=top_p, stop_ids=tokenizer.stop_ids,
                         seed=seed, compile=compile, pad_id=tokenizer.pad_id, progress=progress,
                         vocab_limit=tokenizer.n_words, kernels=kernels)
    raws = [[answer_text(tokenizer, o) for o in out] for out in outs]
    if score == "expected":
        flat = expected_scores(model, tokenizer, [(p, r) for p, rs in zip(prompts, raws) for r in rs])
        per_item = [flat[k * samples:(k + 1) * samples] for k in range(len(items))]
    elif score == "sampled":
        per_item = [[parse_score(r) for r in rs] for rs in raws]
    else:
        raise ValueError(f"judge: score must be 'sampled' or 'expected', not {score!r}")
    return [{"score": mean_score(scores), "scores": scores, "raw": raw} for scores, raw in zip(per_item, raws)]


def score_digit_ids(tokenizer, context: str) -> tuple[list[int], list[int]] | None:
    """How the judge would write each score 0..5 after `context` (its judgment up to the score's first
    digit): the token ids common to every one of them, and then the one token that differs, per score.
    None if some score is not one token there (a tokenizer that merges the digit into longer tokens)."""
    ids = [tokenizer.encode(context + str(k)) for k in range(6)]
    n = len(ids[0]) - 1
    if any(len(x) != n + 1 or x[:n] != ids[0][:n] for x in ids):
        return None
    return ids[0][:n], [x[n] for x in ids]


def expected_scores(model, tokenizer, judged: list[tuple[list[int], str]], micro_batch: int = 16) -> list:
    """--judge-score expected (a departure from the paper's sampled scores; arXiv 2503.03064 finds it
    better for small judges): for each (judge prompt ids, sampled judgment), the probability-weighted score
    sum_k k p(k) / sum_k p(k) over the digits 0..5 at the place of the judgment's last "Score:" number,
    teacher-forced, one forward each. A judgment with no parseable score stays None, as sampled. Every
    rank runs every row, so under torchrun the ranks run the same forwards."""
    import torch  # lazy: parsing and the metrics need no torch

    rows, out = [], [None] * len(judged)
    for k, (prompt, text) in enumerate(judged):
        last = None
        for last in _SCORE.finditer(text):
            pass
        m = None if last is None or parse_score(text) is None else _NUMBER.match(text, last.end())
        found = m and score_digit_ids(tokenizer, text[:m.start(1)])
        if found:  # longer than the context: the oldest tokens go, as generation truncates a prompt
            rows.append((k, (prompt + found[0])[-model.args.max_seq_len:], found[1]))
    device = next(model.parameters()).device
    rows.sort(key=lambda r: len(r[1]))  # similar lengths together: little padding
    with torch.no_grad():
        for i in range(0, len(rows), micro_batch):
            chunk = rows[i:i + micro_batch]
            T = max(len(r[1]) for r in chunk)
            tokens = torch.tensor([r[1] + [0] * (T - len(r[1])) for r in chunk], device=device)  # right-padded
            h, _ = model.hidden(tokens)  # causal: the padding after a row's end never reaches its last slot
            ends = torch.tensor([len(r[1]) - 1 for r in chunk], device=device)
            last_h = h[torch.arange(len(chunk), device=device), ends]  # (b, dim) each row's last real slot
            probs = model.logits(last_h).float().softmax(-1)  # (b, V)
            for (k, _, digits), p in zip(chunk, probs):
                q = p[torch.tensor(digits, device=device)].double()  # (6,) p(0..5)
                out[k] = float((q * torch.arange(6, dtype=q.dtype, device=device)).sum() / q.sum())
    return out


# ----------------------------------------------------------------------------- head-to-head
# Without a ground truth (a user's --data), two models are compared by a fixed judge that sees both
# responses, once in each order, so that a judge's preference for a position cancels out.

def load_pairwise_template(path: str = os.path.join(RUBRIC_DIR, "pairwise.txt")) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read().removesuffix("\n")
    for slot in ("{instruction}", "{response_a}", "{response_b}"):
        if text.count(slot) != 1:
            raise ValueError(f"{path}: the pairwise prompt needs the slot {slot} exactly once")
    return text


_VERDICT = re.compile(r"Verdict:\s*\**\s*(A|B|tie)\b")


def parse_verdict(judgment: str) -> str | None:
    """"A", "B" or "tie" from the LAST "Verdict: x" of a judgment; None if there is none."""
    found = _VERDICT.findall(judgment)
    return found[-1] if found else None


def fill_pairwise(template: str, instruction: str, a: str, b: str) -> str:
    head, rest = template.split("{instruction}")
    middle, rest = rest.split("{response_a}")
    middle2, tail = rest.split("{response_b}")
    return head + instruction + middle + a + middle2 + b + tail


def head_to_head(model, tokenizer, items: list[tuple[str, str, str]], *, template: str | None = None,
                 max_new_tokens: int = 128, **generate_kw) -> dict:
    """items: (instruction, response of the model under test, response of the baseline). The judge sees
    each item twice, the model under test as A and then as B. An item is a win when the two verdicts
    together favour the model under test (one order may say tie), a loss when they favour the baseline,
    and a tie otherwise; an unparseable verdict counts as a tie and lowers parse_rate."""
    from generate import answer_text, generate_many

    template = template or load_pairwise_template()
    prompts = [tokenizer.encode_chat_prompt(fill_pairwise(template, q, a, b)) for q, a, b in items]
    prompts += [tokenizer.encode_chat_prompt(fill_pairwise(template, q, b, a)) for q, a, b in items]
    outs = generate_many(model, prompts, max_new_tokens, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                         **{"vocab_limit": tokenizer.n_words, **generate_kw})
    verdicts = [parse_verdict(answer_text(tokenizer, o)) for (o,) in outs]
    n, tally = len(items), {"win": 0, "tie": 0, "loss": 0}
    for first, second in zip(verdicts[:n], verdicts[n:]):  # first: under test = A; second: under test = B
        vote = {"A": 1, "B": -1}.get(first, 0) + {"B": 1, "A": -1}.get(second, 0)
        tally["win" if vote > 0 else "loss" if vote < 0 else "tie"] += 1
    return {**{k: v / n for k, v in tally.items()}, "parse_rate": sum(v is not None for v in verdicts) / (2 * n)}


def parse_rate(results: list[dict]) -> float:
    n = sum(len(r["scores"]) for r in results)
    return sum(s is not None for r in results for s in r["scores"]) / n if n else float("nan")


# ----------------------------------------------------------------------------- reward-model metrics
# Section 3.3 / Table 4: how well the judge's scores rank the responses of each prompt, against
# reference scores (humans in the paper, the toy world's rubric here). `groups` is a list of
# (judge_scores, reference_scores) per prompt; a judge score of None (unparseable) ranks as a tie.

def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pairwise_accuracy(groups) -> float:
    """Over pairs of responses to the same prompt whose reference scores differ: the fraction the judge
    orders the same way. A judge tie (or an unparseable score) counts as wrong."""
    right = total = 0
    for judged, ref in groups:
        for a in range(len(ref)):
            for b in range(a + 1, len(ref)):
                if ref[a] == ref[b]:
                    continue
                total += 1
                ja, jb = judged[a], judged[b]
                right += ja is not None and jb is not None and _sign(ja - jb) == _sign(ref[a] - ref[b])
    return right / total if total else float("nan")


def round_half_up(x: float) -> int:
    """x to the nearest integer, halves up (4.5 -> 5): Python's round takes halves to the even neighbour,
    which would deny a mean of 4.5 its full score and give 2.5 only 2."""
    return math.floor(x + 0.5)


def five_best(groups, full: float = 5.0) -> float:
    """Of the responses the judge gives a full score (mean rounded half up to 5), the fraction that are the
    reference's best response for their prompt (ties for best count as best)."""
    hits = total = 0
    for judged, ref in groups:
        for j, r in zip(judged, ref):
            if j is not None and round_half_up(j) >= full:
                total += 1
                hits += r == max(ref)
    return hits / total if total else float("nan")


def exact_match(groups) -> float:
    """Fraction of prompts where the judge orders every pair of responses exactly as the reference
    (same strict order, same ties)."""
    n = 0
    for judged, ref in groups:
        n += all(judged[a] is not None and judged[b] is not None and
                 _sign(judged[a] - judged[b]) == _sign(ref[a] - ref[b])
                 for a in range(len(ref)) for b in range(a + 1, len(ref)))
    return n / len(groups) if groups else float("nan")


def _ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank (as scipy.stats.rankdata)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks; 0 when either side is constant (no ranking information)."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else 0.0


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (tie-corrected); 0 when either side is constant."""
    concordant = discordant = ties_x = ties_y = 0
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            sx, sy = _sign(x[a] - x[b]), _sign(y[a] - y[b])
            if sx == 0 and sy == 0:
                continue
            if sx == 0:
                ties_x += 1
            elif sy == 0:
                ties_y += 1
            elif sx == sy:
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else 0.0


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def reward_model_metrics(groups) -> dict:
    """Table 4's five metrics. Rank correlations are computed per prompt and averaged; an unparseable
    judge score is replaced by -1 (below every real score) for them."""
    filled = [([-1.0 if j is None else j for j in judged], ref) for judged, ref in groups]
    n = len(groups)
    return {
        "pairwise_accuracy": pairwise_accuracy(groups),
        "five_best": five_best(groups),
        "exact_match": exact_match(groups),
        "spearman": sum(spearman(j, r) for j, r in filled) / n if n else float("nan"),
        "kendall_tau": sum(kendall_tau(j, r) for j, r in filled) / n if n else float("nan"),
    }


def score_histogram(judged: list[dict]) -> dict:
    """How often each score was given, over every sampled judgment ({"0": n, ..., "5": n, "none": n}),
    a fractional score counted at its rounded-down point."""
    hist = {str(k): 0 for k in range(6)} | {"none": 0}
    for j in judged:
        for s in j.get("scores") or [None]:
            hist["none" if s is None else str(min(5, max(0, int(s))))] += 1
    return hist


# ----------------------------------------------------------------------------- pairs (Section 3.3 step 4)

def build_pairs(candidates: list[dict], judgments: list[dict]) -> tuple[list[dict], dict]:
    """For each prompt: chosen = highest mean judge score, rejected = lowest; drop the prompt if they are
    equal or fewer than 2 candidates got a parseable score."""
    pairs, stats = [], {"prompts": len(candidates), "ties": 0, "unscored": 0}
    by_prompt = {}
    for j in judgments:
        by_prompt.setdefault(j["prompt_index"], []).append(j)
    for i, c in enumerate(candidates):
        scored = [(j["score"], j["candidate"]) for j in by_prompt.get(i, []) if j["score"] is not None]
        if len(scored) < 2:
            stats["unscored"] += 1
            continue
        best = max(scored, key=lambda s: s[0])  # first of equals: deterministic
        worst = min(scored, key=lambda s: s[0])
        if best[0] == worst[0]:
            stats["ties"] += 1
            continue
        pairs.append({"prompt": c["prompt"], "chosen": c["responses"][best[1]], "rejected": c["responses"][worst[1]],
                      "chosen_score": best[0], "rejected_score": worst[0]})
    stats["pairs"] = len(pairs)
    return pairs, stats


def eft_judge_pairs(examples: list[dict], judged: list[dict], rubric: Rubric = FIG2) -> tuple[list[dict], dict]:
    """--eft-pairs, a departure from the paper, which trains the judge on EFT data in SFT only: M_t judged
    seed EFT examples (one sample each); wherever its score is not the seed judgment's (or does not parse),
    a DPO pair under the same judge prompt, the seed judgment chosen and M_t's own rejected. So the judging
    skill gets on-policy pairs beside the answer pairs, as in Meta-Rewarding (Wu et al., 2024), with the
    seed labels in place of a meta-judge. Returns (pairs, stats)."""
    pairs, agreed = [], 0
    for e, j in zip(examples, judged, strict=True):
        if j["scores"][0] is not None and j["scores"][0] == parse_score(e["judgment"]):
            agreed += 1
            continue
        pairs.append({"prompt": rubric.fill(e["instruction"], e["response"]), "chosen": e["judgment"],
                      "rejected": j["raw"][0], "judge_pair": True})
    return pairs, {"judged": len(examples), "agreed": agreed, "pairs": len(pairs)}


def random_judgments(candidates: list[dict], seed) -> list[dict]:
    """The --pairs-from random control: distinct random "scores" in place of the judge's, so build_pairs
    prefers one random candidate over another. Not the method: it measures what DPO gains without a judge."""
    rng = random.Random(seed)
    return [{"prompt_index": i, "candidate": k, "score": float(s), "scores": [float(s)], "raw": []}
            for i, c in enumerate(candidates)
            for k, s in enumerate(rng.sample(range(len(c["responses"])), len(c["responses"])))]


def oracle_judgments(candidates: list[dict], score_text) -> list[dict]:
    """The --pairs-from oracle control: the world's true score (score_text(prompt, response), None where
    the prompt cannot be graded) in place of the judge's, so build_pairs pairs the truly best candidate
    with the truly worst. Not the method: it bounds what a perfect judge would buy."""
    return [{"prompt_index": i, "candidate": k, "score": s, "scores": [s], "raw": []}
            for i, c in enumerate(candidates) for k, s in enumerate(score_text(c["prompt"], r) for r in c["responses"])]
