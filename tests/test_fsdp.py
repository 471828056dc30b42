"""FSDP2 on CPU (gloo, 2 ranks, torch.multiprocessing spawn) against 1 process on the same global batch:
SFT and DPO, with dropout (each micro-batch draws its own masks, whichever rank runs it), with steps
that mix micro-batches with and without a shared prefix, with a micro-batch count the ranks do not
divide, a resume across rank counts, and sampling (each row's own stream; the ranks' batches prefilled
differently).

Tolerance: the two runs add the same fp32 numbers in different orders (per-rank sums of 2 micro-batches,
then a reduce-scatter, against one sum of 4 micro-batches), so gradients differ by a few ulps (~1e-7
relative). Adam normalises the update, so such differences stay ~1e-6 relative after a few steps; 1e-4
on losses is far above that and far below what any real bug (a wrong shard, a missing rank's data, a
mis-scaled loss: >= 1e-2 here) would produce. Weights get an absolute 1e-4 besides: where a gradient
element nearly cancels, its few-ulp difference is a large relative one, and Adam's first steps move
each weight by up to lr (1e-2) whatever the gradient's size; 1e-4 is 1% of one such step.
"""
import json
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

import dpo
import generate
import packing
import sharding
from checkpoint import load_model, save_checkpoint
from helpers import ByteTok, dpo_data, sft_data, spawn_ranks, tiny_model

TOL = 1e-4


def sft_cfg(**kw):
    return dpo.TrainConfig(**{**dict(mode="sft", steps=3, batch_size=4, micro_batch_size=1, lr=1e-2, dropout=0.0,
                              eval_every=3, log_every=100), **kw})


def dpo_cfg(**kw):
    return dpo.TrainConfig(**{**dict(mode="dpo", steps=3, batch_size=4, micro_batch_size=1, lr=1e-2, dropout=0.0,
                              log_every=100), **kw})


def judge_like_data(n=8):
    """SFT rows that open with one long shared prompt, as EFT rows open with Fig. 2: micro-batches run
    that prefix once (packing.prefix_logits), also under FSDP."""
    head = "Review the user's question and the response below, then score it. " * 2
    return [{"prompt": head + f"Q{i}: " + "z" * (i % 4), "response": f"Score: {i % 5}"} for i in range(n)]


def mixed_data():
    """Half judge-like rows, half plain ones: each step has a micro-batch that shares a prefix (two
    forwards) and one that does not (one), so the ranks must take them in rounds of one kind (dpo.deal)."""
    return [r for pair in zip(judge_like_data(4), sft_data(4)) for r in pair]


def lockstep_prompts():
    """Sorted by length and dealt to 2 ranks, rank 0 gets the two that share 40 tokens (it prefills them
    once, then the rest) and rank 1 two that share nothing (it prefills in two parts to keep in step)."""
    head = list(range(10, 50))
    return [head + [1], list(range(100, 141)), head + [2, 3, 4], list(range(200, 243))]


def _worker(rank, world, tmp):
    tok, results = ByteTok(), {}
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
    h = dpo.train(model, sft_data(), sft_cfg(out=f"{tmp}/fsdp_sft"), tokenizer=tok, eval_examples=sft_data(3, 1))
    results["sft"] = [x["loss"] for x in h] + [h[-1]["eval_loss"]]
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")  # killed after step 2; saved at step 2
    h = dpo.train(model, dpo_data(), dpo_cfg(out=f"{tmp}/fsdp_dpo", save_every=2, stop_after=2), tokenizer=tok)
    results["dpo"] = [x["loss"] for x in h] + [h[-1]["reward_accuracy"]]
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
    h = dpo.train(model, mixed_data(), sft_cfg(dropout=0.2, micro_batch_size=2, out=f"{tmp}/fsdp_prefix"),
                  tokenizer=tok)
    results["dropout_shared_prefix"] = [x["loss"] for x in h]
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
    h = dpo.train(model, dpo_data(), dpo_cfg(dropout=0.2, micro_batch_size=2), tokenizer=tok)
    results["dropout_dpo"] = [x["loss"] for x in h]
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
    h = dpo.train(model, sft_data(), sft_cfg(batch_size=3, dropout=0.2), tokenizer=tok)  # 3 micro-batches
    results["uneven"] = [x["loss"] for x in h]
    model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
    results["generated"] = generate.generate_many(model.eval(), lockstep_prompts(), 6, batch_size=2,
                                                   temperature=1.0, seed="fsdp")
    meta, _ = sharding.load_for_training("toy-test", "cpu")  # meta-device init of a preset, sharded
    results["meta_ok"] = bool(torch.isfinite(meta(torch.zeros(1, 4, dtype=torch.long))).all())
    if rank == 0:
        with open(f"{tmp}/results.json", "w") as f:
            json.dump(results, f)


def test_fsdp_two_ranks_match_one_process(tmp_path):
    tmp, tok = str(tmp_path), ByteTok()
    save_checkpoint(tiny_model(seed=11, tie_embeddings=True), f"{tmp}/m0")  # tied, as most presets
    spawn_ranks(_worker, 2, tmp)
    with open(f"{tmp}/results.json") as f:
        got = json.load(f)

    one, _ = load_model(f"{tmp}/m0")
    h = dpo.train(one, sft_data(), sft_cfg(), tokenizer=tok, eval_examples=sft_data(3, 1))
    assert got["sft"] == pytest.approx([x["loss"] for x in h] + [h[-1]["eval_loss"]], rel=TOL)
    sharded, _ = load_model(f"{tmp}/fsdp_sft")  # the final checkpoint, gathered to rank 0
    for k, v in one.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[k], v, atol=1e-4, rtol=TOL)

    one, _ = load_model(f"{tmp}/m0")
    h = dpo.train(one, dpo_data(), dpo_cfg(), tokenizer=tok)
    assert got["dpo"] == pytest.approx([x["loss"] for x in h[:2]] + [h[1]["reward_accuracy"]], rel=TOL)
    # the 2-rank run's checkpoint (FQN-keyed full state) resumes in 1 process and ends where 1 process ends
    resumed, _ = load_model(f"{tmp}/m0")
    h2 = dpo.train(resumed, dpo_data(), dpo_cfg(out=f"{tmp}/fsdp_dpo", save_every=2, resume=True), tokenizer=tok)
    assert [x["loss"] for x in h2] == pytest.approx([x["loss"] for x in h], rel=TOL)
    assert got["meta_ok"]
    # generation: the same tokens as 1 process (each row's own random stream), with the ranks' batches
    # prefilled differently
    one, _ = load_model(f"{tmp}/m0")
    assert got["generated"] == generate.generate_many(one.eval(), lockstep_prompts(), 6, batch_size=2,
                                                      temperature=1.0, seed="fsdp")
    # Dropout on: the same micro-batches with the same masks (seeded per micro-batch), so 2 ranks still
    # match 1 process to the fp32 summation order, with and without a shared prefix run once.
    one, _ = load_model(f"{tmp}/m0")
    h = dpo.train(one, mixed_data(), sft_cfg(dropout=0.2, micro_batch_size=2), tokenizer=tok)
    rows = packing.prepare(mixed_data(), "sft", tok, 512)  # the case the test is about, in every step:
    for step in range(3):
        batch = [rows[i] for i in dpo.batch_indices(len(rows), 4, step, 0)]
        cut = packing.micro_batches(batch, 2)
        assert {bool(packing.shared_prefix_len([batch[i] for i in c])) for c in cut} == {False, True}
    assert got["dropout_shared_prefix"] == pytest.approx([x["loss"] for x in h], rel=TOL)
    sharded, _ = load_model(f"{tmp}/fsdp_prefix")  # the prefix pass's gradients reached every shard
    for k, v in one.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[k], v, atol=1e-4, rtol=TOL)
    one, _ = load_model(f"{tmp}/m0")
    h = dpo.train(one, dpo_data(), dpo_cfg(dropout=0.2, micro_batch_size=2), tokenizer=tok)
    assert got["dropout_dpo"] == pytest.approx([x["loss"] for x in h], rel=TOL)
    # 3 micro-batches on 2 ranks: rank 1 repeats one with weight 0, so the ranks stay in lockstep
    one, _ = load_model(f"{tmp}/m0")
    h = dpo.train(one, sft_data(), sft_cfg(batch_size=3, dropout=0.2), tokenizer=tok)
    assert got["uneven"] == pytest.approx([x["loss"] for x in h], rel=TOL)


def _dies_mid_work(rank, world, tmp):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGABRT)


def test_a_rank_that_dies_before_finishing_fails_the_test(tmp_path):
    """spawn_ranks forgives a death only after every rank finished its work (gloo's teardown)."""
    with pytest.raises(mp.ProcessExitedException, match="SIGABRT"):
        spawn_ranks(_dies_mid_work, 2, str(tmp_path))
