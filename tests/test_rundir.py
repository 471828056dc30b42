"""Runs that cannot lie (rundir.py, loop.py, dpo.py): a run dir bound to the settings that made each stage,
no NaN weights saved, inputs and settings checked before work starts, damaged or shortened artifacts refused
with the file named, no temporary files left, the history written before the done-marker."""
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import dpo
import loop
import packing
import rundir
import sharding
from checkpoint import load_model, save_checkpoint
from helpers import ByteTok, dpo_data, tiny_model
from test_loop import ROOT, TINY


def test_every_setting_is_in_one_group_or_harmless():
    fields = [f.name for f in dataclasses.fields(loop.Config)]
    placed = [f for g in rundir.GROUPS.values() for f in g] + list(rundir.HARMLESS)
    assert sorted(placed) == sorted(fields)  # each exactly once


def test_fingerprints_follow_the_run_order():
    a, b = loop.Config(world="toy"), loop.Config(world="toy", dpo_lr=1e-5)
    for name in ("data", "M0", "M1", "eval/M1.json", "iter1/candidates.jsonl", "iter1/judgments.jsonl"):
        assert rundir.fingerprint(a, name) == rundir.fingerprint(b, name), name  # made before any DPO
    for name in ("M2", "eval/M2.json", "iter2/prompts.jsonl", "M3"):
        assert rundir.fingerprint(a, name) != rundir.fingerprint(b, name), name
    c = loop.Config(world="toy", n_eval=48)
    assert rundir.fingerprint(a, "data") != rundir.fingerprint(c, "data")
    d = loop.Config(world="toy", threads=1, iterations=5)
    assert all(rundir.fingerprint(a, n) == rundir.fingerprint(d, n) for n in ("data", "M1", "M4", "eval/M4.json"))


def _loop(run_dir, *extra, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(run_dir), *TINY, *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(run_dir))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("rundir") / "done"
    p = _loop(run)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return run


def _copy(finished, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(finished, dst)
    return dst


def test_a_finished_run_refuses_other_settings_and_goes_on_with_more_iterations(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = (run / "results.json").read_bytes()
    p = _loop(run, "--seed", "1")
    assert p.returncode != 0 and "stage data of" in p.stderr and "seed=0" in p.stderr and "seed=1" in p.stderr
    assert "--redo-from data" in p.stderr and "Traceback" not in p.stderr
    p = _loop(run, "--n-eval", "48")
    assert p.returncode != 0 and "n_eval=24" in p.stderr and "n_eval=48" in p.stderr
    assert (run / "results.json").read_bytes() == before  # nothing was touched
    p = _loop(run, "--iterations", "2")  # more rounds: every finished stage reused, the run goes on from M2
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "reusing" in p.stdout and "pretrain step" not in p.stdout and (run / "M3" / "params.json").exists()
    assert [r["model"] for r in json.loads((run / "results.json").read_text())["results"]] == ["M1", "M2", "M3"]


def test_redo_from_makes_a_stage_and_the_later_ones_again_keeping_the_old(finished, tmp_path):
    run = _copy(finished, tmp_path)
    p = _loop(run, "--dpo-lr", "1e-5")
    assert p.returncode != 0 and "stage M2 of" in p.stderr and "dpo_lr=3e-05" in p.stderr
    old_m2 = (run / "M2" / "consolidated.00.pth").read_bytes()
    p = _loop(run, "--dpo-lr", "1e-5", "--redo-from", "M2")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "sft step" not in p.stdout and "dpo step" in p.stdout  # M1 reused, M2 trained again
    moved = list((run / "replaced").glob("*/M2/consolidated.00.pth"))
    assert len(moved) == 1 and moved[0].read_bytes() == old_m2
    assert (run / "M2" / "consolidated.00.pth").read_bytes() != old_m2
    stages = json.loads((run / "stages.json").read_text())
    assert stages["M2"]["dpo_lr"] == 1e-5 and stages["M1"] == json.loads((finished / "stages.json").read_text())["M1"]


def test_temporaries_are_removed_and_a_done_stage_keeps_no_train_state(finished, tmp_path):
    run = _copy(finished, tmp_path)
    assert not list(run.rglob("train_state.pt")) and (run / "M1" / "history.json").exists()
    for p in (run / "iter1" / "candidates.jsonl.tmp4242", run / "M1" / "train_state.pt.tmp77"):
        p.write_text("half a file")
    p = _loop(run)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "removed 2 temporary file(s)" in p.stdout and not list(run.rglob("*.tmp[0-9]*"))


def test_wall_time_after_a_resume_sums_every_process(finished, tmp_path):
    run = _copy(finished, tmp_path)
    p = _loop(run)  # every stage reused: this process alone did almost nothing
    assert p.returncode == 0
    timings = json.loads((run / "timings.json").read_text())
    total = sum(t["seconds"] for t in timings.values())
    assert total > 1 and json.loads((run / "results.json").read_text())["wall_seconds"] == pytest.approx(total)
    assert f"Wall time of its stages {total / 60:.1f} min" in (run / "results.md").read_text()


@pytest.mark.parametrize("damage,message", [
    (lambda rows: rows[:-3], "candidate rows for"),
    (lambda rows: [], "0 candidate rows for"),
    (lambda rows: [{**rows[0], "responses": rows[0]["responses"][:2]}] + rows[1:], "'responses' must be 4 texts"),
])
def test_a_shortened_artifact_is_refused_with_its_file_named(finished, tmp_path, damage, message):
    run = _copy(finished, tmp_path, "short")
    path = run / "iter1" / "candidates.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in damage(rows)))
    p = _loop(run)
    assert p.returncode != 0 and str(path) in p.stderr and message in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("target,content,message", [
    ("iter1/pairs.jsonl", '{"prompt": "p"}\n', "missing field(s)"),
    ("iter1/judgments.jsonl", None, "'score' must be a number or null"),
    ("eval/M1.json", "{not json", "invalid JSON"),
    ("iter1/pair_stats.json", "[1, 2", "invalid JSON"),
])
def test_a_damaged_artifact_names_its_file(finished, tmp_path, target, content, message):
    run = _copy(finished, tmp_path, "damaged")
    path = run / target
    if content is None:  # a string where a score belongs
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[0]["score"] = "4"
        content = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(content)
    p = _loop(run)
    assert p.returncode != 0 and str(path) in p.stderr and message in p.stderr and "Traceback" not in p.stderr


def test_ctrl_c_says_how_to_resume_in_one_line(tmp_path):
    # A shell without job control starts background commands with SIGINT ignored, and the loop would inherit
    # that; the child gets the default handler back, as in a terminal where a user presses Ctrl-C.
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(tmp_path / "r"), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (tmp_path / "r" / "M0").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "interrupted" in err and "the same command resumes" in err and len(err.strip().splitlines()) <= 2


# ----------------------------------------------------------------------------- dpo.py

@pytest.mark.parametrize("field,value", [("lr", float("inf")), ("lr", float("nan")), ("min_lr", -1.0), ("beta", 0.0),
                                         ("dropout", 1.0), ("grad_clip", float("inf"))])
def test_training_settings_that_make_nan_are_refused_up_front(field, value):
    with pytest.raises(ValueError, match=field):
        dpo.TrainConfig(mode="dpo", **{field: value})


def test_dpo_cli_lr_inf_exits_before_training(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dpo_data(4)))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "dpo.py"), "--mode", "dpo", "--data", str(data), "--ckpt",
                        "toy-test", "--out", str(tmp_path / "out"), "--steps", "1", "--lr", "inf"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "error: --lr=inf" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "params.json").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    m = tiny_model()
    with torch.no_grad():
        m.layers[0].attention.wq.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not all finite"):
        sharding.save_final(m, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    cfg = dpo.TrainConfig(mode="dpo", steps=2, batch_size=2, micro_batch_size=2, save_every=1, out=str(tmp_path / "t"),
                          dropout=0.0, grad_clip=0.0)
    with pytest.raises(FloatingPointError, match="dpo step 1/2"):
        dpo.train(m, dpo_data(4), cfg, tokenizer=ByteTok())
    assert not (tmp_path / "t" / "train_state.pt").exists() and not (tmp_path / "t" / "params.json").exists()


def test_history_is_written_before_the_done_marker(tmp_path, monkeypatch):
    """params.json says a stage is done: a kill between it and history.json once lost the history."""
    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(dpo, "save_final", killed)
    cfg = dpo.TrainConfig(mode="dpo", steps=2, batch_size=2, micro_batch_size=2, out=str(tmp_path / "o"))
    with pytest.raises(KeyboardInterrupt):
        dpo.train(tiny_model(), dpo_data(4), cfg, tokenizer=ByteTok())
    assert (tmp_path / "o" / "history.json").exists() and not (tmp_path / "o" / "params.json").exists()


def test_token_ids_must_say_what_the_text_says(tmp_path):
    """pairs.jsonl carries text and token ids; dpo.py once trained on the ids and ignored swapped text."""
    tok = ByteTok()
    row = packing.tokenize(dpo_data(1), tok, "dpo", 64)[0]
    good = {k: row[k] for k in ("prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids")}
    swapped = {**good, "chosen": good["rejected"], "rejected": good["chosen"]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(swapped) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: field chosen_ids is not the tokenized 'chosen' text"):
        packing.load_examples(str(path), "dpo", tok)
    path.write_text(json.dumps(good) + "\n")
    assert packing.load_examples(str(path), "dpo", tok) == [good]
    bad_ref = {**good, "ref_chosen": float("-inf"), "ref_rejected": -3.0}  # ids present: refs still checked
    path.write_text(json.dumps(bad_ref) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: field 'ref_chosen' must be a finite number"):
        packing.load_examples(str(path), "dpo", tok)


# ----------------------------------------------------------------------------- damaged inputs

def test_a_truncated_checkpoint_names_its_file(tmp_path):
    save_checkpoint(tiny_model(), str(tmp_path / "m"))
    pth = tmp_path / "m" / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"{pth}: not a readable PyTorch checkpoint"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("content,message", [(b"", "not a GGUF file (empty)"), (b"garbage!", "starts with b'garb'")])
def test_an_empty_or_garbage_gguf_names_its_file(tmp_path, content, message):
    path = tmp_path / "m.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{path}: .*{message[:12]}"):
        load_model(str(path))


def test_files_are_written_with_the_umask_mode(tmp_path):
    """tokenizer.model and tokenizer_config.json were once 0600 while everything else was 0644."""
    old = os.umask(0o022)
    try:
        save_checkpoint(tiny_model(), str(tmp_path / "m"), tokenizer=loop.Tokenizer.toy(loop.toyworld.TOKENIZER_PATH))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert "tokenizer.model" in modes and set(modes.values()) == {0o644}, modes


def test_a_setting_added_later_is_read_as_its_default_in_an_older_record(tmp_path):
    cfg = loop.Config(world="toy", run_dir=str(tmp_path))
    run = rundir.RunDir(cfg)
    old = rundir.fingerprint(cfg, "M2")
    del old["eft_pairs"]  # a run dir written before --eft-pairs existed
    run.stages = {"M2": old}
    run.check("M2")  # the default (0: off) is what that code did
    run2 = rundir.RunDir(dataclasses.replace(cfg, eft_pairs=64))
    run2.stages = {"M2": old}
    with pytest.raises(rundir.RunDirError, match="eft_pairs=0.*eft_pairs=64"):
        run2.check("M2")


def test_eft_judgments_are_checked_against_the_seed_set():
    good = [{"eft_index": 3, "scores": [4.0], "raw": ["Score: 4"]}, {"eft_index": 0, "scores": [None], "raw": ["?"]}]
    rundir.check_eft_judgments(good, 2, 5)
    with pytest.raises(ValueError, match="not 3"):
        rundir.check_eft_judgments(good, 3, 5)
    with pytest.raises(ValueError, match="row 1: 'eft_index'"):
        rundir.check_eft_judgments([{**good[0], "eft_index": 5}, good[1]], 2, 5)
    with pytest.raises(ValueError, match="row 2: one judgment"):
        rundir.check_eft_judgments([good[0], {**good[1], "raw": []}], 2, 5)


# ----------------------------------------------------------------------------- what a fingerprint holds

def test_device_is_where_the_work_runs_not_a_setting_of_the_result(tmp_path):
    """torchrun rewrites --device cuda to cuda:LOCAL_RANK, so rank 1 once saw cuda:0 recorded and refused
    while rank 0 waited in a barrier; --device cuda against cuda:0 refused too."""
    cfg = loop.Config(world="toy", run_dir=str(tmp_path), device="cpu")
    rundir.RunDir(cfg).resume(str(tmp_path / "M0"), False, None, lambda: (tmp_path / "M0").mkdir())
    for device in ("cuda", "cuda:0", "cuda:1"):
        rundir.RunDir(dataclasses.replace(cfg, device=device)).check("M0")
    stages = json.loads((tmp_path / "stages.json").read_text())
    stages["M0"]["device"] = "cuda:0"  # a record of a version that fingerprinted the device still reads
    (tmp_path / "stages.json").write_text(json.dumps(stages))
    rundir.RunDir(dataclasses.replace(cfg, device="cuda:1")).check("M0")


class _Reads:
    """A Config that notes every setting read through it."""
    def __init__(self, cfg):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._cfg, name)


def test_every_setting_an_evaluation_reads_is_in_its_fingerprint(tmp_path):
    """Derived, not listed: evaluate M_k with and without a ground truth through a Config that notes what
    is read; each setting read (and the rubric, which the loop hands in) must shape eval/M_k.json's
    fingerprint, or be harmless. n_candidates (the diversity sets) and judge_prompt were once missing."""
    import evaluation as E
    import judge as J
    import toyworld
    from tokenizer import Tokenizer
    tok = Tokenizer.toy(toyworld.TOKENIZER_PATH)
    model = tiny_model(vocab_size=tok.n_words, max_seq_len=768).eval()  # no id the tokenizer lacks
    save_checkpoint(model, str(tmp_path / "M1"), tokenizer=tok)  # the head-to-head judge without a world
    cfg = loop.Config(world="toy", run_dir=str(tmp_path), max_response_tokens=3, max_judge_tokens=3,
                      judge_samples=1, n_diversity=1, n_candidates=2)
    data = {"eval": [{"prompt": p} for p in toyworld.eval_prompts(2, 0)], "rm": toyworld.rm_set(1, 2, 0)}
    read = set()
    for world in (toyworld, None):
        reads = _Reads(dataclasses.replace(cfg, world="toy" if world else "none"))
        E.evaluate_model(model, tok, reads, "M2", data, world, J.load_rubric("fig2"), ["a", "b"], ["a", "b"],
                         lambda: loop.load_judge(reads, tok))
        read |= reads.read
    assert {"n_candidates", "temperature", "max_judge_tokens", "eval_greedy"} <= read  # the proxy saw them
    read |= {"judge_prompt", "world"}  # the rubric and the world are the loop's arguments to evaluate_model
    for k in (0, 1, 2, 3):
        fp = rundir.fingerprint(cfg, f"eval/M{k}.json")
        assert not [f for f in read if f not in fp and f not in rundir.HARMLESS], k
        for field, other in (("n_candidates", 3), ("judge_prompt", "safety")):
            changed = dataclasses.replace(cfg, **{field: other})
            assert rundir.fingerprint(changed, f"eval/M{k}.json") != fp, (k, field)


def test_data_are_fingerprinted_by_their_content(tmp_path, monkeypatch):
    """--data DIR: a row fixed in DIR once left the stale copy in run_dir/data reused without a word."""
    import data as D
    import toyworld
    src = tmp_path / "mine"
    D.write_data_dir(str(src), toyworld.world_data(loop.Config(n_ift=6, n_eft=4, n_eval=3, n_rm=2)))
    cfg = loop.Config(world="none", data=str(src), run_dir=str(tmp_path / "r"))
    (tmp_path / "r").mkdir()

    def seed():
        return loop.seed_data(cfg, rundir.RunDir(cfg), None)
    first = seed()
    eval_file = src / "eval.jsonl"
    eval_file.write_bytes(eval_file.read_bytes())  # the same bytes written again: nothing changed
    assert seed() == first
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()]
    rows[1]["prompt"] += " (fixed)"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(rundir.RunDirError, match="stage data of"):
        seed()


# ----------------------------------------------------------------------------- stages done, and redone

def test_a_data_stage_killed_before_its_last_file_is_made_again(tmp_path, monkeypatch):
    """The data stage once counted as done when ift, eft and eval existed: a kill before rm.jsonl was
    written resumed with no RM set, silently."""
    import toyworld
    cfg = loop.Config(world="toy", run_dir=str(tmp_path), n_ift=8, n_eft=8, n_eval=4, n_rm=2)

    def seed():
        return loop.seed_data(cfg, rundir.RunDir(cfg), toyworld)
    first = seed()
    data_dir = tmp_path / "data"
    rm = (data_dir / "rm.jsonl").read_bytes()
    assert len(first["rm"]) == 2
    for p in data_dir.iterdir():  # the kill point: the files written before rm.jsonl, nothing after them
        if p.name not in ("ift.jsonl", "eft.jsonl", "eval.jsonl"):
            p.unlink()
    again = seed()
    assert again["rm"] == first["rm"] and (data_dir / "rm.jsonl").read_bytes() == rm
    (data_dir / "rm.jsonl").unlink()  # a finished data stage that lost a file is refused, naming it
    with pytest.raises(rundir.RunDirError, match=f"{data_dir / 'rm.jsonl'}"):
        seed()


def test_following_the_advice_for_an_unrecorded_stage_works(tmp_path):
    """A stage on disk with no record refused with 'use --redo-from NAME', which itself refused any stage
    not recorded."""
    cfg = loop.Config(world="toy", run_dir=str(tmp_path))
    files = ["data/ift.jsonl", "M0/params.json", "M1/params.json", "eval/M1.json", "iter1/prompts.jsonl",
             "M2/params.json"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    # data, M0 and M1 recorded; eval/M1.json and what came after it not (an older version made them)
    records = {n: rundir.fingerprint(cfg, n) for n in ("data", "M0", "M1")}
    (tmp_path / "stages.json").write_text(json.dumps(records))
    for stage, kept in (("eval/M1.json", files[:3]), ("data", [])):
        if stage == "data":  # a run dir of a version that kept no records at all
            (tmp_path / "stages.json").unlink()
        with pytest.raises(rundir.RunDirError) as refused:
            rundir.RunDir(cfg).check(stage)
        advice = re.search(r"--redo-from (\S+) to make", str(refused.value))[1]
        assert advice == stage
        rundir.RunDir(cfg).redo_from(advice)  # what the advice says to run
        assert sorted(f for f in files if (tmp_path / f).exists()) == sorted(kept), stage
        recorded = json.loads((tmp_path / "stages.json").read_text())
        assert sorted(recorded) == sorted(f.split("/")[0] for f in kept)  # the stages before it stay recorded
    moved = {"/".join(p.relative_to(tmp_path / "replaced").parts[1:])
             for p in (tmp_path / "replaced").rglob("*") if p.is_file()}
    assert moved == set(files)  # nothing deleted


# ----------------------------------------------------------------------------- one process per run dir

def test_a_run_dir_in_use_refuses_a_second_process_naming_the_first(tmp_path):
    """Two loops on one run dir once both pretrained M0 and wrote over each other's state."""
    run = tmp_path / "r"
    take = (f"import sys, time; sys.path.insert(0, {ROOT!r}); import rundir; "
            f"rundir.lock_run_dir({str(run)!r}); print('locked', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", take], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.time()
        p = _loop(run, timeout=120)
        assert p.returncode != 0 and f"PID {holder.pid}" in p.stderr, p.stderr[-2000:]
        assert str(run) in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and time.time() - t0 < 60
        assert not (run / "config.json").exists() and not (run / "stages.json").exists()
    finally:
        holder.kill()
        holder.wait()
    free = subprocess.run([sys.executable, "-c", take.replace("time.sleep(300)", "")], capture_output=True,
                          text=True, timeout=120)
    assert free.stdout.strip() == "locked"  # the lock ended with its process


# ----------------------------------------------------------------------------- wall time across kills

_TIMED = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import loop, rundir
rundir.RunDir.TICK_SECONDS = 0.05
run_dir, after = {run!r}, {after!r}

def make():
    time.sleep(0.4)
    if after:  # the stage's artifact written, then the kill, before its time is recorded
        os.makedirs(os.path.join(run_dir, "M0"))
        open(os.path.join(run_dir, "M0", "params.json"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(300)
run = rundir.RunDir(loop.Config(world="toy", run_dir=run_dir))
run.resume(os.path.join(run_dir, "M0"), False, None, make)
"""


def _killed_stage(run, after: bool) -> float:
    """Run stage M0 in another process and SIGKILL it; the seconds its timings.json entry says."""
    proc = subprocess.Popen([sys.executable, "-c", _TIMED.format(root=ROOT, run=str(run), after=after)])
    timings, deadline = run / "timings.json", time.time() + 30

    def spent():
        return (json.loads(timings.read_text()).get("M0", {}).get("seconds") or 0) if timings.exists() else 0
    while proc.poll() is None and (after or spent() < 0.3) and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    return spent()


def test_a_stage_finished_after_a_kill_counts_both_processes_time(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.RunDir, "TICK_SECONDS", 0.05)
    cfg = loop.Config(world="toy", run_dir=str(tmp_path))
    before = _killed_stage(tmp_path, after=False)  # killed mid-stage, after 0.3 s or more of it
    assert before >= 0.3

    def make():
        time.sleep(0.2)
        (tmp_path / "M0").mkdir()
    rundir.RunDir(cfg).resume(str(tmp_path / "M0"), False, None, make)
    done = json.loads((tmp_path / "timings.json").read_text())["M0"]
    assert done["seconds"] >= before + 0.15 and not done.get("partial")  # 0.2 s more, to the rounding


def test_a_stage_done_without_its_time_is_shown_as_unknown_not_dropped(tmp_path):
    import evaluation as E
    cfg = loop.Config(world="toy", run_dir=str(tmp_path))
    _killed_stage(tmp_path, after=True)
    assert (tmp_path / "M0" / "params.json").exists()
    run = rundir.RunDir(cfg)
    run.resume(str(tmp_path / "M0"), True, lambda: None, None)
    row = [r for r in E.timings_table(run.timings).splitlines() if r.startswith("| M0 |")]
    assert row and row[0].split("|")[2].strip().startswith("≥")  # its time up to the kill, at least
    timings = json.loads((tmp_path / "timings.json").read_text())
    del timings["M0"]  # a run dir whose stage never recorded a time at all
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    run = rundir.RunDir(cfg)
    run.resume(str(tmp_path / "M0"), True, lambda: None, None)
    assert "| M0 | unknown |" in E.timings_table(run.timings)


# ----------------------------------------------------------------------------- bad input: one line

@pytest.mark.parametrize("argv,flag", [
    (["--dpo-lr", "inf"], "--dpo-lr"), (["--temperature", "hot"], "--temperature"),
    (["--preset", "nosuch"], "--preset"), (["--init", "/no/such/model"], "--init"),
    (["--h2h-judge", "/no/such/judge"], "--h2h-judge")])
def test_a_bad_flag_is_one_line_naming_it(tmp_path, argv, flag):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(tmp_path / "r"),
                        *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode != 0 and flag in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "r").exists()


def test_an_unwritable_run_dir_is_one_line_naming_it(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere mode bits forbid: a path through a plain file cannot be made
        (tmp_path / "file").write_text("")
        run = tmp_path / "file" / "run"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        run = tmp_path / "ro" / "run"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(run), *TINY],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode != 0 and str(run) in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


# ----------------------------------------------------------------------------- prompts that cannot fit

def _toy_data_dir(path, long_prompt: str, line: int):
    import data as D
    import toyworld
    data = toyworld.world_data(loop.Config(n_ift=6, n_eft=4, n_eval=4, n_rm=2))
    data["eval"][line - 1] = {"prompt": long_prompt}
    D.write_data_dir(str(path), data)
    return data


def test_a_prompt_longer_than_the_context_is_refused_naming_file_line_and_field(tmp_path):
    import judge as J
    import toyworld
    from tokenizer import Tokenizer
    tok, rubric = Tokenizer.toy(toyworld.TOKENIZER_PATH), J.load_rubric("fig2")
    long_prompt = "list the fruit words " * 120
    data = _toy_data_dir(tmp_path / "mine", long_prompt, line=3)
    cfg = loop.Config(world="none", data=str(tmp_path / "mine"), max_response_tokens=48, max_judge_tokens=48)
    n = len(tok.encode_chat_prompt(long_prompt))
    assert n <= 700 < n + 48 + 48 + len(tok.encode_chat_prompt(rubric.fill("", "")))  # fits alone, not judged
    line3 = f"{tmp_path / 'mine' / 'eval.jsonl'}:3: field 'prompt'"
    with pytest.raises(rundir.RunDirError, match=rf"{line3} is {n} tokens"):
        rundir.check_prompt_lengths(cfg, data, tok, rubric, n + 48 - 1)  # one token short for the response
    with pytest.raises(rundir.RunDirError, match=rf"{line3}: the model's judgment"):
        rundir.check_prompt_lengths(cfg, data, tok, rubric, 768)  # and its self-judging cannot fit
    data["eval"][2] = {"prompt": "list 3 fruit words"}
    rm_tokens = max(len(tok.encode_chat_prompt(rubric.fill(g["instruction"], r))) for g in data["rm"]
                    for r in g["responses"])
    toy = dataclasses.replace(cfg, world="toy", data="", run_dir=str(tmp_path / "r"))  # no self-judging
    rundir.check_prompt_lengths(toy, data, tok, rubric, rm_tokens + 48)  # everything fits: no refusal
    rm_file = tmp_path / "r" / "data" / "rm.jsonl"
    with pytest.raises(rundir.RunDirError, match=rf"{rm_file}:\d+: field 'responses'"):
        rundir.check_prompt_lengths(toy, data, tok, rubric, rm_tokens + 47)


def test_the_loop_refuses_a_prompt_too_long_before_any_training(tmp_path):
    import toyworld
    from tokenizer import Tokenizer
    tok = Tokenizer.toy(toyworld.TOKENIZER_PATH)
    save_checkpoint(tiny_model(vocab_size=tok.n_words, max_seq_len=768), str(tmp_path / "m0"), tokenizer=tok)
    _toy_data_dir(tmp_path / "mine", "list the fruit words " * 400, line=2)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(tmp_path / "r"),
                        "--data", str(tmp_path / "mine"), "--init", str(tmp_path / "m0"), "--no-mtbench",
                        "--iterations", "0", "--sft-steps", "1", "--max-response-tokens", "8",
                        "--max-judge-tokens", "8"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    where = f"{tmp_path / 'mine' / 'eval.jsonl'}:2: field 'prompt'"
    assert p.returncode != 0 and where in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (tmp_path / "r" / "M1").exists()
