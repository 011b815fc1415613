"""Draw two computational graphs from the backpropagation lecture, with every node's value and gradient.

1. The logistic gate f = 1/(1+exp(-(w0*x0 + w1*x1 + w2))) at w = [2, -3, -3], x = [-1, -2], built
   gate by gate as the lecture draws it (mul, mul, add, add, neg, exp, add 1, divide 1 by). After one
   backward pass each node shows its forward value (f = 0.73 at the output) and the gradient that
   reached it (0.20 flowing into the sum; -0.20, -0.39, 0.20 at w0, w1, w2; -0.59 at x1).
2. The 2-2-1 sigmoid network with binary cross-entropy: x = [0.5, 0.1], hidden W = [[0.2, 0.4],
   [0.3, 0.7]], b = [0.1, 0.2], output W = [[0.6, 0.9]], b = [0.3], target 1, written with tensor
   ops (matmul, +, sigmoid, log), so every matrix and its gradient appears on the page.

Both are drawn top to bottom (inputs at the top, the output at the bottom) so that they fit a page:
about 520 x 640 and 580 x 1,060 pixels as PNG, where left to right they were 1,257 and 2,755 pixels
wide. Each matrix is written one row per line, constant operands appear in their op's box ('const 1
(left)' in the gate's 1 / (1 + e)), and the zero gradients of the network's (1 - target) branch print
as 0, not -0. The drawings are written (logistic_gate.svg, two_layer_network.svg, or .png/.pdf with
--format) into --out (default: the current folder) when Graphviz's `dot` program is installed, and
printed as text trees either way.

    python examples/computational_graph.py [--out DIR] [--format svg|png|pdf]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

try:
    import tensorgrad as tg
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import tensorgrad as tg


def logistic_gate() -> tg.Tensor:
    """The lecture's sigmoid neuron as separate gates, after backward; returns the output f."""
    w0 = tg.tensor(2.0, requires_grad=True, name="w0")
    x0 = tg.tensor(-1.0, requires_grad=True, name="x0")
    w1 = tg.tensor(-3.0, requires_grad=True, name="w1")
    x1 = tg.tensor(-2.0, requires_grad=True, name="x1")
    w2 = tg.tensor(-3.0, requires_grad=True, name="w2")
    f = 1.0 / (1.0 + (-(w0 * x0 + w1 * x1 + w2)).exp())
    f.name = "f"
    # retain_graph keeps every node's value and gradient for the drawing
    f.backward(retain_graph=True)
    return f


def two_layer_network() -> tg.Tensor:
    """The 2-2-1 sigmoid network with binary cross-entropy at target 1, after backward; returns the loss."""
    x = tg.tensor([0.5, 0.1], requires_grad=True, name="x")
    w_hidden = tg.tensor([[0.2, 0.4], [0.3, 0.7]], requires_grad=True, name="W1")
    b_hidden = tg.tensor([0.1, 0.2], requires_grad=True, name="b1")
    w_out = tg.tensor([[0.6, 0.9]], requires_grad=True, name="W2")
    b_out = tg.tensor([0.3], requires_grad=True, name="b2")
    target = 1.0
    hidden = (w_hidden @ x + b_hidden).sigmoid()
    y = (w_out @ hidden + b_out).sigmoid()
    # Both terms of the cross-entropy are built even though (1 - target) is 0 here, so the graph is
    # the one a training step records for any target.
    loss = -(target * y.log() + (1.0 - target) * (1.0 - y).log()).sum()
    loss.name = "loss"
    loss.backward(retain_graph=True)
    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                        help="folder for the drawings (default: the current folder)")
    parser.add_argument("--format", choices=("svg", "png", "pdf"), default="svg",
                        help="file format of the drawings (default: svg)")
    args = parser.parse_args(argv)

    graphs = [("logistic_gate", "Logistic gate f = 1/(1+exp(-(w0*x0 + w1*x1 + w2)))", logistic_gate()),
              ("two_layer_network", "2-2-1 sigmoid network, binary cross-entropy, target 1",
               two_layer_network())]
    has_dot = shutil.which("dot") is not None
    if has_dot:
        args.out.mkdir(parents=True, exist_ok=True)
    for stem, title, root in graphs:
        print(f"{title}\n")
        tg.viz.print_graph(root)
        if has_dot:
            path = tg.viz.render(root, args.out / f"{stem}.{args.format}")
            print(f"\nwrote {path}\n")
        else:
            print()
    if not has_dot:
        print("Graphviz's `dot` program is not installed, so no drawings were written. Install it with "
              "`apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
