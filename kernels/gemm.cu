// Matrix product C (m, n) = A (m, k) @ B (k, n), float32 (_f32) and float64 (_f64), for the places
// cuBLAS cannot go: CuPy refuses cuBLAS calls while a stream is being captured into a CUDA graph, so
// a captured training step multiplies its matrices here. Outside a capture tensorgrad calls cuBLAS.
//
// A and B are read through element strides (row stride, column stride), so the transposed views a
// dense layer multiplies by (x @ W.T, g.T @ x) are read in place, never copied. C is C-contiguous.
//
// Classic shared-memory tiling: a block of 256 threads computes a 64 x 64 tile of C, stepping
// through k in slices of 16 that it stages in shared memory; each thread accumulates a 4 x 4 grid
// of outputs spaced 16 apart, so a warp reads 16 consecutive B-tile columns (no bank conflicts) and
// two A-tile rows (broadcasts). Accumulation is in T, as cuBLAS's default for each precision.
//
// Split-k: a small-batch layer has few 64 x 64 tiles (x @ W.T for 64 x 784 @ 784 x 128 has two),
// which would leave all but two SMs idle through a long k loop. gridDim.z blocks then share each
// tile, block z summing the k range [z * k_per_split, (z + 1) * k_per_split) into its own slice
// c + z * m * n of a workspace, and gemm_sum_splits adds the slices in order (deterministic).
//
// Compiled by NVRTC (cupy.RawModule, this folder as its include path) and by nvcc in the tests.

#include "common.cuh"

const int GEMM_TILE = 64;    // rows and columns of C per block
const int GEMM_TILE_K = 16;
const int GEMM_THREADS = 256;
const int GEMM_SPREAD = 16;  // a thread's outputs are GEMM_SPREAD rows / columns apart
const int GEMM_PER_THREAD = GEMM_TILE / GEMM_SPREAD;  // 4 x 4 outputs per thread

// Stage a GEMM_TILE x GEMM_TILE_K slice of an operand into tile[kk][i]: element i of the tile's
// GEMM_TILE rows (of A) or columns (of B), at k = k0 + kk, is src[(first + i) * i_stride +
// (k0 + kk) * k_stride]; zeros past `limit` and k_end. Consecutive threads walk whichever index
// has unit stride (K_CONTIGUOUS: k's), so a warp's loads are contiguous for row-major and
// transposed operands alike. Rows of `tile` are padded by one element so those stores do not
// collide in a shared-memory bank.
template <typename T, bool K_CONTIGUOUS>
__device__ __forceinline__ void gemm_stage(T (*tile)[GEMM_TILE + 1], const T* __restrict__ src,
                                           long long first, long long limit, long long i_stride,
                                           long long k0, long long k_end, long long k_stride) {
#pragma unroll
    for (int r = 0; r < GEMM_TILE * GEMM_TILE_K / GEMM_THREADS; ++r) {
        const int e = threadIdx.x + r * GEMM_THREADS;
        const int kk = K_CONTIGUOUS ? e % GEMM_TILE_K : e / GEMM_TILE;
        const int i = K_CONTIGUOUS ? e / GEMM_TILE_K : e % GEMM_TILE;
        const long long gi = first + i, gk = k0 + kk;
        tile[kk][i] = (gi < limit && gk < k_end) ? src[gi * i_stride + gk * k_stride] : T(0);
    }
}

// The layouts are template parameters, not run-time tests, so that each instantiation computes only
// its own load addresses (a run-time choice cost 16 more registers per thread).
template <typename T, bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ void gemm_tiled(T (*a_tile)[GEMM_TILE + 1], T (*b_tile)[GEMM_TILE + 1],
                           const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                           long long m, long long n, long long k, long long k_per_split,
                           long long a_row_stride, long long a_col_stride,
                           long long b_row_stride, long long b_col_stride) {
    const int tx = threadIdx.x % GEMM_SPREAD;
    const int ty = threadIdx.x / GEMM_SPREAD;
    const long long row0 = (long long)blockIdx.y * GEMM_TILE;
    const long long col0 = (long long)blockIdx.x * GEMM_TILE;
    const long long k_begin = (long long)blockIdx.z * k_per_split;
    const long long k_end = k_begin + k_per_split < k ? k_begin + k_per_split : k;
    c += (long long)blockIdx.z * m * n;

    T acc[GEMM_PER_THREAD][GEMM_PER_THREAD];
#pragma unroll
    for (int i = 0; i < GEMM_PER_THREAD; ++i)
#pragma unroll
        for (int j = 0; j < GEMM_PER_THREAD; ++j) acc[i][j] = T(0);

    for (long long k0 = k_begin; k0 < k_end; k0 += GEMM_TILE_K) {
        gemm_stage<T, A_K_CONTIGUOUS>(a_tile, a, row0, m, a_row_stride, k0, k_end, a_col_stride);
        gemm_stage<T, B_K_CONTIGUOUS>(b_tile, b, col0, n, b_col_stride, k0, k_end, b_row_stride);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_TILE_K; ++kk) {
            T a_frag[GEMM_PER_THREAD], b_frag[GEMM_PER_THREAD];
#pragma unroll
            for (int i = 0; i < GEMM_PER_THREAD; ++i) a_frag[i] = a_tile[kk][ty + i * GEMM_SPREAD];
#pragma unroll
            for (int j = 0; j < GEMM_PER_THREAD; ++j) b_frag[j] = b_tile[kk][tx + j * GEMM_SPREAD];
#pragma unroll
            for (int i = 0; i < GEMM_PER_THREAD; ++i)
#pragma unroll
                for (int j = 0; j < GEMM_PER_THREAD; ++j) acc[i][j] += a_frag[i] * b_frag[j];
        }
        __syncthreads();  // the next slice overwrites the tiles
    }
#pragma unroll
    for (int i = 0; i < GEMM_PER_THREAD; ++i) {
        const long long gr = row0 + ty + i * GEMM_SPREAD;
        if (gr >= m) continue;
#pragma unroll
        for (int j = 0; j < GEMM_PER_THREAD; ++j) {
            const long long gc = col0 + tx + j * GEMM_SPREAD;
            if (gc < n) c[gr * n + gc] = acc[i][j];
        }
    }
}

// A is k-contiguous when row-major (x), B when read transposed (W.T): pick the instantiation. The
// tiles are declared here, once, so the four instantiations share one block's shared memory.
template <typename T>
__device__ __forceinline__ void gemm_layouts(const T* a, const T* b, T* c, long long m, long long n,
                                             long long k, long long k_per_split, long long a_row_stride,
                                             long long a_col_stride, long long b_row_stride,
                                             long long b_col_stride) {
    __shared__ T a_tile[GEMM_TILE_K][GEMM_TILE + 1];
    __shared__ T b_tile[GEMM_TILE_K][GEMM_TILE + 1];
#define GEMM_TILED(A_K, B_K)                                                                          \
    gemm_tiled<T, A_K, B_K>(a_tile, b_tile, a, b, c, m, n, k, k_per_split, a_row_stride, a_col_stride, \
                            b_row_stride, b_col_stride)
    const bool a_k = a_col_stride == 1, b_k = b_row_stride == 1;
    if (a_k && b_k) GEMM_TILED(true, true);
    else if (a_k) GEMM_TILED(true, false);
    else if (b_k) GEMM_TILED(false, true);
    else GEMM_TILED(false, false);
#undef GEMM_TILED
}

// c[i] = sum over z of partials[z * size + i], for z = 0 .. splits - 1 in order.
template <typename T>
__device__ void gemm_sum_splits(const T* __restrict__ partials, T* __restrict__ c, int splits,
                                long long size) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size; i += stride) {
        T total = partials[i];
        for (int z = 1; z < splits; ++z) total += partials[z * size + i];
        c[i] = total;
    }
}

#define GEMM_KERNELS(SUFFIX, T)                                                                          \
    extern "C" __global__ void gemm_##SUFFIX(                                                          \
            const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c, long long m,            \
            long long n, long long k, long long k_per_split, long long a_row_stride,                     \
            long long a_col_stride, long long b_row_stride, long long b_col_stride) {                    \
        gemm_layouts<T>(a, b, c, m, n, k, k_per_split, a_row_stride, a_col_stride, b_row_stride,         \
                        b_col_stride);                                                                   \
    }                                                                                                    \
    extern "C" __global__ void gemm_sum_splits_##SUFFIX(                                                 \
            const T* __restrict__ partials, T* __restrict__ c, int splits, long long size) {             \
        gemm_sum_splits<T>(partials, c, splits, size);                                                   \
    }

GEMM_KERNELS(f32, float)
GEMM_KERNELS(f64, double)
