"""Tests for tg.viz: the drawn graph carries the lecture's numbers, derived here in closed form."""

from __future__ import annotations

import html
import math
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import viz

REPO = pathlib.Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

# The lecture's logistic gate at w = [2, -3, -3], x = [-1, -2], in float64 closed form.
W0, W1, W2 = 2.0, -3.0, -3.0
X0, X1 = -1.0, -2.0
S = W0 * X0 + W1 * X1 + W2  # 1
F = 1.0 / (1.0 + math.exp(-S))  # 0.7311
DS = F * (1.0 - F)  # df/ds = 0.1966
FREED = "value freed; use backward(retain_graph=True)"


def num(v: float) -> str:
    """How the labels write a number of moderate size: 4 significant digits."""
    return f"{v:.4g}"


def parse_dot(source: str):
    """{node id: [header, line, ...]} from the HTML-like labels, and the edges in order of appearance."""
    nodes, edges = {}, []
    for line in source.splitlines():
        m = re.fullmatch(r"\s*(n\d+) \[label=<(.*)>(?:, [^<>]*)?\];", line)
        if m:
            parts = m.group(2).split("<br/>")
            nodes[m.group(1)] = [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in parts]
            continue
        m = re.fullmatch(r"\s*(n\d+) -> (n\d+);", line)
        if m:
            edges.append((m.group(1), m.group(2)))
    return nodes, edges


def ids_with_header(nodes, header):
    return [i for i, lines in nodes.items() if lines[0] == header]


def one(nodes, header):
    (i,) = ids_with_header(nodes, header)
    return i


def gate(form="explicit", backward="retain"):
    """The logistic gate from named 0-d leaves that all require grad; returns (f, leaves by name)."""
    leaves = {name: tg.tensor(v, requires_grad=True, name=name)
              for name, v in (("w0", W0), ("x0", X0), ("w1", W1), ("x1", X1), ("w2", W2))}
    s = leaves["w0"] * leaves["x0"] + leaves["w1"] * leaves["x1"] + leaves["w2"]
    f = s.sigmoid() if form == "sigmoid" else 1.0 / (1.0 + (-s).exp())
    if backward == "retain":
        f.backward(retain_graph=True)
    elif backward == "plain":
        f.backward()
    return f, leaves


def test_logistic_gate_labels_carry_the_lectures_values_and_gradients():
    f, _ = gate("sigmoid")
    nodes, edges = parse_dot(viz.to_dot(f))

    out = one(nodes, "sigmoid")
    assert nodes[out][1:] == [f"value {num(F)}", "grad 1"]  # 0.7311, seeded with 1
    assert num(F) == "0.7311"

    # the sum s = (w0*x0 + w1*x1) + w2 is the add that consumes w2
    (total,) = [b for a, b in edges if a == one(nodes, "w2")]
    assert nodes[total] == ["add", f"value {num(S)}", f"grad {num(DS)}"]
    assert num(DS) == "0.1966"

    expected = {"w0": (W0, X0 * DS), "w1": (W1, X1 * DS), "w2": (W2, DS),
                "x0": (X0, W0 * DS), "x1": (X1, W1 * DS)}
    for name, (value, grad) in expected.items():
        assert nodes[one(nodes, name)][1:] == [f"value {num(value)}", f"grad {num(grad)}"], name
    assert [num(expected[n][1]) for n in ("w0", "w1", "w2")] == ["-0.1966", "-0.3932", "0.1966"]


def test_logistic_gate_node_and_edge_counts_match_the_expression():
    f, _ = gate("sigmoid")
    nodes, edges = parse_dot(viz.to_dot(f))
    # w0*x0 + w1*x1 + w2 -> sigmoid: ops mul, mul, add, add, sigmoid; leaves w0, x0, w1, x1, w2
    headers = sorted(lines[0] for lines in nodes.values())
    assert headers == sorted(["mul", "mul", "add", "add", "sigmoid", "w0", "x0", "w1", "x1", "w2"])
    # every op has two tensor operands except sigmoid: 2 + 2 + 2 + 2 + 1
    assert len(edges) == 9
    head = {i: lines[0] for i, lines in nodes.items()}
    named = {(head[a], head[b]) for a, b in edges}
    assert {("w0", "mul"), ("x0", "mul"), ("w1", "mul"), ("x1", "mul"), ("w2", "add"),
            ("add", "sigmoid")} <= named


def test_explicit_gate_chain_shows_every_gate_of_the_lecture():
    f, _ = gate("explicit")
    f.name = "f"
    nodes, edges = parse_dot(viz.to_dot(f))
    # ops: mul, mul, add, add, neg, exp, add (1 + .), div (1 / .): 8; leaves: 5
    assert len(nodes) == 13
    # the two constants (the 1s) are lines of their ops, not nodes: 2 + 2 + 2 + 2 + 1 + 1 + 1 + 1
    assert len(edges) == 12

    e = math.exp(-S)
    d_denominator = -1.0 / (1.0 + e) ** 2  # d(1/u)/du at u = 1 + e
    chain = [("neg", -S, d_denominator * e),  # df/d(-s): through exp, whose derivative is e
             ("exp", e, d_denominator),
             ("add", 1.0 + e, d_denominator)]
    head = {i: lines[0] for i, lines in nodes.items()}
    root = one(nodes, "f = div")
    assert nodes[root][1:] == [f"value {num(F)}", "grad 1", "const 1 (left)"]  # 1 / (1 + e)
    # walk back from the root along the single-operand gates
    walk, node = [], root
    for _ in range(3):
        (node,) = [a for a, b in edges if b == node]
        walk.append(node)
    assert [head[i] for i in walk] == ["add", "exp", "neg"]
    for i, (name, value, grad) in zip(walk, reversed(chain)):
        assert nodes[i][0] == name
        assert nodes[i][1:3] == [f"value {num(value)}", f"grad {num(grad)}"]
    assert nodes[walk[0]][3] == "const 1 (left)"  # 1 + e
    assert num(d_denominator) == "-0.5344"
    assert nodes[one(nodes, "w1")][2] == f"grad {num(X1 * DS)}"


def test_ids_are_topological_with_the_root_last():
    f, _ = gate("explicit")
    nodes, edges = parse_dot(viz.to_dot(f))
    order = {i: int(i[1:]) for i in nodes}
    assert sorted(order.values()) == list(range(len(nodes)))
    assert all(order[a] < order[b] for a, b in edges)
    root = max(nodes, key=order.get)
    assert nodes[root][0] == "div"
    assert not [a for a, _ in edges if a == root]


def test_output_is_identical_across_builds_and_processes():
    first = viz.to_dot(gate("explicit")[0])
    second = viz.to_dot(gate("explicit")[0])
    assert first == second
    assert viz.format_graph(gate("explicit")[0]) == viz.format_graph(gate("explicit")[0])

    script = ("import tensorgrad as tg\n"
              "w0 = tg.tensor(2.0, requires_grad=True, name='w0')\n"
              "x0 = tg.tensor(-1.0, requires_grad=True, name='x0')\n"
              "w1 = tg.tensor(-3.0, requires_grad=True, name='w1')\n"
              "x1 = tg.tensor(-2.0, requires_grad=True, name='x1')\n"
              "w2 = tg.tensor(-3.0, requires_grad=True, name='w2')\n"
              "f = 1.0 / (1.0 + (-(w0 * x0 + w1 * x1 + w2)).exp())\n"
              "f.backward(retain_graph=True)\n"
              "print(tg.viz.to_dot(f), end='')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="12345")
    other = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert other == first


def text_lines(text):
    """{node id: the parts of its first (full) line}, and the ids referred to as shown above."""
    full, references = {}, []
    for line in text.splitlines():
        m = re.search(r"\[(n\d+)\] (.*)$", line)
        assert m, line
        if m.group(2).endswith(" (shown above)"):
            references.append(m.group(1))
        else:
            assert m.group(1) not in full
            full[m.group(1)] = m.group(2).split("  ")
    return full, references


def test_print_graph_shows_the_same_numbers(capsys):
    f, _ = gate("explicit")
    nodes, _ = parse_dot(viz.to_dot(f))
    viz.print_graph(f)
    printed = capsys.readouterr().out
    assert printed == viz.format_graph(f)
    full, references = text_lines(printed)
    assert full == nodes
    assert references == []
    lines = printed.splitlines()
    assert lines[0] == f"[{one(nodes, 'div')}] div  value {num(F)}  grad 1  const 1 (left)"
    w0_line = next(line for line in lines if "] w0 " in line)
    assert w0_line.endswith(f"w0  value 2  grad {num(X0 * DS)}")
    # indentation grows with the distance from the root: div, add, exp, neg, add, add, mul, w0
    assert w0_line.index("[") == 4 * 7


def test_text_tree_prints_a_shared_node_once_and_refers_to_it_after():
    w = tg.tensor(3.0, requires_grad=True, name="w")
    y = w * w + w
    y.backward(retain_graph=True)
    nodes, edges = parse_dot(viz.to_dot(y))
    w_id = one(nodes, "w")
    assert [b for a, b in edges if a == w_id] == [one(nodes, "mul")] * 2 + [one(nodes, "add")]
    assert nodes[w_id][2] == f"grad {num(2 * 3.0 + 1)}"
    full, references = text_lines(viz.format_graph(y))
    assert full == nodes
    assert references == [w_id, w_id]


def test_named_intermediate_tensors_label_their_nodes(capsys):
    # the lecture's first circuit, f = (x + y) * z, with q = x + y named in between
    x, y, z = (tg.tensor(v, requires_grad=True, name=n) for v, n in ((-2.0, "x"), (5.0, "y"), (-4.0, "z")))
    q = x + y
    q.name = "q"
    f = q * z
    f.name = "f"
    f.backward(retain_graph=True)
    viz.print_graph(f)
    lines = capsys.readouterr().out.splitlines()
    # q = 3, f = -12; df/dq = z = -4 reaches x and y, df/dz = q = 3
    assert lines[0].endswith("f = mul  value -12  grad 1")
    assert "q = add  value 3  grad -4" in lines[1]
    assert lines[2].endswith("x  value -2  grad -4") and lines[3].endswith("y  value 5  grad -4")
    assert lines[4].endswith("z  value -4  grad 3")
    assert "<b>q = add</b>" in viz.to_dot(f)


def test_naming_a_tensor_later_or_outside_a_graph():
    a = tg.tensor([1.0, 2.0], requires_grad=True)
    b = (a * 2).sum()
    assert viz.to_dot(b).count(" = ") == 0  # nothing named yet
    b.name = "loss"
    assert "<b>loss = sum</b>" in viz.to_dot(b)
    with tg.no_grad():
        c = a * 3
    c.name = "c"  # no node to label: a constant
    assert c.name == "c" and c.grad_fn is None


def test_edges_keep_operand_order():
    a = tg.tensor(1.0, requires_grad=True, name="a")
    b = tg.tensor(2.0, requires_grad=True, name="b")
    for first, second in ((a, b), (b, a)):
        nodes, edges = parse_dot(viz.to_dot(first - second))
        head = {i: lines[0] for i, lines in nodes.items()}
        assert [head[x] for x, _ in edges] == [first.name, second.name]


def test_values_freed_by_a_plain_backward_are_reported():
    f, _ = gate("explicit", backward="plain")
    nodes, _ = parse_dot(viz.to_dot(f))
    leaves = {"w0", "x0", "w1", "x1", "w2"}
    for lines in nodes.values():
        if lines[0] in leaves:
            continue
        # shape and dtype survive, and so do scalar constants; no value or gradient line is left
        freed = ["shape () float32", FREED]
        assert lines[1:] in (freed, freed + ["const 1 (left)"]), lines
    # leaves keep their data and receive .grad either way
    assert nodes[one(nodes, "w0")][1:] == [f"value {num(W0)}", f"grad {num(X0 * DS)}"]
    assert viz.format_graph(f).count(FREED) == 8


def test_before_backward_values_show_and_gradients_do_not():
    f, _ = gate("sigmoid", backward=None)
    nodes, _ = parse_dot(viz.to_dot(f))
    assert nodes[one(nodes, "sigmoid")][1:] == [f"value {num(F)}"]
    assert not any(line.startswith("grad") for lines in nodes.values() for line in lines)


def test_show_selects_the_lines():
    f, _ = gate("explicit")
    only_values, _ = parse_dot(viz.to_dot(f, show=("value",)))
    assert all(lines[1].startswith("value ") and lines[2:] in ([], ["const 1 (left)"])
               for lines in only_values.values())
    only_grads, _ = parse_dot(viz.to_dot(f, show="grad"))
    assert all(lines[1].startswith("grad ") and lines[2:] in ([], ["const 1 (left)"])
               for lines in only_grads.values())
    bare, _ = parse_dot(viz.to_dot(f, show=()))
    assert all(lines[1:] in ([], ["const 1 (left)"]) for lines in bare.values())
    with pytest.raises(ValueError, match="'values'"):
        viz.to_dot(f, show=("values",))


def test_large_tensors_show_shape_and_first_values_and_small_ones_every_value():
    a = tg.tensor(np.arange(12, dtype=np.float64).reshape(3, 4), requires_grad=True)
    six = tg.tensor([[1.5, 2.0, 2.5], [3.0, 3.5, 4.0]], requires_grad=True, name="six")
    seven = tg.tensor(np.arange(7, dtype=np.float64) - 3.0, requires_grad=True, name="seven")
    y = (a * 2.0).sum() + (six * 1.0).sum() + (seven * seven).sum()
    y.backward(retain_graph=True)
    nodes, _ = parse_dot(viz.to_dot(y))
    leaf = one(nodes, "leaf (3, 4)")
    # row-major first three of arange(12) and of its gradient d(sum 2a)/da = 2
    assert nodes[leaf][1:] == ["value (3, 4) [0, 1, 2, …]", "grad (3, 4) [2, 2, 2, …]"]
    assert ["mul", "value (3, 4) [0, 2, 4, …]", "grad (3, 4) [1, 1, 1, …]", "const 2"] in nodes.values()
    # six elements are written out in full; seven are truncated (gradient 2 * seven: -6, -4, -2, ...)
    assert nodes[one(nodes, "six")][1:] == ["value [[1.5, 2, 2.5], [3, 3.5, 4]]",
                                            "grad [[1, 1, 1], [1, 1, 1]]"]
    assert nodes[one(nodes, "seven")][1:] == ["value (7,) [-3, -2, -1, …]", "grad (7,) [-6, -4, -2, …]"]
    assert viz.format_array(np.zeros((2, 0))) == "(2, 0) empty"


def test_constants_are_drawn_with_their_values():
    x = tg.tensor(3.0, requires_grad=True, name="x")
    y = x * 2.0 + 1.0
    y.backward(retain_graph=True)
    nodes, edges = parse_dot(viz.to_dot(y))
    assert nodes[one(nodes, "mul")] == ["mul", "value 6", "grad 1", "const 2"]
    assert nodes[one(nodes, "add")] == ["add", "value 7", "grad 1", "const 1"]
    assert len(edges) == 2  # x -> mul -> add: constants are lines, not nodes
    assert "mul  value 6  grad 1  const 2" in viz.format_graph(y)

    # the side of a constant is named where it is the first operand: 1 / x, 10 - x
    nodes, _ = parse_dot(viz.to_dot(1.0 / x))
    assert nodes[one(nodes, "div")][1:] == [f"value {num(1 / 3)}", "const 1 (left)"]
    nodes, _ = parse_dot(viz.to_dot(10 - x))
    assert nodes[one(nodes, "sub")][-1] == "const 10 (left)"

    # tensors without requires_grad are constants too: small ones with every value; a large one with
    # its shape and first values while the graph holds it, only its shape and dtype after backward
    small = tg.tensor([0.5, -1.0], dtype=tg.float64)
    nodes, _ = parse_dot(viz.to_dot(x * small))
    assert nodes[one(nodes, "mul")][-1] == "const [0.5, -1]"
    large = tg.tensor(np.arange(8, dtype=np.float64) + 10.0)
    z = (x + large).sum()
    nodes, _ = parse_dot(viz.to_dot(z))
    assert nodes[one(nodes, "add")][-1] == "const (8,) [10, 11, 12, …]"
    z.backward()
    nodes, _ = parse_dot(viz.to_dot(z))
    assert nodes[one(nodes, "add")][1:] == ["shape (8,) float64", FREED, "const (8,) float64"]


def test_negative_zero_prints_as_zero():
    assert viz.format_number(-0.0) == "0" and viz.format_number(np.float32(-0.0)) == "0"
    assert viz.format_array(np.array([-0.0, -1.5])) == "[0, -1.5]"
    x = tg.tensor(0.0, requires_grad=True, name="x", dtype=tg.float64)
    neg = -x
    product = neg * 2.0
    assert np.signbit(neg.data) and np.signbit(product.data)  # both are -0.0
    product.backward(retain_graph=True)
    nodes, _ = parse_dot(viz.to_dot(product))
    assert nodes[one(nodes, "neg")][1] == "value 0"  # -0.0, see the signbit above
    assert "-0" not in viz.to_dot(product) and "-0" not in viz.format_graph(product)
    # a gradient of -0.0: d(0 * x)/dx through a negative-zero factor
    w = tg.tensor(1.0, requires_grad=True, name="w", dtype=tg.float64)
    (w * -0.0).backward()
    assert np.signbit(w.grad.data)
    assert parse_dot(viz.to_dot(w))[0]["n0"] == ["w", "value 1", "grad 0"]


def test_two_layer_network_is_laid_out_top_to_bottom_with_its_constants():
    source = viz.to_dot(network())
    assert "rankdir=TB" in source and "rankdir=LR" not in source
    nodes, _ = parse_dot(source)
    consts = sorted(line for lines in nodes.values() for line in lines if line.startswith("const"))
    # 1.0 * log(y), (1.0 - 1.0) * log(1 - y), 1 - y: the Python scalars 1, 0 and 1
    assert consts == ["const 0 (left)", "const 1 (left)", "const 1 (left)"]
    # a 2 x 2 matrix is drawn one row per line (the break is inside the value's line)
    assert 'value [[0.2, 0.4],<br align="center"/> [0.3, 0.7]]' in source
    # the target is 1, so the (1 - target) branch carries zero gradients: 0, never -0
    assert "[-0]" not in source and "grad [0]" in source


def test_format_number():
    assert viz.format_number(0.7310585786300049) == "0.7311"
    assert viz.format_number(-2.0) == "-2"
    assert viz.format_number(12345.6) == "1.235e4"
    assert viz.format_number(1e-5) == "1e-5"
    assert viz.format_number(float("nan")) == "nan"
    assert viz.format_number(np.float32(-np.inf)) == "-inf"
    assert viz.format_number(np.int64(7)) == "7"
    assert viz.format_number(np.bool_(True)) == "True"
    assert viz.format_number(1 / 3, precision=2) == "0.33"


def test_labels_are_escaped_for_dot():
    x = tg.tensor(1.0, requires_grad=True, name='a<b & "c">\nd')
    y = x * 2.0
    y.name = "<out>"
    source = viz.to_dot(y)
    assert '<b>a&lt;b &amp; &quot;c&quot;&gt;<br/>d</b>' in source
    assert "<b>&lt;out&gt; = mul</b>" in source
    nodes, _ = parse_dot(source)
    assert nodes["n0"][:2] == ['a<b & "c">', "d"]
    if shutil.which("dot") is not None:
        svg = ET.fromstring(viz.draw(y).svg())
        texts = [t.text for t in svg.iter() if t.tag.endswith("text")]
        assert 'a<b & "c">' in texts and "<out> = mul" in texts


def test_deep_chain_converts_without_recursion():
    x = tg.tensor(1.0, requires_grad=True, name="x")
    y = x
    for _ in range(10_000):
        y = y + 1.0
    y.backward()
    nodes, edges = parse_dot(viz.to_dot(y))
    assert len(nodes) == 10_001 and len(edges) == 10_000
    assert nodes["n10000"][1:] == ["shape () float32", FREED, "const 1"]
    text = viz.format_graph(y)
    lines = text.splitlines()
    assert len(lines) == 10_001
    # indentation stops growing past a fixed depth, so the text stays linear in the graph's size
    assert max(map(len, lines)) < 400
    assert lines[-1].endswith("[n0] x  value 1  grad 1")
    assert "(depth 10000)" in lines[-1]


def test_root_may_be_a_leaf_and_must_be_a_tensor():
    v = tg.tensor([1.0, 2.0], requires_grad=True)
    nodes, edges = parse_dot(viz.to_dot(v))
    assert nodes == {"n0": ["leaf (2,)", "value [1, 2]"]} and edges == []
    with pytest.raises(TypeError, match="Tensor"):
        viz.to_dot(np.ones(2))


def network(dtype=tg.float64):
    x = tg.tensor([0.5, 0.1], requires_grad=True, name="x", dtype=dtype)
    w1 = tg.tensor([[0.2, 0.4], [0.3, 0.7]], requires_grad=True, name="W1", dtype=dtype)
    b1 = tg.tensor([0.1, 0.2], requires_grad=True, name="b1", dtype=dtype)
    w2 = tg.tensor([[0.6, 0.9]], requires_grad=True, name="W2", dtype=dtype)
    b2 = tg.tensor([0.3], requires_grad=True, name="b2", dtype=dtype)
    y = (w2 @ (w1 @ x + b1).sigmoid() + b2).sigmoid()
    loss = -(1.0 * y.log() + (1.0 - 1.0) * (1.0 - y).log()).sum()
    loss.backward(retain_graph=True)
    return loss


def numbers(line: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)])


def test_two_layer_network_gradients_match_hand_backprop():
    nodes, _ = parse_dot(viz.to_dot(network()))
    x = np.array([0.5, 0.1])
    w1, b1 = np.array([[0.2, 0.4], [0.3, 0.7]]), np.array([0.1, 0.2])
    w2, b2 = np.array([[0.6, 0.9]]), np.array([0.3])
    h = 1 / (1 + np.exp(-(w1 @ x + b1)))
    y = 1 / (1 + np.exp(-(w2 @ h + b2)))
    dz2 = y - 1.0  # BCE after a sigmoid, target 1
    dz1 = (w2.T @ dz2) * h * (1 - h)
    expected = {"W1": np.outer(dz1, x), "b1": dz1, "W2": np.outer(dz2, h), "b2": dz2, "x": w1.T @ dz1}
    for name, grad in expected.items():
        value_line, grad_line = nodes[one(nodes, name)][1:]
        assert grad_line.startswith("grad [")
        np.testing.assert_allclose(numbers(grad_line), grad.ravel(), rtol=5e-4, err_msg=name)
    root = one(nodes, "neg")
    np.testing.assert_allclose(numbers(nodes[root][1]), -np.log(y), rtol=5e-4)


@needs_dot
@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_render_writes_a_valid_file(tmp_path, suffix):
    f, _ = gate("explicit")
    path = tmp_path / f"graph.{suffix}"
    assert viz.render(f, path) == path
    data = path.read_bytes()
    if suffix == "svg":
        root = ET.fromstring(data)
        assert root.tag.rsplit("}", 1)[-1] == "svg"
        texts = [t.text for t in root.iter() if t.tag.endswith("text")]
        assert f"value {num(F)}" in texts and f"grad {num(DS)}" in texts
    elif suffix == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert data.startswith(b"%PDF")
    # the temporary file was renamed onto the target, nothing else is left
    assert os.listdir(tmp_path) == [path.name]


def png_size(path) -> tuple:
    """(width, height) in pixels from a PNG's IHDR chunk, which always comes first."""
    data = pathlib.Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@needs_dot
def test_lecture_graphs_fit_a_page(tmp_path):
    # laid out left to right, the network was 2,755 x 198 px and the gate 1,257 x 301 px at dot's 96 dpi
    network_width, network_height = png_size(viz.render(network(), tmp_path / "network.png"))
    assert network_width <= 800 and network_height <= 1400
    gate_width, _ = png_size(viz.render(gate("explicit")[0], tmp_path / "gate.png"))
    assert gate_width <= 800


@needs_dot
def test_graph_object_for_jupyter(tmp_path):
    f, _ = gate("explicit")
    graph = viz.draw(f)
    assert graph.source == viz.to_dot(f)
    assert repr(graph) == viz.format_graph(f)
    svg = ET.fromstring(graph._repr_svg_())
    assert svg.tag.endswith("svg")
    assert graph.render(tmp_path / "g.svg").read_bytes().startswith(b"<?xml")
    # a snapshot: a later backward that frees the graph does not change it
    f.backward()
    assert graph.source != viz.to_dot(f) and FREED in viz.to_dot(f)
    assert viz.render(graph, tmp_path / "again.svg").read_text() == (tmp_path / "g.svg").read_text()


def test_missing_dot_names_the_install_commands(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    f, _ = gate("explicit")
    target = tmp_path / "graph.svg"
    target.write_text("older drawing")
    with pytest.raises(RuntimeError) as info:
        viz.render(f, target)
    message = str(info.value)
    for command in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert command in message
    assert target.read_text() == "older drawing"
    assert sorted(os.listdir(tmp_path)) == ["empty", "graph.svg"]
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        viz.draw(f).svg()
    # Jupyter falls back to the text form; the DOT text needs no Graphviz
    graph = viz.draw(f)
    assert graph._repr_svg_() is None
    assert repr(graph) == viz.format_graph(f)
    viz.render(f, tmp_path / "graph.dot")
    assert (tmp_path / "graph.dot").read_text() == viz.to_dot(f)


def test_render_rejects_an_unknown_format(tmp_path):
    f, _ = gate("explicit")
    with pytest.raises(ValueError, match=r"\.svg"):
        viz.render(f, tmp_path / "graph.jpeg2000")
    assert os.listdir(tmp_path) == []


def run_example(tmp_path, path_env):
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=path_env)
    return subprocess.run([sys.executable, str(REPO / "examples" / "computational_graph.py"),
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_example_prints_both_graphs_without_dot(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_example(tmp_path, str(empty))
    assert f"f = div  value {num(F)}  grad 1" in out
    assert f"w1  value -3  grad {num(X1 * DS)}" in out
    assert "loss = neg" in out and "] W1  value [[0.2, 0.4], [0.3, 0.7]]" in out
    assert "apt-get install graphviz" in out
    assert not (tmp_path / "out").exists()


@needs_dot
def test_example_writes_the_svgs(tmp_path):
    out = run_example(tmp_path, os.environ.get("PATH", ""))
    assert f"value {num(F)}" in out
    for name in ("logistic_gate.svg", "two_layer_network.svg"):
        assert ET.parse(tmp_path / "out" / name).getroot().tag.endswith("svg")


@pytest.mark.gpu
def test_cuda_graph_draws_like_the_cpu_graph():
    cpu, _ = gate("explicit")
    previous = tg.default_device()
    tg.set_default_device("cuda")
    try:
        gpu, _ = gate("explicit")
        assert gpu.device.startswith("cuda")
        big = tg.randn(100, 10, requires_grad=True)
        summary = viz.to_dot((big * 2.0).sum())
    finally:
        tg.set_default_device(previous)
    assert viz.to_dot(gpu) == viz.to_dot(cpu)
    assert "value (100, 10) [" in summary and ", …]" in summary
