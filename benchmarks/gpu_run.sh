#!/usr/bin/env bash
# Everything the GPU issue needs in one device-machine call (device time is scarce):
#   1. the GPU test suite (pytest -m gpu),
#   2. the GPU benchmarks (training steps vs PyTorch eager, fused kernels vs CuPy expressions and a
#      device-to-device copy), saved as pytest-benchmark JSON,
#   3. kernel launches, copies and CPU/GPU time per training step, tensorgrad against PyTorch
#      (gpu_profile_step.py),
#   4. short tables printed last (the device tool returns only the tail of the output).
# Full logs and JSON go to $OUT (the device tool brings that folder back); run from the repo root:
#   OUT=/tmp/out bash benchmarks/gpu_run.sh
# The device tool returns at most 8 files from $OUT; this writes 7 (the profile's log is appended to
# gpu_bench.txt rather than given a file of its own).
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

echo "=== benchmarks/gpu_profile_step.py" >> "$out/gpu_bench.txt"
python3 benchmarks/gpu_profile_step.py --json "$out/gpu_profile_${stamp}.json" \
    --markdown "$out/gpu_profile_${stamp}.md" >> "$out/gpu_bench.txt" 2>&1
profile_rc=$?

cat "$out/device.txt"
echo "--- gpu tests (rc $tests_rc)"
tail -n 15 "$out/gpu_tests.txt"
echo "--- gpu benchmarks (rc $bench_rc)"
cat "$out/gpu_table_${stamp}.md"
echo "--- kernel launches and time per training step (rc $profile_rc)"
if [ -s "$out/gpu_profile_${stamp}.md" ]; then
    cat "$out/gpu_profile_${stamp}.md"
else
    tail -n 20 "$out/gpu_bench.txt"  # no table: the profile's own error is the useful part
fi
