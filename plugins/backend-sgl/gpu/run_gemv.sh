#!/usr/bin/env bash
# One device call: the kernel tests and check.py on CUDA, decode steps with and without the skinny GEMM's
# GEMV form at 1-16 rows (a kernel profile at 1 row), then bench_verify.py (the verify step
# per k, one stream with the n-gram proposer). Carry .whl (msgspec, pyzmq, pluggy, click, rich).
# Run from the repository root: bash plugins/backend-sgl/gpu/run_gemv.sh
source plugins/backend-sgl/gpu/device_env.sh
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
