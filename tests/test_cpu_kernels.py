"""The compiled CPU kernels (tensorgrad.cpu_kernels, Numba) against the NumPy twins they replace and against
float64 (or longer) references; their determinism across thread counts; the dispatcher in
kernels.for_array; thread control; Adam's fused step against its reference loop.

Tests that need numba skip cleanly without it; the dispatcher's fallback is tested in a subprocess that
cannot import numba.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import cpu_kernels, kernels

ROOT = Path(__file__).resolve().parent.parent
DTYPES = (np.float32, np.float64)
ALPHA = {"leaky_relu": 0.01, "elu": 1.3}
TWINS = kernels.NumpyKernels()

try:
    import numba
except ImportError:
    numba = None
needs_numba = pytest.mark.skipif(numba is None,
                                 reason="numba is not installed (pip install 'tensorgrad[fast]')")


@pytest.fixture(scope="module")
def compiled():
    if numba is None:
        pytest.skip("numba is not installed (pip install 'tensorgrad[fast]')")
    return cpu_kernels.NumbaKernels()


@pytest.fixture
def one_thread_blocks(monkeypatch):
    """Every call takes the serial span functions (the reference for the parallel ones)."""
    monkeypatch.setattr(cpu_kernels, "PARALLEL_MIN_ELEMENTS", 1 << 62)


@pytest.fixture
def threaded(monkeypatch):
    """Every call with at least one element takes the parallel path, on two threads."""
    if numba is None:
        pytest.skip("numba is not installed")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba's pool has one thread (NUMBA_NUM_THREADS=1 or one core)")
    monkeypatch.setattr(cpu_kernels, "PARALLEL_MIN_ELEMENTS", 1)
    before = cpu_kernels.get_num_threads()
    cpu_kernels.set_num_threads(2)
    yield
    cpu_kernels.set_num_threads(before)


def alpha_of(kind):
    return ALPHA.get(kind, 0.0)


def sample(shape, dtype, scale=3.0, seed=0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=dtype)


def ulps(actual, reference, dtype):
    """Largest error in units of the dtype's epsilon, relative to |reference| (at least the smallest
    normal number, so values that underflow count as absolute errors)."""
    actual = np.asarray(actual, np.longdouble)
    reference = np.asarray(reference, np.longdouble)
    scale = np.maximum(np.abs(reference), np.finfo(dtype).tiny)
    return float(np.max(np.abs(actual - reference) / scale) / np.finfo(dtype).eps)


def same(actual, expected):
    """Bit-for-bit equal, NaN equal to NaN (assert_array_equal treats -0.0 == 0.0, which is fine here)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------------
# exp and expm1 (our polynomials) against NumPy's longdouble functions.

@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_and_expm1_of_nonpositive_arguments_are_within_one_ulp(dtype):
    from tensorgrad import _numba_kernels as jit

    @numba.njit
    def both(x, e, em):
        for i in range(x.shape[0]):
            e[i] = jit.exp_nonpositive(x[i])
            em[i] = jit.expm1_nonpositive(x[i])

    rng = np.random.default_rng(0)
    lowest = -87.0 if dtype == np.float32 else -708.0  # results stay normal numbers
    x = np.concatenate([-rng.exponential(3.0, 20000), rng.uniform(lowest, 0, 20000),
                        -np.logspace(-30, 0, 2000), np.linspace(-0.4, 0, 2001)]).astype(dtype)
    e, em = np.empty_like(x), np.empty_like(x)
    both(x, e, em)
    wide = x.astype(np.longdouble)
    assert ulps(e, np.exp(wide), dtype) <= 1.0
    assert ulps(em, np.expm1(wide), dtype) <= 1.5
    # the ends: exact 1 and 0 at 0 and -0, 0 and -1 at -inf, NaN through; denormal results rounded once
    special = np.array([0.0, -0.0, -np.inf, np.nan, -1e4], dtype)
    tiny = np.array([-100.0, -103.0] if dtype == np.float32 else [-740.0, -744.0], dtype)
    e, em = np.empty_like(special), np.empty_like(special)
    both(special, e, em)
    np.testing.assert_array_equal(e, [1.0, 1.0, 0.0, np.nan, 0.0])
    np.testing.assert_array_equal(em, [0.0, 0.0, -1.0, np.nan, -1.0])
    e_tiny, em_tiny = np.empty_like(tiny), np.empty_like(tiny)
    both(tiny, e_tiny, em_tiny)
    exact = np.exp(tiny.astype(np.longdouble))
    smallest = np.finfo(dtype).smallest_subnormal
    assert np.all(np.abs(e_tiny - exact) <= smallest)  # within one denormal step: rounded once
    assert np.all(e_tiny > 0)


# ---------------------------------------------------------------------------------------------
# Activations against the twins and float64 references.

FORWARD = {
    "identity": lambda v, a: v,
    "sigmoid": lambda v, a: 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)),
    "tanh": lambda v, a: math.tanh(v),
    "relu": lambda v, a: v if v > 0 else 0.0,
    "leaky_relu": lambda v, a: v if v > 0 else a * v,
    "elu": lambda v, a: v if v > 0 else a * math.expm1(v),
}


def forward_reference(kind, x, alpha):
    return np.array([FORWARD[kind](float(v), alpha) for v in x.ravel()]).reshape(x.shape)


# the last bit of sigmoid and tanh: 2 ulp (CUDA's expf/tanhf are within 2 ulp as well)
FORWARD_ULPS = {"identity": 0, "relu": 0, "leaky_relu": 0.5, "sigmoid": 2.5, "tanh": 2.5, "elu": 2}


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_forward_against_float64_and_the_twin(compiled, kind, dtype):
    x = np.concatenate([sample(3000, dtype), sample(500, dtype, scale=30.0, seed=1),
                        sample(500, dtype, scale=1e-3, seed=2)]).reshape(40, 100)
    alpha = alpha_of(kind)
    y = compiled.activation_forward(kind, x, alpha)
    assert y.dtype == dtype and y.shape == x.shape
    reference = forward_reference(kind, x.astype(np.float64), alpha)
    if dtype == np.float32:
        assert ulps(y, reference.astype(np.float32), dtype) <= FORWARD_ULPS[kind] + 0.5
    else:
        assert ulps(y, reference, dtype) <= FORWARD_ULPS[kind] + 1
    twin = TWINS.activation_forward(kind, x, alpha)
    np.testing.assert_allclose(y, twin, rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)


EDGES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4, 88.0, -88.0, 100.0, -100.0, 1e-30, -1e-30, 700.0,
         -700.0, 1e30, -1e30]


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activations_at_edge_values_match_the_twin(compiled, kind, dtype):
    """0, -0, +-inf, NaN, overflow-size inputs: the twins define the behaviour (PyTorch's)."""
    x = np.array(EDGES, dtype)
    alpha = alpha_of(kind)
    y = compiled.activation_forward(kind, x, alpha)
    with np.errstate(all="ignore"):  # the twin's inf * 0 and overflows are the NaNs and infs compared
        twin_y = TWINS.activation_forward(kind, x, alpha)
    np.testing.assert_allclose(y, twin_y, rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
    gy = np.array([1.0, -2.0, 0.5, np.inf, 1.0, -1.0, 3.0] + [1.0] * (len(EDGES) - 7), dtype)
    for y_saved in (twin_y, np.array(EDGES, dtype)):  # also saved outputs the forward cannot produce
        with np.errstate(all="ignore"):
            expected = TWINS.activation_backward(kind, y_saved, gy, alpha)
        np.testing.assert_allclose(compiled.activation_backward(kind, y_saved, gy, alpha), expected,
                                   rtol=np.finfo(dtype).eps, atol=0)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_backward_against_float64_and_the_twin(compiled, kind, dtype):
    x = sample((33, 65), dtype)
    alpha = alpha_of(kind)
    y = TWINS.activation_forward(kind, x, alpha)
    gy = sample(x.shape, dtype, scale=1.0, seed=3)
    gx = compiled.activation_backward(kind, y, gy, alpha)
    # the slope from the saved y in float64, times gy: the kernel rounds the slope once (an FMA for
    # tanh's 1 - y*y and sigmoid's y*(1 - y)) and the product once
    y64, gy64 = y.astype(np.longdouble), gy.astype(np.longdouble)
    slope = {"identity": np.ones_like(y64), "sigmoid": y64 * (1 - y64), "tanh": 1 - y64 * y64,
             "relu": (y64 > 0) * 1.0, "leaky_relu": np.where(y64 > 0, 1.0, alpha),
             "elu": np.where(y64 > 0, 1.0, y64 + alpha)}[kind]
    eps = np.finfo(dtype).eps
    # within a few ulps of the product, plus an ulp of the slope's terms (<= 1) where they cancel
    assert np.all(np.abs(gx - gy64 * slope) <= 4 * eps * np.abs(gy64 * slope) + 2 * eps * np.abs(gy64))
    # the twin rounds y*y (or 1 - y) first: an absolute difference of an ulp of the slope's terms
    np.testing.assert_allclose(gx, TWINS.activation_backward(kind, y, gy, alpha), rtol=4 * eps,
                               atol=2 * eps * np.max(np.abs(gy64)))
    assert compiled.activation_backward(kind, y, gy, alpha, out=gy) is gy  # in place into gy
    same(gy, gx)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_bias_activation_forward_is_activation_of_the_sum(compiled, kind, dtype):
    x, bias = sample((17, 70), dtype), sample(70, dtype, seed=1)
    alpha = alpha_of(kind)
    summed = x + bias  # rounded once in the dtype, as the kernel adds
    expected = compiled.activation_forward(kind, summed, alpha)
    same(compiled.bias_activation_forward(kind, x, bias, alpha), expected)
    np.testing.assert_allclose(expected, TWINS.bias_activation_forward(kind, x, bias, alpha),
                               rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)
    assert compiled.bias_activation_forward(kind, x, bias, alpha, out=x) is x  # in place
    same(x, expected)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_backward_bias_sums_columns_in_float64(compiled, kind, dtype):
    rows, cols = 513, 130  # past one column tile
    y = TWINS.activation_forward(kind, sample((rows, cols), dtype), alpha_of(kind))
    gy = sample((rows, cols), dtype, scale=1.0, seed=4)
    gx, bias_grad = compiled.activation_backward_bias(kind, y, gy, alpha_of(kind))
    same(gx, compiled.activation_backward(kind, y, gy, alpha_of(kind)))
    exact_sums = np.array([math.fsum(gx[:, c].astype(np.float64)) for c in range(cols)])
    assert bias_grad.dtype == dtype
    if dtype == np.float32:  # added in float64, then rounded once: the exact sum's float32 rounding or next
        np.testing.assert_allclose(bias_grad, exact_sums.astype(dtype), rtol=np.finfo(dtype).eps, atol=0)
    else:  # the bound of recursive summation, rows * eps * sum |terms|
        bound = rows * np.finfo(dtype).eps * np.abs(gx).sum(axis=0)
        assert np.all(np.abs(bias_grad - exact_sums) <= bound)
    gx_in_place, _ = compiled.activation_backward_bias(kind, y, gy, alpha_of(kind), out=gy)
    assert gx_in_place is gy
    same(gy, gx)


@needs_numba
def test_empty_and_0d_arrays(compiled):
    for dtype in DTYPES:
        for shape in [(0,), (0, 5), (3, 0)]:
            x = np.zeros(shape, dtype)
            same(compiled.activation_forward("tanh", x), x.copy())
            same(compiled.activation_backward("sigmoid", x, x), x.copy())
        no_rows = np.zeros((0, 4), dtype)
        gx, bias_grad = compiled.activation_backward_bias("relu", no_rows, no_rows)
        assert gx.shape == (0, 4)
        same(bias_grad, np.zeros(4, dtype))  # the sum over no rows
        same(compiled.bias_activation_forward("elu", np.zeros((0, 4), dtype), np.ones(4, dtype), 1.0),
             np.zeros((0, 4), dtype))
        scalar = np.array(-2.0, dtype)
        y = compiled.activation_forward("sigmoid", scalar)
        eps = float(np.finfo(dtype).eps)
        assert y.shape == () and float(y) == pytest.approx(1 / (1 + math.exp(2.0)), rel=2 * eps)
        g = compiled.activation_backward("elu", np.array(-0.5, dtype), np.array(2.0, dtype), 1.0)
        assert g.shape == () and float(g) == pytest.approx(2.0 * 0.5, rel=eps)


# ---------------------------------------------------------------------------------------------
# Softmax cross-entropy.

def cross_entropy_reference(logits, target, weight):
    """(per-row loss, gradient) in longdouble: -log softmax[t] and (softmax - onehot) * weight."""
    z = logits.astype(np.longdouble)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(target))
    grad = np.exp(log_p)
    grad[rows, target] -= 1
    return -log_p[rows, target], grad * np.reshape(np.asarray(weight, np.longdouble), (-1, 1))


def upstream(reduction, rows, dtype):
    return sample(rows, dtype, scale=1.0, seed=9) if reduction == "none" else np.array(1.5, dtype)


@needs_numba
@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6, 1e8])
def test_softmax_cross_entropy_against_longdouble(compiled, offset, dtype, reduction):
    rows, cols = 64, 10
    logits = (sample((rows, cols), np.float64) + offset).astype(dtype)
    target = np.random.default_rng(1).integers(0, cols, rows)
    loss, row_max, row_sum = compiled.softmax_cross_entropy_forward(logits, target, reduction)
    grad_loss = upstream(reduction, rows, dtype)
    grad = compiled.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    weight = {"none": grad_loss, "sum": grad_loss, "mean": grad_loss / np.longdouble(rows)}[reduction]
    per_row, expected_grad = cross_entropy_reference(logits, target, weight)
    expected_loss = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
    eps = np.finfo(dtype).eps
    assert loss.dtype == dtype and grad.dtype == dtype
    # loss within a few ulps of max(|loss|, 1); gradient normwise within a few ulps (as issue 12 measures)
    error = np.abs(np.asarray(loss, np.longdouble) - expected_loss)
    assert np.all(error <= 8 * eps * np.maximum(np.abs(expected_loss), 1)), (loss, expected_loss)
    assert np.max(np.abs(grad - expected_grad)) <= 8 * eps * np.max(np.abs(expected_grad))
    # and the twin's row statistics: the max exactly, the sum (added in float64 here) to a few ulps
    twin_loss, twin_max, twin_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    same(row_max, twin_max)
    np.testing.assert_allclose(row_sum, twin_sum, rtol=8 * eps)
    np.testing.assert_allclose(loss, twin_loss, rtol=8 * eps, atol=8 * eps)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_non_finite_rows_and_bad_targets_match_the_twin(compiled, dtype):
    logits = np.array([[-np.inf] * 3, [-np.inf, 0.0, 1.0], [-np.inf, -np.inf, 5.0], [np.inf, 0.0, 1.0],
                       [np.nan, 0.0, 1.0], [0.0, 1.0, np.nan], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0],
                       [0.0, 1.0, 2.0]], dtype)
    target = np.array([0, 0, 2, 1, 1, 1, 1, 3, -1])  # the last two outside [0, 3): NaN rows
    for reduction in kernels.REDUCTIONS:
        ours = compiled.softmax_cross_entropy_forward(logits, target, reduction)
        theirs = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps)  # NaN where the twin has NaN
        grad_loss = upstream(reduction, len(target), dtype)
        np.testing.assert_allclose(
            compiled.softmax_cross_entropy_backward(logits, target, *ours[1:], grad_loss, reduction),
            TWINS.softmax_cross_entropy_backward(logits, target, *theirs[1:], grad_loss, reduction),
            rtol=4 * np.finfo(dtype).eps, atol=np.finfo(dtype).tiny)


@needs_numba
def test_softmax_cross_entropy_of_no_rows_and_in_place_backward(compiled):
    empty = np.zeros((0, 4), np.float32)
    no_target = np.zeros(0, np.int64)
    assert np.isnan(compiled.softmax_cross_entropy_forward(empty, no_target, "mean")[0])
    assert compiled.softmax_cross_entropy_forward(empty, no_target, "sum")[0] == 0.0
    assert compiled.softmax_cross_entropy_forward(empty, no_target, "none")[0].shape == (0,)
    logits = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    target = np.array([2, 0])
    _, row_max, row_sum = compiled.softmax_cross_entropy_forward(logits, target, "mean")
    one = np.array(1.0, np.float32)
    grad = compiled.softmax_cross_entropy_backward(logits, target, row_max, row_sum, one, "mean", out=logits)
    assert grad is logits  # softmax is 1/3 each: (1/3 - onehot) / 2, exact to the rounding of 1/6
    np.testing.assert_allclose(grad, [[1 / 6, 1 / 6, -1 / 3], [-1 / 3, 1 / 6, 1 / 6]], rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# SGD and Adam: the same roundings as the twins, so the same bits.

SGD_SETTINGS = [dict(weight_decay=wd, momentum=m, dampening=d, nesterov=nest)
                for wd in (0.0, 0.05) for m in (0.0, 0.9) for d in (0.0, 0.3) for nest in (False, True)
                if not (m == 0 and (d or nest)) and not (nest and d)]


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", SGD_SETTINGS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_sgd_update_multi_equals_the_twin_bit_for_bit(compiled, hyper, dtype):
    shapes = [(13, 7), (5,), (), (3, 32769)]
    params = [sample(s, dtype, seed=i) for i, s in enumerate(shapes)]
    params[0][0, :3] = [np.inf, np.nan, 0.0]
    ours, theirs = [p.copy() for p in params], [p.copy() for p in params]
    momentum = hyper["momentum"]
    our_bufs = [np.zeros_like(p) for p in params] if momentum else None
    their_bufs = [np.zeros_like(p) for p in params] if momentum else None
    for step in range(3):
        grads = [sample(s, dtype, scale=1.0, seed=10 + step + i) for i, s in enumerate(shapes)]
        compiled.sgd_update_multi(ours, grads, our_bufs, lr=0.1, first_step=step == 0, **hyper)
        with np.errstate(all="ignore"):  # inf - inf at the inf parameter, as SGD.step silences it
            TWINS.sgd_update_multi(theirs, grads, their_bufs, lr=0.1, first_step=step == 0, **hyper)
    for a, b in zip(ours + (our_bufs or []), theirs + (their_bufs or [])):
        same(a, b)


@needs_numba
def test_sgd_update_against_hand_calculation(compiled):
    # p0 = 1, grad 0.5 twice, lr 0.1, weight decay 0.01, momentum 0.9, dampening 0.1:
    # d1 = 0.51, buf1 = 0.51, p1 = 0.949; d2 = 0.50949, buf2 = 0.9 * 0.51 + 0.9 * 0.50949 = 0.917541
    param, buf = np.array([1.0]), np.zeros(1)
    hyper = dict(lr=0.1, weight_decay=0.01, momentum=0.9, dampening=0.1, nesterov=False)
    compiled.sgd_update(param, np.array([0.5]), buf, first_step=True, **hyper)
    assert param[0] == pytest.approx(0.949, rel=1e-15)
    compiled.sgd_update(param, np.array([0.5]), buf, first_step=False, **hyper)
    assert param[0] == pytest.approx(0.949 - 0.0917541, rel=1e-15) and buf[0] == pytest.approx(0.917541)


ADAM_SETTINGS = [dict(weight_decay=wd, decoupled=dec, amsgrad=ams)
                 for wd in (0.0, 0.02) for dec in (False, True) for ams in (False, True) if wd or not dec]


def adam_state(params):
    return ([np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params],
            [np.zeros_like(p) for p in params])


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", ADAM_SETTINGS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_adam_update_multi_equals_the_twin_bit_for_bit(compiled, hyper, dtype):
    shapes = [(13, 7), (5,), (), (600, 500)]
    params = [sample(s, dtype, seed=i) for i, s in enumerate(shapes)]
    ours, theirs = [p.copy() for p in params], [p.copy() for p in params]
    our_state, their_state = adam_state(params), adam_state(params)
    for step in range(1, 4):
        grads = [sample(s, dtype, scale=1.0, seed=10 + step + i) for i, s in enumerate(shapes)]
        for kernel, ps, (m, v, v_max) in ((compiled, ours, our_state), (TWINS, theirs, their_state)):
            kernel.adam_update_multi(ps, grads, m, v, v_max if hyper["amsgrad"] else None, [step] * len(ps),
                                     lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **hyper)
    for a, b in zip(ours + sum(our_state, []), theirs + sum(their_state, [])):
        same(a, b)


@needs_numba
def test_adam_one_step_against_hand_calculation(compiled):
    # p = 1, g = 0.5: m = 0.05, v = 0.00025; bias-corrected 0.5 and 0.25, so p = 1 - lr * 0.5 / (0.5 + eps)
    for kernel in (compiled, TWINS):
        param = np.array([1.0])
        m, v = np.zeros(1), np.zeros(1)
        kernel.adam_update_multi([param], [np.array([0.5])], [m], [v], None, [1], lr=0.1, beta1=0.9,
                                 beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False)
        assert m[0] == pytest.approx(0.05, rel=1e-15) and v[0] == pytest.approx(0.00025, rel=1e-12)
        assert param[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15)


def test_adam_argument_errors_name_the_function_and_the_list():
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"adam_update_multi: got 1 params and 0 exp_avgs"):
        TWINS.adam_update_multi([p], [p], [], [p], None, [1], 0.1, 0.9, 0.999, 1e-8, 0.0, False, False)
    with pytest.raises(ValueError, match=r"amsgrad needs max_exp_avg_sqs"):
        TWINS.adam_update_multi([p], [p], [p], [p], None, [1], 0.1, 0.9, 0.999, 1e-8, 0.0, False, True)
    with pytest.raises(TypeError, match=r"adam_update_multi: grads\[0\] has dtype float64, expected float32"):
        TWINS.adam_update_multi([p], [np.zeros(3)], [p], [p], None, [1], 0.1, 0.9, 0.999, 1e-8, 0.0, False,
                                False)
    with pytest.raises(ValueError, match=r"steps\[0\] must be an int >= 1.*got 0"):
        TWINS.adam_update_multi([p], [p], [p], [p], None, [0], 0.1, 0.9, 0.999, 1e-8, 0.0, False, False)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dtype", [tg.float32, tg.float64])
def test_fused_adam_step_equals_the_reference_loop(name, amsgrad, dtype):
    """optim.Adam's step (adam_update_multi: the compiled kernels, or the twins without numba) against
    step_reference, the formula one parameter at a time."""
    import tensorgrad.nn as nn
    import tensorgrad.nn.functional as F

    def run(step_name):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, 3, dtype=dtype))
        opt = getattr(tg.optim, name)(model.parameters(), lr=1e-2, weight_decay=0.05, amsgrad=amsgrad)
        rng = np.random.default_rng(0)
        for _ in range(4):
            x, y = rng.normal(size=(8, 20)), rng.integers(0, 3, 8)
            opt.zero_grad()
            F.cross_entropy(model(tg.tensor(x, dtype=dtype)), y).backward()
            getattr(opt, step_name)()
        return [p.numpy().copy() for p in model.parameters()], opt

    (fused, fused_opt), (reference, _) = run("step"), run("step_reference")
    for a, b in zip(fused, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == tg.float32 else 1e-13, atol=1e-7)
    assert [s["step"] for s in fused_opt.state.values()] == [4] * 4


# ---------------------------------------------------------------------------------------------
# Threads: identical bits on 1 and 2 threads (and on the serial path).

def every_kernel(k, dtype):
    """Run every kernel of k on inputs spanning several parallel blocks; return all outputs."""
    x = sample((300, 700), dtype)  # 210,000 elements: 13 element blocks, 11 bias-column tiles
    bias = sample(700, dtype, seed=1)
    gy = sample(x.shape, dtype, scale=1.0, seed=2)
    outputs = []
    for kind in kernels.ACTIVATIONS:
        y = k.activation_forward(kind, x, alpha_of(kind))
        outputs += [y, k.bias_activation_forward(kind, x, bias, alpha_of(kind)),
                    k.activation_backward(kind, y, gy, alpha_of(kind)),
                    *k.activation_backward_bias(kind, y, gy, alpha_of(kind))]
    logits, target = sample((3000, 37), dtype, seed=3), np.random.default_rng(4).integers(0, 37, 3000)
    for reduction in kernels.REDUCTIONS:
        loss, row_max, row_sum = k.softmax_cross_entropy_forward(logits, target, reduction)
        outputs += [loss, row_max, row_sum, k.softmax_cross_entropy_backward(
            logits, target, row_max, row_sum, upstream(reduction, 3000, dtype), reduction)]
    params, bufs = [x.copy(), bias.copy()], [np.zeros_like(x), np.zeros_like(bias)]
    for step in range(2):
        k.sgd_update_multi(params, [gy, bias], bufs, 0.1, 1e-4, 0.9, 0.0, False, step == 0)
    adam_params = [x.copy(), bias.copy()]
    m, v, v_max = adam_state(adam_params)
    k.adam_update_multi(adam_params, [gy, bias], m, v, v_max, [1, 1], 1e-3, 0.9, 0.999, 1e-8, 0.01, True,
                        True)
    return outputs + params + bufs + adam_params + m + v + v_max


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_thread_count(compiled, dtype, monkeypatch, threaded):
    on_two_threads = every_kernel(compiled, dtype)
    monkeypatch.setattr(cpu_kernels, "PARALLEL_MIN_ELEMENTS", 1 << 62)
    serial = every_kernel(compiled, dtype)
    for a, b in zip(on_two_threads, serial):
        same(a, b)
    # the parallel functions on one thread of numba's pool, called directly
    from tensorgrad import _numba_kernels as jit
    x = sample((300, 700), dtype)
    y_two, y_one = np.empty_like(x), np.empty_like(x)
    jit.forward_parallel(1, x.reshape(-1), y_two.reshape(-1), dtype(0))
    numba.set_num_threads(1)
    try:
        jit.forward_parallel(1, x.reshape(-1), y_one.reshape(-1), dtype(0))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    same(y_one, y_two)


@needs_numba
def test_set_num_threads_checks_its_argument():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="set_num_threads: expected a positive int"):
            tg.set_num_threads(bad)
    with pytest.raises(ValueError, match=r"set_num_threads: 100000 threads asked for, but numba's pool has"):
        tg.set_num_threads(100000)
    before = tg.get_num_threads()
    try:
        tg.set_num_threads(1)
        assert tg.get_num_threads() == 1
    finally:
        tg.set_num_threads(before)


def run_python(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TENSORGRAD_CPU_KERNELS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    environment.update(env, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@needs_numba
def test_default_thread_count_follows_omp_num_threads_unless_numba_num_threads_is_set():
    code = "import numba, tensorgrad as tg; print(tg.get_num_threads(), numba.config.NUMBA_NUM_THREADS)"
    assert run_python(code, OMP_NUM_THREADS="1").split()[0] == "1"
    assert run_python(code, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="8").split()[0] == "1"
    ours, pool = run_python(code).split()  # neither set: every core numba sees
    assert ours == pool


@needs_numba
def test_parallel_launches_use_the_sleeping_workqueue_pool_unless_the_user_chose_a_layer():
    code = """
        import numba, numpy as np, tensorgrad as tg
        from tensorgrad import cpu_kernels, kernels
        tg.set_num_threads(2)
        p = np.ones(cpu_kernels.PARALLEL_MIN_ELEMENTS, np.float32)
        kernels.for_array(p).sgd_update(p, np.ones_like(p), None, 0.5, 0.0, 0.0, 0.0, False, True)
        print(numba.threading_layer(), p[0])
    """
    assert run_python(code, NUMBA_NUM_THREADS="2").split() == ["workqueue", "0.5"]
    assert run_python(code, NUMBA_NUM_THREADS="2", NUMBA_THREADING_LAYER="omp").split()[0] == "omp"


# ---------------------------------------------------------------------------------------------
# The dispatcher.

@needs_numba
def test_for_array_picks_the_compiled_kernels_for_numpy_arrays():
    chosen = kernels.for_array(np.zeros(3, np.float32))
    assert isinstance(chosen, cpu_kernels.NumbaKernels)
    assert kernels.for_array(np.zeros((2, 2))) is chosen


@needs_numba
def test_the_environment_variable_chooses_the_kernels(monkeypatch):
    monkeypatch.setenv("TENSORGRAD_CPU_KERNELS", "numpy")
    assert type(kernels.select_cpu_kernels()) is kernels.NumpyKernels
    monkeypatch.setenv("TENSORGRAD_CPU_KERNELS", "numba")
    assert isinstance(kernels.select_cpu_kernels(), cpu_kernels.NumbaKernels)
    monkeypatch.setenv("TENSORGRAD_CPU_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"TENSORGRAD_CPU_KERNELS='fast': expected 'numba'.*or 'numpy'"):
        kernels.select_cpu_kernels()


def test_without_numba_the_twins_serve_and_import_stays_light():
    """numba made unimportable: import tensorgrad works, numba is not loaded by it, for_array falls back to
    the twins, training works, set_num_threads accepts only 1, and asking for numba is an ImportError."""
    out = run_python("""
        import sys
        sys.modules["numba"] = None  # import numba now raises ImportError
        import numpy as np
        import tensorgrad as tg
        from tensorgrad import kernels
        print(type(kernels.for_array(np.zeros(2))).__name__, tg.get_num_threads())
        tg.set_num_threads(1)
        try:
            tg.set_num_threads(2)
        except RuntimeError as e:
            print("RuntimeError", "need numba" in str(e))
        import os
        os.environ["TENSORGRAD_CPU_KERNELS"] = "numba"
        try:
            kernels.select_cpu_kernels()
        except ImportError as e:
            print("ImportError", "numba is not installed" in str(e))
        x = tg.tensor(np.ones((4, 3), np.float32), requires_grad=True)
        (tg.sigmoid(x) * 2).sum().backward()
        print(float(x.grad.numpy()[0, 0]))
    """)
    lines = out.splitlines()
    assert lines[0] == "NumpyKernels 1"
    assert lines[1:3] == ["RuntimeError True", "ImportError True"]
    s = 1 / (1 + math.exp(-1))
    assert float(lines[3]) == pytest.approx(2 * s * (1 - s), rel=1e-6)


def test_import_tensorgrad_does_not_import_numba():
    assert run_python("import sys, tensorgrad; print('numba' in sys.modules)") == "False"


@needs_numba
def test_compiled_code_is_cached_on_disk():
    from numba.core.caching import NullCache

    from tensorgrad import _numba_kernels as jit
    for name in ("forward_span", "backward_bias_parallel", "cross_entropy_forward_rows", "sgd_span",
                 "adam_parallel"):
        assert not isinstance(getattr(jit, name)._cache, NullCache), name


@needs_numba
def test_argument_errors_are_the_twins(compiled):
    with pytest.raises(ValueError, match=r"activation_forward: unknown activation 'swish'"):
        compiled.activation_forward("swish", np.zeros(3))
    with pytest.raises(TypeError, match="activation_forward: x must be float32 or float64, got int64"):
        compiled.activation_forward("relu", np.arange(3))
    with pytest.raises(ValueError, match=r"bias_activation_forward: .*got \(3, 4\) and \(5,\)"):
        compiled.bias_activation_forward("relu", np.zeros((3, 4)), np.zeros(5))
    with pytest.raises(ValueError, match=r"activation_forward: x of shape \(3, 2\) must be C-contiguous"):
        compiled.activation_forward("relu", np.zeros((2, 3)).T)
    with pytest.raises(TypeError, match="softmax_cross_entropy_forward: target must be a C-contiguous int64"):
        compiled.softmax_cross_entropy_forward(np.zeros((2, 3)), np.zeros(2, np.int32), "mean")
    with pytest.raises(ValueError, match=r"sgd_update: momentum=0.9 needs a momentum buffer"):
        compiled.sgd_update(np.zeros(2), np.zeros(2), None, 0.1, 0.0, 0.9, 0.0, False, True)
    with pytest.raises(ValueError, match="sgd_update_multi: got 2 params, 1 grads"):
        compiled.sgd_update_multi([np.zeros(2), np.zeros(2)], [np.zeros(2)], None, 0.1, 0.0, 0.0, 0.0, False,
                                  True)
