// Softmax cross-entropy against integer class targets, forward and backward, float32 (_f32) and
// float64 (_f64). Logits are C-contiguous (rows, cols); targets int64 (rows,).
//
// One warp per row: a classifier's rows are short (tens to thousands of classes), so a warp
// covers a row in a few strides and the row's reduction stays in registers (shuffles only).
// The forward reads each logit once, with an online log-sum-exp (running max and a sum rescaled
// whenever the max grows), so it is stable for logits of any magnitude without a second pass.
//
// The forward keeps each row's max m and sum s = sum(exp(x - m)) rather than lse = m + log(s):
// rounded to T, lse is off by up to half an ulp of m (4 at logits of 1e8), and exp(x - lse) turns
// that absolute error into a relative one. The loss is (m - x[t]) + log(s) and the gradient
// (exp(x - m) - onehot * s) * (g / s): differences of logits are exact when the logits are close,
// so both keep their relative precision at any offset.
//
// A row whose max is not finite (all -inf, or any +inf or NaN) gets s = NaN, so its loss and
// every gradient element are NaN, as in PyTorch and the NumPy twin.
//
// Targets outside [0, cols) are validated by the Python caller; the kernels still never read
// outside the row for them and write NaN for that row, so a bad label cannot corrupt memory or
// pass unnoticed.
//
// Compiled by NVRTC (cupy.RawModule, this folder as its include path) and by nvcc in the tests.

#include "common.cuh"

__device__ __forceinline__ float  log_(float v)  { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float  negative_infinity<float>()  { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}
template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float  quiet_nan<float>()  { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ULL);
}

const unsigned FULL_WARP = 0xffffffffu;

// One warp per row: this thread's lane, its warp's first row, and the step to the warp's next row.
struct WarpRows {
    int lane;
    long long first, stride;
};

__device__ __forceinline__ WarpRows warp_rows() {
    const long long warps_per_block = blockDim.x >> 5;
    WarpRows mine;
    mine.lane = threadIdx.x & 31;
    mine.first = blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    mine.stride = gridDim.x * warps_per_block;
    return mine;
}

// Add one logit to a running (max, sum of exp(v - max)). The sum is kept in double for float logits
// too: a lane adds cols / 32 terms one after another, and in float their rounding would grow with the
// row (3e-5 at a million columns) and pass straight into the gradient. The rescale factor is a
// double exp for the same reason: a row of rising logits rescales at every element.
template <typename T>
__device__ __forceinline__ void lse_push(T v, T& running_max, double& running_sum) {
    if (v > running_max) {
        running_sum = running_sum * exp((double)running_max - (double)v) + 1.0;
        running_max = v;
    } else {
        // v == max covers -inf before any finite logit (-inf - -inf would make the sum NaN for good);
        // a row whose max stays infinite is settled once, after the reduction
        running_sum += (v == running_max) ? 1.0 : (double)exp_(v - running_max);
    }
}

// Rescale a partial sum taken relative to `partial_max` to be relative to `max`. Equal maxima skip the
// exp: a lane that saw no logit has max -inf and sum 0, and 0 * exp(-inf - -inf) would be NaN.
template <typename T>
__device__ __forceinline__ double rescaled(double partial_sum, T partial_max, T max) {
    return partial_max == max ? partial_sum : partial_sum * exp((double)partial_max - (double)max);
}

template <typename T>
__device__ void softmax_cross_entropy_forward(const T* __restrict__ logits, const long long* __restrict__ target,
                                              T* __restrict__ loss, T* __restrict__ row_max,
                                              T* __restrict__ row_sum, long long rows, long long cols) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    const WarpRows mine = warp_rows();
    const int lane = mine.lane;
    // every row starts 16-byte aligned only when the base is and a row is a whole number of vectors
    const bool vectorize = aligned16(logits) && cols % W == 0;
    for (long long r = mine.first; r < rows; r += mine.stride) {
        const T* row = logits + r * cols;
        T m = negative_infinity<T>();
        double s = 0.0;
        if (vectorize) {
            const V* row_v = reinterpret_cast<const V*>(row);
            for (long long j = lane; j < cols / W; j += 32) {
                V v = row_v[j];
                const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
                for (int k = 0; k < W; ++k) lse_push(e[k], m, s);
            }
        } else {
            for (long long j = lane; j < cols; j += 32) lse_push(row[j], m, s);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            T other_m = __shfl_xor_sync(FULL_WARP, m, offset);
            double other_s = __shfl_xor_sync(FULL_WARP, s, offset);
            T new_m = other_m > m ? other_m : m;
            s = rescaled(s, m, new_m) + rescaled(other_s, other_m, new_m);
            m = new_m;
        }
        if (lane == 0) {
            // lse_push never forms inf - inf, so a row with an infinite max is made NaN here, as the twin's is
            const T sum = isfinite(m) ? (T)s : quiet_nan<T>();
            const long long t = target[r];
            row_max[r] = m;
            row_sum[r] = sum;
            loss[r] = (t >= 0 && t < cols) ? (m - row[t]) + log_(sum) : quiet_nan<T>();
        }
    }
}

// out[0] = sum(values) / divisor, one block (blockDim.x a multiple of 32, at most 1024). A second
// launch instead of atomics keeps the reduced loss deterministic and on the device. The sum runs
// in double: one thread may add thousands of row losses, and this is N values, not N * C.
template <typename T>
__device__ void sum_divided(const T* __restrict__ values, T* __restrict__ out, T divisor, long long n) {
    __shared__ double warp_sums[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) acc += (double)values[i];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(FULL_WARP, acc, offset);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0.0;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(FULL_WARP, acc, offset);
        if (lane == 0) out[0] = (T)(acc / (double)divisor);
    }
}

// grad[r, c] = (softmax(logits[r])[c] - (c == target[r])) * g_r, computed as
// (exp(logits[r, c] - row_max[r]) - (c == target[r]) * row_sum[r]) * (g_r / row_sum[r]): one multiply
// per element, and exact where the true values are representable (equal logits give g/C and
// -(C - 1) * g/C). g_r is grad_loss[r] when per_row, else grad_loss[0] / divisor (divisor = rows for
// 'mean', 1 for 'sum'). grad_loss is read on the device so the backward never waits for the host.
template <typename T>
__device__ void softmax_cross_entropy_backward(const T* __restrict__ logits, const long long* __restrict__ target,
                                               const T* __restrict__ row_max, const T* __restrict__ row_sum,
                                               const T* __restrict__ grad_loss, T* __restrict__ grad, T divisor,
                                               long long rows, long long cols, int per_row) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    const WarpRows mine = warp_rows();
    const int lane = mine.lane;
    const bool vectorize = aligned16(logits) && aligned16(grad) && cols % W == 0;
    for (long long r = mine.first; r < rows; r += mine.stride) {
        const T* row = logits + r * cols;
        T* grad_row = grad + r * cols;
        const long long t = target[r];
        const bool valid = t >= 0 && t < cols;
        const T m = row_max[r];
        const T s = row_sum[r];
        const T scale = (per_row ? grad_loss[r] : grad_loss[0] / divisor) / s;
        if (vectorize) {
            const V* row_v = reinterpret_cast<const V*>(row);
            V* grad_v = reinterpret_cast<V*>(grad_row);
            for (long long j = lane; j < cols / W; j += 32) {
                V v = row_v[j];
                T* e = reinterpret_cast<T*>(&v);
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    T p = exp_(e[k] - m);
                    if (j * W + k == t) p -= s;
                    e[k] = valid ? p * scale : quiet_nan<T>();
                }
                grad_v[j] = v;
            }
        } else {
            for (long long j = lane; j < cols; j += 32) {
                T p = exp_(row[j] - m);
                if (j == t) p -= s;
                grad_row[j] = valid ? p * scale : quiet_nan<T>();
            }
        }
    }
}

#define SOFTMAX_CROSS_ENTROPY_KERNELS(SUFFIX, T)                                                         \
    extern "C" __global__ void softmax_cross_entropy_forward_##SUFFIX(                                   \
            const T* __restrict__ logits, const long long* __restrict__ target, T* __restrict__ loss,    \
            T* __restrict__ row_max, T* __restrict__ row_sum, long long rows, long long cols) {          \
        softmax_cross_entropy_forward<T>(logits, target, loss, row_max, row_sum, rows, cols);            \
    }                                                                                                    \
    extern "C" __global__ void sum_divided_##SUFFIX(                                                     \
            const T* __restrict__ values, T* __restrict__ out, T divisor, long long n) {                 \
        sum_divided<T>(values, out, divisor, n);                                                         \
    }                                                                                                    \
    extern "C" __global__ void softmax_cross_entropy_backward_##SUFFIX(                                  \
            const T* __restrict__ logits, const long long* __restrict__ target,                          \
            const T* __restrict__ row_max, const T* __restrict__ row_sum, const T* __restrict__ grad_loss, \
            T* __restrict__ grad, T divisor, long long rows, long long cols, int per_row) {               \
        softmax_cross_entropy_backward<T>(logits, target, row_max, row_sum, grad_loss, grad, divisor,    \
                                          rows, cols, per_row);                                          \
    }

SOFTMAX_CROSS_ENTROPY_KERNELS(f32, float)
SOFTMAX_CROSS_ENTROPY_KERNELS(f64, double)
