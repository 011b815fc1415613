"""Compiled CPU kernels: every fused kernel of tensorgrad.kernels as one Numba loop, multi-threaded.

`NumbaKernels` subclasses the NumPy twins and keeps their signatures, argument checks and `out=`
semantics; only the arithmetic moves into compiled loops (tensorgrad/_numba_kernels.py) that read and
write each element once, vectorised and, for large arrays, spread over Numba's threads in blocks
that do not depend on the thread count: the results are the same bits on 1 and on N threads.
Precision follows the CUDA kernels (kernels/*.cu): sums in float64, softmax cross-entropy keeping
each row's max and sum apart. The GEMM stays on NumPy's BLAS.

`kernels.for_array` hands numpy arrays to these kernels when numba imports (the `fast` extra) and the
environment variable TENSORGRAD_CPU_KERNELS is not `numpy`; otherwise to the NumPy twins. Compiled
code is cached on disk (numba's cache=True, in __pycache__ beside the module or the user's cache
folder), so only the first run of a program pays the compilation.

Threads: `set_num_threads(n)` / `get_num_threads()`. The default is NUMBA_NUM_THREADS when set, else
OMP_NUM_THREADS when set, else every core numba sees.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from . import kernels
from .kernels import (
    NumpyKernels,
    _check_backward_bias,
    _check_bias,
    _check_float,
    _check_grad_loss,
    _check_kind,
    _check_like,
    _check_lists,
    _check_out,
    _check_row_stats,
    _check_sgd,
    _check_softmax_ce,
)

# Below this many elements a kernel runs on the calling thread. Waking the pool costs a few µs on an idle
# machine, but a fork-join launch waits for its slowest thread, and on a busy machine (more runnable
# threads than cores: other programs, BLAS's own threads) that is a scheduler time slice, milliseconds:
# the main job (batch 16, 256-wide layers) ran 3x slower with a 32K threshold on a loaded 2-core VM. At
# 256K float32 elements one pass takes ~100 µs on one core, which a launch's cost cannot eat.
PARALLEL_MIN_ELEMENTS = 1 << 18

_KIND_CODES = {kind: code for code, kind in enumerate(kernels.ACTIVATIONS)}

_threads_lock = threading.Lock()
_threads: int | None = None  # what set_num_threads asked for; None until the first use


def _numba_or_none():
    try:
        import numba
    except ImportError:
        return None
    return numba


def _default_threads(numba) -> int:
    """NUMBA_NUM_THREADS (numba's own pool size) when set, else OMP_NUM_THREADS, else every core."""
    available = numba.config.NUMBA_NUM_THREADS
    if "NUMBA_NUM_THREADS" in os.environ:
        return available
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) >= 1:
        return min(int(omp), available)
    return available


def get_num_threads() -> int:
    """How many threads the compiled CPU kernels use (1 where numba is not installed: the NumPy twins run
    on the calling thread)."""
    numba = _numba_or_none()
    if numba is None:
        return 1
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = _default_threads(numba)
        return _threads


def set_num_threads(n: int) -> None:
    """Use n threads in the compiled CPU kernels, from every Python thread (numba's own setting is per
    thread; the kernels apply this one before each parallel launch). BLAS threads are not changed:
    set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before starting Python for those."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    numba = _numba_or_none()
    if numba is None:
        if n != 1:
            raise RuntimeError(f"set_num_threads({n}): multi-threaded CPU kernels need numba "
                               "(pip install 'tensorgrad[fast]'); the NumPy kernels run on one thread")
        return
    available = numba.config.NUMBA_NUM_THREADS
    if n > available:
        raise ValueError(f"set_num_threads: {n} threads asked for, but numba's pool has {available} "
                         "(NUMBA_NUM_THREADS, or the number of cores, when the program started)")
    global _threads
    with _threads_lock:
        _threads = int(n)


class NumbaKernels(NumpyKernels):
    """The fused operations on NumPy arrays as compiled loops; same interface as NumpyKernels.

    Importing numba and loading the cached machine code happen in __init__ (and at each function's
    first call per dtype), not at `import tensorgrad`.
    """

    def __init__(self):
        super().__init__()
        import numba

        from . import _numba_kernels
        if "NUMBA_THREADING_LAYER" not in os.environ:
            # The workqueue pool's workers sleep between launches. OpenMP's spin, and on a machine with
            # no spare core they take it from BLAS's threads (which spin too): a W2 step at 2 threads
            # took 21-28 ms with the OpenMP layer, 10 ms with this one, as the one-thread step. Its one
            # limit, no two launches at once, _launch's lock already keeps.
            numba.config.THREADING_LAYER = "workqueue"
        self._numba = numba
        self._jit = _numba_kernels
        # one parallel launch at a time: numba's workqueue threading layer (the fallback where neither
        # TBB nor OpenMP is found) aborts on concurrent launches from two Python threads
        self._launch_lock = threading.Lock()
        self._applied = threading.local()  # the thread count numba was last set to in this thread
        self._empty = {}  # per dtype: the stand-in for an unused momentum buffer or amsgrad maximum

    def __repr__(self) -> str:
        return f"NumbaKernels(threads={get_num_threads()})"

    def _parallel(self, elements: int) -> bool:
        return elements >= PARALLEL_MIN_ELEMENTS and get_num_threads() > 1

    def _launch(self, function, *args) -> None:
        """Run a *_parallel function with the thread count set_num_threads asked for."""
        threads = get_num_threads()
        with self._launch_lock:
            if getattr(self._applied, "threads", None) != threads:
                self._numba.set_num_threads(threads)
                self._applied.threads = threads
            function(*args)

    def _unused(self, dtype):
        empty = self._empty.get(dtype)
        if empty is None:
            empty = self._empty[dtype] = np.empty(0, dtype)
        return empty

    # -- activations ------------------------------------------------------------------------

    def activation_forward(self, kind: str, x, alpha: float = 0.0, out=None):
        """y = f(x) elementwise; x any shape; out (x's shape and dtype) may be x itself."""
        fn = "activation_forward"
        _check_kind(fn, kind)
        _check_float(fn, "x", x)
        y = np.empty_like(x) if _check_out(fn, out, x, "x") is None else out
        if x.size:
            args = (_KIND_CODES[kind], x.reshape(-1), y.reshape(-1), x.dtype.type(alpha))
            if self._parallel(x.size):
                self._launch(self._jit.forward_parallel, *args)
            else:
                self._jit.forward_span(args[0], args[1], None, args[2], args[3])
        return y

    def activation_backward(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """gx = gy * f'(x) from the saved output y (see NumpyKernels.activation_backward); out may be gy."""
        fn = "activation_backward"
        _check_kind(fn, kind)
        _check_float(fn, "y", y)
        _check_like(fn, "gy", gy, y.shape, y.dtype, "those of y")
        gx = np.empty_like(y) if _check_out(fn, out, y, "y") is None else out
        if y.size:
            args = (_KIND_CODES[kind], y.reshape(-1), gy.reshape(-1), gx.reshape(-1), y.dtype.type(alpha))
            if self._parallel(y.size):
                self._launch(self._jit.backward_parallel, *args)
            else:
                self._jit.backward_span(*args)
        return gx

    def bias_activation_forward(self, kind: str, x, bias, alpha: float = 0.0, out=None):
        """y = f(x + bias): x (N, M), bias (M,) broadcast over rows, y (N, M); out may be x."""
        fn = "bias_activation_forward"
        _check_kind(fn, kind)
        _check_bias(fn, x, bias)
        y = np.empty_like(x) if _check_out(fn, out, x, "x") is None else out
        if x.size:
            args = (_KIND_CODES[kind], x, bias, y, x.dtype.type(alpha))
            if self._parallel(x.size):
                self._launch(self._jit.bias_forward_parallel, *args)
            else:
                self._jit.bias_forward_rows(*args, 0, x.shape[0])
        return y

    def activation_backward_bias(self, kind: str, y, gy, alpha: float = 0.0, out=None):
        """(gx, bias_grad) as NumpyKernels.activation_backward_bias, in one pass; bias_grad is summed
        in float64, column by column from the first row, as the CUDA kernel sums in double."""
        _check_backward_bias("activation_backward_bias", kind, y, gy, out)
        gx = np.empty_like(y) if out is None else out
        bias_grad = np.empty(y.shape[1], y.dtype)
        if y.shape[1]:  # no rows: the columns' sums are 0
            args = (_KIND_CODES[kind], y, gy, gx, y.dtype.type(alpha), bias_grad)
            if self._parallel(y.size):
                self._launch(self._jit.backward_bias_parallel, *args)
            else:
                self._jit.backward_bias_columns(*args, 0, y.shape[1])
        return gx, bias_grad

    # -- softmax cross-entropy --------------------------------------------------------------

    def softmax_cross_entropy_forward(self, logits, target, reduction: str = "mean"):
        """(loss, row_max, row_sum) as NumpyKernels.softmax_cross_entropy_forward; row sums and the
        reduction of the row losses are added in float64, as in the CUDA kernel."""
        _check_softmax_ce("softmax_cross_entropy_forward", logits, target, reduction)
        rows = logits.shape[0]
        dtype = logits.dtype
        row_loss, row_max, row_sum = (np.empty(rows, dtype) for _ in range(3))
        if rows:
            args = (logits, target, row_loss, row_max, row_sum)
            if self._parallel(logits.size):
                self._launch(self._jit.cross_entropy_forward_parallel, *args)
            else:
                self._jit.cross_entropy_forward_rows(*args, 0, rows)
        if reduction == "none":
            return row_loss, row_max, row_sum
        if reduction == "sum":
            total = self._jit.sum_in_float64(row_loss) if rows else 0.0
        else:  # the mean of no rows is NaN, as PyTorch's
            total = self._jit.sum_in_float64(row_loss) / rows if rows else np.nan
        return np.array(total, dtype), row_max, row_sum

    def softmax_cross_entropy_backward(self, logits, target, row_max, row_sum, grad_loss,
                                       reduction: str = "mean", out=None):
        """grad_logits (N, C) as NumpyKernels.softmax_cross_entropy_backward, in one pass."""
        fn = "softmax_cross_entropy_backward"
        _check_softmax_ce(fn, logits, target, reduction)
        _check_row_stats(fn, row_max, row_sum, logits)
        _check_grad_loss(fn, grad_loss, logits, reduction)
        grad = np.empty_like(logits) if _check_out(fn, out, logits, "logits") is None else out
        rows = logits.shape[0]
        if rows:
            per_row = reduction == "none"
            # grad_loss / N stays of the logits' dtype (no float64 detour for float32), as in the kernel
            weights = grad_loss if per_row else np.divide(grad_loss, rows if reduction == "mean" else 1,
                                                          out=np.empty(1, logits.dtype))
            args = (logits, target, row_max, row_sum, weights, per_row, grad)
            if self._parallel(logits.size):
                self._launch(self._jit.cross_entropy_backward_parallel, *args)
            else:
                self._jit.cross_entropy_backward_rows(*args, 0, rows)
        return grad

    # -- SGD --------------------------------------------------------------------------------

    def sgd_update(self, param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step):
        """torch.optim.SGD's update of one parameter in one pass, in place (see NumpyKernels.sgd_update);
        rounded exactly as the twin rounds."""
        _check_sgd("sgd_update", param, grad, buf, momentum)
        self._sgd(param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step)

    def _sgd(self, param, grad, buf, lr, weight_decay, momentum, dampening, nesterov, first_step) -> None:
        if param.size == 0:
            return
        as_t = param.dtype.type
        with_momentum = momentum != 0
        flat_buf = buf.reshape(-1) if with_momentum else self._unused(param.dtype)
        # 1 - dampening is formed in Python's double and rounded once, as the twin and torch do
        args = (param.reshape(-1), grad.reshape(-1), flat_buf, as_t(lr), as_t(weight_decay), as_t(momentum),
                as_t(1 - dampening), weight_decay != 0, with_momentum, bool(nesterov), bool(first_step))
        if self._parallel(param.size):
            self._launch(self._jit.sgd_parallel, *args)
        else:
            self._jit.sgd_span(*args)

    def sgd_update_multi(self, params, grads, bufs, lr, weight_decay, momentum, dampening, nesterov,
                         first_step):
        """sgd_update over lists of parameters; bufs may be None (or Nones) when momentum == 0. Each
        parameter is one compiled call (under a µs each), so nothing is gathered."""
        fn = "sgd_update_multi"
        _check_lists(fn, params, grads, bufs)
        for i, (param, grad) in enumerate(zip(params, grads)):
            _check_sgd(fn, param, grad, None if bufs is None else bufs[i], momentum)
        for i, (param, grad) in enumerate(zip(params, grads)):
            self._sgd(param, grad, None if bufs is None else bufs[i], lr, weight_decay, momentum, dampening,
                      nesterov, first_step)

    # -- Adam -------------------------------------------------------------------------------

    def adam_update_multi(self, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                          beta2, eps, weight_decay, decoupled, amsgrad):
        """NumpyKernels.adam_update_multi, each parameter in one compiled pass that rounds exactly as
        the twin's NumPy passes do."""
        fn = "adam_update_multi"
        kernels._check_adam(fn, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad)
        for i, param in enumerate(params):
            if param.size == 0:
                continue
            as_t = param.dtype.type
            bias_correction1, bias_correction2_sqrt = kernels.adam_bias_corrections(beta1, beta2, steps[i])
            v_max = max_exp_avg_sqs[i].reshape(-1) if amsgrad else self._unused(param.dtype)
            args = (param.reshape(-1), grads[i].reshape(-1), exp_avgs[i].reshape(-1),
                    exp_avg_sqs[i].reshape(-1), v_max, bool(amsgrad), as_t(weight_decay),
                    weight_decay != 0 and not decoupled, as_t(1 - lr * weight_decay),
                    weight_decay != 0 and decoupled, as_t(beta1), as_t(1 - beta1), as_t(beta2),
                    as_t(1 - beta2), as_t(bias_correction2_sqrt), as_t(eps), as_t(lr / bias_correction1))
            if self._parallel(param.size):
                self._launch(self._jit.adam_parallel, *args)
            else:
                self._jit.adam_span(*args)
