#!/usr/bin/env bash
# One device call: install our distributions (carry .whl with msgspec, pyzmq and llguidance
# wheels for Python 3.12), then the `minisgl bench` commands given in BENCHES (default: the
# engine's host work per step, the grammar mask's cost at batch 64, and W1 offline on
# qwen3-0.6b, llama-3.1-8b and qwen3-30b-a3b shapes) on backend sgl.
# Run from the repository root: bash plugins/backend-sgl/gpu/run_bench.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
BENCHES=${BENCHES:-"host --device cuda --model qwen3-0.6b;grammar --model qwen3-0.6b --backend sgl --batch 64 --tokens 64 --rounds 2;offline --model qwen3-0.6b --backend sgl --peers none --workload w1;offline --model llama-3.1-8b --backend sgl --peers none --workload w1;offline --model qwen3-30b-a3b --backend sgl --peers none --workload w1"}
IFS=';' read -ra RUNS <<< "$BENCHES"
i=0
for args in "${RUNS[@]}"; do
  i=$((i + 1))
  echo "=== minisgl bench $args"
  # shellcheck disable=SC2086
  timeout 280 python3 -m minisgl bench $args 2>&1 | tee "$OUT/bench$i.log" | grep -v "^INFO\|Loading weights\|Writing model"
done
