"""A run directory whose artifacts are bound to the settings that made them, so a resumed run never mixes
configurations, and never reports settings its artifacts were not made with.

Every stage of loop.py writes one artifact (a file, or a model folder whose params.json is written last)
and is reused when that artifact exists. Before a stage is made, its fingerprint is recorded in
run_dir/stages.json: the settings of the stage's own group and of every group before it in the run (its
inputs were made with those). A finished stage whose fingerprint differs from this run's is refused,
naming the stage, the setting, and both values; `--redo-from STAGE` makes that stage and every later one
again, after moving the old artifacts to run_dir/replaced/<time>/ (nothing is deleted). Settings outside
every group (HARMLESS) cannot change an artifact: threads, the generation batch size (every sampled row
has its own random stream), more --iterations, MT-Bench answers on or off, and the device: where the work
runs is not a setting of the result (under torchrun each rank has its own). A --data folder is bound by
its content (a hash of its files' bytes), so a row fixed there is not silently left stale in run_dir/data.

One process works on a run dir at a time (lock_run_dir). Each stage's wall time is kept with it in
run_dir/timings.json, written as the stage starts, every TICK_SECONDS while it runs and when it is done,
so the report sums the stages of every process that worked on the run, killed ones included.
Temporary files left by a killed atomic write are removed on start. Settings that cannot work and inputs
that cannot fit (BOUNDS, check_prompt_lengths) are refused before any work, naming the flag or the file.

Imports: the stdlib; from the project common.py (atomic writes, JSON, ranks), data.py (the data folder's
files) and generate.py (how many tokens a stage generated).
"""
import dataclasses
import fcntl
import glob
import hashlib
import math
import os
import re
import shutil
import threading
import time

import data as D
import generate
from common import barrier, is_main, iter_jsonl, log, read_json_object, read_jsonl, write_json, write_jsonl

# What shapes each stage, by group, in run order (loop.Config's fields; tests/test_rundir.py checks that
# every field is in exactly one group or in HARMLESS).
GROUPS = {
    "data": ("seed", "world", "data", "sharegpt", "n_ift", "n_eft", "n_eval", "n_rm", "ift_seed"),
    "M0": ("init", "preset", "micro_batch", "pretrain_steps", "pretrain_lr", "pretrain_batch",
           "pretrain_seq_len", "pretrain_chars", "pretrain_task_lists", "pretrain_graded"),
    "rubric": ("judge_prompt",),  # the judge prompt: M1's EFT examples, and every judging after
    "sft": ("sft_data", "sft_steps", "sft_lr", "sft_min_lr", "sft_batch", "dropout"),
    "sampling": ("temperature", "top_p", "compile", "judge_samples", "judge_score", "kernels", "max_response_tokens", "max_judge_tokens",
                 "generation_layout"),
    "eval": ("eval_greedy", "h2h_judge", "n_diversity"),
    "prompts": ("n_prompts", "prompt_model", "prompt_temperature", "max_prompt_tokens", "rouge_threshold"),
    "candidates": ("n_candidates",),  # the AIFT candidates, and the diversity sets of every evaluation
    "judgments": ("pairs_from",),
    "eft_judgments": ("eft_pairs",),
    "dpo": ("dpo_epochs", "dpo_lr", "dpo_min_lr", "dpo_batch", "beta", "rpo_alpha"),
    "mtbench": ("mtbench_tokens",),
}
HARMLESS = ("run_dir", "threads", "batch_size", "iterations", "eval_m0", "mtbench", "redo_from",
            "activation_checkpointing", "device")
_MODEL_GROUPS = {0: ("data", "M0"), 1: ("data", "M0", "rubric", "sft")}
_AIFT = ("data", "M0", "rubric", "sft", "sampling", "prompts", "candidates", "judgments", "eft_judgments")
_KINDS = ("prompts", "candidates", "judgments", "eft_judgments", "pairs")  # an AIFT round's stages, in order


# Settings that cannot work, by flag: -> (lowest, highest) allowed; None = unbounded. Counts of things are
# at least 1 (or 0 where none is a meaningful request), rates in their range; every float must be finite.
BOUNDS = {"iterations": (0, None), "eft_pairs": (0, None), "threads": (0, None), "pretrain_steps": (1, None),
          "pretrain_batch": (1, None), "pretrain_seq_len": (2, None), "pretrain_chars": (0, None),
          "pretrain_task_lists": (0, None), "pretrain_graded": (0, None), "n_ift": (1, None),
          "n_eft": (0, None), "sft_steps": (1, None), "sft_batch": (1, None), "n_prompts": (1, None),
          "max_prompt_tokens": (1, None), "n_candidates": (2, None), "judge_samples": (1, None),
          "max_response_tokens": (1, None), "max_judge_tokens": (1, None), "dpo_batch": (1, None),
          "micro_batch": (1, None), "n_eval": (1, None), "n_rm": (0, None), "mtbench_tokens": (1, None),
          "batch_size": (1, None), "pretrain_lr": (0, None), "sft_lr": (0, None), "sft_min_lr": (0, None),
          "dpo_lr": (0, None), "dpo_min_lr": (0, None), "dpo_epochs": (0, None), "beta": (0, None),
          "rpo_alpha": (0, None), "temperature": (0, None), "prompt_temperature": (0, None), "top_p": (0, 1),
          "rouge_threshold": (0, 1), "dropout": (0, 1)}


def check_numbers(cfg):
    """loop.Config's numbers against BOUNDS (loop.validate's share), each refusal naming its flag."""
    for name, (lo, hi) in BOUNDS.items():
        v, flag = getattr(cfg, name), "--" + name.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{flag} {v}: must be a finite number")
        if v < lo or (hi is not None and v > hi):
            allowed = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"{flag} {v}: must be {allowed}")
    for name in ("top_p", "beta", "dpo_epochs", "dpo_lr", "sft_lr", "pretrain_lr"):
        if getattr(cfg, name) == 0:
            raise ValueError(f"--{name.replace('_', '-')} 0: must be above 0")
    if cfg.dropout >= 1:
        raise ValueError(f"--dropout {cfg.dropout}: must be below 1")


def model_groups(k: int) -> tuple:
    """What shaped model M_k: M0 and M1 their own stages; every later one all of AIFT and DPO too."""
    return _MODEL_GROUPS.get(k, _AIFT + ("dpo",))


def stage_groups(name: str) -> tuple:
    """The groups whose settings shape the stage named by its artifact's path inside the run dir."""
    if name == "data":
        return ("data",)
    if m := re.fullmatch(r"M(\d+)", name):
        return model_groups(int(m[1]))
    if m := re.fullmatch(r"eval/M(\d+)\.json", name):  # judge metrics read the rubric, diversity n_candidates
        return tuple(dict.fromkeys(model_groups(int(m[1])) + ("rubric", "sampling", "candidates", "eval")))
    if m := re.fullmatch(r"mtbench/M(\d+)\.jsonl", name):
        return tuple(dict.fromkeys(model_groups(int(m[1])) + ("sampling", "mtbench")))
    if m := re.fullmatch(r"iter(\d+)/(prompts|candidates|judgments|eft_judgments|pairs)\.jsonl", name):
        t, kind = int(m[1]), m[2]
        if t > 1:  # M_t itself was shaped by every AIFT group and DPO
            return _AIFT + ("dpo",)
        return _AIFT if kind == "pairs" else _AIFT[:_AIFT.index(kind) + 1]  # M1, then this stage's inputs
    raise ValueError(f"rundir: no stage is named {name!r}")


def fingerprint(cfg, name: str, data_sha256: str | None = None) -> dict:
    """The settings that shaped stage `name`, and the content of the --data folder (data_digest), which
    every stage stands on."""
    fp = {f: getattr(cfg, f) for g in stage_groups(name) for f in GROUPS[g]}
    return {**fp, "data_sha256": data_sha256} if data_sha256 else fp


def stage_key(name: str) -> tuple:
    """A stage's place in the run's order: data, then per model M_k its training, evaluation and MT-Bench
    answers, then round k's stages (iter_k/..., whose name alone means its first stage)."""
    if name == "data":
        return (-1, 0)
    for place, pattern in enumerate((r"M(\d+)", r"eval/M(\d+)\.json", r"mtbench/M(\d+)\.jsonl")):
        if m := re.fullmatch(pattern, name):
            return (int(m[1]), place)
    if m := re.fullmatch(rf"iter(\d+)(?:/({'|'.join(_KINDS)})\.jsonl)?", name):
        return (int(m[1]), 3 + (_KINDS.index(m[2]) if m[2] else 0))
    return (math.inf, 0)  # not a stage of loop.py's: last


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_digest(directory: str) -> str:
    """sha256 over the data folder's files (data.py's contract): each name with its bytes' sha256."""
    h = hashlib.sha256()
    for spec in D.CONTRACT.values():
        path = os.path.join(directory, spec["file"])
        if os.path.exists(path):
            h.update(f"{spec['file']} {_sha256(path)}\n".encode())
    return h.hexdigest()


_LOCKS = {}  # run dir -> its open lock file: flock holds while the file stays open, for the process's life


def lock_run_dir(path: str):
    """Make run dir `path` this process's alone (an exclusive flock on path/.lock, held until the process
    ends, however it ends), or refuse naming the process that holds it. Under torchrun, rank 0 takes it for
    every rank: they share the dir. An unwritable run dir is refused here, before any work."""
    if os.path.realpath(path) in _LOCKS:
        return
    try:
        os.makedirs(path, exist_ok=True)
        f = open(os.path.join(path, ".lock"), "a+")
    except OSError as e:
        raise RunDirError(f"--run-dir {path}: cannot write there ({e.strerror})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{path} is in use by another process (PID {pid}); wait for it to end, or use "
                          "another --run-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[os.path.realpath(path)] = f


class RunDirError(ValueError):
    """A run dir that cannot be resumed with these settings, a damaged artifact, or input that cannot work:
    says what to do, in one line (loop.py prints it without a traceback)."""


class RunDir:
    # Seconds between the records of a running stage's time: a kill loses at most this much of the stage's
    # time, and each record rewrites one small file.
    TICK_SECONDS = 30.0

    def __init__(self, cfg):
        self.cfg, self.path = cfg, cfg.run_dir
        self.stages_path, self.timings_path = os.path.join(self.path, "stages.json"), os.path.join(self.path, "timings.json")
        self.stages = read_json_object(self.stages_path) if os.path.exists(self.stages_path) else {}
        self.timings = read_json_object(self.timings_path) if os.path.exists(self.timings_path) else {}
        self.data_sha256 = data_digest(cfg.data) if cfg.data else None
        self._timings_lock = threading.Lock()  # the main thread and a stage's ticker both write timings.json

    def name(self, path: str) -> str:
        return os.path.relpath(path, self.path).replace(os.sep, "/")

    def fingerprint(self, name: str) -> dict:
        return fingerprint(self.cfg, name, self.data_sha256)

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

    def artifacts(self) -> list[str]:
        """The stages whose artifacts are in the run dir, recorded in stages.json or not."""
        found = ["data"] if os.path.isdir(os.path.join(self.path, "data")) else []
        for pattern in ("M*", "eval/M*.json", "mtbench/M*.jsonl", "iter*/*.jsonl"):
            found += [self.name(p) for p in glob.glob(os.path.join(self.path, pattern))]
        return [n for n in found if stage_key(n)[0] != math.inf]

    def redo_from(self, name: str):
        """Move the artifacts of stage `name` (or of every stage under it: 'iter2') and of every stage after
        it in the run's order, recorded or not, to run_dir/replaced/<time>/, and forget them: they are made
        again. A stage an older version made without a record can be redone like any other."""
        known = sorted(set(self.stages) | set(self.artifacts()), key=stage_key)
        hits = [n for n in known if n == name or n.startswith(name.rstrip("/") + "/")]
        if not hits:
            raise RunDirError(f"--redo-from {name}: no such stage in {self.path}; stages: {', '.join(known)}")
        later = [n for n in known if stage_key(n) >= min(map(stage_key, hits))]
        dest = os.path.join(self.path, "replaced", time.strftime("%Y%m%d-%H%M%S"))
        if is_main():
            for n in later:
                src = os.path.join(self.path, n)
                if os.path.exists(src):
                    os.makedirs(os.path.dirname(os.path.join(dest, n)), exist_ok=True)
                    shutil.move(src, os.path.join(dest, n))
                self.stages.pop(n, None), self.timings.pop(n, None)
            write_json(self.stages_path, self.stages)
            write_json(self.timings_path, self.timings)
            log(f"--redo-from {name}: {len(later)} stage(s) moved to {dest}, to be made again")
        barrier()
        self.stages = read_json_object(self.stages_path)

    # -- stages
    def check(self, name: str):
        """Refuse a finished stage made with other settings than this run's (or with unknown ones)."""
        want = self.fingerprint(name)
        if name not in self.stages:
            raise RunDirError(f"{os.path.join(self.path, name)} exists but {self.stages_path} has no record of "
                              "the settings that made it (a run dir of an older version, or edited by hand). Use a "
                              f"new --run-dir, or --redo-from {name} to make it and every later stage again.")
        # A setting added after the stage was made is taken to have had its default, which keeps what the
        # code did before (a new setting's default must: tests/test_rundir.py holds one to it).
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg)}
        record = self.stages[name]
        for k, v in want.items():
            if k == "data_sha256" and k not in record:
                continue  # recorded before data were hashed: the folder's path is compared, as it was then
            old = record.get(k, defaults.get(k, "(not recorded)"))
            if old != v:
                made = (f"from other --data content (the files of {self.cfg.data} changed since)"
                        if k == "data_sha256" else f"with {k}={old!r}; this run has {k}={v!r}")
                raise RunDirError(f"stage {name} of {self.path} was made {made}. Use a new --run-dir, or "
                                  f"--redo-from {name} to make {name} and every later stage again (the old "
                                  "ones are moved to run_dir/replaced/).")

    def resume(self, path: str, done: bool, load, make):
        """The resume rule of every stage: a finished stage (done) is checked and loaded, not made again.
        Every rank has looked before rank 0 writes; make() is a collective under torchrun, after which every
        rank waits until rank 0 has written the artifact."""
        name = self.name(path)
        barrier()
        if done:
            self.check(name)
            if name not in self.timings:  # made by a process that ended before it recorded any time
                self._record_time(name, {"seconds": None})
            log(f"reusing {path}")
            return load()
        self.stages[name] = self.fingerprint(name)  # recorded before the artifact, which says "done"
        if is_main():
            write_json(self.stages_path, self.stages)
        out = self._timed(name, make)
        barrier()
        return out

    def _timed(self, name: str, make):
        """make(), its wall time and generated tokens recorded as it starts, every TICK_SECONDS and when it
        is done, on top of what earlier, killed attempts at the stage recorded ("partial": not done)."""
        earlier = self.timings.get(name) or {}
        earlier = earlier if earlier.get("partial") else {}
        t0, tok0, gen0 = time.time(), generate.STATS["new_tokens"], generate.STATS["seconds"]

        def spent(partial: bool) -> dict:
            gen = earlier.get("generate_seconds", 0) + generate.STATS["seconds"] - gen0
            t = {"seconds": round(earlier.get("seconds", 0) + time.time() - t0, 1),
                 "new_tokens": earlier.get("new_tokens", 0) + generate.STATS["new_tokens"] - tok0,
                 "generate_seconds": round(gen, 1)}
            return {**t, "partial": True} if partial else t
        stop = threading.Event()

        def tick():
            while not stop.wait(self.TICK_SECONDS):
                self._record_time(name, spent(True))
        ticker = threading.Thread(target=tick, daemon=True)
        self._record_time(name, spent(True))
        if is_main():
            ticker.start()
        try:
            out = make()
        except BaseException:
            self._record_time(name, spent(True))  # Ctrl-C or an error: the time spent on it still counts
            raise
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
        self._record_time(name, spent(False))
        return out

    def _record_time(self, name: str, t: dict):
        with self._timings_lock:
            self.timings[name] = t
            self.timings = dict(sorted(self.timings.items(), key=lambda kv: stage_key(kv[0])))
            if is_main():
                write_json(self.timings_path, self.timings)

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

    def data_stage(self, make) -> dict:
        """The data stage: make() gives the seed data and held-out sets, which rank 0 writes to run_dir/data,
        then DATA_MANIFEST (each file's sha256) last: the stage is done only once every file is written.
        A kill before the manifest leaves the stage to be made again; a file lost or changed after it is
        refused."""
        data_dir = os.path.join(self.path, "data")

        def write():
            try:
                data = make()
            except (ValueError, FileNotFoundError) as e:  # a bad row of --data, named by file and line
                raise RunDirError(str(e)) from None
            barrier()
            if is_main():
                D.write_data_dir(data_dir, data)
                files = [s["file"] for s in D.CONTRACT.values()]
                write_json(os.path.join(data_dir, DATA_MANIFEST),
                           {"sha256": {f: _sha256(os.path.join(data_dir, f)) for f in files}})
            return data
        return self.resume(data_dir, data_done(data_dir), lambda: load_data(data_dir), write)

    def stage_seconds(self) -> float:
        """The wall time of every stage of the run, whichever process made it (those recorded)."""
        return sum(t["seconds"] for t in self.timings.values() if t.get("seconds") is not None)


DATA_MANIFEST = "manifest.json"


def data_done(data_dir: str) -> bool:
    """Whether the data stage is done: its manifest is written. A version without the manifest wrote every
    file of the contract, rm.jsonl last and even when empty, so all of them there counts as done too."""
    if os.path.exists(os.path.join(data_dir, DATA_MANIFEST)):
        return True
    return all(os.path.exists(os.path.join(data_dir, s["file"])) for s in D.CONTRACT.values())


def load_data(data_dir: str) -> dict:
    """The data stage's data, each file checked against the manifest first."""
    redo = "Use --redo-from data to make the data and every later stage again, or a new --run-dir."
    manifest = os.path.join(data_dir, DATA_MANIFEST)
    try:
        sums = read_json_object(manifest)["sha256"] if os.path.exists(manifest) else {}
        for f, sha in sums.items():
            path = os.path.join(data_dir, f)
            if not os.path.exists(path) or _sha256(path) != sha:
                lost = "changed" if os.path.exists(path) else "missing"
                raise ValueError(f"{path}: {lost} since the data stage wrote it (sha256 in {manifest})")
        return D.load_data_dir(data_dir)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise RunDirError(f"{e}. {redo}") from None


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



def check_prompt_lengths(cfg, data: dict, tok, rubric, max_seq_len: int):
    """Every held-out prompt must fit the model's context with what is generated after it: an eval prompt
    with --max-response-tokens; each RM-set response, in the judge prompt with its instruction, with
    --max-judge-tokens; and without a ground truth (the model judges its own answers), the eval prompt in
    the judge prompt with a response and a judgment. Refused at the start, naming file, line and field:
    else the run dies at its first evaluation, after the training."""
    def where(kind: str, i: int) -> str:
        path = os.path.join(cfg.data or os.path.join(cfg.run_dir, "data"), D.CONTRACT[kind]["file"])
        return f"{path}:{[n for n, _ in iter_jsonl(path)][i] if cfg.data else i + 1}"  # blank lines skipped
    chat = lambda text: len(tok.encode_chat_prompt(text))  # noqa: E731
    context = f"the model's context of {max_seq_len} tokens"
    for i, row in enumerate(data["eval"]):
        if (n := chat(row["prompt"])) + cfg.max_response_tokens > max_seq_len:
            raise RunDirError(f"{where('eval', i)}: field 'prompt' is {n} tokens in the chat format; with "
                              f"--max-response-tokens {cfg.max_response_tokens} it passes {context}")
        judged = chat(rubric.fill(row["prompt"], "")) + cfg.max_response_tokens + cfg.max_judge_tokens
        if cfg.world == "none" and judged > max_seq_len:
            raise RunDirError(f"{where('eval', i)}: field 'prompt': the model's judgment of its answer "
                              "(the judge prompt, --max-response-tokens, --max-judge-tokens) needs "
                              f"{judged} tokens, more than {context}")
    for i, group in enumerate(data["rm"]):
        for k, response in enumerate(group["responses"]):
            if (n := chat(rubric.fill(group["instruction"], response))) + cfg.max_judge_tokens > max_seq_len:
                raise RunDirError(f"{where('rm', i)}: field 'responses' (number {k + 1}) makes a judge "
                                  f"prompt of {n} tokens; with --max-judge-tokens {cfg.max_judge_tokens} it "
                                  f"passes {context}")


def read_json(path: str) -> dict:
    """A JSON object the loop wrote beside a stage (pair_stats.json), errors naming the file."""
    try:
        return read_json_object(path)
    except (ValueError, FileNotFoundError) as e:
        raise RunDirError(f"{e}. Delete the stage's files to make it again.") from None

