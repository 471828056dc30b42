"""Test helpers shared by test_dpo.py and test_packing.py: a byte-level tokenizer stand-in, a tiny model
and small SFT/DPO datasets."""
import os
import random

import torch

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
