#!/usr/bin/env bash
# Everything the GPU issue needs in one device-machine call (device time is scarce):
#   1. the GPU test suite (pytest -m gpu),
#   2. each fused kernel's GB/s against a device-to-device copy at 2^26 float32, and our GEMM
#      against cuBLAS (gpu_bandwidth.py),
#   3. the GPU benchmarks (training steps: tensorgrad eager and as a CUDA graph vs PyTorch eager;
#      fused kernels vs CuPy expressions), saved as pytest-benchmark JSON,
#   4. kernel launches, copies and CPU/GPU time per training step (gpu_profile_step.py),
#   5. the tables, gathered in summary_DATE.md and printed last (the device tool returns only the
#      tail of the output).
# Logs and JSON go to $OUT (the device tool brings that folder back); run from the repo root:
#   OUT=/tmp/out bash benchmarks/gpu_run.sh
# The device tool returns at most 8 files from $OUT; this writes at most 7: device.txt, gpu_tests.txt,
# gpu_bench.txt (every other log), three JSON files and the summary.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/tensorgrad-gpu}"
mkdir -p "$out"
tables="$(mktemp -d)"
export PYTHONPATH=.
stamp="$(date +%F)"
log="$out/gpu_bench.txt"

{
    echo "date: $stamp"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} > "$out/device.txt"

# PHASES picks phases (default: all four), e.g. PHASES=tests for a first call that only checks the
# suite. Each phase has its own time limit (seconds, 570 in all), so that one hang cannot eat the
# device tool's 10 minutes and the phases after it; `timeout` exits 124 when it stops one.
phases=" ${PHASES:-tests bandwidth bench profile} "
skipped=-  # the rc shown for a phase not run
tests_rc=$skipped bandwidth_rc=$skipped bench_rc=$skipped profile_rc=$skipped
: > "$log"
if [[ $phases == *" tests "* ]]; then
    # -v and --durations: a run cut short still shows which tests passed and what took the time
    timeout 270 python3 -m pytest -m gpu tests -v --durations=15 -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
    tests_rc=$?
fi
if [[ $phases == *" bandwidth "* ]]; then
    echo "=== benchmarks/gpu_bandwidth.py" >> "$log"
    timeout 50 python3 benchmarks/gpu_bandwidth.py --json "$out/gpu_bandwidth_${stamp}.json" \
        --markdown "$tables/bandwidth.md" >> "$log" 2>&1
    bandwidth_rc=$?
fi
if [[ $phases == *" bench "* ]]; then
    echo "=== pytest benchmarks -m gpu" >> "$log"
    timeout 150 python3 -m pytest benchmarks -m gpu --benchmark-only -q -p no:cacheprovider \
        --benchmark-json="$out/gpu_bench_${stamp}.json" >> "$log" 2>&1
    bench_rc=$?
    python3 benchmarks/compare.py "$out/gpu_bench_${stamp}.json" > "$tables/bench.md" 2>&1
fi
if [[ $phases == *" profile "* ]]; then
    echo "=== benchmarks/gpu_profile_step.py" >> "$log"
    timeout 100 python3 benchmarks/gpu_profile_step.py --json "$out/gpu_profile_${stamp}.json" \
        --markdown "$tables/profile.md" >> "$log" 2>&1
    profile_rc=$?
fi

section() {  # title, rc, table file: the table, or the log's tail where the phase left none
    [ "$2" = "$skipped" ] && return
    echo "## $1 (rc $2)"
    if [ -s "$3" ]; then cat "$3"; else tail -n 20 "$log"; fi
    echo
}
{
    cat "$out/device.txt"
    echo
    echo "## gpu tests (rc $tests_rc)"
    if [ -s "$out/gpu_tests.txt" ]; then
        grep -E "^(FAILED|ERROR) " "$out/gpu_tests.txt" | head -n 25
        tail -n 1 "$out/gpu_tests.txt"
    fi
    echo
    section "fused kernel bandwidth and gemm" "$bandwidth_rc" "$tables/bandwidth.md"
    section "benchmarks: medians and ratios" "$bench_rc" "$tables/bench.md"
    section "kernel launches and time per training step" "$profile_rc" "$tables/profile.md"
} > "$out/summary_${stamp}.md"
cat "$out/summary_${stamp}.md"
rm -rf "$tables"
