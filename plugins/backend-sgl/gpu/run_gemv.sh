#!/usr/bin/env bash
# One device call: the kernel tests and check.py on CUDA, decode steps with and without the skinny GEMM's
# GEMV form at 1-16 rows (a kernel profile at 1 row), then bench_verify.py (the verify step
# per k, one stream with the n-gram proposer). Carry .whl (msgspec, pyzmq, pluggy, click, rich).
# Run from the repository root: bash plugins/backend-sgl/gpu/run_gemv.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
export PYTHONPATH=/tmp/site:core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests:plugins/bench/src:plugins/backend-sgl/gpu
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
if [[ ${STAGES:-tests,bench,verify} == *tests* ]]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider plugins/backend-sgl/tests/test_triton_kernels.py 2>&1 | tee "$OUT/tests.log" | tail -4
  timeout 180 python3 plugins/backend-sgl/gpu/check.py 2>&1 | tee "$OUT/check.log" | grep -v "^INFO" | tail -25
fi
if [[ ${STAGES:-tests,bench,verify} == *bench* ]]; then
  BENCH_EAGER=0 BENCH_PEER=0 BENCH_PRESETS=${BENCH_PRESETS:-qwen3-0.6b,llama-3.1-8b} BENCH_BATCHES=${BENCH_BATCHES:-1,2,4,16} \
    BENCH_VARIANTS=${BENCH_VARIANTS:-pdl-nogemv,pdl} BENCH_PROFILE=${BENCH_PROFILE:-1} \
    timeout ${BENCH_TIMEOUT:-300} python3 plugins/backend-sgl/gpu/bench_decode.py 2>&1 | tee "$OUT/bench.log" | grep -v "^INFO\|^{"
  grep -ho "skinny GEMM serves.*" "$OUT/bench.log"
fi
if [[ ${STAGES:-tests,bench,verify} == *verify* ]]; then
  BENCH_PRESETS=${VERIFY_PRESETS:-qwen3-0.6b} timeout ${VERIFY_TIMEOUT:-200} python3 plugins/backend-sgl/gpu/bench_verify.py 2>&1 \
    | tee "$OUT/verify.log" | grep -v "^INFO\|Loading weights\|Writing model"
fi
