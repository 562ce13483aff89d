#!/usr/bin/env bash
# Every GPU measurement the project still owes, in one go, each output kept in $1 (default
# gpu-run/): the GPU tests, then the GBN, loader and epoch-time benchmarks on CUDA.
# Needs torch with CUDA, and ray, mlflow and optuna for the test session's fixtures.
set -uo pipefail
out="$(realpath -m "${1:-gpu-run}")"
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
status=0
run() {
  local name="$1"
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt" || status=1
}
run gpu-tests python -m pytest -m gpu -q -p no:cacheprovider
cd benchmarks || exit 1
run gbn-bf16 python gbn_speed.py --device cuda --bf16 --channels-last
run gbn-fp32 python gbn_speed.py --device cuda
run mixed-dtype python mixed_dtype.py --device cuda
run gbn-bf16-compile python gbn_speed.py --device cuda --bf16 --channels-last --compile
run loader python loader_speed.py --device cuda --samples 50000 --batch-size 4096
run epoch python epoch_time.py --device cuda --bf16 --channels-last
run epoch-compile python epoch_time.py --device cuda --bf16 --channels-last --compile
exit "$status"
