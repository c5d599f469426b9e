#!/usr/bin/env bash
# One device call: the attention backends (`--attention-backend` triton and fa). The kernel
# tests on CUDA (Triton and fa against the torch references, a runner on each), prefill
# attention alone per backend (bench_prefill_attention.py), then the `minisgl bench` commands
# in BENCHES, each under every ATTENTION_BACKEND in BACKENDS (default: one prompt's prefill
# of llama-3.1-8b at 2k, 8k and 32k and of qwen3-0.6b at 8k).
# Carry .whl (msgspec, pyzmq, pluggy, click, rich, llguidance, prometheus-client wheels for Python 3.12).
# Run from the repository root: bash plugins/backend-sgl/gpu/run_attention.sh
source plugins/backend-sgl/gpu/device_env.sh
STAGES=${STAGES:-tests,kernels,bench}
if [[ $STAGES == *tests* ]]; then
  # shellcheck disable=SC2086
  timeout 200 python3 -m pytest -q -p no:cacheprovider ${TESTS:-plugins/backend-sgl/tests/test_flash_attention.py \
    plugins/backend-sgl/tests/test_triton_kernels.py plugins/backend-sgl/tests/test_runner.py} 2>&1 | tee "$OUT/tests.log" | tail -6
fi
if [[ $STAGES == *kernels* ]]; then
  timeout 200 python3 plugins/backend-sgl/gpu/bench_prefill_attention.py 2>&1 | tee "$OUT/kernels.log"
fi
if [[ $STAGES == *bench* ]]; then
  BENCHES=${BENCHES:-"offline --model llama-3.1-8b --backend sgl --peers none --workload prefill --num-requests 1 --input-len 2048;offline --model llama-3.1-8b --backend sgl --peers none --workload prefill --num-requests 1 --input-len 8192;offline --model llama-3.1-8b --backend sgl --peers none --workload prefill --num-requests 1 --input-len 32768;offline --model qwen3-0.6b --backend sgl --peers none --workload prefill --num-requests 1 --input-len 8192"}
  IFS=';' read -ra RUNS <<< "$BENCHES"
  i=0
  for args in "${RUNS[@]}"; do
    for backend in ${BACKENDS:-triton fa}; do
      i=$((i + 1))
      echo "=== ATTENTION_BACKEND=$backend minisgl bench $args"
      # shellcheck disable=SC2086
      ATTENTION_BACKEND=$backend BENCH_LOG_LEVEL=INFO timeout ${BENCH_TIMEOUT:-150} python3 -m minisgl bench $args > "$OUT/bench$i.log" 2>&1
      grep -h "of the matmul rate\|tok/s: .* of roofline floor\|attention-backend auto\|Error\|error" "$OUT/bench$i.log" | grep -v "^INFO.*Loading" | tail -6
    done
  done
fi
