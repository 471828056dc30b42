"""How fast can a SmolLM2-135M decode step be on this CPU? A script, not a test.

It times only the step's matmuls (the weights every step must stream), with SmolLM2's real shapes, 30
layers x (q, k, v, o, gate, up, down) + the lm head, fp32, at batch 1 and 16, and a plain streaming read
for the memory bandwidth. bench_generate.py's decode tokens/s can be read against these ceilings.

    python bench/roofline.py
"""
import time

import torch
import torch.nn.functional as F

DIM, KV, HIDDEN, VOCAB, LAYERS = 576, 192, 1536, 49152, 30  # SmolLM2-135M


def main():
    torch.manual_seed(0)
    shapes = [(DIM, DIM), (KV, DIM), (KV, DIM), (DIM, DIM), (HIDDEN, DIM), (HIDDEN, DIM), (DIM, HIDDEN)]
    weights = [[torch.randn(o, i) for o, i in shapes] for _ in range(LAYERS)]  # distinct: no cache reuse
    head = torch.randn(VOCAB, DIM)
    n_bytes = 4 * (sum(w.numel() for ws in weights for w in ws) + head.numel())

    def step(batch):
        x, xh = torch.randn(batch, DIM), torch.randn(batch, HIDDEN)
        for ws in weights:
            for w in ws:
                F.linear(xh if w.shape[1] == HIDDEN else x, w)
        F.linear(x, head)

    for batch in (1, 16):
        for _ in range(3):
            step(batch)
        times = []
        for _ in range(15):
            t = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - t)
        t = sorted(times)[len(times) // 2]
        print(f"batch {batch:2d}: matmuls only {t * 1e3:.1f} ms/step -> {batch / t:.1f} tok/s ceiling; "
              f"{n_bytes / t / 1e9:.1f} GB/s of weights")
    big = torch.randn(2**28)  # 1 GiB of fp32
    big.sum()
    t = time.perf_counter()
    for _ in range(5):
        big.sum()
    t = (time.perf_counter() - t) / 5
    print(f"streaming read (sum of 1 GiB): {big.numel() * 4 / t / 1e9:.1f} GB/s; {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
