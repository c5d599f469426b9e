#!/usr/bin/env bash
# One device call: the kernel tests and check.py on CUDA, the PDL probe, then decode steps
# with graphs for each kernel variant (BENCH_VARIANTS) and a kernel profile at the batch
# sizes in BENCH_PROFILE (default 1). Carry .whl (msgspec, pyzmq, pluggy, click, rich).
# Run from the repository root: bash plugins/backend-sgl/gpu/run_profile.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/bench 2>&1 | tail -3
export PYTHONPATH=/tmp/site:core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests:plugins/bench/src PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
if [ "${STAGES:-tests,bench}" != "${STAGES#*tests}" ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider plugins/backend-sgl/tests/test_triton_kernels.py plugins/backend-sgl/tests/test_runner.py 2>&1 | tee "$OUT/tests.log" | tail -4
  timeout 180 python3 plugins/backend-sgl/gpu/check.py 2>&1 | tee "$OUT/check.log" | grep -v "^INFO" | tail -25
  python3 plugins/backend-sgl/gpu/probe_pdl.py
fi
if [ "${STAGES:-tests,bench}" != "${STAGES#*bench}" ]; then
  BENCH_EAGER=0 BENCH_PEER=0 BENCH_PRESETS=${BENCH_PRESETS:-qwen3-0.6b,llama-3.1-8b} BENCH_BATCHES=${BENCH_BATCHES:-1,16,64} \
    BENCH_VARIANTS=${BENCH_VARIANTS:-plain,pdl,plain} BENCH_PROFILE=${BENCH_PROFILE:-1} \
    timeout 400 python3 plugins/backend-sgl/gpu/bench_decode.py 2>&1 | tee "$OUT/bench.log" | grep -v "^INFO\|^{"
fi
