// Shared by every kernels/*.cu, each of which includes it: tensorgrad/kernels.py gives NVRTC the
// folder the sources are loaded from as its include path, and nvcc takes `-I kernels`. No header
// includes here: NVRTC (cupy.RawModule) has no system include path.
#pragma once

// A 16-byte vector of T, for one load/store instead of four (float) or two (double).
template <typename T> struct Vec16;
template <> struct Vec16<float>  { typedef float4  type; static const int width = 4; };
template <> struct Vec16<double> { typedef double2 type; static const int width = 2; };

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ULL) == 0;
}

__device__ __forceinline__ float  exp_(float v)  { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
