"""Evaluation of every model M_t of the loop, MT-Bench answers for outside judges, and the results report.

Ground truth comes from a world, and only through this small interface (toyworld.py and realworld.py
implement it; loop.py picks one):

    NAME, TITLE, RUBRIC                          a short name, a title for reports, the default rubric
    world_data(cfg) -> {"ift", "eft", "eval", "rm"}  seed data and held-out sets (data.py's contract)
    score(row, response) -> float                the true score of a response on the judges' 0..5 scale
    score_text(prompt, response) -> float | None  the same for a bare (self-instructed) prompt, if gradable
    metrics(rows, responses) -> dict             headline metrics, "quality" and "quality_se" among them

With a user's data folder and no world, evaluation reports what can be measured without a ground truth,
and says so: the model's own judge scores of its answers, a head-to-head against M1 by a fixed judge that
sees both answers in both orders, the judge's agreement with rm.jsonl's reference scores if there is one,
lengths and parse rates.

Imports: generate.py (sampling), judge.py (judging and its metrics), packing.py (the teacher-forced
forward of the sampling entropy), data.py (FastChat's answer format), common.py (atomic writes, rank and
log); torch; matplotlib for the plot, if installed.
"""
import math
import os

import torch

import data as D
import generate
import judge as J
import packing
from common import atomic_write, atomic_write_text, barrier, is_main, log, write_json


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over lower-cased words: 2 * LCS / (len(a) + len(b))."""
    x, y = a.lower().split(), b.lower().split()
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    return 2 * prev[-1] / (len(x) + len(y))


def stream_seed(cfg, stream: str) -> str:
    """The seed of one named random stream of a run (a stage's sampling, its prompt choice, ...): streams
    are named, not offset, so adding a stage moves no other stage's draws."""
    return f"{cfg.seed}/{stream}"


# Every stream's name, written here once: the name is the seed, so renaming one changes its draws (and the
# run's artifacts). Every model's evaluation draws from the same streams; each round has its own.
EVAL_STREAMS = {"responses": "eval responses", "greedy": 0, "diversity": "eval diversity",
                "rm": "eval rm judgments", "self": "eval self-judgments", "h2h": "eval head-to-head"}
ROUND_STREAMS = ("prompts", "candidates", "judgments", "eft", "eft judgments")


def round_stream(t: int, what: str) -> str:
    """Round t's stream for `what`, one of ROUND_STREAMS (its self-instruction, candidates, judgments, the
    pick of seed EFT examples for --eft-pairs and their judgments)."""
    if what not in ROUND_STREAMS:
        raise ValueError(f"no round stream {what!r}; one of {ROUND_STREAMS}")
    return f"iter{t} {what}"


def mtbench_stream(turn: int, temperature: float) -> str:
    return f"mtbench turn {turn + 1} T={temperature}"


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all n-grams of the texts (lower-cased)."""
    grams = [tuple(w[i:i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(responses: list[str], candidate_sets: list[list[str]]) -> dict:
    """The collapse question's numbers: distinct-1/2 and the unique fraction of the responses to the
    held-out prompts (one each), and the mean pairwise ROUGE-L among the candidates sampled for one prompt
    (1 = every candidate the same)."""
    pairs = [rouge_l(a, b) for c in candidate_sets for i, a in enumerate(c) for b in c[i + 1:]]
    return {"distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
            "unique": len(set(responses)) / len(responses) if responses else 0.0,
            "candidate_rouge_l": sum(pairs) / len(pairs) if pairs else None}


def sampling_entropy(model, tok, prompts: list[str], responses: list[str], temperature: float,
                     micro_batch: int = 16) -> float:
    """Mean entropy (nats) of the distribution each response token was sampled from, softmax(logits / T)
    before top-p, teacher-forced over the responses. Every rank scores every row, so under torchrun the
    ranks run the same forwards.
    The mean is taken in a fixed order: each token's entropy is a reduction over its own row (ATen splits
    row reductions over rows, not within one), and the tokens are then added exactly (math.fsum). A
    whole-tensor .sum() would split its additions over the threads, so 1 process (2 threads) and 2 ranks
    (1 thread each) would report different last digits."""
    rows = packing.prepare([{"prompt": p, "response": r} for p, r in zip(prompts, responses)], "sft", tok,
                           model.args.max_seq_len)
    device, per_token = next(model.parameters()).device, []
    with torch.no_grad():
        for i in range(0, len(rows), micro_batch):
            logits = packing.scored_logits(model, rows[i:i + micro_batch], "sft", device)[0]  # (N, V)
            logp = (logits.float() / max(temperature, 1e-6)).log_softmax(-1)
            per_token += (-(logp.exp() * logp).sum(-1)).tolist()  # (N,) one entropy per token
    return math.fsum(per_token) / max(len(per_token), 1)


def sampling(cfg, temperature: float, stream: str) -> dict:
    """generate_many's sampling settings; the stage's random streams are named by the run's seed and
    `stream` (each row then by its prompt and sample index: generate.row_key)."""
    return dict(temperature=temperature, top_p=cfg.top_p, seed=stream_seed(cfg, stream),
                compile=cfg.compile, batch_size=cfg.batch_size, kernels=cfg.kernels)


def respond(model, tok, cfg, prompts: list[str], n: int, temperature: float, stream: str, what: str) -> list[list[str]]:
    """n sampled responses (text) per prompt, in the chat format."""
    ids = [tok.encode_chat_prompt(p) for p in prompts]
    outs = generate.generate_many(model, ids, cfg.max_response_tokens, num_samples=n, stop_ids=tok.stop_ids,
                                  pad_id=tok.pad_id, progress=what, vocab_limit=tok.n_words,
                                  **sampling(cfg, temperature, stream))
    return [[generate.answer_text(tok, o).strip() for o in out] for out in outs]


def judge_items(model, tok, cfg, items: list[tuple[str, str]], rubric, stream: str, what: str) -> list[dict]:
    """The loop's judging: cfg.judge_samples sampled judgments per (instruction, response), averaged."""
    return J.judge(model, tok, items, samples=cfg.judge_samples, max_new_tokens=cfg.max_judge_tokens, progress=what,
                   rubric=rubric, score=cfg.judge_score, **sampling(cfg, cfg.temperature, stream))


def win_tie_loss(scores: list[float], other: list[float]) -> dict:
    n = len(scores)
    w, t = sum(a > b for a, b in zip(scores, other)), sum(a == b for a, b in zip(scores, other))
    return {"win": w / n, "tie": t / n, "loss": 1 - (w + t) / n}


# ----------------------------------------------------------------------------- one model

def evaluate_model(model, tok, cfg, name: str, data: dict, world, rubric, m1_responses=None, prev_responses=None,
                   fixed_judge=None) -> dict:
    """Held-out evaluation of model `name` (loop.py keeps it in run_dir/eval/name.json). world: the ground
    truth, or None. fixed_judge: () -> (model, tokenizer) of the head-to-head judge, used only without a world."""
    log(f"== evaluating {name}")
    prompts = [r["prompt"] for r in data["eval"]]
    sampled = [r[0] for r in respond(model, tok, cfg, prompts, 1, cfg.temperature, EVAL_STREAMS["responses"], f"{name} eval (T={cfg.temperature})")]
    res = {"model": name, "n_eval": len(prompts)}
    if world is not None:
        res.update(world.metrics(data["eval"], sampled))
        if cfg.eval_greedy:
            greedy = [r[0] for r in respond(model, tok, cfg, prompts, 1, 0.0, EVAL_STREAMS["greedy"], f"{name} eval (greedy)")]
            res["quality_greedy"] = world.metrics(data["eval"], greedy)["quality"]
    res.update(mean_response_words=sum(len(r.split()) for r in sampled) / len(sampled),
               mean_response_tokens=sum(len(tok.encode(r)) for r in sampled) / len(sampled), responses=sampled)
    if cfg.n_diversity:  # N candidates for some held-out prompts, as AIFT samples them, for their similarity
        sets = respond(model, tok, cfg, prompts[:cfg.n_diversity], cfg.n_candidates, cfg.temperature,
                       EVAL_STREAMS["diversity"], f"{name} candidates for diversity")
        res["diversity"] = diversity(sampled, sets)
        res["entropy"] = sampling_entropy(model, tok, prompts, sampled, cfg.temperature)
    if world is not None:
        true = [world.score(row, r) for row, r in zip(data["eval"], sampled)]
        for key, other in (("vs_M1", m1_responses), ("vs_prev", prev_responses)):
            if other is not None:
                res[key] = win_tie_loss(true, [world.score(row, r) for row, r in zip(data["eval"], other)])
    else:
        res.update(no_truth_metrics(model, tok, cfg, name, prompts, sampled, rubric, m1_responses, fixed_judge))
    if data["rm"]:
        res["judge"] = judge_metrics(model, tok, cfg, name, data["rm"], rubric)
    return res


def pair_truth(pairs: list[dict], world) -> dict | None:
    """Diagnostic only (ground truth): over the pairs whose self-instructed prompt the world can grade, how
    often the chosen response truly beats the rejected one, ties with it, or loses to it."""
    if world is None:
        return None
    graded = [(world.score_text(p["prompt"], p["chosen"]), world.score_text(p["prompt"], p["rejected"]))
              for p in pairs if not p.get("judge_pair")]  # --eft-pairs' judge pairs: no answers to grade
    graded = [(c, r) for c, r in graded if c is not None]
    return {"graded": len(graded), "better": sum(c > r for c, r in graded), "tie": sum(c == r for c, r in graded),
            "worse": sum(c < r for c, r in graded)}


def judge_metrics(model, tok, cfg, name: str, rm: list[dict], rubric) -> dict:
    """Table 4: the judge scores the reward-modelling set; its rankings are compared with the reference."""
    items = [(g["instruction"], r) for g in rm for r in g["responses"]]
    judged = judge_items(model, tok, cfg, items, rubric, EVAL_STREAMS["rm"], f"{name} judge RM set")

    def metrics(scores):
        groups, k = [], 0
        for g in rm:
            groups.append((scores[k:k + len(g["responses"])], g["scores"]))
            k += len(g["responses"])
        return J.reward_model_metrics(groups)

    out = {**metrics([j["score"] for j in judged]), "parse_rate": J.parse_rate(judged),
           "score_histogram": J.score_histogram(judged)}
    if cfg.judge_score == "expected":  # the same texts read as the paper reads them: what expectation buys
        out["sampled_reading"] = metrics([J.mean_score([J.parse_score(r) for r in j["raw"]]) for j in judged])
    return out


def no_truth_metrics(model, tok, cfg, name, prompts, sampled, rubric, m1_responses, fixed_judge) -> dict:
    """What can be measured without a ground truth: the model's own judge scores of its answers, and a
    head-to-head against M1's answers by a fixed judge (both orders)."""
    own = judge_items(model, tok, cfg, list(zip(prompts, sampled)), rubric, EVAL_STREAMS["self"],
                      f"{name} judges itself")
    scores = [j["score"] for j in own if j["score"] is not None]
    out = {"self_judged": {"score": sum(scores) / len(scores) if scores else None, "parse_rate": J.parse_rate(own)}}
    if m1_responses is not None and fixed_judge is not None:
        judge_model, judge_tok = fixed_judge()
        items = [(p, a, b) for p, a, b in zip(prompts, sampled, m1_responses)]
        out["h2h_vs_M1"] = J.head_to_head(judge_model, judge_tok, items, max_new_tokens=cfg.max_judge_tokens,
                                          progress=f"{name} vs M1, fixed judge",
                                          **sampling(cfg, cfg.temperature, EVAL_STREAMS["h2h"]))
    return out


# ----------------------------------------------------------------------------- MT-Bench answers

# FastChat's sampling temperature per MT-Bench category (its gen_model_answer.py).
MTBENCH_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                       "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}


def mtbench_answers(model, tok, cfg, model_id: str, questions: list[dict]) -> list[dict]:
    """Both turns of every MT-Bench question, the second answered in the dialog of the first, in
    FastChat's answer-file format, so the answers can be judged elsewhere by a strong judge."""
    dialogs = [[] for _ in questions]
    for turn in range(2):
        by_temperature: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            by_temperature.setdefault(MTBENCH_TEMPERATURE.get(q["category"], 0.7), []).append(i)
        for temperature, idx in sorted(by_temperature.items()):
            ids = [tok.encode_dialog(dialogs[i] + [{"role": "user", "content": questions[i]["turns"][turn]}]) for i in idx]
            outs = generate.generate_many(model, ids, cfg.mtbench_tokens, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                                          vocab_limit=tok.n_words, progress=f"{model_id} MT-Bench turn {turn + 1} (T={temperature})",
                                          **sampling(cfg, temperature, mtbench_stream(turn, temperature)))
            for i, (o,) in zip(idx, outs):
                answer = generate.answer_text(tok, o).strip()
                dialogs[i] += [{"role": "user", "content": questions[i]["turns"][turn]},
                               {"role": "assistant", "content": answer}]
    return [D.mtbench_answers_row(q["question_id"], model_id, [m["content"] for m in d if m["role"] == "assistant"])
            for q, d in zip(questions, dialogs)]


# ----------------------------------------------------------------------------- the report

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def _wtl(r: dict, key: str) -> str:
    return f"{100 * r[key]['win']:.0f}/{100 * r[key]['tie']:.0f}/{100 * r[key]['loss']:.0f}" if key in r else "-"


def _iteration_columns(st: dict) -> list[str]:
    truly = st.get("chosen_truly_better")
    return [str(st.get("pairs", "-")), f"{100 * truly:.0f}" if truly is not None else "-"]


def _truth_counts(t: dict | None) -> str:
    return f"{t['better']}/{t['tie']}/{t['worse']} ({t['graded']})" if t else "-"


def _round_stats(r: dict, iteration_stats: list[dict]) -> dict:
    """The stats of the AIFT round that made model r: M_{t+1} comes from round t; M0 and M1 from none."""
    t = int(r["model"][1:]) - 1
    return iteration_stats[t - 1] if t >= 1 else {}


def toy_table(results: list[dict], iteration_stats: list[dict]) -> str:
    head = ["model", "quality (T=0.7) ± SE", "greedy", "W/T/L vs M1 %", "W/T/L vs prev %", "judge pair acc %",
            "5-best %", "exact %", "Spearman", "Kendall τ", "judge parse %", "resp. words", "pairs built",
            "chosen truly better %"]
    rows = []
    for r in results:  # "-" where not measured: greedy quality (--no-eval-greedy), the judge (--n-rm 0)
        st, j, greedy = _round_stats(r, iteration_stats), r.get("judge", {}), r.get("quality_greedy")
        rows.append([r["model"], f"{r['quality']:.3f} ± {r['quality_se']:.3f}", _num(greedy, "{:.3f}"),
                     _wtl(r, "vs_M1"), _wtl(r, "vs_prev"), _pct(j.get("pairwise_accuracy")),
                     _pct(j.get("five_best")), _pct(j.get("exact_match")), _num(j.get("spearman"), "{:.3f}"),
                     _num(j.get("kendall_tau"), "{:.3f}"), _pct(j.get("parse_rate")),
                     f"{r['mean_response_words']:.2f}", *_iteration_columns(st)])
    return _markdown(head, rows)


def real_table(results: list[dict], iteration_stats: list[dict]) -> str:
    head = ["model", "prompt-level acc % ± SE", "instruction-level acc % ± SE", "W/T/L vs M1 %", "W/T/L vs prev %",
            "judge pair acc %", "judge parse %", "resp. words", "resp. tokens", "pairs built", "ties",
            "chosen vs rejected, truly: better/tie/worse (graded)"]
    rows = []
    for r in results:
        st, j = _round_stats(r, iteration_stats), r.get("judge", {})
        rows.append([r["model"], f"{100 * r['prompt_acc']:.1f} ± {100 * r['prompt_acc_se']:.1f}",
                     f"{100 * r['instruction_acc']:.1f} ± {100 * r['instruction_acc_se']:.1f}", _wtl(r, "vs_M1"),
                     _wtl(r, "vs_prev"), _pct(j.get("pairwise_accuracy")), _pct(j.get("parse_rate")),
                     f"{r['mean_response_words']:.1f}", f"{r['mean_response_tokens']:.1f}", str(st.get("pairs", "-")),
                     str(st.get("ties", "-")), _truth_counts(st.get("truth"))])
    return _markdown(head, rows)


def no_truth_table(results: list[dict], iteration_stats: list[dict]) -> str:
    head = ["model", "self-judged score", "self-judge parse %", "vs M1, fixed judge W/T/L %", "verdict parse %",
            "judge pair acc % (rm.jsonl)", "judge parse % (rm.jsonl)", "resp. words", "pairs built", "ties"]
    rows = []
    for r in results:
        st, own, j, h = _round_stats(r, iteration_stats), r["self_judged"], r.get("judge", {}), r.get("h2h_vs_M1")
        rows.append([r["model"], "-" if own["score"] is None else f"{own['score']:.2f}", _pct(own["parse_rate"]),
                     _wtl(r, "h2h_vs_M1"), _pct(h["parse_rate"]) if h else "-", _pct(j.get("pairwise_accuracy")),
                     _pct(j.get("parse_rate")), f"{r['mean_response_words']:.1f}", str(st.get("pairs", "-")),
                     str(st.get("ties", "-"))])
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
            + "".join("| " + " | ".join(r) + " |\n" for r in rows))


def rates_table(results: list[dict], key: str, title: str) -> str:
    names = list(results[0][key])
    rows = [[r["model"]] + [f"{100 * r[key][c]:.0f}%" for c in names] for r in results]
    return f"{title}:\n\n" + _markdown(["model", *names], rows)


def diversity_table(results: list[dict]) -> str:
    """Collapse, measured: diversity and entropy of each model's samples, and what scores its judge gives."""
    rows = []
    for r in results:
        d, h = r.get("diversity"), r.get("judge", {}).get("score_histogram")
        if d is None:
            continue
        rouge = "-" if d["candidate_rouge_l"] is None else f"{d['candidate_rouge_l']:.3f}"
        hist = " / ".join(str(h[k]) for k in ("0", "1", "2", "3", "4", "5", "none")) if h else "-"
        rows.append([r["model"], f"{d['distinct_1']:.3f}", f"{d['distinct_2']:.3f}", f"{100 * d['unique']:.1f}",
                     rouge, f"{r['entropy']:.3f}", hist])
    if not rows:
        return ""
    head = ["model", "distinct-1", "distinct-2", "unique responses %", "candidates' pairwise ROUGE-L",
            "sampling entropy (nats/token)", "judge scores 0/1/2/3/4/5/unparsed (RM set)"]
    return "Diversity, entropy and the judge's score histogram:\n\n" + _markdown(head, rows)


def _seconds(t: dict) -> str:
    """A stage's recorded time: "unknown" if it has none, "≥ s" if its process ended before the stage's last
    record (killed after the artifact was written: the time up to its last record is counted)."""
    if t.get("seconds") is None:
        return "unknown"
    return ("≥ " if t.get("partial") else "") + f"{t['seconds']:.0f}"


def timings_table(timings: dict) -> str:
    rows = [[stage, _seconds(t), str(t.get("new_tokens", "-")),
             f"{t['new_tokens'] / t['generate_seconds']:.0f}" if t.get("generate_seconds") else "-"]
            for stage, t in timings.items()]
    some = any(t.get("seconds") is None or t.get("partial") for t in timings.values())
    total = sum(t["seconds"] for t in timings.values() if t.get("seconds") is not None)
    rows.append(["all stages", ("≥ " if some else "") + f"{total:.0f}",
                 str(sum(t.get("new_tokens", 0) for t in timings.values())), "-"])
    return ("Wall time per stage (kept in timings.json as each stage runs, so stages run by an earlier, "
            "interrupted or killed process are counted too; loading models between stages is not; ≥: its "
            "process was killed after the stage's last record of its time; unknown: none was recorded):\n\n"
            + _markdown(["stage", "seconds", "new tokens generated", "generation tok/s"], rows))


def report(cfg, world, results: list[dict], iteration_stats: list[dict], seed_metrics, wall: float, timings: dict) -> dict:
    """results.md (tables) and results.json in run_dir, and the plot; printed too."""
    if world is None:
        title = "a user's data, no ground truth"
        intro = ("No ground truth: the judge's own scores, a head-to-head against M1 by a fixed judge (both orders) "
                 "and, where rm.jsonl exists, the judge's agreement with its reference scores.")
        table = no_truth_table(results, iteration_stats)
    else:
        title = world.TITLE
        if world.NAME == "toy":
            intro = f"Seed IFT demonstrations: mean true score {seed_metrics['quality']:.3f} ± {seed_metrics['quality_se']:.3f}."
            table = toy_table(results, iteration_stats) + "\n" + rates_table(results, "check_rates", "Per-check pass rates of sampled responses")
        else:
            intro = (f"Seed IFT demonstrations: prompt-level accuracy {100 * seed_metrics['prompt_acc']:.1f}%, "
                     f"instruction-level {100 * seed_metrics['instruction_acc']:.1f}%.")
            table = real_table(results, iteration_stats) + "\n" + rates_table(results, "check_rates", "Pass rate per instruction type (sampled responses)")
    rm = f"RM set: {cfg.n_rm} prompts × 4 responses. " if world is not None else ""
    if cfg.pairs_from != "judge":
        title += f" — CONTROL: pairs from {cfg.pairs_from}, not the judge (not the method)"
    md = (f"# Self-rewarding loop on {title} (seed {cfg.seed})\n\n{intro} Held-out prompts: {results[0]['n_eval']}; "
          f"{rm}Wall time of its stages {wall / 60:.1f} min (summed over every process that worked on this run).\n\n{table}")
    collapse = diversity_table(results)
    if collapse:
        md += "\n" + collapse
    if world is not None and world.NAME != "toy" or timings:
        md += "\n" + timings_table(timings)
    summary = {"config": {k: v for k, v in vars(cfg).items()}, "seed_metrics": seed_metrics, "wall_seconds": wall,
               "results": [{k: v for k, v in r.items() if k != "responses"} for r in results],
               "iterations": iteration_stats, "timings": timings}
    if is_main():
        atomic_write_text(os.path.join(cfg.run_dir, "results.md"), md)
        write_json(os.path.join(cfg.run_dir, "results.json"), summary)
        plot(cfg, results, seed_metrics)
        print("\n" + md, flush=True)
    barrier()
    return summary


def plot(cfg, results: list[dict], seed_metrics):
    """Metrics per model as a PNG, where matplotlib is installed (it is not a dependency)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib to get results.png)")
        return
    names, series = [r["model"] for r in results], {}
    if "quality" in results[0]:
        series["true quality / 5"] = [r["quality"] / 5 for r in results]
    if all("judge" in r for r in results):  # none without an RM set (--n-rm 0)
        series["judge pairwise acc"] = [r["judge"]["pairwise_accuracy"] for r in results]
        series["judge parse rate"] = [r["judge"]["parse_rate"] for r in results]
    if all("diversity" in r for r in results):
        series["distinct-2"] = [r["diversity"]["distinct_2"] for r in results]
        series["candidates' pairwise ROUGE-L"] = [r["diversity"]["candidate_rouge_l"] or 0 for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series.items():
        ax.plot(names, ys, marker="o", label=label)
    if seed_metrics and "quality" in seed_metrics:
        ax.axhline(seed_metrics["quality"] / 5, ls="--", c="gray", label="seed IFT quality / 5")
    ax.set_ylim(0, 1.02)
    ax.legend()
    atomic_write(os.path.join(cfg.run_dir, "results.png"), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
