"""How fast can a SmolLM2-135M decode step be on this CPU? A script, not a test.

It times only the step's matmuls (the weights every step must stream), with SmolLM2's real shapes, 30
layers x (q, k, v, o, gate, up, down) + the lm head, fp32, at batch 1 and 16, with three kernels:
torch's F.linear (MKL), oneDNN's linear on pre-packed weights, and the multiply-sum that inductor
compiles into one loop (cpu_decode.DecodeLinear uses the last two in the compiled CPU decode step: the
multiply-sum for one row, oneDNN for more). A plain streaming read gives the memory bandwidth.
bench_generate.py's decode tokens/s can be read against these ceilings.

    python bench/roofline.py
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cpu_decode import onednn_linear  # noqa: E402

DIM, KV, HIDDEN, VOCAB, LAYERS = 576, 192, 1536, 49152, 30  # SmolLM2-135M


def median_time(fn, n=15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.compile(dynamic=False)
def multiply_sum(x, w):
    return (x.unsqueeze(-2) * w).sum(-1)


@torch.no_grad()
def main():
    torch.manual_seed(0)
    shapes = [(DIM, DIM), (KV, DIM), (KV, DIM), (DIM, DIM), (HIDDEN, DIM), (HIDDEN, DIM), (DIM, HIDDEN)]
    weights = [w for _ in range(LAYERS) for w in (torch.randn(o, i) for o, i in shapes)]  # distinct: no cache reuse
    weights.append(torch.randn(VOCAB, DIM))  # lm head
    n_bytes = 4 * sum(w.numel() for w in weights)
    kernels = {"F.linear (MKL)": F.linear, "oneDNN, packed": onednn_linear, "compiled multiply-sum": multiply_sum}
    for batch in (1, 16):
        x, xh = torch.randn(batch, DIM), torch.randn(batch, HIDDEN)
        for name, kernel in kernels.items():
            if name.startswith("compiled") and batch > 1:
                continue  # re-reads the weights once per row: for one row only

            def step():
                for w in weights:
                    kernel(xh if w.shape[1] == HIDDEN else x, w)
            t = median_time(step)
            print(f"batch {batch:2d}, {name:22s}: matmuls only {t * 1e3:5.1f} ms/step -> {batch / t:6.1f} tok/s "
                  f"ceiling; {n_bytes / t / 1e9:4.1f} GB/s of weights")
    big = torch.randn(2**28)  # 1 GiB of fp32
    t = median_time(big.sum, 5)
    print(f"streaming read (sum of 1 GiB): {big.numel() * 4 / t / 1e9:.1f} GB/s; {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
