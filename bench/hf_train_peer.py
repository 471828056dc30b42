"""HF transformers peer for bench_train.py: the same DPO step as dpo.train on LlamaForCausalLM, i.e. one
concatenated forward of chosen + rejected rows, fp32 log-softmax over response tokens, the DPO loss on
fixed reference log-probs, backward, grad-norm clipping, AdamW. Prints one JSON line.

Run it with the throwaway interpreter that has transformers (never a project dependency):
    /tmp/hf/bin/python bench/hf_train_peer.py --args '{"dim": 576, ...}' --pairs 2 --seq 128
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--args", required=True, help="model.ModelArgs as JSON, plus hidden_dim")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    m = json.loads(a.args)
    cfg = LlamaConfig(vocab_size=m["vocab_size"], hidden_size=m["dim"], intermediate_size=m["hidden_dim"],
                      num_hidden_layers=m["n_layers"], num_attention_heads=m["n_heads"],
                      num_key_value_heads=m["n_kv_heads"], max_position_embeddings=max(a.seq, 128),
                      rms_norm_eps=m["norm_eps"], rope_theta=m["rope_theta"],
                      tie_word_embeddings=m["tie_embeddings"], attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    n_params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, cfg.vocab_size, (2 * a.pairs, a.seq))  # chosen rows, then rejected rows
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, a.seq // 2:] = True  # response half
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-6, betas=(0.9, 0.95))
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        logits = model(input_ids=tokens).logits  # (2b, T, V)
        logps = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, tokens[:, 1:, None]).squeeze(2)
        logps = (logps * mask[:, 1:]).sum(-1)
        h = logps[:a.pairs] - logps[a.pairs:]  # reference log-probs fixed at 0
        loss = -F.logsigmoid(0.1 * h).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(json.dumps({"tokens_per_s": tokens.numel() / step_s, "step_s": step_s, "n_params": n_params,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
