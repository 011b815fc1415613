"""Drawings of the computational graph, as the backpropagation lecture draws it.

Every op node shows the value it computed going forward and the gradient it received coming back;
every leaf shows its data and its `.grad`. Three forms share one description of the graph:

    tg.viz.to_dot(loss)                # Graphviz DOT text (deterministic: diff it, test it)
    tg.viz.render(loss, "graph.svg")   # SVG/PNG/PDF through Graphviz's `dot` program
    tg.viz.print_graph(loss)           # a plain-text tree for terminals (format_graph returns it)
    tg.viz.draw(loss)                  # a Graph object that Jupyter shows inline as SVG

Gradients of intermediate nodes are kept only by `backward(retain_graph=True)`; after a plain
`backward()` the nodes still know their shape and dtype, and the drawing says their values were freed.
Operands that need no gradient (Python scalars, tensors without requires_grad) are not part of the
recorded graph: their op node lists them as 'const 1' lines, with '(left)' where a constant is the first
of several operands (1 / x rather than x / 1).

The drawing fits a page: ranks run top to bottom (inputs at the top, the root at the bottom), tensors
of up to SMALL elements are written out, larger ones as their shape and first HEAD values, and a
matrix in a drawing puts each row on a line of its own.
"""

from __future__ import annotations

import html
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterable

import numpy as np

from . import _checks, backend
from ._atomic import atomic_write
from .autograd import Meta, Node
from .tensor import Tensor

__all__ = ["Graph", "draw", "format_graph", "print_graph", "render", "to_dot"]

SHOWABLE = ("value", "grad")
# Tensors up to this many elements are written out in full; larger ones as their shape and first
# HEAD values, which keeps a label narrow whatever the layer width.
SMALL = 6
HEAD = 3
FREED = "value freed; use backward(retain_graph=True)"
RENDER_FORMATS = ("svg", "png", "pdf")
DOT_SUFFIXES = ("dot", "gv")
MISSING_DOT = (
    "tensorgrad.viz: Graphviz's `dot` program was not found on PATH, and rendering needs it "
    "(to_dot() and print_graph() work without it). Install Graphviz: "
    "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS), "
    "`conda install graphviz` (conda), or see https://graphviz.org/download/. "
    "Note that `pip install graphviz` only installs a Python wrapper, not the `dot` program."
)

# Colours of the lecture's diagrams: forward values in green, backward gradients in red.
_COLOURS = {"value": "#1b5e20", "grad": "#b71c1c", "const": "#0d47a1", "note": "#616161"}
_LEAF_FILL = "#e3f2fd"
_OP_FILL = "#fff8e1"
# A 10,000-op chain would otherwise indent its last line by 40,000 columns; past this depth the
# text tree stops indenting and writes the depth out instead.
_MAX_INDENT = 32


# ----------------------------------------------------------------------------- numbers


def format_number(x, precision: int = 4) -> str:
    """A compact string for one number: `precision` significant digits, short exponents.

    Returns e.g. '0.7311', '-2', '1.235e4', '1e-5', 'nan', 'True'; negative zero is written '0'.
    """
    _check_precision(precision)
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not isinstance(x, (float, np.floating)):
        raise TypeError(f"viz.format_number: expected a number, got {type(x).__name__}")
    x = float(x)
    if x == 0.0:  # -0.0 (a gradient through relu, 0 * -1) would print as '-0', which reads as a sign error
        x = 0.0
    text = format(x, f".{precision}g")
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _check_precision(precision) -> int:
    """Significant digits: an int in [1, 17] (17 shows every digit that a float64 holds)."""
    precision = _checks.integer(precision, "viz", "precision", low=1)
    if precision > 17:
        raise ValueError(f"viz: precision must be at most 17 (all the digits of a float64), got {precision}")
    return precision


def _nested(values, precision: int) -> str:
    # tolist() output of an array with at most SMALL elements: nesting depth is its ndim, so small.
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v, precision) for v in values) + "]"
    return format_number(values, precision)


def format_array(array, precision: int = 4) -> str:
    """A short description of an array's contents (NumPy or CuPy).

    Returns the numbers themselves for at most SMALL elements ('0.7311', '[[0.2, 0.4], [0.3, 0.7]]'),
    else the shape and the first HEAD values in row-major order ('(100, 10) [-1.2, 0.01, 3.4, …]').
    """
    shape = tuple(int(n) for n in array.shape)
    if array.size == 0:
        return f"{shape} empty"
    if array.size <= SMALL:
        host = array.get() if backend.is_cupy_array(array) else np.asarray(array)
        return _nested(host.tolist(), precision)
    head = array.reshape(-1)[:HEAD]
    head = head.get() if backend.is_cupy_array(head) else np.asarray(head)
    return f"{shape} [" + ", ".join(format_number(v, precision) for v in head.tolist()) + ", …]"


# ----------------------------------------------------------------------------- the graph


class _Entry:
    """What is drawn for one node or leaf: a header, labelled lines, and its parents' indices."""

    __slots__ = ("header", "lines", "parents", "leaf")

    def __init__(self, header, lines, parents, leaf):
        self.header = header  # op name or leaf name
        self.lines = lines  # [(kind, text)], kind one of 'value', 'grad', 'const', 'note'
        self.parents = parents  # indices of the drawn operands, in operand order
        self.leaf = leaf


def _check_show(show) -> tuple:
    if isinstance(show, str):
        show = (show,)
    if not hasattr(show, "__iter__"):
        raise TypeError(f"viz: show must be a string or an iterable of strings, got {type(show).__name__}")
    show = tuple(show)
    unknown = [s for s in show if s not in SHOWABLE]
    if unknown:
        raise ValueError(f"viz: show={show!r} has {unknown!r}; expected a subset of {SHOWABLE!r}")
    return show


def _start(root):
    if isinstance(root, Tensor):
        return root.grad_fn or root
    if isinstance(root, Node):
        return root
    raise TypeError(f"viz: expected a Tensor (or a graph Node) to draw, got {type(root).__name__}")


def _topological(start) -> list:
    """Nodes and leaf Tensors reachable from `start`, each once, every parent before its consumers.

    An explicit stack (not recursion), so graphs of any depth work; parents are visited in operand
    order, so the order, and with it every node id, is the same on every run.
    """
    order = []
    seen = {id(start)}
    stack = [[start, 0]]
    while stack:
        frame = stack[-1]
        item = frame[0]
        parents = item.parents if isinstance(item, Node) else ()
        i = frame[1]
        while i < len(parents) and (parents[i] is None or id(parents[i]) in seen):
            i += 1
        if i < len(parents):
            frame[1] = i + 1
            seen.add(id(parents[i]))
            stack.append([parents[i], 0])
        else:
            stack.pop()
            order.append(item)
    return order


def _describe(root, show, precision) -> list:
    """A snapshot of the graph of `root`: one _Entry per node and leaf, in forward order, the root last."""
    show = _check_show(show)
    _check_precision(precision)
    start = _start(root)
    order = _topological(start)
    index = {id(item): i for i, item in enumerate(order)}
    entries = []
    for item in order:
        if isinstance(item, Node):
            entries.append(_describe_node(item, index, show, precision))
        else:
            entries.append(_describe_leaf(item, show, precision))
    return entries


def _describe_node(node, index, show, precision) -> _Entry:
    parents = [index[id(p)] for p in node.parents if p is not None]
    constants = sum(p is None for p in node.parents)
    lines = []
    value = getattr(node, "value", None)
    grad = getattr(node, "grad", None)
    if isinstance(value, Meta) or getattr(node, "freed", False):
        if show:
            if value is not None:
                shape = tuple(int(n) for n in value.shape)
                lines.append(("note", f"shape {shape} {np.dtype(value.dtype).name}"))
            lines.append(("note", FREED))
    else:
        if "value" in show and value is not None:
            lines.append(("value", "value " + format_array(value, precision)))
        if "grad" in show and grad is not None:
            lines.append(("grad", "grad " + format_array(grad, precision)))
    if constants:
        lines.extend(_constant_lines(node, precision))
    label = getattr(node, "label", None)  # the slot stays unset unless the output tensor was named
    header = node.name if label is None else f"{label} = {node.name}"
    return _Entry(header, lines, parents, leaf=False)


def _constant_lines(node, precision) -> list:
    """One 'const' line per operand that is not a parent, with its value (or shape, once trimmed)."""
    operands = getattr(node, "constants", None)  # aligned with node.parents; kept by autograd.apply
    if operands is None:  # a node recorded without its operands: say how many there were
        count = sum(p is None for p in node.parents)
        return [("note", f"+{count} constant" + ("s" if count > 1 else ""))]
    lines = []
    last = len(node.parents) - 1
    for i, (operand, parent) in enumerate(zip(operands, node.parents)):
        if parent is not None:
            continue
        if isinstance(operand, Meta):  # a large constant after backward: only its shape is kept
            text = f"{tuple(int(n) for n in operand.shape)} {np.dtype(operand.dtype).name}"
        elif hasattr(operand, "shape"):
            text = format_array(operand, precision)
        else:
            text = format_number(operand, precision)
        # the side matters for sub, div, pow and matmul; 'x + 1' needs no note
        side = " (left)" if i == 0 and last > 0 else ""
        lines.append(("const", f"const {text}{side}"))
    return lines


def _describe_leaf(tensor, show, precision) -> _Entry:
    header = tensor.name if tensor.name is not None else f"leaf {tensor.shape}"
    lines = []
    if "value" in show:
        lines.append(("value", "value " + format_array(tensor.data, precision)))
    if "grad" in show and tensor.grad is not None:
        lines.append(("grad", "grad " + format_array(tensor.grad.data, precision)))
    return _Entry(header, lines, [], leaf=True)


# ----------------------------------------------------------------------------- DOT


def _html(text: str) -> str:
    # HTML-like labels: markup characters become entities, and a name's own line breaks stay breaks.
    return html.escape(text, quote=True).replace("\n", "<br/>")


def _dot_label(entry: _Entry) -> str:
    parts = [f"<b>{_html(entry.header)}</b>"]
    for kind, text in entry.lines:
        size = ' point-size="9"' if kind == "note" else ""
        # a matrix written out puts each row on a line of its own, which halves a 2 x 2 label's width;
        # the break keeps its attribute so that a reader of the DOT text still finds one line per item
        rows = _html(text).replace("], [", '],<br align="center"/> [')
        parts.append(f'<font color="{_COLOURS[kind]}"{size}>{rows}</font>')
    return "<" + "<br/>".join(parts) + ">"


def _dot_source(entries: list) -> str:
    last = len(entries) - 1
    out = [
        "digraph tensorgrad {",
        # top to bottom: a network's chain of ops grows down the page instead of across it
        "  graph [rankdir=TB, ordering=in, nodesep=0.25, ranksep=0.3];",
        '  node [shape=box, style="rounded,filled", fillcolor="' + _OP_FILL
        + '", fontname="Helvetica", fontsize=11, margin="0.08,0.03"];',
        '  edge [color="#455a64", arrowsize=0.7];',
    ]
    for i, entry in enumerate(entries):
        attrs = [f"label={_dot_label(entry)}"]
        if entry.leaf:
            attrs.append(f'style=filled, fillcolor="{_LEAF_FILL}"')
        if i == last:
            attrs.append("penwidth=2")
        out.append(f"  n{i} [{', '.join(attrs)}];")
    # Edges run forward, operand to consumer, in operand order (ordering=in keeps that order on the
    # page, which matters for sub, div, matmul and pow).
    for i, entry in enumerate(entries):
        for p in entry.parents:
            out.append(f"  n{p} -> n{i};")
    out.append("}")
    return "\n".join(out) + "\n"


def to_dot(root, show: Iterable[str] = SHOWABLE, precision: int = 4) -> str:
    """The graph that produced `root` (a Tensor) as Graphviz DOT text.

    One node per op (labelled with its op name) and one per leaf that requires grad (its `name`, or
    'leaf' and its shape), each with its forward value and, when known, its gradient (`show` picks
    which of 'value' and 'grad'); edges run forward, from operand to consumer; the root is drawn last,
    with a thick border. Node ids (n0, n1, ...) follow a deterministic traversal, so the same graph
    gives the same text on every run.

    Returns the DOT source as a string (no Graphviz needed).
    """
    return _dot_source(_describe(root, show, precision))


# ----------------------------------------------------------------------------- text


def _text_line(i: int, entry: _Entry) -> str:
    parts = [f"[n{i}] {entry.header}"] + [text for _, text in entry.lines]
    return "  ".join(parts)


def _text_tree(entries: list) -> str:
    lines = []
    printed = set()
    # (entry index, prefix of the ancestors' columns, connector, depth)
    stack = [(len(entries) - 1, "", "", 0)]
    while stack:
        i, prefix, connector, depth = stack.pop()
        entry = entries[i]
        marker = f"(depth {depth}) " if depth > _MAX_INDENT else ""
        if i in printed:
            lines.append(f"{prefix}{connector}{marker}[n{i}] {entry.header} (shown above)")
            continue
        printed.add(i)
        lines.append(prefix + connector + marker + _text_line(i, entry))
        if depth >= _MAX_INDENT:
            child_prefix = prefix
        elif connector == "`-- ":
            child_prefix = prefix + "    "
        elif connector:
            child_prefix = prefix + "|   "
        else:
            child_prefix = prefix
        last = len(entry.parents) - 1
        # pushed in reverse so that operand 0 is printed first
        for k in range(last, -1, -1):
            stack.append((entry.parents[k], child_prefix, "`-- " if k == last else "+-- ", depth + 1))
    return "\n".join(lines) + "\n"


def format_graph(root, show: Iterable[str] = SHOWABLE, precision: int = 4) -> str:
    """The graph that produced `root` as a plain-text tree, the root first.

    Each line is one node or leaf with the same id, values and gradients as in `to_dot`, indented by
    its depth from the root; a node reached a second time is printed once and then referred to as
    '(shown above)'. Returns the text, ending with a newline.
    """
    return _text_tree(_describe(root, show, precision))


def print_graph(root, show: Iterable[str] = SHOWABLE, precision: int = 4, file=None) -> None:
    """Print `format_graph(root)` to `file` (standard output by default)."""
    print(format_graph(root, show, precision), end="", file=file)


# ----------------------------------------------------------------------------- Graphviz


def _dot_program() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(MISSING_DOT)
    return exe


def _run_dot(source: str, fmt: str, stdout) -> subprocess.CompletedProcess:
    completed = subprocess.run([_dot_program(), f"-T{fmt}"], input=source.encode("utf-8"),
                               stdout=stdout, stderr=subprocess.PIPE, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"tensorgrad.viz: dot -T{fmt} failed (exit status {completed.returncode}): "
                           f"{completed.stderr.decode('utf-8', 'replace').strip()}")
    return completed


def _render_source(source: str, path, format=None) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"render: expected a path (str or os.PathLike), got {type(path).__name__}")
    if format is not None and not isinstance(format, str):
        raise TypeError(f"render: expected format to be a string such as 'svg', got {type(format).__name__}")
    path = pathlib.Path(os.fspath(path))
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt in DOT_SUFFIXES:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(source)
        return path
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"render: cannot tell the format from {str(path)!r}; use a file ending in "
                         f"{', '.join('.' + s for s in RENDER_FORMATS + DOT_SUFFIXES)}, or pass format=")
    _dot_program()  # fail before a temporary file exists
    # dot writes straight into the temporary file beside `path`, which replaces `path` only once dot
    # succeeded: a failed or interrupted render leaves no half-written image behind.
    with atomic_write(path, "wb") as f:
        _run_dot(source, fmt, f)
    return path


def render(root, path, format: str | None = None, show: Iterable[str] = SHOWABLE,
           precision: int = 4) -> pathlib.Path:
    """Draw the graph of `root` (a Tensor or a `Graph`) into `path` with Graphviz's `dot` program.

    The format comes from the suffix (.svg, .png, .pdf; .dot or .gv write the DOT text itself) unless
    `format=` says otherwise. The file is written atomically. Raises RuntimeError, naming the install
    commands, where `dot` is not installed. Returns the path written.
    """
    source = root.source if isinstance(root, Graph) else to_dot(root, show, precision)
    return _render_source(source, path, format)


class Graph:
    """A snapshot of a computational graph for notebooks: Jupyter shows it inline as SVG.

    `.source` is the DOT text and `.text` the text tree, both taken when the Graph is made (a later
    backward() that frees the graph does not change them). Where `dot` is missing, `_repr_svg_` returns
    None and Jupyter falls back to the text tree (`repr`).
    """

    def __init__(self, root, show: Iterable[str] = SHOWABLE, precision: int = 4):
        entries = _describe(root, show, precision)
        self.source = _dot_source(entries)
        self.text = _text_tree(entries)

    def svg(self) -> str:
        """The drawing as SVG text; RuntimeError where `dot` is missing."""
        return _run_dot(self.source, "svg", subprocess.PIPE).stdout.decode("utf-8")

    def render(self, path, format: str | None = None) -> pathlib.Path:
        """Write the drawing to `path` (format from the suffix, as `tg.viz.render`). Returns the path."""
        return _render_source(self.source, path, format)

    def _repr_svg_(self):
        if shutil.which("dot") is None:
            return None
        return self.svg()

    def __repr__(self) -> str:
        return self.text


def draw(root, show: Iterable[str] = SHOWABLE, precision: int = 4) -> Graph:
    """The graph of `root` as a `Graph` (shown inline as SVG in Jupyter). Returns the Graph."""
    return Graph(root, show, precision)
