// 16-bit storage for the bf16 / fp16 GEMMs: float32 <-> __nv_bfloat16 / __half conversions.
// Templated on the 16-bit type H; the conversions are CUDA's intrinsics (round to nearest even;
// fp16 overflows to inf). Launch: 1-D grid-stride loops, geometry.elementwise(n).
#include "common.cuh"
#ifndef DC_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dc {

template <typename H>
__device__ __forceinline__ H from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
    return __float2half_rn(x);
}

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

}  // namespace dc

// y = x rounded to H (the operands of a 16-bit GEMM are rounded once, here).
template <typename H>
__global__ void dc_round16(const float* x, H* y, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = dc::from_float<H>(x[i]);
    }
}
DC_INSTANTIATE_16(dc_round16)

// y = x widened to float32 (exact).
template <typename H>
__global__ void dc_widen16(const H* x, float* y, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = dc::to_float(x[i]);
    }
}
DC_INSTANTIATE_16(dc_widen16)
