// SGD update exactly as torch.optim.SGD defines it, float32 (_f32) and float64 (_f64):
//
//     d = grad + weight_decay * param
//     if momentum != 0:
//         buf = d                                           (first step)
//         buf = momentum * buf + (1 - dampening) * d        (later steps)
//         d = d + momentum * buf   if nesterov   else buf
//     param = param - lr * d
//
// One read of param, grad and buf and one write of param and buf per element. sgd_update_multi
// updates up to SGD_MAX_TENSORS parameters in a single launch from a table of pointers passed by
// value, so a model with many small tensors pays one launch instead of one per tensor.
//
// Compiled by NVRTC (cupy.RawModule, this folder as its include path) and by nvcc in the tests.

#include "common.cuh"

template <typename T>
struct SgdHyper {
    T lr, weight_decay, momentum, one_minus_dampening;
    bool use_momentum, nesterov, first_step;
};

template <typename T>
__device__ __forceinline__ T sgd_element(T p, T g, T& buf, const SgdHyper<T>& h) {
    T d = g + h.weight_decay * p;
    if (h.use_momentum) {
        buf = h.first_step ? d : h.momentum * buf + h.one_minus_dampening * d;
        d = h.nesterov ? d + h.momentum * buf : buf;
    }
    return p - h.lr * d;
}

// Update elements [0, n) of one parameter; threads start at `start` and step by `stride`.
// buf is only touched when momentum is on (it is a null pointer otherwise).
template <typename T>
__device__ __forceinline__ void sgd_range(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ buf,
                                          long long n, long long start, long long stride,
                                          const SgdHyper<T>& h) {
    typedef typename Vec16<T>::type V;
    const int W = Vec16<T>::width;
    long long scalar_from = 0;
    if (aligned16(param) && aligned16(grad) && (!h.use_momentum || aligned16(buf))) {
        const long long vectors = n / W;
        V* param_v = reinterpret_cast<V*>(param);
        const V* grad_v = reinterpret_cast<const V*>(grad);
        V* buf_v = reinterpret_cast<V*>(buf);
        for (long long i = start; i < vectors; i += stride) {
            V p = param_v[i];
            V g = grad_v[i];
            V b;
            if (h.use_momentum && !h.first_step) b = buf_v[i];
            T* pe = reinterpret_cast<T*>(&p);
            const T* ge = reinterpret_cast<const T*>(&g);
            T* be = reinterpret_cast<T*>(&b);
#pragma unroll
            for (int k = 0; k < W; ++k) pe[k] = sgd_element(pe[k], ge[k], be[k], h);
            param_v[i] = p;
            if (h.use_momentum) buf_v[i] = b;
        }
        scalar_from = vectors * W;
    }
    for (long long i = scalar_from + start; i < n; i += stride) {
        T b = (h.use_momentum && !h.first_step) ? buf[i] : T(0);
        param[i] = sgd_element(param[i], grad[i], b, h);
        if (h.use_momentum) buf[i] = b;
    }
}

template <typename T>
__device__ __forceinline__ SgdHyper<T> make_hyper(T lr, T weight_decay, T momentum, T one_minus_dampening,
                                                  int nesterov, int first_step) {
    SgdHyper<T> h;
    h.lr = lr;
    h.weight_decay = weight_decay;
    h.momentum = momentum;
    h.one_minus_dampening = one_minus_dampening;
    h.use_momentum = momentum != T(0);
    h.nesterov = nesterov != 0;
    h.first_step = first_step != 0;
    return h;
}

// Up to SGD_MAX_TENSORS parameters per launch, passed by value in the kernel's parameter space
// (768 bytes of the 4 KB CUDA allows): nothing to upload before a launch, and a CUDA graph that
// captures the launch captures the table with it. The host packs it as a NumPy structured scalar of
// the same layout (tensorgrad/kernels.py, _SGD_TABLE).
const int SGD_MAX_TENSORS = 24;

struct SgdTable {
    unsigned long long param[SGD_MAX_TENSORS];  // T*
    unsigned long long grad[SGD_MAX_TENSORS];   // const T*
    unsigned long long buf[SGD_MAX_TENSORS];    // T*, 0 without momentum
    long long size[SGD_MAX_TENSORS];
};

// blockIdx.y picks the parameter; the x dimension strides over it.
template <typename T>
__device__ void sgd_update_multi(const SgdTable& table, int count, const SgdHyper<T>& h) {
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (int t = blockIdx.y; t < count; t += gridDim.y) {
        sgd_range(reinterpret_cast<T*>(table.param[t]), reinterpret_cast<const T*>(table.grad[t]),
                  reinterpret_cast<T*>(table.buf[t]), table.size[t], start, stride, h);
    }
}

#define SGD_KERNELS(SUFFIX, T)                                                                           \
    extern "C" __global__ void sgd_update_##SUFFIX(                                                      \
            T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ buf, T lr,                \
            T weight_decay, T momentum, T one_minus_dampening, int nesterov, int first_step,             \
            long long n) {                                                                               \
        const SgdHyper<T> h = make_hyper<T>(lr, weight_decay, momentum, one_minus_dampening, nesterov,   \
                                            first_step);                                                 \
        sgd_range<T>(param, grad, buf, n, blockIdx.x * (long long)blockDim.x + threadIdx.x,              \
                     (long long)gridDim.x * blockDim.x, h);                                              \
    }                                                                                                    \
    extern "C" __global__ void sgd_update_multi_##SUFFIX(                                                \
            const SgdTable table, int count, T lr, T weight_decay, T momentum, T one_minus_dampening,    \
            int nesterov, int first_step) {                                                              \
        const SgdHyper<T> h = make_hyper<T>(lr, weight_decay, momentum, one_minus_dampening, nesterov,   \
                                            first_step);                                                 \
        sgd_update_multi<T>(table, count, h);                                                            \
    }

SGD_KERNELS(f32, float)
SGD_KERNELS(f64, double)
