// Shared device helpers for deepcore's CUDA kernels.
//
// Compiled three ways from the same text: by NVRTC through cupy.RawModule (the real backend), by
// nvcc in CI (compile check for each supported architecture) and by g++ behind emulate.h (the
// kernels' arithmetic, executed on the CPU in tests). Keep it to plain CUDA C++: no warp
// intrinsics, no dynamic shared memory, no standard headers (NVRTC has none; the CUDA headers
// cuda_bf16.h / cuda_fp16.h are found through the -I CuPy always passes).
#pragma once

#ifdef DC_HOST_EMULATION
#include "emulate.h"
#endif

// Largest block any kernel is launched with; static shared arrays are sized by it.
// kernels/cuda/geometry.py MAX_BLOCK must agree.
#define DC_MAX_BLOCK 256
// Column-sum kernels use (DC_COL_TILE, DC_COL_ROWS) blocks.
#define DC_COL_TILE 32
#define DC_COL_ROWS 8

// Activation codes: the index in deepcore.backends.base.ACTIVATIONS.
#define DC_IDENTITY 0
#define DC_RELU 1
#define DC_LEAKY_RELU 2
#define DC_SIGMOID 3
#define DC_TANH 4
#define DC_GELU 5
#define DC_GELU_TANH 6

namespace dc {

__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_log(float x) { return logf(x); }
__device__ __forceinline__ double d_log(double x) { return log(x); }
__device__ __forceinline__ float d_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double d_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float d_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double d_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float d_erf(float x) { return erff(x); }
__device__ __forceinline__ double d_erf(double x) { return erf(x); }
__device__ __forceinline__ float d_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double d_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float d_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double d_abs(double x) { return fabs(x); }

// A quiet NaN without headers or intrinsics (marks an invalid label in a loss).
template <typename T>
__device__ __forceinline__ T quiet_nan() {
    return d_sqrt(T(-1));
}

// max that propagates NaN from either side, as numpy.maximum does.
template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
    if (a != a) return a;
    if (b != b) return b;
    return a > b ? a : b;
}

// Overflow-free logistic: exp of a non-positive number only (as Backend._sigmoid).
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
    T e = d_exp(-d_abs(x));
    return (x >= T(0) ? T(1) : e) / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T act_forward(int kind, T x, T alpha) {
    const T inv_sqrt2 = T(0.70710678118654752440);
    const T sqrt_2_over_pi = T(0.79788456080286535588);
    switch (kind) {
        case DC_RELU: return x < T(0) ? T(0) : x;  // keeps NaN, like numpy.maximum
        case DC_LEAKY_RELU: return x * (x > T(0) ? T(1) : alpha);
        case DC_SIGMOID: return sigmoid(x);
        case DC_TANH: return d_tanh(x);
        case DC_GELU: return x * (T(0.5) * (T(1) + d_erf(x * inv_sqrt2)));
        case DC_GELU_TANH: {
            T inner = d_tanh(sqrt_2_over_pi * (x + T(0.044715) * x * x * x));
            return (x * T(0.5)) * (T(1) + inner);
        }
        default: return x;
    }
}

// d(act)/d(input) times dy. Uses the output y, except the GELUs, which use the input x.
template <typename T>
__device__ __forceinline__ T act_backward(int kind, T dy, T x, T y, T alpha) {
    const T inv_sqrt2 = T(0.70710678118654752440);
    const T inv_sqrt_2pi = T(0.39894228040143267794);
    const T c = T(0.79788456080286535588);
    switch (kind) {
        case DC_RELU: return dy * (y > T(0) ? T(1) : T(0));
        case DC_LEAKY_RELU: return dy * (y > T(0) ? T(1) : alpha);
        case DC_SIGMOID: return dy * (y * (T(1) - y));
        case DC_TANH: return dy * (T(1) - y * y);
        case DC_GELU: {
            T cdf = T(0.5) * (T(1) + d_erf(x * inv_sqrt2));
            T pdf = d_exp(T(-0.5) * x * x) * inv_sqrt_2pi;
            return dy * (cdf + x * pdf);
        }
        case DC_GELU_TANH: {
            T x2 = x * x;
            T th = d_tanh(c * (x + T(0.044715) * x2 * x));
            T d = T(0.5) * (T(1) + th)
                + T(0.5) * x * (T(1) - th * th) * c * (T(1) + T(3 * 0.044715) * x2);
            return dy * d;
        }
        default: return dy;
    }
}

// Tree sum over the block's blockDim.x threads (a power of two <= DC_MAX_BLOCK) through `buf`.
// Every thread must call it; every thread gets the total. Deterministic: fixed order.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* buf) {
    unsigned t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] = buf[t] + buf[t + s];
        __syncthreads();
    }
    T total = buf[0];
    __syncthreads();  // buf may be reused right after
    return total;
}

// Block-wide max (NaN-propagating), same contract as block_sum.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* buf) {
    unsigned t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] = max_nan(buf[t], buf[t + s]);
        __syncthreads();
    }
    T total = buf[0];
    __syncthreads();
    return total;
}

}  // namespace dc

// Forces nvcc to instantiate the float and double kernels (the 16-bit ones: bf16 and half) (NVRTC uses name_expressions instead;
// the host emulation instantiates them in its generated launchers).
#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#define DC_INSTANTIATE(kernel) void* dc_inst_##kernel[] = {(void*)&kernel<float>, (void*)&kernel<double>};
#define DC_INSTANTIATE_16(kernel) \
    void* dc_inst_##kernel[] = {(void*)&kernel<__nv_bfloat16>, (void*)&kernel<__half>};
#else
#define DC_INSTANTIATE(kernel)
#define DC_INSTANTIATE_16(kernel)
#endif
