"""compare.py's table: ratios of medians from one run, and the CUDA-graph column only where measured."""

import compare
import pytest


def _bench(group, impl, median):
    return {"group": group, "name": f"test_{impl}", "extra_info": {"impl": impl}, "stats": {"median": median}}


def test_ratios_and_graph_column():
    results = {"benchmarks": [_bench("step W1 [cuda]", "tensorgrad", 300e-6),
                              _bench("step W1 [cuda]", "tensorgrad_graph", 50e-6),
                              _bench("step W1 [cuda]", "torch", 200e-6),
                              _bench("step W1 [cpu]", "tensorgrad", 3e-3),
                              _bench("step W1 [cpu]", "numpy", 2e-3)]}
    rows = {group: ratios for group, _, *ratios in compare.table(results)}
    assert rows["step W1 [cuda]"] == [None, pytest.approx(1.5), pytest.approx(0.25)]  # 300/200 and 50/200
    assert rows["step W1 [cpu]"] == [pytest.approx(1.5), None, None]
    lines = compare.render(results).splitlines()
    assert lines[2].endswith("| tensorgrad graph | graph ÷ torch |")
    assert "| step W1 [cuda] | 300.0 µs | – | 200.0 µs | – | 1.50 | 50.0 µs | 0.25 |" in lines


def test_no_graph_column_without_graph_results():
    results = {"benchmarks": [_bench("step W1 [cpu]", "tensorgrad", 3e-3),
                              _bench("step W1 [cpu]", "numpy", 2e-3)]}
    assert "graph" not in compare.render(results)
