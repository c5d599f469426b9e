#!/usr/bin/env bash
# One device call for structured outputs on backend-sgl (carry .whl with the msgspec, pyzmq and
# llguidance wheels for Python 3.12): `minisgl bench grammar` at 64 rows on each preset in
# PRESETS, then profile_grammar.py (the GPU's busy share and the host's waits) on the first.
# Run from the repository root: bash plugins/backend-sgl/gpu/run_grammar.sh
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
PRESETS=${PRESETS:-"qwen3-0.6b"}
BENCHES=""
for preset in $PRESETS; do
  BENCHES+="grammar --model $preset --backend sgl --batch 64 --tokens 64 --rounds 2;"
done
BENCHES=${BENCHES%;} bash plugins/backend-sgl/gpu/run_bench.sh || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
first=${PRESETS%% *}
timeout 300 python3 plugins/backend-sgl/gpu/profile_grammar.py "$first" 64 2>&1 | tee "$OUT/profile_grammar.log" | grep -v "^INFO\|^USDT"
# every sampled token must be one its grammar allowed (the scheduler logs any other)
echo "tokens outside their grammar: $(cat "$OUT"/bench*.log "$OUT/profile_grammar.log" | grep -c "outside its grammar")"
