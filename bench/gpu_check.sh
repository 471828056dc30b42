#!/usr/bin/env bash
# Every GPU check in one short run (a lent GPU is scarce): FlexAttention forward + backward under
# torch.compile against SDPA on CUDA, the CUDA-graph decode step against eager decoding, decode tokens/s
# and GB/s (smollm2-135m shapes, bf16, random weights: the GGUF is not on the GPU box), and training MFU
# (llama-124m, bf16 autocast, compiled blocks). Results go to $OUT (default runs/gpu).
#     bash bench/gpu_check.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== 1. tests/test_cuda.py: flex fwd+bwd == SDPA (causal, padding, document); CUDA-graph decode == eager"
timeout 170 $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tail -8

echo "== 2. decode: smollm2-135m shapes, bf16, batch 1 and 16, 128 new tokens"
timeout 130 $PY bench/bench_generate.py --ckpt smollm2-135m --device cuda --dtype bfloat16 --batches 1,16 \
    --no-hf --repeats 3 --out "$OUT/bench_generate_cuda.json" 2>&1 | tail -8

echo "== 3. training MFU: llama-124m, DPO step on 8 pairs x 1024 tokens, bf16 autocast, compiled blocks"
timeout 130 $PY bench/bench_train.py --device cuda --presets llama-124m --pairs 8 --seq 1024 --steps 6 \
    --no-hf --no-memory --compile 2>&1 | tail -4
cp runs/bench_train_cuda_compile.json "$OUT/" 2>/dev/null || true
