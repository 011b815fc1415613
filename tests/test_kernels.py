"""Fused kernels: the CUDA sources compile, the NumPy twins compute the documented functions, and
on a GPU each CUDA kernel agrees with its twin.

References here are written independently of the twins: element by element with Python's `math`
in double precision, or from the defining formula (finite differences, hand-computed SGD steps).
"""

import math
import os
import re
import shutil
import struct
import subprocess
import warnings
from functools import cache
from pathlib import Path

import cuda_emulator
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorgrad import backend, kernels

ROOT = Path(__file__).resolve().parent.parent
CUDA_SOURCES = sorted((ROOT / "kernels").glob("*.cu"))
ARCHES = ("sm_80", "sm_90")
DTYPES = (np.float32, np.float64)
NONLINEAR = tuple(kind for kind in kernels.ACTIVATIONS if kind != "identity")
ALPHA = {"leaky_relu": 0.01, "elu": 1.3}
TWINS = kernels.NumpyKernels()
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def alpha_of(kind):
    return ALPHA.get(kind, 0.0)


def tolerance(dtype):
    """(rtol, atol) for a twin in `dtype` against a double-precision reference."""
    return (2e-6, 1e-7) if dtype == np.float32 else (1e-13, 1e-300)


# ---------------------------------------------------------------------------------------------
# CUDA sources: nvcc compiles each for sm_80 and sm_90, and every kernel kernels.py launches exists.

@cache
def _nvcc(source: Path, arch: str, out_dir: Path) -> tuple[bytes, str]:
    """(cubin, ptxas's resource report) for one source and architecture, compiled on its own as a
    CUDA developer would: `nvcc -arch=... -I kernels -cubin kernels/X.cu` from the repository root."""
    target = out_dir / f"{source.stem}.{arch}.cubin"
    command = ["nvcc", f"-arch={arch}", "-I", "kernels", "-cubin", "-Xptxas", "-v", "-o", str(target),
               str(source.relative_to(ROOT))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return target.read_bytes(), result.stderr


def _cubin(source: Path, arch: str, out_dir: Path) -> bytes:
    return _nvcc(source, arch, out_dir)[0]


@pytest.fixture(scope="module")
def cubin_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cubin")


def _entry_points(cubin: bytes) -> set[str]:
    """Names of the kernel entry points (global functions flagged STO_CUDA_ENTRY) in an ELF64 cubin."""
    section_offset, = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count = struct.unpack_from("<HH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, section_offset + i * entry_size)
                for i in range(count)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, symbol_size):
            name_at, info, other, _, _, _ = struct.unpack_from("<IBBHQQ", cubin, at)
            is_global_function = info >> 4 == 1 and info & 0xF == 2
            if is_global_function and other & 0x10:
                end = cubin.index(b"\0", strings + name_at)
                names.add(cubin[strings + name_at:end].decode())
    return names


def test_every_cuda_source_is_in_the_launch_table():
    assert {source.name for source in CUDA_SOURCES} == set(kernels.KERNEL_SOURCES)


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_alone_with_nvcc_and_the_kernels_include_path(source, arch, cubin_dir):
    assert _cubin(source, arch, cubin_dir).startswith(b"\x7fELF")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_no_kernel_spills_registers_to_local_memory(source, arch, cubin_dir):
    # a spill turns register traffic into memory traffic: a memory-bound kernel loses its bandwidth
    report = _nvcc(source, arch, cubin_dir)[1]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills, f"ptxas printed no resource report for {source.name}:\n{report}"
    assert all(stores == loads == "0" for stores, loads in spills), report


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_launched_kernels_are_extern_c_globals_of_their_source(source, cubin_dir):
    launched = set(kernels.KERNEL_SOURCES[source.name])
    # The kernels are stamped out by macros, so grep the preprocessed text; nvcc spells
    # __global__ as __attribute__((global)) there.
    preprocessed = subprocess.run(["nvcc", "-E", "-arch=sm_80", "-I", str(source.parent), str(source)],
                                  capture_output=True, text=True, timeout=300, check=True).stdout
    declared = set(re.findall(r'extern "C" (?:__global__|__attribute__\(\(global\)\)) void (\w+)\(',
                              preprocessed))
    assert launched <= declared, f"launched but not declared extern \"C\" __global__: {launched - declared}"
    # C linkage shows in the object file: the unmangled names are the module's entry points.
    for arch in ARCHES:
        entry_points = _entry_points(_cubin(source, arch, cubin_dir))
        assert entry_points == launched, (f"{source.name} ({arch}): entry points not launched "
                                          f"{entry_points - launched}, "
                                          f"launched but missing {launched - entry_points}")


def test_cuda_sources_include_only_the_shared_header():
    # NVRTC (cupy.RawModule) has no system include path; the loader gives it the sources' folder
    for source in CUDA_SOURCES:
        includes = re.findall(r"^\s*#\s*include\s*(.*)$", source.read_text(), re.MULTILINE)
        assert includes == [f'"{kernels.CUDA_PRELUDE}"'], f"{source.name} includes {includes}"
    assert "#include" not in (CUDA_SOURCES[0].parent / kernels.CUDA_PRELUDE).read_text()


@cuda_emulator.needs_compiler
def test_loader_compiles_each_file_as_is_with_its_own_folder_as_the_include_path():
    # A wheel loads the sources from tensorgrad/cuda_kernels, so the include path must follow the
    # folder the sources come from, never the checkout's kernels/.
    gpu = _emulated_kernels()
    gpu.load(np.float32)
    source_dir = kernels.kernel_source_dir()
    for source, module in gpu._modules.items():
        assert module.code == (source_dir / source).read_text(encoding="utf-8")
        assert f"-I{source_dir}" in module.options


def test_source_finder_prefers_the_installed_package_then_the_source_tree():
    package = Path(kernels.__file__).resolve().parent
    assert kernels.KERNEL_SOURCE_DIRS == (package / "cuda_kernels", package.parent / "kernels")
    assert kernels.kernel_source_dir() in kernels.KERNEL_SOURCE_DIRS


# ---------------------------------------------------------------------------------------------
# Double-precision references, element by element.

def _sigmoid(v):
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)
    return e / (1 + e)


FORWARD = {
    "identity": lambda v, a: v,
    "sigmoid": lambda v, a: _sigmoid(v),
    "tanh": lambda v, a: math.tanh(v),
    "relu": lambda v, a: v if v > 0 else 0.0,
    "leaky_relu": lambda v, a: v if v > 0 else a * v,
    "elu": lambda v, a: v if v > 0 else a * math.expm1(v),
}
# derivatives in terms of the input x
DERIVATIVE = {
    "identity": lambda v, a: 1.0,
    "sigmoid": lambda v, a: _sigmoid(v) * (1 - _sigmoid(v)),
    "tanh": lambda v, a: 1 - math.tanh(v) ** 2,
    "relu": lambda v, a: 1.0 if v > 0 else 0.0,
    "leaky_relu": lambda v, a: 1.0 if v > 0 else a,
    "elu": lambda v, a: 1.0 if v > 0 else a * math.exp(v),
}


def reference(table, kind, x, alpha):
    return np.array([table[kind](float(v), alpha) for v in x.ravel()]).reshape(x.shape)


def sample(shape, dtype, scale=3.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ---------------------------------------------------------------------------------------------
# NumPy twins: activations.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_forward_matches_reference(kind, dtype):
    x = sample((6, 37), dtype)
    y = TWINS.activation_forward(kind, x, alpha_of(kind))
    assert y.dtype == dtype and y.shape == x.shape
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(y, reference(FORWARD, kind, x, alpha_of(kind)), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_backward_from_saved_output_matches_derivative(kind, dtype):
    x = sample((5, 41), dtype)
    gy = sample(x.shape, dtype, scale=1.0, seed=1)
    y = TWINS.activation_forward(kind, x, alpha_of(kind))
    gx = TWINS.activation_backward(kind, y, gy, alpha_of(kind))
    assert gx.dtype == dtype
    expected = gy.astype(np.float64) * reference(DERIVATIVE, kind, x, alpha_of(kind))
    # The slope is formed from the rounded y: where f' is small, 1 - y or y + alpha cancels, so the
    # error is absolute (a few ulps of y) rather than relative.
    rtol, atol = (2e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-14)
    np.testing.assert_allclose(gx, expected, rtol=rtol, atol=atol)
    # the dense layer's epilogue: the same gradient, and its sums over the 5 rows for the bias
    gx_too, bias_grad = TWINS.activation_backward_bias(kind, y, gy, alpha_of(kind))
    np.testing.assert_array_equal(gx_too, gx)
    column_sums = [math.fsum(expected[:, c]) for c in range(x.shape[1])]
    assert bias_grad.dtype == dtype and bias_grad.shape == (41,)
    np.testing.assert_allclose(bias_grad, column_sums, rtol=rtol, atol=5 * atol)


@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_backward_matches_finite_differences(kind):
    x = sample((300,), np.float64)
    x = x[np.abs(x) > 1e-3]  # keep clear of the kinks at 0, where the derivative is one-sided
    alpha, h = alpha_of(kind), 1e-6
    forward = TWINS.activation_forward
    numeric = (forward(kind, x + h, alpha) - forward(kind, x - h, alpha)) / (2 * h)
    y = TWINS.activation_forward(kind, x, alpha)
    analytic = TWINS.activation_backward(kind, y, np.ones_like(y), alpha)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_derivatives_at_zero_take_the_nonpositive_branch():
    zero = np.zeros(1)
    one = np.ones(1)
    assert TWINS.activation_backward("relu", zero, one)[0] == 0.0
    assert TWINS.activation_backward("leaky_relu", zero, one, 0.2)[0] == 0.2
    assert TWINS.activation_backward("elu", zero, one, 0.7)[0] == 0.7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activations_stay_finite_and_silent_at_magnitude_1e4(kind, dtype):
    x = np.array([-1e4, -100.0, -0.0, 0.0, 100.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = TWINS.activation_forward(kind, x, alpha_of(kind))
        gx = TWINS.activation_backward(kind, y, np.ones_like(y), alpha_of(kind))
    assert np.isfinite(y).all() and np.isfinite(gx).all()
    if kind == "sigmoid":
        np.testing.assert_array_equal(y[[0, -1]], [0.0, 1.0])
        np.testing.assert_array_equal(gx[[0, -1]], [0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e4, 1e4)),
       st.sampled_from(kernels.ACTIVATIONS), st.floats(0.0, 3.0))
def test_activation_forward_matches_reference_anywhere_in_range(x, kind, alpha):
    y = TWINS.activation_forward(kind, x, alpha)
    np.testing.assert_allclose(y, reference(FORWARD, kind, x, alpha), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activation_forward_with_alpha_above_one(kind):
    # leaky_relu as max(x, alpha*x) would be wrong for alpha > 1; every kind follows its definition
    x = sample((50,), np.float64)
    y = TWINS.activation_forward(kind, x, 2.5)
    np.testing.assert_allclose(y, reference(FORWARD, kind, x, 2.5), rtol=1e-13)
    gy = sample((50,), np.float64, seed=8)
    np.testing.assert_allclose(TWINS.activation_backward(kind, y, gy, 2.5),
                               gy * reference(DERIVATIVE, kind, x, 2.5), rtol=1e-12, atol=1e-14)
    x_inplace = x.copy()
    TWINS.activation_forward(kind, x_inplace, 2.5, out=x_inplace)
    np.testing.assert_array_equal(x_inplace, y)


@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activations_in_place(kind):
    alpha = alpha_of(kind)
    x = sample((4, 9), np.float32)
    expected_y = TWINS.activation_forward(kind, x, alpha)
    x_inplace = x.copy()
    assert TWINS.activation_forward(kind, x_inplace, alpha, out=x_inplace) is x_inplace
    np.testing.assert_array_equal(x_inplace, expected_y)

    gy = sample(x.shape, np.float32, seed=3)
    expected_gx = TWINS.activation_backward(kind, expected_y, gy, alpha)
    assert TWINS.activation_backward(kind, expected_y, gy, alpha, out=gy) is gy
    np.testing.assert_array_equal(gy, expected_gx)


@pytest.mark.parametrize("alpha", [0.3, 2.5])
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_activations_of_0d_arrays_are_0d_arrays(kind, alpha):
    x = np.array(-0.7, dtype=np.float32)
    y = TWINS.activation_forward(kind, x, alpha)
    gx = TWINS.activation_backward(kind, y, np.array(2.0, np.float32), alpha)
    for result in (y, gx):
        assert isinstance(result, np.ndarray) and result.shape == () and result.dtype == np.float32
    assert y == pytest.approx(FORWARD[kind](-0.7, alpha), rel=1e-6)
    assert gx == pytest.approx(2 * DERIVATIVE[kind](-0.7, alpha), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_bias_activation_forward(kind, dtype):
    x = sample((7, 13), dtype)
    bias = sample((13,), dtype, seed=5)
    expected = reference(FORWARD, kind, x.astype(np.float64) + bias.astype(np.float64), alpha_of(kind))
    y = TWINS.bias_activation_forward(kind, x, bias, alpha_of(kind))
    assert y.dtype == dtype and y.shape == x.shape
    rtol, atol = tolerance(dtype)
    # float32: x + b is rounded before f sees it
    np.testing.assert_allclose(y, expected, rtol=rtol * 10, atol=atol * 100 if dtype == np.float32 else atol)
    assert TWINS.bias_activation_forward(kind, x, bias, alpha_of(kind), out=x) is x
    np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# NumPy twins: softmax cross-entropy.

def log_softmax_reference(logits):
    out = np.empty(logits.shape)
    for i, row in enumerate(logits.astype(np.float64)):
        top = max(row)
        log_total = math.log(math.fsum(math.exp(v - top) for v in row))
        out[i] = [v - top - log_total for v in row]
    return out


def targets(n, c, seed=0):
    return np.random.default_rng(seed).integers(0, c, size=n).astype(np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
def test_softmax_cross_entropy_forward_matches_log_softmax(reduction, dtype):
    logits = sample((9, 6), dtype)
    target = targets(9, 6)
    loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    log_p = log_softmax_reference(logits)
    per_row = -log_p[np.arange(9), target]
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
    assert loss.dtype == row_max.dtype == row_sum.dtype == dtype
    assert loss.shape == ((9,) if reduction == "none" else ())
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(loss, expected, rtol=rtol * 5, atol=atol)
    np.testing.assert_array_equal(row_max, [max(row) for row in logits])
    # log(row_sum) is what log_softmax subtracts from each logit less the row's max
    np.testing.assert_allclose(np.log(row_sum), (logits - log_p - row_max[:, None])[:, 0], rtol=rtol * 5,
                               atol=atol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
def test_softmax_cross_entropy_backward_is_softmax_minus_onehot(reduction, dtype):
    n, c = 8, 5
    logits = sample((n, c), dtype)
    target = targets(n, c, seed=2)
    _, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    grad_loss = (sample((n,), dtype, scale=1.0, seed=4) if reduction == "none"
                 else np.array(2.5, dtype=dtype))
    grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    softmax = np.exp(log_softmax_reference(logits))
    onehot = np.eye(c)[target]
    weight = {"none": lambda: grad_loss.astype(np.float64)[:, None], "sum": lambda: 2.5,
              "mean": lambda: 2.5 / n}[reduction]()
    assert grad.dtype == dtype and grad.shape == (n, c)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(grad, (softmax - onehot) * weight, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
def test_softmax_cross_entropy_backward_matches_finite_differences(reduction):
    n, c = 4, 7
    logits = sample((n, c), np.float64)
    target = targets(n, c, seed=6)
    weights = sample((n,), np.float64, scale=1.0, seed=7)
    grad_loss = weights if reduction == "none" else np.array(1.5)

    def objective(z):
        loss = TWINS.softmax_cross_entropy_forward(z, target, reduction)[0]
        return float(np.sum(loss * grad_loss))

    h = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = h
        numeric[index] = (objective(logits + step) - objective(logits - step)) / (2 * h)
    _, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    analytic = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    # a central difference carries the objective's rounding divided by h: with 'sum' that is about
    # 1e-16 * 24 / 1e-6, a few 1e-9
    roundoff = 4 * np.finfo(np.float64).eps * abs(objective(logits)) / h
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=roundoff)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_is_stable_at_magnitude_1e4(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    target = np.array([0, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, "none")
        grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, np.ones(3, dtype),
                                                    "none")
    # the loss is (max - logit) + log(sum): at -1e4 it keeps log(3) to float32's relative precision, where
    # -1e4 + log(3) rounded to float32 (a log-sum-exp) would be off by 2.4e-4
    atol = 1e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(loss, [0.0, 1e4, math.log(3)], rtol=1e-7, atol=atol)
    np.testing.assert_allclose(grad, [[0, 0, 0], [1, 0, -1], [1 / 3, -2 / 3, 1 / 3]], atol=atol)


def test_softmax_cross_entropy_marks_out_of_range_targets_with_nan():
    logits = sample((3, 4), np.float64)
    target = np.array([1, 4, -1])
    loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, "none")
    assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all()
    assert np.isfinite(row_max).all() and np.isfinite(row_sum).all()
    grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, np.ones(3), "none")
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()


def test_softmax_cross_entropy_backward_writes_into_out():
    logits = sample((3, 4), np.float32)
    target = targets(3, 4)
    _, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target)
    out = np.full_like(logits, np.nan)
    grad_loss = np.array(1.0, np.float32)
    assert TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, out=out) is out
    np.testing.assert_array_equal(out, TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum,
                                                                             grad_loss))


# Precision of the float32 softmax cross-entropy far from zero. The gradient's error is measured
# normwise: max |g - ref| / max |ref| over the whole (N, C) gradient, against the float64 reference of
# the same float32 logits, i.e. each element's error against the gradient's scale (about g / N for
# 'mean'). That is how issue 12 measured it (an lse rounded to float32 gave 3.5e-6 at 1e2, 4e-4 at 1e4,
# 3e-2 at 1e6 and 0.9 at 1e8). Element by element it could not be asked: where the target's softmax p
# is close to 1, p - 1 needs digits that no float32 computation holds (PyTorch's neither).
LOGIT_OFFSETS = (1e0, 1e2, 1e4, 1e6, 1e8)
PRECISE_GRADIENT = 1e-6


def offset_logits(shape, offset, seed=0):
    """float32 logits spread like sample()'s around `offset`; far out they fall on a coarse grid (8 apart
    at 1e8), which the float64 references below take as given."""
    return (sample(shape, np.float64, seed=seed) + offset).astype(np.float32)


def cross_entropy_reference(logits, target, weight):
    """(per-row loss, gradient) in float64 from log_softmax_reference: -log p[t] and (p - onehot) * weight,
    weight a scalar or one per row."""
    log_p = log_softmax_reference(logits)
    rows = np.arange(len(target))
    grad = np.exp(log_p)
    grad[rows, target] -= 1
    return -log_p[rows, target], grad * np.reshape(weight, (-1, 1))


def normwise_error(actual, reference):
    return float(np.max(np.abs(actual.astype(np.float64) - reference)) / np.max(np.abs(reference)))


def assert_precise_loss(actual, reference):
    """Within 1e-6 relative to the loss, or absolute 1e-6 where a row's loss is below 1 (its log of a sum
    near 1 cannot be closer in float32)."""
    reference = np.asarray(reference)
    error = np.abs(np.asarray(actual, np.float64) - reference)
    assert np.all(error <= PRECISE_GRADIENT * np.maximum(np.abs(reference), 1)), (actual, reference)


@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
@pytest.mark.parametrize("offset", LOGIT_OFFSETS)
def test_softmax_cross_entropy_float32_is_precise_at_large_offsets(offset, reduction):
    n, c = 64, 10
    logits = offset_logits((n, c), offset)
    target = targets(n, c, seed=1)
    grad_loss = (sample((n,), np.float32, scale=1.0, seed=2) if reduction == "none"
                 else np.array(1.0, np.float32))
    loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    weight = {"none": grad_loss.astype(np.float64), "sum": 1.0, "mean": 1.0 / n}[reduction]
    per_row, expected = cross_entropy_reference(logits, target, weight)
    assert_precise_loss(loss, {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction])
    assert normwise_error(grad, expected) <= PRECISE_GRADIENT


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
def test_softmax_cross_entropy_of_equal_logits_at_1e30_is_exact(reduction, dtype):
    # softmax is 1/3 each: the gradient is exactly (1/3 - onehot) / N rounded once, 1/9 and -2/9 for 'mean'
    # over N = 3 (an lse rounded to float32 made it 1/3, 1/3, 0: 1e30 + log(3) rounds back to 1e30)
    logits = np.full((3, 3), 1e30, dtype)
    target = np.array([2, 2, 2])
    grad_loss = np.ones(3, dtype) if reduction == "none" else np.array(1.0, dtype)
    loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, reduction)
    grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    divisor = 3 if reduction == "mean" else 1
    np.testing.assert_array_equal(grad, np.array([[1 / 9, 1 / 9, -2 / 9]] * 3 if divisor == 3 else
                                                 [[1 / 3, 1 / 3, -2 / 3]] * 3, dtype))
    expected_loss = {"none": [math.log(3)] * 3, "sum": 3 * math.log(3), "mean": math.log(3)}[reduction]
    np.testing.assert_allclose(loss, expected_loss, rtol=2 * np.finfo(dtype).eps)


# Rows whose max is not finite, as PyTorch gives them: all -inf or any +inf or NaN: NaN loss and gradient;
# a target at -inf below a finite max: loss +inf, gradient -1 there and the softmax elsewhere.
NON_FINITE_LOGITS = [[-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 1.0], [-np.inf, -np.inf, 5.0],
                     [np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]]
NON_FINITE_TARGETS = [0, 0, 2, 1, 1, 1]


def non_finite_expected():
    """(loss, grad) per row of NON_FINITE_LOGITS for reduction 'none' with unit upstream gradients."""
    nan, e = math.nan, math.e
    loss = [nan, math.inf, 0.0, nan, nan, math.log(1 + e + e * e) - 1]
    grad = [[nan] * 3, [-1.0, 1 / (1 + e), e / (1 + e)], [0.0, 0.0, 0.0], [nan] * 3, [nan] * 3,
            [1 / (1 + e + e * e), e / (1 + e + e * e) - 1, e * e / (1 + e + e * e)]]
    return np.array(loss), np.array(grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_rows_with_infinite_max_are_nan(dtype):
    logits, target = np.array(NON_FINITE_LOGITS, dtype), np.array(NON_FINITE_TARGETS)
    # no RuntimeWarning either (pytest makes them errors): the twin's inf - inf is intended
    loss, row_max, row_sum = TWINS.softmax_cross_entropy_forward(logits, target, "none")
    grad = TWINS.softmax_cross_entropy_backward(logits, target, row_max, row_sum, np.ones(6, dtype), "none")
    expected_loss, expected_grad = non_finite_expected()
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)  # NaN where NaN is expected
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7)
    assert np.isnan(TWINS.softmax_cross_entropy_forward(logits, target, "mean")[0])


# ---------------------------------------------------------------------------------------------
# NumPy twins: SGD.

SGD_SETTINGS = [
    dict(weight_decay=wd, momentum=m, dampening=d, nesterov=nest)
    for wd in (0.0, 0.05) for m in (0.0, 0.9) for d in (0.0, 0.3) for nest in (False, True)
    if not (m == 0 and (d or nest))
]


def run_sgd(update, params, grads, lr, momentum, **hyper):
    """Three steps of `update` over copies; returns the final params and momentum buffers."""
    params = [p.copy() for p in params]
    bufs = [np.zeros_like(p) for p in params] if momentum else None
    for step in range(3):
        for i, (p, g) in enumerate(zip(params, grads)):
            update(p, g * (step + 1), None if bufs is None else bufs[i], lr=lr, momentum=momentum,
                   first_step=step == 0, **hyper)
    return params, bufs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", SGD_SETTINGS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_sgd_update_matches_reference_loop(hyper, dtype):
    # (3, 32769) spans several of the twin's cache-sized chunks and ends in a ragged one
    params = [sample((13, 7), dtype, seed=1), sample((5,), dtype, seed=2), sample((3, 32769), dtype, seed=5)]
    grads = [sample((13, 7), dtype, seed=3), sample((5,), dtype, seed=4), sample((3, 32769), dtype, seed=6)]
    fused, fused_bufs = run_sgd(TWINS.sgd_update, params, grads, lr=0.1, **hyper)
    ref, ref_bufs = run_sgd(kernels.sgd_update_reference, params, grads, lr=0.1, **hyper)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for a, b in zip(fused + (fused_bufs or []), ref + (ref_bufs or [])):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


HAND_STEPS = [
    # (hyperparameters, param after step 1, after step 2); p0 = 1, grad = 0.5 each step, lr = 0.1
    (dict(weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False), 0.95, 0.9),
    # d1 = 0.51, buf1 = 0.51; d2 = 0.5 + 0.01*0.949 = 0.50949, buf2 = 0.9*0.51 + 0.9*0.50949 = 0.917541
    (dict(weight_decay=0.01, momentum=0.9, dampening=0.1, nesterov=False), 0.949, 0.8572459),
    # step 1: buf = 0.51, d = 0.51 + 0.9*0.51 = 0.969; step 2: d = 0.509031, buf = 0.968031,
    # d = 0.509031 + 0.9*0.968031 = 1.3802589
    (dict(weight_decay=0.01, momentum=0.9, dampening=0.0, nesterov=True), 0.9031, 0.76507411),
]


@pytest.mark.parametrize("update", [TWINS.sgd_update, kernels.sgd_update_reference],
                         ids=["twin", "reference"])
@pytest.mark.parametrize("hyper, after_one, after_two", HAND_STEPS)
def test_sgd_update_against_hand_calculation(update, hyper, after_one, after_two):
    param = np.array([1.0])
    buf = np.zeros(1) if hyper["momentum"] else None
    update(param, np.array([0.5]), buf, lr=0.1, first_step=True, **hyper)
    assert param[0] == pytest.approx(after_one, rel=1e-12)
    update(param, np.array([0.5]), buf, lr=0.1, first_step=False, **hyper)
    assert param[0] == pytest.approx(after_two, rel=1e-12)


@pytest.mark.parametrize("hyper", SGD_SETTINGS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_sgd_update_of_a_0d_parameter(hyper):
    param, ref = np.array(1.0), np.array(1.0)
    buf, ref_buf = (np.zeros(()), np.zeros(())) if hyper["momentum"] else (None, None)
    for step in range(2):
        TWINS.sgd_update(param, np.array(0.5), buf, lr=0.1, first_step=step == 0, **hyper)
        kernels.sgd_update_reference(ref, np.array(0.5), ref_buf, lr=0.1, first_step=step == 0, **hyper)
    assert param.shape == () and param == pytest.approx(float(ref), rel=1e-15)


def test_sgd_update_leaves_the_gradient_alone():
    param, grad, buf = np.ones(4), np.full(4, 0.5), np.zeros(4)
    TWINS.sgd_update(param, grad, buf, lr=0.1, weight_decay=0.1, momentum=0.9, dampening=0.5,
                     nesterov=False, first_step=True)
    np.testing.assert_array_equal(grad, np.full(4, 0.5))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_multi_equals_per_parameter_updates(momentum):
    # the small set is gathered into one flat update; with the (200, 200) tensor it goes one by one
    for shapes in ([(3, 4), (1,), (17,)], [(3, 4), (200, 200), (17,)]):
        params = [sample(s, np.float32, seed=i) for i, s in enumerate(shapes)]
        grads = [sample(s, np.float32, seed=10 + i) for i, s in enumerate(shapes)]
        for dampening in (0.0, 0.25):
            hyper = dict(lr=0.05, weight_decay=0.01, momentum=momentum, dampening=dampening,
                         nesterov=momentum > 0 and dampening == 0)
            multi = [p.copy() for p in params]
            multi_bufs = [np.zeros_like(p) for p in params] if momentum else None
            single = [p.copy() for p in params]
            single_bufs = [np.zeros_like(p) for p in params] if momentum else [None] * len(params)
            for step in range(3):
                TWINS.sgd_update_multi(multi, grads, multi_bufs, first_step=step == 0, **hyper)
                for p, g, b in zip(single, grads, single_bufs):
                    TWINS.sgd_update(p, g, b, first_step=step == 0, **hyper)
            for a, b in zip(multi + (multi_bufs or []), single + (single_bufs if momentum else [])):
                np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Argument errors name the function, the shapes as tuples and what was expected.

def test_unknown_activation_is_a_value_error():
    with pytest.raises(ValueError, match=r"activation_forward: unknown activation 'swish'.*'relu'"):
        TWINS.activation_forward("swish", np.zeros(3))
    with pytest.raises(ValueError, match="activation_backward: unknown activation"):
        TWINS.activation_backward("gelu", np.zeros(3), np.zeros(3))


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="activation_forward: x must be float32 or float64, got int64"):
        TWINS.activation_forward("relu", np.arange(3))


def test_mismatched_shapes_are_value_errors():
    with pytest.raises(ValueError,
                       match=r"bias_activation_forward: .*\(N, M\).*\(M,\).*got \(3, 4\) and \(5,\)"):
        TWINS.bias_activation_forward("relu", np.zeros((3, 4)), np.zeros(5))
    with pytest.raises(ValueError, match=r"activation_backward: gy has shape \(2, 3\), expected \(3, 2\)"):
        TWINS.activation_backward("tanh", np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError,
                       match=r"softmax_cross_entropy_forward: .*target of shape \(N,\) = \(4,\).*got \(3,\)"):
        TWINS.softmax_cross_entropy_forward(np.zeros((4, 2)), np.zeros(3, np.int64), "mean")
    with pytest.raises(ValueError, match=r"grad_loss has shape \(\), expected \(4,\)"):
        TWINS.softmax_cross_entropy_backward(np.zeros((4, 2)), np.zeros(4, np.int64), np.zeros(4), np.ones(4),
                                             np.array(1.0), "none")
    with pytest.raises(ValueError, match=r"row_sum has shape \(3,\), expected \(4,\) \(one per row"):
        TWINS.softmax_cross_entropy_backward(np.zeros((4, 2)), np.zeros(4, np.int64), np.zeros(4), np.ones(3),
                                             np.array(1.0), "mean")


def test_mismatched_dtypes_are_type_errors():
    with pytest.raises(TypeError, match="activation_forward: out has dtype float64, expected float32"):
        TWINS.activation_forward("relu", np.zeros(3, np.float32), out=np.zeros(3))
    with pytest.raises(TypeError, match="softmax_cross_entropy_forward: target must be a C-contiguous int64"):
        TWINS.softmax_cross_entropy_forward(np.zeros((2, 3)), np.zeros(2, np.int32), "mean")
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        TWINS.softmax_cross_entropy_forward(np.zeros((2, 3)), np.zeros(2, np.int64), "avg")


def test_sgd_argument_errors():
    with pytest.raises(ValueError, match=r"sgd_update: momentum=0.9 needs a momentum buffer"):
        TWINS.sgd_update(np.zeros(2), np.zeros(2), None, lr=0.1, weight_decay=0.0, momentum=0.9,
                         dampening=0.0, nesterov=False, first_step=True)
    with pytest.raises(ValueError, match=r"sgd_update: grad has shape \(3,\), expected \(2,\)"):
        TWINS.sgd_update(np.zeros(2), np.zeros(3), None, lr=0.1, weight_decay=0.0, momentum=0.0,
                         dampening=0.0, nesterov=False, first_step=True)
    with pytest.raises(ValueError, match="sgd_update_multi: got 2 params, 1 grads"):
        TWINS.sgd_update_multi([np.zeros(2), np.zeros(2)], [np.zeros(2)], None, lr=0.1, weight_decay=0.0,
                               momentum=0.0, dampening=0.0, nesterov=False, first_step=True)


def test_non_contiguous_input_is_rejected():
    with pytest.raises(ValueError, match=r"activation_forward: x of shape \(3, 2\) must be C-contiguous"):
        TWINS.activation_forward("relu", np.zeros((2, 3)).T)


def test_for_array_dispatches_on_the_array_type():
    assert kernels.for_array(np.zeros(2)) is kernels.for_array(np.ones((3, 3), np.float32))
    assert isinstance(kernels.for_array(np.zeros(2)), kernels.NumpyKernels)
    with pytest.raises(TypeError, match="kernels.for_array: expected a numpy or cupy array, got list"):
        kernels.for_array([1.0])


# ---------------------------------------------------------------------------------------------
# Every CUDA kernel against its NumPy twin, outputs poisoned with NaN before each launch: on a GPU
# through CuPy, and everywhere through the CPU emulator (tests/cuda_emulator.py), which runs the same
# kernel source and the same CudaKernels launch code with g++ in place of NVRTC.

SIZES = (1, 7, 1025, 2**20 + 3)
# 2-D shapes: the sizes as columns and as rows, plus widths that are whole 16-byte vectors
SHAPES_2D = ([(3, s) for s in SIZES] + [(s, 3) for s in SIZES[1:]] + [(5, 4), (33, 1024)])
# The emulator runs a warp's shuffles as fiber switches, about a millisecond per softmax row; the
# row-stride loop is already taken at 1025 rows (its grid covers 8 rows per block, 32 blocks).
EMULATED_MAX_SOFTMAX_ROWS = 4096
# activation_backward_bias meets at two barriers per 32 columns; a few thousand columns cover its
# column-stride loop (32 blocks of 32 columns).
EMULATED_MAX_BIAS_COLUMNS = 4096


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu),
                        pytest.param("emulated", marks=cuda_emulator.needs_compiler)])
def cp(request):
    """CuPy on a GPU, or the CPU emulator's stand-in for it."""
    return backend.cupy() if request.param == "cuda" else _emulated_cupy()


@cache
def _emulated_cupy():
    return cuda_emulator.EmulatedCupy()


@cache
def _emulated_kernels():
    return kernels.CudaKernels(0, cupy=_emulated_cupy())


@pytest.fixture
def gpu(cp):
    """The CudaKernels of the device `cp` stands for."""
    return _emulated_kernels() if cp is _emulated_cupy() else kernels.for_array(cp.zeros(1))


@pytest.fixture
def real_cp():
    return backend.cupy()


def device_sample(cp, shape, dtype, scale=3.0, seed=0, misaligned=False):
    """A cupy copy of sample(); misaligned puts it one element past a 16-byte boundary."""
    host = sample(shape, dtype, scale, seed)
    if not misaligned:
        return cp.asarray(host), host
    backing = cp.empty(host.size + 1, dtype=dtype)
    device = backing[1:].reshape(shape)
    device.set(host)
    return device, host


def poisoned(cp, shape, dtype, misaligned=False):
    backing = cp.full(int(np.prod(shape)) + 1, np.nan, dtype=dtype)
    return (backing[1:] if misaligned else backing[:-1]).reshape(shape)


def gpu_tolerance(dtype):
    # transcendental functions differ by a few ulps between CUDA's libdevice and NumPy
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_activation_forward_and_backward_match_twin(cp, gpu, kind, dtype, size, misaligned):
    alpha = alpha_of(kind)
    x, x_host = device_sample(cp, (size,), dtype, misaligned=misaligned)
    y = poisoned(cp, (size,), dtype, misaligned)
    assert gpu.activation_forward(kind, x, alpha, out=y) is y
    y_host = TWINS.activation_forward(kind, x_host, alpha)
    np.testing.assert_allclose(y.get(), y_host, **gpu_tolerance(dtype))

    gy, gy_host = device_sample(cp, (size,), dtype, scale=1.0, seed=1, misaligned=misaligned)
    y_saved = cp.asarray(y_host)
    gx = poisoned(cp, (size,), dtype, misaligned)
    gpu.activation_backward(kind, y_saved, gy, alpha, out=gx)
    np.testing.assert_allclose(gx.get(), TWINS.activation_backward(kind, y_host, gy_host, alpha),
                               **gpu_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_activations_in_place_and_at_magnitude_1e4(cp, gpu, kind, dtype):
    x_host = np.array([-1e4, -30.0, -1.0, -0.0, 0.0, 1.0, 30.0, 1e4, 2.0], dtype=dtype)
    x = cp.asarray(x_host)
    assert gpu.activation_forward(kind, x, alpha_of(kind), out=x) is x
    y = x.get()
    np.testing.assert_allclose(y, TWINS.activation_forward(kind, x_host, alpha_of(kind)),
                               **gpu_tolerance(dtype))
    assert np.isfinite(y).all()
    gy = cp.ones_like(x)
    gpu.activation_backward(kind, x, gy, alpha_of(kind), out=gy)
    np.testing.assert_allclose(gy.get(), TWINS.activation_backward(kind, y, np.ones_like(y), alpha_of(kind)),
                               **gpu_tolerance(dtype))


@pytest.mark.parametrize("alpha", [0.3, 2.5])
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_activations_at_nan_match_twin_and_torch_conventions(cp, gpu, kind, alpha):
    # PyTorch's slopes at NaN: relu 1 (threshold_backward), leaky_relu alpha (x > 0 fails), elu 1
    # (x <= 0 fails), identity 1; sigmoid and tanh NaN. The saved output at a NaN input is NaN.
    x_host = np.array([np.nan, -1.0, 0.0, 2.0, np.nan], dtype=np.float32)
    x = cp.asarray(x_host)
    y = gpu.activation_forward(kind, x, alpha)
    y_host = TWINS.activation_forward(kind, x_host, alpha)
    np.testing.assert_array_equal(np.isnan(y.get()), np.isnan(y_host))
    gx = gpu.activation_backward(kind, cp.asarray(y_host), cp.ones_like(x), alpha)
    expected_twin = TWINS.activation_backward(kind, y_host, np.ones_like(y_host), alpha)
    np.testing.assert_allclose(gx.get(), expected_twin, **gpu_tolerance(np.float32))
    at_nan = {"identity": 1.0, "relu": 1.0, "leaky_relu": alpha, "elu": 1.0}.get(kind, np.nan)
    np.testing.assert_allclose(expected_twin[[0, 4]], [at_nan, at_nan], rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_bias_activation_matches_twin(cp, gpu, kind, dtype, shape):
    x, x_host = device_sample(cp, shape, dtype)
    bias, bias_host = device_sample(cp, shape[1:], dtype, seed=2)
    y = poisoned(cp, shape, dtype)
    gpu.bias_activation_forward(kind, x, bias, alpha_of(kind), out=y)
    expected = TWINS.bias_activation_forward(kind, x_host, bias_host, alpha_of(kind))
    np.testing.assert_allclose(y.get(), expected, **gpu_tolerance(dtype))
    assert gpu.bias_activation_forward(kind, x, bias, alpha_of(kind), out=x) is x
    np.testing.assert_allclose(x.get(), expected, **gpu_tolerance(dtype))


@pytest.mark.parametrize("shape", SHAPES_2D + [(0, 6)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_activation_backward_bias_matches_twin(cp, gpu, kind, dtype, shape):
    if cp is _emulated_cupy() and shape[1] > EMULATED_MAX_BIAS_COLUMNS:
        pytest.skip(f"{shape[1]} columns would take minutes in the emulator; a GPU runs this shape")
    x_host = sample(shape, dtype)
    y_host = TWINS.activation_forward(kind, x_host, alpha_of(kind))
    gy, gy_host = device_sample(cp, shape, dtype, scale=1.0, seed=1)
    y = cp.asarray(y_host)
    poison_pool(cp, [shape[1:]], dtype)
    gx = poisoned(cp, shape, dtype)
    assert gpu.activation_backward_bias(kind, y, gy, alpha_of(kind), out=gx)[0] is gx
    expected_gx, _ = TWINS.activation_backward_bias(kind, y_host, gy_host, alpha_of(kind))
    _, bias_grad = gpu.activation_backward_bias(kind, y, gy, alpha_of(kind), out=gy)  # in place
    np.testing.assert_allclose(gx.get(), expected_gx, **gpu_tolerance(dtype))
    np.testing.assert_allclose(gy.get(), expected_gx, **gpu_tolerance(dtype))
    # the kernel sums in double: against exact float64 sums of the twin's gradient, not against the
    # twin's own float32 sums, which drift by about sqrt(rows) ulps
    exact = expected_gx.astype(np.float64).sum(axis=0)
    magnitude = np.abs(expected_gx).astype(np.float64).sum(axis=0) + 1
    relative = 1e-6 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(bias_grad.get() - exact) <= relative * magnitude)


def poison_pool(cp, shapes, dtype):
    """Leave NaN in the memory pool's free blocks of these shapes, so that outputs the kernel
    allocates itself start as NaN (best effort: the pool hands back a freed block of the same size)."""
    for shape in shapes:
        cp.full(shape, np.nan, dtype=dtype)


@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_softmax_cross_entropy_matches_twin(cp, gpu, dtype, shape, reduction):
    if cp is _emulated_cupy() and shape[0] > EMULATED_MAX_SOFTMAX_ROWS:
        pytest.skip(f"{shape[0]} rows would take minutes in the emulator; a GPU runs this shape")
    rows, cols = shape
    logits, logits_host = device_sample(cp, shape, dtype)
    target_host = targets(rows, cols, seed=3)
    target = cp.asarray(target_host)
    poison_pool(cp, [(rows,), (rows,), (rows,), ()], dtype)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, reduction)
    loss_host, max_host, sum_host = TWINS.softmax_cross_entropy_forward(logits_host, target_host, reduction)
    assert loss.shape == loss_host.shape and loss.dtype == row_max.dtype == row_sum.dtype == dtype
    tol = gpu_tolerance(dtype)
    np.testing.assert_array_equal(row_max.get(), max_host)
    np.testing.assert_allclose(row_sum.get(), sum_host, **tol)
    np.testing.assert_allclose(loss.get(), loss_host, **tol)

    grad_loss_host = (sample((rows,), dtype, scale=1.0, seed=5) if reduction == "none"
                      else np.array(0.75, dtype=dtype))
    grad = poisoned(cp, shape, dtype)
    # the twin's row statistics on both sides, so that this compares the backward kernel alone
    gpu.softmax_cross_entropy_backward(logits, target, cp.asarray(max_host), cp.asarray(sum_host),
                                       cp.asarray(grad_loss_host), reduction, out=grad)
    expected = TWINS.softmax_cross_entropy_backward(logits_host, target_host, max_host, sum_host,
                                                    grad_loss_host, reduction)
    np.testing.assert_allclose(grad.get(), expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_softmax_cross_entropy_stable_and_nan_for_bad_targets(cp, gpu, dtype):
    logits_host = np.array([[1e4, -1e4, 0.0, 5.0], [1e4, -1e4, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0],
                            [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    target_host = np.array([0, 2, 4, -1])
    logits, target = cp.asarray(logits_host), cp.asarray(target_host)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, "none")
    expected_loss, max_host, sum_host = TWINS.softmax_cross_entropy_forward(logits_host, target_host, "none")
    np.testing.assert_allclose(loss.get(), expected_loss, **gpu_tolerance(dtype))  # NaN rows compare equal
    np.testing.assert_array_equal(row_max.get(), max_host)
    np.testing.assert_allclose(row_sum.get(), sum_host, **gpu_tolerance(dtype))
    grad = gpu.softmax_cross_entropy_backward(logits, target, row_max, row_sum, cp.ones(4, dtype), "none")
    expected_grad = TWINS.softmax_cross_entropy_backward(logits_host, target_host, max_host, sum_host,
                                                         np.ones(4, dtype), "none")
    np.testing.assert_allclose(grad.get(), expected_grad, **gpu_tolerance(dtype))
    mean = gpu.softmax_cross_entropy_forward(logits, target, "mean")[0]
    assert np.isnan(mean.get())


@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
@pytest.mark.parametrize("shape", [(64, 12), (37, 10)], ids=["vectors", "scalars"])
@pytest.mark.parametrize("offset", LOGIT_OFFSETS)
def test_gpu_softmax_cross_entropy_float32_is_precise_at_large_offsets(cp, gpu, offset, shape, reduction):
    # the kernels' own forward and backward chained, against float64 (the twin's test explains the metric)
    n, c = shape
    logits_host = offset_logits(shape, offset)
    target_host = targets(n, c, seed=1)
    grad_loss_host = (sample((n,), np.float32, scale=1.0, seed=2) if reduction == "none"
                      else np.array(1.0, np.float32))
    logits, target = cp.asarray(logits_host), cp.asarray(target_host)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, reduction)
    grad = gpu.softmax_cross_entropy_backward(logits, target, row_max, row_sum, cp.asarray(grad_loss_host),
                                              reduction)
    weight = {"none": grad_loss_host.astype(np.float64), "sum": 1.0, "mean": 1.0 / n}[reduction]
    per_row, expected = cross_entropy_reference(logits_host, target_host, weight)
    reduced = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
    assert_precise_loss(loss.get(), reduced)
    assert normwise_error(grad.get(), expected) <= PRECISE_GRADIENT


def test_gpu_softmax_cross_entropy_sum_is_precise_along_long_rising_rows(cp, gpu):
    # each lane meets a new max at every logit, so the online sum is rescaled 1024 times per lane; in
    # float, each rescale's rounding would stay in the sum
    logits_host = np.tile(np.linspace(-4.0, 4.0, 2**15, dtype=np.float32), (2, 1))
    target_host = np.array([0, 2**15 - 1])
    logits, target = cp.asarray(logits_host), cp.asarray(target_host)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, "none")
    exact_sum = math.fsum(math.exp(v - 4.0) for v in logits_host[0].astype(np.float64))
    np.testing.assert_array_equal(row_max.get(), [4.0, 4.0])
    np.testing.assert_allclose(row_sum.get(), [exact_sum] * 2, rtol=2 * np.finfo(np.float32).eps)
    per_row, expected = cross_entropy_reference(logits_host, target_host, 1.0)
    assert_precise_loss(loss.get(), per_row)
    grad_loss = cp.ones(2, np.float32)
    grad = gpu.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, "none")
    assert normwise_error(grad.get(), expected) <= PRECISE_GRADIENT


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", kernels.REDUCTIONS)
def test_gpu_softmax_cross_entropy_of_equal_logits_at_1e30_is_exact(cp, gpu, reduction, dtype):
    logits, target = cp.asarray(np.full((3, 3), 1e30, dtype)), cp.asarray(np.array([2, 2, 2]))
    grad_loss = cp.ones(3, dtype) if reduction == "none" else cp.ones((), dtype)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, reduction)
    grad = gpu.softmax_cross_entropy_backward(logits, target, row_max, row_sum, grad_loss, reduction)
    exact = [[1 / 9, 1 / 9, -2 / 9]] * 3 if reduction == "mean" else [[1 / 3, 1 / 3, -2 / 3]] * 3
    np.testing.assert_array_equal(grad.get(), np.array(exact, dtype))
    expected_loss = {"none": [math.log(3)] * 3, "sum": 3 * math.log(3), "mean": math.log(3)}[reduction]
    np.testing.assert_allclose(loss.get(), expected_loss, rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_softmax_cross_entropy_rows_with_infinite_max_match_twin(cp, gpu, dtype):
    # all -inf gave NaN loss with lse -inf in the kernel but NaN lse in the twin; now both give what
    # PyTorch gives, row by row (non_finite_expected)
    logits_host, target_host = np.array(NON_FINITE_LOGITS, dtype), np.array(NON_FINITE_TARGETS)
    logits, target = cp.asarray(logits_host), cp.asarray(target_host)
    loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(logits, target, "none")
    grad = gpu.softmax_cross_entropy_backward(logits, target, row_max, row_sum, cp.ones(6, dtype), "none")
    twin_loss, twin_max, twin_sum = TWINS.softmax_cross_entropy_forward(logits_host, target_host, "none")
    twin_grad = TWINS.softmax_cross_entropy_backward(logits_host, target_host, twin_max, twin_sum,
                                                     np.ones(6, dtype), "none")
    expected_loss, expected_grad = non_finite_expected()
    for actual in (loss.get(), twin_loss):
        np.testing.assert_allclose(actual, expected_loss, rtol=1e-6)
    for actual in (grad.get(), twin_grad):
        np.testing.assert_allclose(actual, expected_grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.isnan(row_sum.get()), np.isnan(twin_sum))
    for reduction in ("mean", "sum"):
        assert np.isnan(gpu.softmax_cross_entropy_forward(logits, target, reduction)[0].get())


@pytest.mark.parametrize("hyper", SGD_SETTINGS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_sgd_update_matches_twin(cp, gpu, dtype, size, hyper):
    param, param_host = device_sample(cp, (size,), dtype, seed=1, misaligned=size == 7)
    grad_host = sample((size,), dtype, seed=2)
    buf = poisoned(cp, (size,), dtype) if hyper["momentum"] else None  # the first step must overwrite it
    buf_host = np.zeros(size, dtype) if hyper["momentum"] else None
    for step in range(3):
        grad = cp.asarray(grad_host * (step + 1))
        gpu.sgd_update(param, grad, buf, lr=0.1, first_step=step == 0, **hyper)
        TWINS.sgd_update(param_host, grad_host * (step + 1), buf_host, lr=0.1, first_step=step == 0, **hyper)
    np.testing.assert_allclose(param.get(), param_host, **gpu_tolerance(dtype))
    if buf is not None:
        np.testing.assert_allclose(buf.get(), buf_host, **gpu_tolerance(dtype))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_sgd_update_multi_equals_per_parameter_updates(cp, gpu, dtype, momentum):
    # more tensors than one launch's table holds, so the update takes two launches
    hyper = dict(lr=0.05, weight_decay=0.01, momentum=momentum, dampening=0.0, nesterov=momentum > 0)
    shapes = [(s,) for s in SIZES] + [(3, 5)] + [(i % 4 + 1, 3) for i in range(kernels._SGD_MAX_TENSORS)]
    multi = [device_sample(cp, shape, dtype, seed=i, misaligned=shape == (7,))[0]
             for i, shape in enumerate(shapes)]
    single = [p.copy() for p in multi]
    grads = [device_sample(cp, p.shape, dtype, seed=100 + i)[0] for i, p in enumerate(multi)]
    multi_bufs = [poisoned(cp, p.shape, dtype) for p in multi] if momentum else None
    single_bufs = [poisoned(cp, p.shape, dtype) for p in multi] if momentum else [None] * len(multi)
    for step in range(3):
        gpu.sgd_update_multi(multi, grads, multi_bufs, first_step=step == 0, **hyper)
        for p, g, b in zip(single, grads, single_bufs):
            gpu.sgd_update(p, g, b, first_step=step == 0, **hyper)
    tight = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    for a, b in zip(multi, single):
        np.testing.assert_allclose(a.get(), b.get(), **tight)
    for a, b in zip(multi_bufs or [], single_bufs):
        np.testing.assert_allclose(a.get(), b.get(), **tight)


def test_gpu_fused_reference_sgd_agree_on_device(cp, gpu):
    hyper = dict(lr=0.1, weight_decay=0.05, momentum=0.9, dampening=0.0, nesterov=True)
    fused, _ = device_sample(cp, (1025,), np.float64, seed=1)
    ref = fused.copy()
    grad, _ = device_sample(cp, (1025,), np.float64, seed=2)
    fused_buf, ref_buf = cp.zeros_like(fused), cp.zeros_like(fused)
    for step in range(3):
        gpu.sgd_update(fused, grad, fused_buf, first_step=step == 0, **hyper)
        kernels.sgd_update_reference(ref, grad, ref_buf, first_step=step == 0, **hyper)
    np.testing.assert_allclose(fused.get(), ref.get(), rtol=1e-13)


# (5, 600, 7) and (70, 2000, 3) have one or two output tiles and a long k: split across blocks
GEMM_SHAPES = [(1, 1, 1), (64, 16, 64), (65, 17, 130), (3, 200, 5), (130, 33, 1), (4, 0, 3), (0, 5, 2),
               (5, 600, 7), (70, 2000, 3)]


def gemm_reference(a, b):
    """Each entry as math.fsum of its k products, in double: no BLAS involved."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sums = [[math.fsum(a64[i, :] * b64[:, j]) for j in range(b.shape[1])] for i in range(a.shape[0])]
    return np.array(sums, dtype=np.float64).reshape(a.shape[0], b.shape[1])


def gemm_tolerance(dtype, k):
    # float32 accumulates k rounded products in float32
    return dict(rtol=1e-5 * max(1, k) ** 0.5, atol=1e-5 * max(1, k)) if dtype == np.float32 else \
        dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_twin_matches_exact_sums_for_transposed_views(dtype):
    a = sample((9, 13), dtype, seed=1)
    a_transposed_view = sample((13, 9), dtype, seed=2).T
    b = sample((13, 6), dtype, seed=3)
    out = np.full((9, 6), np.nan, dtype)
    assert TWINS.gemm(a, b, out=out) is out
    np.testing.assert_allclose(out, gemm_reference(a, b), **gemm_tolerance(dtype, 13))
    np.testing.assert_allclose(TWINS.gemm(a_transposed_view, b.T.T), gemm_reference(a_transposed_view, b),
                               **gemm_tolerance(dtype, 13))


def test_gemm_argument_errors():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"gemm: expected a \(m, k\) and b \(k, n\), got shapes \(2, 3\) and "
                                         r"\(2, 3\)"):
        TWINS.gemm(a, a)
    with pytest.raises(TypeError, match="gemm: b has dtype float64, expected float32"):
        TWINS.gemm(a, np.zeros((3, 2)))
    with pytest.raises(TypeError, match="gemm: a must be float32 or float64, got int64"):
        TWINS.gemm(np.zeros((2, 3), np.int64), a.T)
    with pytest.raises(ValueError, match=r"gemm: out has shape \(3, 3\), expected \(2, 2\)"):
        TWINS.gemm(a, a.T, out=np.zeros((3, 3), np.float32))


@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "tt", "offset"])
@pytest.mark.parametrize("m, k, n", GEMM_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_gemm_matches_exact_sums(cp, gpu, dtype, m, k, n, layout):
    a_host, b_host = sample((m, k), dtype, seed=1), sample((k, n), dtype, seed=2)
    if layout == "offset":  # views that start mid-allocation, rows padded to an odd stride
        a_backing = cp.asarray(sample((m + 1, k + 3), dtype, seed=5))
        a = a_backing[1:, 2:k + 2]
        a[...] = cp.asarray(a_host)
        b = cp.asarray(b_host)
    else:
        # "t": store the operand transposed and pass its .T view, as a dense layer's backward does
        a = cp.asarray(np.ascontiguousarray(a_host.T)).T if layout[0] == "t" else cp.asarray(a_host)
        b = cp.asarray(np.ascontiguousarray(b_host.T)).T if layout[1] == "t" else cp.asarray(b_host)
    out = poisoned(cp, (m, n), dtype)
    assert gpu.gemm(a, b, out=out) is out
    np.testing.assert_allclose(out.get(), gemm_reference(a_host, b_host), **gemm_tolerance(dtype, k))


def test_gpu_matmul_leaves_cublas_only_while_capturing(cp, gpu, monkeypatch):
    launched = []
    monkeypatch.setattr(gpu, "gemm", lambda a, b: launched.append((a.shape, b.shape)) or a @ b)
    a, b = cp.ones((4, 3), dtype=cp.float32), cp.ones((3, 2), dtype=cp.float32)
    gpu.matmul(a, b)
    assert launched == []
    stream = cp.cuda.get_current_stream()
    if cp is not _emulated_cupy():
        pytest.skip("on a GPU, the capture test below covers this")
    stream.capturing = True
    try:
        np.testing.assert_array_equal(gpu.matmul(a, b).get(), np.full((4, 2), 3.0))
    finally:
        stream.capturing = False
    assert launched == [((4, 3), (3, 2))]


@pytest.mark.gpu
def test_gpu_kernels_are_memoized_per_device(real_cp):
    cp = real_cp
    first = kernels.for_array(cp.zeros(1))
    assert isinstance(first, kernels.CudaKernels)
    assert kernels.for_array(cp.ones((2, 2), dtype=cp.float32)) is first


@pytest.mark.gpu
def test_gpu_training_step_runs_inside_a_cuda_graph_capture(real_cp):
    cp = real_cp
    gpu = kernels.for_array(cp.zeros(1))
    # Stream capture rejects anything that waits for the host (a .get(), an .item(), a pageable
    # upload), so a captured forward + backward + update proves the step makes no round trip.
    x, _ = device_sample(cp, (64, 32), np.float32)
    bias, _ = device_sample(cp, (32,), np.float32, seed=1)
    target = cp.asarray(targets(64, 32))
    params = [bias]
    buf = [cp.zeros_like(bias)]
    grad_bias = cp.empty_like(bias)

    def step(first_step):
        hidden = gpu.bias_activation_forward("relu", x, bias)
        loss, row_max, row_sum = gpu.softmax_cross_entropy_forward(hidden, target, "mean")
        grad_hidden = gpu.softmax_cross_entropy_backward(hidden, target, row_max, row_sum,
                                                         cp.ones((), cp.float32), "mean")
        grad_pre = gpu.activation_backward("relu", hidden, grad_hidden)
        cp.sum(grad_pre, axis=0, out=grad_bias)
        gpu.sgd_update_multi(params, [grad_bias], buf, lr=0.1, weight_decay=0.0, momentum=0.9,
                             dampening=0.0, nesterov=False, first_step=first_step)
        return loss

    step(True)  # compiles the kernels
    expected_bias = bias.copy()
    expected_buf = buf[0].copy()
    expected_loss = step(False)
    eager_bias, eager_buf = bias.copy(), buf[0].copy()
    bias[...] = expected_bias
    buf[0][...] = expected_buf

    # the capture stream does not wait for the default stream, where the resets above were queued
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        captured_loss = step(False)
        graph = stream.end_capture()
        graph.launch(stream)
    stream.synchronize()
    np.testing.assert_allclose(captured_loss.get(), expected_loss.get(), rtol=1e-6)
    np.testing.assert_allclose(bias.get(), eager_bias.get(), rtol=1e-6)
    np.testing.assert_allclose(buf[0].get(), eager_buf.get(), rtol=1e-6)


# The emulator runs every other test under one fiber schedule (TENSORGRAD_EMULATOR_SEED, default 0).
# The kernels whose threads meet in shared memory run here under several more: a GPU promises no
# order between threads outside a barrier, so a missing __syncthreads shows as a wrong value (or
# the NaN shared memory starts with) under some schedule. TENSORGRAD_EMULATOR_SEEDS widens the search.
SCHEDULE_SEEDS = tuple(int(s) for s in os.environ.get("TENSORGRAD_EMULATOR_SEEDS", "1,2,3,4").split(","))


@cuda_emulator.needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SCHEDULE_SEEDS, ids=lambda s: f"seed{s}")
def test_emulated_block_reductions_hold_under_random_schedules(seed, dtype, monkeypatch):
    monkeypatch.setattr(cuda_emulator, "schedule_seed", seed)
    cp, gpu = _emulated_cupy(), _emulated_kernels()
    tol = gpu_tolerance(dtype)

    # sum_divided: the 'mean' of 300 row losses, one block of 8 warps meeting in shared memory
    logits_host, target_host = sample((300, 10), dtype), targets(300, 10, seed=3)
    loss = gpu.softmax_cross_entropy_forward(cp.asarray(logits_host), cp.asarray(target_host), "mean")[0]
    expected = TWINS.softmax_cross_entropy_forward(logits_host, target_host, "mean")[0]
    np.testing.assert_allclose(loss.get(), expected, **tol)

    # activation_backward_bias: rows summed through a shared-memory tile
    y_host = TWINS.activation_forward("tanh", sample((70, 45), dtype), 0.0)
    gy_host = sample((70, 45), dtype, scale=1.0, seed=1)
    _, bias_grad = gpu.activation_backward_bias("tanh", cp.asarray(y_host), cp.asarray(gy_host))
    expected_gx, expected_bias = TWINS.activation_backward_bias("tanh", y_host, gy_host)
    np.testing.assert_allclose(bias_grad.get(), expected_bias, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)

    # gemm: tiles staged in shared memory, two barriers per k slice
    a_host, b_host = sample((70, 40), dtype, seed=1), sample((40, 90), dtype, seed=2)
    out = gpu.gemm(cp.asarray(a_host), cp.asarray(b_host))
    np.testing.assert_allclose(out.get(), gemm_reference(a_host, b_host), **gemm_tolerance(dtype, 40))
