# Sourced by the device scripts, from the repository root: installs the carried wheels (.whl)
# and our distributions, sets PYTHONPATH and the environment, prints the versions; $OUT is
# where results go.
set -o pipefail
OUT=${OUT:-/tmp/sgl_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=/tmp/site python3 -m pip install -q --no-deps --no-build-isolation --no-index -e core -e plugins/backend-sgl -e plugins/backend-hf -e plugins/bench 2>&1 | tail -3
export PYTHONPATH=/tmp/site:core/src:plugins/backend-sgl/src:plugins/backend-sgl/tests:plugins/bench/src:plugins/backend-sgl/gpu
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
