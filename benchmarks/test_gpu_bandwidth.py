"""benchmarks/gpu_bandwidth.py runs end to end on the CPU (its GPU run is in gpu_run.sh), and its byte
accounting is what each kernel must move at least: every input read once, every output written once."""

import json

import gpu_bandwidth

from tensorgrad import kernels

N = 2 ** 12  # 4 rows of gpu_bandwidth.COLUMNS


def test_cpu_smoke_run_writes_every_case(tmp_path):
    out = tmp_path / "bandwidth.json"
    assert gpu_bandwidth.main(["--device", "cpu", "--log2-elements", "12", "--trials", "1", "--repeats", "1",
                               "--json", str(out), "--markdown", str(tmp_path / "table.md")]) == 0
    results = json.loads(out.read_text())
    names = [row["kernel"] for row in results["bandwidth"]["kernels"]]
    assert len(names) == 2 * len(kernels.ACTIVATIONS) + 6 and len(set(names)) == len(names)
    assert len(results["gemm"]) == len(gpu_bandwidth.GEMM_SHAPES)
    table = (tmp_path / "table.md").read_text()
    assert "| activation_forward relu | 32768 |" in table and "| (256, 784, 512) |" in table


def test_bytes_moved_by_hand():
    import numpy as np
    _, _, cases = gpu_bandwidth.cases(np, kernels.NumpyKernels(), N)
    moved = {name: nbytes for name, nbytes, _ in cases}
    f32 = 4 * N
    assert moved["activation_forward sigmoid"] == 2 * f32            # x in, y out
    assert moved["activation_backward elu"] == 3 * f32               # y, gy in; gx out
    assert moved["bias_activation_forward relu"] == 2 * f32 + 4 * 1024
    assert moved["activation_backward_bias relu"] == 3 * f32 + 4 * 1024  # y, gy in; gx, bias_grad out
    assert moved["softmax_cross_entropy_forward"] == f32 + 4 * 24     # 4 rows: int64 target, 4 floats
    assert moved["softmax_cross_entropy_backward"] == 2 * f32 + 4 * 16  # int64 target, max and sum
    assert moved["sgd_update"] == 3 * f32 and moved["sgd_update momentum"] == 5 * f32
