"""FSDP2 on CPU (gloo, 2 ranks, torch.multiprocessing spawn) against 1 process on the same global batch.

Tolerance: the two runs add the same fp32 numbers in different orders (per-rank sums of 2 micro-batches,
then a reduce-scatter, against one sum of 4 micro-batches), so gradients differ by a few ulps (~1e-7
relative). Adam normalises the update, so such differences stay ~1e-6 relative after a few steps; 1e-4
on losses is far above that and far below what any real bug (a wrong shard, a missing rank's data, a
mis-scaled loss: >= 1e-2 here) would produce. Weights get an absolute 1e-4 besides: where a gradient
element nearly cancels, its few-ulp difference is a large relative one, and Adam's first steps move
each weight by up to lr (1e-2) whatever the gradient's size; 1e-4 is 1% of one such step.
"""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dpo
import sharding
from checkpoint import load_model, save_checkpoint
from helpers import ByteTok, dpo_data, sft_data, tiny_model

TOL = 1e-4


def sft_cfg(**kw):
    return dpo.TrainConfig(mode="sft", steps=3, batch_size=4, micro_batch_size=1, lr=1e-2, dropout=0.0,
                           eval_every=3, log_every=100, **kw)


def dpo_cfg(**kw):
    return dpo.TrainConfig(mode="dpo", steps=3, batch_size=4, micro_batch_size=1, lr=1e-2, dropout=0.0,
                           log_every=100, **kw)


def _worker(rank, world, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        tok, results = ByteTok(), {}
        model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")
        h = dpo.train(model, sft_data(), sft_cfg(out=f"{tmp}/fsdp_sft"), tokenizer=tok, eval_examples=sft_data(3, 1))
        results["sft"] = [x["loss"] for x in h] + [h[-1]["eval_loss"]]
        model, _ = sharding.load_for_training(f"{tmp}/m0", "cpu")  # killed after step 2; saved at step 2
        h = dpo.train(model, dpo_data(), dpo_cfg(out=f"{tmp}/fsdp_dpo", save_every=2, stop_after=2), tokenizer=tok)
        results["dpo"] = [x["loss"] for x in h] + [h[-1]["reward_accuracy"]]
        meta, _ = sharding.load_for_training("toy-test", "cpu")  # meta-device init of a preset, sharded
        results["meta_ok"] = bool(torch.isfinite(meta(torch.zeros(1, 4, dtype=torch.long))).all())
        if rank == 0:
            with open(f"{tmp}/results.json", "w") as f:
                json.dump(results, f)
        dist.barrier()  # no rank tears gloo down while the other still talks to it (SIGABRT otherwise)
    finally:
        dist.destroy_process_group()


def test_fsdp_two_ranks_match_one_process(tmp_path):
    tmp, tok = str(tmp_path), ByteTok()
    save_checkpoint(tiny_model(seed=11, tie_embeddings=True), f"{tmp}/m0")  # tied, as most presets
    mp.spawn(_worker, args=(2, tmp), nprocs=2, join=True)
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
