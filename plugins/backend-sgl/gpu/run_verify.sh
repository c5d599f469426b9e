#!/usr/bin/env bash
# One device call: speculative decoding's verify step against a decode step, and one stream
# with and without the n-gram proposer (carry .whl with the msgspec, pyzmq, pluggy, click and
# rich wheels for the device's Python). Run from the repository root.
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
export PYTHONPATH=/tmp/site:core/src:plugins/backend-sgl/src:plugins/bench/src:plugins/backend-sgl/tests:plugins/backend-sgl/gpu
python3 -m pytest -q -p no:cacheprovider plugins/backend-sgl/tests/test_runner.py 2>&1 | tee "$OUT/tests.log" | tail -5
python3 plugins/backend-sgl/gpu/bench_verify.py 2>&1 | tee "$OUT/verify.log" | grep -v "^INFO\|Loading weights\|Writing model"
