#!/usr/bin/env bash
# Every GPU check in one short run (a lent GPU is scarce; about 9 minutes): FlexAttention forward + backward
# under torch.compile against SDPA on CUDA, the CUDA-graph decode step against eager decoding, decode
# tokens/s and GB/s at batch 1 for a 1B-class model (llama3.2-1b shapes, bf16, random weights: no
# checkpoint is on the GPU box; the H200 streams 4.8 TB/s), DPO training MFU for the same shapes (8 pairs x
# 1024 tokens, bf16, compiled blocks), and the toy loop on the GPU with its wall time. Results go to $OUT
# (default runs/gpu).
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

echo "== 2. decode: llama3.2-1b shapes, bf16, batch 1 and 16, 128 new tokens (GB/s / 4800 = HBM fraction)"
timeout 120 $PY bench/bench_generate.py --ckpt llama3.2-1b --device cuda --dtype bfloat16 --batches 1,16 \
    --no-hf --repeats 3 --out "$OUT/bench_generate_cuda.json" 2>&1 | tail -8

echo "== 3. training MFU: llama3.2-1b shapes, DPO step on 8 pairs x 1024 tokens, bf16 autocast, compiled blocks"
timeout 150 $PY bench/bench_train.py --device cuda --presets llama3.2-1b --pairs 8 --seq 1024 --steps 6 \
    --no-hf --no-memory --compile 2>&1 | tail -4
cp runs/bench_train_cuda_compile.json "$OUT/" 2>/dev/null || true

echo "== 4. the toy loop on the GPU (python loop.py --device cuda), its wall time"
start=$(date +%s)
timeout 150 $PY loop.py --device cuda --run-dir "$OUT/toy" 2>&1 | tail -12
rc=${PIPESTATUS[0]}
echo "toy loop: exit $rc after $(( $(date +%s) - start )) s (150 s cap; a killed run resumes with the same command)"
