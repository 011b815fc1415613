#!/usr/bin/env bash
# Everything the GPU issue needs in one device-machine call (device time is scarce):
#   1. the GPU test suite (pytest -m gpu),
#   2. the GPU benchmarks (training steps vs PyTorch eager, fused kernels vs CuPy expressions and a
#      device-to-device copy), saved as pytest-benchmark JSON,
#   3. a short table printed last (the device tool returns only the tail of the output).
# Full logs and JSON go to $OUT (the device tool brings that folder back); run from the repo root:
#   OUT=/tmp/out bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/tensorgrad-gpu}"
mkdir -p "$out"
export PYTHONPATH=.
stamp="$(date +%F)"

{
    echo "date: $stamp"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} > "$out/device.txt"

python3 -m pytest -m gpu tests -q -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
tests_rc=$?

python3 -m pytest benchmarks -m gpu --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$out/gpu_bench_${stamp}.json" > "$out/gpu_bench.txt" 2>&1
bench_rc=$?
python3 benchmarks/compare.py "$out/gpu_bench_${stamp}.json" > "$out/gpu_table_${stamp}.md" 2>&1

cat "$out/device.txt"
echo "--- gpu tests (rc $tests_rc)"
tail -n 15 "$out/gpu_tests.txt"
echo "--- gpu benchmarks (rc $bench_rc)"
cat "$out/gpu_table_${stamp}.md"
