#!/usr/bin/env bash
# One device call: environment, kernel + model tests on CUDA, runner checks, decode benchmark.
# Run from the repository root: bash plugins/backend-sgl/gpu/run_all.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=core/src:plugins/backend-sgl/src:plugins/bench/src:plugins/backend-sgl/tests:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
STAGES=${STAGES:-tests,check,e2e,bench}
# the engine and the settings find backend-sgl through entry points: install our distributions first
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
if [[ $STAGES == *tests* ]]; then
  python3 -m pytest -q -p no:cacheprovider plugins/backend-sgl/tests 2>&1 | tee "$OUT/tests.log" | tail -25
fi
if [[ $STAGES == *check* ]]; then
  python3 plugins/backend-sgl/gpu/check.py 2>&1 | tee "$OUT/check.log" | grep -v "^INFO"
fi
if [[ $STAGES == *e2e* ]]; then
  python3 plugins/backend-sgl/gpu/e2e_llm.py 2>&1 | tee "$OUT/e2e.log" | grep -E "E2E|Error|error|Traceback|backend" | head -40
fi
if [[ $STAGES == *bench* ]]; then
  python3 plugins/backend-sgl/gpu/bench_decode.py 2>&1 | tee "$OUT/bench.log" | grep -v "^INFO"
fi
