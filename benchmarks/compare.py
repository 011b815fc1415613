"""Turn a saved pytest-benchmark JSON into a table of medians and ratios.

    pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/RUN.json
    python benchmarks/compare.py benchmarks/results/RUN.json [--markdown]

Within each group the implementations (extra_info["impl"], else guessed from the test name) are
compared: tensorgrad / numpy and tensorgrad / torch, from medians of the same run.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

IMPLS = ("tensorgrad_graph", "tensorgrad", "numpy", "torch", "cupy")


def implementation(bench: dict) -> str:
    impl = bench.get("extra_info", {}).get("impl")
    if impl:
        return impl
    name = bench["name"].lower()
    for candidate in IMPLS:
        if candidate in name:
            return candidate
    return name


def _format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.3f} ms"


def table(results: dict) -> list:
    """Rows: (group, {impl: median seconds}, ratio vs numpy, ratio vs torch, graph ratio vs torch)."""
    groups = defaultdict(dict)
    for bench in results["benchmarks"]:
        groups[bench["group"] or bench["name"]][implementation(bench)] = bench["stats"]["median"]
    rows = []
    for group in sorted(groups):
        medians = groups[group]
        ours = medians.get("tensorgrad")
        vs_numpy = ours / medians["numpy"] if ours and medians.get("numpy") else None
        vs_torch = ours / medians["torch"] if ours and medians.get("torch") else None
        graph = medians.get("tensorgrad_graph")
        graph_vs_torch = graph / medians["torch"] if graph and medians.get("torch") else None
        rows.append((group, medians, vs_numpy, vs_torch, graph_vs_torch))
    return rows


def render(results: dict) -> str:
    machine = results.get("machine_info", {})
    rows = table(results)
    graphs = any("tensorgrad_graph" in medians for _, medians, *_ in rows)
    lines = [f"machine: {machine.get('node', '?')} {machine.get('cpu', {}).get('brand_raw', '')}, "
             f"python {machine.get('python_version', '?')}; date {results.get('datetime', '?')}", "",
             "| group | tensorgrad | numpy | torch | tensorgrad ÷ numpy | tensorgrad ÷ torch |"
             + (" tensorgrad graph | graph ÷ torch |" if graphs else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if graphs else "")]
    for group, medians, vs_numpy, vs_torch, graph_vs_torch in rows:
        cells = [_format_time(medians[i]) if i in medians else "–" for i in ("tensorgrad", "numpy", "torch")]
        ratios = [f"{r:.2f}" if r is not None else "–" for r in (vs_numpy, vs_torch)]
        if graphs:
            graph = medians.get("tensorgrad_graph")
            ratios += [_format_time(graph) if graph else "–",
                       f"{graph_vs_torch:.2f}" if graph_vs_torch is not None else "–"]
        lines.append(f"| {group} | " + " | ".join(cells + ratios) + " |")
    peaks = [(b["group"], implementation(b), b["extra_info"]["peak_mib"])
             for b in results["benchmarks"] if "peak_mib" in b.get("extra_info", {})]
    if peaks:
        lines += ["", "| peak memory | implementation | MiB |", "| --- | --- | ---: |"]
        lines += [f"| {group} | {impl} | {mib} |" for group, impl, mib in sorted(peaks)]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a pytest-benchmark JSON file")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        print(render(json.load(f)))


if __name__ == "__main__":
    main()
