// Activation kernels: forward, backward from the saved output, and the dense layer's fused
// epilogues (bias + activation forward; activation backward + bias gradient). float32 (_f32) and
// float64 (_f64) variants of each.
//
// Compiled at run time by NVRTC through cupy.RawModule (with this folder as its include path), and
// by nvcc in the test suite. common.cuh is the only header: NVRTC has no system include path, and
// the math functions used here are built into both compilers.
//
// The kernels are memory-bound, so each one reads and writes every element exactly once, with
// 16-byte loads (float4 / double2) when the pointers allow it. `out` may alias the input
// (in-place activation): every element is read once and then written once by the same thread,
// so __restrict__'s no-overlap promise is never observable.

#include "common.cuh"

__device__ __forceinline__ float  expm1_(float v)  { return expm1f(v); }
__device__ __forceinline__ double expm1_(double v) { return expm1(v); }
__device__ __forceinline__ float  tanh_(float v)   { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v)  { return tanh(v); }

// Each activation: forward f(x), and slope(y) = f'(x) written in terms of y = f(x), so the
// backward needs only the saved output. Comparisons are arranged so that NaN propagates
// (a NaN input fails every `<=` test and falls through to the branch that returns it).

struct Identity {
    template <typename T> __device__ static T forward(T x, T)     { return x; }
    template <typename T> __device__ static T slope(T, T)         { return T(1); }
};

struct Sigmoid {
    // exp(-|x|) lies in (0, 1], so neither branch can overflow for any finite x.
    template <typename T> __device__ static T forward(T x, T) {
        T e = exp_(-fabs(x));
        T s = T(1) / (T(1) + e);          // sigmoid(|x|)
        return x >= T(0) ? s : e * s;     // sigmoid(-|x|) = e / (1 + e)
    }
    template <typename T> __device__ static T slope(T y, T)       { return y * (T(1) - y); }
};

struct Tanh {
    template <typename T> __device__ static T forward(T x, T)     { return tanh_(x); }
    template <typename T> __device__ static T slope(T y, T)       { return T(1) - y * y; }
};

struct Relu {
    template <typename T> __device__ static T forward(T x, T)     { return x <= T(0) ? T(0) : x; }
    // relu'(0) = 0, as PyTorch defines it; at NaN 1, as PyTorch's threshold_backward (y <= 0 fails)
    template <typename T> __device__ static T slope(T y, T)       { return y <= T(0) ? T(0) : T(1); }
};

struct LeakyRelu {
    template <typename T> __device__ static T forward(T x, T alpha) { return x <= T(0) ? alpha * x : x; }
    // y > 0 exactly when x > 0 because alpha >= 0; at NaN alpha, as PyTorch (x > 0 fails)
    template <typename T> __device__ static T slope(T y, T alpha)   { return y > T(0) ? T(1) : alpha; }
};

struct Elu {
    // expm1 keeps small negative inputs accurate; the positive branch never calls exp, so no overflow
    template <typename T> __device__ static T forward(T x, T alpha) { return x <= T(0) ? alpha * expm1_(x) : x; }
    // for x <= 0: f'(x) = alpha * exp(x) = y + alpha; at NaN 1, as PyTorch's elu_backward (x <= 0 fails)
    template <typename T> __device__ static T slope(T y, T alpha)   { return y <= T(0) ? y + alpha : T(1); }
};

// y[i] = f(x[i]) over n elements.
template <typename T, class Act>
__device__ __forceinline__ void activation_forward(const T* __restrict__ x, T* __restrict__ y,
                                                   T alpha, long long n) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long scalar_from = 0;
    if (aligned16(x) && aligned16(y)) {
        const long long vectors = n / W;
        const V* xv = reinterpret_cast<const V*>(x);
        V* yv = reinterpret_cast<V*>(y);
        for (long long i = start; i < vectors; i += stride) {
            V v = xv[i];
            T* e = reinterpret_cast<T*>(&v);
#pragma unroll
            for (int k = 0; k < W; ++k) e[k] = Act::forward(e[k], alpha);
            yv[i] = v;
        }
        scalar_from = vectors * W;
    }
    for (long long i = scalar_from + start; i < n; i += stride) y[i] = Act::forward(x[i], alpha);
}

// gx[i] = gy[i] * f'(x[i]), f' evaluated from the saved output y.
template <typename T, class Act>
__device__ __forceinline__ void activation_backward(const T* __restrict__ y, const T* __restrict__ gy,
                                                    T* __restrict__ gx, T alpha, long long n) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long scalar_from = 0;
    if (aligned16(y) && aligned16(gy) && aligned16(gx)) {
        const long long vectors = n / W;
        const V* yv = reinterpret_cast<const V*>(y);
        const V* gyv = reinterpret_cast<const V*>(gy);
        V* gxv = reinterpret_cast<V*>(gx);
        for (long long i = start; i < vectors; i += stride) {
            V yy = yv[i];
            V g = gyv[i];
            const T* ye = reinterpret_cast<const T*>(&yy);
            T* ge = reinterpret_cast<T*>(&g);
#pragma unroll
            for (int k = 0; k < W; ++k) ge[k] = ge[k] * Act::slope(ye[k], alpha);
            gxv[i] = g;
        }
        scalar_from = vectors * W;
    }
    for (long long i = scalar_from + start; i < n; i += stride) gx[i] = gy[i] * Act::slope(y[i], alpha);
}

// y[r, c] = f(x[r, c] + bias[c]) for x of shape (rows, cols), C-contiguous.
template <typename T, class Act>
__device__ __forceinline__ void bias_activation_forward(const T* __restrict__ x, const T* __restrict__ bias,
                                                        T* __restrict__ y, T alpha,
                                                        long long rows, long long cols) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    const long long n = rows * cols;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    // A vector must not straddle two rows (its bias slice would wrap), hence cols % W == 0.
    if (cols % W == 0 && aligned16(x) && aligned16(y) && aligned16(bias)) {
        const long long vectors = n / W;
        const V* xv = reinterpret_cast<const V*>(x);
        const V* bv = reinterpret_cast<const V*>(bias);
        V* yv = reinterpret_cast<V*>(y);
        for (long long i = start; i < vectors; i += stride) {
            V v = xv[i];
            V b = bv[(i * W) % cols / W];
            T* e = reinterpret_cast<T*>(&v);
            const T* be = reinterpret_cast<const T*>(&b);
#pragma unroll
            for (int k = 0; k < W; ++k) e[k] = Act::forward(e[k] + be[k], alpha);
            yv[i] = v;
        }
        return;
    }
    for (long long i = start; i < n; i += stride) y[i] = Act::forward(x[i] + bias[i % cols], alpha);
}

// The dense layer's backward epilogue in one pass: gx = gy * f'(y) as above, for y, gy, gx of shape
// (rows, cols), and bias_grad[c] = sum over r of gx[r, c]. gx may be gy. Each block owns
// BIAS_COLUMNS consecutive columns (a warp reads one row's slice: contiguous) and its
// BIAS_ROW_LANES warps take every BIAS_ROW_LANES-th row; their partial sums meet in shared memory in
// a fixed order, so the result is the same on every run (no atomics). Sums run in double: a thread
// may add thousands of rows, and float32 would lose the small differences of large gradients.
const int BIAS_COLUMNS = 32;
const int BIAS_ROW_LANES = 8;  // blockDim.x == BIAS_COLUMNS * BIAS_ROW_LANES == 256

template <typename T, class Act>
__device__ __forceinline__ void activation_backward_bias(const T* __restrict__ y, const T* __restrict__ gy,
                                                         T* __restrict__ gx, T* __restrict__ bias_grad,
                                                         T alpha, long long rows, long long cols) {
    __shared__ double partial[BIAS_ROW_LANES][BIAS_COLUMNS + 1];  // +1: a row's lanes hit distinct banks
    const int column_lane = threadIdx.x % BIAS_COLUMNS;
    const int row_lane = threadIdx.x / BIAS_COLUMNS;
    const long long column_stride = (long long)gridDim.x * BIAS_COLUMNS;
    for (long long c0 = (long long)blockIdx.x * BIAS_COLUMNS; c0 < cols; c0 += column_stride) {
        const long long c = c0 + column_lane;
        double sum = 0.0;
        if (c < cols) {
            for (long long r = row_lane; r < rows; r += BIAS_ROW_LANES) {
                const long long i = r * cols + c;
                const T g = gy[i] * Act::slope(y[i], alpha);
                gx[i] = g;
                sum += (double)g;
            }
        }
        partial[row_lane][column_lane] = sum;
        __syncthreads();
        if (row_lane == 0 && c < cols) {
            double total = 0.0;
#pragma unroll
            for (int k = 0; k < BIAS_ROW_LANES; ++k) total += partial[k][column_lane];
            bias_grad[c] = (T)total;
        }
        __syncthreads();  // the next column tile reuses `partial`
    }
}

#define ACTIVATION_KERNELS(NAME, ACT, SUFFIX, T)                                                        \
    extern "C" __global__ void activation_forward_##NAME##_##SUFFIX(                                    \
            const T* __restrict__ x, T* __restrict__ y, T alpha, long long n) {                         \
        activation_forward<T, ACT>(x, y, alpha, n);                                                     \
    }                                                                                                   \
    extern "C" __global__ void activation_backward_##NAME##_##SUFFIX(                                   \
            const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx, T alpha,             \
            long long n) {                                                                              \
        activation_backward<T, ACT>(y, gy, gx, alpha, n);                                               \
    }                                                                                                   \
    extern "C" __global__ void bias_activation_forward_##NAME##_##SUFFIX(                               \
            const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, T alpha,            \
            long long rows, long long cols) {                                                           \
        bias_activation_forward<T, ACT>(x, bias, y, alpha, rows, cols);                                 \
    }                                                                                                   \
    extern "C" __global__ void activation_backward_bias_##NAME##_##SUFFIX(                              \
            const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx,                      \
            T* __restrict__ bias_grad, T alpha, long long rows, long long cols) {                       \
        activation_backward_bias<T, ACT>(y, gy, gx, bias_grad, alpha, rows, cols);                      \
    }

ACTIVATION_KERNELS(identity, Identity, f32, float)
ACTIVATION_KERNELS(identity, Identity, f64, double)
ACTIVATION_KERNELS(sigmoid, Sigmoid, f32, float)
ACTIVATION_KERNELS(sigmoid, Sigmoid, f64, double)
ACTIVATION_KERNELS(tanh, Tanh, f32, float)
ACTIVATION_KERNELS(tanh, Tanh, f64, double)
ACTIVATION_KERNELS(relu, Relu, f32, float)
ACTIVATION_KERNELS(relu, Relu, f64, double)
ACTIVATION_KERNELS(leaky_relu, LeakyRelu, f32, float)
ACTIVATION_KERNELS(leaky_relu, LeakyRelu, f64, double)
ACTIVATION_KERNELS(elu, Elu, f32, float)
ACTIVATION_KERNELS(elu, Elu, f64, double)
