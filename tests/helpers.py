"""Test helpers: a byte-level tokenizer stand-in, a tiny model, small SFT/DPO datasets, and a way to run
a function on 2 gloo ranks."""
import glob
import os
import random
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import Transformer, preset


class ByteTok:
    """A byte-level stand-in with the Tokenizer methods dpo.py uses, so these tests do not depend on
    tokenizer.py. ids 0..255 are bytes; 256 pad, 257 bos, 258 eos, 259 end-of-turn."""
    pad_id, bos_id, eos_id, eot_id, n_words = 256, 257, 258, 259, 260
    stop_ids = {258, 259}

    def encode(self, text, bos=False, eos=False):
        return [257] * bos + list(text.encode()) + [258] * eos

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def encode_chat_prompt(self, user):
        return [257] + list(f"U:{user}\nA:".encode())

    def encode_chat_response(self, response):
        return list(response.encode()) + [259]

    def save(self, directory):
        with open(os.path.join(directory, "bytetok.txt"), "w") as f:
            f.write("byte-level stand-in\n")


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(preset("toy-test", **kw))
    m.init_weights(seed=seed)
    return m


def sft_data(n=8, seed=0):
    rng = random.Random(seed)
    return [{"prompt": f"q{i} " + "x" * rng.randrange(1, 6), "response": f"a{i}" + "y" * rng.randrange(0, 9)}
            for i in range(n)]


def dpo_data(n=8, seed=0):
    return [{"prompt": f"say {i}", "chosen": f"good {i}" + "!" * (i % 3), "rejected": f"bad{i % 4}"}
            for i in range(n)]


def _rank_main(rank, fn, world, tmp, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    fn(rank, world, tmp, *args)  # an exception here reaches spawn with its traceback, as usual
    open(f"{tmp}/rank{rank}.done", "w").close()
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: once, in CI, a rank that had finished every collective died there
    # by SIGABRT ("terminate called without an active exception", a C++ thread destroyed unjoined).
    os._exit(0)


def spawn_ranks(fn, world, tmp, *args):
    """fn(rank, world, tmp, *args) on `world` gloo ranks (spawned processes, 1 thread each); fn writes
    what the test checks under tmp. A rank that dies by a signal fails the test unless every rank had
    already finished fn: then the death is gloo's teardown, not the code under test, and is a warning."""
    try:
        mp.spawn(_rank_main, args=(fn, world, tmp, args), nprocs=world, join=True)
    except mp.ProcessExitedException as e:
        if not all(os.path.exists(f"{tmp}/rank{r}.done") for r in range(world)):
            raise
        warnings.warn(f"rank {e.error_index} died by {e.signal_name} after every rank finished its work")
    finally:
        for f in glob.glob(f"{tmp}/rendezvous*") + glob.glob(f"{tmp}/rank*.done"):
            os.remove(f)
