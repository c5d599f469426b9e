#!/usr/bin/env bash
# One device call: `minisgl bench hicache` (a multi-turn workload with and without the host
# tier) on backend sgl, random weights of MODEL's shapes (default qwen3-0.6b). Carry .whl
# (msgspec, pyzmq, pluggy, click, rich). Run from the repository root.
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
python3 -m minisgl bench hicache --model "${MODEL:-qwen3-0.6b}" --backend sgl --no-restart --modes off,host \
  --json "$OUT/hicache.json" 2>&1 | tee "$OUT/hicache.log" | grep -v "^INFO\|Loading weights\|Writing model"
