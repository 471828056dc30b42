"""Self-instruction creation (Section 3.3, step 1): the model writes new prompts from 8-shot prompts of
seed and earlier generated tasks, and the new ones are filtered (duplicates, near-copies, length outliers,
the evaluation sets).

Imports: the project's generate.py (sampling) and evaluation.py (sampling settings, ROUGE-L)."""
import math
import random

import evaluation as E
import generate
from evaluation import rouge_l, sampling

SELF_INSTRUCT_HEADER = "Here are tasks that people asked an AI assistant. Write one more new task.\n"


def self_instruct_prompt(demonstrations: list[str]) -> str:
    """The few-shot prompt for a new task; the model continues after the last "Task:" up to a newline
    (so a demonstration's own line breaks become spaces)."""
    return SELF_INSTRUCT_HEADER + "".join(f"Task: {d.replace(chr(10), ' ')}\n" for d in demonstrations) + "Task:"


def create_prompts(model, tok, cfg, ift_prompts: list[str], earlier: list[str], stream: str,
                   exclude: set[str] = frozenset()):
    """8-shot self-instruction: 6 IFT demonstrations + 2 earlier generated prompts (IFT ones until there
    are some), T=0.6, top-p 0.9. Filters exact duplicates, near-copies (ROUGE-L >= threshold against the
    prompt's own demonstrations), length outliers (relative to the IFT prompts) and any prompt of the
    evaluation sets (`exclude`: decontamination). Pools smaller than their shots give all they have: a
    user's data may hold fewer than 6 IFT rows, and a round may keep a single generated prompt.
    Returns (rows, stats)."""
    rng = random.Random(E.stream_seed(cfg, stream))
    pool = earlier or ift_prompts
    demos = [rng.sample(ift_prompts, min(6, len(ift_prompts))) + rng.sample(pool, min(2, len(pool)))
             for _ in range(cfg.n_prompts)]
    for d in demos:
        rng.shuffle(d)
    newline_ids = {i for i in range(tok.n_words) if i not in tok.special_tokens.values()
                   and "\n" in tok.decode([i])}  # a task ends at the first newline
    ids = [tok.encode(self_instruct_prompt(d)) for d in demos]
    outs = generate.generate_many(model, ids, cfg.max_prompt_tokens, stop_ids=newline_ids | set(tok.stop_ids),
                                  pad_id=tok.pad_id, progress="self-instruct", vocab_limit=tok.n_words,
                                  **sampling(cfg, cfg.prompt_temperature, stream))
    lengths = sorted(len(p.split()) for p in ift_prompts)
    lo = max(1, lengths[len(lengths) // 100] // 2)
    hi = math.ceil(lengths[-1 - len(lengths) // 100] * 1.5)
    seen, rows = {p.lower() for p in ift_prompts}, []
    stats = {"generated": len(outs), "duplicate": 0, "near_copy": 0, "length": 0, "unfinished": 0, "eval_set": 0}
    for d, (out,) in zip(demos, outs):
        if not out or out[-1] not in newline_ids:
            stats["unfinished"] += 1
            continue
        # the text before the line break: a BPE may merge the break with what precedes it ("?\n")
        text = tok.decode(out).split("\n", 1)[0].strip()
        if not (lo <= len(text.split()) <= hi):
            stats["length"] += 1
        elif text.lower() in seen:
            stats["duplicate"] += 1
        elif text.lower() in exclude:
            stats["eval_set"] += 1
        elif max(rouge_l(text, x) for x in d) >= cfg.rouge_threshold:
            stats["near_copy"] += 1
        else:
            seen.add(text.lower())
            rows.append({"prompt": text})
    stats["kept"] = len(rows)
    return rows, stats
