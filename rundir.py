"""A run directory whose artifacts are bound to the settings that made them, so a resumed run never mixes
configurations, and never reports settings its artifacts were not made with.

Every stage of loop.py writes one artifact (a file, or a model folder whose params.json is written last)
and is reused when that artifact exists. Before a stage is made, its fingerprint is recorded in
run_dir/stages.json: the settings of the stage's own group and of every group before it in the run (its
inputs were made with those). A finished stage whose fingerprint differs from this run's is refused,
naming the stage, the setting, and both values; `--redo-from STAGE` makes that stage and every later one
again, after moving the old artifacts to run_dir/replaced/<time>/ (nothing is deleted). Settings outside
every group (HARMLESS) cannot change an artifact: threads, the generation batch size (every sampled row
has its own random stream), more --iterations, MT-Bench answers on or off.

Each stage's wall time is kept with it in run_dir/timings.json, so the report sums the stages of every
process that worked on the run. Temporary files left by a killed atomic write are removed on start.

Imports: the stdlib; from the project common.py (atomic writes, JSON, ranks) and generate.py (how many
tokens a stage generated).
"""
import dataclasses
import glob
import math
import os
import re
import shutil
import time

import generate
from common import barrier, is_main, log, read_json_object, read_jsonl, write_json, write_jsonl

# What shapes each stage, by group, in run order (loop.Config's fields; tests/test_rundir.py checks that
# every field is in exactly one group or in HARMLESS).
GROUPS = {
    "data": ("seed", "world", "data", "sharegpt", "n_ift", "n_eft", "n_eval", "n_rm"),
    "M0": ("init", "preset", "device", "micro_batch", "pretrain_steps", "pretrain_lr", "pretrain_batch", "pretrain_seq_len",
           "pretrain_chars", "pretrain_task_lists", "pretrain_graded"),
    "sft": ("judge_prompt", "sft_steps", "sft_lr", "sft_min_lr", "sft_batch", "dropout"),
    "sampling": ("temperature", "top_p", "compile", "judge_samples", "max_response_tokens", "max_judge_tokens",
                 "generation_layout"),
    "eval": ("eval_greedy", "h2h_judge", "n_diversity"),
    "prompts": ("n_prompts", "prompt_model", "prompt_temperature", "max_prompt_tokens", "rouge_threshold"),
    "candidates": ("n_candidates",),
    "judgments": ("pairs_from",),
    "eft_judgments": ("eft_pairs",),
    "dpo": ("dpo_epochs", "dpo_lr", "dpo_min_lr", "dpo_batch", "beta", "rpo_alpha"),
    "mtbench": ("mtbench_tokens",),
}
HARMLESS = ("run_dir", "threads", "batch_size", "iterations", "eval_m0", "mtbench", "redo_from",
            "activation_checkpointing")
_MODEL_GROUPS = {0: ("data", "M0"), 1: ("data", "M0", "sft")}
_AIFT = ("data", "M0", "sft", "sampling", "prompts", "candidates", "judgments", "eft_judgments")


def model_groups(k: int) -> tuple:
    """What shaped model M_k: M0 and M1 their own stages; every later one all of AIFT and DPO too."""
    return _MODEL_GROUPS.get(k, _AIFT + ("dpo",))


def stage_groups(name: str) -> tuple:
    """The groups whose settings shape the stage named by its artifact's path inside the run dir."""
    if name == "data":
        return ("data",)
    if m := re.fullmatch(r"M(\d+)", name):
        return model_groups(int(m[1]))
    if m := re.fullmatch(r"eval/M(\d+)\.json", name):
        return tuple(dict.fromkeys(model_groups(int(m[1])) + ("sampling", "eval")))
    if m := re.fullmatch(r"mtbench/M(\d+)\.jsonl", name):
        return tuple(dict.fromkeys(model_groups(int(m[1])) + ("sampling", "mtbench")))
    if m := re.fullmatch(r"iter(\d+)/(prompts|candidates|judgments|eft_judgments|pairs)\.jsonl", name):
        t, kind = int(m[1]), m[2]
        if t > 1:  # M_t itself was shaped by every AIFT group and DPO
            return _AIFT + ("dpo",)
        return _AIFT if kind == "pairs" else _AIFT[:_AIFT.index(kind) + 1]  # M1, then this stage's inputs
    raise ValueError(f"rundir: no stage is named {name!r}")


def fingerprint(cfg, name: str) -> dict:
    return {f: getattr(cfg, f) for g in stage_groups(name) for f in GROUPS[g]}


class RunDirError(ValueError):
    """A run dir that cannot be resumed with these settings, or a damaged artifact: says what to do."""


class RunDir:
    def __init__(self, cfg):
        self.cfg, self.path = cfg, cfg.run_dir
        self.stages_path, self.timings_path = os.path.join(self.path, "stages.json"), os.path.join(self.path, "timings.json")
        self.stages = read_json_object(self.stages_path) if os.path.exists(self.stages_path) else {}
        self.timings = read_json_object(self.timings_path) if os.path.exists(self.timings_path) else {}

    def name(self, path: str) -> str:
        return os.path.relpath(path, self.path).replace(os.sep, "/")

    # -- start
    def clean_temporaries(self) -> int:
        """Remove what a kill between an atomic write's temporary file and its rename left (name.tmpPID)."""
        if not is_main():
            return 0
        left = [p for p in glob.glob(os.path.join(self.path, "**", "*.tmp*"), recursive=True)
                if re.search(r"\.tmp\d+$", p) and os.path.isfile(p)]
        for p in left:
            os.remove(p)
        if left:
            log(f"removed {len(left)} temporary file(s) a killed run left in {self.path}")
        return len(left)

    def redo_from(self, name: str):
        """Move the artifacts of stage `name` (or of every stage under it: 'iter2') and of every stage recorded
        after it to run_dir/replaced/<time>/, and forget them: they are made again."""
        names = list(self.stages)
        first = next((i for i, n in enumerate(names) if n == name or n.startswith(name.rstrip("/") + "/")), None)
        if first is None:
            raise RunDirError(f"--redo-from {name}: no such stage in {self.stages_path}; stages: {', '.join(names)}")
        dest = os.path.join(self.path, "replaced", time.strftime("%Y%m%d-%H%M%S"))
        if is_main():
            for n in names[first:]:
                src = os.path.join(self.path, n)
                if os.path.exists(src):
                    os.makedirs(os.path.dirname(os.path.join(dest, n)), exist_ok=True)
                    shutil.move(src, os.path.join(dest, n))
                self.stages.pop(n), self.timings.pop(n, None)
            write_json(self.stages_path, self.stages)
            write_json(self.timings_path, self.timings)
            log(f"--redo-from {name}: {len(names) - first} stage(s) moved to {dest}, to be made again")
        barrier()
        self.stages = read_json_object(self.stages_path)

    # -- stages
    def check(self, name: str):
        """Refuse a finished stage made with other settings than this run's (or with unknown ones)."""
        want = fingerprint(self.cfg, name)
        if name not in self.stages:
            raise RunDirError(f"{os.path.join(self.path, name)} exists but {self.stages_path} has no record of "
                              "the settings that made it (a run dir of an older version, or edited by hand). Use a "
                              f"new --run-dir, or --redo-from {name} to make it and every later stage again.")
        # A setting added after the stage was made is taken to have had its default, which keeps what the
        # code did before (a new setting's default must: tests/test_rundir.py holds one to it).
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg)}
        for k, v in want.items():
            old = self.stages[name].get(k, defaults.get(k, "(not recorded)"))
            if old != v:
                raise RunDirError(f"stage {name} of {self.path} was made with {k}={old!r}; this run has {k}={v!r}. "
                                  f"Use a new --run-dir, or --redo-from {name} to make {name} and every later "
                                  "stage again (the old ones are moved to run_dir/replaced/).")

    def resume(self, path: str, done: bool, load, make):
        """The resume rule of every stage: a finished stage (done) is checked and loaded, not made again.
        Every rank has looked before rank 0 writes; make() is a collective under torchrun, after which every
        rank waits until rank 0 has written the artifact."""
        name = self.name(path)
        barrier()
        if done:
            self.check(name)
            log(f"reusing {path}")
            return load()
        self.stages[name] = fingerprint(self.cfg, name)  # recorded before the artifact, which says "done"
        if is_main():
            write_json(self.stages_path, self.stages)
        t0, tok0, gen0 = time.time(), generate.STATS["new_tokens"], generate.STATS["seconds"]
        out = make()
        self.timings[name] = {"seconds": round(time.time() - t0, 1), "new_tokens": generate.STATS["new_tokens"] - tok0,
                              "generate_seconds": round(generate.STATS["seconds"] - gen0, 1)}
        if is_main():
            write_json(self.timings_path, self.timings)
        barrier()
        return out

    def stage(self, path: str, make, kind: str = "jsonl", check=None):
        """A stage whose artifact is one file (JSONL rows or a JSON object): reused if it exists, after
        check(value) (a ValueError naming what is wrong), else made and written atomically."""
        def load():
            try:
                value = read_jsonl(path) if kind == "jsonl" else read_json_object(path)
                if check is not None:
                    check(value)
            except (ValueError, KeyError, TypeError) as e:
                where = str(e) if str(e).startswith(path) else f"{path}: {e}"  # the readers name the file already
                raise RunDirError(f"{where}. The file is damaged or does not belong to this run: delete it (it is "
                                  f"made again), or use --redo-from {self.name(path)}.") from None
            return value

        def make_and_write():
            out = make()  # under torchrun: a collective; every rank ends with the same rows
            if is_main():
                (write_jsonl if kind == "jsonl" else write_json)(path, out)
            return out
        return self.resume(path, os.path.exists(path), load, make_and_write)

    def stage_seconds(self) -> float:
        """The wall time of every stage of the run, whichever process made it."""
        return sum(t["seconds"] for t in self.timings.values())


# ----------------------------------------------------------------------------- checks of reused artifacts
# A reused artifact of loop.py must be what its stage makes from its input (RunDir.stage names the file).

def check_prompts(rows):
    for i, r in enumerate(rows):
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise ValueError(f"row {i + 1}: no 'prompt' text")


def check_candidates(rows, prompts, n: int):
    if len(rows) != len(prompts):
        raise ValueError(f"{len(rows)} candidate rows for {len(prompts)} prompts (one row per prompt)")
    for i, (r, p) in enumerate(zip(rows, prompts)):
        if r.get("prompt") != p["prompt"]:
            raise ValueError(f"row {i + 1}: its prompt is not prompt {i + 1} of prompts.jsonl")
        if not isinstance(r.get("responses"), list) or len(r["responses"]) != n or not all(isinstance(x, str) for x in r["responses"]):
            raise ValueError(f"row {i + 1}: 'responses' must be {n} texts (--n-candidates)")


def check_judgments(rows, candidates):
    want = {(i, k) for i, c in enumerate(candidates) for k in range(len(c["responses"]))}
    got = set()
    for j, r in enumerate(rows):
        s = r.get("score")
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)):
            raise ValueError(f"row {j + 1}: 'score' must be a number or null, got {s!r}")
        got.add((r.get("prompt_index"), r.get("candidate")))
    if got != want or len(rows) != len(want):
        raise ValueError(f"{len(rows)} judgments for {len(want)} candidates (one per candidate response)")


def check_eft_judgments(rows, n: int, n_eft: int):
    if len(rows) != n:
        raise ValueError(f"{len(rows)} judgments of seed EFT examples, not {n}")
    for j, r in enumerate(rows):
        i = r.get("eft_index")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_eft:
            raise ValueError(f"row {j + 1}: 'eft_index' must be an index into the {n_eft} seed EFT examples, got {i!r}")
        if len(r.get("scores") or ()) != 1 or len(r.get("raw") or ()) != 1:
            raise ValueError(f"row {j + 1}: one judgment ('scores', 'raw') per seed EFT example")


def check_pairs(rows, fields):
    for i, r in enumerate(rows):
        missing = [k for k in fields if k not in r]
        if missing:
            raise ValueError(f"row {i + 1}: missing field(s) {missing}")


def check_eval(res, name: str, n_eval: int):
    if res.get("model") != name or len(res.get("responses") or ()) != n_eval:
        raise ValueError(f"not the evaluation of {name} on {n_eval} held-out prompts")



def read_json(path: str) -> dict:
    """A JSON object the loop wrote beside a stage (pair_stats.json), errors naming the file."""
    try:
        return read_json_object(path)
    except (ValueError, FileNotFoundError) as e:
        raise RunDirError(f"{e}. Delete the stage's files to make it again.") from None

