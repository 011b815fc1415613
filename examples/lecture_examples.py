"""The backpropagation lecture's worked examples, computed by tensorgrad.

For each example the graph is built from tensors, `backward()` is called once, and every forward
value and every gradient the lecture derives by hand is printed, so the numbers on the slides can be
checked line by line:

1. f = (x + y) * z at x = -2, y = 5, z = -4;
2. the logistic gate f = sigmoid(w0*x0 + w1*x1 + w2) at w = [2, -3, -3], x = [-1, -2];
3. a 2-2-1 sigmoid network with binary cross-entropy (target 1), and one SGD step with lr = 0.01;
4. the same 2-2-1 sigmoid network without biases, with the squared error 1/2 (y - a)^2 (target 1).

Weights follow the layer convention of `nn.Linear`: row j of a weight matrix holds the weights into
unit j, so a layer computes z = W @ x + b. Everything runs in float64 on the CPU.

    python examples/lecture_examples.py

Each printed line reads `name = value`; matrices print as nested lists.
"""

from __future__ import annotations

import tensorgrad as tg
import tensorgrad.optim as optim

F64 = tg.float64


def fmt(value) -> str:
    """A number or a nested list of numbers with six decimals."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return f"{value:.6f}"


def show(name: str, value) -> None:
    print(f"  {name:<9} = {fmt(value)}")


def leaf(values, name: str) -> tg.Tensor:
    return tg.tensor(values, dtype=F64, device="cpu", requires_grad=True, name=name)


def add_multiply() -> None:
    print("== 1. f = (x + y) * z at x = -2, y = 5, z = -4")
    x, y, z = leaf(-2.0, "x"), leaf(5.0, "y"), leaf(-4.0, "z")
    q = x + y
    f = q * z
    (df_dq,) = tg.grad(f, [q], retain_graph=True)
    f.backward()
    show("q", q)
    show("f", f)
    show("df/dq", df_dq)
    # the lecture's chain rule: df/dx = df/dq * dq/dx = z * 1
    show("df/dx", x.grad)
    show("df/dy", y.grad)
    show("df/dz", z.grad)


def logistic_gate() -> None:
    print("== 2. f = sigmoid(w0*x0 + w1*x1 + w2) at w = [2, -3, -3], x = [-1, -2]")
    w = leaf([2.0, -3.0, -3.0], "w")
    x = leaf([-1.0, -2.0], "x")
    z = w[0] * x[0] + w[1] * x[1] + w[2]
    f = z.sigmoid()
    (df_dz,) = tg.grad(f, [z], retain_graph=True)
    f.backward()
    show("z", z)
    show("f", f)
    # sigmoid'(z) = f (1 - f): the gate's local gradient, shared by every input
    show("df/dz", df_dz)
    show("df/dw", w.grad)
    show("df/dx", x.grad)


def _network(with_bias: bool):
    x = tg.tensor([0.5, 0.1], dtype=F64, device="cpu", name="x")
    W1 = leaf([[0.2, 0.4], [0.3, 0.7]], "W1")
    W2 = leaf([[0.6, 0.9]], "W2")
    b1 = leaf([0.1, 0.2], "b1") if with_bias else None
    b2 = leaf([0.3], "b2") if with_bias else None
    return x, W1, b1, W2, b2


def network_bce() -> None:
    print("== 3. 2-2-1 sigmoid network, binary cross-entropy, target y = 1")
    print("     x = [0.5, 0.1], W1 = [[0.2, 0.4], [0.3, 0.7]], b1 = [0.1, 0.2],")
    print("     W2 = [[0.6, 0.9]], b2 = [0.3]")
    x, W1, b1, W2, b2 = _network(with_bias=True)
    y = 1.0
    z1 = W1 @ x + b1
    h = z1.sigmoid()
    z2 = W2 @ h + b2
    a = z2.sigmoid()
    loss = -(y * a.log() + (1.0 - y) * (1.0 - a).log()).sum()
    # the gradients of the intermediate nodes, as the lecture writes them next to each node
    dz1, dh, dz2, da = tg.grad(loss, [z1, h, z2, a], retain_graph=True)
    loss.backward()
    show("z1", z1)
    show("h", h)
    show("z2", z2)
    show("a", a)
    show("L", loss)
    show("dL/da", da)
    show("dL/dz2", dz2)  # for sigmoid + BCE this is a - y
    show("dL/dW2", W2.grad)
    show("dL/db2", b2.grad)
    show("dL/dh", dh)
    show("dL/dz1", dz1)
    show("dL/dW1", W1.grad)
    show("dL/db1", b1.grad)
    opt = optim.SGD([W1, b1, W2, b2], lr=0.01)
    opt.step()
    print("  after one SGD step, lr = 0.01 (theta <- theta - lr * dL/dtheta):")
    show("W1", W1)
    show("b1", b1)
    show("W2", W2)
    show("b2", b2)
    with tg.no_grad():
        a_new = (W2 @ (W1 @ x + b1).sigmoid() + b2).sigmoid()
        loss_new = -(a_new.log()).sum()
    show("a", a_new)
    show("L", loss_new)


def network_squared_error() -> None:
    print("== 4. 2-2-1 sigmoid network, no biases, squared error 1/2 (y - a)^2, target y = 1")
    print("     x = [0.5, 0.1], W1 = [[0.2, 0.4], [0.3, 0.7]], W2 = [[0.6, 0.9]]")
    x, W1, _, W2, _ = _network(with_bias=False)
    y = 1.0
    z1 = W1 @ x
    h = z1.sigmoid()
    z2 = W2 @ h
    a = z2.sigmoid()
    loss = (0.5 * (y - a) ** 2).sum()
    dz1, dh, dz2, da = tg.grad(loss, [z1, h, z2, a], retain_graph=True)
    loss.backward()
    show("z1", z1)
    show("h", h)
    show("z2", z2)
    show("a", a)
    show("L", loss)
    show("dL/da", da)  # a - y
    show("dL/dz2", dz2)  # (a - y) a (1 - a): the output delta
    show("dL/dW2", W2.grad)
    show("dL/dh", dh)
    show("dL/dz1", dz1)
    show("dL/dW1", W1.grad)


def main() -> None:
    add_multiply()
    logistic_gate()
    network_bce()
    network_squared_error()


if __name__ == "__main__":
    main()
