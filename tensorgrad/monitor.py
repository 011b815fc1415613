"""Per-layer training statistics: watch the gradients flow while `fit` trains.

    from tensorgrad.training import fit, LayerMonitor

    history = fit(model, F.cross_entropy, opt, train_loader, epochs=5, monitor=LayerMonitor(model, every=10))
    history.layers["grad_norm_weight"]["0"]     # the first layer's weight-gradient norm, one per recording
    history.plot_layers("layers.png")

Every `every` optimizer steps (steps 1, 1 + every, 1 + 2 * every, ...: the first recording is the
gradient at initialisation) the monitor records, for each `nn.Linear` of the model, named by its
state_dict prefix ("0", "2", "4" in a Sequential; "encoder.0" when nested):

    grad_norm_weight     ||dL/dW||, the Frobenius norm of the weight's gradient
    grad_norm_bias       ||dL/db|| (NaN for a layer without bias)
    weight_norm          ||W|| before the step
    update_ratio         ||W_after - W_before|| / ||W_before||, W across the optimizer's step
    activation_mean      mean of the layer's output after its activation, over every element of the batch
    activation_std       their standard deviation (population, ddof=0)
    saturated_fraction   for a Linear followed by Sigmoid or Tanh: the fraction of OUTPUT ELEMENTS
                         (examples x units) within 0.01 of a bound (0 or 1 for sigmoid, -1 or 1 for
                         tanh), where the activation's derivative is nearly 0; NaN for other layers
    dead_fraction        for a Linear followed by ReLU: the fraction of UNITS whose output is exactly 0
                         for every example of the batch (such a unit passes no gradient at all); NaN else

The gradients are those the optimizer steps with: after backward and after fit's gradient clipping.
They are stored in `history.layers` as {statistic: {layer: [values]}, "step": [steps]}, saved in
fit's training state, and drawn by `History.plot_layers(path)`.

How the activations are obtained. nn.Sequential fuses a Linear and the activation after it into one
F.linear node, so neither module's forward runs and hooks on them would not fire. The monitor instead
runs the step's batch through the model once more, under no_grad and in eval mode, walking the
Sequential itself: each Linear, then the activation module that follows it, as separate calls (the
same numbers as the fused node). Eval mode turns dropout off, so the walk draws no random numbers and a
monitored run trains bitwise like an unmonitored one. Layers inside a module that is not a Sequential
(a custom forward) cannot be walked; they get NaN activation statistics but all the others.

On CUDA every statistic is reduced on the device; the scalars of one recording are stacked into one
array and read back with a single copy, after the step.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from tensorgrad import _checks, backend
from tensorgrad._atomic import atomic_write
from tensorgrad.autograd import no_grad

__all__ = ["LayerMonitor", "STATISTICS", "plot_layers"]

STATISTICS = ("grad_norm_weight", "grad_norm_bias", "weight_norm", "update_ratio", "activation_mean",
              "activation_std", "saturated_fraction", "dead_fraction")
# the order of one recording's scalars, per layer (before_step's 3 norms and 4 activation statistics,
# after_step's ratio)
_COLUMNS = ("grad_norm_weight", "grad_norm_bias", "weight_norm", "activation_mean", "activation_std",
            "saturated_fraction", "dead_fraction", "update_ratio")
# statistics spanning orders of magnitude (vanishing gradients): drawn on a log scale
_LOG_SCALE = ("grad_norm_weight", "grad_norm_bias", "weight_norm", "update_ratio")
SATURATION_MARGIN = 0.01
_BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


class LayerMonitor:
    """Records per-layer statistics of `model` every `every` optimizer steps; pass it to `fit(monitor=)`.

    model: the model `fit` trains (any Module; its nn.Linear layers are monitored, see the module doc).
    every: record at steps 1, 1 + every, 1 + 2 * every, ... (steps counted from 1 over the whole run,
      a resumed run included).

    fit calls `records(step)` before each optimizer step, and for a step it records, `before_step(step,
    inputs)` after backward (and clipping) and `after_step(step)` after `optimizer.step()`. The values go
    into the dict given to `attach` (fit attaches `history.layers`); `layers` is that dict.
    """

    def __init__(self, model, every: int = 10):
        from tensorgrad.nn.layers import Linear
        from tensorgrad.nn.module import Module

        if not isinstance(model, Module):
            raise TypeError(f"LayerMonitor: expected model to be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.every = _checks.integer(every, "LayerMonitor", "every", low=1)
        self.linears = [(name, module) for name, module in model.named_modules()
                        if isinstance(module, Linear)]
        if not self.linears:
            raise ValueError(f"LayerMonitor: {type(model).__name__} has no nn.Linear layer to monitor")
        self.layers: dict = _empty_layers(name for name, _ in self.linears)
        self._pending = None  # the device scalars of the step being recorded, between before and after

    def attach(self, layers: dict) -> None:
        """Record into `layers` (fit's history.layers): filled with empty lists where it is empty, else
        continued (a resumed run); ValueError when it holds another model's layers."""
        names = [name for name, _ in self.linears]
        if not layers:
            layers.update(_empty_layers(names))
        elif set(layers) != {"step", *STATISTICS} or any(set(layers[s]) != set(names) for s in STATISTICS):
            recorded = layers.get("weight_norm")
            found = sorted(recorded) if isinstance(recorded, dict) else []
            raise ValueError(f"LayerMonitor: the history holds statistics of layers {found}, this model has "
                             f"layers {names}")
        self.layers = layers

    def records(self, step: int) -> bool:
        """True when optimizer step `step` (counted from 1) is one to record."""
        return (step - 1) % self.every == 0

    def before_step(self, step: int, inputs) -> None:
        """After backward, before the optimizer's step: gradient and weight norms, activations of `inputs`."""
        scalars, before = [], []
        for _, linear in self.linears:
            weight = linear.weight.data
            nan = _nan_like(weight)
            scalars.append(_norm(linear.weight.grad.data) if linear.weight.grad is not None else nan)
            bias = linear.bias
            scalars.append(_norm(bias.grad.data) if bias is not None and bias.grad is not None else nan)
            scalars.append(_norm(weight))
            before.append(weight.copy())  # the optimizer changes the weight in place
        activations = self._activation_statistics(inputs)
        for _, linear in self.linears:  # laid out as _COLUMNS: 3 per layer above, then 4 per layer here
            scalars.extend(activations.get(id(linear)) or [_nan_like(linear.weight.data)] * 4)
        self._pending = (step, scalars, before)

    def after_step(self, step: int) -> None:
        """After the optimizer's step: the update ratios, then one read-back of the whole recording."""
        if self._pending is None or self._pending[0] != step:
            raise RuntimeError(f"LayerMonitor.after_step: step {step} was not prepared by before_step")
        _, scalars, before = self._pending
        self._pending = None
        xp = backend.array_module(before[0])
        ratios = []
        for (_, linear), old in zip(self.linears, before):
            old_norm = _norm(old)
            # a zero weight has no ratio: NaN, computed without dividing by zero (no warning, no sync)
            safe = xp.where(old_norm > 0, old_norm, 1.0)
            ratios.append(xp.where(old_norm > 0, _norm(linear.weight.data - old) / safe, math.nan))
        stacked = xp.stack([xp.asarray(s, dtype=xp.float64).reshape(()) for s in scalars + ratios])
        values = stacked.get() if backend.is_cupy_array(stacked) else stacked  # the one device->host copy
        count = len(self.linears)
        norms = values[:3 * count].reshape(count, 3)
        activation = values[3 * count:7 * count].reshape(count, 4)
        per_layer = np.concatenate([norms, activation, values[7 * count:].reshape(count, 1)], axis=1)
        for row, (name, _) in enumerate(self.linears):
            for column, statistic in enumerate(_COLUMNS):
                self.layers[statistic][name].append(float(per_layer[row, column]))
        self.layers["step"].append(int(step))

    def _activation_statistics(self, inputs) -> dict:
        """{id(linear): [mean, std, saturated, dead]} (device scalars) for each Linear the walk reaches."""
        from tensorgrad.tensor import Tensor

        model = self.model
        found: dict = {}
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with no_grad():
                _walk(model, inputs if isinstance(inputs, Tensor) else _as_tensor(inputs), found)
        finally:
            for module, mode in modes:
                object.__setattr__(module, "training", mode)  # as Module.train sets it
        return found


def _walk(module, x, found: dict):
    """Run `x` through `module`, recording the statistics of each Linear's post-activation output."""
    from tensorgrad.nn.layers import Linear, Sequential, _Activation

    if isinstance(module, Linear) and type(module).forward is Linear.forward:
        y = module(x)
        found[id(module)] = _output_statistics(y.data, None)
        return y
    if not isinstance(module, Sequential) or type(module).forward is not Sequential.forward:
        return module(x)
    children = list(module)
    i = 0
    while i < len(children):
        child = children[i]
        following = children[i + 1] if i + 1 < len(children) else None
        if isinstance(child, Linear) and type(child).forward is Linear.forward \
                and isinstance(following, _Activation):
            x = following(child(x))
            found[id(child)] = _output_statistics(x.data, following.kind)
            i += 2
        else:
            x = _walk(child, x, found)
            i += 1
    return x


def _output_statistics(y, kind: str | None) -> list:
    """[mean, std, saturated fraction, dead fraction] of a layer's output y (N, units), device scalars."""
    xp = backend.array_module(y)
    y = y.astype(xp.float64) if y.dtype.itemsize < 8 else y
    nan = _nan_like(y)
    saturated = dead = nan
    if kind in _BOUNDS:
        low, high = _BOUNDS[kind]
        near = (xp.abs(y - low) < SATURATION_MARGIN) | (xp.abs(y - high) < SATURATION_MARGIN)
        saturated = near.mean() if y.size else nan
    elif kind == "relu":
        rows = y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)
        dead = (rows == 0).all(axis=0).mean() if rows.size else nan
    if not y.size:
        return [nan, nan, saturated, dead]
    return [y.mean(), y.std(), saturated, dead]


def _norm(array):
    """Frobenius norm as a device scalar, accumulated in at least float32 (float16 would overflow)."""
    xp = backend.array_module(array)
    if array.dtype.itemsize < 4:
        array = array.astype(xp.float32)
    return xp.sqrt(xp.sum(array * array))


def _nan_like(array):
    return backend.array_module(array).asarray(math.nan, dtype=np.float64)


def _as_tensor(inputs):
    from tensorgrad.tensor import tensor

    return tensor(inputs)


def _empty_layers(names) -> dict:
    names = list(names)
    layers: dict = {"step": []}
    for statistic in STATISTICS:
        layers[statistic] = {name: [] for name in names}
    return layers


def plot_layers(layers: dict, path: str | os.PathLike, *, title: str | None = None, dpi: int = 120) -> Path:
    """Draw `layers` ({statistic: {layer: [values]}, "step": [...]}) to `path`: one panel per statistic,
    one line per layer, log scale for norms and ratios. Written atomically; returns the path.
    See History.plot_layers."""
    try:
        import matplotlib  # noqa: F401  (first, so a missing matplotlib is reported as such)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("History.plot_layers needs matplotlib, which is not installed: "
                          "pip install tensorgrad[plot]  (or: pip install matplotlib)") from exc
    steps = list(layers.get("step", [])) if isinstance(layers, dict) else []
    if not steps:
        raise ValueError("History.plot_layers: no layer statistics recorded; pass "
                         "monitor=LayerMonitor(model, every=N) to fit")
    path = Path(path)
    names = list(layers[STATISTICS[0]])
    fig = Figure(figsize=(16, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).ravel()
    for ax, statistic in zip(axes, STATISTICS):
        drawn = False
        for index, name in enumerate(names):
            values = np.asarray(layers[statistic][name], dtype=np.float64)
            if statistic in _LOG_SCALE:
                values = np.where(values > 0, values, np.nan)  # log scale: a zero has no place
            if np.isnan(values).all():
                continue
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, color=f"C{index % 10}",
                    label=f"layer {name}")
            drawn = True
        if statistic in _LOG_SCALE and drawn:
            ax.set_yscale("log")
        if statistic in ("saturated_fraction", "dead_fraction"):
            ax.set_ylim(-0.03, 1.03)
        if not drawn:
            kind = {"saturated_fraction": "sigmoid/tanh", "dead_fraction": "ReLU"}.get(statistic)
            ax.text(0.5, 0.5, f"no {kind} layer" if kind else "nothing recorded", ha="center",
                    va="center", transform=ax.transAxes, color="0.4")
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)  # the same steps as the panels beside it
        ax.set(title=statistic.replace("_", " "), xlabel="step")
        ax.grid(alpha=0.3)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[1]))
    if handles:
        fig.legend(handles, labels, loc="outside right center")
    if title:
        fig.suptitle(title)
    return write_figure(fig, path, dpi)


def write_figure(fig, path: Path, dpi: int) -> Path:
    """Render a matplotlib Figure in the format of `path`'s suffix (png without one) and write it
    atomically: a reader never sees half an image, and a failed render leaves an older file as it was."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return path
