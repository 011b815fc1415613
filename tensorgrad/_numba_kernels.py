"""The compiled loops behind tensorgrad.cpu_kernels (Numba). Imported only when those kernels are used,
so that `import tensorgrad` neither needs nor loads numba.

Every kernel comes as a span function (plain loops over part of the work, compiled once per dtype) and,
for the large calls, a `*_parallel` function that splits the work into fixed blocks of rows or
elements and runs the blocks on Numba's threads (`prange`). The blocks never depend on the thread
count, and every sum runs in one fixed order inside one block, so 1 and N threads give identical bits.

Transcendentals are evaluated here rather than through libm: LLVM cannot vectorise calls to expf or
tanhf without Intel's SVML, which pip's llvmlite does not ship, and a scalar libm call per element is
slower than NumPy's vectorised ufuncs. `exp_nonpositive` and `expm1_nonpositive` reduce the argument by
multiples of ln 2 (Cody and Waite) and sum a Taylor polynomial long enough for the dtype (errors
below 1 ulp for exp, about 2 ulp for sigmoid and float32 tanh, measured against float64/longer
references in tests/test_cpu_kernels.py; float64 tanh stays on libm, see tanh_value). Every
activation needs them only at arguments <= 0, which keeps the results in [0, 1] and lets the code
skip overflow handling; denormal results are kept exact by scaling with two powers of two.

Activation kernels use the 'contract' fast-math flag only (FMA fusion: each fused operation rounds
once, so it is at least as accurate as the separate ones). The optimizer updates use none, so they
round exactly as the NumPy twins do and match them bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# The activation kinds as the kernels take them, in the order of kernels.ACTIVATIONS.
IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, ELU = range(6)

ELEMENT_BLOCK = 16384  # elements per parallel work item of the elementwise kernels (64 KiB float32)
BIAS_COLUMNS = 64  # columns per work item of the bias-gradient kernel: each owns its columns' sums

_ACTIVATION_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
_EXACT_OPTIONS = dict(cache=True, error_model="numpy", nogil=True)


# ---------------------------------------------------------------------------------------------
# Scalar building blocks, each specialised per float type.

def as_type_of(like, value):
    """`value` converted to the float type of `like` (a float or an array of floats): in jitted code a
    literal such as 1.0 is a float64 and would turn float32 arithmetic into float64 arithmetic."""
    return np.asarray(like).dtype.type(value)


@overload(as_type_of)
def _as_type_of(like, value):
    float_type = like.dtype if isinstance(like, types.Array) else like
    if isinstance(float_type, types.Float):

        def impl(like, value):
            return float_type(value)
        return impl
    return None


@intrinsic
def _ldexp(typingctx, value, exponent):
    """value * 2**exponent for an integral-valued float exponent in [-2 * (max exponent), 0], as two
    multiplications by powers of two built from their bits, so a denormal result is rounded once and
    nothing goes through libm (which would stop LLVM from vectorising the loop)."""
    if value == types.float32:
        width, mantissa_bits, bias = 32, 23, 127
    elif value == types.float64:
        width, mantissa_bits, bias = 64, 52, 1023
    else:
        return None

    def codegen(context, builder, signature, args):
        v, exponent_value = args
        i32, int_type = ir.IntType(32), ir.IntType(width)
        k = builder.fptosi(exponent_value, i32)  # 32-bit: AVX2 converts 8 floats at once, not int64
        half_k = builder.ashr(k, i32(1))

        def power_of_two(e):
            e = e if width == 32 else builder.sext(e, int_type)
            bits = builder.shl(builder.add(e, int_type(bias)), int_type(mantissa_bits))
            return builder.bitcast(bits, v.type)
        return builder.fmul(builder.fmul(v, power_of_two(half_k)), power_of_two(builder.sub(k, half_k)))
    return value(value, value), codegen


def _reduction_constants(float_type):
    """(lowest argument, log2(e), ln2 high part, ln2 low part, Taylor coefficients of expm1 from the
    highest power down to r**2) for a float type: ln 2 split so that n * ln2_high is exact."""
    if float_type == types.float32:
        t, lowest, terms = np.float32, -104.0, 8  # exp(-104) rounds to 0 in float32
        ln2_high, ln2_low = 0.693359375, -2.12194440e-4
    elif float_type == types.float64:
        t, lowest, terms = np.float64, -746.0, 14  # exp(-746) rounds to 0 in float64
        ln2_high, ln2_low = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    else:
        return None
    # |r| <= ln(2)/2, so the first omitted term r**terms / terms! is below a quarter ulp of the result
    coefficients = tuple(t(1 / math.factorial(k)) for k in range(terms - 1, 1, -1))
    return t(lowest), t(1 / math.log(2)), t(ln2_high), t(ln2_low), coefficients


def exp_nonpositive(v):
    """exp(v) for v <= 0, -inf or NaN (0 <= result <= 1); in jitted code a vectorisable polynomial."""
    return math.exp(v)


def expm1_nonpositive(v):
    """exp(v) - 1 for v <= 0, -inf or NaN, accurate to the last bits also for v near 0."""
    return math.expm1(v)


def reduce_by_ln2(v):
    """(n, expm1(r)) with v = n ln2 + r, |r| <= ln(2)/2: the shared first half of the two functions above.
    In jitted code v below the lowest useful argument is clamped (so -inf gives exp 0, expm1 -1) and NaN
    passes through r."""
    n = math.floor(v / math.log(2) + 0.5)
    return float(n), math.expm1(v - n * math.log(2))


@overload(reduce_by_ln2)
def _reduce_by_ln2(v):
    constants = _reduction_constants(v)
    if constants is None:
        return None
    lowest, log2e, ln2_high, ln2_low, coefficients = constants
    zero, half = v(0), v(0.5)

    def impl(v):
        x = lowest if v < lowest else v
        # n from a NaN-free value: converting NaN to an integer is undefined in LLVM
        n = np.floor((x if x == x else zero) * log2e + half)
        r = (x - n * ln2_high) - n * ln2_low
        acc = coefficients[0]
        for c in coefficients[1:]:
            acc = acc * r + c
        return n, r + (r * r) * acc
    return impl


@overload(exp_nonpositive)
def _exp_nonpositive(v):
    if v not in (types.float32, types.float64):
        return None
    one = v(1)

    def impl(v):
        n, p = reduce_by_ln2(v)
        return _ldexp(p + one, n)
    return impl


@overload(expm1_nonpositive)
def _expm1_nonpositive(v):
    if v not in (types.float32, types.float64):
        return None
    one = v(1)

    def impl(v):
        n, p = reduce_by_ln2(v)
        # 2**n * (expm1(r) + 1) - 1 = 2**n * expm1(r) + (2**n - 1), both terms exact or nearly: for n = 0
        # (|v| < 0.35) the result is expm1(r) itself, with its full relative precision near 0
        scale = _ldexp(one, n)
        return scale * p + (scale - one)
    return impl


@njit(**_ACTIVATION_OPTIONS)
def _sigmoid(v):
    one = as_type_of(v, 1.0)
    e = exp_nonpositive(-abs(v))  # in (0, 1]: neither branch can overflow
    s = one / (one + e)
    return s if v >= 0 else e * s


def tanh_value(v):
    """tanh(v): in jitted float32 code from expm1_nonpositive (vectorisable, within 2 ulp); in float64 code
    libm's tanh (within 1 ulp, as NumPy's and PyTorch's: float64 gradients are compared with them to
    1e-14, and the polynomial's extra ulp, amplified by cancellation in a later sum, can exceed that)."""
    return math.tanh(v)


@overload(tanh_value)
def _tanh_value(v):
    if v == types.float32:
        minus_two, two = v(-2.0), v(2.0)

        def impl(v):
            # tanh|v| = -expm1(-2|v|) / (2 + expm1(-2|v|)): no cancellation near 0, exactly 1 far out
            em = expm1_nonpositive(minus_two * abs(v))
            return np.copysign(-em / (two + em), v)
        return impl
    if v == types.float64:
        return lambda v: math.tanh(v)
    return None


@njit(**_ACTIVATION_OPTIONS)
def _tanh(v):
    return tanh_value(v)


# ---------------------------------------------------------------------------------------------
# Activations. Each span function branches on the kind once, outside its loops, so each loop is a
# straight, vectorisable body. `bias` is None or a vector as long as the span (added before f).

@njit(**_ACTIVATION_OPTIONS)
def forward_span(kind, x, bias, y, alpha):
    """y[i] = f(x[i] + bias[i]) (bias None: f(x[i])) over 1-D spans of one length; y may be x."""
    n = x.shape[0]
    zero = as_type_of(alpha, 0.0)
    if kind == IDENTITY:
        for i in range(n):
            y[i] = x[i] if bias is None else x[i] + bias[i]
    elif kind == SIGMOID:
        for i in range(n):
            y[i] = _sigmoid(x[i] if bias is None else x[i] + bias[i])
    elif kind == TANH:
        for i in range(n):
            y[i] = _tanh(x[i] if bias is None else x[i] + bias[i])
    elif kind == RELU:
        for i in range(n):
            v = x[i] if bias is None else x[i] + bias[i]
            y[i] = zero if v <= 0 else v  # NaN fails v <= 0 and passes through
    elif kind == LEAKY_RELU:
        for i in range(n):
            v = x[i] if bias is None else x[i] + bias[i]
            y[i] = alpha * v if v <= 0 else v
    else:  # ELU; expm1 never sees a positive argument, so large inputs cannot overflow
        for i in range(n):
            v = x[i] if bias is None else x[i] + bias[i]
            y[i] = alpha * expm1_nonpositive(v) if v <= 0 else v


@njit(**_ACTIVATION_OPTIONS)
def backward_span(kind, y, gy, gx, alpha):
    """gx[i] = gy[i] * f'(x[i]), the slope written in terms of the saved output y, over 1-D spans; gx
    may be gy. At y == 0 the slope takes the x <= 0 branch; at NaN the branch PyTorch takes."""
    n = y.shape[0]
    zero, one = as_type_of(alpha, 0.0), as_type_of(alpha, 1.0)
    if kind == IDENTITY:
        for i in range(n):
            gx[i] = gy[i]
    elif kind == SIGMOID:
        for i in range(n):
            gx[i] = gy[i] * (y[i] * (one - y[i]))
    elif kind == TANH:
        for i in range(n):
            gx[i] = gy[i] * (one - y[i] * y[i])
    elif kind == RELU:
        for i in range(n):
            gx[i] = gy[i] * (zero if y[i] <= 0 else one)  # a product, so gy = inf or NaN still propagates
    elif kind == LEAKY_RELU:
        for i in range(n):
            gx[i] = gy[i] * (one if y[i] > 0 else alpha)
    else:  # ELU: for x <= 0, f'(x) = alpha * exp(x) = y + alpha
        for i in range(n):
            gx[i] = gy[i] * (y[i] + alpha if y[i] <= 0 else one)


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def forward_parallel(kind, x, y, alpha):
    """forward_span over 1-D x, y in blocks of ELEMENT_BLOCK on Numba's threads."""
    n = x.shape[0]
    for block in prange((n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK):
        start = block * ELEMENT_BLOCK
        stop = min(n, start + ELEMENT_BLOCK)
        forward_span(kind, x[start:stop], None, y[start:stop], alpha)


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def backward_parallel(kind, y, gy, gx, alpha):
    """backward_span over 1-D arrays in blocks of ELEMENT_BLOCK on Numba's threads."""
    n = y.shape[0]
    for block in prange((n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK):
        start = block * ELEMENT_BLOCK
        stop = min(n, start + ELEMENT_BLOCK)
        backward_span(kind, y[start:stop], gy[start:stop], gx[start:stop], alpha)


@njit(**_ACTIVATION_OPTIONS)
def bias_forward_rows(kind, x, bias, y, alpha, first_row, stop_row):
    """y[r] = f(x[r] + bias) for rows [first_row, stop_row) of x, y (N, M); y may be x."""
    for r in range(first_row, stop_row):
        forward_span(kind, x[r], bias, y[r], alpha)


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def bias_forward_parallel(kind, x, bias, y, alpha):
    rows, cols = x.shape
    rows_per_block = max(1, ELEMENT_BLOCK // max(cols, 1))
    for block in prange((rows + rows_per_block - 1) // rows_per_block):
        start = block * rows_per_block
        bias_forward_rows(kind, x, bias, y, alpha, start, min(rows, start + rows_per_block))


@njit(**_ACTIVATION_OPTIONS)
def backward_bias_columns(kind, y, gy, gx, alpha, bias_grad, first_column, stop_column):
    """gx = gy * f'(y) on columns [first_column, stop_column) of (N, M) arrays, and bias_grad there = the
    column sums of gx, added in float64 from row 0 down (as the CUDA kernel sums in double). Row by
    row: backward_span, then the row's sums while it is still in L1 (both loops vectorise)."""
    sums = np.zeros(stop_column - first_column, np.float64)
    for r in range(y.shape[0]):
        gx_row, gy_row = gx[r, first_column:stop_column], gy[r, first_column:stop_column]
        if kind == IDENTITY:  # the last layer before the loss: often 10 columns, where a call per row shows
            for j in range(sums.shape[0]):
                gx_row[j] = gy_row[j]
                sums[j] += gy_row[j]
        else:
            backward_span(kind, y[r, first_column:stop_column], gy_row, gx_row, alpha)
            for j in range(sums.shape[0]):
                sums[j] += gx_row[j]
    for j in range(sums.shape[0]):
        bias_grad[first_column + j] = sums[j]


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def backward_bias_parallel(kind, y, gy, gx, alpha, bias_grad):
    cols = y.shape[1]
    for block in prange((cols + BIAS_COLUMNS - 1) // BIAS_COLUMNS):
        start = block * BIAS_COLUMNS
        backward_bias_columns(kind, y, gy, gx, alpha, bias_grad, start, min(cols, start + BIAS_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Softmax cross-entropy, one row at a time (a row of a classifier's logits stays in L1 between the
# max and the sum, so the data crosses memory once).

@njit(**_ACTIVATION_OPTIONS)
def cross_entropy_forward_rows(logits, target, loss, row_max, row_sum, first_row, stop_row):
    """Per row r: row_max = max (NaN if any logit is NaN), row_sum = sum(exp(logits - max)) added in
    float64, loss = (max - logits[target]) + log(row_sum); NaN row_sum where the max is not finite and
    NaN loss where the target is outside [0, C)."""
    cols = logits.shape[1]
    nan = as_type_of(logits, np.nan)
    exps = np.empty(cols, logits.dtype)
    for r in range(first_row, stop_row):
        row = logits[r]
        m = row[0]
        for c in range(1, cols):
            v = row[c]
            if v > m or v != v:
                m = v
            if m != m:
                break
        for c in range(cols):  # apart from the sum: LLVM vectorises this loop, not an ordered sum
            exps[c] = exp_nonpositive(row[c] - m)
        total = 0.0
        for c in range(cols):
            total += exps[c]
        s = as_type_of(m, total) if abs(m) < np.inf else nan  # an infinite or NaN max: a NaN row
        t = target[r]
        row_max[r] = m
        row_sum[r] = s
        loss[r] = (m - row[t]) + np.log(s) if 0 <= t < cols else nan


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def cross_entropy_forward_parallel(logits, target, loss, row_max, row_sum):
    rows, cols = logits.shape
    rows_per_block = max(1, ELEMENT_BLOCK // cols)
    for block in prange((rows + rows_per_block - 1) // rows_per_block):
        start = block * rows_per_block
        cross_entropy_forward_rows(logits, target, loss, row_max, row_sum, start,
                                   min(rows, start + rows_per_block))


@njit(**_EXACT_OPTIONS)
def sum_in_float64(values):
    """sum(values) added in float64 from the first to the last (the row losses: N values)."""
    total = 0.0
    for i in range(values.shape[0]):
        total += values[i]
    return total


@njit(**_ACTIVATION_OPTIONS)
def cross_entropy_backward_rows(logits, target, row_max, row_sum, weights, per_row, grad, first_row,
                                stop_row):
    """grad[r] = (exp(logits[r] - max) - onehot(target) * sum) * (w / sum), w = weights[r] if per_row
    else weights[0]; NaN rows where the target is outside [0, C). grad may be logits."""
    cols = logits.shape[1]
    nan = as_type_of(logits, np.nan)
    for r in range(first_row, stop_row):
        t = target[r]
        m, s = row_max[r], row_sum[r]
        scale = (weights[r] if per_row else weights[0]) / s
        valid = 0 <= t < cols
        row, out = logits[r], grad[r]
        for c in range(cols):
            p = exp_nonpositive(row[c] - m)
            p = p - s if c == t else p
            out[c] = p * scale if valid else nan


@njit(parallel=True, **_ACTIVATION_OPTIONS)
def cross_entropy_backward_parallel(logits, target, row_max, row_sum, weights, per_row, grad):
    rows, cols = logits.shape
    rows_per_block = max(1, ELEMENT_BLOCK // cols)
    for block in prange((rows + rows_per_block - 1) // rows_per_block):
        start = block * rows_per_block
        cross_entropy_backward_rows(logits, target, row_max, row_sum, weights, per_row, grad, start,
                                    min(rows, start + rows_per_block))


# ---------------------------------------------------------------------------------------------
# Optimizer updates on flat (1-D) views, rounded as the NumPy twins round (no FMA contraction).

@njit(inline="always", **_EXACT_OPTIONS)
def _sgd_loop(param, grad, buf, lr, weight_decay, momentum, one_minus_dampening, use_weight_decay,
              use_momentum, nesterov, first_step):
    for i in range(param.shape[0]):
        p = param[i]
        d = grad[i] + p * weight_decay if use_weight_decay else grad[i]
        if use_momentum:
            b = d if first_step else buf[i] * momentum + d * one_minus_dampening
            buf[i] = b
            d = b * momentum + d if nesterov else b
        param[i] = p - d * lr


@njit(**_EXACT_OPTIONS)
def sgd_span(param, grad, buf, lr, weight_decay, momentum, one_minus_dampening, use_weight_decay,
             use_momentum, nesterov, first_step):
    """torch.optim.SGD's update of 1-D param (and buf, unless use_momentum is False) in place. The loop
    is written twice, momentum a constant in each: a store under a run-time condition would keep LLVM
    from vectorising it."""
    if use_momentum:
        _sgd_loop(param, grad, buf, lr, weight_decay, momentum, one_minus_dampening, use_weight_decay, True,
                  nesterov, first_step)
    else:
        _sgd_loop(param, grad, buf, lr, weight_decay, momentum, one_minus_dampening, use_weight_decay, False,
                  nesterov, first_step)


@njit(parallel=True, **_EXACT_OPTIONS)
def sgd_parallel(param, grad, buf, lr, weight_decay, momentum, one_minus_dampening, use_weight_decay,
                 use_momentum, nesterov, first_step):
    n = param.shape[0]
    for block in prange((n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK):
        start = block * ELEMENT_BLOCK
        stop = min(n, start + ELEMENT_BLOCK)
        sgd_span(param[start:stop], grad[start:stop], buf[start:stop], lr,
                 weight_decay, momentum, one_minus_dampening, use_weight_decay, use_momentum, nesterov,
                 first_step)


@njit(inline="always", **_EXACT_OPTIONS)
def _adam_loop(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, weight_decay, l2, decay, decoupled,
               beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, step_size):
    for i in range(param.shape[0]):
        p = param[i]
        g = grad[i] + weight_decay * p if l2 else grad[i]
        p = p * decay if decoupled else p
        m = exp_avg[i] * beta1 + g * one_minus_beta1
        v = exp_avg_sq[i] * beta2 + (g * g) * one_minus_beta2
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            v_max = max_exp_avg_sq[i]
            v = v_max if v_max >= v or v_max != v_max else v  # NaN wins, as np.maximum
            max_exp_avg_sq[i] = v
        param[i] = p - (m / (np.sqrt(v) / bias_correction2_sqrt + eps)) * step_size


@njit(**_EXACT_OPTIONS)
def adam_span(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, weight_decay, l2, decay,
              decoupled, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
              step_size):
    """Adam's update of 1-D param and its moments in place, in NumpyKernels.adam_update_multi's order of
    operations. max_exp_avg_sq is only touched when amsgrad (the loop written twice, as in sgd_span)."""
    if amsgrad:
        _adam_loop(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, True, weight_decay, l2, decay, decoupled,
                   beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, step_size)
    else:
        _adam_loop(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, False, weight_decay, l2, decay,
                   decoupled, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
                   step_size)


@njit(parallel=True, **_EXACT_OPTIONS)
def adam_parallel(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, weight_decay, l2, decay,
                  decoupled, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps,
                  step_size):
    n = param.shape[0]
    for block in prange((n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK):
        start = block * ELEMENT_BLOCK
        stop = min(n, start + ELEMENT_BLOCK)
        adam_span(param[start:stop], grad[start:stop], exp_avg[start:stop], exp_avg_sq[start:stop],
                  max_exp_avg_sq[start:stop], amsgrad, weight_decay, l2,
                  decay, decoupled, beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt,
                  eps, step_size)
