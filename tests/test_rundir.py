"""Runs that cannot lie (rundir.py, loop.py, dpo.py): a run dir bound to the settings that made each stage,
no NaN weights saved, inputs and settings checked before work starts, damaged or shortened artifacts refused
with the file named, no temporary files left, the history written before the done-marker."""
import dataclasses
import json
import os
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
    assert p.returncode != 0 and "TrainConfig.lr=inf" in p.stderr and not (tmp_path / "out" / "params.json").exists()


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
