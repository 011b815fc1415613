"""The benchmark workloads and the three implementations of one training step.

W1  784-128-10 ReLU MLP, softmax cross-entropy, batch 64
W2  784-512-512-10 ReLU MLP, softmax cross-entropy, batch 256
W3  2-3-2 sigmoid MLP, squared error, batch 4 (pure framework overhead)

One step = forward, loss, backward, SGD update (lr 0.1, weight decay 1e-4; a variant adds momentum
0.9). Every implementation starts from the same float32 weights, drawn here.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LR = 0.1
WEIGHT_DECAY = 1e-4
MOMENTUM = 0.9


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple
    batch: int
    activation: str  # "relu" or "sigmoid"
    loss: str  # "cross_entropy" or "mse"

    def weights(self, seed: int = 0):
        """[(W (out, in), b (out,)), ...] in float32, PyTorch's default init ranges."""
        rng = np.random.default_rng(seed)
        layers = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            layers.append((rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                           rng.uniform(-bound, bound, fan_out).astype(np.float32)))
        return layers

    def batch_data(self, seed: int = 1):
        """x (batch, in) float32; y int64 labels (cross-entropy) or float32 targets (mse)."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.batch, self.sizes[0])).astype(np.float32)
        if self.loss == "cross_entropy":
            y = rng.integers(0, self.sizes[-1], self.batch).astype(np.int64)
        else:
            y = rng.random((self.batch, self.sizes[-1])).astype(np.float32)
        return x, y


W1 = Workload("W1 784-128-10 relu b64", (784, 128, 10), 64, "relu", "cross_entropy")
W2 = Workload("W2 784-512-512-10 relu b256", (784, 512, 512, 10), 256, "relu", "cross_entropy")
W3 = Workload("W3 2-3-2 sigmoid mse b4", (2, 3, 2), 4, "sigmoid", "mse")
WORKLOADS = {"W1": W1, "W2": W2, "W3": W3}


# ---------------------------------------------------------------------------- hand-written NumPy

class NumpyStep:
    """The practical floor for any NumPy-backed framework: forward, loss gradient, backward and an
    in-place SGD update written by hand, with no graph.

    Cross-entropy uses a stable softmax and the gradient (p - onehot)/B; squared error is the mean
    over all elements, gradient 2 (a - y) / (B * out). Hidden layers use the workload's activation;
    the output layer is linear for cross-entropy and uses the activation for squared error.
    """

    def __init__(self, workload: Workload, momentum: float = 0.0):
        self.w = workload
        self.params = [p.copy() for layer in workload.weights() for p in layer]
        self.momentum = momentum
        self.buffers = None

    def _act(self, h):
        if self.w.activation == "relu":
            return np.maximum(h, 0, out=h)
        return np.reciprocal(1 + np.exp(-h, out=h), out=h)  # |h| stays small in these workloads

    def step(self, x, y):
        params = self.params
        n_layers = len(params) // 2
        inputs = []
        a = x
        for i in range(n_layers):
            W, b = params[2 * i], params[2 * i + 1]
            inputs.append(a)
            h = a @ W.T
            h += b
            last = i == n_layers - 1
            a = h if last and self.w.loss == "cross_entropy" else self._act(h)
        outputs = inputs[1:] + [a]

        B = x.shape[0]
        if self.w.loss == "cross_entropy":
            z = a - a.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            z[np.arange(B), y] -= 1
            z /= B
            delta = z
        else:
            delta = (a - y) * (2.0 / a.size)
            delta *= a * (1 - a)  # sigmoid on the output layer

        grads = [None] * len(params)
        for i in reversed(range(n_layers)):
            W = params[2 * i]
            grads[2 * i] = delta.T @ inputs[i]
            grads[2 * i + 1] = delta.sum(axis=0)
            if i:
                delta = delta @ W
                a_prev = outputs[i - 1]
                if self.w.activation == "relu":
                    delta *= a_prev > 0
                else:
                    delta *= a_prev * (1 - a_prev)
        self._update(grads)

    def _update(self, grads):
        if self.momentum and self.buffers is None:
            self.buffers = [None] * len(self.params)
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g += WEIGHT_DECAY * p
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = g.copy()
                else:
                    self.buffers[i] *= self.momentum
                    self.buffers[i] += g
                g = self.buffers[i]
            p -= LR * g


# ---------------------------------------------------------------------------- tensorgrad

class TensorgradStep:
    """The same step through tensorgrad's public API only (nn.Sequential, F, optim.SGD)."""

    def __init__(self, workload: Workload, momentum: float = 0.0, device: str = "cpu"):
        import tensorgrad as tg
        from tensorgrad import nn, optim
        from tensorgrad.nn import functional as F

        self.w, self.F, self.tg = workload, F, tg
        layers = []
        weights = workload.weights()
        act = nn.ReLU if workload.activation == "relu" else nn.Sigmoid
        for i, (W, b) in enumerate(weights):
            linear = nn.Linear(W.shape[1], W.shape[0], device=device)
            linear.weight.data[...] = tg.tensor(W, device=device).data
            linear.bias.data[...] = tg.tensor(b, device=device).data
            layers.append(linear)
            if i < len(weights) - 1 or workload.loss == "mse":
                layers.append(act())
        self.model = nn.Sequential(*layers)
        self.optimizer = optim.SGD(self.model.parameters(), lr=LR, momentum=momentum,
                                   weight_decay=WEIGHT_DECAY)

    def step(self, x, y):
        self.optimizer.zero_grad()
        out = self.model(x)
        if self.w.loss == "cross_entropy":
            loss = self.F.cross_entropy(out, y)
        else:
            loss = self.F.mse_loss(out, y)
        loss.backward()
        self.optimizer.step()
        return loss

    def params(self):
        return [p.numpy() for p in self.model.parameters()]


# ---------------------------------------------------------------------------- PyTorch

class TorchStep:
    """The same step in PyTorch eager."""

    def __init__(self, workload: Workload, torch, momentum: float = 0.0, device: str = "cpu"):
        nn = torch.nn
        self.w, self.torch = workload, torch
        layers = []
        weights = workload.weights()
        act = nn.ReLU if workload.activation == "relu" else nn.Sigmoid
        for i, (W, b) in enumerate(weights):
            linear = nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W))
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            if i < len(weights) - 1 or workload.loss == "mse":
                layers.append(act())
        self.model = nn.Sequential(*layers).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=momentum,
                                         weight_decay=WEIGHT_DECAY)

    def step(self, x, y):
        F = self.torch.nn.functional
        self.optimizer.zero_grad()
        out = self.model(x)
        loss = F.cross_entropy(out, y) if self.w.loss == "cross_entropy" else F.mse_loss(out, y)
        loss.backward()
        self.optimizer.step()
        return loss


def cpu_model() -> str:
    """The CPU's model name, for the machine a result was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
