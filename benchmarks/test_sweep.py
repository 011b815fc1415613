"""sweep.py in seconds: its GEMM list, its thread environment, its interleaving, its tables and plot, and
one real run of a child process per thread setting (a few W3 steps), so CI keeps the script alive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sweep

HERE = Path(__file__).resolve().parent


def test_gemm_shapes_of_w1_are_the_step_products():
    # 784-128-10 at batch 64: forward x @ W.T per layer, dW = g.T @ x per layer, dx = g @ W above layer 0
    shapes = [(m_k, k_n) for _, m_k, k_n, _, _ in sweep.gemm_shapes((784, 128, 10), 64)]
    assert shapes == [((64, 784), (784, 128)), ((128, 64), (64, 784)),
                      ((64, 128), (128, 10)), ((10, 64), (64, 128)), ((64, 10), (10, 128))]
    by_hand = 2 * (64 * 784 * 128 + 128 * 64 * 784 + 64 * 128 * 10 + 10 * 64 * 128 + 64 * 10 * 128)
    assert sweep.gemm_flops(sweep.gemm_shapes((784, 128, 10), 64)) == by_hand


def test_gemm_runs_compute_the_same_products_in_both_libraries():
    torch = pytest.importorskip("torch")
    runs = sweep.gemm_runs((7, 5, 3), 4, torch)
    ours, theirs = runs["numpy"](), runs["torch"]()
    shapes = sweep.gemm_shapes((7, 5, 3), 4)
    assert [p.shape for p in ours] == [(m_k[0], k_n[1]) for _, m_k, k_n, _, _ in shapes]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


def test_thread_env_sets_every_pool_and_keeps_the_rest():
    env = sweep.thread_env(3, {"PATH": "/bin", "OMP_NUM_THREADS": "1"})
    assert env == {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3",
                   "MKL_NUM_THREADS": "3", "NUMBA_NUM_THREADS": "3"}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="thread_env"):
            sweep.thread_env(bad, {})


def test_interleave_alternates_one_call_at_one_thread():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = sweep.interleave(runs, threads=1, budget_s=10.0, max_samples=7, warmup=0)
    assert [len(t) for t in times.values()] == [7, 7]
    assert calls == ["a", "b"] * 8  # one timing call each, then 7 rounds of one call each


def test_interleave_runs_blocks_after_a_pause_with_threads(monkeypatch):
    monkeypatch.setattr(sweep, "POOL_PAUSE_S", 0.0005)
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = sweep.interleave(runs, threads=2, budget_s=0.5, max_samples=100, min_samples=5, warmup=0)
    block = 50  # the calls take microseconds, so a block is as long as allowed
    assert len(times["a"]) == len(times["b"]) == 100 // block * block
    round_calls = calls[2:2 + 2 * (block + 1)]  # each block: one untimed waking call, then the block
    assert round_calls == ["a"] * (block + 1) + ["b"] * (block + 1)


def _entry(ms: float) -> dict:
    return {"median_s": ms / 1e3, "p10_s": ms / 1e3, "rounds": 9}


def _fake_runs() -> list:
    w1 = {"workload": "W1", "label": "W1 test", "tensorgrad": _entry(0.9), "numpy": _entry(0.6),
          "torch": _entry(1.2), "gemm_numpy": _entry(0.4), "gemm_torch": _entry(0.3)}
    w2 = {"workload": "W2", "label": "W2 test", "tensorgrad": _entry(11.0), "numpy": _entry(10.0),
          "torch": _entry(10.0), "gemm_numpy": _entry(9.0), "gemm_torch": _entry(7.0)}
    sweep_rows = [{"batch": b, "tensorgrad": _entry(b * 0.05), "numpy": _entry(b * 0.04),
                   "torch": _entry(b * 0.1)} for b in (16, 64)]
    return [{"threads": 1, "steps": [w1, w2], "sweep": sweep_rows},
            {"threads": 2, "steps": [w1], "sweep": sweep_rows}]


def test_tables_give_the_ratios_and_verdicts():
    lines = sweep.step_table(_fake_runs())
    w1, w2 = lines[2], lines[3]
    assert "| 0.900 ms | 0.600 ms | 1.200 ms | 1.500 | **0.750** | ≤ 0.8 × PyTorch: met |" in w1
    assert "**1.100** | ≤ 1.0 × PyTorch: not met; ≤ 1.0 × NumPy: not met |" in w2
    assert "NumPy" not in lines[4].split("|")[-2]  # the NumPy target is a one-thread target
    sweep_lines = sweep.sweep_table(_fake_runs())
    assert sweep_lines[2] == "| 16 | 1 | 50.00 | 40.00 | 100.00 | 0.50 |"


def test_gap_rows_split_a_step():
    gap = sweep.gap_rows(_fake_runs())[1]  # W2 at one thread: 11 = 9 (GEMM) + 1 (memory) + 1 (overhead)
    assert gap["workload"] == "W2" and gap["threads"] == 1
    assert gap["numpy_gemm_s"] == pytest.approx(9e-3)
    assert gap["memory_traffic_s"] == pytest.approx(1e-3)
    assert gap["framework_overhead_s"] == pytest.approx(1e-3)
    assert gap["torch_rest_s"] == pytest.approx(3e-3)
    assert gap["tensorgrad_with_torch_gemm_s"] == pytest.approx(9e-3)


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    assert sweep.plot_sweep(_fake_runs(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not sweep.plot_sweep([{"threads": 1, "steps": []}], tmp_path / "none.png")


def test_each_thread_setting_runs_in_its_own_process(tmp_path):
    """The real script, W3 only, a handful of steps, at 2 threads (the one-thread path is the same code with
    another number): the child sees that thread count in every pool it can report."""
    out = tmp_path / "run.json"
    subprocess.run([sys.executable, str(HERE / "sweep.py"), "--quick", "--only", "steps", "--workloads", "W3",
                    "--threads", "2", "--rounds", "5", "--budget", "0.01", "--json", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    record = json.loads(out.read_text())
    assert [run["threads"] for run in record["runs"]] == [2]
    for run in record["runs"]:
        assert run["environment"]["thread_variables"]["OPENBLAS_NUM_THREADS"] == str(run["threads"])
        if "torch_threads" in run["environment"]:
            assert run["environment"]["torch_threads"] == run["threads"]
        (w3,) = run["steps"]
        assert w3["workload"] == "W3" and w3["tensorgrad"]["rounds"] >= 5
        assert 0 < w3["tensorgrad"]["p10_s"] <= w3["tensorgrad"]["median_s"]
