"""loop.py: pure pieces by hand, a tiny end-to-end run of every stage (the CI smoke run), and a run
killed with SIGKILL in the middle of a training stage that resumes to the same end result."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every stage, 1 iteration, sizes cut to the bone (the toy preset itself, so the Fig. 2 prompt fits).
TINY = ["--iterations", "1", "--pretrain-steps", "24", "--pretrain-chars", "20000", "--pretrain-task-lists", "60",
        "--pretrain-graded", "300", "--n-ift", "96", "--n-eft", "96", "--sft-steps", "16", "--sft-batch", "16",
        "--n-prompts", "24", "--n-eval", "24", "--n-rm", "6", "--batch-size", "96", "--max-judge-tokens", "48",
        "--dpo-batch", "8"]


def test_rouge_l_hand_computed():
    # LCS of "a b c d" and "a c d e" is "a c d" (3): F1 = 2 * 3 / (4 + 4)
    assert loop.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert loop.rouge_l("List Four Fruits", "list four fruits") == 1.0
    assert loop.rouge_l("", "x") == 0.0


def test_mean_se_hand_computed():
    m, se = loop.mean_se([1.0, 2.0, 3.0, 4.0])  # sample variance 5/3, se = sqrt(5/3 / 4)
    assert m == 2.5 and se == pytest.approx((5 / 3 / 4) ** 0.5)


def test_build_pairs_max_vs_min_ties_and_unscored():
    cands = [{"prompt": "p0", "responses": ["a", "b", "c", "d"]},
             {"prompt": "p1", "responses": ["e", "f"]},
             {"prompt": "p2", "responses": ["g", "h"]}]
    judged = [{"prompt_index": 0, "candidate": 0, "score": 3.0}, {"prompt_index": 0, "candidate": 1, "score": 4.5},
              {"prompt_index": 0, "candidate": 2, "score": None}, {"prompt_index": 0, "candidate": 3, "score": 1.0},
              {"prompt_index": 1, "candidate": 0, "score": 2.0}, {"prompt_index": 1, "candidate": 1, "score": 2.0},
              {"prompt_index": 2, "candidate": 0, "score": 5.0}, {"prompt_index": 2, "candidate": 1, "score": None}]
    pairs, stats = loop.build_pairs(cands, judged)
    assert pairs == [{"prompt": "p0", "chosen": "b", "rejected": "d", "chosen_score": 4.5, "rejected_score": 1.0}]
    assert stats == {"prompts": 3, "ties": 1, "unscored": 1, "pairs": 1}


def _run(run_dir, extra=()):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "loop.py"), "--run-dir", str(run_dir), *TINY, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final(run_dir):
    res = json.load(open(os.path.join(run_dir, "results.json")))
    return [{k: v for k, v in r.items()} for r in res["results"]], res["iterations"]


def test_tiny_end_to_end_run_writes_every_artifact(tmp_path):
    p = _run(tmp_path / "run")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    run = tmp_path / "run"
    for f in ["data/ift.jsonl", "data/eft.jsonl", "data/eval.jsonl", "data/rm.jsonl", "M0/params.json",
              "M1/consolidated.00.pth", "M2/params.json", "iter1/prompts.jsonl", "iter1/candidates.jsonl",
              "iter1/judgments.jsonl", "iter1/pairs.jsonl", "eval/M1.json", "eval/M2.json", "results.md",
              "results.json"]:
        assert (run / f).exists(), f
    results, iters = _final(run)
    assert [r["model"] for r in results] == ["M1", "M2"]
    assert 0 <= results[1]["quality"] <= 5 and "vs_M1" in results[1] and "judge" in results[1]
    judgments = [json.loads(line) for line in open(run / "iter1/judgments.jsonl")]
    assert judgments and all(len(j["raw"]) == 3 for j in judgments)  # 3 raw judge samples kept per candidate
    pairs = [json.loads(line) for line in open(run / "iter1/pairs.jsonl")]
    assert all("ref_chosen" in p and "ref_rejected" in p for p in pairs)
    assert "| M2 |" in (run / "results.md").read_text()


def test_killed_mid_stage_resumes_to_the_same_result(tmp_path):
    straight = _run(tmp_path / "straight")
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out[-3000:]

    killed = _run(tmp_path / "killed")
    state = tmp_path / "killed" / "M1" / "train_state.pt"
    deadline = time.time() + 600
    while not state.exists() and time.time() < deadline:  # mid-SFT: a checkpoint exists, M1 is not done
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert state.exists() and not (tmp_path / "killed" / "M1" / "params.json").exists()
    resumed = _run(tmp_path / "killed")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "resumed" in out and "reusing" in out
    assert _final(tmp_path / "killed") == _final(tmp_path / "straight")
