"""Two checkouts of tensorgrad timed side by side in one process, round-robin, for before/after figures.

On a noisy 2-core machine, timing one tree and then the other lets a burst of load land on either.
Here both packages are imported into one process (the first one's modules renamed out of
sys.modules before the second import, so each keeps its own) and every round runs both, so drift
hits them alike. The timed paths make no lazy imports, which would resolve to the second package.

    OPENBLAS_NUM_THREADS=1 python benchmarks/ab_trees.py BEFORE_DIR AFTER_DIR [--rounds 300] [--json F]

BEFORE_DIR/AFTER_DIR are checkouts (e.g. `git worktree add /tmp/before REV`). `--toggle` instead
times the version counters alone in AFTER_DIR: the same process with their recording switched off
and on in alternate rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def load(root: str):
    """Import the tensorgrad found in `root`, moving any tensorgrad imported before out of the way."""
    for name in [m for m in sys.modules if m == "tensorgrad" or m.startswith("tensorgrad.")]:
        sys.modules["_ab_previous_" + name] = sys.modules.pop(name)
    sys.path.insert(0, root)
    try:
        import tensorgrad
    finally:
        sys.path.remove(root)
    return tensorgrad


def _chain(tg, link, leaves: int, ops: int):
    """A chain y = link(y, leaf) over (4, 4) leaves, forward + backward, timed per op."""
    tg.manual_seed(0)
    chain = [tg.randn(4, 4, requires_grad=True) for _ in range(leaves)]

    def run():
        for leaf in chain:
            leaf.grad = None
        y = chain[0]
        for leaf in chain[1:]:
            y = link(y, leaf)
        y.sum().backward()
    return run, ops


def add_chain(tg):
    """benchmarks/test_overhead.py's case: 1,000 adds of (4, 4) leaves."""
    return _chain(tg, lambda y, leaf: y + leaf, 1001, 1000)


def mul_sigmoid_chain(tg):
    """200 x (multiply, sigmoid): ops that save their operands and their output."""
    return _chain(tg, lambda y, leaf: (y * leaf).sigmoid(), 201, 400)


def mlp_step(tg, sizes, batch, activation, loss):
    """One SGD step (momentum 0.9, weight decay 1e-4) of an MLP, the workloads of workloads.py."""
    tg.manual_seed(0)
    nn, F = tg.nn, tg.nn.functional
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or loss == "mse":
            layers.append(nn.ReLU() if activation == "relu" else nn.Sigmoid())
    model = nn.Sequential(*layers)
    opt = tg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    if loss == "mse":
        y, loss_fn = tg.tensor(rng.random((batch, sizes[-1])).astype(np.float32)), F.mse_loss
    else:
        y, loss_fn = tg.tensor(rng.integers(0, sizes[-1], batch)), F.cross_entropy

    def run():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return run, 1


CASES = {
    "per-op: add chain (us/op)": add_chain,
    "per-op: mul+sigmoid chain (us/op)": mul_sigmoid_chain,
    "W1 784-128-10 relu b64 step (ms)": lambda tg: mlp_step(tg, (784, 128, 10), 64, "relu", "ce"),
    "W2 784-512-512-10 relu b256 step (ms)": lambda tg: mlp_step(tg, (784, 512, 512, 10), 256, "relu", "ce"),
    "W3 2-3-2 sigmoid mse b4 step (ms)": lambda tg: mlp_step(tg, (2, 3, 2), 4, "sigmoid", "mse"),
}


def _summary(samples: list, scale: float) -> dict:
    ordered = sorted(samples)
    return {"median": round(statistics.median(ordered) * scale, 4),
            "p10": round(ordered[len(ordered) // 10] * scale, 4)}


def interleave(runs: dict, rounds: int, scale: float, before_each=None) -> dict:
    """{label: (run, ops per run)} timed round-robin; medians and 10th percentiles per op."""
    times = {label: [] for label in runs}
    for _ in range(5):  # warm-up: buffers, momentum state
        for run, _ in runs.values():
            run()
    for _ in range(rounds):
        for label, (run, ops) in runs.items():
            if before_each is not None:
                before_each(label)
            start = time.perf_counter()
            run()
            times[label].append((time.perf_counter() - start) / ops)
    return {label: _summary(t, scale) for label, t in times.items()}


def compare_trees(before: str, after: str, rounds: int) -> dict:
    packages = {"before": load(before), "after": load(after)}
    result = {}
    for case, make in CASES.items():
        runs = {label: make(tg) for label, tg in packages.items()}
        n = rounds if "W2" not in case else max(rounds // 5, 20)
        stats = interleave(runs, n, 1e6 if "us/op" in case else 1e3)
        stats["after/before median"] = round(stats["after"]["median"] / stats["before"]["median"], 4)
        stats["after/before p10"] = round(stats["after"]["p10"] / stats["before"]["p10"], 4)
        result[case] = stats
        print(case, json.dumps(stats), flush=True)
    return result


def toggle_versions(root: str, rounds: int) -> dict:
    """The version counters' own cost: every op class's saves_inputs/saves_output switched off (nothing
    recorded, nothing checked) in alternate rounds of the same process."""
    tg = load(root)
    node_classes = [c for c in vars(tg.ops).values()
                    if isinstance(c, type) and issubclass(c, tg.autograd.Node)]
    own = {c: {k: c.__dict__[k] for k in ("saves_inputs", "saves_output") if k in c.__dict__}
           for c in node_classes}

    def switch(label):
        for cls, attrs in own.items():
            for key in ("saves_inputs", "saves_output"):
                if label == "with versions":
                    if key in attrs:
                        setattr(cls, key, attrs[key])
                    elif key in cls.__dict__:
                        delattr(cls, key)
                elif not isinstance(cls.__dict__.get(key), property):
                    setattr(cls, key, False)
    result = {}
    for case, make in CASES.items():
        run = make(tg)
        runs = {"without versions": run, "with versions": run}
        n = rounds if "W2" not in case else max(rounds // 5, 20)
        stats = interleave(runs, n, 1e6 if "us/op" in case else 1e3, before_each=switch)
        switch("with versions")
        stats["with/without median"] = round(stats["with versions"]["median"]
                                             / stats["without versions"]["median"], 4)
        result[case] = stats
        print(case, json.dumps(stats), flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="checkout timed as 'before' (ignored with --toggle)")
    parser.add_argument("after", help="checkout timed as 'after'")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--toggle", action="store_true", help="time the version counters alone in AFTER")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    result = (toggle_versions(args.after, args.rounds) if args.toggle
              else compare_trees(args.before, args.after, args.rounds))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
