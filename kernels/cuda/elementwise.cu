// Elementwise kernels: the linear epilogue (bias + activation) and activation backward.
// Launch: 1-D grid-stride loops, geometry.elementwise(n).
#include "common.cuh"

// out = act(z + b[col]); pre = z + b[col] when flags & 2. flags & 1: b is present.
// z may alias pre or out: each element is read before it is written, by the same thread.
template <typename T>
__global__ void dc_bias_act(const T* z, const T* b, T* pre, T* out, long long rows,
                            long long cols, int kind, T alpha, int flags) {
    long long n = rows * cols;
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T v = z[i];
        if (flags & 1) v = v + b[i % cols];
        if (flags & 2) pre[i] = v;
        out[i] = dc::act_forward(kind, v, alpha);
    }
}
DC_INSTANTIATE(dc_bias_act)

// dx = act'(x or y) * dy. x and y point at dy when the activation does not need them.
template <typename T>
__global__ void dc_act_backward(const T* dy, const T* x, const T* y, T* dx, long long n,
                                int kind, T alpha) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dx[i] = dc::act_backward(kind, dy[i], x[i], y[i], alpha);
    }
}
DC_INSTANTIATE(dc_act_backward)
