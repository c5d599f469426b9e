#!/usr/bin/env bash
# One device call: overlap scheduling correctness (overlap_e2e.py), then offline throughput with
# overlap on/off vs transformers (bench_overlap.py), then `minisgl bench offline` through the CLI.
# Run from the repository root with `.whl` carried: bash plugins/backend-sgl/gpu/run_overlap.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# the engine finds backends through entry points: install our distributions (no network needed)
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
STAGES=${STAGES:-e2e,bench,cli}
if [[ $STAGES == *e2e* ]]; then
  timeout ${E2E_TIMEOUT:-200} python3 plugins/backend-sgl/gpu/overlap_e2e.py 2>&1 | tee "$OUT/overlap_e2e.log" | grep -v "^INFO" | tail -80
fi
if [[ $STAGES == *bench* ]]; then
  timeout ${BENCH_TIMEOUT:-300} python3 plugins/backend-sgl/gpu/bench_overlap.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_overlap.log" | grep -v "^INFO" | tail -40
fi
if [[ $STAGES == *small* ]]; then  # decode-heavy, small batches: where host overhead shows
  timeout ${SMALL_TIMEOUT:-150} python3 plugins/backend-sgl/gpu/bench_overlap.py --num-requests 32 --input-len 100-200 \
    --output-len 400-500 --repeats 4 --skip-hf-cb --streaming-requests 0 --output "$OUT/bench_small.json" \
    2>&1 | tee "$OUT/bench_small.log" | grep -v "^INFO" | tail -20
fi
if [[ $STAGES == *cli* ]]; then
  timeout ${CLI_TIMEOUT:-80} python3 -m minisgl bench offline --model /tmp/bench_qwen3-0.6b --backend sgl --peers none \
    --num-requests 64 --input-len 100-1000 --output-len 100-500 --output "$OUT/cli_bench.json" 2>&1 | tee "$OUT/cli_bench.log" | tail -15
fi
